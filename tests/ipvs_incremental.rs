//! Changed-only syncs (`Syncer::sync_changed`) against from-scratch full
//! syncs: after any sequence of Service / EndpointSlice changes, syncing
//! only the Services the changes touched leaves the (fake) kernel and
//! kube-ipvs0 exactly as a fresh full sync of the same caches would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use lbd::proxy::desired::{self, DesiredCache, DesiredParams};
use lbd::proxy::driver::Syncer;
use lbd::proxy::engine::{EngineSettings, SyncOutcome};
use lbd::proxy::kernel::ipvs::FakeIpvs;
use lbd::proxy::kernel::nft::FakeFirewall;
use lbd::proxy::kernel::{FakeAddresses, FakeSysctls, IpvsDataPlane};
use lbd::proxy::kube::ChangeTracker;
use lbd::proxy::metrics::ProxyMetrics;
use lbd::proxy::model::{DestKey, Protocol, RealServer, ServiceKey, VirtualServer};
use lbd::proxy::model::{ObjectKey, ServiceInputs};
use lbd::proxy::objects::EndpointSlice;
use serde_json::{json, Value};

const NODE: &str = "cp1";
const NS: [&str; 2] = ["default", "kube-system"];
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn settings() -> EngineSettings {
    // kube-proxy's defaults (rr, 1 s / 30 s), a short drain bound.
    EngineSettings {
        node_name: NODE.into(),
        drain_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

fn node(addr: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": NODE},
        "status": {"addresses": [{"type": "InternalIP", "address": addr}]}}))
    .unwrap()
}

/// A kernel and kube-ipvs0 with the syncer driving them.
struct Proxy {
    ipvs: FakeIpvs,
    addrs: FakeAddresses,
    fw: FakeFirewall,
    syncer: Syncer,
    metrics: ProxyMetrics,
}

impl Proxy {
    fn new() -> Self {
        let ipvs = FakeIpvs::new();
        let addrs = FakeAddresses::default();
        let fw = FakeFirewall::default();
        let metrics = ProxyMetrics::new();
        let syncer = Syncer::new(
            settings(),
            IpvsDataPlane {
                ipvs: Arc::new(ipvs.clone()),
                addresses: Arc::new(addrs.clone()),
                firewall: Some(Arc::new(fw.clone())),
                sysctls: Arc::new(FakeSysctls::default()),
                conntrack: None,
            },
            metrics.clone(),
        );
        Proxy {
            ipvs,
            addrs,
            fw,
            syncer,
            metrics,
        }
    }

    /// The kernel, ordered so two kernels compare equal when they hold the
    /// same table.
    fn kernel(&self) -> (Vec<(VirtualServer, Vec<RealServer>)>, BTreeSet<IpAddr>) {
        let mut t = self.ipvs.snapshot();
        for (_, rs) in &mut t {
            rs.sort_by_key(|r| r.key());
        }
        t.sort_by_key(|(vs, _)| vs.key());
        (t, self.addrs.snapshot())
    }
}

/// The caches: what the reflector stores would hold.
#[derive(Default)]
struct World {
    services: BTreeMap<ObjectKey, Arc<Service>>,
    slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    rv: u64,
}

impl World {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn all(&self) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
        (
            self.services.values().cloned().collect(),
            self.slices.values().cloned().collect(),
        )
    }

    /// What the engine reads from the stores for the dirty Services.
    fn inputs(&self, keys: &BTreeSet<ObjectKey>) -> Vec<ServiceInputs> {
        keys.iter()
            .map(|k| ServiceInputs {
                key: k.clone(),
                service: self.services.get(k).cloned(),
                slices: self
                    .slices
                    .values()
                    .filter(|s| ObjectKey::service_of(s).as_ref() == Some(k))
                    .cloned()
                    .collect(),
            })
            .collect()
    }

    fn put_service(&mut self, t: &mut ChangeTracker, mut v: Value) -> ObjectKey {
        v["metadata"]["resourceVersion"] = json!(self.next_rv());
        let s: Service = serde_json::from_value(v).unwrap();
        let k = ObjectKey::of(&s.metadata);
        self.services.insert(k.clone(), Arc::new(s));
        t.service_changed(k.clone());
        k
    }

    fn delete_service(&mut self, t: &mut ChangeTracker, k: &ObjectKey) {
        self.services.remove(k);
        t.service_changed(k.clone());
    }

    fn put_slice(&mut self, t: &mut ChangeTracker, mut v: Value) {
        v["metadata"]["resourceVersion"] = json!(self.next_rv());
        let s: EndpointSlice = serde_json::from_value(v).unwrap();
        let k = ObjectKey::of(&s.metadata);
        t.slice_applied(k.clone(), ObjectKey::service_of(&s));
        self.slices.insert(k, Arc::new(s));
    }

    fn delete_slice(&mut self, t: &mut ChangeTracker, k: &ObjectKey) {
        self.slices.remove(k);
        t.slice_deleted(k);
    }
}

