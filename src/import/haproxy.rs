//! haproxy.cfg as sections of keyword lines, and its TCP frontends mapped
//! onto lbd's `tcplb` listeners.
//!
//! haproxy's rules that matter here: `defaults` apply to the sections after
//! them; a `listen` is a frontend and a backend in one; of `option httpchk`,
//! `option ssl-hello-chk` and `option tcp-check` the last one wins; a
//! number without a unit is milliseconds; `check` on a server turns checks
//! on, `check-ssl` (or `http-check connect ssl`) runs them over TLS.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::{Draft, Health, HealthKind, Listener, TlsChoice};

/// One keyword line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub words: Vec<String>,
    pub line: usize,
}

impl Line {
    fn kw(&self) -> &str {
        self.words.first().map(String::as_str).unwrap_or("")
    }
    fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i).map(String::as_str)
    }
    fn text(&self) -> String {
        self.words.join(" ")
    }
}

/// `global`, `defaults`, `frontend NAME`, `backend NAME`, `listen NAME`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: String,
    pub name: Option<String>,
    pub line: usize,
    pub lines: Vec<Line>,
}

const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "resolvers",
    "peers",
    "userlist",
    "program",
    "cache",
    "http-errors",
    "ring",
    "mailers",
];

pub fn parse(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        let Some(first) = words.first() else { continue };
        // A section keyword starts its own line (indentation is not
        // significant to haproxy, but nobody indents those).
        if SECTIONS.contains(&first.as_str()) && !raw.starts_with([' ', '\t']) {
            out.push(Section {
                kind: first.clone(),
                name: words.get(1).cloned(),
                line: n + 1,
                lines: Vec::new(),
            });
            // `listen NAME ADDR:PORT`: the old inline bind.
            if words.len() > 2 && first == "listen" {
                if let Some(s) = out.last_mut() {
                    s.lines.push(Line {
                        words: vec!["bind".into(), words[2].clone()],
                        line: n + 1,
                    });
                }
            }
            continue;
        }
        if let Some(s) = out.last_mut() {
            s.lines.push(Line { words, line: n + 1 });
        }
    }
    out
}

