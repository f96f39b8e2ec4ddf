//! From YAML text to a validated [`Config`], collecting every problem with
//! its line and column instead of stopping at the first.
//!
//! This file holds the entry points and the reader ([`Cx`], [`Obj`]) every
//! section uses; each section is read in its own file, beside its defaults.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::error::{sort_by_position, ConfigError, Problem};
use super::model::*;
use super::yaml::{parse_document, Node, Pos, Value};

mod duration;
mod hints;
mod node_admin;
mod proxy;
mod tcplb;
mod vrrp;

pub use duration::{format_duration, parse_duration, DurationError};
use node_admin::default_admin;

/// Facts about the machine that defaults and checks depend on, passed in so
/// parsing stays pure and testable.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub hostname: String,
    /// Files that exist (checked by the loader for paths the config names).
    pub existing_files: Option<BTreeSet<PathBuf>>,
}

/// Validates `text` (named `path` in messages) without touching the disk.
/// A KubeProxyConfiguration it names is not read: that is
/// [`crate::config::load`]'s job.
pub fn parse(text: &str, path: &str, env: &Environment) -> Result<Config, ConfigError> {
    let files = env.existing_files.clone();
    let reading = read(text, path, env, &move |p: &Path| {
        files.as_ref().is_none_or(|set| set.contains(p))
    });
    match reading.config {
        Some(config) if reading.problems.is_empty() => Ok(config),
        _ => Err(ConfigError {
            path: path.to_string(),
            problems: reading.problems,
        }),
    }
}

/// lbd.yaml read as far as it goes.
pub(super) struct Reading {
    /// None when the text is not YAML; else the config, with defaults where
    /// a value was wrong.
    pub config: Option<Config>,
    /// The KubeProxyConfiguration `proxy.kube_proxy_config` names, when
    /// the file exists.
    pub kube_proxy_config: Option<FileRef>,
    /// Every file named that exists, for the loader to look inside.
    pub files: Vec<NamedFile>,
    /// Where the proxy section starts, when there is one.
    pub proxy_at: Option<Pos>,
    /// Where lbd.yaml sets `proxy.mode`, if it does.
    pub proxy_mode_at: Option<Pos>,
    /// Every problem, in the order of their position.
    pub problems: Vec<Problem>,
    /// What is valid but worth saying (a TLS file that does not exist yet).
    pub warnings: Vec<Problem>,
}

/// A file lbd.yaml names, and where it names it.
#[derive(Debug, Clone)]
pub(super) struct FileRef {
    pub path: PathBuf,
    pub at: Pos,
}

/// What a named file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// One or more CA certificates (PEM).
    CaBundle,
    /// A certificate chain, end entity first (PEM).
    Certificate,
    /// A private key (PEM: PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
    /// A kubeconfig and the files it names.
    Kubeconfig,
    /// Read by the loader's merge, not here.
    KubeProxyConfiguration,
}

/// A file a key names, that exists.
#[derive(Debug, Clone)]
pub(crate) struct NamedFile {
    /// The key, as messages name it (`tls.ca_file`).
    pub what: String,
    pub kind: FileKind,
    pub path: PathBuf,
    pub at: Pos,
    /// For a private key: the certificate it must belong to.
    pub certificate: Option<PathBuf>,
}

/// Reads lbd.yaml's `text`, asking `file_exists` about the files it names.
pub(super) fn read(
    text: &str,
    path: &str,
    env: &Environment,
    file_exists: &dyn Fn(&Path) -> bool,
) -> Reading {
    let root = match parse_document(text) {
        Ok(root) => root,
        Err(e) => {
            return Reading {
                config: None,
                kube_proxy_config: None,
                files: Vec::new(),
                proxy_at: None,
                proxy_mode_at: None,
                problems: vec![Problem::at(path, e.pos, e.message)],
                warnings: Vec::new(),
            }
        }
    };
    let mut cx = Cx::new(path, file_exists);
    let config = cx.config(&root, env);
    let warnings = std::mem::take(&mut cx.warnings);
    Reading {
        config: Some(config),
        kube_proxy_config: cx.kube_proxy_config.take(),
        files: std::mem::take(&mut cx.files),
        proxy_at: cx.proxy_at,
        proxy_mode_at: cx.proxy_mode_at.take(),
        problems: cx.into_problems(),
        warnings,
    }
}

