//! Proxy sync benchmark: N ClusterIP Services x E endpoints, one full sync
//! from an empty kernel, then one endpoint change as a changed-only sync
//! (what the engine runs between full syncs), the sync that ends its drain,
//! one Service deleted (changed-only),
//! and the same kind of change through a full-scope sync (every Service
//! checked and planned), plus the process RSS.
//!
//!   cargo run --release --example ipvs_bench -- [SERVICES] [ENDPOINTS] [fake|netlink] [nft]
//!
//! `fake` (default) uses the in-memory IPVS and kube-ipvs0; `netlink` the
//! real kernel (root, IPVS; in the VM: bench/ipvs-sync.sh). Prints one JSON
//! line.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use lbd::proxy::driver::Syncer;
use lbd::proxy::engine::EngineSettings;
use lbd::proxy::kernel::ipvs::{FakeIpvs, IpvsHandle, NetlinkIpvs};
use lbd::proxy::kernel::nft::{Firewall, NftFirewall};
use lbd::proxy::kernel::{
    AddressError, DummyAddresses, FakeAddresses, FakeSysctls, IpvsDataPlane, ServiceAddresses,
};
use lbd::proxy::metrics::ProxyMetrics;
use lbd::proxy::model::{ObjectKey, ServiceInputs};
use lbd::proxy::objects::EndpointSlice;
use serde_json::json;

fn service(i: usize) -> Arc<Service> {
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench", "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap(),
    )
}

fn slice(i: usize, eps: usize, generation: usize) -> Arc<EndpointSlice> {
    let endpoints: Vec<_> = (0..eps)
        .map(|e| {
            let n = i * eps + e + generation;
            json!({"addresses": [format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)],
                   "conditions": {"ready": true}})
        })
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}-abc"), "namespace": "bench",
                         "resourceVersion": format!("{}", 1 + generation),
                         "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints
        }))
        .unwrap(),
    )
}

/// kube-ipvs0 with the time spent in it summed up, to split the full
/// sync's time between addresses and IPVS.
struct TimedAddresses {
    inner: Arc<dyn ServiceAddresses>,
    spent: std::sync::Mutex<std::time::Duration>,
}

impl TimedAddresses {
    fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        *self.spent.lock().unwrap() += t.elapsed();
        r
    }
    fn take_ms(&self) -> f64 {
        std::mem::take(&mut *self.spent.lock().unwrap()).as_secs_f64() * 1000.0
    }
}

impl ServiceAddresses for TimedAddresses {
    fn prepare(&self) -> Result<(), AddressError> {
        self.inner.prepare()
    }
    fn list(&self) -> Result<std::collections::BTreeSet<std::net::IpAddr>, AddressError> {
        self.time(|| self.inner.list())
    }
    fn add(&self, addr: std::net::IpAddr) -> Result<(), AddressError> {
        self.time(|| self.inner.add(addr))
    }
    fn remove(&self, addr: std::net::IpAddr) -> Result<(), AddressError> {
        self.time(|| self.inner.remove(addr))
    }
    fn add_many(&self, addrs: &[std::net::IpAddr]) -> Vec<Result<(), AddressError>> {
        self.time(|| self.inner.add_many(addrs))
    }
    fn remove_many(&self, addrs: &[std::net::IpAddr]) -> Vec<Result<(), AddressError>> {
        self.time(|| self.inner.remove_many(addrs))
    }
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let eps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let backend = args
        .get(3)
        .map(String::as_str)
        .unwrap_or("fake")
        .to_string();
    let with_nft = args.get(4).map(String::as_str) == Some("nft");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (ipvs, addresses): (Arc<dyn IpvsHandle>, Arc<dyn ServiceAddresses>) = match backend.as_str()
    {
        "netlink" => (
            Arc::new(NetlinkIpvs::new().expect("IPVS netlink")),
            Arc::new(DummyAddresses::new()),
        ),
        _ => (
            Arc::new(FakeIpvs::new()),
            Arc::new(FakeAddresses::default()),
        ),
    };
    addresses.prepare().expect("kube-ipvs0");
    let timed = Arc::new(TimedAddresses {
        inner: addresses,
        spent: Default::default(),
    });
    let addresses: Arc<dyn ServiceAddresses> = timed.clone();
    let firewall = with_nft.then(|| Arc::new(NftFirewall::default()) as Arc<dyn Firewall>);
    let settings = EngineSettings {
        node_name: "bench".into(),
        scheduler: "rr".into(),
        node_port_addresses: vec![],
        node_port_primary: false,
        exclude_cidrs: vec![],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        masquerade_all: false,
        min_sync_period: std::time::Duration::from_secs(1),
        sync_period: std::time::Duration::from_secs(30),
        drain_timeout: std::time::Duration::from_secs(60),
        timeouts: None,
        strict_arp: false,
    };
    let backends_ipvs = ipvs.clone();
    let backends_addresses = addresses.clone();
    let backends = IpvsDataPlane {
        ipvs,
        addresses,
        firewall,
        // The benchmark's host is not changed: sysctls are not its subject.
        sysctls: Arc::new(FakeSysctls::default()),
        conntrack: None,
    };

