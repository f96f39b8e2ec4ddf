//! Issue 12's benchmark, run by bench/kube-proxy-vs-lbd.sh (not a CI
//! test: it skips unless `LBD_BENCH_SERVICES` is set, and runs only in the
//! VM): `LBD_BENCH_SERVICES` ClusterIP Services with 5 endpoints each
//! through the real kube-apiserver, then the real `lbd` binary, the real
//! kube-proxy (`--proxy-mode=ipvs`) and lbd again, one after the other on a
//! clean table with the same KubeProxyConfiguration (`LBD_BENCH_ORDER`,
//! default `lbd,kube-proxy,lbd`). For each: full sync
//! (process start to the kernel holding every virtual and real server),
//! settled (process start until its tree goes idle: the first sync done),
//! one endpoint change on the settled proxy (from just before the API write
//! to `ipvsadm` showing the new real server; `LBD_BENCH_CHANGES`, default
//! 3, 2 s apart so that minSyncPeriod does not time them), and the process
//! tree's CPU seconds (with reaped children: kube-proxy's ipset and
//! iptables runs) and RSS (summed: lbd's supervisor and worker) once the
//! table is complete and after the changes. Prints one line per proxy and
//! the ratios of each lbd run to kube-proxy.

mod support;

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::kube_cluster::{ClusterOptions, KubeCluster};
use support::kube_objects::{cluster_ip, endpoints, ports, slice, Objects};
use support::lbd::Lbd;
use support::proxy_vm::{clean_kernel, node, sh, start_kube_proxy, write_kube_proxy_config};

const ENDPOINTS: usize = 5;

/// Service `i`'s ClusterIP (10.96.10.0 up: clear of `kubernetes`).
fn service_ip(i: usize) -> String {
    format!("10.96.{}.{}", 10 + i / 250, 1 + i % 250)
}

/// Endpoint `j` of Service `i`.
fn endpoint_ip(i: usize, j: usize) -> String {
    format!("10.{}.{}.{}", 200 + j, i / 250, 1 + i % 250)
}

/// Virtual and real servers the kernel holds, from /proc/net/ip_vs (one
/// read, no netlink dump per poll).
fn kernel_counts() -> (usize, usize) {
    let text = std::fs::read_to_string("/proc/net/ip_vs").unwrap_or_default();
    let vs = text.lines().filter(|l| l.starts_with("TCP ")).count();
    let rs = text
        .lines()
        .skip(3)
        .filter(|l| l.starts_with("  -> "))
        .count();
    (vs, rs)
}

/// The live processes of `root`'s tree (itself first): `lbd run` is a
/// supervisor and its worker, and the worker does the work.
fn process_tree(root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let pid = tree[i];
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for t in tasks {
            let children = std::fs::read_to_string(t.join("children")).unwrap_or_default();
            tree.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    tree
}

/// What `/proc` says of a process tree: CPU seconds as user, system and
/// reaped children (kube-proxy's ipset/iptables runs count against it;
/// the split says where a slow full sync goes: the run-mode finding of
/// docs/benchmarks.md), and RSS / peak RSS in MiB, summed.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    user: f64,
    sys: f64,
    children: f64,
    rss: f64,
    peak: f64,
}

impl Usage {
    fn cpu(&self) -> f64 {
        self.user + self.sys + self.children
    }
}

fn usage(pid: u32) -> Usage {
    let mut u = Usage::default();
    for p in process_tree(pid) {
        let o = usage_of(p);
        u.user += o.user;
        u.sys += o.sys;
        u.children += o.children;
        u.rss += o.rss;
        u.peak += o.peak;
    }
    u
}

fn usage_of(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th,
    // then stime, cutime, cstime.
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let secs = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Usage {
        user: secs(11),
        sys: secs(12),
        children: secs(13) + secs(14),
        rss: mib("VmRSS:"),
        peak: mib("VmHWM:"),
    }
}

/// Creates the Services and their slices, 16 requests in flight.
async fn create_services(o: &Objects, n: usize) {
    stream::iter(0..n)
        .for_each_concurrent(16, |i| async move {
            let name = format!("b{i}");
            o.service(cluster_ip(
                &name,
                &service_ip(i),
                ports(&[("http", "TCP", 80, 0)]),
            ))
            .await;
            let addrs: Vec<String> = (0..ENDPOINTS).map(|j| endpoint_ip(i, j)).collect();
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            o.slice(slice(
                &name,
                &format!("{name}-1"),
                "IPv4",
                &[("http", "TCP", 80)],
                &addrs,
            ))
            .await;
        })
        .await;
}