/// The reader of one file: collects every problem instead of stopping at
/// the first.
pub(super) struct Cx<'f> {
    path: &'f str,
    problems: Vec<Problem>,
    file_exists: &'f dyn Fn(&Path) -> bool,
    /// Set by the proxy section.
    kube_proxy_config: Option<FileRef>,
    warnings: Vec<Problem>,
    /// Every named file that exists.
    files: Vec<NamedFile>,
    proxy_at: Option<Pos>,
    proxy_mode_at: Option<Pos>,
}

impl<'f> Cx<'f> {
    pub(super) fn new(path: &'f str, file_exists: &'f dyn Fn(&Path) -> bool) -> Self {
        Cx {
            path,
            problems: Vec::new(),
            file_exists,
            kube_proxy_config: None,
            warnings: Vec::new(),
            files: Vec::new(),
            proxy_at: None,
            proxy_mode_at: None,
        }
    }

    /// Every problem found, in the order of their position.
    pub(super) fn into_problems(self) -> Vec<Problem> {
        let mut problems = self.problems;
        sort_by_position(&mut problems);
        problems
    }
}

/// A mapping being read: remembers which keys were used so the rest can be
/// reported as unknown.
pub(super) struct Obj<'n> {
    pub(super) pos: Pos,
    entries: &'n [(String, Pos, Node)],
    used: Vec<bool>,
}

impl<'n> Obj<'n> {
    pub(super) fn get(&mut self, key: &str) -> Option<&'n Node> {
        let i = self.entries.iter().position(|(k, _, _)| k == key)?;
        self.used[i] = true;
        let node = &self.entries[i].2;
        // `key:` with nothing after it means "default".
        (!matches!(node.value, Value::Null)).then_some(node)
    }
    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _, _)| k == key)
    }
}

