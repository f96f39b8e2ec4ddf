//! The state file: one JSON record per instance under lbd's runtime
//! directory (`/run/lbd`, the admin socket's directory), written whenever
//! what the instance holds changes.
//!
//! It is how lbd knows its own addresses on kernels that keep no mark
//! (sys/addr.rs), across its own restarts; how the supervisor, when the
//! worker dies, knows which VIPs to give up and how to say so on the wire
//! (priority 0 from the right source to the right group); and where a
//! release (`lbd vrrp release`) survives a restart. /run is a tmpfs: a
//! reboot forgets all of it, as it forgets the addresses.
//!
//! One file per (interface, VRID, family), the key `lbd check` makes
//! unique, written whole to a temporary file and renamed over the old one,
//! mode 0600 (it holds a v2 `auth_pass`).

use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::VrrpInstanceConfig;
use crate::sys::addr::InstalledAddr;

use super::packet::{interval_cs, Version};

const PREFIX: &str = "vrrp-";
const SUFFIX: &str = ".json";

/// What one instance holds, as its state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance: String,
    pub interface: String,
    pub vrid: u8,
    /// 2 or 3.
    pub version: u8,
    pub advert_interval_cs: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_pass: String,
    pub virtual_ips: Vec<IpNet>,
    /// Empty: multicast.
    #[serde(default)]
    pub unicast_peers: Vec<IpAddr>,
    /// The address adverts go out from, once known.
    pub source: Option<IpAddr>,
    /// MASTER now: whoever finds the worker dead sends priority 0.
    pub master: bool,
    /// Released by `lbd vrrp release` and not resumed.
    #[serde(default)]
    pub released: bool,
    /// Addresses lbd put on the interface and has not removed.
    #[serde(default)]
    pub installed: Vec<InstalledAddr>,
    /// The process that wrote it.
    #[serde(default)]
    pub pid: u32,
}

impl InstanceRecord {
    /// A fresh record for `cfg`: nothing held.
    pub fn new(cfg: &VrrpInstanceConfig) -> InstanceRecord {
        let version = Version::from(cfg.version);
        InstanceRecord {
            instance: cfg.name.clone(),
            interface: cfg.interface.clone(),
            vrid: cfg.vrid,
            version: version.number(),
            advert_interval_cs: interval_cs(version, cfg.advert_interval),
            auth_pass: cfg.auth_pass.clone(),
            virtual_ips: cfg.virtual_ips.clone(),
            unicast_peers: cfg.unicast_peers.clone(),
            source: None,
            master: false,
            released: false,
            installed: Vec::new(),
            pid: std::process::id(),
        }
    }

    pub fn ipv6(&self) -> bool {
        self.virtual_ips.first().is_some_and(|v| v.addr().is_ipv6())
    }

    /// Whether it names what `cfg` runs: same interface, VRID and family.
    pub fn same_group(&self, cfg: &VrrpInstanceConfig) -> bool {
        file_name(&cfg.interface, cfg.vrid, is_ipv6(cfg))
            == file_name(&self.interface, self.vrid, self.ipv6())
    }
}

fn is_ipv6(cfg: &VrrpInstanceConfig) -> bool {
    cfg.virtual_ips.first().is_some_and(|v| v.addr().is_ipv6())
}

fn file_name(interface: &str, vrid: u8, ipv6: bool) -> String {
    let family = if ipv6 { "ipv6" } else { "ipv4" };
    format!("{PREFIX}{interface}-{vrid}-{family}{SUFFIX}")
}

/// The directory the records live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The record file of the instance `cfg` describes.
    pub fn file_for(&self, cfg: &VrrpInstanceConfig) -> PathBuf {
        self.dir
            .join(file_name(&cfg.interface, cfg.vrid, is_ipv6(cfg)))
    }

    /// Every record in the directory; unreadable ones are logged and
    /// skipped (never a reason not to start).
    pub fn records(&self) -> Vec<(PathBuf, InstanceRecord)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, InstanceRecord)> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
            })
            .filter_map(|p| load(&p).map(|r| (p, r)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The record in `path`, if there is a readable one.
pub fn load(path: &Path) -> Option<InstanceRecord> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read VRRP state file");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "VRRP state file unreadable: ignored");
            None
        }
    }
}

/// Writes `rec` to `path` whole (temporary file, then rename), mode 0600;
/// creates the directory (0700) if needed.
pub fn store(path: &Path, rec: &InstanceRecord) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let json = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&json)?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Removes the record file; gone already is fine.
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove VRRP state file")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::VrrpVersion;

    fn cfg(interface: &str, vrid: u8, vip: &str) -> VrrpInstanceConfig {
        VrrpInstanceConfig {
            name: "api".into(),
            interface: interface.into(),
            vrid,
            version: VrrpVersion::V2,
            priority: 100,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            immediate_preempt: true,
            virtual_ips: vec![vip.parse().unwrap()],
            unicast_peers: vec![],
            auth_pass: "42".into(),
            track: vec![],
            garp_burst: 5,
            garp_refresh: None,
            garp_master_delay: None,
            notify: None,
            notify_master: None,
            notify_backup: None,
            notify_fault: None,
            notify_stop: None,
            vip_lifetime: Duration::from_secs(3),
            handover_grace: Duration::ZERO,
        }
    }

    #[test]
    fn records_round_trip_one_file_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("run"));
        let a = cfg("enp1s0f0np0.10", 51, "10.0.0.100/24");
        let b = cfg("eth0", 51, "fd00::100/64");
        let mut ra = InstanceRecord::new(&a);
        ra.master = true;
        ra.source = Some("10.0.0.1".parse().unwrap());
        ra.installed = vec![InstalledAddr::new(
            "10.0.0.100/24".parse().unwrap(),
            Duration::from_secs(3),
        )];
        store(&sd.file_for(&a), &ra).unwrap();
        store(&sd.file_for(&b), &InstanceRecord::new(&b)).unwrap();
        assert_eq!(
            sd.file_for(&a).file_name().unwrap(),
            "vrrp-enp1s0f0np0.10-51-ipv4.json"
        );
        assert_eq!(
            sd.file_for(&b).file_name().unwrap(),
            "vrrp-eth0-51-ipv6.json"
        );
        let all = sd.records();
        assert_eq!(all.len(), 2);
        assert_eq!(load(&sd.file_for(&a)), Some(ra.clone()));
        assert!(ra.same_group(&a) && !ra.same_group(&b));
        assert_eq!(ra.version, 2);
        assert_eq!(ra.advert_interval_cs, 100);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(sd.file_for(&a))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Garbage next to them is skipped, not fatal.
        std::fs::write(sd.path().join("vrrp-x-1-ipv4.json"), b"{not json").unwrap();
        assert_eq!(sd.records().len(), 2);
        remove(&sd.file_for(&a));
        remove(&sd.file_for(&a));
        assert_eq!(sd.records().len(), 1);
    }
}
