//! Running Debian's keepalived inside a test namespace, with its own config
//! and pid files, VRRP subsystem only, logging to a file.

use std::path::{Path, PathBuf};

use super::netns::Lab;

pub fn available() -> bool {
    std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .is_ok()
}

/// One `vrrp_instance` as keepalived spells it.
pub struct KaInstance<'a> {
    pub interface: &'a str,
    pub vrid: u8,
    pub version: u8,
    pub priority: u8,
    /// keepalived: whole seconds for v2, 0.01 steps for v3.
    pub advert_int: &'a str,
    pub vips: &'a [&'a str],
    pub auth_pass: Option<&'a str>,
    pub nopreempt: bool,
    pub unicast: Option<(&'a str, &'a [&'a str])>,
}

impl KaInstance<'_> {
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("global_defs {\n  vrrp_version ");
        s.push_str(&self.version.to_string());
        // No iptables/nftables rules, no script user checks.
        s.push_str("\n  enable_script_security\n  script_user root\n}\n");
        s.push_str("vrrp_instance VI_TEST {\n  state BACKUP\n");
        s.push_str(&format!("  interface {}\n", self.interface));
        s.push_str(&format!("  virtual_router_id {}\n", self.vrid));
        s.push_str(&format!("  priority {}\n", self.priority));
        s.push_str(&format!("  advert_int {}\n", self.advert_int));
        if self.nopreempt {
            s.push_str("  nopreempt\n");
        }
        if let Some(pass) = self.auth_pass {
            s.push_str(&format!(
                "  authentication {{\n    auth_type PASS\n    auth_pass {pass}\n  }}\n"
            ));
        }
        if let Some((src, peers)) = self.unicast {
            s.push_str(&format!("  unicast_src_ip {src}\n  unicast_peer {{\n"));
            for p in peers {
                s.push_str(&format!("    {p}\n"));
            }
            s.push_str("  }\n");
        }
        s.push_str("  virtual_ipaddress {\n");
        for v in self.vips {
            s.push_str(&format!("    {v} dev {}\n", self.interface));
        }
        s.push_str("  }\n}\n");
        s
    }
}

/// Starts keepalived in `ns`; returns the lab's child index and the log path.
pub fn start(
    lab: &mut Lab,
    ns: &str,
    dir: &Path,
    name: &str,
    inst: &KaInstance,
) -> (usize, PathBuf) {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, inst.render()).unwrap();
    let log = dir.join(format!("{name}.log"));
    let pid = dir.join(format!("{name}.pid"));
    let vpid = dir.join(format!("{name}.vrrp.pid"));
    let args = [
        "-n",
        "-l",
        "-D",
        "-G",
        "-P",
        "-R",
        "-f",
        conf.to_str().unwrap(),
        "-p",
        pid.to_str().unwrap(),
        "-r",
        vpid.to_str().unwrap(),
    ];
    let i = lab.spawn(ns, "keepalived", &args, Some(&log));
    (i, log)
}
