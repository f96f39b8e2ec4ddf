//! A KubeProxyConfiguration mapped onto lbd's `proxy` section, with the
//! loader's own reader ([`crate::config::kube_proxy::apply`]) so the
//! fields mean in the output exactly what `proxy.kube_proxy_config` would
//! make them mean.

use crate::config::yaml::{parse_document, Node, Value};
use crate::config::{Environment, ProxyConfig};

use super::render::ProxyDraft;
use super::{Draft, Source};

/// Keys `apply` reads (dotted paths).
const MAPPED: &[&str] = &[
    "apiVersion",
    "kind",
    "mode",
    "clusterCIDR",
    "masqueradeAll",
    "nodePortAddresses",
    "hostnameOverride",
    "healthzBindAddress",
    "metricsBindAddress",
    "clientConnection.kubeconfig",
    "ipvs.scheduler",
    "ipvs.excludeCIDRs",
    "ipvs.strictARP",
    "ipvs.syncPeriod",
    "ipvs.minSyncPeriod",
    "ipvs.tcpTimeout",
    "ipvs.tcpFinTimeout",
    "ipvs.udpTimeout",
];

/// Settings of the other data planes and of kube-proxy's own logging:
/// nothing lbd could use.
const OTHER_MODES: &[&str] = &["iptables", "nftables", "winkernel", "logging"];

/// kube-proxy's defaults as kubeadm writes them: not worth a comment.
const KUBE_PROXY_DEFAULTS: &[(&str, &str)] = &[
    ("bindAddress", "0.0.0.0"),
    ("bindAddressHardFail", "false"),
    ("clientConnection.acceptContentTypes", ""),
    ("clientConnection.burst", "10"),
    (
        "clientConnection.contentType",
        "application/vnd.kubernetes.protobuf",
    ),
    ("clientConnection.qps", "5"),
    ("configSyncPeriod", "15m0s"),
    ("conntrack.maxPerCore", "32768"),
    ("conntrack.min", "131072"),
    ("conntrack.tcpCloseWaitTimeout", "1h0m0s"),
    ("conntrack.tcpEstablishedTimeout", "24h0m0s"),
    ("enableProfiling", "false"),
    ("portRange", ""),
    ("showHiddenMetricsForProxy", ""),
    ("detectLocalMode", ""),
];

