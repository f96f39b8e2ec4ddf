//! `lbd manifest`: the static Pod that runs lbd on a control-plane node.
//!
//! The kubeadm HA guide runs keepalived and haproxy as static pods in
//! /etc/kubernetes/manifests; this renders the same for lbd from its config.
//! [`static_pod`] is pure (config + the files to mount -> Pod);
//! [`referenced_files`] is the I/O edge that also looks inside the kubeconfig
//! and KubeProxyConfiguration the config names, because the files *they*
//! name must be in the pod too or the proxy cannot reach the apiserver.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ExecAction, HTTPGetAction, HostPathVolumeSource, Pod,
    PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{Config, ProxyMode};

pub mod daemonset;

/// The capabilities lbd needs and nothing more: NET_ADMIN for addresses,
/// IPVS and sysctls over netlink, NET_RAW for VRRP (IP protocol 112) and
/// gratuitous ARP, NET_BIND_SERVICE for listeners below 1024.
pub const CAPABILITIES: [&str; 3] = ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"];

/// The image the manifest refers to unless `--image` says otherwise: the
/// name scripts/package.sh tags its OCI archive with, so that an archive
/// imported on the node (`ctr -n k8s.io images import`) is what the kubelet
/// runs, with no registry (`localhost/`: never pulled from anywhere).
pub fn default_image() -> String {
    format!("localhost/lbd:v{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("lbd manifest: {what}: {} is a relative path; a static pod can only mount absolute host paths", path.display())]
    RelativePath { what: String, path: PathBuf },
    #[error("lbd manifest: cannot resolve the config path {}: {source}", path.display())]
    ConfigPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lbd manifest: {what} {}: {message}", path.display())]
    Referenced {
        what: String,
        path: PathBuf,
        message: String,
    },
    #[error("lbd manifest: the config {} lies in {}: the pod would see all of it; keep lbd.yaml in a directory of its own, such as /etc/lbd", path.display(), path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    ConfigDirectory { path: PathBuf },
    #[error("lbd manifest: cannot render YAML: {0}")]
    Yaml(String),
    #[error("lbd manifest --daemonset: the config has no proxy section (or mode none): nothing to run on the other nodes")]
    NoProxy,
    #[error("lbd manifest --daemonset: no apiserver address for the nodes' proxies: set proxy.api_server, give --api-server https://VIP:PORT, or a VRRP instance that tracks a listener (its VIP and port are used)")]
    NoApiServer,
}

/// One host file the pod mounts read-only at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    /// Which setting names it, for messages (`proxy.kubeconfig`, ...).
    pub what: String,
    pub path: PathBuf,
    /// A health check's CA, certificate or key: lbd starts without it and
    /// watches for it (before `kubeadm init` there is no cluster CA yet).
    pub may_appear_later: bool,
    /// Whether it is there now (filled in by [`referenced_files`]).
    pub exists: bool,
}

