//! Balancer metrics, read from the sessions' atomic counters at scrape time
//! so the data path never touches a metrics lock.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::data_threads::{started_data_threads, DataThread};
use super::listener::{Backend, Listener};

/// The listeners currently running (including draining ones).
#[derive(Debug, Default, Clone)]
pub struct TcplbCollector {
    pub listeners: Arc<ArcSwap<Vec<Arc<Listener>>>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("bind", &self.bind)
            .finish()
    }
}

/// One metric family from (labels, value) pairs read at scrape time.
fn encode_series<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        let m = family.encode_family(&labels)?;
        if matches!(kind, MetricType::Gauge) {
            ConstGauge::new(v as i64).encode(m)?;
        } else {
            ConstCounter::new(v).encode(m)?;
        }
    }
    Ok(())
}

type ListenerGetter = fn(&Listener) -> u64;
type BackendGetter = fn(&Backend) -> u64;

/// Name, help, type and value of each per-listener metric.
const PER_LISTENER: [(&str, &str, MetricType, ListenerGetter); 8] = [
    (
        "lbd_connections_active",
        "Sessions open now",
        MetricType::Gauge,
        |l| l.active.load(Relaxed),
    ),
    (
        "lbd_connections",
        "Connections accepted",
        MetricType::Counter,
        |l| l.total.load(Relaxed),
    ),
    (
        "lbd_connections_refused_no_backend",
        "Connections closed at once because no backend was healthy",
        MetricType::Counter,
        |l| l.refused_no_backend.load(Relaxed),
    ),
    (
        "lbd_connections_failed",
        "Connections closed because every backend tried failed to connect",
        MetricType::Counter,
        |l| l.connect_failures.load(Relaxed),
    ),
    (
        "lbd_received_bytes",
        "Bytes from clients to backends",
        MetricType::Counter,
        |l| l.bytes_in.load(Relaxed),
    ),
    (
        "lbd_sent_bytes",
        "Bytes from backends to clients",
        MetricType::Counter,
        |l| l.bytes_out.load(Relaxed),
    ),
    (
        "lbd_connect_hedges",
        "Connects that got a second backend beside one whose SYN went unanswered",
        MetricType::Counter,
        |l| l.hedges.load(Relaxed),
    ),
    (
        "lbd_connect_hedge_wins",
        "Hedged connects the second backend won",
        MetricType::Counter,
        |l| l.hedge_wins.load(Relaxed),
    ),
];

/// Name, help, type and value of each per-backend metric.
const PER_BACKEND: [(&str, &str, MetricType, BackendGetter); 6] = [
    (
        "lbd_backend_connections_active",
        "Sessions open now to this backend",
        MetricType::Gauge,
        |b| b.active.load(Relaxed),
    ),
    (
        "lbd_backend_connections",
        "Sessions made to this backend",
        MetricType::Counter,
        |b| b.total.load(Relaxed),
    ),
    (
        "lbd_backend_connect_errors",
        "Failed or timed-out connects to this backend",
        MetricType::Counter,
        |b| b.connect_errors.load(Relaxed),
    ),
    (
        "lbd_backend_received_bytes",
        "Bytes from clients to this backend",
        MetricType::Counter,
        |b| b.bytes_in.load(Relaxed),
    ),
    (
        "lbd_backend_sent_bytes",
        "Bytes from this backend to clients",
        MetricType::Counter,
        |b| b.bytes_out.load(Relaxed),
    ),
    (
        "lbd_backend_drained",
        "1 while the operator has drained the backend (lbd backend drain)",
        MetricType::Gauge,
        |b| u64::from(b.drained.load(Relaxed)),
    ),
];

type DataThreadGetter = fn(&DataThread) -> u64;

/// Per data thread (all listeners together): how the sessions spread.
const PER_DATA_THREAD: [(&str, &str, MetricType, DataThreadGetter); 2] = [
    (
        "lbd_data_thread_connections_active",
        "Sessions open now on this data thread",
        MetricType::Gauge,
        |t| t.active.load(Relaxed),
    ),
    (
        "lbd_data_thread_connections",
        "Sessions that ran on this data thread (accepted there or handed to it)",
        MetricType::Counter,
        |t| t.accepted.load(Relaxed),
    ),
];

impl Collector for TcplbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listeners = self.listeners.load_full();
        for (name, help, kind, get) in PER_LISTENER {
            let series = listeners
                .iter()
                .map(|l| ([("listener", l.name.as_str())], get(l)));
            encode_series(&mut encoder, (name, help, kind), series)?;
        }
        for (name, help, kind, get) in PER_BACKEND {
            let series: Vec<_> = listeners
                .iter()
                .flat_map(|l| {
                    l.backends()
                        .iter()
                        .map(|b| {
                            let labels = [
                                ("listener", l.name.clone()),
                                ("backend", b.addr.to_string()),
                            ];
                            (labels, get(b))
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            encode_series(&mut encoder, (name, help, kind), series)?;
        }
        for (name, help, kind, get) in PER_DATA_THREAD {
            let series = started_data_threads()
                .iter()
                .map(|t| ([("thread", t.index.to_string())], get(t)));
            encode_series(&mut encoder, (name, help, kind), series)?;
        }
        Ok(())
    }
}
