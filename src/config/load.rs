//! The loader: the I/O edge of config reading.

use std::path::Path;

use super::error::{ConfigError, Problem};
use super::kube_proxy;
use super::model::{Config, ProxyConfig, ProxyMode};
use super::parse::{self, Environment, FileRef};

/// Reads and validates lbd.yaml at `path` and, when `proxy.kube_proxy_config`
/// names one, the KubeProxyConfiguration, whose fields override the proxy
/// section's (as kube-proxy reads them). What `lbd run`, a reload, `lbd
/// check`, `lbd status -c` and `lbd manifest` all see.
///
/// Problems in both files are reported together, each at its own file's
/// line and column.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
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
    let Some(mut config) = reading.config else {
        return Err(ConfigError {
            path: shown,
            problems,
        });
    };
    // Read even when lbd.yaml has problems, so that one `lbd check` shows
    // those of both files.
    let mut merged = true;
    if let (Some(kpc), Some(proxy)) = (reading.kube_proxy_config, config.proxy.as_mut()) {
        let found = merge_kube_proxy_config(&kpc, &shown, proxy);
        merged = found.is_empty();
        problems.extend(found);
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
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            path: shown,
            problems,
        })
    }
}

/// Applies the KubeProxyConfiguration `kpc` to `proxy`; all-or-nothing.
fn merge_kube_proxy_config(
    kpc: &FileRef,
    config_path: &str,
    proxy: &mut ProxyConfig,
) -> Vec<Problem> {
    match std::fs::read_to_string(&kpc.path) {
        Ok(text) => kube_proxy::apply(&text, &kpc.path.display().to_string(), proxy)
            .err()
            .unwrap_or_default(),
        // Reported where lbd.yaml names it: that is the line to fix.
        Err(e) => vec![Problem::at(
            config_path,
            kpc.at,
            format!(
                "proxy.kube_proxy_config: cannot read {}: {e}",
                kpc.path.display()
            ),
        )],
    }
}
