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
    /// When `healthz_addr` cannot be listened on.
    pub(crate) fn start(healthz_addr: Option<SocketAddr>) -> anyhow::Result<Self> {
        let proxier = Arc::new(ProxierHealth::new(HEALTH_TIMEOUT));
        if let Some(addr) = healthz_addr {
            proxier::serve(addr, Arc::clone(&proxier)).with_context(|| {
                format!(
                    "cannot serve /healthz on {addr}; pass another --healthz-addr, or none \
                     (is kube-proxy running on this node? it listens there too)"
                )
            })?;
            tracing::info!(%addr, "serving /healthz and /livez as kube-proxy does");
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

/// Test client: one HTTP/1.1 GET over a plain TCP connection, as a load
/// balancer's probe makes it; the status code, headers and body.
#[cfg(test)]
pub(crate) async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    Ok((status, head.to_owned(), body.to_owned()))
}

#[cfg(test)]
mod tests;
