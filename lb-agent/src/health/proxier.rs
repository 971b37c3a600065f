//! `/healthz` and `/livez`, as kube-proxy's `proxier_health.go` answers
//! them. The proxy is healthy while no change waits for the maps, or the
//! oldest waiting one is younger than the timeout; `/healthz` also fails
//! while the Node is being deleted or tainted by the cluster autoscaler
//! for deletion (`nodeEligible`), so that load balancers drain the node.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::State, response::Response, routing::any};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;

use super::json;

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub(crate) const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether a Node may take traffic: not being deleted, not tainted
/// [`TO_BE_DELETED_TAINT`] (kube-proxy's `SyncNode`).
pub(crate) fn node_eligible(node: &Node) -> bool {
    let tainted = node
        .spec
        .iter()
        .flat_map(|spec| spec.taints.iter().flatten())
        .any(|taint| taint.key == TO_BE_DELETED_TAINT);
    node.metadata.deletion_timestamp.is_none() && !tainted
}

/// The proxy's health: when the maps last caught up, and since when a
/// change has been waiting for them.
#[derive(Debug)]
pub(crate) struct ProxierHealth {
    timeout: Duration,
    times: Mutex<Times>,
    node_eligible: AtomicBool,
}

#[derive(Debug, Default)]
struct Times {
    last_updated: Option<Timestamp>,
    oldest_pending: Option<Instant>,
}

/// One reading, as both endpoints report it.
struct Reading {
    healthy: bool,
    last_updated: Option<Timestamp>,
    now: Timestamp,
}

impl ProxierHealth {
    /// Healthy, and the node eligible, until told otherwise (as kube-proxy
    /// while it starts).
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            times: Mutex::default(),
            node_eligible: AtomicBool::new(true),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A change arrived that the maps do not hold yet.
    pub(crate) fn queued(&self) {
        self.times().oldest_pending.get_or_insert_with(Instant::now);
    }

    /// The maps hold every change that arrived.
    pub(crate) fn updated(&self) {
        let mut times = self.times();
        times.oldest_pending = None;
        times.last_updated = Some(Timestamp::now());
    }

    pub(crate) fn set_node_eligible(&self, eligible: bool) {
        self.node_eligible.store(eligible, Ordering::Relaxed);
    }

    /// The proxy's own health, whatever the Node says.
    pub(crate) fn is_healthy(&self) -> bool {
        self.read().healthy
    }

    fn read(&self) -> Reading {
        let times = self.times();
        let healthy = times
            .oldest_pending
            .is_none_or(|queued| queued.elapsed() < self.timeout);
        Reading {
            healthy,
            last_updated: times.last_updated,
            now: Timestamp::now(),
        }
    }
}

/// Serves `/healthz` and `/livez` on `listener` until the task is aborted.
pub(super) fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<ProxierHealth>,
) -> tokio::task::JoinHandle<()> {
    crate::http::spawn(listener, router(health), "healthz")
}

fn router(health: Arc<ProxierHealth>) -> Router {
    Router::new()
        .route("/healthz", any(healthz))
        .route("/livez", any(livez))
        .with_state(health)
}

/// Healthy and the node eligible: 200; `lastUpdated` is then the current
/// time, as kube-proxy reports it for compatibility.
async fn healthz(State(health): State<Arc<ProxierHealth>>) -> Response {
    let eligible = health.node_eligible.load(Ordering::Relaxed);
    let r = health.read();
    let healthy = r.healthy && eligible;
    let last_updated = if healthy { Some(r.now) } else { r.last_updated };
    let body = format!(
        r#"{{"lastUpdated": "{}","currentTime": "{}", "nodeEligible": {eligible}}}"#,
        go_time(last_updated),
        go_time(Some(r.now)),
    );
    json(healthy, body)
}

/// The proxy's own health, whatever the Node says.
async fn livez(State(health): State<Arc<ProxierHealth>>) -> Response {
    let r = health.read();
    let last_updated = if r.healthy {
        Some(r.now)
    } else {
        r.last_updated
    };
    let body = format!(
        r#"{{"lastUpdated": "{}","currentTime": "{}"}}"#,
        go_time(last_updated),
        go_time(Some(r.now)),
    );
    json(r.healthy, body)
}

/// A time as Go's `time.Time.String()` prints it in UTC (kube-proxy's
/// body uses that, without the monotonic clock reading); `None` is Go's
/// zero time.
fn go_time(t: Option<Timestamp>) -> String {
    match t {
        None => "0001-01-01 00:00:00 +0000 UTC".to_owned(),
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
    }
}