pub(super) fn map(src: &Source, existing: &[String], draft: &mut Draft) -> Result<(), String> {
    let root = parse_document(&src.text)
        .map_err(|e| format!("{}:{}:{}: {}", src.path, e.pos.line, e.pos.col, e.message))?;
    let mut text = src.text.clone();
    // kube-proxy's default mode ("" on Linux) and `iptables` have no lbd
    // data plane: lbd programs IPVS instead, said in a comment.
    if let Some((mode, pos)) = field(&root, "mode") {
        if mode.is_empty() || mode == "iptables" {
            draft.proxy_notes.push(format!(
                "{}:{}: mode {:?} (iptables): lbd has no iptables data plane; it programs IPVS (mode ipvs), which serves the same Services",
                src.path,
                pos.line,
                mode
            ));
            text = blank_value(&text, pos.line as usize, pos.col as usize);
        }
    }
    let env = Environment {
        hostname: "import".into(),
        existing_files: None,
    };
    let mut proxy: ProxyConfig = crate::config::parse("proxy: {}\n", "import", &env)
        .ok()
        .and_then(|c| c.proxy)
        .ok_or_else(|| "lbd import: the default proxy section does not parse".to_string())?;
    crate::config::kube_proxy::apply(&text, &src.path, &mut proxy).map_err(|problems| {
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let mut unmapped = Vec::new();
    walk(&root, "", &mut unmapped);
    for (key, value, line) in unmapped {
        draft.proxy_notes.push(format!(
            "{}:{line}: {key}: {value} is not mapped{}",
            src.path,
            why(&key)
        ));
    }
    let mut kubeconfig_elsewhere = None;
    if let Some(k) = proxy.kubeconfig.take() {
        let shown = k.display().to_string();
        if existing.contains(&shown) {
            proxy.kubeconfig = Some(k);
        } else {
            kubeconfig_elsewhere = Some(shown);
        }
    }
    // Not kube-proxy's: lbd names it itself.
    proxy.kube_proxy_config = None;
    draft.proxy = Some(ProxyDraft {
        config: proxy,
        kubeconfig_elsewhere,
    });
    Ok(())
}

/// `clientConnection.kubeconfig` of a KubeProxyConfiguration's text.
pub(super) fn kubeconfig_path(text: &str) -> Option<String> {
    let root = parse_document(text).ok()?;
    let Value::Map(entries) = &root.value else {
        return None;
    };
    let cc = entries
        .iter()
        .find(|(k, _, _)| k == "clientConnection")
        .map(|(_, _, n)| n)?;
    field(cc, "kubeconfig")
        .map(|(s, _)| s)
        .filter(|s| !s.is_empty())
}

fn why(key: &str) -> &'static str {
    if key.starts_with("conntrack.") {
        " (set conntrack limits with sysctl on the host)"
    } else if key == "featureGates" || key.starts_with("featureGates.") {
        " (lbd has no feature gates)"
    } else if key.starts_with("clientConnection.") {
        " (lbd's client uses its own limits)"
    } else {
        ""
    }
}

/// A top-level string field and where its value is.
fn field(root: &Node, key: &str) -> Option<(String, crate::config::yaml::Pos)> {
    let Value::Map(entries) = &root.value else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _, _)| k == key)
        .and_then(|(_, _, n)| match &n.value {
            Value::Str(s) => Some((s.clone(), n.pos)),
            // Nothing to blank: the position stays unknown.
            Value::Null => Some((String::new(), crate::config::yaml::Pos::default())),
            _ => None,
        })
}

/// `text` with the value at `line`:`col` replaced by `""` (what
/// kube-proxy reads as "the default").
fn blank_value(text: &str, line: usize, col: usize) -> String {
    let mut out = String::new();
    for (i, l) in text.lines().enumerate() {
        if i + 1 == line && col >= 1 && col - 1 <= l.len() && l.is_char_boundary(col - 1) {
            out.push_str(&l[..col - 1]);
            out.push_str("\"\"");
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    out
}

/// Leaves that are set (not empty, zero or null), not mapped, and not
/// kube-proxy's default: (dotted key, value, line).
fn walk(node: &Node, prefix: &str, out: &mut Vec<(String, String, u64)>) {
    let Value::Map(entries) = &node.value else {
        return;
    };
    for (k, pos, child) in entries {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if MAPPED.contains(&key.as_str()) {
            continue;
        }
        if prefix.is_empty() && OTHER_MODES.contains(&k.as_str()) {
            continue;
        }
        match &child.value {
            Value::Map(_) => walk(child, &key, out),
            value => {
                let shown = match value {
                    Value::Null => continue,
                    Value::Bool(false) => continue,
                    Value::Int(0) => continue,
                    Value::Str(s) if s.is_empty() || s == "0s" => continue,
                    Value::Str(s) => s.clone(),
                    Value::Bool(true) => "true".into(),
                    Value::Int(i) => i.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Seq(items) if items.is_empty() => continue,
                    Value::Seq(_) => "a list".into(),
                    Value::Map(_) => continue,
                };
                if KUBE_PROXY_DEFAULTS.contains(&(key.as_str(), shown.as_str())) {
                    continue;
                }
                out.push((key, shown, pos.line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanking_a_value_keeps_the_rest() {
        assert_eq!(
            blank_value("a: 1\nmode: iptables\nb: 2\n", 2, 7),
            "a: 1\nmode: \"\"\nb: 2\n"
        );
    }
}
