//! Issue 12's differential test: the real kube-proxy (`--proxy-mode=ipvs`,
//! kubernetes v1.37.2) and the real `lbd` binary, one after the other on a
//! clean table, against a real kube-apiserver and etcd, all inside the VM
//! (the runner copies bench/kube-peers.sh's static binaries into the
//! payload), fed the same KubeProxyConfiguration file, over the table-test
//! scenarios of tests/fixtures/proxy-diff/scenarios.json plus seeded random
//! ones (tests/support/proxy_diff.rs). The IPVS tables (`ipvsadm -Ln`) and
//! kube-ipvs0 address sets are compared virtual server by virtual server;
//! a difference outside the allowlist (documented in docs/proxy.md) fails
//! the test, printed with the scenarios it belongs to and their fixtures.
//!
//! Scenarios with the same kube-proxy settings run together (one
//! kube-proxy run, one lbd run). Cost: one VM boot and the apiserver's
//! start (~2 min under TCG), then per settings group objects at ~3 a
//! second, kube-proxy ~30 s, lbd ~10 s. `LBD_DIFF_RANDOM=N` (default 4)
//! random scenarios, `LBD_DIFF_SEED` to replay a run (the seed is printed).
//!
//! Runs only in the VM (`VM_TESTS=kube_proxy_vm scripts/vm-test.sh --
//! --nocapture`); skips elsewhere, and inside when the binaries could not be
//! built (no Go on the host). The VM is a throw-away machine, so the test
//! owns its root network namespace and its whole ruleset.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use support::kube_cluster::{ClusterOptions, KubeCluster, SERVICE_CIDR_V4, SERVICE_CIDR_V6};
use support::kube_objects::Objects;
use support::lbd::Lbd;
use support::proxy_diff::{
    differences, owners, random_scenario, scenario_size, shrink_candidates, table_scenarios,
    unexplained, Difference, Scenario,
};
use support::proxy_vm::{
    clean_kernel, ipvs_table, kube_ipvs0, node, settle, sh, start_kube_proxy,
    write_kube_proxy_config,
};

async fn create(o: &Objects, s: &Scenario) {
    for v in &s.objects {
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match v["kind"].as_str() {
            Some("Service") => {
                let svc: Service = serde_json::from_value(v.clone()).unwrap();
                o.services
                    .create(&PostParams::default(), &svc)
                    .await
                    .unwrap_or_else(|e| panic!("{}: create Service {name}: {e}", s.name));
                if let Some(status) = v.get("status") {
                    o.services
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({ "status": status })),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("{}: Service {name} status: {e}", s.name));
                }
            }
            Some("EndpointSlice") => {
                let es: EndpointSlice = serde_json::from_value(v.clone()).unwrap();
                o.slices
                    .create(&PostParams::default(), &es)
                    .await
                    .unwrap_or_else(|e| panic!("{}: create EndpointSlice {name}: {e}", s.name));
            }
            other => panic!("{}: unknown kind {other:?}", s.name),
        }
    }
}

async fn delete(o: &Objects, s: &Scenario) {
    for v in &s.objects {
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        let dp = DeleteParams::default();
        let r = match v["kind"].as_str() {
            Some("Service") => o.services.delete(name, &dp).await.map(|_| ()),
            _ => o.slices.delete(name, &dp).await.map(|_| ()),
        };
        r.unwrap_or_else(|e| panic!("{}: delete {name}: {e}", s.name));
    }
}

