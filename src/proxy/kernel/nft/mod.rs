//! The one nftables table lbd owns, `inet lbd-proxy`: masquerade marks,
//! hairpin, loadBalancerSourceRanges and the "service addresses expose only
//! service ports" filter that kube-proxy's IPVS mode builds from iptables
//! chains and ipsets (KUBE-MARK-MASQ, KUBE-LOOP-BACK,
//! KUBE-LOAD-BALANCER-SOURCE-CIDR, KUBE-IPVS-FILTER).
//!
//! The table is rendered in full from the desired state ([`render`], pure)
//! and replaced in one `nft -j -f /proc/self/fd/0` transaction: add (so delete cannot
//! fail), delete, then the new table. Nothing outside our table is touched.
//! The rules depend only on [`NftParams`]; what follows the Services is the
//! sets' elements. A changed-only sync therefore changes elements only
//! ([`SetTracker`]): rendering and replacing the whole table costs O(table)
//! (35-45 ms to render at 10k Services, and nft's own
//! work on ~80k elements), an endpoint change a handful of elements.
//!
//! Hook priorities are chosen around IPVS's own netfilter hooks: IPVS takes
//! locally delivered packets at LOCAL_IN priority 98 (NF_IP_PRI_NAT_SRC - 2)
//! and local output at LOCAL_OUT -98 (NF_IP_PRI_NAT_DST + 2), so our marks
//! and drops run before it (prerouting/output -110, input 0) and the
//! masquerade in postrouting (srcnat, 100) sees the forwarded packet.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

mod render;
mod sets;

pub use render::{render, render_delete};
pub use sets::{render_element_changes, ElementChanges, SetElement, SetTracker};

pub const TABLE: &str = "lbd-proxy";
pub const FAMILY: &str = "inet";
/// The masquerade mark bit, kube-proxy's own (`--iptables-masquerade-bit` 14),
/// so CNIs that know kube-proxy's mark keep working during a migration.
pub const MASQ_MARK: u32 = 0x4000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftParams<'a> {
    /// Traffic from outside these ranges to a ClusterIP is masqueraded.
    pub cluster_cidrs: &'a [IpNet],
    /// Masquerade all traffic to services (kube-proxy masqueradeAll).
    pub masquerade_all: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("{program}: cannot run it: {source}")]
    Run {
        program: String,
        source: std::io::Error,
    },
    #[error("nft rejected the ruleset: {0}")]
    Rejected(String),
    #[error("nft ruleset does not match the nftables schema: {0}")]
    Schema(#[from] serde_json::Error),
}

/// Applies one `nft -j` document in one transaction: a whole-table
/// replace from [`render`] or element changes from [`render_element_changes`].
pub trait Firewall: Send + Sync {
    fn replace(&self, ruleset: &NftDocument) -> Result<(), NftError>;
}

/// Runs `nft` (optionally wrapped, e.g. `ip netns exec NS nft`).
#[derive(Debug, Clone, Default)]
pub struct NftFirewall {
    /// Program and leading arguments; empty: plain `nft`.
    pub command: Vec<String>,
}

impl Firewall for NftFirewall {
    fn replace(&self, ruleset: &NftDocument) -> Result<(), NftError> {
        // The document goes to nft as text, without a typed copy of it (tens
        // of MB at 10k Services); every document render and
        // render_element_changes make is checked against the crate's schema
        // through FakeFirewall in the tests.
        let (program, args) = match self.command.split_first() {
            Some((p, a)) => (p.as_str(), a),
            None => ("nft", &[][..]),
        };
        run_nft(program, args, &NFT_ARGS, ruleset.as_str())
    }
}

/// How nft reads the document: the pipe on its standard input, by a name
/// that exists wherever /proc does. `nft -f -` (what the nftables crate's
/// helpers pass) makes nft 1.0.x open `/dev/stdin`, which a distroless
/// image or a chroot does not have; /proc is there wherever lbd runs (it
/// reads /proc/sys).
const NFT_ARGS: [&str; 3] = ["-j", "-f", "/proc/self/fd/0"];

/// Applies `script` in nft's own syntax, in one transaction, with plain
/// `nft` from PATH (the VRRP handover rules: a few lines, not a table
/// rendered from thousands of Services).
pub fn apply_script(script: &str) -> Result<(), NftError> {
    run_nft("nft", &[], &["-f", "/proc/self/fd/0"], script)
}

