//! What to suggest for an unknown key: lbd's word for keepalived's,
//! haproxy's or kube-proxy's, a key that belongs one level down, the
//! snake_case of a camelCase key, or the nearest spelling.
//!
//! Operators arrive with keepalived.conf and haproxy.cfg in their fingers;
//! "unknown key" alone sends them to the docs, the hint sends them to the
//! right line.

/// (the foreign word, where it comes from, what to write in lbd.yaml).
/// Only consulted for keys lbd does not know where they are written.
const FOREIGN: &[(&str, &str, &str)] = &[
    // keepalived.conf
    (
        "advert_int",
        "keepalived",
        "advert_interval (with a unit, as in 1s)",
    ),
    ("nopreempt", "keepalived", "preempt: false"),
    (
        "virtual_ipaddress",
        "keepalived",
        "virtual_ips: [ADDRESS/PREFIX]",
    ),
    ("virtual_router_id", "keepalived", "vrid"),
    (
        "unicast_peer",
        "keepalived",
        "unicast_peers: [ADDRESS, ...]",
    ),
    (
        "authentication",
        "keepalived",
        "auth_pass (version 2 only; auth_type PASS)",
    ),
    (
        "auth_type",
        "keepalived",
        "auth_pass (PASS is the only type)",
    ),
    (
        "track_script",
        "keepalived",
        "track: [{listener: NAME, weight: -50}] (lbd's own health checks replace the script)",
    ),
    (
        "vrrp_script",
        "keepalived",
        "track: [{listener: NAME, weight: -50}] in the instance (no scripts)",
    ),
    (
        "track_interface",
        "keepalived",
        "track: [{interface: NAME, weight: -50}]",
    ),
    (
        "track_process",
        "keepalived",
        "track: [{listener: NAME, weight: -50}] (lbd is the process)",
    ),
    ("vrrp_instance", "keepalived", "vrrp.instances"),
    ("vrrp_version", "keepalived", "version"),
    (
        "state",
        "keepalived",
        "nothing: every node starts as backup and the priority decides",
    ),
    (
        "notify_master",
        "keepalived",
        "notify (called on every change)",
    ),
    (
        "notify_backup",
        "keepalived",
        "notify (called on every change)",
    ),
    (
        "notify_fault",
        "keepalived",
        "notify (called on every change)",
    ),
    ("garp_master_repeat", "keepalived", "garp_burst"),
    ("garp_master_refresh", "keepalived", "garp_refresh"),
    ("router_id", "keepalived", "node.name"),
    // haproxy.cfg
    ("server", "haproxy", "backends: [ADDRESS:PORT, ...]"),
    (
        "default_backend",
        "haproxy",
        "backends: [ADDRESS:PORT, ...]",
    ),
    ("frontend", "haproxy", "tcplb.listeners"),
    ("backend", "haproxy", "tcplb.listeners"),
    ("listen", "haproxy", "tcplb.listeners"),
    ("inter", "haproxy", "health.interval"),
    ("check", "haproxy", "health: {type: tcp | http | https}"),
    ("check-ssl", "haproxy", "health.type: https"),
    ("httpchk", "haproxy", "health: {type: http, path: /healthz}"),
    ("ssl-hello-chk", "haproxy", "health.type: https"),
    ("maxconn", "haproxy", "max_connections"),
    (
        "verify",
        "haproxy",
        "tls.ca_file (verify required) or tls.insecure_skip_verify: true (verify none)",
    ),
    ("ca-file", "haproxy", "tls.ca_file"),
    ("crt", "haproxy", "tls.cert_file and tls.key_file"),
    ("sni", "haproxy", "tls.server_name"),
    (
        "on-marked-down",
        "haproxy",
        "on_backend_down: shutdown_sessions",
    ),
    ("mode", "haproxy", "nothing: lbd balances TCP only"),
    (
        "timeout",
        "haproxy",
        "connect_timeout, idle_timeout or health.timeout",
    ),
    ("bind_address", "kube-proxy", "healthz_bind or metrics_bind"),
];

/// Keys of a section that also lie one level down: (section, child key,
/// the child's keys).
pub(super) struct Nested {
    pub section: &'static str,
    pub child: &'static str,
    pub keys: &'static [&'static str],
}

/// The hint for `key`, unknown in the section `what` whose keys are
/// `known`; `nested` tells which keys belong to one of its children.
pub(super) fn hint(key: &str, what: &str, known: &[&str], nested: &[Nested]) -> Option<String> {
    if let Some(n) = nested
        .iter()
        .find(|n| n.section == what && n.keys.contains(&key))
    {
        return Some(format!("{key} goes under {}: {}.{key}", n.child, n.child));
    }
    let snake = snake_case(key);
    if snake != key && known.contains(&snake.as_str()) {
        return Some(format!("did you mean {snake:?}?"));
    }
    if let Some((_, from, ours)) = FOREIGN
        .iter()
        .find(|(word, _, _)| word.eq_ignore_ascii_case(key))
    {
        return Some(match ours.strip_prefix("nothing: ") {
            Some(why) => format!("{from}'s {key} has no equivalent: {why}"),
            None => format!("{from}'s {key} is {ours} here"),
        });
    }
    closest(key, known).map(|k| format!("did you mean {k:?}?"))
}

/// `clusterCIDR` -> `cluster_cidr`, `check-ssl` -> `check_ssl`.
fn snake_case(key: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c == '-' {
            out.push('_');
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

/// The known key nearest to a misspelt one, when it is close enough to help.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_and_dashed_keys_become_snake_case() {
        assert_eq!(snake_case("clusterCIDR"), "cluster_cidr");
        assert_eq!(snake_case("strictARP"), "strict_arp");
        assert_eq!(snake_case("minSyncPeriod"), "min_sync_period");
        assert_eq!(snake_case("check-ssl"), "check_ssl");
        assert_eq!(snake_case("vrid"), "vrid");
    }

    #[test]
    fn foreign_words_before_spelling() {
        // advert_int is also 2 edits from nothing useful: the foreign
        // table answers.
        assert_eq!(
            hint("advert_int", "a VRRP instance", &["advert_interval"], &[]).as_deref(),
            Some("keepalived's advert_int is advert_interval (with a unit, as in 1s) here")
        );
        assert_eq!(
            hint("strictARP", "proxy.ipvs", &["strict_arp"], &[]).as_deref(),
            Some("did you mean \"strict_arp\"?")
        );
        assert_eq!(
            hint("nmae", "node", &["name"], &[]).as_deref(),
            Some("did you mean \"name\"?")
        );
        assert_eq!(
            hint("state", "a VRRP instance", &["name"], &[]).as_deref(),
            Some("keepalived's state has no equivalent: every node starts as backup and the priority decides")
        );
        assert_eq!(hint("zzzzzz", "node", &["name"], &[]), None);
    }
}
