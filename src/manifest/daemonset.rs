//! `lbd manifest --daemonset`: lbd's Service proxy on the nodes without a
//! control plane, where kube-proxy's DaemonSet ran.
//!
//! The control-plane nodes run lbd as a static pod (VIP, balancer and
//! proxy); every other node runs this DaemonSet: the proxy only, from a
//! ConfigMap holding the proxy section of the control plane's config, with
//! the in-cluster service account and the apiserver's real address
//! (`proxy.api_server`: the VIP, never the `kubernetes` Service's ClusterIP,
//! which only this proxy programs). Pure: config in, objects out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccount, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ManifestError;
use crate::config::{format_duration, Config, ProxyConfig, ProxyMode};

/// Name of every object, namespace of the namespaced ones.
pub const NAME: &str = "lbd-proxy";
pub const NAMESPACE: &str = "kube-system";

/// What the proxy alone needs: NET_ADMIN (IPVS, kube-ipvs0's addresses and
/// conntrack over netlink). No VRRP (NET_RAW), no port below 1024
/// (NET_BIND_SERVICE).
pub const CAPABILITIES: [&str; 1] = ["NET_ADMIN"];

/// The label kubeadm gives control-plane nodes; the DaemonSet stays off
/// them, since the static pod's lbd proxies there.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// What the proxy reads from the API (src/ipvs/kube.rs): lists and watches
/// of Services, EndpointSlices and its own Node; nothing is written.
pub fn rbac_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resources: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: vec!["list".into(), "watch".into()],
        ..Default::default()
    };
    vec![
        rule("", &["services", "nodes"]),
        rule("discovery.k8s.io", &["endpointslices"]),
    ]
}

/// Where the config is mounted; a directory, so a ConfigMap update (an
/// atomic symlink swap) is seen.
const CONFIG_DIR: &str = "/etc/lbd";

fn meta(name: &str, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespaced.then(|| NAMESPACE.to_string()),
        labels: Some(labels()),
        ..Default::default()
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), NAME.to_string()),
        ("app.kubernetes.io/part-of".to_string(), "lbd".to_string()),
        (
            "app.kubernetes.io/version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ])
}

fn selector() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_string(), NAME.to_string())])
}

/// The proxy-only lbd.yaml the DaemonSet's pods run: the control plane's
/// proxy settings (KubeProxyConfiguration merged), minus what is the
/// control-plane node's own (its kubeconfig, its host name), plus the
/// apiserver address for in-cluster credentials.
pub fn proxy_config_yaml(p: &ProxyConfig, api_server: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# lbd on the nodes without a control plane: the Service proxy only."
    );
    let _ = writeln!(
        s,
        "# Written by `lbd manifest --daemonset` from the control plane's config."
    );
    let _ = writeln!(s, "proxy:");
    let mode = match p.mode {
        ProxyMode::Ipvs => "ipvs",
        ProxyMode::Nftables => "nftables",
        ProxyMode::None => "none",
    };
    let _ = writeln!(s, "  mode: {mode}");
    let _ = writeln!(
        s,
        "  # In-cluster credentials (this DaemonSet's service account), at the"
    );
    let _ = writeln!(s, "  # apiserver's real address: kube-proxy's --master.");
    let _ = writeln!(s, "  api_server: {}", json(api_server));
    let nets = |v: &[ipnet::IpNet]| {
        let items: Vec<String> = v.iter().map(|n| json(&n.to_string())).collect();
        format!("[{}]", items.join(", "))
    };
    if !p.cluster_cidr.is_empty() {
        let _ = writeln!(s, "  cluster_cidr: {}", nets(&p.cluster_cidr));
    }
    if p.masquerade_all {
        let _ = writeln!(s, "  masquerade_all: true");
    }
    if p.node_port_primary {
        let _ = writeln!(s, "  node_port_addresses: primary");
    } else if !p.node_port_addresses.is_empty() {
        let _ = writeln!(s, "  node_port_addresses: {}", nets(&p.node_port_addresses));
    }
    let i = &p.ipvs;
    let _ = writeln!(s, "  ipvs:");
    let _ = writeln!(s, "    scheduler: {}", json(&i.scheduler));
    let _ = writeln!(s, "    strict_arp: {}", i.strict_arp);
    let _ = writeln!(s, "    exclude_cidrs: {}", nets(&i.exclude_cidrs));
    let _ = writeln!(s, "    sync_period: {}", format_duration(i.sync_period));
    let _ = writeln!(
        s,
        "    min_sync_period: {}",
        format_duration(i.min_sync_period)
    );
    for (k, v) in [
        ("tcp_timeout", i.tcp_timeout),
        ("tcp_fin_timeout", i.tcp_fin_timeout),
        ("udp_timeout", i.udp_timeout),
    ] {
        if let Some(v) = v {
            let _ = writeln!(s, "    {k}: {}", format_duration(v));
        }
    }
    for (k, v) in [
        ("healthz_bind", p.healthz_bind),
        ("metrics_bind", p.metrics_bind),
    ] {
        match v {
            Some(a) => {
                let _ = writeln!(s, "  {k}: {}", json(&a.to_string()));
            }
            None => {
                let _ = writeln!(s, "  {k}: null");
            }
        }
    }
    let _ = writeln!(s, "admin:");
    let _ = writeln!(s, "  socket: /run/lbd/lbd.sock");
    let _ = writeln!(s, "  listen: \"127.0.0.1:9440\"");
    s
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Everything `kubectl apply -f` needs, in order: ServiceAccount,
/// ClusterRole, ClusterRoleBinding, ConfigMap, DaemonSet.
pub struct DaemonSetObjects {
    pub service_account: ServiceAccount,
    pub cluster_role: ClusterRole,
    pub cluster_role_binding: ClusterRoleBinding,
    pub config_map: ConfigMap,
    pub daemon_set: DaemonSet,
}

