//! Where the proxy's memory goes at N Services (issue 12's RSS target):
//! live heap bytes, counted by a global allocator, of
//! - the reflector stores: N Services and N EndpointSlices (5 ready
//!   endpoints each, kube_proxy_bench's objects) as the apiserver sends
//!   them (uid, timestamps, defaulted spec, managedFields), parsed and
//!   slimmed as `proxy::kube` keeps them;
//! - the engine after its first full sync against the in-memory kernel
//!   (the desired table, its per-Service cache, the kept kernel view, the
//!   nftables state), the fake kernel's own copy counted apart.
//!
//! `cargo bench --bench proxy_heap` (N = 10000, `LBD_HEAP_SERVICES` to
//! change it); under `cargo test` a 500-Service run checks the figures are
//! sane. Prints one line per figure, in bytes per Service too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use lbd::proxy::driver::Syncer;
use lbd::proxy::engine::EngineSettings;
use lbd::proxy::kernel::{FakeKernel, Firewall, IpvsDataPlane, NftDocument, NftError};
use lbd::proxy::kube::Slim;
use lbd::proxy::metrics::ProxyMetrics;
use lbd::proxy::objects::EndpointSlice;
use serde_json::json;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// A Service as the apiserver answers a list with it.
fn service_json(i: usize) -> String {
    json!({
        "metadata": {
            "name": format!("b{i}"), "namespace": "default",
            "uid": format!("6f1c2a4e-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": "2026-12-06T10:00:00Z",
            "managedFields": [{"manager": "lbd-test", "operation": "Update",
                "apiVersion": "v1", "time": "2026-12-06T10:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:clusterIP": {}, "f:internalTrafficPolicy": {},
                    "f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {
                        ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
                    "f:sessionAffinity": {}, "f:type": {}}}}]
        },
        "spec": {
            "clusterIP": format!("10.96.{}.{}", 10 + i / 250, 1 + i % 250),
            "clusterIPs": [format!("10.96.{}.{}", 10 + i / 250, 1 + i % 250)],
            "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "sessionAffinity": "None", "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    })
    .to_string()
}

/// Its EndpointSlice: 5 ready endpoints on another node.
fn slice_json(i: usize) -> String {
    let endpoints: Vec<_> = (0..5)
        .map(|j| {
            json!({"addresses": [format!("10.{}.{}.{}", 200 + j, i / 250, 1 + i % 250)],
                   "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": "cp2"})
        })
        .collect();
    json!({
        "metadata": {
            "name": format!("b{i}-1"), "namespace": "default",
            "uid": format!("7e2d3b5f-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 200_000 + i), "generation": 1,
            "creationTimestamp": "2026-12-06T10:00:00Z",
            "labels": {"kubernetes.io/service-name": format!("b{i}"),
                       "endpointslice.kubernetes.io/managed-by": "lbd-test"},
            "managedFields": [{"manager": "lbd-test", "operation": "Update",
                "apiVersion": "discovery.k8s.io/v1", "time": "2026-12-06T10:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:addressType": {}, "f:endpoints": {}, "f:ports": {},
                    "f:metadata": {"f:labels": {".": {}, "f:endpointslice.kubernetes.io/managed-by": {},
                        "f:kubernetes.io/service-name": {}}}}}]
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
    .to_string()
}

/// nft gets the document as text: render it, as NftFirewall does, and drop it.
struct DiscardingFirewall;

impl Firewall for DiscardingFirewall {
    fn replace(&self, doc: &NftDocument) -> Result<(), NftError> {
        std::hint::black_box(doc.as_str().len());
        Ok(())
    }
}

/// This process's resident set, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

struct Figures {
    rss_after_sync: f64,
    stores: usize,
    engine: usize,
    kernel: usize,
    peak: usize,
    virtual_servers: usize,
}

/// An object as the reflector store holds it: parsed, slimmed, shared.
fn stored<K: serde::de::DeserializeOwned + Slim>(json: &str) -> Arc<K> {
    let mut obj: K = serde_json::from_str(json).unwrap();
    obj.slim();
    Arc::new(obj)
}

fn measure(n: usize) -> Figures {
    let base = live();
    let services: Vec<Arc<Service>> = (0..n).map(|i| stored(&service_json(i))).collect();
    let slices: Vec<Arc<EndpointSlice>> = (0..n).map(|i| stored(&slice_json(i))).collect();
    let stores = live() - base;

    let kernel = FakeKernel::default();
    let plane = IpvsDataPlane {
        firewall: Some(Arc::new(DiscardingFirewall)),
        conntrack: None,
        ..kernel.plane()
    };
    let settings = EngineSettings {
        node_name: "cp1".into(),
        ..EngineSettings::default()
    };
    PEAK.store(live(), Ordering::Relaxed);
    let before = live();
    let mut syncer = Syncer::new(settings, plane, ProxyMetrics::new());
    let t = Instant::now();
    let out = syncer.sync(&services, &slices, None, t);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let after = live() - before;
    let virtual_servers = syncer.engine().table().virtual_servers.len();
    let rss_after_sync = rss_mib();
    assert!(out.failed == 0, "sync failed: {:?}", out.first_error);
    // What is left once the engine is gone is the fake kernel's copy of
    // the table: the kernel's memory, not lbd's.
    drop(syncer);
    let kernel_bytes = live().saturating_sub(before);
    std::hint::black_box((&services, &slices, &kernel));
    Figures {
        rss_after_sync,
        stores,
        engine: after.saturating_sub(kernel_bytes),
        kernel: kernel_bytes,
        peak,
        virtual_servers,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = match std::env::var("LBD_HEAP_SERVICES") {
        Ok(v) => v.parse().expect("LBD_HEAP_SERVICES: a number"),
        Err(_) if bench => 10_000,
        Err(_) => 500,
    };
    let f = measure(n);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "proxy_heap: {n} Services x 5 endpoints, {} virtual servers",
        f.virtual_servers
    );
    println!(
        "proxy_heap: stores      {:8.1} MiB  {:6} B/Service",
        mib(f.stores),
        f.stores / n
    );
    println!(
        "proxy_heap: engine      {:8.1} MiB  {:6} B/Service",
        mib(f.engine),
        f.engine / n
    );
    println!(
        "proxy_heap: sync peak   {:8.1} MiB  {:6} B/Service (above the stores)",
        mib(f.peak),
        f.peak / n
    );
    println!(
        "proxy_heap: RSS after the sync {:.1} MiB (heap, fake kernel, binary)",
        f.rss_after_sync
    );
    println!(
        "proxy_heap: fake kernel {:8.1} MiB  (not lbd's)",
        mib(f.kernel)
    );
    assert_eq!(f.virtual_servers, n, "one virtual server per Service");
    assert!(f.stores > 0 && f.engine > 0, "nothing counted");
}
