//! The loader: the I/O edge of config reading.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, Problem};
use super::files::{check_kubeconfig, check_named_files};
use super::kube_proxy;
use super::model::{
    ApiServer, ApiServerSource, Config, KubeconfigSource, ProxyConfig, ProxyMode, TrackTarget,
};
use super::parse::{self, Environment, FileKind, FileRef, NamedFile};
use super::yaml::Pos;

/// What the command line adds to the file (`lbd run`, `lbd check`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `--kubeconfig`: the proxy's kubeconfig, above every one the files
    /// name.
    pub kubeconfig: Option<PathBuf>,
    /// `--node-name`: over `node.name` (the DaemonSet passes the Node's).
    pub node_name: Option<String>,
}

/// Reads and validates lbd.yaml at `path` and, when `proxy.kube_proxy_config`
/// names one, the KubeProxyConfiguration, whose fields override the proxy
/// section's (as kube-proxy reads them). What `lbd run`, a reload, `lbd
/// check`, `lbd status -c` and `lbd manifest` all see.
///
/// Problems in both files are reported together, each at its own file's
/// line and column, and so are problems inside the files they name (CA
/// bundles, certificates, keys, the kubeconfig and its files).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, &LoadOptions::default())
}

/// [`load`], with the command line's overrides.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Config, ConfigError> {
    load_with_warnings(path, opts).map(|(config, _)| config)
}

/// [`load_with`], and what is valid but worth telling the operator (`lbd
/// check` prints it): a health check's TLS file that does not exist yet.
pub fn load_with_warnings(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Config, Vec<Problem>), ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(&shown, &e))?;
    let env = Environment {
        hostname: hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
        existing_files: None,
    };
    let reading = parse::read(&text, &shown, &env, &|p: &Path| p.exists());
    let mut problems = reading.problems;
    let warnings = reading.warnings;
    let Some(mut config) = reading.config else {
        return Err(ConfigError {
            path: shown,
            problems,
        });
    };
    let mut files = reading.files;
    if let Some(n) = opts
        .node_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        config.node.name = n.to_string();
    }
    // Read even when lbd.yaml has problems, so that one `lbd check` shows
    // those of both files.
    let mut merged = true;
    if let Some(proxy) = config.proxy.as_mut() {
        let mut kubeconfig_at = None;
        if let Some(kpc) = &reading.kube_proxy_config {
            let (kpc_problems, at) = merge_kube_proxy_config(kpc, &shown, proxy);
            merged = kpc_problems.is_empty();
            problems.extend(kpc_problems);
            kubeconfig_at = at;
        }
        if let Some(flag) = &opts.kubeconfig {
            problems.extend(kubeconfig_flag(flag, proxy));
        }
        if proxy.kubeconfig_source == KubeconfigSource::KubeProxyConfiguration {
            if let (Some(at), Some(kc), Some(kpc_path)) =
                (kubeconfig_at, &proxy.kubeconfig, &proxy.kube_proxy_config)
            {
                problems.extend(kube_proxy_kubeconfig(kpc_path, kc, at, &mut files));
            }
        }
    }
    // The mode that counts is the merged one: lbd.yaml's `nftables` under a
    // KubeProxyConfiguration that says `ipvs` is fine. (A KubeProxyConfiguration
    // that says `nftables` is reported at its own line.)
    let nftables = config.proxy.as_ref().map(|p| p.mode) == Some(ProxyMode::Nftables);
    if nftables && merged {
        problems.push(Problem::at(
            &shown,
            reading.proxy_mode_at.unwrap_or_default(),
            "proxy.mode: nftables is not implemented yet; use ipvs",
        ));
    }
    // Only the kubeconfig that is used is looked into.
    let used = config.proxy.as_ref().and_then(|p| p.kubeconfig.clone());
    files.retain(|f| f.kind != FileKind::Kubeconfig || Some(&f.path) == used.as_ref());
    problems.extend(check_named_files(&shown, &files));
    problems.extend(in_cluster_address(&mut config, &shown, reading.proxy_at));
    order_by_file(&mut problems, &shown);
    if problems.is_empty() {
        Ok((config, warnings))
    } else {
        Err(ConfigError {
            path: shown,
            problems,
        })
    }
}

/// Applies the KubeProxyConfiguration `kpc` to `proxy`; all-or-nothing.
/// Returns its problems, and where it names the kubeconfig when that one
/// is used.
fn merge_kube_proxy_config(
    kpc: &FileRef,
    config_path: &str,
    proxy: &mut ProxyConfig,
) -> (Vec<Problem>, Option<Pos>) {
    match std::fs::read_to_string(&kpc.path) {
        Ok(text) => match kube_proxy::apply(&text, &kpc.path.display().to_string(), proxy) {
            Ok(applied) => (Vec::new(), applied.kubeconfig_at),
            Err(problems) => (problems, None),
        },
        // Reported where lbd.yaml names it: that is the line to fix.
        Err(e) => (
            vec![Problem::at(
                config_path,
                kpc.at,
                format!(
                    "proxy.kube_proxy_config: cannot read {}: {e}",
                    kpc.path.display()
                ),
            )],
            None,
        ),
    }
}

/// The KubeProxyConfiguration's kubeconfig, when lbd uses it: it must exist
/// (kubeadm's names a path inside kube-proxy's pod), and is looked into.
fn kube_proxy_kubeconfig(
    kpc_path: &Path,
    kubeconfig: &Path,
    at: Pos,
    files: &mut Vec<NamedFile>,
) -> Vec<Problem> {
    let shown = kpc_path.display().to_string();
    if kubeconfig.is_file() {
        // Checked with the others, but its problems point into the
        // kubeconfig itself, not at lbd.yaml.
        files.push(NamedFile {
            what: "clientConnection.kubeconfig".into(),
            kind: FileKind::Kubeconfig,
            path: kubeconfig.to_path_buf(),
            at,
            certificate: None,
        });
        return Vec::new();
    }
    vec![Problem::at(
        &shown,
        at,
        format!(
            "clientConnection.kubeconfig: {} does not exist (kubeadm's kube-proxy reads it inside its own pod; give lbd one with proxy.kubeconfig)",
            kubeconfig.display()
        ),
    )]
}

