//! What a keepalived track script checks, read from its command line and,
//! when the caller could read it, its text.
//!
//! The scripts in the wild check one of two things: that the balancer
//! process runs (`killall -0 haproxy`, kubeasz) or that an HTTPS endpoint
//! answers (`curl https://localhost:8443/`, the kubeadm HA guide's
//! check_apiserver.sh). lbd's listener track covers both with its own health
//! checks: the listener fails while it has no healthy backend.

use std::collections::BTreeMap;

/// What a track script checks, as far as lbd can map it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptCheck {
    /// An HTTP(S) endpoint on this port (the balancer's or an apiserver's).
    Port(u16),
    /// The balancer (haproxy, nginx) runs and answers.
    Balancer,
    /// Something else; why it is not mapped.
    Unknown(String),
}

/// Process names of the balancers the guides run beside keepalived.
const BALANCERS: &[&str] = &["haproxy", "l4lb", "nginx", "envoy", "kube-lb"];

/// A `vrrp_track_process`'s process.
pub fn classify_process(process: &str) -> ScriptCheck {
    let base = process.rsplit('/').next().unwrap_or(process);
    if BALANCERS.contains(&base) || base == "kube-apiserver" {
        ScriptCheck::Balancer
    } else {
        ScriptCheck::Unknown(format!("it watches the process {process:?}"))
    }
}

/// A `vrrp_script`'s `script` command line, with its program's text when
/// it could be read.
pub fn classify(cmd: &str, text: Option<&str>) -> ScriptCheck {
    if let Some(c) = process_check(cmd) {
        return c;
    }
    if let Some(port) = curl_port(cmd, &BTreeMap::new()) {
        return ScriptCheck::Port(port);
    }
    let program = cmd.split_whitespace().next().unwrap_or("");
    let Some(text) = text else {
        return ScriptCheck::Unknown(format!("cannot read {program} to see what it checks"));
    };
    let vars = assignments(text);
    let mut talks_http = false;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some(c) = process_check(line) {
            return c;
        }
        if line.contains("curl") || line.contains("wget") {
            talks_http = true;
            if let Some(port) = curl_port(line, &vars) {
                return ScriptCheck::Port(port);
            }
        }
    }
    if talks_http {
        // A URL whose port is a placeholder never filled in: it still
        // checks the apiserver through this node's balancer.
        return ScriptCheck::Balancer;
    }
    ScriptCheck::Unknown(format!(
        "{program} checks neither a URL nor the balancer process"
    ))
}

/// `killall -0 haproxy`, `pidof haproxy`, `pgrep -x haproxy`, `systemctl
/// is-active haproxy`.
fn process_check(line: &str) -> Option<ScriptCheck> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let tool = words.first()?.rsplit('/').next()?;
    let checks_process = matches!(tool, "killall" | "pidof" | "pgrep")
        || (tool == "systemctl" && words.contains(&"is-active"));
    if !checks_process {
        return None;
    }
    let target = words.iter().rev().find(|w| !w.starts_with('-'))?;
    let target = target.trim_end_matches(".service");
    BALANCERS.contains(&target).then_some(ScriptCheck::Balancer)
}

/// `NAME=VALUE` lines of a shell script, quotes removed.
fn assignments(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = value.split_whitespace().next().unwrap_or("");
        vars.insert(
            name.to_string(),
            value.trim_matches(['"', '\'']).to_string(),
        );
    }
    vars
}

/// `${NAME}` and `$NAME` replaced by their values.
fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
        out = out.replace(&format!("${k}"), v);
    }
    out
}

/// The port of the first http(s) URL on `line`.
fn curl_port(line: &str, vars: &BTreeMap<String, String>) -> Option<u16> {
    let line = expand(line, vars);
    let start = line.find("https://").or_else(|| line.find("http://"))?;
    let rest = &line[start..];
    let after_scheme = &rest[rest.find("://")? + 3..];
    let authority = after_scheme
        .split(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
        .next()?;
    let port = authority.rsplit_once(':')?.1;
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancer_process_checks() {
        assert_eq!(
            classify("/usr/bin/killall -0 haproxy", None),
            ScriptCheck::Balancer
        );
        assert_eq!(classify("pidof haproxy", None), ScriptCheck::Balancer);
        assert_eq!(classify_process("l4lb"), ScriptCheck::Balancer);
        assert!(matches!(classify_process("sshd"), ScriptCheck::Unknown(_)));
    }

    #[test]
    fn urls_with_variables() {
        let script = "#!/bin/sh\nAPISERVER_VIP=10.31.90.0\nAPISERVER_DEST_PORT=8443\n\
                      curl --silent --max-time 2 --insecure https://localhost:${APISERVER_DEST_PORT}/ -o /dev/null\n";
        assert_eq!(
            classify("/etc/keepalived/check_apiserver.sh", Some(script)),
            ScriptCheck::Port(8443)
        );
        // A placeholder nobody filled in still checks through the balancer.
        let unfilled = "curl --insecure https://localhost:${APISERVER_DEST_PORT}/ -o /dev/null\n";
        assert_eq!(classify("/x.sh", Some(unfilled)), ScriptCheck::Balancer);
        assert!(matches!(classify("/x.sh", None), ScriptCheck::Unknown(_)));
        assert!(matches!(
            classify("/x.sh", Some("exit 0\n")),
            ScriptCheck::Unknown(_)
        ));
    }
}