#[derive(Default)]
struct Figures {
    full_sync: Duration,
    /// From the start until the process tree goes idle after its first sync.
    settled: Duration,
    /// When the kernel's table was complete.
    at_sync: Usage,
    changes: Vec<Duration>,
    /// After the changes (its peak: the run's).
    end: Usage,
}

/// Waits for the full table, then makes `changes` endpoint changes, each
/// to another Service, and times each to the kernel.
async fn measure(o: &Objects, pid: u32, started: Instant, n: usize, changes: usize) -> Figures {
    let want = (n + 1, n * ENDPOINTS);
    loop {
        let (vs, rs) = kernel_counts();
        if vs >= want.0 && rs >= want.1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5400),
            "no full table after 90 minutes: {vs} virtual, {rs} real servers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut fig = Figures {
        full_sync: started.elapsed(),
        ..Figures::default()
    };
    fig.at_sync = usage(pid);
    // The kernel's table is complete before the first sync has finished
    // (kube-proxy still binds addresses, fills ipsets and runs
    // iptables-restore): changes are timed once the proxy is idle, as on a
    // settled node, not queued behind its first sync.
    fig.settled = settle(pid, started).await;
    for c in 0..changes {
        if c > 0 {
            // Past minSyncPeriod (1 s by default, the same config for both):
            // a change right after the previous sync would time the rate
            // limit, not the proxy.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let i = (n / 2 + c * 97) % n;
        let mut addrs: Vec<String> = (0..ENDPOINTS).map(|j| endpoint_ip(i, j)).collect();
        let new = format!("10.250.{}.{}", c / 250, 1 + c % 250);
        addrs.push(new.clone());
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let vip = format!("{}:80", service_ip(i));
        let t = Instant::now();
        o.slices
            .patch(
                &format!("b{i}-1"),
                &PatchParams::default(),
                &Patch::Merge(json!({ "endpoints": endpoints(&addrs) })),
            )
            .await
            .unwrap();
        loop {
            if sh(&format!("ipvsadm -Ln -t {vip}")).contains(&format!("{new}:8080")) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1800),
                "change {c} never reached the kernel"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fig.changes.push(t.elapsed());
    }
    fig.end = usage(pid);
    fig
}

/// Waits until `pid`'s tree used under 5% of a core over 5 s; returns the
/// time from `started`.
async fn settle(pid: u32, started: Instant) -> Duration {
    let window = Duration::from_secs(5);
    let mut last = usage(pid).cpu();
    loop {
        tokio::time::sleep(window).await;
        let now = usage(pid).cpu();
        if now - last < 0.05 * window.as_secs_f64() {
            return started.elapsed().saturating_sub(window);
        }
        last = now;
        assert!(
            started.elapsed() < Duration::from_secs(5400),
            "the proxy never went idle after its first sync"
        );
    }
}

/// Puts the changed slices back as they were, for the next proxy.
async fn undo_changes(o: &Objects, n: usize, changes: usize) {
    for c in 0..changes {
        let i = (n / 2 + c * 97) % n;
        let addrs: Vec<String> = (0..ENDPOINTS).map(|j| endpoint_ip(i, j)).collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        o.set_endpoints(&format!("b{i}-1"), endpoints(&addrs)).await;
    }
}

fn print(name: &str, n: usize, f: &Figures) {
    let ms: Vec<String> = f
        .changes
        .iter()
        .map(|d| format!("{}", d.as_millis()))
        .collect();
    eprintln!(
        "bench {name} services={n} endpoints={ENDPOINTS}: full_sync_s={:.2} settled_s={:.2} cpu_s_at_sync={:.2} \
         (user={:.2} sys={:.2} children={:.2}) rss_mib_at_sync={:.1} change_ms=[{}] cpu_s_end={:.2} rss_mib_end={:.1} peak_rss_mib={:.1}",
        f.full_sync.as_secs_f64(),
        f.settled.as_secs_f64(),
        f.at_sync.cpu(),
        f.at_sync.user,
        f.at_sync.sys,
        f.at_sync.children,
        f.at_sync.rss,
        ms.join(","),
        f.end.cpu(),
        f.end.rss,
        f.end.peak
    );
}