/// The files the config names directly: health TLS material, the proxy's
/// kubeconfig and KubeProxyConfiguration, and VRRP notify commands given by
/// absolute path (a bare command name is looked up in the image). Pure.
pub fn named_files(config: &Config) -> Vec<HostFile> {
    let mut out = Vec::new();
    if let Some(vrrp) = &config.vrrp {
        for i in &vrrp.instances {
            let program = i
                .notify
                .as_deref()
                .and_then(|cmd| cmd.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(p) = program {
                out.push(HostFile {
                    what: format!("vrrp instance {} notify", i.name),
                    path: PathBuf::from(p),
                    may_appear_later: false,
                    exists: true,
                });
            }
        }
    }
    if let Some(tcplb) = &config.tcplb {
        for l in &tcplb.listeners {
            let tls = &l.health.tls;
            for (key, p) in [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ] {
                if let Some(p) = p {
                    out.push(HostFile {
                        what: format!("tcplb listener {} health.tls.{key}", l.name),
                        path: p.clone(),
                        may_appear_later: true,
                        exists: true,
                    });
                }
            }
        }
    }
    if let Some(proxy) = &config.proxy {
        if let Some(p) = &proxy.kube_proxy_config {
            out.push(HostFile {
                what: "proxy.kube_proxy_config".into(),
                path: p.clone(),
                may_appear_later: false,
                exists: true,
            });
        }
        if let Some(p) = &proxy.kubeconfig {
            out.push(HostFile {
                what: "proxy.kubeconfig".into(),
                path: p.clone(),
                may_appear_later: false,
                exists: true,
            });
        }
    }
    out
}

/// [`named_files`] plus the certificate, key and token files of the
/// kubeconfig's current context. Reads the kubeconfig; relative paths in it
/// are resolved against its directory, as kubectl and kube-proxy do.
/// `config` is what `lbd run` loads ([`crate::config::load`]): a
/// KubeProxyConfiguration's `clientConnection.kubeconfig` is already in
/// `proxy.kubeconfig`.
pub fn referenced_files(config: &Config) -> Result<Vec<HostFile>, ManifestError> {
    let mut out = named_files(config);
    if let Some(kc) = config.proxy.as_ref().and_then(|p| p.kubeconfig.as_ref()) {
        out.extend(kubeconfig_files(kc)?);
    }
    for f in &mut out {
        f.exists = f.path.exists();
    }
    Ok(out)
}

/// The files the kubeconfig's current context uses (all contexts when no
/// current one is set). Inline `*-data` fields need no mount.
fn kubeconfig_files(path: &Path) -> Result<Vec<HostFile>, ManifestError> {
    if !path.is_absolute() {
        return Err(ManifestError::RelativePath {
            what: "proxy.kubeconfig".into(),
            path: path.to_path_buf(),
        });
    }
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| ManifestError::Referenced {
        what: "proxy.kubeconfig".into(),
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let current = kc.current_context.as_deref().and_then(|name| {
        kc.contexts
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.context.as_ref())
    });
    let (clusters, users): (BTreeSet<&str>, BTreeSet<&str>) = match current {
        Some(ctx) => (
            [ctx.cluster.as_str()].into(),
            ctx.user.as_deref().into_iter().collect(),
        ),
        None => (
            kc.clusters.iter().map(|c| c.name.as_str()).collect(),
            kc.auth_infos.iter().map(|u| u.name.as_str()).collect(),
        ),
    };
    let mut out = Vec::new();
    let mut push = |what: String, p: &Option<String>| {
        if let Some(p) = p.as_deref().filter(|p| !p.is_empty()) {
            out.push(HostFile {
                what: format!("{what} in the kubeconfig {}", path.display()),
                path: PathBuf::from(p),
                may_appear_later: false,
                exists: true,
            });
        }
    };
    for c in kc
        .clusters
        .iter()
        .filter(|c| clusters.contains(c.name.as_str()))
    {
        if let Some(cluster) = &c.cluster {
            push(
                format!("cluster {} certificate-authority", c.name),
                &cluster.certificate_authority,
            );
        }
    }
    for u in kc
        .auth_infos
        .iter()
        .filter(|u| users.contains(u.name.as_str()))
    {
        if let Some(a) = &u.auth_info {
            push(
                format!("user {} client-certificate", u.name),
                &a.client_certificate,
            );
            push(format!("user {} client-key", u.name), &a.client_key);
            push(format!("user {} tokenFile", u.name), &a.token_file);
        }
    }
    // A missing file would leave the pod stuck in ContainerCreating (hostPath
    // type File); say so now instead.
    for f in &out {
        if !f.path.is_file() {
            return Err(ManifestError::Referenced {
                what: f.what.clone(),
                path: f.path.clone(),
                message: "does not exist".into(),
            });
        }
    }
    Ok(out)
}

/// What the manifest needs beyond the config.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    pub image: String,
    /// The config's absolute path on the host.
    pub config_path: PathBuf,
}

/// The static Pod for `config`, mounting `files` read-only. Pure.
pub fn static_pod(
    config: &Config,
    opts: &ManifestOptions,
    files: &[HostFile],
) -> Result<Pod, ManifestError> {
    let vols = volumes(config, opts, files)?;
    let container = container(config, opts, vols.mounts);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some("lbd".into()),
            namespace: Some("kube-system".into()),
            labels: Some(labels()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            host_network: Some(true),
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            priority_class_name: Some("system-node-critical".into()),
            // Static pods skip admission, so the priority is spelt out as
            // kubeadm does for its own static pods.
            priority: Some(2_000_001_000),
            termination_grace_period_seconds: Some(termination_grace_seconds(config)),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(vols.volumes),
            ..Default::default()
        }),
        status: None,
    })
}