fn pick<'a, T>(xs: &'a [T], rng: &mut fastrand::Rng) -> &'a T {
    &xs[rng.usize(..xs.len())]
}

/// A random Service: small address pools so ClusterIPs, external IPs and
/// NodePorts clash between Services and addresses are shared.
fn random_service(rng: &mut fastrand::Rng, ns: &str, name: &str) -> Value {
    let ty = *pick(&["ClusterIP", "NodePort", "LoadBalancer"], rng);
    let cluster_ip = format!("10.96.0.{}", rng.u8(1..=6));
    let mut ports = Vec::new();
    for (pname, port, proto) in [
        ("http", 80, "TCP"),
        ("dns", 53, "UDP"),
        ("https", 443, "TCP"),
    ] {
        if rng.bool() {
            ports.push(json!({"name": pname, "port": port, "protocol": proto,
                              "nodePort": 30000 + rng.u16(0..4)}));
        }
    }
    let external: Vec<String> = ["192.0.2.1", "192.0.2.2"]
        .iter()
        .filter(|_| rng.u8(0..3) == 0)
        .map(|s| s.to_string())
        .collect();
    let mut v = json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": ty, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": ports, "externalIPs": external,
                 "externalTrafficPolicy": pick(&["Cluster", "Local"], rng),
                 "sessionAffinity": pick(&["None", "ClientIP"], rng)}
    });
    if ty == "LoadBalancer" {
        v["status"] = json!({"loadBalancer": {"ingress": [
            {"ip": pick(&["198.51.100.1", "198.51.100.2"], rng)}]}});
        // Now and then source ranges: the nftables interval set a
        // changed-only sync leaves to a whole-table render.
        if rng.u8(0..4) == 0 {
            v["spec"]["loadBalancerSourceRanges"] =
                json!([pick(&["203.0.113.0/24", "203.0.113.128/25"], rng)]);
        }
    }
    v
}

fn random_slice(rng: &mut fastrand::Rng, ns: &str, name: &str, svc: &str) -> Value {
    let eps: Vec<Value> = (0..rng.usize(0..4))
        .map(|_| {
            json!({"addresses": [format!("10.244.0.{}", rng.u8(1..=6))],
                   "nodeName": pick(&[NODE, "cp2"], rng),
                   "conditions": {"ready": rng.u8(0..4) != 0, "serving": true,
                                  "terminating": rng.u8(0..4) == 0}})
        })
        .collect();
    json!({"metadata": {"name": name, "namespace": ns,
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                     {"name": "dns", "port": 5353, "protocol": "UDP"},
                     {"name": "https", "port": 8443, "protocol": "TCP"}],
           "endpoints": eps})
}

/// One random change to the caches, recorded in the tracker.
fn random_change(rng: &mut fastrand::Rng, w: &mut World, t: &mut ChangeTracker) {
    let ns = *pick(&NS, rng);
    let name = *pick(&NAMES, rng);
    let key = ObjectKey::new(ns, name);
    match rng.u8(0..10) {
        0..=2 => {
            w.put_service(t, random_service(rng, ns, name));
        }
        3 => w.delete_service(t, &key),
        4..=7 => {
            // Slices are named after a Service but may be relabelled to
            // another (the label is what counts).
            let slice = format!("{name}-{}", rng.u8(0..2));
            let owner = if rng.u8(0..5) == 0 {
                *pick(&NAMES, rng)
            } else {
                name
            };
            w.put_slice(t, random_slice(rng, ns, &slice, owner));
        }
        _ => {
            let slice = ObjectKey::new(ns, &format!("{name}-{}", rng.u8(0..2)));
            w.delete_slice(t, &slice);
        }
    }
}

