//! The `healthCheckNodePort`s, as kube-proxy's `service_health.go` answers
//! them: any path, 200 while the Service has ready endpoints on this node
//! and the proxy is healthy, else 503; the body says how many and whether
//! the proxy is healthy. A listener per Service, opened and closed as the
//! Services come and go; a port that cannot be listened on is logged and
//! tried again, and the others are served meanwhile.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Router, extract::State, response::Response};
use tokio::{sync::watch, task::JoinHandle};

use super::{LISTEN_RETRY, ProxierHealth, json};
use crate::model::{HealthChecks, ServiceName};

/// What one listener answers about.
struct Served {
    service: ServiceName,
    local_endpoints: AtomicUsize,
    proxier: Arc<ProxierHealth>,
}

struct Listening {
    port: u16,
    served: Arc<Served>,
    server: JoinHandle<()>,
}

/// The health check listeners of this node.
pub(super) struct ServiceHealthServers {
    /// Where they listen: the unspecified address for every node address.
    ip: IpAddr,
    proxier: Arc<ProxierHealth>,
    open: BTreeMap<ServiceName, Listening>,
    /// Ports that could not be listened on, by Service (logged once).
    failing: BTreeMap<ServiceName, u16>,
}

impl ServiceHealthServers {
    pub(super) fn new(ip: IpAddr, proxier: Arc<ProxierHealth>) -> Self {
        Self {
            ip,
            proxier,
            open: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Follows `wanted` on a task of its own: each change reconciled, and
    /// ports that could not be listened on tried again every
    /// [`LISTEN_RETRY`].
    pub(super) fn spawn(mut self, mut wanted: watch::Receiver<HealthChecks>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let checks = wanted.borrow_and_update().clone();
                let retry = !self.reconcile(&checks).await;
                tokio::select! {
                    changed = wanted.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(LISTEN_RETRY), if retry => {}
                }
            }
        })
    }

    /// Opens, updates and closes listeners to match `wanted`; a closed
    /// port is closed when this returns. False when a port could not be
    /// listened on.
    pub(super) async fn reconcile(&mut self, wanted: &HealthChecks) -> bool {
        let gone: Vec<ServiceName> = self
            .open
            .iter()
            .filter(|(name, l)| wanted.get(name).is_none_or(|c| c.port != l.port))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(l) = self.open.remove(&name) {
                l.server.abort();
                let _ = l.server.await; // The listener is closed once it ends.
                tracing::info!(service = %name, port = l.port, "health check port closed");
            }
        }
        self.failing.retain(|name, _| wanted.contains_key(name));
        for (name, check) in wanted {
            if let Some(l) = self.open.get(name) {
                let count = &l.served.local_endpoints;
                count.store(check.local_endpoints, Ordering::Relaxed);
                continue;
            }
            let addr = SocketAddr::new(self.ip, check.port);
            match crate::http::listen(addr) {
                Ok(listener) => {
                    let served = Arc::new(Served {
                        service: name.clone(),
                        local_endpoints: AtomicUsize::new(check.local_endpoints),
                        proxier: Arc::clone(&self.proxier),
                    });
                    let app = Router::new()
                        .fallback(answer)
                        .with_state(Arc::clone(&served));
                    self.failing.remove(name);
                    tracing::info!(service = %name, %addr, "serving the health check port");
                    let l = Listening {
                        port: check.port,
                        served,
                        server: crate::http::spawn(listener, app, "health check"),
                    };
                    self.open.insert(name.clone(), l);
                }
                Err(e) => {
                    if self.failing.insert(name.clone(), check.port) != Some(check.port) {
                        tracing::error!(
                            service = %name,
                            %addr,
                            error = %e,
                            "cannot listen on the Service's healthCheckNodePort (is another \
                             process using it?); load balancers will see this node as down \
                             for it; retrying every {LISTEN_RETRY:?}"
                        );
                    }
                }
            }
        }
        self.failing.is_empty()
    }
}

/// kube-proxy's answer, byte for byte (its body is indented with tabs).
async fn answer(State(served): State<Arc<Served>>) -> Response {
    let count = served.local_endpoints.load(Ordering::Relaxed);
    let proxy_healthy = served.proxier.is_healthy();
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quoted(&served.service.namespace),
        quoted(&served.service.name),
    );
    json(count != 0 && proxy_healthy, body)
}
