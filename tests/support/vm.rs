//! Facts about the qemu VM a test runs in (tests/vm/run-in-vm.sh boots it,
//! scripts/vm-test.sh picks the kernel with `LBD_VM_KERNEL=6.1|5.10`).
#![allow(dead_code)]

/// True inside the VM (the cargo runner sets `LBD_IN_VM=1`); elsewhere
/// prints why `test` is skipped.
pub fn in_vm(test: &str) -> bool {
    if std::env::var("LBD_IN_VM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipping {test}: runs in the VM only (scripts/vm-test.sh)");
    false
}

/// The kernel the VM was booted with, as asked for: "6.1" or "5.10"
/// (`LBD_VM_KERNEL`); None outside the VM.
pub fn selected_kernel() -> Option<String> {
    std::env::var("LBD_VM_KERNEL").ok()
}

/// (major, minor) of the running kernel: what a test
/// compares against to know which kernel features to expect (IFA_PROTO
/// is stored from 5.18 on, for instance).
pub fn kernel_version() -> (u32, u32) {
    parse_release(&kernel_release()).unwrap_or((0, 0))
}

/// The running kernel's release as uname(2) gives it, e.g.
/// "5.10.0-46-cloud-amd64".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// "5.10.0-46-cloud-amd64" -> (5, 10).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}