fn desired_params<'a>(node_ips: &'a [IpAddr]) -> DesiredParams<'a> {
    DesiredParams {
        node_name: NODE,
        node_addresses: node_ips,
        node_port_addresses: &[],
        node_port_primary: false,
        primary_ips: &[],
        scheduler: "rr",
        node_zone: None,
    }
}

fn ok(o: &SyncOutcome) {
    assert_eq!(o.failed, 0, "{:?}", o.first_error);
    assert!(!o.full_required);
}

#[test]
fn changed_only_syncs_equal_a_full_sync_from_scratch() {
    // Coverage of the random walk, checked at the end so the test cannot
    // pass vacuously.
    let (mut changed_syncs_with_changes, mut drains, mut most_vs, mut clashes) = (0, 0, 0, 0);
    let (mut nft_element_syncs, mut nft_renders_changed_only) = (0, 0);
    for seed in 0..40u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut world = World::default();
        let mut tracker = ChangeTracker::default();
        let mut node_addr = "192.168.1.10";
        let mut n = node(node_addr);
        let mut inc = Proxy::new();
        let mut cache = DesiredCache::default();
        let t0 = Instant::now();
        let mut now = t0;

        // The engine's first sync is always a full one.
        let (sv, sl) = world.all();
        ok(&inc.syncer.sync(&sv, &sl, Some(&n), now));
        let node_ips = desired::node_addresses(&n);
        cache.compute(&sv, &sl, &desired_params(&node_ips));

        for step in 0..60 {
            let ctx = format!("seed {seed} step {step}");
            for _ in 0..rng.usize(1..=3) {
                random_change(&mut rng, &mut world, &mut tracker);
            }
            // A node address change now and then: every NodePort moves,
            // which only a full sync may do.
            let node_moved = rng.u8(0..25) == 0;
            if node_moved {
                node_addr = if node_addr == "192.168.1.10" {
                    "192.168.1.11"
                } else {
                    "192.168.1.10"
                };
                n = node(node_addr);
            }
            now += Duration::from_millis(100);
            let dirty = tracker.take();
            let (sv, sl) = world.all();
            let node_ips = desired::node_addresses(&n);
            let inputs = world.inputs(&dirty.services);

            // The kept table, patched, equals the table from scratch.
            let p = desired_params(&node_ips);
            if cache.compute_changed(&inputs, &p).is_none() {
                assert!(node_moved, "{ctx}: params changed without a node change");
                cache.compute(&sv, &sl, &p);
            }
            assert_eq!(*cache.table(), desired::compute(&sv, &sl, &p), "{ctx}");

            assert_eq!(inc.syncer.wants_full(Some(&n), now), node_moved, "{ctx}");
            let o = inc.syncer.sync_changed(&inputs, Some(&n), now);
            if node_moved {
                assert!(o.full_required, "{ctx}");
                ok(&inc.syncer.sync(&sv, &sl, Some(&n), now));
            } else {
                ok(&o);
                assert!(!o.full && !o.all_services, "{ctx}: {o:?}");
                changed_syncs_with_changes += usize::from(o.changes > 0);
                drains += o.draining;
                nft_element_syncs += usize::from(o.nft_element_changes > 0);
                nft_renders_changed_only += usize::from(o.nft_rendered);
            }
            most_vs = most_vs.max(o.virtual_servers);
            let claimed: usize = world
                .services
                .values()
                .map(|s| {
                    s.spec
                        .as_ref()
                        .and_then(|s| s.external_ips.as_ref())
                        .map_or(0, Vec::len)
                })
                .sum();
            clashes += usize::from(claimed > 2);
            // Drained real servers without connections go at the next
            // sync, whatever changed; nothing else may change then.
            if inc.syncer.wants_full(Some(&n), now) {
                panic!("{ctx}: a full sync became due");
            }
            let settle = inc.syncer.sync_changed(&[], Some(&n), now);
            ok(&settle);
            assert_eq!(settle.draining, 0, "{ctx}");

            let mut fresh = Proxy::new();
            ok(&fresh.syncer.sync(&sv, &sl, Some(&n), now));
            assert_eq!(inc.kernel(), fresh.kernel(), "{ctx}");
            // nftables: element changes left the sets as a fresh render.
            assert_eq!(inc.fw.sets(), fresh.fw.sets(), "{ctx}");
        }

        // Drift check: a full sync with a kernel listing finds nothing to do.
        now += Duration::from_secs(31);
        assert!(inc.syncer.wants_full(Some(&n), now));
        let (sv, sl) = world.all();
        let o = inc.syncer.sync(&sv, &sl, Some(&n), now);
        ok(&o);
        assert!(o.full && o.all_services);
        assert_eq!(
            o.changes, 0,
            "seed {seed}: full sync after changed-only ones"
        );
    }
    assert!(
        changed_syncs_with_changes > 1000,
        "{changed_syncs_with_changes}"
    );
    assert!(drains > 100, "{drains}");
    assert!(most_vs > 20, "{most_vs}");
    assert!(clashes > 100, "{clashes}");
    // Changed-only syncs changed nftables by elements; a render among them
    // is a source-range change (interval set).
    assert!(nft_element_syncs > 1000, "{nft_element_syncs}");
    assert!(
        nft_renders_changed_only > 10 && nft_renders_changed_only * 5 < nft_element_syncs,
        "{nft_renders_changed_only} renders, {nft_element_syncs} element syncs"
    );
}