impl Cx<'_> {
    pub(super) fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem::at(self.path, pos, message));
    }

    pub(super) fn obj<'n>(&mut self, node: &'n Node, what: &str) -> Option<Obj<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Obj {
                pos: node.pos,
                entries,
                used: vec![false; entries.len()],
            }),
            other => {
                self.err(
                    node.pos,
                    format!("{what} must be a mapping, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn finish(&mut self, obj: Obj<'_>, what: &str, known: &[&str]) {
        let mut seen = BTreeSet::new();
        for ((key, pos, _), used) in obj.entries.iter().zip(&obj.used) {
            if !seen.insert(key.as_str()) {
                self.err(*pos, format!("duplicate key {key:?} in {what}"));
            }
            if !used {
                let hint = hints::hint(key, what, known, NESTED)
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                self.err(*pos, format!("unknown key {key:?} in {what}{hint}"));
            }
        }
    }

    pub(super) fn string(&mut self, node: &Node) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            other => {
                self.err(node.pos, format!("expected a string, not {}", other.kind()));
                None
            }
        }
    }

    fn nonempty_string(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node)?;
        if s.trim().is_empty() {
            self.err(node.pos, format!("{what} must not be empty"));
            return None;
        }
        Some(s)
    }

    pub(super) fn boolean(&mut self, node: &Node) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.err(
                    node.pos,
                    format!("expected true or false, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn int_in(&mut self, node: &Node, what: &str, lo: i64, hi: i64) -> Option<i64> {
        match &node.value {
            Value::Int(i) if (lo..=hi).contains(i) => Some(*i),
            Value::Int(i) => {
                self.err(
                    node.pos,
                    format!("{what} must be between {lo} and {hi}, not {i}"),
                );
                None
            }
            other => {
                self.err(
                    node.pos,
                    format!("{what} must be an integer, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let s = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(0) => return Some(Duration::ZERO),
            Value::Int(_) | Value::Float(_) => {
                self.err(
                    node.pos,
                    format!("{what} needs a unit, as in 1s, 100ms or 1m30s"),
                );
                return None;
            }
            other => {
                self.err(
                    node.pos,
                    format!("{what} must be a duration, not {}", other.kind()),
                );
                return None;
            }
        };
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(node.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    fn parsed<T: std::str::FromStr>(
        &mut self,
        node: &Node,
        what: &str,
        example: &str,
    ) -> Option<T> {
        let s = self.string(node)?;
        match s.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.err(
                    node.pos,
                    format!("{what}: invalid {s:?} (expected {example})"),
                );
                None
            }
        }
    }

    fn socket_addr(&mut self, node: &Node, what: &str) -> Option<SocketAddr> {
        self.parsed(node, what, "ADDRESS:PORT, e.g. 0.0.0.0:8443 or [::]:8443")
    }

    /// An address with a prefix; a bare address gets /32 or /128.
    fn ip_net(&mut self, node: &Node, what: &str) -> Option<IpNet> {
        let s = self.string(node)?;
        let s = s.trim();
        if let Ok(n) = s.parse::<IpNet>() {
            return Some(n);
        }
        if let Ok(a) = s.parse::<IpAddr>() {
            return Some(IpNet::from(a));
        }
        self.err(
            node.pos,
            format!("{what}: invalid {s:?} (expected ADDRESS/PREFIX)"),
        );
        None
    }

    pub(super) fn list<'n, T>(
        &mut self,
        node: &'n Node,
        what: &str,
        mut item: impl FnMut(&mut Self, &'n Node) -> Option<T>,
    ) -> Vec<T> {
        match &node.value {
            Value::Seq(items) => items.iter().filter_map(|n| item(self, n)).collect(),
            // A single value where a list is expected is a common slip.
            other => {
                self.err(
                    node.pos,
                    format!("{what} must be a list, not {}", other.kind()),
                );
                Vec::new()
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(node)?;
        if let Some((_, v)) = options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(s.trim()))
        {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
        self.err(
            node.pos,
            format!("{what}: {s:?} is not one of {}", names.join(", ")),
        );
        None
    }

    /// A file that must exist and hold `kind`; the loader looks inside.
    fn file(&mut self, node: &Node, what: &str, kind: FileKind) -> Option<PathBuf> {
        self.named_file(node, what, kind, None)
    }

    /// A file that may appear later (a CA that `kubeadm init` writes after
    /// lbd started): missing is a warning saying what happens meanwhile.
    fn file_or_later(
        &mut self,
        node: &Node,
        what: &str,
        kind: FileKind,
        meanwhile: &str,
    ) -> Option<PathBuf> {
        self.named_file(node, what, kind, Some(meanwhile))
    }

    /// A file that exists is recorded for the loader to look into as
    /// `kind`; a missing one is an error, or with `later` a warning.
    fn named_file(
        &mut self,
        node: &Node,
        what: &str,
        kind: FileKind,
        later: Option<&str>,
    ) -> Option<PathBuf> {
        let s = self.nonempty_string(node, what)?;
        let p = PathBuf::from(s);
        if (self.file_exists)(&p) {
            self.files.push(NamedFile {
                what: what.to_string(),
                kind,
                path: p.clone(),
                at: node.pos,
                certificate: None,
            });
        } else if let Some(meanwhile) = later {
            self.warnings.push(Problem::at(
                self.path,
                node.pos,
                format!("{what}: {} does not exist yet; {meanwhile}", p.display()),
            ));
        } else {
            self.err(node.pos, format!("{what}: {} does not exist", p.display()));
        }
        Some(p)
    }

    /// Marks the private key just read as `cert`'s, so the loader checks
    /// that they belong together. Only a certificate that exists: one that
    /// does not yet was a warning already, and the key is matched with it
    /// when the health check loads both.
    fn pair_key_with_certificate(&mut self, key: Option<&Path>, cert: Option<&Path>) {
        let (Some(key), Some(cert)) = (key, cert) else {
            return;
        };
        if !self
            .files
            .iter()
            .any(|f| f.kind == FileKind::Certificate && f.path == cert)
        {
            return;
        }
        if let Some(f) = self
            .files
            .iter_mut()
            .rev()
            .find(|f| f.kind == FileKind::PrivateKey && f.path == key)
        {
            f.certificate = Some(cert.to_path_buf());
        }
    }

    /// A key every such mapping must have.
    fn required_string(&mut self, o: &mut Obj<'_>, key: &str, what: &str) -> Option<String> {
        match o.get(key) {
            Some(n) => self.nonempty_string(n, key),
            None => {
                self.err(o.pos, format!("{what} needs a {key}"));
                None
            }
        }
    }

    fn positive_duration(&mut self, n: &Node, what: &str) -> Option<Duration> {
        let d = self.duration(n, what)?;
        if d.is_zero() {
            self.err(n.pos, format!("{what} must be longer than 0"));
            return None;
        }
        Some(d)
    }

    fn config(&mut self, root: &Node, env: &Environment) -> Config {
        let mut o = match self.obj(root, "the config file") {
            Some(o) => o,
            None => return default_config(env),
        };
        let node = match o.get("node") {
            Some(n) => self.node_section(n, env),
            None => NodeConfig {
                name: env.hostname.clone(),
            },
        };
        let tcplb = o.get("tcplb").map(|n| self.tcplb(n));
        let listener_names: BTreeSet<String> = tcplb
            .iter()
            .flat_map(|t| t.listeners.iter().map(|l| l.name.clone()))
            .collect();
        let vrrp = o.get("vrrp").map(|n| self.vrrp(n, &listener_names));
        let proxy = o.get("proxy").map(|n| {
            self.proxy_at = Some(n.pos);
            self.proxy(n)
        });
        let admin = match o.get("admin") {
            Some(n) => self.admin(n),
            None => default_admin(),
        };
        self.finish(
            o,
            "the config file",
            &["node", "vrrp", "tcplb", "proxy", "admin"],
        );
        Config {
            node,
            vrrp,
            tcplb,
            proxy,
            admin,
        }
    }
}

/// Keys that belong one level further down, for the hint.
const NESTED: &[hints::Nested] = &[
    hints::Nested {
        section: "the config file",
        child: "vrrp",
        keys: &["instances"],
    },
    hints::Nested {
        section: "the config file",
        child: "tcplb",
        keys: &["listeners", "shutdown_grace"],
    },
    hints::Nested {
        section: "a listener",
        child: "health",
        keys: tcplb::HEALTH_KEYS,
    },
    hints::Nested {
        section: "health",
        child: "tls",
        keys: tcplb::TLS_KEYS,
    },
    hints::Nested {
        section: "proxy",
        child: "ipvs",
        keys: proxy::IPVS_KEYS,
    },
];

fn default_config(env: &Environment) -> Config {
    Config {
        node: NodeConfig {
            name: env.hostname.clone(),
        },
        vrrp: None,
        tcplb: None,
        proxy: None,
        admin: default_admin(),
    }
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;

    /// `text` parsed with no files on the disk; the problems as `t.yaml`
    /// prints them.
    pub fn check(text: &str) -> Result<Config, Vec<String>> {
        let env = Environment {
            hostname: "testhost".into(),
            existing_files: Some(BTreeSet::new()),
        };
        parse(text, "t.yaml", &env).map_err(|e| e.to_string().lines().map(String::from).collect())
    }

    /// The problems of a file that must not parse.
    pub fn problems(text: &str) -> Vec<String> {
        match check(text) {
            Ok(c) => panic!("parsed: {c:?}"),
            Err(p) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;

    #[test]
    fn top_level_must_be_a_mapping_with_known_sections() {
        assert_eq!(
            problems("- a\n"),
            ["t.yaml:1:1: the config file must be a mapping, not a list"]
        );
        assert_eq!(
            problems("tcpbl: {}\nadmin: {}\n"),
            ["t.yaml:1:1: unknown key \"tcpbl\" in the config file (did you mean \"tcplb\"?)"]
        );
    }

    #[test]
    fn a_key_without_a_value_takes_its_default() {
        let c = check("node:\n  name:\nadmin:\n  socket:\n").unwrap();
        assert_eq!(c.node.name, "testhost");
        assert_eq!(c.admin.socket, std::path::Path::new("/run/lbd/lbd.sock"));
    }
}