    let services: Vec<Arc<Service>> = (0..n).map(service).collect();
    let mut slices: Vec<Arc<EndpointSlice>> = (0..n).map(|i| slice(i, eps, 0)).collect();
    let rss_inputs = rss_kib("VmRSS:");
    let mut syncer = Syncer::new(settings, backends, ProxyMetrics::new());

    let t = Instant::now();
    let full = syncer.sync(&services, &slices, None, std::time::Instant::now());
    let full_ms = t.elapsed().as_secs_f64() * 1000.0;
    let full_addr_ms = timed.take_ms();
    assert_eq!(full.failed, 0, "{:?}", full.first_error);

    // One endpoint of one Service replaced: one add, one weight-0 update.
    // As the engine runs it between full syncs: only that Service is
    // recomputed and planned (the watcher named it dirty).
    slices[n / 2] = slice(n / 2, eps, 1);
    let changed = vec![ServiceInputs {
        key: ObjectKey::new("bench", &format!("svc-{}", n / 2)),
        service: Some(services[n / 2].clone()),
        slices: vec![slices[n / 2].clone()],
    }];
    let t = Instant::now();
    let one = syncer.sync_changed(&changed, None, std::time::Instant::now());
    let one_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(one.failed, 0, "{:?}", one.first_error);
    assert!(!one.full_required && !one.all_services);

    // The drain ends (no connections): a changed-only sync of nothing but
    // the draining virtual server.
    let t = Instant::now();
    let noop = syncer.sync_changed(&[], None, std::time::Instant::now());
    let noop_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(noop.failed, 0, "{:?}", noop.first_error);

    // One Service deleted (its slice lingers): its virtual server goes and
    // its ClusterIP is unbound from kube-ipvs0.
    let gone = n / 4;
    let deleted = vec![ServiceInputs {
        key: ObjectKey::new("bench", &format!("svc-{gone}")),
        service: None,
        slices: vec![slices[gone].clone()],
    }];
    let t = Instant::now();
    let del = syncer.sync_changed(&deleted, None, std::time::Instant::now());
    let del_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(del.failed, 0, "{:?}", del.first_error);
    let mut services = services;
    services.remove(gone);

    // The same kind of change through a full-scope sync (every Service
    // checked and planned, kept kernel view): what one change cost before.
    slices[n / 3] = slice(n / 3, eps, 1);
    let t = Instant::now();
    let one_all = syncer.sync(&services, &slices, None, std::time::Instant::now());
    let one_all_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(one_all.failed, 0, "{:?}", one_all.first_error);

    // What the daemon holds after its syncs, before the diagnostics below
    // make extra copies of the table (a second cache, a plan, a render).
    let (rss_syncs, peak_syncs) = (rss_kib("VmRSS:"), rss_kib("VmHWM:"));