fn key(a: &str, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        addr: a.parse().unwrap(),
        port,
        protocol,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Real servers of one virtual server: (addr:port, weight).
fn dests(p: &Proxy, k: ServiceKey) -> Option<Vec<(String, u32)>> {
    p.ipvs
        .snapshot()
        .into_iter()
        .find(|(vs, _)| vs.key() == k)
        .map(|(_, rs)| {
            let mut v: Vec<_> = rs.iter().map(|r| (r.key().to_string(), r.weight)).collect();
            v.sort();
            v
        })
}

fn svc(name: &str, cluster_ip: &str, extra: Value) -> Value {
    let mut v = json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
    if let Value::Object(m) = extra {
        for (k, x) in m {
            v["spec"][k] = x;
        }
    }
    v
}

fn eps(svc: &str, name: &str, addrs: &[&str]) -> Value {
    let list: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "nodeName": "cp2", "conditions": {"ready": true}}))
        .collect();
    json!({"metadata": {"name": name, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                     {"name": "dns", "port": 5353, "protocol": "UDP"}],
           "endpoints": list})
}

/// Applies what the tracker collected as one changed-only sync.
fn sync_changed(
    p: &mut Proxy,
    w: &World,
    t: &mut ChangeTracker,
    n: &Node,
    now: Instant,
) -> SyncOutcome {
    let d = t.take();
    let o = p.syncer.sync_changed(&w.inputs(&d.services), Some(n), now);
    ok(&o);
    assert!(!o.full && !o.all_services, "{o:?}");
    o
}

fn start(w: &World, n: &Node, now: Instant) -> Proxy {
    let mut p = Proxy::new();
    let (sv, sl) = w.all();
    ok(&p.syncer.sync(&sv, &sl, Some(n), now));
    p
}

#[test]
fn shared_external_ip_stays_bound_until_its_last_service_goes() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    let ext = json!({"externalIPs": ["192.0.2.10"]});
    let a = w.put_service(&mut t, svc("a", "10.96.0.1", ext.clone()));
    let mut b = svc("b", "10.96.0.2", ext);
    b["spec"]["ports"][0]["port"] = json!(81);
    let b = w.put_service(&mut t, b);
    w.put_slice(&mut t, eps("a", "a-1", &["10.244.0.1"]));
    w.put_slice(&mut t, eps("b", "b-1", &["10.244.0.2"]));
    let now = Instant::now();
    let mut p = start(&w, &n, now);
    t.take();
    assert!(p.addrs.snapshot().contains(&ip("192.0.2.10")));

    w.delete_service(&mut t, &a);
    sync_changed(&mut p, &w, &mut t, &n, now);
    let bound = p.addrs.snapshot();
    assert!(bound.contains(&ip("192.0.2.10")), "{bound:?}");
    assert!(!bound.contains(&ip("10.96.0.1")), "{bound:?}");
    assert_eq!(dests(&p, key("192.0.2.10", 80, Protocol::Tcp)), None);
    assert_eq!(
        dests(&p, key("192.0.2.10", 81, Protocol::Tcp)),
        Some(vec![("10.244.0.2:8080".into(), 1)])
    );

    w.delete_service(&mut t, &b);
    sync_changed(&mut p, &w, &mut t, &n, now);
    assert!(p.addrs.snapshot().is_empty(), "{:?}", p.addrs.snapshot());
    assert!(p.ipvs.snapshot().is_empty());
}