/// The objects for `config`'s proxy section; `api_server` overrides the
/// address derived from the config (proxy.api_server, else the VIP).
pub fn objects(
    config: &Config,
    image: &str,
    api_server: Option<&str>,
) -> Result<DaemonSetObjects, ManifestError> {
    let proxy = config
        .proxy
        .as_ref()
        .filter(|p| p.mode != ProxyMode::None)
        .ok_or(ManifestError::NoProxy)?;
    let derived = proxy
        .api_server
        .as_ref()
        .map(|a| a.url.clone())
        .or_else(|| crate::config::api_server_from_vip(config).map(|a| a.url));
    let url = api_server
        .map(str::to_string)
        .or(derived)
        .ok_or(ManifestError::NoApiServer)?;
    let config_map = ConfigMap {
        metadata: meta(NAME, true),
        data: Some(BTreeMap::from([(
            "lbd.yaml".to_string(),
            proxy_config_yaml(proxy, &url),
        )])),
        ..Default::default()
    };
    Ok(DaemonSetObjects {
        service_account: ServiceAccount {
            metadata: meta(NAME, true),
            ..Default::default()
        },
        cluster_role: ClusterRole {
            metadata: meta(NAME, false),
            rules: Some(rbac_rules()),
            ..Default::default()
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: meta(NAME, false),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: NAME.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: NAME.into(),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            }]),
        },
        config_map,
        daemon_set: daemon_set(image, proxy.mode == ProxyMode::Ipvs),
    })
}

fn daemon_set(image: &str, ipvs: bool) -> DaemonSet {
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: NAME.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        host_path("run-lbd", "/run/lbd", "DirectoryOrCreate"),
    ];
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("run-lbd", "/run/lbd", false),
    ];
    if ipvs {
        volumes.push(host_path("lib-modules", "/lib/modules", "Directory"));
        mounts.push(mount("lib-modules", "/lib/modules", true));
    }
    DaemonSet {
        metadata: meta(NAME, true),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector()),
                ..Default::default()
            },
            // One node at a time: a node's Services stay programmed while
            // its proxy restarts (lbd never flushes what it programmed).
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..Default::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    priority_class_name: Some("system-node-critical".into()),
                    service_account_name: Some(NAME.into()),
                    affinity: Some(not_on_control_planes()),
                    // Every other taint, as kube-proxy: a node whose Services
                    // are not programmed is broken whatever its taints.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container(image, mounts)],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        status: None,
    }
}

/// Required, not preferred: lbd's static pod proxies on control-plane
/// nodes, and two proxies on one node would fight over IPVS.
fn not_on_control_planes() -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: CONTROL_PLANE_LABEL.into(),
                        operator: "DoesNotExist".into(),
                        values: None,
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(image: &str, mounts: Vec<VolumeMount>) -> Container {
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            host: Some("127.0.0.1".into()),
            port: IntOrString::Int(9440),
            path: Some(path.into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    Container {
        name: "lbd".into(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        // The Node's name, not the pod's host name, as kube-proxy's
        // --hostname-override=$(NODE_NAME) in kubeadm's DaemonSet.
        command: Some(vec![
            "lbd".into(),
            "run".into(),
            "-c".into(),
            format!("{CONFIG_DIR}/lbd.yaml"),
            "--node-name".into(),
            "$(NODE_NAME)".into(),
        ]),
        env: Some(vec![EnvVar {
            name: "NODE_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..probe("/healthz", 10, 8)
        }),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            }),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The objects as one multi-document YAML stream for `kubectl apply -f -`.
pub fn to_yaml(o: &DaemonSetObjects) -> Result<String, ManifestError> {
    let docs = [
        yaml(&o.service_account, "v1", "ServiceAccount")?,
        yaml(
            &o.cluster_role,
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
        )?,
        yaml(
            &o.cluster_role_binding,
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
        )?,
        yaml(&o.config_map, "v1", "ConfigMap")?,
        yaml(&o.daemon_set, "apps/v1", "DaemonSet")?,
    ];
    Ok(docs.join("---\n"))
}

/// k8s-openapi's types write apiVersion and kind themselves; checked so a
/// change there cannot drop them silently.
fn yaml<T: serde::Serialize>(
    o: &T,
    api_version: &str,
    kind: &str,
) -> Result<String, ManifestError> {
    let text = serde_saphyr::to_string(o).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    if !text.contains(&format!("kind: {kind}")) || !text.contains(api_version) {
        return Err(ManifestError::Yaml(format!(
            "{kind} rendered without its apiVersion {api_version} and kind"
        )));
    }
    Ok(text)
}