/// The scenarios of this run: the table tests, then `LBD_DIFF_RANDOM`
/// (default 4) random ones from `LBD_DIFF_SEED` (default: the clock).
fn scenarios() -> Vec<Scenario> {
    let count: usize = std::env::var("LBD_DIFF_RANDOM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
        .min(150);
    let seed: u64 = std::env::var("LBD_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    eprintln!("differential: LBD_DIFF_SEED={seed} LBD_DIFF_RANDOM={count}");
    let mut all = table_scenarios();
    all.extend((0..count).map(|i| random_scenario(seed, i)));
    all
}

/// The healthCheckNodePorts the apiserver allocated to the group's
/// Services (LoadBalancer, externalTrafficPolicy Local).
async fn health_check_ports(o: &Objects, members: &[Scenario]) -> BTreeMap<String, u16> {
    let mut out = BTreeMap::new();
    for s in members {
        for v in s.objects.iter().filter(|v| v["kind"] == "Service") {
            let name = v["metadata"]["name"].as_str().unwrap_or_default();
            let svc = o.services.get(name).await.unwrap();
            let port = svc.spec.and_then(|s| s.health_check_node_port);
            if let Some(p) = port.and_then(|p| u16::try_from(p).ok()) {
                out.insert(name.to_string(), p);
            }
        }
    }
    out
}

/// What a proxy answers on each health-check port over each family's
/// loopback (key "NAME over IPv4" / "NAME over IPv6"): status,
/// the `X-Load-Balancing-Endpoint-Weight` header and the JSON body, or
/// "closed" when nothing listens.
fn health_check_answers(ports: &BTreeMap<String, u16>) -> BTreeMap<String, String> {
    // A proxy opens the ports at the end of a sync, after the table (and
    // kube-proxy's per-family proxiers each at their own): asked again for
    // up to 30 s while any is closed.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answers = health_check_answers_once(ports);
        let each_open = ports.keys().all(|name| {
            answers
                .iter()
                .any(|(k, a)| k.starts_with(&format!("{name} ")) && !a.starts_with("closed"))
        });
        if Instant::now() > deadline || each_open {
            return answers;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn health_check_answers_once(ports: &BTreeMap<String, u16>) -> BTreeMap<String, String> {
    use std::io::{Read, Write};
    let loopbacks: [(&str, std::net::IpAddr); 2] = [
        ("over IPv4", std::net::Ipv4Addr::LOCALHOST.into()),
        ("over IPv6", std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    ports
        .iter()
        .flat_map(|(name, port)| loopbacks.iter().map(move |(fam, lo)| (name, fam, lo, port)))
        .map(|(name, fam, lo, port)| {
            let answer = (|| -> std::io::Result<String> {
                let mut s = std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::new(*lo, *port),
                    std::time::Duration::from_secs(5),
                )?;
                s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                let status = out.split(' ').nth(1).unwrap_or("?").to_string();
                let weight = out
                    .lines()
                    .find(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("x-load-balancing-endpoint-weight:")
                    })
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string());
                let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
                // Compared as JSON: kube-proxy indents, lbd does not.
                let json: Value = serde_json::from_str(body.trim()).unwrap_or(json!(body));
                Ok(format!("{status} weight={weight:?} {json}"))
            })();
            (
                format!("{name} {fam}"),
                answer.unwrap_or_else(|e| format!("closed ({})", e.kind())),
            )
        })
        .collect()
}

/// A GET over IPv4 loopback; the body, or "" when nothing answers.
fn http_get_loopback(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let get = || -> std::io::Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|b| b.1.to_string())
            .unwrap_or_default())
    };
    get().unwrap_or_default()
}