#[test]
fn clashing_virtual_server_passes_to_the_next_service_when_its_owner_goes() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    let ext = json!({"externalIPs": ["192.0.2.10"]});
    let a = w.put_service(&mut t, svc("a", "10.96.0.1", ext.clone()));
    w.put_service(&mut t, svc("b", "10.96.0.2", ext));
    w.put_slice(&mut t, eps("a", "a-1", &["10.244.0.1"]));
    w.put_slice(&mut t, eps("b", "b-1", &["10.244.0.2"]));
    let now = Instant::now();
    let mut p = start(&w, &n, now);
    t.take();
    let k = key("192.0.2.10", 80, Protocol::Tcp);
    // First in (namespace, name) order wins the shared address and port.
    assert_eq!(dests(&p, k), Some(vec![("10.244.0.1:8080".into(), 1)]));

    w.delete_service(&mut t, &a);
    sync_changed(&mut p, &w, &mut t, &n, now);
    // a's endpoint drains (TCP) beside b's, then goes.
    assert_eq!(
        dests(&p, k),
        Some(vec![
            ("10.244.0.1:8080".into(), 0),
            ("10.244.0.2:8080".into(), 1)
        ])
    );
    sync_changed(&mut p, &w, &mut t, &n, now);
    assert_eq!(dests(&p, k), Some(vec![("10.244.0.2:8080".into(), 1)]));
}

#[test]
fn node_port_follows_its_service_in_changed_only_syncs() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    let mut v = svc("np", "10.96.0.5", json!({"type": "NodePort"}));
    v["spec"]["ports"][0]["nodePort"] = json!(30080);
    let k = w.put_service(&mut t, v.clone());
    w.put_slice(&mut t, eps("np", "np-1", &["10.244.0.1"]));
    let now = Instant::now();
    let mut p = start(&w, &n, now);
    t.take();
    assert!(dests(&p, key("192.168.1.10", 30080, Protocol::Tcp)).is_some());

    // The NodePort number changes: the old one goes, the new one comes;
    // node addresses are never bound on kube-ipvs0.
    v["spec"]["ports"][0]["nodePort"] = json!(30081);
    w.put_service(&mut t, v);
    sync_changed(&mut p, &w, &mut t, &n, now);
    assert_eq!(dests(&p, key("192.168.1.10", 30080, Protocol::Tcp)), None);
    assert_eq!(
        dests(&p, key("192.168.1.10", 30081, Protocol::Tcp)),
        Some(vec![("10.244.0.1:8080".into(), 1)])
    );
    assert_eq!(p.addrs.snapshot(), BTreeSet::from([ip("10.96.0.5")]));

    w.delete_service(&mut t, &k);
    sync_changed(&mut p, &w, &mut t, &n, now);
    assert!(p.ipvs.snapshot().is_empty(), "{:?}", p.ipvs.snapshot());
    assert!(p.addrs.snapshot().is_empty());
}

