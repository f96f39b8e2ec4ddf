//! The proxy's metrics: kube-proxy's names (so existing dashboards and
//! alerts keep working on `metrics_bind`) plus lbd's own `lbd_proxy_*`.
//!
//! Handles are cheap clones sharing the same atomics, so one set can be
//! registered both in the proxy's kube-proxy-compatible registry and in
//! lbd's admin registry.

use std::sync::atomic::AtomicU64;

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::kernel::KernelOp;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// add_service, update_service, delete_service, add_dest, ...
    pub op: KernelOp,
}

impl EncodeLabelValue for KernelOp {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// kubeproxy_sync_proxy_rules_duration_seconds
    pub sync_duration: Histogram,
    /// kubeproxy_sync_proxy_rules_last_timestamp_seconds
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
    /// kubeproxy_network_programming_duration_seconds: from the
    /// EndpointSlice's last-change-trigger-time to programmed.
    pub network_programming: Histogram,
    /// kubeproxy_sync_proxy_rules_endpoint_changes_total
    pub endpoint_changes: Counter,
    /// kubeproxy_sync_proxy_rules_service_changes_total
    pub service_changes: Counter,
    /// kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds
    pub last_queued_timestamp: Gauge<f64, AtomicU64>,
    pub syncs: Counter,
    pub sync_errors: Counter,
    pub kernel_changes: Family<OpLabels, Counter>,
    pub kernel_errors: Family<OpLabels, Counter>,
    pub virtual_servers: Gauge,
    pub real_servers: Gauge,
    pub draining_real_servers: Gauge,
    pub services: Gauge,
    pub synced: Gauge,
    pub nft_applies: Counter,
    pub nft_errors: Counter,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let m = ProxyMetrics {
            // kube-proxy: ExponentialBuckets(0.001, 2, 15)
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_sync_timestamp: Gauge::default(),
            // kube-proxy: MergeBuckets(LinearBuckets(0.25, 0.25, 2),
            // LinearBuckets(1, 1, 59), LinearBuckets(60, 5, 12),
            // LinearBuckets(120, 30, 7))
            network_programming: Histogram::new(network_programming_buckets()),
            endpoint_changes: Counter::default(),
            service_changes: Counter::default(),
            last_queued_timestamp: Gauge::default(),
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            kernel_changes: Family::default(),
            kernel_errors: Family::default(),
            virtual_servers: Gauge::default(),
            real_servers: Gauge::default(),
            draining_real_servers: Gauge::default(),
            services: Gauge::default(),
            synced: Gauge::default(),
            nft_applies: Counter::default(),
            nft_errors: Counter::default(),
        };
        // Every op is exported from the start, at 0.
        for op in KernelOp::ALL.into_iter().filter(|op| op.is_change()) {
            let _ = m.kernel_changes.get_or_create(&OpLabels { op });
        }
        for op in KernelOp::ALL {
            let _ = m.kernel_errors.get_or_create(&OpLabels { op });
        }
        m
    }

    /// The names kube-proxy serves on its metrics port.
    pub fn register_kube_proxy(&self, r: &mut Registry) {
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.last_sync_timestamp.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.network_programming.clone(),
        );
        // prometheus-client appends `_total` to counters.
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            self.endpoint_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            self.service_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            self.last_queued_timestamp.clone(),
        );
    }

    /// lbd's own proxy metrics (`lbd_proxy_*`).
    pub fn register_lbd(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("lbd_proxy");
        r.register("syncs", "Syncs run", self.syncs.clone());
        r.register(
            "sync_errors",
            "Syncs that left at least one change failed",
            self.sync_errors.clone(),
        );
        r.register(
            "kernel_changes",
            "IPVS and address changes applied, by operation",
            self.kernel_changes.clone(),
        );
        r.register(
            "kernel_errors",
            "IPVS and address changes that failed, by operation",
            self.kernel_errors.clone(),
        );
        r.register(
            "virtual_servers",
            "Virtual servers lbd wants in IPVS",
            self.virtual_servers.clone(),
        );
        r.register(
            "real_servers",
            "Real servers lbd wants in IPVS",
            self.real_servers.clone(),
        );
        r.register(
            "draining_real_servers",
            "Removed real servers kept at weight 0 until their connections end",
            self.draining_real_servers.clone(),
        );
        r.register(
            "services",
            "Kubernetes Services programmed",
            self.services.clone(),
        );
        r.register(
            "synced",
            "1 once the caches synced and the first sync ran",
            self.synced.clone(),
        );
        r.register(
            "nft_applies",
            "nftables table replacements",
            self.nft_applies.clone(),
        );
        r.register(
            "nft_errors",
            "nftables table replacements that failed",
            self.nft_errors.clone(),
        );
    }
}

fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn kube_proxy_names_are_served() {
        let m = ProxyMetrics::new();
        let mut r = Registry::default();
        m.register_kube_proxy(&mut r);
        m.register_lbd(&mut r);
        m.sync_duration.observe(0.003);
        m.endpoint_changes.inc();
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds 0",
            "kubeproxy_network_programming_duration_seconds_count 0",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
            "lbd_proxy_syncs_total 0",
            "lbd_proxy_real_servers 0",
            "lbd_proxy_kernel_errors_total{op=\"list_services\"} 0",
            "lbd_proxy_kernel_changes_total{op=\"add_dest\"} 0",
        ] {
            assert!(out.contains(name), "{name} missing in:\n{out}");
        }
    }
}