/// A haproxy time (`5s`, `10m`, `2000` = ms) as lbd writes durations.
pub fn duration(s: &str) -> Option<String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let ms = match &s[digits..] {
        "" | "ms" => n,
        "us" => n.div_ceil(1000),
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    };
    Some(if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

/// What the checks of one backend look like, from its lines and the
/// defaults before it.
#[derive(Debug, Clone, Default)]
struct Settings {
    mode: Option<String>,
    balance: Option<String>,
    /// `option httpchk` (path), `ssl-hello-chk`, `tcp-check`: the last wins.
    check_kind: Option<CheckOption>,
    http_check_ssl: bool,
    expect_status: Option<u16>,
    timeout_check: Option<String>,
    timeout_connect: Option<String>,
    retries: Option<u32>,
    maxconn: Option<u32>,
    /// `default-server` words.
    default_server: Vec<String>,
    notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CheckOption {
    Http(String),
    SslHello,
    Tcp,
}

impl Settings {
    /// Reads one line into the settings; false when it is not a setting.
    fn read(&mut self, l: &Line) -> bool {
        match (l.kw(), l.arg(1)) {
            ("mode", Some(m)) => self.mode = Some(m.to_string()),
            ("balance", Some(b)) => self.balance = Some(b.to_string()),
            ("option", Some("httpchk")) => {
                // `option httpchk [METHOD] [URI]` or just `option httpchk`.
                let uri = match (l.arg(2), l.arg(3)) {
                    (Some(_), Some(uri)) => uri.to_string(),
                    (Some(uri), None) if uri.starts_with('/') => uri.to_string(),
                    _ => "/".to_string(),
                };
                self.check_kind = Some(CheckOption::Http(uri));
            }
            ("option", Some("ssl-hello-chk")) => self.check_kind = Some(CheckOption::SslHello),
            ("option", Some("tcp-check")) => self.check_kind = Some(CheckOption::Tcp),
            ("http-check", Some("expect")) => match (l.arg(2), l.arg(3)) {
                (Some("status"), Some(code)) => self.expect_status = code.parse().ok(),
                _ => self.notes.push(format!(
                    "haproxy.cfg:{}: {}: lbd expects one status code",
                    l.line,
                    l.text()
                )),
            },
            ("http-check", Some("send")) => {
                if let Some(p) = l.words.iter().position(|w| w == "uri") {
                    if let (Some(uri), Some(CheckOption::Http(cur))) =
                        (l.arg(p + 1), self.check_kind.as_mut())
                    {
                        *cur = uri.to_string();
                    }
                }
            }
            ("http-check", Some("connect")) => {
                self.http_check_ssl = l.words.iter().any(|w| w == "ssl");
            }
            ("timeout", Some("check")) => self.timeout_check = l.arg(2).and_then(duration),
            ("timeout", Some("connect")) => self.timeout_connect = l.arg(2).and_then(duration),
            ("retries", Some(n)) => self.retries = n.parse().ok(),
            ("maxconn", Some(n)) => self.maxconn = n.parse().ok(),
            ("default-server", _) => self.default_server = l.words[1..].to_vec(),
            _ => return false,
        }
        true
    }
}

/// One `server` line.
#[derive(Debug, Clone)]
struct Server {
    name: String,
    addr: String,
    params: Vec<String>,
    line: usize,
}

impl Server {
    fn has(&self, word: &str, default_server: &[String]) -> bool {
        self.params.iter().chain(default_server).any(|w| w == word)
    }
    /// The value after `key` on the line, else on `default-server`.
    fn value(&self, key: &str, default_server: &[String]) -> Option<String> {
        let find = |ws: &[String]| {
            ws.iter()
                .position(|w| w == key)
                .and_then(|p| ws.get(p + 1).cloned())
        };
        find(&self.params).or_else(|| find(default_server))
    }
}

/// Facts of this node the mapping needs.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// A cluster CA is on this node (`/etc/kubernetes/pki/ca.crt`): checks
    /// verify with it.
    pub cluster_ca: Option<String>,
}

/// Maps every TCP frontend (with its default backend) and every TCP
/// `listen` of `sections` into `draft`.
pub fn map(sections: &[Section], facts: &Facts, draft: &mut Draft) {
    let mut defaults = Settings::default();
    let mut backends: BTreeMap<String, (Settings, Vec<Server>, Vec<String>)> = BTreeMap::new();
    // Backends first: a frontend may name one defined after it, with the
    // defaults in force where the backend is.
    let mut defaults_at: Vec<Settings> = Vec::new();
    for s in sections {
        if s.kind == "defaults" {
            defaults = Settings::default();
            for l in &s.lines {
                if !defaults.read(l) && !is_logging(l) {
                    defaults.notes.push(unmapped(l));
                }
            }
        }
        defaults_at.push(defaults.clone());
        if s.kind == "backend" {
            if let Some(name) = &s.name {
                backends.insert(name.clone(), backend(s, &defaults));
            }
        }
    }
    let mut used = Vec::new();
    let mut global_ignored = Vec::new();
    for (s, defaults) in sections.iter().zip(&defaults_at) {
        match s.kind.as_str() {
            "global" => global_ignored.extend(s.lines.iter().map(|l| l.kw().to_string())),
            "defaults" => draft.tcplb_notes.extend(defaults.notes.iter().cloned()),
            "frontend" => {
                let fe = frontend(s, defaults);
                let be = fe
                    .default_backend
                    .as_ref()
                    .and_then(|b| backends.get(b).map(|v| (b, v)));
                match be {
                    Some((bname, (settings, servers, notes))) => {
                        used.push(bname.clone());
                        let mut all_notes = fe.notes.clone();
                        all_notes.extend(notes.iter().cloned());
                        draft_listener(s, &fe, settings, servers, all_notes, facts, draft);
                    }
                    None => draft.tcplb_notes.push(format!(
                        "haproxy.cfg:{}: frontend {} has no default_backend to take servers from: not mapped",
                        s.line,
                        s.name.as_deref().unwrap_or("")
                    )),
                }
            }
            "listen" => {
                let fe = frontend(s, defaults);
                let (settings, servers, notes) = backend(s, defaults);
                let mut all_notes = fe.notes.clone();
                all_notes.extend(notes);
                draft_listener(s, &fe, &settings, &servers, all_notes, facts, draft);
            }
            "backend" => {}
            other => draft.tcplb_notes.push(format!(
                "haproxy.cfg:{}: section {other} is not mapped",
                s.line
            )),
        }
    }
    for name in backends.keys().filter(|b| !used.contains(b)) {
        draft.tcplb_notes.push(format!(
            "haproxy.cfg: backend {name} is used by no frontend: not mapped"
        ));
    }
    if !global_ignored.is_empty() {
        global_ignored.dedup();
        draft.tcplb_notes.push(format!(
            "haproxy.cfg: global {}: not needed (lbd logs to stderr, runs as a service, sizes itself)",
            global_ignored.join(", ")
        ));
    }
}

fn is_logging(l: &Line) -> bool {
    matches!(l.kw(), "log")
        || (l.kw() == "option"
            && matches!(
                l.arg(1),
                Some("tcplog" | "httplog" | "dontlognull" | "dontlog-normal" | "logasap")
            ))
}

fn unmapped(l: &Line) -> String {
    let why = match (l.kw(), l.arg(1)) {
        ("timeout", Some("client" | "server" | "tunnel")) => {
            ": lbd sets no idle timeout by default (kube watches idle for long); idle_timeout if you want one"
        }
        ("option", Some("redispatch")) => ": lbd always tries another backend after a failed connect (retries)",
        ("option", Some("http-server-close" | "forwardfor" | "httpclose")) => ": HTTP mode only; lbd balances TCP",
        ("mode", Some("http")) => ": lbd balances TCP only",
        _ => " is not mapped",
    };
    format!("haproxy.cfg:{}: {}{why}", l.line, l.text())
}

/// The frontend part of a `frontend` or `listen`.
#[derive(Debug, Clone, Default)]
struct Frontend {
    binds: Vec<(String, usize)>,
    default_backend: Option<String>,
    mode: Option<String>,
    maxconn: Option<u32>,
    notes: Vec<String>,
}

fn frontend(s: &Section, defaults: &Settings) -> Frontend {
    let mut fe = Frontend {
        mode: defaults.mode.clone(),
        maxconn: defaults.maxconn,
        ..Default::default()
    };
    let listen = s.kind == "listen";
    for l in &s.lines {
        match (l.kw(), l.arg(1)) {
            ("bind", Some(addr)) => {
                fe.binds.push((addr.to_string(), l.line));
                if l.words.iter().any(|w| w == "ssl") {
                    fe.notes.push(format!(
                        "haproxy.cfg:{}: bind ... ssl: lbd does not terminate TLS (the apiservers do)",
                        l.line
                    ));
                }
            }
            ("default_backend", Some(b)) => fe.default_backend = Some(b.to_string()),
            ("mode", Some(m)) => fe.mode = Some(m.to_string()),
            ("maxconn", Some(n)) => fe.maxconn = n.parse().ok(),
            ("use_backend", _) => fe.notes.push(format!(
                "haproxy.cfg:{}: {}: lbd has no rules; the default_backend is used",
                l.line,
                l.text()
            )),
            _ if is_logging(l) => {}
            // A listen's backend lines are read by `backend`.
            _ if listen => {}
            _ => fe.notes.push(unmapped(l)),
        }
    }
    fe
}

fn backend(s: &Section, defaults: &Settings) -> (Settings, Vec<Server>, Vec<String>) {
    let mut settings = defaults.clone();
    settings.notes.clear();
    let mut servers = Vec::new();
    let mut notes = Vec::new();
    let listen = s.kind == "listen";
    for l in &s.lines {
        if l.kw() == "server" {
            if let (Some(name), Some(addr)) = (l.arg(1), l.arg(2)) {
                servers.push(Server {
                    name: name.to_string(),
                    addr: addr.to_string(),
                    params: l.words[3..].to_vec(),
                    line: l.line,
                });
            }
            continue;
        }
        if settings.read(l) || is_logging(l) {
            continue;
        }
        if listen
            && matches!(
                l.kw(),
                "bind" | "default_backend" | "maxconn" | "use_backend"
            )
        {
            continue;
        }
        notes.push(unmapped(l));
    }
    (settings, servers, notes)
}

/// `*:8443`, `:8443`, `0.0.0.0:8443`, `:::8443`, `[::]:8443`, `ipv4@...`.
fn bind_addr(s: &str) -> Option<SocketAddr> {
    let s = s.split_once('@').map_or(s, |(_, a)| a);
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip: IpAddr = match host.trim_matches(['[', ']']) {
        "" | "*" | "0.0.0.0" => IpAddr::from([0, 0, 0, 0]),
        "::" => IpAddr::from([0u16; 8]),
        h => h.parse().ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

fn draft_listener(
    s: &Section,
    fe: &Frontend,
    settings: &Settings,
    servers: &[Server],
    mut notes: Vec<String>,
    facts: &Facts,
    draft: &mut Draft,
) {
    let name = s.name.clone().unwrap_or_else(|| "apiserver".into());
    if fe.mode.as_deref().unwrap_or("tcp") != "tcp" || settings.mode.as_deref() == Some("http") {
        draft.tcplb_notes.push(format!(
            "haproxy.cfg:{}: {} {name} is mode http: lbd balances TCP only, not mapped",
            s.line, s.kind
        ));
        return;
    }
    let Some((bind_text, bind_line)) = fe.binds.first().cloned() else {
        draft.tcplb_notes.push(format!(
            "haproxy.cfg:{}: {} {name} has no bind: not mapped",
            s.line, s.kind
        ));
        return;
    };
    let Some(bind) = bind_addr(&bind_text) else {
        draft.tcplb_notes.push(format!(
            "haproxy.cfg:{bind_line}: bind {bind_text}: not an ADDRESS:PORT lbd can bind; {name} not mapped"
        ));
        return;
    };
    for (extra, line) in fe.binds.iter().skip(1) {
        notes.push(format!(
            "haproxy.cfg:{line}: bind {extra}: one address per listener in lbd; add another listener for it"
        ));
    }
    let mut backends = Vec::new();
    for srv in servers {
        let addr = if srv.addr.contains(':') {
            srv.addr.clone()
        } else {
            // haproxy: no port means the port the client connected to.
            format!("{}:{}", srv.addr, bind.port())
        };
        match addr.parse::<SocketAddr>() {
            Ok(a) if !srv.has("backup", &settings.default_server) && !srv.has("disabled", &[]) => {
                backends.push(a.to_string())
            }
            Ok(_) => notes.push(format!(
                "haproxy.cfg:{}: server {} is backup or disabled: lbd has no backup servers, left out",
                srv.line, srv.name
            )),
            Err(_) => notes.push(format!(
                "haproxy.cfg:{}: server {} {}: lbd takes IP addresses, resolve the name",
                srv.line, srv.name, srv.addr
            )),
        }
        if srv
            .value("weight", &settings.default_server)
            .is_some_and(|w| w != "1")
        {
            notes.push(format!(
                "haproxy.cfg:{}: server {} weight: lbd has no weights",
                srv.line, srv.name
            ));
        }
    }
    let health = health(settings, servers, facts, &mut notes);
    let balance = match settings.balance.as_deref() {
        None | Some("roundrobin") => None,
        Some(b @ ("leastconn" | "source" | "random")) => Some(b.to_string()),
        Some("static-rr") => None,
        Some(other) => {
            notes.push(format!("balance {other}: not in lbd, roundrobin instead"));
            None
        }
    };
    draft.listeners.push(Listener {
        name,
        bind: bind.to_string(),
        balance,
        backends,
        health,
        connect_timeout: settings.timeout_connect.clone(),
        retries: settings.retries,
        max_connections: fe.maxconn,
        notes,
    });
}

/// The listener's health check from the backend's check options and the
/// first server's timing (lbd has one check per listener).
fn health(
    settings: &Settings,
    servers: &[Server],
    facts: &Facts,
    notes: &mut Vec<String>,
) -> Health {
    let ds = &settings.default_server;
    let checked: Vec<&Server> = servers.iter().filter(|s| s.has("check", ds)).collect();
    let first = checked.first();
    let timing = |key: &str| first.and_then(|s| s.value(key, ds));
    for key in ["inter", "rise", "fall"] {
        let mut values: Vec<Option<String>> = checked.iter().map(|s| s.value(key, ds)).collect();
        values.dedup();
        if values.len() > 1 {
            notes.push(format!(
                "servers differ in {key}: lbd has one health check per listener, the first server's is used"
            ));
        }
    }
    if checked.is_empty() {
        notes.push(
            "no server has check: haproxy did not check them; lbd always does (tcp connect)".into(),
        );
    }
    let ssl = settings.http_check_ssl || first.is_some_and(|s| s.has("check-ssl", ds));
    let (kind, path) = match &settings.check_kind {
        Some(CheckOption::Http(p)) if ssl => (HealthKind::Https, Some(p.clone())),
        Some(CheckOption::Http(p)) => (HealthKind::Http, Some(p.clone())),
        Some(CheckOption::SslHello) => {
            notes.push(
                "option ssl-hello-chk (haproxy only checked the TLS hello): lbd checks GET /healthz over TLS".into(),
            );
            (HealthKind::Https, Some("/healthz".into()))
        }
        Some(CheckOption::Tcp) | None if ssl => (HealthKind::Https, Some("/healthz".into())),
        Some(CheckOption::Tcp) | None => (HealthKind::Tcp, None),
    };
    let tls = if kind == HealthKind::Https {
        let ca = first.and_then(|s| s.value("ca-file", ds));
        let verify_none = first.and_then(|s| s.value("verify", ds)).as_deref() == Some("none")
            || settings.check_kind == Some(CheckOption::SslHello);
        match (ca, &facts.cluster_ca) {
            (Some(ca), _) if !verify_none => TlsChoice::Verify {
                ca_file: ca,
                note: None,
            },
            (_, Some(ca)) => TlsChoice::Verify {
                ca_file: ca.clone(),
                note: verify_none.then(|| {
                    "haproxy did not verify the apiservers (verify none); lbd verifies them with the cluster CA".to_string()
                }),
            },
            _ => TlsChoice::Insecure,
        }
    } else {
        TlsChoice::None
    };
    Health {
        kind,
        path,
        expect_status: settings.expect_status.filter(|s| *s != 200),
        interval: timing("inter").and_then(|d| duration(&d)),
        timeout: settings.timeout_check.clone(),
        rise: timing("rise").and_then(|v| v.parse().ok()),
        fall: timing("fall").and_then(|v| v.parse().ok()),
        tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_times() {
        assert_eq!(duration("5s").as_deref(), Some("5s"));
        assert_eq!(duration("2000").as_deref(), Some("2s"));
        assert_eq!(duration("1500").as_deref(), Some("1500ms"));
        assert_eq!(duration("10m").as_deref(), Some("10m"));
        assert_eq!(duration("1d").as_deref(), Some("24h"));
        assert_eq!(duration("x"), None);
    }

    #[test]
    fn bind_forms() {
        for (s, want) in [
            ("*:8443", "0.0.0.0:8443"),
            (":8443", "0.0.0.0:8443"),
            ("0.0.0.0:8443", "0.0.0.0:8443"),
            (":::8443", "[::]:8443"),
            ("[::]:8443", "[::]:8443"),
            ("ipv4@10.0.0.1:443", "10.0.0.1:443"),
        ] {
            assert_eq!(
                bind_addr(s).map(|a| a.to_string()).as_deref(),
                Some(want),
                "{s}"
            );
        }
        assert_eq!(bind_addr("localhost:8443"), None);
    }

    #[test]
    fn sections_and_inline_listen_bind() {
        let s = parse("global\n  daemon\nlisten api 0.0.0.0:8443 # x\n  mode tcp\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].name.as_deref(), Some("api"));
        assert_eq!(s[1].lines[0].words, ["bind", "0.0.0.0:8443"]);
        assert_eq!(s[1].lines[1].words, ["mode", "tcp"]);
    }
}