#[test]
fn removed_endpoint_drains_across_changed_only_syncs() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    let mut v = svc("web", "10.96.0.7", json!({}));
    v["spec"]["ports"] = json!([{"name": "http", "port": 80, "protocol": "TCP"},
                                {"name": "dns", "port": 53, "protocol": "UDP"}]);
    w.put_service(&mut t, v);
    w.put_service(&mut t, svc("other", "10.96.0.8", json!({})));
    w.put_slice(&mut t, eps("web", "web-1", &["10.244.0.1", "10.244.0.2"]));
    let t0 = Instant::now();
    let mut p = start(&w, &n, t0);
    t.take();
    let tcp = key("10.96.0.7", 80, Protocol::Tcp);
    let udp = key("10.96.0.7", 53, Protocol::Udp);
    let gone = DestKey {
        addr: ip("10.244.0.2"),
        port: 8080,
    };
    assert!(p.ipvs.set_conns(&tcp, &gone, 2, 1));

    w.put_slice(&mut t, eps("web", "web-1", &["10.244.0.1"]));
    let o = sync_changed(&mut p, &w, &mut t, &n, t0 + Duration::from_secs(1));
    assert_eq!(o.draining, 1);
    assert!(o.recheck_in.is_some());
    assert_eq!(
        dests(&p, tcp),
        Some(vec![
            ("10.244.0.1:8080".into(), 1),
            ("10.244.0.2:8080".into(), 0)
        ])
    );
    // UDP has no connections to wait for.
    assert_eq!(dests(&p, udp), Some(vec![("10.244.0.1:5353".into(), 1)]));

    // Nothing changed, connections still open: still draining. Another
    // Service's change does not end the drain either.
    let o = sync_changed(&mut p, &w, &mut t, &n, t0 + Duration::from_secs(2));
    assert_eq!((o.changes, o.draining), (0, 1));
    w.put_slice(&mut t, eps("other", "other-1", &["10.244.0.9"]));
    let o = sync_changed(&mut p, &w, &mut t, &n, t0 + Duration::from_secs(3));
    assert_eq!((o.changes, o.draining), (1, 1));

    // Connections gone: the next sync deletes it.
    assert!(p.ipvs.set_conns(&tcp, &gone, 0, 0));
    let o = sync_changed(&mut p, &w, &mut t, &n, t0 + Duration::from_secs(4));
    assert_eq!((o.changes, o.draining), (1, 0));
    assert_eq!(dests(&p, tcp), Some(vec![("10.244.0.1:8080".into(), 1)]));
}

#[test]
fn change_counters_count_only_what_changed() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    for i in 0..20 {
        let name = format!("s{i}");
        w.put_service(&mut t, svc(&name, &format!("10.96.1.{i}"), json!({})));
        w.put_slice(&mut t, eps(&name, &format!("{name}-1"), &["10.244.0.1"]));
    }
    let now = Instant::now();
    let mut p = start(&w, &n, now);
    t.take();
    let (svc0, ep0) = (
        p.metrics.service_changes.get(),
        p.metrics.endpoint_changes.get(),
    );
    w.put_slice(&mut t, eps("s3", "s3-1", &["10.244.0.2"]));
    w.delete_slice(&mut t, &ObjectKey::new("default", "s4-1"));
    w.put_service(
        &mut t,
        svc("s5", "10.96.1.5", json!({"sessionAffinity": "ClientIP"})),
    );
    sync_changed(&mut p, &w, &mut t, &n, now);
    assert_eq!(p.metrics.service_changes.get() - svc0, 1);
    assert_eq!(p.metrics.endpoint_changes.get() - ep0, 2);
    // A full sync afterwards agrees that nothing else changed.
    let (sv, sl) = w.all();
    ok(&p.syncer.sync(&sv, &sl, Some(&n), now));
    assert_eq!(p.metrics.service_changes.get() - svc0, 1);
    assert_eq!(p.metrics.endpoint_changes.get() - ep0, 2);
}

#[test]
fn add_that_finds_the_virtual_server_there_updates_it() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    let now = Instant::now();
    let mut p = start(&w, &n, now);
    // Someone creates our next virtual server (other scheduler, a real
    // server of theirs) after the listing: the add gets EEXIST.
    let k = key("10.96.0.9", 80, Protocol::Tcp);
    let theirs = RealServer::new(ip("10.244.0.99"), 8080, 3);
    p.ipvs.insert_foreign(
        VirtualServer::new(k.addr, 80, Protocol::Tcp, "wrr"),
        vec![theirs.clone()],
    );
    w.put_service(&mut t, svc("late", "10.96.0.9", json!({})));
    w.put_slice(&mut t, eps("late", "late-1", &["10.244.0.1"]));
    sync_changed(&mut p, &w, &mut t, &n, now);
    let (vs, rs) = p
        .ipvs
        .snapshot()
        .into_iter()
        .find(|(vs, _)| vs.key() == k)
        .unwrap();
    assert_eq!(vs.scheduler, "rr");
    // Their real server is only seen (and drained) after a listing.
    assert_eq!(rs.len(), 2);
}

