//! The health endpoints kube-proxy serves, answered as kube-proxy answers
//! them (`pkg/proxy/healthcheck` in kubernetes/kubernetes, v1.35), so that
//! load balancers and probes keep working when the agent replaces it:
//!
//! - `proxier`: `/healthz` and `/livez` on `--healthz-addr` (kube-proxy's
//!   `--healthz-bind-address`, default `0.0.0.0:10256`): has the data path
//!   caught up with what the sources said, and may this node take traffic;
//! - `service`: each `healthCheckNodePort` (a `LoadBalancer` Service with
//!   `externalTrafficPolicy: Local`): does this node have ready endpoints of
//!   the Service.
//!
//! Here: [`Health`], which the run loop feeds, and the response both share.

mod proxier;
mod service;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use tokio::sync::watch;

pub(crate) use self::proxier::{ProxierHealth, TO_BE_DELETED_TAINT, node_eligible};
use self::service::ServiceHealthServers;
use crate::{model::HealthChecks, source::Desired};

/// How long a change may wait for the maps before `/healthz` fails:
/// kube-proxy's is twice its sync period, 2 x 30 s by default.
const HEALTH_TIMEOUT: Duration = Duration::from_mins(1);

/// How long after a failed listen (a port in use) it is tried again.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

/// The health endpoints of a running agent.
pub(crate) struct Health {
    pub(crate) proxier: Arc<ProxierHealth>,
    checks: watch::Sender<HealthChecks>,
}

impl Health {
    /// Serves `/healthz` and `/livez` on `healthz_addr` (unless `None`) and
    /// starts the `healthCheckNodePort` listeners, on every node address.
    ///
    /// # Errors
    /// When `healthz_addr` cannot be listened on, for another reason than
    /// another process having it.
    pub(crate) fn start(healthz_addr: Option<SocketAddr>) -> anyhow::Result<Self> {
        let proxier = Arc::new(ProxierHealth::new(HEALTH_TIMEOUT));
        if let Some(addr) = healthz_addr {
            serve_healthz(addr, &proxier)?;
        }
        let (checks, wanted) = watch::channel(HealthChecks::new());
        let every_address = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        ServiceHealthServers::new(every_address, Arc::clone(&proxier)).spawn(wanted);
        Ok(Self { proxier, checks })
    }

    /// Takes in what the sources said of the node and the health checks.
    pub(crate) fn observe(&self, desired: &Desired) {
        self.proxier
            .set_node_eligible(desired.node_eligible.unwrap_or(true));
        self.checks.send_if_modified(|checks| {
            let changed = *checks != desired.health_checks;
            if changed {
                checks.clone_from(&desired.health_checks);
            }
            changed
        });
    }
}

/// Serves `/healthz` and `/livez` on `addr`. While another process has
/// the port (kube-proxy, when the agent runs beside it), it is tried again
/// every [`LISTEN_RETRY`], so the agent takes it over when kube-proxy goes.
///
/// # Errors
/// When `addr` cannot be listened on for another reason (not a local
/// address, no permission).
fn serve_healthz(addr: SocketAddr, proxier: &Arc<ProxierHealth>) -> anyhow::Result<()> {
    let served = "serving /healthz and /livez as kube-proxy does";
    match crate::http::listen(addr) {
        Ok(listener) => {
            proxier::serve(listener, Arc::clone(proxier));
            tracing::info!(%addr, "{served}");
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            tracing::warn!(
                %addr,
                "cannot serve /healthz: the address is in use (by kube-proxy, beside the agent?); \
                 retrying every {LISTEN_RETRY:?} (--healthz-addr none serves nothing)"
            );
            let proxier = Arc::clone(proxier);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LISTEN_RETRY).await;
                    if let Ok(listener) = crate::http::listen(addr) {
                        proxier::serve(listener, proxier);
                        tracing::info!(%addr, "{served}");
                        break;
                    }
                }
            });
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot serve /healthz on {addr}; pass another --healthz-addr, or none")
            });
        }
    }
    Ok(())
}

/// A JSON answer with kube-proxy's headers.
fn json(healthy: bool, body: String) -> Response {
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests;
