//! The proxy's client goes where `proxy.api_server` says, over the
//! kubeconfig's `server` (kube-proxy's `--master`): judged by the
//! in-process API server answering a list through a kubeconfig whose own
//! server is a closed port.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use lbd::config::ProxyConfig;
use lbd::proxy::kube::client_from_config;
use serde_json::json;
use support::apiserver::{Kind, TestApiServer};

/// The proxy section as `lbd run` loads it from lbd.yaml.
fn load(
    kubeconfig: &std::path::Path,
    api_server: Option<String>,
) -> Result<ProxyConfig, lbd::config::ConfigError> {
    let dir = kubeconfig.parent().unwrap();
    let mut yaml = format!(
        "node:\n  name: cp1\nproxy:\n  mode: ipvs\n  kubeconfig: {}\n",
        kubeconfig.display()
    );
    if let Some(url) = api_server {
        yaml.push_str(&format!("  api_server: \"{url}\"\n"));
    }
    let path = dir.join("lbd.yaml");
    std::fs::write(&path, yaml).unwrap();
    lbd::config::load(&path).map(|c| c.proxy.unwrap())
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
        .replace("user: {}", "user: {token: t0ken}")
        .replace(&api.addr.to_string(), &dead_addr.to_string());
    std::fs::write(&kc, yaml).unwrap();

    // The kubeconfig alone: its server is closed.
    assert!(list_nodes(&load(&kc, None).unwrap()).await.is_err());
    // proxy.api_server wins.
    let at = load(&kc, Some(format!("http://{}", api.addr))).unwrap();
    assert_eq!(list_nodes(&at).await.unwrap(), ["cp1"]);
    // A malformed address never reaches the client: lbd check refuses it
    // at its line.
    let err = load(&kc, Some("http://[::1".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("lbd.yaml:6:15: proxy.api_server"), "{err}");
}