#[test]
fn failed_service_add_fails_its_real_servers_and_forces_a_full_sync() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    let now = Instant::now();
    let mut p = start(&w, &n, now);
    w.put_service(&mut t, svc("web", "10.96.0.9", json!({})));
    w.put_slice(&mut t, eps("web", "web-1", &["10.244.0.1", "10.244.0.2"]));
    p.ipvs.fail_next(libc::ENOMEM);
    let d = t.take();
    let o = p.syncer.sync_changed(&w.inputs(&d.services), Some(&n), now);
    // The add and both real servers behind it fail, each reported.
    assert_eq!((o.changes, o.failed), (4, 3), "{o:?}");
    assert!(o.first_error.is_some());
    assert!(p.syncer.wants_full(Some(&n), now));
    assert!(p.syncer.sync_changed(&[], Some(&n), now).full_required);
    let (sv, sl) = w.all();
    let o = p.syncer.sync(&sv, &sl, Some(&n), now);
    ok(&o);
    assert!(o.full && o.all_services);
    assert_eq!(
        dests(&p, key("10.96.0.9", 80, Protocol::Tcp))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn nft_ruleset_is_rendered_only_when_the_table_changed() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    w.put_service(&mut t, svc("web", "10.96.0.7", json!({})));
    w.put_slice(&mut t, eps("web", "web-1", &["10.244.0.1", "10.244.0.2"]));
    t.take();
    let fw = FakeFirewall::default();
    let ipvs = FakeIpvs::new();
    let mut syncer = Syncer::new(
        settings(),
        IpvsDataPlane {
            ipvs: Arc::new(ipvs.clone()),
            addresses: Arc::new(FakeAddresses::default()),
            firewall: Some(Arc::new(fw.clone())),
            sysctls: Arc::new(FakeSysctls::default()),
            conntrack: None,
        },
        ProxyMetrics::new(),
    );
    let applied = || fw.applied.lock().unwrap().len();
    let t0 = Instant::now();
    let (sv, sl) = w.all();
    let o = syncer.sync(&sv, &sl, Some(&n), t0);
    ok(&o);
    assert!(o.nft_rendered);
    assert_eq!(applied(), 1);
    // An endpoint goes: only its hairpin element is deleted, no render.
    let k = key("10.96.0.7", 80, Protocol::Tcp);
    let busy = DestKey {
        addr: ip("10.244.0.2"),
        port: 8080,
    };
    assert!(ipvs.set_conns(&k, &busy, 1, 0));
    let hairpin = |a: &str| format!(r#"{{"concat":["{a}","tcp",8080,"{a}"]}}"#);
    assert!(fw.sets()["hairpin4"].contains(&hairpin("10.244.0.2")));
    w.put_slice(&mut t, eps("web", "web-1", &["10.244.0.1"]));
    let d = t.take();
    let o = syncer.sync_changed(&w.inputs(&d.services), Some(&n), t0);
    ok(&o);
    assert!(!o.nft_rendered && o.nft_element_changes == 1, "{o:?}");
    assert_eq!(applied(), 2);
    let last = fw.applied.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last,
        json!({"nftables": [{"delete": {"element": {"family": "inet", "table": "lbd-proxy",
            "name": "hairpin4", "elem": [{"concat": ["10.244.0.2", "tcp", 8080, "10.244.0.2"]}]}}}]})
    );
    assert_eq!(
        fw.sets()["hairpin4"],
        [hairpin("10.244.0.1")].into_iter().collect()
    );
    // Drain rechecks and an unchanged full sync leave the table as it is.
    let o = syncer.sync_changed(&[], Some(&n), t0);
    ok(&o);
    assert!(!o.nft_rendered && o.draining == 1, "{o:?}");
    let (sv, sl) = w.all();
    let t1 = t0 + Duration::from_secs(31);
    let o = syncer.sync(&sv, &sl, Some(&n), t1);
    ok(&o);
    assert!(o.full && !o.nft_rendered, "{o:?}");
    assert_eq!(applied(), 2);
    // loadBalancerSourceRanges live in an interval set: a change there is
    // left to a whole-table render, and the table equals a fresh render.
    let mut lb = svc(
        "lb",
        "10.96.0.8",
        json!({"type": "LoadBalancer", "loadBalancerSourceRanges": ["192.0.2.0/24"]}),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}});
    w.put_service(&mut t, lb);
    let d = t.take();
    let o = syncer.sync_changed(&w.inputs(&d.services), Some(&n), t1);
    ok(&o);
    assert!(o.nft_rendered && o.nft_element_changes == 0, "{o:?}");
    assert_eq!(applied(), 3);
    let fresh = FakeFirewall::default();
    let (sv, sl) = w.all();
    let mut from_scratch = Syncer::new(
        settings(),
        IpvsDataPlane {
            ipvs: Arc::new(FakeIpvs::new()),
            addresses: Arc::new(FakeAddresses::default()),
            firewall: Some(Arc::new(fresh.clone())),
            sysctls: Arc::new(FakeSysctls::default()),
            conntrack: None,
        },
        ProxyMetrics::new(),
    );
    ok(&from_scratch.sync(&sv, &sl, Some(&n), t1));
    assert_eq!(fw.sets(), fresh.sets());
}

