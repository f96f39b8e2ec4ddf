//! keepalived.conf as a tree of blocks, and its VRRP instances mapped onto
//! lbd's `vrrp` section.
//!
//! The grammar is keepalived's: words separated by blanks, `{` and `}`
//! open and close blocks, `!` and `#` start comments, double quotes keep
//! blanks inside a word. Unknown keywords are kept (so they can be named
//! in a comment), never guessed at.

use std::collections::BTreeMap;

use super::script::{self, ScriptCheck};
use super::{Draft, Listener, Track, TrackOn, VrrpInstance};

/// One statement: its words, and the block that follows it if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    pub words: Vec<String>,
    pub block: Option<Vec<Stmt>>,
    pub line: usize,
}

impl Stmt {
    fn keyword(&self) -> &str {
        self.words.first().map(String::as_str).unwrap_or("")
    }
    fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i).map(String::as_str)
    }
    fn children(&self) -> &[Stmt] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// The words of keepalived.conf, each with its line.
fn tokens(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut word = String::new();
        let mut quoted = false;
        let mut has_word = false;
        let flush = |word: &mut String, has_word: &mut bool, out: &mut Vec<(String, usize)>| {
            if *has_word {
                out.push((std::mem::take(word), n + 1));
                *has_word = false;
            }
        };
        for c in line.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    has_word = true;
                }
                _ if quoted => word.push(c),
                '!' | '#' => break,
                '{' | '}' => {
                    flush(&mut word, &mut has_word, &mut out);
                    out.push((c.to_string(), n + 1));
                }
                c if c.is_whitespace() => flush(&mut word, &mut has_word, &mut out),
                c => {
                    word.push(c);
                    has_word = true;
                }
            }
        }
        flush(&mut word, &mut has_word, &mut out);
        // A statement ends at the end of its line.
        out.push(("\n".into(), n + 1));
    }
    out
}

/// keepalived.conf's statements. Unbalanced braces close at the end.
pub fn parse(text: &str) -> Vec<Stmt> {
    let toks = tokens(text);
    let mut i = 0;
    parse_block(&toks, &mut i)
}

fn parse_block(toks: &[(String, usize)], i: &mut usize) -> Vec<Stmt> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut line = 0;
    while *i < toks.len() {
        let (t, l) = &toks[*i];
        *i += 1;
        match t.as_str() {
            "{" => {
                let block = parse_block(toks, i);
                out.push(Stmt {
                    words: std::mem::take(&mut words),
                    block: Some(block),
                    line: if line == 0 { *l } else { line },
                });
                line = 0;
            }
            "}" => break,
            "\n" => {
                if !words.is_empty() {
                    out.push(Stmt {
                        words: std::mem::take(&mut words),
                        block: None,
                        line,
                    });
                }
                line = 0;
            }
            w => {
                if words.is_empty() {
                    line = *l;
                }
                words.push(w.to_string());
            }
        }
    }
    if !words.is_empty() {
        out.push(Stmt {
            words,
            block: None,
            line,
        });
    }
    out
}

/// The track scripts keepalived.conf names (`vrrp_script { script "..." }`):
/// name -> the command line, for the caller to read the program.
pub fn scripts(stmts: &[Stmt]) -> BTreeMap<String, String> {
    stmts
        .iter()
        .filter(|s| s.keyword() == "vrrp_script")
        .filter_map(|s| {
            let name = s.arg(1)?.to_string();
            let cmd = s
                .children()
                .iter()
                .find(|c| c.keyword() == "script")
                .map(|c| c.words[1..].join(" "))?;
            Some((name, cmd))
        })
        .collect()
}

/// A `vrrp_script` or `vrrp_track_process`: what it checks and its weight.
#[derive(Debug, Clone)]
struct Checker {
    /// keepalived's weight; 0 (or absent): a failure means FAULT.
    weight: i32,
    check: ScriptCheck,
    description: String,
    /// Its interval, fall, rise and timeout, which lbd does not take.
    timing: Vec<String>,
}