    // Where the time goes: the pure recompute alone.
    let t = Instant::now();
    let d = lbd::proxy::desired::compute(
        &services,
        &slices,
        &lbd::proxy::desired::DesiredParams {
            node_name: "bench",
            node_addresses: &[],
            node_port_addresses: &[],
            node_port_primary: false,
            primary_ips: &[],
            scheduler: "rr",
            node_zone: None,
        },
    );
    let compute_ms = t.elapsed().as_secs_f64() * 1000.0;
    // The memoised recompute the syncs use, nothing changed.
    let mut cache = lbd::proxy::desired::DesiredCache::default();
    let p = lbd::proxy::desired::DesiredParams {
        node_name: "bench",
        node_addresses: &[],
        node_port_addresses: &[],
        node_port_primary: false,
        primary_ips: &[],
        scheduler: "rr",
        node_zone: None,
    };
    cache.compute(&services, &slices, &p);
    let t = Instant::now();
    let again = cache.compute(&services, &slices, &p);
    let memo_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(*again, d);
    let kernel = lbd::proxy::plan::KernelState::from_listing(
        backends_ipvs.list_services().unwrap(),
        Default::default(),
    );
    let t = Instant::now();
    let pl = lbd::proxy::plan::plan(
        &d,
        &kernel,
        &mut Default::default(),
        &Default::default(),
        std::time::Instant::now(),
    );
    let plan_ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = pl;
    // The nftables ruleset is rendered from the whole table whenever a
    // firewall is configured (not part of the syncs above).
    let t = Instant::now();
    let ruleset = lbd::proxy::kernel::nft::render(
        &d,
        &lbd::proxy::kernel::nft::NftParams {
            cluster_cidrs: &["10.128.0.0/9".parse().unwrap()],
            masquerade_all: false,
        },
    );
    let nft_render_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(ruleset);
    let t = Instant::now();
    let listing = backends_ipvs.list_services().unwrap();
    let list_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(listing.len(), d.virtual_servers.len());

    // Where the full sync's time goes besides IPVS: one kube-ipvs0 address
    // bound and unbound (a full sync binds one per ClusterIP).
    let probe: Vec<std::net::IpAddr> = (0..200u32)
        .map(|i| std::net::IpAddr::from([10, 95, (i / 250) as u8, (i % 250) as u8 + 1]))
        .collect();
    let t = Instant::now();
    for a in &probe {
        backends_addresses.add(*a).expect("bind");
    }
    let bind_us = t.elapsed().as_secs_f64() * 1e6 / probe.len() as f64;
    let t = Instant::now();
    for a in &probe {
        backends_addresses.remove(*a).expect("unbind");
    }
    let unbind_us = t.elapsed().as_secs_f64() * 1e6 / probe.len() as f64;

    println!(
        "{}",
        json!({
            "backend": backend, "nft": with_nft, "services": n, "endpoints_per_service": eps,
            "full_sync_ms": (full_ms * 10.0).round() / 10.0,
            "full_sync_addresses_ms": (full_addr_ms * 10.0).round() / 10.0, "full_sync_changes": full.changes,
            "one_change_ms": (one_ms * 10.0).round() / 10.0, "one_change_changes": one.changes,
            "one_change_ipvs_applied_ms": one.ipvs_applied.map(|d| (d.as_secs_f64() * 10000.0).round() / 10.0),
            "one_change_full_listing": one.full,
            "drain_end_ms": (noop_ms * 10.0).round() / 10.0, "drain_end_changes": noop.changes,
            "one_change_all_services_ms": (one_all_ms * 10.0).round() / 10.0, "one_change_all_services_changes": one_all.changes,
            "compute_ms": (compute_ms * 10.0).round() / 10.0,
            "memo_compute_ms": (memo_ms * 10.0).round() / 10.0, "plan_ms": (plan_ms * 10.0).round() / 10.0, "list_ms": (list_ms * 10.0).round() / 10.0,
            "nft_render_ms": (nft_render_ms * 10.0).round() / 10.0,
            "bind_us": bind_us.round(), "unbind_us": unbind_us.round(),
            "delete_one_ms": (del_ms * 10.0).round() / 10.0, "delete_one_changes": del.changes,
            "rss_after_inputs_mib": rss_inputs / 1024, "rss_mib": rss_kib("VmRSS:") / 1024,
            "peak_rss_mib": rss_kib("VmHWM:") / 1024,
            "rss_after_syncs_mib": rss_syncs / 1024, "peak_rss_after_syncs_mib": peak_syncs / 1024,
        })
    );
}
