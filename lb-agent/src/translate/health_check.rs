//! `spec.healthCheckNodePort`: where load balancers ask a node whether it
//! has endpoints of a `LoadBalancer` Service with `externalTrafficPolicy:
//! Local` (kube-proxy: `serviceport.go` reads the port when
//! `NeedsHealthCheck`; `endpointschangetracker.go`, `LocalReadyEndpoints`,
//! counts the endpoints).

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::core::v1::ServiceSpec;

use super::{
    NodeContext,
    problem::{Obj, Problems},
    slices::Endpoint,
    validate::parse_port,
};

/// The health check port of a Service that needs one: `type: LoadBalancer`,
/// `externalTrafficPolicy: Local` and a `healthCheckNodePort` (the API
/// server allocates one; 0 or unset means none, as kube-proxy reads it).
pub(super) fn health_check_port(
    spec: &ServiceSpec,
    object: &Obj<'_>,
    problems: &mut Problems,
) -> Option<u16> {
    let needs = spec.type_.as_deref() == Some("LoadBalancer")
        && spec.external_traffic_policy.as_deref() == Some("Local");
    match spec.health_check_node_port.filter(|&n| needs && n != 0) {
        None => None,
        Some(port) => match parse_port(port) {
            Ok(port) => Some(port),
            Err(message) => {
                problems.push(object, "spec.healthCheckNodePort", message);
                None
            }
        },
    }
}

/// The ready endpoints on this node, by address: one pod serving two ports
/// counts once. Each family is counted apart and the larger count is the
/// answer: a dual-stack pod has an address in each family's slice and is
/// one endpoint (kube-proxy's proxier of each family counts its own).
#[derive(Default)]
pub(super) struct LocalReady(HashSet<IpAddr>);

impl LocalReady {
    /// Adds the ready endpoints on `node` among one port's endpoints.
    /// Terminating ones do not count, even when they still serve: a node
    /// with only those should fail the check.
    pub(super) fn add(&mut self, endpoints: &[(SocketAddr, &Endpoint<'_>)], node: &NodeContext) {
        self.0.extend(
            endpoints
                .iter()
                .filter(|(_, e)| e.ready && e.is_on(node))
                .map(|(_, e)| e.ip),
        );
    }

    pub(super) fn count(&self) -> usize {
        let v4 = self.0.iter().filter(|ip| ip.is_ipv4()).count();
        v4.max(self.0.len() - v4)
    }
}