/// The host paths the pod mounts, each at the same path in the container:
/// the config's directory (so an editor's rename-replace of lbd.yaml is
/// seen, and a file beside it needs no mount of its own), every other file
/// the config names, read-only (the directory of a health check's CA or
/// key that does not exist yet, so it is seen when `kubeadm init` writes
/// it), the admin socket's directory, and the kernel modules for IPVS.
fn volumes(
    config: &Config,
    opts: &ManifestOptions,
    files: &[HostFile],
) -> Result<Volumes, ManifestError> {
    if !opts.config_path.is_absolute() {
        return Err(ManifestError::RelativePath {
            what: "the config file".into(),
            path: opts.config_path.clone(),
        });
    }
    let config_dir = match opts.config_path.parent() {
        Some(d) if d != Path::new("/") && d != Path::new("/etc") => d.to_path_buf(),
        _ => {
            return Err(ManifestError::ConfigDirectory {
                path: opts.config_path.clone(),
            })
        }
    };
    let mut vols = Volumes::default();
    vols.add("config", &config_dir, &config_dir, "Directory", true);

    let mut seen = BTreeSet::new();
    seen.insert(config_dir.clone());
    for f in files {
        if !f.path.is_absolute() {
            return Err(ManifestError::RelativePath {
                what: f.what.clone(),
                path: f.path.clone(),
            });
        }
        if f.path.starts_with(&config_dir) {
            continue;
        }
        let (host, type_) = match (f.exists, f.may_appear_later, f.path.parent()) {
            (true, _, _) => (f.path.clone(), "File"),
            (false, true, Some(dir)) if dir != Path::new("/") => {
                (dir.to_path_buf(), "DirectoryOrCreate")
            }
            _ => {
                return Err(ManifestError::Referenced {
                    what: f.what.clone(),
                    path: f.path.clone(),
                    message: "does not exist".into(),
                })
            }
        };
        // A directory mounted already covers the files in it.
        if seen.iter().any(|s| host.starts_with(s)) {
            continue;
        }
        seen.insert(host.clone());
        vols.add(&volume_name(&host), &host, &host, type_, true);
    }

    // The admin socket's directory, writable: lbd creates the socket there and
    // `lbd status` on the host finds it at the same path.
    let socket_dir = match config.admin.socket.parent() {
        Some(d) if d.is_absolute() && d != Path::new("/") => d.to_path_buf(),
        _ => {
            return Err(ManifestError::RelativePath {
                what: "admin.socket (its directory)".into(),
                path: config.admin.socket.clone(),
            })
        }
    };
    vols.add(
        &volume_name(&socket_dir),
        &socket_dir,
        &socket_dir,
        "DirectoryOrCreate",
        false,
    );

    if config.proxy.as_ref().map(|p| p.mode) == Some(ProxyMode::Ipvs) {
        // As kube-proxy in IPVS mode: the host's modules tree, read-only, so
        // the ip_vs modules the node loaded are visible.
        let m = Path::new("/lib/modules");
        vols.add("lib-modules", m, m, "Directory", true);
    }
    Ok(vols)
}

/// The one container: `lbd run` on the mounted config, probed on the admin
/// interface, with only the capabilities it needs.
fn container(config: &Config, opts: &ManifestOptions, mounts: Vec<VolumeMount>) -> Container {
    let (liveness, readiness) = probes(config);
    Container {
        name: "lbd".into(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "lbd".into(),
            "run".into(),
            "-c".into(),
            opts.config_path.display().to_string(),
        ]),
        liveness_probe: Some(liveness),
        readiness_probe: Some(readiness),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            ..Default::default()
        }),
        security_context: Some(security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// [`CAPABILITIES`] and nothing else; no privilege escalation, a read-only
/// root.
fn security_context() -> SecurityContext {
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        }),
        // Root, confined by the capability set: raw sockets and netlink
        // check the capability against the user namespace's root.
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        read_only_root_filesystem: Some(true),
        ..Default::default()
    }
}

