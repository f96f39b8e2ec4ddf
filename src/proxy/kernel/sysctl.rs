//! The sysctls kube-proxy's IPVS mode sets: which ones ([`proxy_sysctls`],
//! pure) and the narrow interface that sets them ([`Sysctls`]), written
//! through `sys::sysctl` (the one writer of /proc/sys) or held in memory
//! by the fake.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One sysctl and the value the proxy needs, dotted name as in sysctl(8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl {
    pub name: &'static str,
    pub value: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("sysctl {name}: {source}")]
pub struct SysctlError {
    pub name: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// What kube-proxy's IPVS mode sets (pkg/proxy/ipvs/proxier.go), pure:
/// conntrack for masquerade, drop connections to removed real servers and
/// their persistence templates instead of blackholing, forwarding; strict
/// ARP makes the host answer ARP only for addresses on the asking interface
/// (so kube-ipvs0's addresses are never announced). conn_reuse_mode=0 is
/// only set on kernels before 5.9, where mode 1 stalled reused ports for a
/// second (kubernetes#81775); later kernels keep their default.
pub fn proxy_sysctls(kernel_release: &str, strict_arp: bool) -> Vec<Sysctl> {
    let s = |name, value| Sysctl { name, value };
    let mut out = vec![
        s("net.ipv4.vs.conntrack", "1"),
        s("net.ipv4.vs.expire_nodest_conn", "1"),
        s("net.ipv4.vs.expire_quiescent_template", "1"),
        s("net.ipv4.ip_forward", "1"),
    ];
    if kernel_before(kernel_release, (5, 9)) {
        out.push(s("net.ipv4.vs.conn_reuse_mode", "0"));
    }
    if strict_arp {
        out.push(s("net.ipv4.conf.all.arp_ignore", "1"));
        out.push(s("net.ipv4.conf.all.arp_announce", "2"));
    }
    out
}

/// "6.1.0-56-cloud-amd64" < (5, 9)? An unparsable release counts as new.
fn kernel_before(release: &str, (maj, min): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) < (maj, min),
        _ => false,
    }
}

/// The host's sysctls, as the proxy needs them.
pub trait Sysctls: Send + Sync {
    /// The running kernel's release (uname -r); empty if unknown.
    fn kernel_release(&self) -> String;
    /// Writes the sysctls whose current value differs; returns the names it
    /// changed.
    fn ensure(&self, list: &[Sysctl]) -> Result<Vec<&'static str>, SysctlError>;
}

/// /proc/sys of the calling thread's network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSysctls;

impl Sysctls for ProcSysctls {
    fn kernel_release(&self) -> String {
        crate::sys::sysctl::read("kernel.osrelease").unwrap_or_default()
    }

    fn ensure(&self, list: &[Sysctl]) -> Result<Vec<&'static str>, SysctlError> {
        let mut changed = Vec::new();
        for s in list {
            let old =
                crate::sys::sysctl::ensure(s.name, s.value).map_err(|source| SysctlError {
                    name: s.name,
                    source,
                })?;
            if old.is_some() {
                changed.push(s.name);
            }
        }
        Ok(changed)
    }
}

/// In-memory sysctls for tests: what was written, nothing else.
#[derive(Debug, Clone, Default)]
pub struct FakeSysctls {
    values: Arc<Mutex<BTreeMap<&'static str, &'static str>>>,
    /// What `kernel_release` says; empty: a current kernel.
    pub release: String,
}

impl FakeSysctls {
    /// Name -> value of everything written.
    pub fn values(&self) -> BTreeMap<&'static str, &'static str> {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Sysctls for FakeSysctls {
    fn kernel_release(&self) -> String {
        if self.release.is_empty() {
            "6.1.0".into()
        } else {
            self.release.clone()
        }
    }

    fn ensure(&self, list: &[Sysctl]) -> Result<Vec<&'static str>, SysctlError> {
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = Vec::new();
        for s in list {
            if values.insert(s.name, s.value) != Some(s.value) {
                changed.push(s.name);
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_reuse_mode_only_on_old_kernels() {
        let has = |rel| {
            proxy_sysctls(rel, false)
                .iter()
                .any(|s| s.name == "net.ipv4.vs.conn_reuse_mode")
        };
        assert!(has("5.4.0-100-generic"));
        assert!(!has("5.9.0"));
        assert!(!has("6.1.0-56-cloud-amd64"));
        assert!(!has("garbage"));
    }

    #[test]
    fn strict_arp_adds_arp_sysctls() {
        let names: Vec<_> = proxy_sysctls("6.1.0", true)
            .iter()
            .map(|s| s.name)
            .collect();
        assert!(names.contains(&"net.ipv4.conf.all.arp_ignore"));
        assert!(names.contains(&"net.ipv4.conf.all.arp_announce"));
        assert!(!proxy_sysctls("6.1.0", false)
            .iter()
            .any(|s| s.name.contains("arp")));
    }

    #[test]
    fn fake_reports_only_what_it_changed() {
        let f = FakeSysctls::default();
        let want = proxy_sysctls(&f.kernel_release(), false);
        assert_eq!(f.ensure(&want).unwrap().len(), want.len());
        assert!(f.ensure(&want).unwrap().is_empty());
        assert_eq!(f.values()["net.ipv4.vs.conntrack"], "1");
    }
}