/// Runs `program args NFT_ARGS` with `payload` written to its standard
/// input while its output is read (no pipe can fill and stall).
fn run_nft(
    program: &str,
    args: &[String],
    nft_args: &[&str],
    payload: &str,
) -> Result<(), NftError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |source| NftError::Run {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .args(nft_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(run)?;
    let mut stdin = child.stdin.take();
    let (written, out) = std::thread::scope(|s| {
        let writer = s.spawn(move || match stdin.as_mut() {
            Some(w) => w.write_all(payload.as_bytes()),
            None => Ok(()),
        });
        let out = child.wait_with_output();
        (writer.join(), out)
    });
    let out = out.map_err(run)?;
    if !out.status.success() {
        // Keep nft's own words: they say which element or hook failed.
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let said = if stderr.is_empty() {
            format!("exit status {}", out.status)
        } else {
            stderr
        };
        return Err(NftError::Rejected(said));
    }
    match written {
        Ok(Ok(())) => Ok(()),
        // nft exited 0 without reading all of it: not applied as sent.
        Ok(Err(e)) => Err(run(e)),
        Err(_) => Err(run(std::io::Error::other("the writer thread panicked"))),
    }
}

/// Why the `nft` binary cannot be the way in: for `lbd check` / `lbd
/// doctor`, before the proxy finds out at its first sync.
#[derive(Debug, thiserror::Error)]
pub enum NftUnavailable {
    #[error(
        "{program}: cannot run it ({source}); the proxy needs the nft binary (Debian package nftables) for its masquerade and filter rules"
    )]
    NotRunnable {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} --version failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Whether plain `nft` (from PATH, as the proxy runs it) can be run; its
/// version line (`nftables v1.0.6 (Lester Gooch #5)`) when it can.
pub fn availability() -> Result<String, NftUnavailable> {
    availability_of(&NftFirewall::default())
}

/// Whether this firewall's command can be run (`nft --version`, or the
/// wrapped command's).
pub fn availability_of(fw: &NftFirewall) -> Result<String, NftUnavailable> {
    let (program, args) = match fw.command.split_first() {
        Some((p, a)) => (p.as_str(), a),
        None => ("nft", &[][..]),
    };
    let out = std::process::Command::new(program)
        .args(args)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| NftUnavailable::NotRunnable {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(NftUnavailable::Failed {
            program: program.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// In-memory firewall for tests: keeps every document it was given and the
/// sets' contents as the kernel would hold them after each (a table
/// replace empties and refills them; deleting an element the set does not
/// hold fails the whole document, as it does in the kernel).
#[derive(Debug, Clone, Default)]
pub struct FakeFirewall {
    pub applied: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    sets: std::sync::Arc<std::sync::Mutex<BTreeMap<String, BTreeSet<String>>>>,
}

impl FakeFirewall {
    /// Set name -> its elements (canonical JSON text), empty sets included.
    pub fn sets(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Firewall for FakeFirewall {
    fn replace(&self, doc: &NftDocument) -> Result<(), NftError> {
        let ruleset = &doc.to_value()?;
        let _ = nftables::schema::Nftables::deserialize(ruleset)?;
        let mut sets = self.sets();
        let elems = |o: &Value| -> Vec<String> {
            o["elem"]
                .as_array()
                .map(|a| a.iter().map(Value::to_string).collect())
                .unwrap_or_default()
        };
        for cmd in ruleset["nftables"].as_array().into_iter().flatten() {
            if let Some(o) = cmd.get("delete") {
                if o.get("table").is_some() {
                    sets.clear();
                } else if let Some(e) = o.get("element") {
                    let set = sets
                        .entry(e["name"].as_str().unwrap_or("").to_string())
                        .or_default();
                    for x in elems(e) {
                        if !set.remove(&x) {
                            return Err(NftError::Rejected(format!(
                                "delete {x}: No such file or directory"
                            )));
                        }
                    }
                }
            } else if let Some(o) = cmd.get("add") {
                let (name, obj) = match (o.get("set"), o.get("element")) {
                    (Some(x), _) | (None, Some(x)) => {
                        (x["name"].as_str().unwrap_or("").to_string(), x)
                    }
                    _ => continue,
                };
                sets.entry(name).or_default().extend(elems(obj));
            }
        }
        *self.sets.lock().unwrap_or_else(|e| e.into_inner()) = sets;
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ruleset.clone());
        Ok(())
    }
}

/// One `nft -j -f -` document, as the JSON text nft reads. Rendered by
/// streaming: at 10k Services a tree of `serde_json::Value`s for the ~80k
/// set elements cost ~100 MiB, the text ~6 MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftDocument(String);

impl NftDocument {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The document parsed (tests, and the fake firewall's checks).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// A document of these commands, each a small JSON object.
    pub fn from_commands(cmds: &[Value]) -> Self {
        let mut w = render::DocWriter::new();
        for c in cmds {
            w.command(c);
        }
        w.finish()
    }
}

impl std::fmt::Display for NftDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A digest of a document: equal documents, equal digests, so the last
/// applied one need not be kept.
pub fn digest(doc: &NftDocument) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.0.hash(&mut h);
    h.finish()
}
