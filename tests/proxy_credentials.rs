//! The proxy's client goes where `proxy.api_server` says, over the
//! kubeconfig's `server` (kube-proxy's `--master`): judged by the
//! in-process API server answering a list through a kubeconfig whose own
//! server is a closed port.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use lbd::config::{
    ApiServer, ApiServerSource, IpvsConfig, KubeconfigSource, ProxyConfig, ProxyMode,
};
use lbd::proxy::kube::client_from_config;
use serde_json::json;
use support::apiserver::{Kind, TestApiServer};

fn proxy(kubeconfig: &std::path::Path, api_server: Option<String>) -> ProxyConfig {
    ProxyConfig {
        mode: ProxyMode::Ipvs,
        kube_proxy_config: None,
        kubeconfig: Some(kubeconfig.to_path_buf()),
        kubeconfig_source: KubeconfigSource::LbdYaml,
        kubeconfig_overridden: vec![],
        api_server: api_server.map(|url| ApiServer {
            url,
            from: ApiServerSource::LbdYaml,
        }),
        cluster_cidr: vec![],
        masquerade_all: false,
        node_port_addresses: vec![],
        hostname_override: None,
        ipvs: IpvsConfig {
            scheduler: "rr".into(),
            strict_arp: false,
            exclude_cidrs: vec![],
            sync_period: Duration::from_secs(1),
            min_sync_period: Duration::from_millis(20),
            tcp_timeout: None,
            tcp_fin_timeout: None,
            udp_timeout: None,
        },
        healthz_bind: None,
        metrics_bind: None,
    }
}

async fn list_nodes(cfg: &ProxyConfig) -> Result<Vec<String>, String> {
    let client = client_from_config(cfg).await.map_err(|e| e.to_string())?;
    let api: kube::Api<Node> = kube::Api::all(client);
    let list = tokio::time::timeout(Duration::from_secs(5), api.list(&Default::default()))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

#[tokio::test]
async fn api_server_overrides_the_kubeconfigs_server() {
    let api = TestApiServer::start().await;
    api.apply(Kind::Node, json!({"metadata": {"name": "cp1"}}));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("proxy.kubeconfig");
    let yaml = api
        .kubeconfig_yaml()
        .replace(&api.addr.to_string(), &dead_addr.to_string());
    std::fs::write(&kc, yaml).unwrap();

    // The kubeconfig alone: its server is closed.
    assert!(list_nodes(&proxy(&kc, None)).await.is_err());
    // proxy.api_server wins.
    let at = proxy(&kc, Some(format!("http://{}", api.addr)));
    assert_eq!(list_nodes(&at).await.unwrap(), ["cp1"]);
    // A malformed address is the client's error, named.
    let bad = proxy(&kc, Some("http://[::1".into()));
    let err = list_nodes(&bad).await.unwrap_err();
    assert!(err.contains("proxy.api_server http://[::1"), "{err}");
}