fn median(d: &[Duration]) -> f64 {
    let mut v: Vec<f64> = d.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_vs_lbd() {
    let Some(n) = std::env::var("LBD_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        eprintln!("skipping: a benchmark, bench/kube-proxy-vs-lbd.sh runs it");
        return;
    };
    if !support::vm::in_vm("kube_proxy_bench") {
        return;
    }
    let changes: usize = std::env::var("LBD_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let Some(cluster) = KubeCluster::start("kube_proxy_bench", ClusterOptions::default()).await
    else {
        return;
    };
    let o = Objects::new(cluster.client().await);
    node(&o).await;
    let t = Instant::now();
    create_services(&o, n).await;
    eprintln!(
        "bench: {n} Services + {n} EndpointSlices created in {:?}",
        t.elapsed()
    );
    let config = write_kube_proxy_config(&cluster, 0, "");
    // LBD_BENCH_ORDER: the proxies in the order they run, each on a clean
    // table. The default runs lbd on a kernel no proxy touched before
    // (a new node), then kube-proxy, then lbd again (a node migrating
    // from kube-proxy: the run mode in which lbd's full sync took ~4x
    // the CPU, docs/benchmarks.md). LBD_BENCH_ORDER=lbd: lbd alone (a
    // change to lbd measured against an earlier run's kube-proxy; no
    // ratios then).
    let order =
        std::env::var("LBD_BENCH_ORDER").unwrap_or_else(|_| "lbd,kube-proxy,lbd".to_string());
    let mut runs: Vec<(String, Figures)> = Vec::new();
    for proxy in order.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let name = match (proxy, runs.iter().any(|(n, _)| n == "kube-proxy")) {
            ("kube-proxy", _) => "kube-proxy".to_string(),
            ("lbd", false) => "lbd".to_string(),
            ("lbd", true) => "lbd-after-kube-proxy".to_string(),
            (other, _) => panic!("LBD_BENCH_ORDER: {other:?} is neither lbd nor kube-proxy"),
        };
        let fig = if proxy == "kube-proxy" {
            let started = Instant::now();
            let kp = start_kube_proxy(&cluster, &config, 0);
            let fig = measure(&o, kp.0.id(), started, n, changes).await;
            drop(kp);
            fig
        } else {
            run_lbd(&o, &config, n, changes).await
        };
        print(&name, n, &fig);
        clean_kernel();
        undo_changes(&o, n, changes).await;
        runs.push((name, fig));
    }

    let Some((_, kp)) = runs.iter().find(|(n, _)| n == "kube-proxy") else {
        return;
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    for (name, f) in runs.iter().filter(|(n, _)| n != "kube-proxy") {
        eprintln!(
            "bench ratios services={n} {name} / kube-proxy (targets: change <= 0.1 at 10k, \
             full sync <= 0.33, RSS <= 0.7): change_median={:.3} full_sync={:.3} settled={:.3} \
             cpu_at_sync={:.3} rss_at_sync={:.3} peak_rss={:.3}",
            ratio(median(&f.changes), median(&kp.changes)),
            ratio(f.full_sync.as_secs_f64(), kp.full_sync.as_secs_f64()),
            ratio(f.settled.as_secs_f64(), kp.settled.as_secs_f64()),
            ratio(f.at_sync.cpu(), kp.at_sync.cpu()),
            ratio(f.at_sync.rss, kp.at_sync.rss),
            ratio(f.end.peak, kp.end.peak)
        );
    }
}

/// Starts the real lbd on `config`, measures it, and prints when its
/// caches were ready against when the table was complete (apiserver side
/// or kernel side of a slow full sync).
async fn run_lbd(o: &Objects, config: &std::path::Path, n: usize, changes: usize) -> Figures {
    let started = Instant::now();
    let lbd = Lbd::start(&format!(
        "proxy:\n  kube_proxy_config: {}\n",
        config.display()
    ))
    .await;
    let fig = measure(o, lbd.child.id(), started, n, changes).await;
    let status = lbd.status().await;
    eprintln!(
        "bench lbd timeline: started at {} ({:?} before the full table); proxy status {}",
        humantime::format_rfc3339_millis(std::time::SystemTime::now() - started.elapsed()),
        fig.full_sync,
        status["proxy"]
    );
    for line in lbd
        .logs()
        .lines()
        .filter(|l| l.contains("caches synced") || l.contains("WARN") || l.contains("ERROR"))
        .take(20)
    {
        eprintln!("bench lbd log: {line}");
    }
    fig
}
