//! The VM guest is a real host as far as lbd and its tests can tell: the
//! kernel asked for, the /dev links udev would make, writable tmpfs where
//! systemd mounts them, loopback up, writable sysctls, named network
//! namespaces. Runs in the VM only (`VM_TESTS=guest_vm scripts/vm-test.sh`,
//! on each kernel of `VM_KERNELS`), skips elsewhere: on a developer's host
//! these facts are the host's business.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use support::vm;

fn run(cmd: &str, args: &[&str], stdin: &[u8]) -> (String, String) {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The filesystem type mounted exactly at `dir`, from /proc/self/mounts.
fn fs_type(dir: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&dir)).then(|| f[2].to_string())
        })
        .next_back()
}

#[test]
fn the_kernel_is_the_one_asked_for() {
    if !vm::in_vm("the_kernel_is_the_one_asked_for") {
        return;
    }
    let asked = vm::selected_kernel().expect("run-in-vm.sh exports LBD_VM_KERNEL");
    let want = vm::parse_release(&format!("{asked}.0")).expect("LBD_VM_KERNEL is MAJOR.MINOR");
    let release = vm::kernel_release();
    assert_eq!(
        vm::kernel_version(),
        want,
        "booted {release}, asked for {asked}"
    );
    assert_eq!(
        std::env::var("LBD_VM_KERNEL_RELEASE").as_deref(),
        Ok(release.as_str())
    );
    eprintln!("guest kernel: {release}");
}

#[test]
fn std_streams_and_dev_fd_are_links_into_proc_self_fd() {
    if !vm::in_vm("std_streams_and_dev_fd_are_links_into_proc_self_fd") {
        return;
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let got = std::fs::read_link(link).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert_eq!(got, Path::new(target), "{link}");
    }
    // What scripts do with them: `nft -f /dev/stdin`, `>/dev/stderr`,
    // bash's process substitution (a /dev/fd/N path).
    let (out, err) = run(
        "sh",
        &[
            "-c",
            "cat /dev/stdin; echo to-out >/dev/stdout; echo to-err >/dev/stderr",
        ],
        b"from-stdin\n",
    );
    assert_eq!(out, "from-stdin\nto-out\n");
    assert_eq!(err, "to-err\n");
    let (out, _) = run("bash", &["-c", "cat <(echo via-dev-fd)"], b"");
    assert_eq!(out, "via-dev-fd\n");
}

#[test]
fn tmp_run_and_dev_shm_are_writable_tmpfs() {
    if !vm::in_vm("tmp_run_and_dev_shm_are_writable_tmpfs") {
        return;
    }
    for (dir, sticky) in [("/tmp", true), ("/dev/shm", true), ("/run", false)] {
        assert_eq!(fs_type(dir).as_deref(), Some("tmpfs"), "{dir}");
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        if sticky {
            assert_eq!(mode, 0o1777, "{dir} mode {mode:o}");
        }
        let f = Path::new(dir).join(format!("guest-vm-{}", std::process::id()));
        std::fs::write(&f, b"x").unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
        std::fs::remove_file(&f).unwrap();
    }
    // lbd's state directory lives under /run; /var/run is the old name.
    assert_eq!(
        std::fs::canonicalize("/var/run").unwrap(),
        Path::new("/run")
    );
    assert_eq!(fs_type("/sys/fs/cgroup").as_deref(), Some("cgroup2"));
}

#[test]
fn device_nodes_exist() {
    if !vm::in_vm("device_nodes_exist") {
        return;
    }
    for dev in [
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        "/dev/ptmx",
        "/dev/tty",
    ] {
        let t = std::fs::metadata(dev)
            .unwrap_or_else(|e| panic!("{dev}: {e}"))
            .file_type();
        assert!(t.is_char_device(), "{dev} is not a character device");
    }
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    assert_ne!(buf, [0u8; 16]);
}

#[test]
fn loopback_is_up_with_both_families() {
    if !vm::in_vm("loopback_is_up_with_both_families") {
        return;
    }
    let (out, _) = run("ip", &["-o", "addr", "show", "dev", "lo"], b"");
    assert!(out.contains("inet 127.0.0.1/8"), "{out}");
    assert!(out.contains("inet6 ::1/128"), "{out}");
    let (link, _) = run("ip", &["-o", "link", "show", "dev", "lo"], b"");
    assert!(link.contains(",UP") || link.contains("<UP"), "{link}");
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let l = TcpListener::bind(addr).unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping", "{addr}");
    }
    // /etc/hosts, through glibc's resolver
    let v4: Vec<_> = ("localhost", 80).to_socket_addrs().unwrap().collect();
    assert!(v4.iter().any(|a| a.ip().is_loopback()), "{v4:?}");
}

#[test]
fn sysctls_are_writable() {
    if !vm::in_vm("sysctls_are_writable") {
        return;
    }
    // A private namespace, so the other tests' view does not change.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/ip_nonlocal_bind", "1"),
        ("net/ipv6/ip_nonlocal_bind", "1"),
        ("net/ipv4/conf/all/arp_ignore", "1"),
        ("net/ipv4/vs/conntrack", "1"),
    ] {
        let p = format!("/proc/sys/{key}");
        std::fs::write(&p, value).unwrap_or_else(|e| panic!("write {p}: {e}"));
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), value, "{p}");
    }
}

#[test]
fn named_network_namespaces_work() {
    if !vm::in_vm("named_network_namespaces_work") {
        return;
    }
    let name = format!("guest-vm-{}", std::process::id());
    run("ip", &["netns", "add", &name], b"");
    let r = Command::new("ip")
        .args(["netns", "exec", &name, "ip", "-o", "link", "show"])
        .output()
        .unwrap();
    run("ip", &["netns", "del", &name], b"");
    let links = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{r:?}");
    assert_eq!(
        links.lines().count(),
        1,
        "a new namespace has only lo: {links}"
    );
}