/// Maps every `vrrp_instance` of `stmts` into `draft`. `script_texts`:
/// command line -> the program's text, when the caller could read it.
pub fn map(stmts: &[Stmt], script_texts: &BTreeMap<String, Option<String>>, draft: &mut Draft) {
    let mut version = 2u8;
    let mut checkers: BTreeMap<String, Checker> = BTreeMap::new();
    for s in stmts {
        match s.keyword() {
            "global_defs" => global_defs(s, &mut version, draft),
            "vrrp_script" => {
                if let Some((name, c)) = vrrp_script(s, script_texts) {
                    checkers.insert(name, c);
                }
            }
            "vrrp_track_process" => {
                if let Some((name, c)) = track_process(s) {
                    checkers.insert(name, c);
                }
            }
            "vrrp_instance" => {}
            "virtual_server" | "virtual_server_group" => draft.vrrp_notes.push(format!(
                "keepalived.conf:{}: {} (LVS) is not mapped: lbd's IPVS serves Kubernetes Services (proxy section)",
                s.line,
                s.words.join(" ")
            )),
            other => draft.vrrp_notes.push(format!(
                "keepalived.conf:{}: {other} is not mapped",
                s.line
            )),
        }
    }
    for s in stmts.iter().filter(|s| s.keyword() == "vrrp_instance") {
        let inst = instance(s, version, &checkers, &draft.listeners);
        draft.instances.push(inst);
    }
}

fn global_defs(s: &Stmt, version: &mut u8, draft: &mut Draft) {
    for c in s.children() {
        match (c.keyword(), c.arg(1)) {
            ("vrrp_version", Some("3")) => *version = 3,
            ("vrrp_version", Some(_)) => *version = 2,
            ("router_id", Some(id)) => draft.vrrp_notes.push(format!(
                "keepalived.conf:{}: router_id {id}: not node.name (which also names the Node for the proxy); lbd uses the host name",
                c.line
            )),
            ("script_user" | "enable_script_security", _) => draft.vrrp_notes.push(format!(
                "keepalived.conf:{}: {}: not needed, lbd runs no track scripts",
                c.line,
                c.keyword()
            )),
            (k, _) => draft
                .vrrp_notes
                .push(format!("keepalived.conf:{}: global_defs {k} is not mapped", c.line)),
        }
    }
}

fn int_arg(s: &Stmt) -> Option<i64> {
    s.arg(1)?.parse().ok()
}

fn vrrp_script(s: &Stmt, texts: &BTreeMap<String, Option<String>>) -> Option<(String, Checker)> {
    let name = s.arg(1)?.to_string();
    let mut weight = 0;
    let mut cmd = String::new();
    let mut timing = Vec::new();
    for c in s.children() {
        match c.keyword() {
            "script" => cmd = c.words[1..].join(" "),
            "weight" => weight = int_arg(c).unwrap_or(0) as i32,
            "interval" | "fall" | "rise" | "timeout" => {
                timing.push(c.words.join(" "));
            }
            _ => {}
        }
    }
    let text = texts.get(&cmd).cloned().flatten();
    let check = script::classify(&cmd, text.as_deref());
    let description = format!("vrrp_script {name} ({cmd})");
    Some((
        name,
        Checker {
            weight,
            check,
            description,
            timing,
        },
    ))
}

fn track_process(s: &Stmt) -> Option<(String, Checker)> {
    let name = s.arg(1)?.to_string();
    let mut weight = 0;
    let mut process = String::new();
    for c in s.children() {
        match c.keyword() {
            "process" => process = c.arg(1).unwrap_or("").to_string(),
            "weight" => weight = int_arg(c).unwrap_or(0) as i32,
            _ => {}
        }
    }
    let check = script::classify_process(&process);
    let description = format!("vrrp_track_process {name} (process {process})");
    Some((
        name,
        Checker {
            weight,
            check,
            description,
            timing: Vec::new(),
        },
    ))
}