/// `--kubeconfig`: wins over the files' kubeconfigs.
fn kubeconfig_flag(flag: &Path, proxy: &mut ProxyConfig) -> Vec<Problem> {
    if let Some(old) = proxy.kubeconfig.take() {
        proxy
            .kubeconfig_overridden
            .push((proxy.kubeconfig_source, old));
        proxy.kubeconfig_overridden.sort();
    }
    proxy.kubeconfig = Some(flag.to_path_buf());
    proxy.kubeconfig_source = KubeconfigSource::Flag;
    if !flag.is_file() {
        return vec![Problem::whole_file(
            &flag.display().to_string(),
            "--kubeconfig: does not exist",
        )];
    }
    check_kubeconfig(flag)
}

/// The service account token a pod gets; in-cluster credentials are it.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// In-cluster (no kubeconfig), the proxy needs a service account token,
/// which only a pod that is not a static pod has, and the apiserver's real
/// address: `proxy.api_server`, else the VIP of the VRRP instance that
/// tracks a listener, on that listener's port. `KUBERNETES_SERVICE_HOST` is
/// the `kubernetes` Service's ClusterIP, which only this proxy programs.
fn in_cluster_address(config: &mut Config, path: &str, proxy_at: Option<Pos>) -> Vec<Problem> {
    let derived = api_server_from_vip(config);
    let Some(proxy) = config.proxy.as_mut() else {
        return Vec::new();
    };
    if proxy.mode == ProxyMode::None || proxy.kubeconfig.is_some() {
        return Vec::new();
    }
    let at = proxy_at.unwrap_or(Pos { line: 1, col: 1 });
    let mut problems = Vec::new();
    if !Path::new(SERVICE_ACCOUNT_TOKEN).is_file() {
        problems.push(Problem::at(
            path,
            at,
            format!(
                "proxy: no kubeconfig, and no service account token ({SERVICE_ACCOUNT_TOKEN}) for in-cluster credentials: a static pod or a systemd service has none; set proxy.kubeconfig (docs/install.md)"
            ),
        ));
    }
    if proxy.api_server.is_none() {
        proxy.api_server = derived;
    }
    if proxy.api_server.is_none() {
        problems.push(Problem::at(
            path,
            at,
            "proxy: in-cluster credentials need proxy.api_server (the apiserver's real address, e.g. https://VIP:8443, as kube-proxy's --master): in-cluster KUBERNETES_SERVICE_HOST is the kubernetes Service's ClusterIP, which only this proxy programs",
        ));
    }
    problems
}

/// `https://VIP:PORT` of the first VRRP instance that tracks a listener (or
/// of the only instance and the only listener).
pub fn api_server_from_vip(config: &Config) -> Option<ApiServer> {
    let vrrp = config.vrrp.as_ref()?;
    let tcplb = config.tcplb.as_ref()?;
    let tracked = vrrp.instances.iter().find_map(|i| {
        i.track.iter().find_map(|t| match &t.target {
            TrackTarget::Listener(name) => tcplb
                .listeners
                .iter()
                .find(|l| &l.name == name)
                .map(|l| (i, l)),
            TrackTarget::Interface(_) => None,
        })
    });
    let only = match (&vrrp.instances[..], &tcplb.listeners[..]) {
        ([i], [l]) => Some((i, l)),
        _ => None,
    };
    let (instance, listener) = tracked.or(only)?;
    let vip = instance.virtual_ips.first()?.addr();
    let host = match vip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    Some(ApiServer {
        url: format!("https://{host}:{}", listener.bind.port()),
        from: ApiServerSource::Vip {
            instance: instance.name.clone(),
            listener: listener.name.clone(),
        },
    })
}

/// lbd.yaml's problems first, then each other file's in the order the
/// files first appear; each file's by position.
fn order_by_file(problems: &mut [Problem], main: &str) {
    let mut files: Vec<String> = vec![main.to_string()];
    for p in problems.iter() {
        if !files.contains(&p.path) {
            files.push(p.path.clone());
        }
    }
    problems.sort_by_key(|p| {
        let rank = files.iter().position(|f| *f == p.path).unwrap_or(0);
        (rank, p.line, p.col)
    });
}

/// Which credentials and address the proxy uses, and what they override,
/// in one line: what `lbd run` logs at start and `lbd check` prints.
pub fn describe_credentials(p: &ProxyConfig) -> String {
    let mut s = match &p.kubeconfig {
        Some(k) => format!(
            "kubeconfig {} (from {})",
            k.display(),
            p.kubeconfig_source.describe()
        ),
        None => KubeconfigSource::InCluster.describe().to_string(),
    };
    for (source, path) in &p.kubeconfig_overridden {
        s.push_str(&format!(
            "; overrides {} {}",
            source.describe(),
            path.display()
        ));
    }
    if let Some(a) = &p.api_server {
        let from = match &a.from {
            ApiServerSource::LbdYaml => "proxy.api_server".to_string(),
            ApiServerSource::Vip { instance, listener } => {
                format!("the VIP of VRRP instance {instance}, port of listener {listener}")
            }
        };
        s.push_str(&format!(", apiserver {} (from {from})", a.url));
    }
    s
}
