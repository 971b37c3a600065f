//! `/metrics` (Prometheus/OpenMetrics text), `/healthz` and `/readyz`.
//!
//! Agent metrics are plain counters and gauges updated by the sync loop and
//! the sources; the data path's own counters (`lb_stats`, per-CPU) are read
//! from the pinned map at each scrape by [`DatapathCollector`].

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use aya::maps::{MapData, PerCpuArray};
use lb_common::{
    map_names,
    meta::FEATURE_NAMES,
    stats::{STAT_NAMES, TC_STAT_NAMES},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    bpf::{loader::PinLayout, maps::open_pinned},
    model::Protocol,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabels {
    feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub syncs: Counter,
    pub sync_errors: Counter,
    pub sync_duration: Histogram,
    pub services: Gauge,
    pub backends: Gauge,
    pub services_capacity: Gauge,
    pub backends_capacity: Gauge,
    pub rejected: Gauge,
    pub rejections: Counter,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub source_errors: Family<SourceLabels, Counter>,
    pub source_stale: Family<SourceLabels, Gauge>,
    pub source_updates: Family<SourceLabels, Counter>,
    /// Watch event (or file change) to maps, seconds.
    pub update_latency: Histogram,
    features: Family<FeatureLabels, Gauge>,
    pub sockets: SocketMetrics,
    pub ready: AtomicBool,
}

/// What closing the sockets of departed backends did (`crate::sockets`).
#[derive(Debug)]
pub struct SocketMetrics {
    destroyed: Family<ProtocolLabels, Counter>,
    failures: Family<ProtocolLabels, Counter>,
    /// Network namespaces that could not be opened, entered or dumped.
    pub scan_errors: Counter,
    /// One pass over every namespace for the departed backends of a sync.
    pub scan_duration: Histogram,
}

impl SocketMetrics {
    fn new() -> Self {
        let m = Self {
            destroyed: Family::default(),
            failures: Family::default(),
            scan_errors: Counter::default(),
            scan_duration: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
        };
        // Present (at 0) before the first socket is closed.
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let _ = (m.destroyed(protocol), m.failures(protocol));
        }
        m
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "sockets_destroyed",
            "Sockets closed because their backend left the service (sock_diag SOCK_DESTROY)",
            self.destroyed.clone(),
        );
        r.register(
            "socket_destroy_failures",
            "Sockets of a departed backend the kernel refused to close",
            self.failures.clone(),
        );
        r.register(
            "socket_scan_errors",
            "Network namespaces that could not be searched for sockets of departed backends",
            self.scan_errors.clone(),
        );
        r.register(
            "socket_scan_duration_seconds",
            "Time to close the sockets of one sync's departed backends, every namespace searched",
            self.scan_duration.clone(),
        );
    }

    /// The counter of sockets closed for `protocol`.
    #[must_use]
    pub fn destroyed(&self, protocol: Protocol) -> Counter {
        self.destroyed
            .get_or_create(&ProtocolLabels {
                protocol: protocol_label(protocol),
            })
            .clone()
    }

    /// The counter of failed closes for `protocol`.
    #[must_use]
    pub fn failures(&self, protocol: Protocol) -> Counter {
        self.failures
            .get_or_create(&ProtocolLabels {
                protocol: protocol_label(protocol),
            })
            .clone()
    }
}

const fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("lb"),
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            sync_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            services: Gauge::default(),
            backends: Gauge::default(),
            services_capacity: Gauge::default(),
            backends_capacity: Gauge::default(),
            rejected: Gauge::default(),
            rejections: Counter::default(),
            last_sync: Gauge::default(),
            source_errors: Family::default(),
            source_stale: Family::default(),
            source_updates: Family::default(),
            update_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            features: Family::default(),
            sockets: SocketMetrics::new(),
            ready: AtomicBool::new(false),
        };
        m.sockets.register(&mut m.registry);
        let r = &mut m.registry;
        r.register(
            "syncs",
            "Completed syncs of the maps to the desired state",
            m.syncs.clone(),
        );
        r.register(
            "sync_errors",
            "Syncs that failed (the kernel refused a map operation)",
            m.sync_errors.clone(),
        );
        r.register(
            "sync_duration_seconds",
            "Time to apply one sync to the maps",
            m.sync_duration.clone(),
        );
        r.register(
            "services",
            "Service ports (frontends) programmed",
            m.services.clone(),
        );
        r.register(
            "backends",
            "Backend slots in use, summed over services",
            m.backends.clone(),
        );
        r.register(
            "services_capacity",
            "Size of the service table (--max-services)",
            m.services_capacity.clone(),
        );
        r.register(
            "backends_capacity",
            "Size of the backend table (--max-backends)",
            m.backends_capacity.clone(),
        );
        r.register(
            "services_rejected",
            "Services left out because a table is full",
            m.rejected.clone(),
        );
        r.register(
            "service_rejections",
            "Times a service was left out because a table is full",
            m.rejections.clone(),
        );
        r.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last completed sync",
            m.last_sync.clone(),
        );
        r.register(
            "source_errors",
            "Source inputs rejected (unparseable file, invalid objects, API errors)",
            m.source_errors.clone(),
        );
        r.register(
            "source_stale",
            "1 while the source cannot be read and the programmed state may be out of date",
            m.source_stale.clone(),
        );
        r.register(
            "source_updates",
            "Desired states published by the source",
            m.source_updates.clone(),
        );
        r.register(
            "update_latency_seconds",
            "From a source change (watch event, file change) to the maps",
            m.update_latency.clone(),
        );
        r.register(
            "kernel_feature",
            "Kernel features in use (1) or unsupported (0)",
            m.features.clone(),
        );
        m
    }

    /// Records the probed kernel features.
    pub fn set_features(&self, active: u32) {
        for (bit, name) in FEATURE_NAMES {
            self.features
                .get_or_create(&FeatureLabels {
                    feature: name.to_owned(),
                })
                .set(i64::from(active & bit != 0));
        }
    }

    /// Adds the counters of the socket hooks (`datapath_*`, read from the
    /// pinned `lb_stats` map) and of the tc programs (`tc_*`, from
    /// `lb_tc_stats`).
    ///
    /// # Errors
    /// When a pinned map cannot be opened.
    pub fn add_datapath(&mut self, layout: &PinLayout) -> Result<(), crate::bpf::Error> {
        let counters = [
            (
                map_names::GLOBAL_STATS,
                &STAT_NAMES[..],
                "datapath",
                "Data-path events",
            ),
            (
                map_names::TC_STATS,
                &TC_STAT_NAMES[..],
                "tc",
                "Packets from other hosts",
            ),
        ];
        for (map, names, prefix, help) in counters {
            let map = open_pinned(&layout.map(map))?;
            self.registry
                .register_collector(Box::new(DatapathCollector {
                    map: Mutex::new(map),
                    names,
                    prefix,
                    help,
                }));
        }
        Ok(())
    }

    /// The text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads `lb_stats` (summed over CPUs) at scrape time.
/// Per-CPU counters summed at each scrape, one metric per name.
struct DatapathCollector {
    map: Mutex<PerCpuArray<MapData, u64>>,
    names: &'static [&'static str],
    prefix: &'static str,
    help: &'static str,
}

impl std::fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatapathCollector")
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(map) = self.map.lock() else {
            return Ok(());
        };
        for (i, name) in (0u32..).zip(self.names) {
            let Ok(values) = map.get(&i, 0) else {
                continue;
            };
            let total = values.iter().copied().fold(0u64, u64::wrapping_add);
            let counter = ConstCounter::new(total);
            let metric = format!("{}_{name}", self.prefix);
            let help = format!("{}: {}", self.help, name.replace('_', " "));
            let m = encoder.encode_descriptor(&metric, &help, None, counter.metric_type())?;
            counter.encode(m)?;
        }
        Ok(())
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
///
/// # Errors
/// When the address cannot be bound.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(metrics);
    Ok(crate::http::spawn(listener, app, "metrics"))
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn ready_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first full state is not programmed yet\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn exposition_names_the_metrics() {
        let m = Metrics::new();
        m.services.set(3);
        m.set_features(1);
        let text = m.render();
        assert!(text.contains("lb_services 3"), "{text}");
        assert!(
            text.contains("lb_kernel_feature{feature=\"connect4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lb_kernel_feature{feature=\"getpeername4\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