/// Whether kube-proxy's proxier of `family` finished a sync: its
/// `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family}` is set
/// (stamped at the end of syncProxyRules, just before the health-check
/// ports are opened). Unknown (no metrics) counts as finished.
fn family_sync_completed(metrics: &str, family: &str) -> bool {
    if metrics.is_empty() {
        return true;
    }
    metrics
        .lines()
        .filter(|l| l.starts_with("kubeproxy_sync_proxy_rules_last_timestamp_seconds{"))
        .filter(|l| l.contains(&format!("ip_family=\"{family}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .any(|v| v > 0.0)
}

/// Whether `s` alone still shows a difference outside the allowlist.
async fn still_differs(cluster: &KubeCluster, o: &Objects, run: usize, s: &Scenario) -> bool {
    let members = std::slice::from_ref(s);
    let (diffs, hc_diffs, _) = run_group(cluster, o, run, &s.kube_proxy, members).await;
    !hc_diffs.is_empty() || !unexplained(&diffs, members).is_empty()
}

/// Greedy shrinking of a failing scenario: the first of its
/// [`shrink_candidates`] that still differs (run alone under both proxies)
/// replaces it, until none does or the budget (12 runs, 10 minutes) is
/// spent. Returns the smallest failing variant found.
async fn shrink(cluster: &KubeCluster, o: &Objects, failing: &Scenario) -> Scenario {
    const RUNS: usize = 12;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    let mut best = failing.clone();
    let mut runs = 0;
    'outer: loop {
        for cand in shrink_candidates(&best) {
            if runs == RUNS || Instant::now() > deadline {
                break 'outer;
            }
            runs += 1;
            // Group numbers past the settings groups: their own config
            // and log files.
            if still_differs(cluster, o, 100 + runs, &cand).await {
                eprintln!(
                    "shrink {}: run {runs}: still differs at size {}",
                    failing.name,
                    scenario_size(&cand)
                );
                best = cand;
                continue 'outer;
            }
        }
        break;
    }
    eprintln!(
        "shrink {}: {runs} runs, size {} -> {}\nfixture {} (shrunk):\n{}",
        failing.name,
        scenario_size(failing),
        scenario_size(&best),
        best.name,
        serde_json::to_string(&best).unwrap()
    );
    best
}

/// docs/proxy.md's `kube-proxy-ipv6-sync-fails-in-the-vm`: an IPv6 health
/// check kube-proxy never opened because its IPv6 proxier never finished
/// a sync (its metrics) is not judged, provided lbd's answer there is a
/// real one for that Service (open, its name in the body).
fn health_check_difference_allowed(name: &str, kp: &str, lbd: &str, kp_v6_failed: bool) -> bool {
    let service = name.split(' ').next().unwrap_or_default();
    kp_v6_failed
        && name.ends_with("over IPv6")
        && kp.starts_with("closed")
        && !lbd.starts_with("closed")
        && lbd.contains(&format!("\"name\":\"{service}\""))
}

/// One settings group: both proxies on its scenarios; the differences of
/// the tables, and of the health-check answers.
async fn run_group(
    cluster: &KubeCluster,
    o: &Objects,
    group: usize,
    extra: &str,
    members: &[Scenario],
) -> (Vec<Difference>, Vec<String>, usize) {
    let t = Instant::now();
    for s in members {
        create(o, s).await;
    }
    eprintln!(
        "group {group} ({} scenarios, settings {extra:?}): objects in {:?}",
        members.len(),
        t.elapsed()
    );
    let config = write_kube_proxy_config(cluster, group, extra);
    let t = Instant::now();
    let kp = start_kube_proxy(cluster, &config, group);
    let took = settle("kube-proxy programmed", 1, 300).await;
    let (kp_table, kp_addrs) = (ipvs_table(), kube_ipvs0());
    let hc_ports = health_check_ports(o, members).await;
    let kp_hc = health_check_answers(&hc_ports);
    let kp_listening = sh("grep -h ' 0A ' /proc/net/tcp /proc/net/tcp6 || true");
    let kp_metrics = http_get_loopback(10249, "/metrics");
    drop(kp);
    // Which families the judge ran (it logs its dual-stack decision).
    let kp_log =
        std::fs::read_to_string(cluster.dir.path().join(format!("kube-proxy-{group}.log")))
            .unwrap_or_default();
    let families: Vec<&str> = kp_log
        .lines()
        .filter(|l| l.contains("IPv6") || l.contains("ipFamily") || l.contains("family"))
        .take(8)
        .collect();
    eprintln!("group {group}: kube-proxy on families: {families:#?}");
    eprintln!(
        "group {group}: kube-proxy settled in {:?} (stable after {took:?})",
        t.elapsed()
    );
    clean_kernel();

    let t = Instant::now();
    let lbd = Lbd::start(&format!(
        "proxy:\n  kube_proxy_config: {}\n",
        config.display()
    ))
    .await;
    let took = settle("lbd programmed", 1, 180).await;
    let (lbd_table, lbd_addrs) = (ipvs_table(), kube_ipvs0());
    let lbd_hc = health_check_answers(&hc_ports);
    let lbd_log = lbd.logs();
    drop(lbd);
    eprintln!(
        "group {group}: lbd settled in {:?} (stable after {took:?})",
        t.elapsed()
    );
    clean_kernel();
    let diffs = differences(&kp_table, &lbd_table, &kp_addrs, &lbd_addrs);
    if !diffs.is_empty() {
        eprintln!(
            "group {group}: kube-proxy ipvsadm -Ln:\n{}\nkube-ipvs0 {kp_addrs:?}\n\
             lbd ipvsadm -Ln:\n{}\nkube-ipvs0 {lbd_addrs:?}",
            kp_table.join("\n"),
            lbd_table.join("\n")
        );
        let warn: Vec<&str> = lbd_log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
            .collect();
        eprintln!("group {group}: lbd warnings: {warn:#?}");
    }
    for s in members {
        delete(o, s).await;
    }
    // kube-proxy's IPv6 proxier in the VM may never finish a sync: it
    // programs IPVS, then stops before the end of syncProxyRules, where it
    // stamps sync_proxy_rules_last_timestamp_seconds and right after opens
    // its health-check ports. Its own metrics say so.
    let v6_synced = family_sync_completed(&kp_metrics, "IPv6");
    eprintln!(
        "group {group}: kube-proxy's sync metrics: {:#?}",
        kp_metrics
            .lines()
            .filter(
                |l| l.starts_with("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
                    || l.starts_with("kubeproxy_sync_proxy_rules_iptables_restore_failures_total")
            )
            .collect::<Vec<_>>()
    );
    let mut hc_diffs = Vec::new();
    for (name, kp) in &kp_hc {
        let mine = lbd_hc.get(name).map(String::as_str).unwrap_or("missing");
        eprintln!("group {group}: health check {name}: kube-proxy {kp} | lbd {mine}");
        if health_check_difference_allowed(name, kp, mine, !v6_synced) {
            eprintln!("group {group}: allowed (kube-proxy-ipv6-sync-fails-in-the-vm): {name}");
            continue;
        }
        if kp != mine {
            let port = name.split(' ').next().and_then(|n| hc_ports.get(n));
            hc_diffs.push(format!(
                "health check of {name} (port {port:?}): kube-proxy {kp}, lbd {mine}"
            ));
        }
    }
    if !hc_diffs.is_empty() {
        let ports: Vec<String> = hc_ports.values().map(u16::to_string).collect();
        let hc_log: Vec<&str> = kp_log
            .lines()
            .filter(|l| {
                let lower = l.to_ascii_lowercase();
                lower.contains("healthcheck")
                    || lower.contains("health check")
                    || lower.contains("listen")
                    || lower.contains("address already in use")
                    || lower.contains("iptables-restore")
                    || l.contains("odePortAddresses")
                    || ports.iter().any(|p| l.contains(p.as_str()))
            })
            .take(40)
            .collect();
        eprintln!("group {group}: kube-proxy's listening sockets (/proc/net/tcp*, state 0A):\n{kp_listening}\nits health-check log: {hc_log:#?}");
    }
    let answered = kp_hc.values().filter(|a| !a.starts_with("closed")).count();
    (diffs, hc_diffs, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_and_lbd_program_the_same_tables() {
    if !support::vm::in_vm("kube_proxy_vm") {
        return;
    }
    let boot = Instant::now();
    let all = scenarios();
    let Some(cluster) = KubeCluster::start("kube_proxy_vm", ClusterOptions::default()).await else {
        return;
    };
    eprintln!(
        "timing: etcd + kube-apiserver ready in {:?}",
        boot.elapsed()
    );
    let o = Objects::new(cluster.client().await);
    node(&o).await;
    let mut groups: BTreeMap<&str, Vec<Scenario>> = BTreeMap::new();
    for s in &all {
        groups
            .entry(s.kube_proxy.as_str())
            .or_default()
            .push(s.clone());
    }
    let mut failures = Vec::new();
    let mut allowed = 0;
    let mut hc_answered = 0;
    let mut failing: BTreeMap<String, Scenario> = BTreeMap::new();
    for (group, (extra, members)) in groups.iter().enumerate() {
        let (diffs, hc_diffs, answered) = run_group(&cluster, &o, group, extra, members).await;
        for d in &hc_diffs {
            // "health check of NAME over ...": the Service's scenario.
            let svc = d.split(' ').nth(3).unwrap_or_default();
            for s in members
                .iter()
                .filter(|s| s.objects.iter().any(|v| v["metadata"]["name"] == svc))
            {
                failing.insert(s.name.clone(), s.clone());
            }
        }
        failures.extend(hc_diffs);
        hc_answered += answered;
        let bad = unexplained(&diffs, members);
        allowed += diffs.len() - bad.len();
        for d in bad {
            let names: Vec<&str> = owners(d, members).iter().map(|s| s.name.as_str()).collect();
            failures.push(format!("{d}\n  scenarios: {names:?}"));
            for s in owners(d, members) {
                eprintln!("fixture {}:\n{}", s.name, serde_json::to_string(s).unwrap());
                failing.insert(s.name.clone(), s.clone());
            }
        }
    }
    // Random scenarios that failed are shrunk (the table ones are small
    // already), at most two, each within a bounded number of runs.
    for s in failing
        .values()
        .filter(|s| s.name.starts_with("random-"))
        .take(2)
    {
        let small = shrink(&cluster, &o, s).await;
        failures.push(format!(
            "shrunk {} ({} -> {}): {}",
            s.name,
            scenario_size(s),
            scenario_size(&small),
            serde_json::to_string(&small).unwrap()
        ));
    }
    eprintln!(
        "timing: {} scenarios in {} groups, whole test {:?}; {allowed} allowlisted differences",
        all.len(),
        groups.len(),
        boot.elapsed()
    );
    // The table scenarios hold an externalTrafficPolicy Local load
    // balancer with nodePortAddresses unset: its port answered under
    // kube-proxy, so the comparison above compared something.
    assert!(
        hc_answered > 0,
        "no health-check node port answered under kube-proxy"
    );
    assert!(
        failures.is_empty(),
        "{} differences outside the allowlist:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The comparison itself, on the host: a difference of each kind is found
/// and traced to its scenario.
#[test]
fn differences_are_found_and_traced_to_their_scenario() {
    let all = table_scenarios();
    let kp: Vec<String> = [
        "TCP 10.96.10.1:80 rr",
        "  -> 10.244.1.1:8080 Masq 1",
        "TCP 192.168.1.10:30020 rr",
        "  -> 10.244.2.1:8080 Masq 1",
        "TCP [fd00:10:96::11]:80 rr",
    ]
    .map(String::from)
    .to_vec();
    let lbd: Vec<String> = [
        "TCP 10.96.10.1:80 rr",
        "  -> 10.244.1.1:8080 Masq 0",
        "TCP [fd00:10:96::11]:80 rr",
        "TCP 10.96.10.6:80 rr",
    ]
    .map(String::from)
    .to_vec();
    let addrs = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let d = differences(
        &kp,
        &lbd,
        &addrs(&["10.96.10.1"]),
        &addrs(&["10.96.10.1", "10.96.10.6"]),
    );
    let traced: Vec<(String, Vec<&str>)> = d
        .iter()
        .map(|d| {
            let kind = d.to_string().lines().next().unwrap().to_string();
            (
                kind,
                owners(d, &all).iter().map(|s| s.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        traced,
        [
            ("differs:".to_string(), vec!["clusterip-tcp-udp"]),
            ("only kube-proxy:".to_string(), vec!["nodeport"]),
            ("only lbd:".to_string(), vec!["itp-local"]),
            (
                "kube-ipvs0 address only lbd: 10.96.10.6".to_string(),
                vec!["itp-local"]
            ),
        ]
    );
}

/// Random scenarios: the same seed gives the same objects (a failure can
/// be replayed), they parse as Kubernetes objects, and their addresses and
/// names do not collide with each other or the table tests'.
#[test]
fn random_scenarios_replay_from_their_seed_and_do_not_collide() {
    let a: Vec<Value> = (0..20)
        .map(|i| json!(random_scenario(7, i).objects))
        .collect();
    let b: Vec<Value> = (0..20)
        .map(|i| json!(random_scenario(7, i).objects))
        .collect();
    assert_eq!(a, b);
    let c: Vec<Value> = (0..20)
        .map(|i| json!(random_scenario(8, i).objects))
        .collect();
    assert_ne!(a, c);
    let mut names = BTreeSet::new();
    let mut cluster_ips = BTreeSet::new();
    let mut all = table_scenarios();
    all.extend((0..150).map(|i| random_scenario(7, i)));
    for s in &all {
        for v in &s.objects {
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            assert!(
                names.insert(format!("{}/{name}", v["kind"])),
                "{} reuses {name}",
                s.name
            );
            match v["kind"].as_str() {
                Some("Service") => {
                    let svc: Service = serde_json::from_value(v.clone()).unwrap();
                    let spec = svc.spec.unwrap();
                    let mut ips: BTreeSet<String> =
                        spec.cluster_ips.unwrap_or_default().into_iter().collect();
                    ips.extend(spec.cluster_ip);
                    for ip in ips {
                        if ip == "None" {
                            continue;
                        }
                        let addr: std::net::IpAddr = ip.parse().unwrap();
                        let in_range = [SERVICE_CIDR_V4, SERVICE_CIDR_V6]
                            .iter()
                            .any(|c| c.parse::<ipnet::IpNet>().unwrap().contains(&addr));
                        assert!(in_range, "{}: {ip} outside the service CIDRs", s.name);
                        assert!(cluster_ips.insert(ip.clone()), "{ip} twice");
                    }
                }
                _ => {
                    let _: EndpointSlice = serde_json::from_value(v.clone()).unwrap();
                }
            }
        }
    }
}

/// The allowlist explains what docs/proxy.md lists and nothing next to
/// it: the differences of the first VM run (2026-12-04), as printed.
#[test]
fn the_allowlist_explains_only_its_documented_differences() {
    let all = table_scenarios();
    let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let hints = Difference::Differs {
        kube_proxy: lines(&["TCP 10.96.10.15:80 rr", "  -> 10.244.15.1:8080 Masq 1"]),
        lbd: lines(&[
            "TCP 10.96.10.15:80 rr",
            "  -> 10.244.15.1:8080 Masq 1",
            "  -> 10.244.15.2:8080 Masq 1",
        ]),
    };
    let etp_local = Difference::Differs {
        kube_proxy: lines(&["TCP 192.168.1.10:30050 rr", "  -> 10.244.5.1:8080 Masq 1"]),
        lbd: lines(&["TCP 192.168.1.10:30050 rr"]),
    };
    let dual_stack_v6 = Difference::OnlyLbd(lines(&[
        "TCP [fd00:10:96::11]:80 rr",
        "  -> [fd00:244:11::1]:8080 Masq 1",
    ]));
    let v6_address = Difference::AddressOnlyLbd("fd00:10:96::12".into());
    let v6_node_port_of_v4_service = Difference::OnlyLbd(lines(&["TCP [fd00:1::10]:30020 rr"]));
    let proxy_name = Difference::OnlyLbd(lines(&[
        "TCP 10.96.10.16:80 rr",
        "  -> 10.244.16.1:8080 Masq 1",
    ]));
    let diffs = vec![
        hints,
        etp_local.clone(),
        dual_stack_v6,
        v6_address,
        v6_node_port_of_v4_service.clone(),
        proxy_name.clone(),
    ];
    let left: Vec<Difference> = unexplained(&diffs, &all).into_iter().cloned().collect();
    assert_eq!(
        left,
        vec![etp_local, v6_node_port_of_v4_service, proxy_name]
    );
}

/// The health-check allowance, on the host: only an IPv6 answer kube-proxy
/// never gave because its IPv6 proxier never finished a sync (its
/// metrics), and only where lbd answered for that Service.
#[test]
fn the_health_check_allowance_needs_the_judges_ipv6_failure() {
    let lbd = r#"503 weight=Some("0") {"localEndpoints":0,"service":{"name":"r3","namespace":"default"},"serviceProxyHealthy":true}"#;
    let closed = "closed (connection refused)";
    let answered = "200 weight=Some(\"1\")";
    // (answer of, kube-proxy, lbd, the judge's IPv6 sync unfinished, allowed)
    let cases = [
        ("r3 over IPv6", closed, lbd, true, true),
        // Without the judge's unfinished sync, the same difference counts.
        ("r3 over IPv6", closed, lbd, false, false),
        // Never over IPv4, never when lbd is closed too or answers for
        // another name, and an answer from kube-proxy is always judged.
        ("r3 over IPv4", closed, lbd, true, false),
        ("r3 over IPv6", closed, closed, true, false),
        ("s5 over IPv6", closed, lbd, true, false),
        ("r3 over IPv6", answered, lbd, true, false),
    ];
    for (name, kp, mine, unfinished, allowed) in cases {
        assert_eq!(
            health_check_difference_allowed(name, kp, mine, unfinished),
            allowed,
            "{name}: kube-proxy {kp}, lbd {mine}, unfinished {unfinished}"
        );
    }

    let metrics = "# HELP x\n\
        kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1.7966e+09\n\
        kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv6\"} 3\n";
    assert!(family_sync_completed(metrics, "IPv4"));
    assert!(!family_sync_completed(metrics, "IPv6"));
    let zero = "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"} 0\n";
    assert!(!family_sync_completed(zero, "IPv6"));
    assert!(
        family_sync_completed("", "IPv6"),
        "no metrics: not an excuse"
    );
}

/// Shrinking, on the host: every candidate is one step smaller, and the
/// steps cover what a random scenario varies (slices, endpoints, ports,
/// families, status, optional spec fields).
#[test]
fn shrink_candidates_are_each_one_step_smaller() {
    for i in 0..40 {
        let s = random_scenario(1796604616, i);
        let size = scenario_size(&s);
        for c in shrink_candidates(&s) {
            assert!(scenario_size(&c) < size, "{}: {c:?} not smaller", s.name);
            assert_eq!(c.name, s.name);
            // Still one Service, still parseable as what the test creates.
            let svcs: Vec<&Value> = c
                .objects
                .iter()
                .filter(|v| v["kind"] == "Service")
                .collect();
            assert_eq!(svcs.len(), 1);
            let _: Service = serde_json::from_value(svcs[0].clone()).unwrap();
            for v in c.objects.iter().filter(|v| v["kind"] == "EndpointSlice") {
                let _: EndpointSlice = serde_json::from_value(v.clone()).unwrap();
            }
        }
    }
    // A dual-stack Service with both slices and a UDP port: every kind of step.
    let dual = (0..400)
        .map(|i| random_scenario(7, i % 150))
        .find(|s| {
            let spec = &s.objects[0]["spec"];
            spec["ipFamilies"].as_array().is_some_and(|f| f.len() == 2)
                && spec["ports"].as_array().is_some_and(|p| p.len() == 2)
        })
        .expect("a dual-stack two-port random scenario");
    let cands = shrink_candidates(&dual);
    let single_stack = cands
        .iter()
        .filter(|c| c.objects[0]["spec"]["ipFamilies"].as_array().map(Vec::len) == Some(1))
        .count();
    assert_eq!(single_stack, 2, "one per family kept");
    let one_port = cands
        .iter()
        .filter(|c| c.objects[0]["spec"]["ports"].as_array().map(Vec::len) == Some(1))
        .count();
    assert!(one_port >= 2, "each port dropped in turn");
    // Shrinking ends: repeatedly taking the first candidate reaches a
    // scenario with none.
    let mut s = dual;
    for _ in 0..200 {
        match shrink_candidates(&s).into_iter().next() {
            Some(c) => s = c,
            None => break,
        }
    }
    assert!(shrink_candidates(&s).is_empty());
}