/// NodePorts go on the host's addresses as the data plane lists them
/// (kube-proxy ipvs `NodeIPs`), not only the Node object's; the listing is
/// taken again at each full sync (a VIP that arrived, a new interface
/// address) and kept through changed-only ones.
#[test]
fn node_ports_follow_the_host_addresses_at_full_syncs() {
    let (mut w, mut t) = (World::default(), ChangeTracker::default());
    let n = node("192.168.1.10");
    let mut v = svc("np", "10.96.0.5", json!({"type": "NodePort"}));
    v["spec"]["ports"][0]["nodePort"] = json!(30080);
    w.put_service(&mut t, v);
    w.put_slice(&mut t, eps("np", "np-1", &["10.244.0.1"]));
    t.take();
    let mut p = Proxy::new();
    p.addrs.set_host_addresses(Some(vec![
        ip("127.0.0.1"),
        ip("192.168.1.10"),
        ip("172.16.5.1"),
        ip("fe80::1"),
    ]));
    let node_ports = |p: &Proxy| -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = p
            .ipvs
            .snapshot()
            .into_iter()
            .map(|(vs, _)| vs.key())
            .filter(|k| k.port == 30080)
            .map(|k| k.addr)
            .collect();
        v.sort();
        v
    };
    let t0 = Instant::now();
    let (sv, sl) = w.all();
    ok(&p.syncer.sync(&sv, &sl, Some(&n), t0));
    // The secondary address too; loopback and link-local not.
    assert_eq!(node_ports(&p), vec![ip("172.16.5.1"), ip("192.168.1.10")]);
    // A new address (the VIP arriving): a changed-only sync keeps the
    // listing it has, the next full sync takes it.
    p.addrs.set_host_addresses(Some(vec![
        ip("192.168.1.10"),
        ip("172.16.5.1"),
        ip("192.168.1.100"),
    ]));
    w.put_slice(&mut t, eps("np", "np-1", &["10.244.0.1", "10.244.0.2"]));
    let d = t.take();
    ok(&p.syncer.sync_changed(&w.inputs(&d.services), Some(&n), t0));
    assert_eq!(node_ports(&p), vec![ip("172.16.5.1"), ip("192.168.1.10")]);
    let (sv, sl) = w.all();
    let t1 = t0 + Duration::from_secs(31);
    ok(&p.syncer.sync(&sv, &sl, Some(&n), t1));
    assert_eq!(
        node_ports(&p),
        vec![ip("172.16.5.1"), ip("192.168.1.10"), ip("192.168.1.100")]
    );
    assert_eq!(
        dests(&p, key("192.168.1.100", 30080, Protocol::Tcp)).map(|d| d.len()),
        Some(2)
    );
    // Where the data plane cannot list them: the Node object's addresses.
    p.addrs.set_host_addresses(None);
    let (sv, sl) = w.all();
    ok(&p
        .syncer
        .sync(&sv, &sl, Some(&n), t1 + Duration::from_secs(31)));
    assert_eq!(node_ports(&p), vec![ip("192.168.1.10")]);
}