/// kubeadm's labels for control-plane static pods, and the recommended ones.
fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("component".to_string(), "lbd".to_string()),
        ("tier".to_string(), "control-plane".to_string()),
        ("app.kubernetes.io/name".to_string(), "lbd".to_string()),
        (
            "app.kubernetes.io/version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ])
}

/// The pod must outlive the stop: the VIP given up (at most two advert
/// intervals, 2 s), the VRRP handover grace, then the balancer's drain
/// (shutdown_grace); never below Kubernetes' default. The 5 s margin covers
/// the hand-over and the default 2 s grace; a longer grace adds the rest.
fn termination_grace_seconds(config: &Config) -> i64 {
    let grace = config
        .tcplb
        .as_ref()
        .map_or(Duration::from_secs(30), |t| t.shutdown_grace);
    let handover = config
        .vrrp
        .as_ref()
        .and_then(|v| v.instances.iter().map(|i| i.handover_grace).max())
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs(2));
    (grace.as_secs() + handover.as_secs_f64().ceil() as u64 + 5).max(30) as i64
}

/// Liveness on `/healthz` and readiness on `/readyz` of the admin listener;
/// with the listener off, `lbd status` over the admin socket for both.
fn probes(config: &Config) -> (Probe, Probe) {
    match config.admin.listen {
        Some(addr) => (
            Probe {
                http_get: Some(http_get(addr, "/healthz")),
                initial_delay_seconds: Some(10),
                period_seconds: Some(10),
                timeout_seconds: Some(5),
                failure_threshold: Some(8),
                ..Default::default()
            },
            Probe {
                http_get: Some(http_get(addr, "/readyz")),
                period_seconds: Some(5),
                timeout_seconds: Some(2),
                failure_threshold: Some(3),
                ..Default::default()
            },
        ),
        None => {
            let exec = ExecAction {
                command: Some(vec![
                    "lbd".into(),
                    "status".into(),
                    // Alive means answering: exit 3 (a backend down, say)
                    // must not get lbd restarted.
                    "--answered".into(),
                    "--socket".into(),
                    config.admin.socket.display().to_string(),
                ]),
            };
            (
                Probe {
                    exec: Some(exec.clone()),
                    initial_delay_seconds: Some(10),
                    period_seconds: Some(10),
                    timeout_seconds: Some(5),
                    failure_threshold: Some(8),
                    ..Default::default()
                },
                Probe {
                    exec: Some(exec),
                    period_seconds: Some(5),
                    timeout_seconds: Some(2),
                    failure_threshold: Some(3),
                    ..Default::default()
                },
            )
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> HTTPGetAction {
    // With hostNetwork the kubelet would probe the node's address by default;
    // the admin listener usually binds loopback only, so name the host. An
    // unspecified bind answers on loopback too.
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    HTTPGetAction {
        host: Some(host.to_string()),
        port: IntOrString::Int(i32::from(addr.port())),
        path: Some(path.into()),
        scheme: Some("HTTP".into()),
        ..Default::default()
    }
}

#[derive(Default)]
struct Volumes {
    names: BTreeSet<String>,
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
}

impl Volumes {
    fn add(&mut self, name: &str, host: &Path, mount: &Path, type_: &str, read_only: bool) {
        let mut unique = name.to_string();
        let mut n = 2;
        while !self.names.insert(unique.clone()) {
            let suffix = format!("-{n}");
            let keep = name.len().min(63 - suffix.len());
            unique = format!("{}{suffix}", &name[..keep]);
            n += 1;
        }
        self.volumes.push(Volume {
            name: unique.clone(),
            host_path: Some(HostPathVolumeSource {
                path: host.display().to_string(),
                type_: Some(type_.into()),
            }),
            ..Default::default()
        });
        self.mounts.push(VolumeMount {
            name: unique,
            mount_path: mount.display().to_string(),
            // Writable is the default; say only what differs.
            read_only: read_only.then_some(true),
            ..Default::default()
        });
    }
}

/// A DNS-1123 label from a path: `/etc/kubernetes/pki/ca.crt` ->
/// `etc-kubernetes-pki-ca-crt`; the tail is kept when too long, since the
/// file name tells most.
pub fn volume_name(path: &Path) -> String {
    let mut s = String::new();
    for c in path.display().to_string().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    // Room for a `-NN` suffix when two paths sanitize alike.
    const MAX: usize = 59;
    let s = s.trim_matches('-');
    let s = if s.len() > MAX {
        &s[s.len() - MAX..]
    } else {
        s
    };
    let s = s.trim_matches('-');
    if s.is_empty() {
        "file".into()
    } else {
        s.to_string()
    }
}

/// The Pod as YAML.
pub fn to_yaml(pod: &Pod) -> Result<String, ManifestError> {
    serde_saphyr::to_string(pod).map_err(|e| ManifestError::Yaml(e.to_string()))
}

/// `lbd manifest -c CONFIG --image IMAGE`: load, look inside the files the
/// config names, build the Pod, render it.
pub fn render(config_path: &Path, image: &str) -> Result<Rendered, ManifestError> {
    // Exactly what `lbd run` will read, KubeProxyConfiguration included.
    let config = crate::config::load(config_path)?;
    let absolute =
        std::path::absolute(config_path).map_err(|source| ManifestError::ConfigPath {
            path: config_path.to_path_buf(),
            source,
        })?;
    let files = referenced_files(&config)?;
    let pod = static_pod(
        &config,
        &ManifestOptions {
            image: image.to_string(),
            config_path: absolute,
        },
        &files,
    )?;
    // No note about nft: the default image carries it (scripts/oci-image.sh).
    Ok(Rendered {
        yaml: to_yaml(&pod)?,
        notes: notes(&files),
    })
}

/// The manifest, and what the operator should know about it.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub yaml: String,
    /// One line each, for stderr.
    pub notes: Vec<String>,
}

/// Directories mounted because a file in them is not there yet: the pod
/// sees all of the directory.
fn notes(files: &[HostFile]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !f.exists && f.may_appear_later)
        .map(|f| {
            let dir = f.path.parent().unwrap_or(Path::new("/"));
            format!(
                "lbd manifest: {} ({}) does not exist yet: the pod mounts {} read-only, all of it, to see it appear (after kubeadm init, copying the file beside lbd.yaml and pointing the config there keeps the rest out of the pod; docs/kubeadm.md)",
                f.path.display(),
                f.what,
                dir.display()
            )
        })
        .collect()
}

/// `lbd manifest --daemonset -c CONFIG`: the proxy-only DaemonSet, its
/// ConfigMap and RBAC, for the nodes without a control plane.
pub fn render_daemonset(
    config_path: &Path,
    image: &str,
    api_server: Option<&str>,
) -> Result<String, ManifestError> {
    let config = crate::config::load(config_path)?;
    daemonset::to_yaml(&daemonset::objects(&config, image, api_server)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_dns_labels() {
        assert_eq!(
            volume_name(Path::new("/etc/kubernetes/pki/ca.crt")),
            "etc-kubernetes-pki-ca-crt"
        );
        assert_eq!(volume_name(Path::new("/")), "file");
        let long = format!("/{}/Key_File.PEM", "a".repeat(100));
        let n = volume_name(Path::new(&long));
        assert!(n.len() <= 59, "{n}");
        assert!(n.ends_with("key-file-pem"), "{n}");
        assert!(n.starts_with(|c: char| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn colliding_names_get_suffixes_within_63() {
        let mut v = Volumes::default();
        let name = "x".repeat(63);
        v.add(&name, Path::new("/a"), Path::new("/a"), "File", true);
        v.add(&name, Path::new("/b"), Path::new("/b"), "File", true);
        let names: Vec<_> = v.volumes.iter().map(|v| v.name.clone()).collect();
        assert_eq!(names[1], format!("{}-2", "x".repeat(61)));
        assert!(names.iter().all(|n| n.len() <= 63));
    }

    #[test]
    fn unspecified_admin_bind_is_probed_on_loopback() {
        let g = http_get("0.0.0.0:9440".parse().unwrap(), "/healthz");
        assert_eq!(g.host.as_deref(), Some("127.0.0.1"));
        let g = http_get("[::]:9440".parse().unwrap(), "/healthz");
        assert_eq!(g.host.as_deref(), Some("::1"));
        let g = http_get("10.0.0.1:9440".parse().unwrap(), "/readyz");
        assert_eq!(g.host.as_deref(), Some("10.0.0.1"));
        assert_eq!(g.port, IntOrString::Int(9440));
    }
}