/// keepalived's `advert_int` / delays: seconds, maybe fractional.
fn seconds(s: &str) -> Option<String> {
    let v: f64 = s.parse().ok()?;
    if !(0.0..=100_000.0).contains(&v) {
        return None;
    }
    let ms = (v * 1000.0).round() as u64;
    Some(if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

fn instance(
    s: &Stmt,
    global_version: u8,
    checkers: &BTreeMap<String, Checker>,
    listeners: &[Listener],
) -> VrrpInstance {
    let mut i = VrrpInstance {
        name: s.arg(1).unwrap_or("VI_1").to_string(),
        version: global_version,
        priority: 100,
        ..Default::default()
    };
    let line = |c: &Stmt| format!("keepalived.conf:{}", c.line);
    for c in s.children() {
        let note =
            |i: &mut VrrpInstance, text: String| i.notes.push(format!("{}: {text}", line(c)));
        match c.keyword() {
            "interface" => i.interface = c.arg(1).map(String::from),
            "virtual_router_id" => {
                i.vrid = int_arg(c)
                    .filter(|v| (1..=255).contains(v))
                    .map(|v| v as u8)
            }
            "priority" => match int_arg(c) {
                Some(p) if (1..=254).contains(&p) => i.priority = p as u8,
                Some(255) => {
                    i.priority = 254;
                    note(
                        &mut i,
                        "priority 255 (address owner) is 254 in lbd, which never owns the VIP"
                            .into(),
                    );
                }
                _ => note(&mut i, format!("priority {:?} is not 1-254", c.arg(1))),
            },
            "version" => i.version = if c.arg(1) == Some("3") { 3 } else { 2 },
            "advert_int" => match c.arg(1).and_then(seconds) {
                Some(d) => i.advert_interval = Some(d),
                None => note(
                    &mut i,
                    format!("advert_int {:?} is not a number of seconds", c.arg(1)),
                ),
            },
            "nopreempt" => i.preempt = Some(false),
            "preempt_delay" => i.preempt_delay = c.arg(1).and_then(seconds),
            "authentication" => authentication(c, &mut i),
            "virtual_ipaddress" => virtual_ips(c, &mut i),
            "unicast_peer" => {
                for p in c.children() {
                    if let Some(a) = p.arg(0).filter(|a| a.parse::<std::net::IpAddr>().is_ok()) {
                        i.unicast_peers.push(a.to_string());
                    }
                }
            }
            "track_script" => track_scripts(c, checkers, listeners, &mut i),
            "track_process" => track_scripts(c, checkers, listeners, &mut i),
            "track_interface" => track_interfaces(c, &mut i),
            "notify" => {
                i.notify = Some(c.words[1..].join(" "));
                note(
                    &mut i,
                    "notify: check the arguments the script expects (docs/vrrp.md)".into(),
                );
            }
            "garp_master_delay" => i.garp_master_delay = c.arg(1).and_then(seconds),
            "garp_master_repeat" => i.garp_burst = int_arg(c).filter(|v| *v >= 0).map(|v| v as u32),
            "garp_master_refresh" => i.garp_refresh = c.arg(1).and_then(seconds),
            "state" => note(
                &mut i,
                format!(
                    "state {}: lbd starts every node as backup and the highest priority wins",
                    c.arg(1).unwrap_or("")
                ),
            ),
            "unicast_src_ip" => note(
                &mut i,
                "unicast_src_ip: lbd sends from the interface's own address".into(),
            ),
            "dont_track_primary" => note(
                &mut i,
                "dont_track_primary: lbd tracks the interface only when track lists it".into(),
            ),
            other => note(&mut i, format!("{other} is not mapped")),
        }
    }
    if i.virtual_ips.iter().any(|v| v.contains(':')) && i.version == 2 {
        i.version = 3;
        i.notes
            .push("IPv6 VIPs need VRRP version 3 (keepalived switches to it too)".into());
    }
    i
}

fn authentication(c: &Stmt, i: &mut VrrpInstance) {
    for a in c.children() {
        match (a.keyword(), a.arg(1)) {
            ("auth_type", Some("PASS")) => {}
            ("auth_type", Some(t)) => i.notes.push(format!(
                "keepalived.conf:{}: auth_type {t} is not supported (PASS only); authentication left out",
                a.line
            )),
            ("auth_pass", Some(p)) => {
                // keepalived keeps the first 8 bytes.
                let p: String = p.chars().take(8).collect();
                i.auth_pass = Some(p);
            }
            _ => {}
        }
    }
}

fn virtual_ips(c: &Stmt, i: &mut VrrpInstance) {
    for v in c.children() {
        let Some(addr) = v.arg(0) else { continue };
        let net = if addr.contains('/') {
            addr.to_string()
        } else if addr.contains(':') {
            format!("{addr}/128")
        } else {
            format!("{addr}/32")
        };
        if net.parse::<ipnet::IpNet>().is_err() {
            i.notes.push(format!(
                "keepalived.conf:{}: virtual_ipaddress {addr} is not an address",
                v.line
            ));
            continue;
        }
        if let Some(pos) = v.words.iter().position(|w| w == "dev") {
            if let (Some(dev), Some(iface)) = (v.arg(pos + 1), i.interface.as_deref()) {
                if dev != iface {
                    i.notes.push(format!(
                        "keepalived.conf:{}: {addr} dev {dev}: lbd puts every VIP on the instance's interface ({iface})",
                        v.line
                    ));
                }
            }
        }
        if v.words.len() > 1 && !v.words.iter().any(|w| w == "dev") {
            i.notes.push(format!(
                "keepalived.conf:{}: {}: only the address is mapped",
                v.line,
                v.words.join(" ")
            ));
        }
        i.virtual_ips.push(net);
    }
}

fn track_scripts(
    c: &Stmt,
    checkers: &BTreeMap<String, Checker>,
    listeners: &[Listener],
    i: &mut VrrpInstance,
) {
    for t in c.children() {
        let Some(name) = t.arg(0) else { continue };
        let line = format!("keepalived.conf:{}", t.line);
        let Some(checker) = checkers.get(name) else {
            i.notes.push(format!(
                "{line}: {name}: no vrrp_script or vrrp_track_process of that name"
            ));
            continue;
        };
        // `track_script { name weight W }` overrides the script's weight.
        let weight = t
            .words
            .iter()
            .position(|w| w == "weight")
            .and_then(|p| t.arg(p + 1))
            .and_then(|w| w.parse().ok())
            .unwrap_or(checker.weight);
        let listener = match &checker.check {
            ScriptCheck::Port(port) => listeners
                .iter()
                .find(|l| l.bind_port() == Some(*port) || l.backend_port() == Some(*port))
                .or_else(|| (listeners.len() == 1).then(|| &listeners[0])),
            ScriptCheck::Balancer => (listeners.len() == 1).then(|| &listeners[0]),
            ScriptCheck::Unknown(_) => None,
        };
        let Some(listener) = listener else {
            let why = match &checker.check {
                ScriptCheck::Unknown(why) => why.clone(),
                _ if listeners.is_empty() => {
                    "no listener to track (import haproxy.cfg with it: --haproxy)".into()
                }
                _ => "which listener it checks is not clear".into(),
            };
            i.notes.push(format!(
                "{line}: {} is not mapped: {why}",
                checker.description
            ));
            continue;
        };
        let (track_weight, note) = weights(weight);
        if let Some(n) = note {
            i.notes.push(format!("{line}: {name}: {n}"));
        }
        if !checker.timing.is_empty() {
            i.notes.push(format!(
                "{line}: {name}: {}: the listener's health interval, rise and fall decide instead",
                checker.timing.join(", ")
            ));
        }
        if weight > 0 {
            // Success raised keepalived's priority: lbd's base is that
            // raised priority, lowered while failing.
            let raised = (i32::from(i.priority) + weight).clamp(1, 254);
            i.priority = raised as u8;
        }
        i.tracks.push(Track {
            on: TrackOn::Listener(listener.name.clone()),
            weight: track_weight,
            comment: checker.description.clone(),
        });
    }
}

/// keepalived's weight -> lbd's (added while failing), and a note when the
/// meaning shifts.
fn weights(weight: i32) -> (i32, Option<String>) {
    match weight {
        0 => (
            -253,
            Some("weight 0: keepalived goes to FAULT when the check fails; lbd drops to the lowest priority (weight -253)".into()),
        ),
        w if w > 0 => (
            -w.min(253),
            Some(format!(
                "weight +{w}: keepalived adds it while the check succeeds; lbd's priority includes it and track subtracts it while failing"
            )),
        ),
        w => (w.max(-253), None),
    }
}

fn track_interfaces(c: &Stmt, i: &mut VrrpInstance) {
    for t in c.children() {
        let Some(iface) = t.arg(0) else { continue };
        let weight = t
            .words
            .iter()
            .position(|w| w == "weight")
            .and_then(|p| t.arg(p + 1))
            .and_then(|w| w.parse::<i32>().ok())
            .unwrap_or(0);
        let (w, note) = weights(weight);
        if let Some(n) = note {
            i.notes
                .push(format!("keepalived.conf:{}: {iface}: {n}", t.line));
        }
        i.tracks.push(Track {
            on: TrackOn::Interface(iface.to_string()),
            weight: w,
            comment: format!("track_interface {iface}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_words_quotes_and_comments() {
        let stmts = parse(
            "! comment\nvrrp_script chk {\n  script \"/bin/check a\"  # trailing\n  weight -2\n}\nvrrp_instance VI_1 {\n virtual_ipaddress {\n  10.0.0.1/24 dev eth0\n }\n}\n",
        );
        assert_eq!(stmts.len(), 2);
        assert_eq!(stmts[0].words, ["vrrp_script", "chk"]);
        assert_eq!(stmts[0].children()[0].words, ["script", "/bin/check a"]);
        assert_eq!(stmts[0].children()[1].line, 4);
        let vips = &stmts[1].children()[0];
        assert_eq!(vips.keyword(), "virtual_ipaddress");
        assert_eq!(vips.children()[0].words, ["10.0.0.1/24", "dev", "eth0"]);
        assert_eq!(
            scripts(&stmts).get("chk").map(String::as_str),
            Some("/bin/check a")
        );
    }

    #[test]
    fn keepalived_seconds() {
        assert_eq!(seconds("1").as_deref(), Some("1s"));
        assert_eq!(seconds("0.5").as_deref(), Some("500ms"));
        assert_eq!(seconds("x"), None);
    }
}
