//! Kubernetes objects -> desired state: a pure function, kube-proxy's rules.
//!
//! The reference is kube-proxy v1.35 (`pkg/proxy` in kubernetes/kubernetes):
//! which Services are proxied (`servicechangetracker.go`, `util.ShouldSkipService`,
//! and the label selector of kube-proxy's informers in
//! `cmd/kube-proxy/app/server.go`), how `EndpointSlices` are joined to service
//! ports and deduplicated (`endpointslicecache.go`), which endpoints are
//! usable (`topology.go`, `CategorizeEndpoints`), the endpoint conditions
//! (`endpoint.go`) and a Service's addresses (`serviceport.go`,
//! `newBaseServiceInfo`). Comments in each module say where behaviour
//! follows it and where it deliberately does not.
//!
//! Every address of a Service is a frontend with the same settings: its
//! `ClusterIP`s, its `nodePort`s (on every node-port address: see
//! [`Frontend::node_port`]), its `externalIPs` and its load balancer's VIPs.
//! The `ClusterIP` uses the endpoints `internalTrafficPolicy` allows; the
//! external addresses use the cluster-wide ones, as kube-proxy does for
//! clients on the node (`UsesClusterEndpoints`, and the short circuit of
//! `externalTrafficPolicy: Local`).
//!
//! A [`Problem`] means that an object, or one port or endpoint of it, was
//! skipped; everything else is still translated. The file source rejects a
//! file with any problem, the Kubernetes API source logs them as warnings.
//!
//! Here: the public types, [`translate`] and the steps of one Service. One
//! job per submodule: `selection` (which objects this proxy serves),
//! `compact` (what is kept of an `EndpointSlice`: [`Slice`]), `slices`
//! (`EndpointSlices` indexed by Service, validated once, joined to a port), `family` (address families and `ClusterIP`s), `external`
//! (external and load-balancer addresses), `health_check` (the
//! `healthCheckNodePort` and the endpoints it counts), `validate` (a Service's ports
//! and settings), `topology` (which endpoints are usable),
//! `conflict` (two Services, one frontend) and `problem` ([`Problem`]).

mod compact;
mod conflict;
mod external;
mod family;
mod health_check;
mod problem;
mod selection;
mod slices;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod topology;
mod validate;

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use k8s_openapi::api::core::v1::Service;

pub use self::compact::{Address, Slice, SliceEndpoint};
pub use self::problem::{Kind, ObjectRef, Problem};
use self::{
    conflict::{State, insert},
    external::{External, external_addresses},
    family::{Family, cluster_ips},
    health_check::{LocalReady, health_check_port},
    problem::{Obj, Problems},
    selection::wanted,
    slices::{SliceIndex, endpoints_for},
    topology::usable_backends,
    validate::{Port, Settings, first_of_its_name, namespace_and_name, ports, settings},
};
use crate::model::{
    Algorithm, DesiredState, Frontend, FrontendKind, FrontendScope, HealthCheck, HealthChecks,
    ServiceEntry, ServiceName, ServicePortName,
};

/// Label joining an `EndpointSlice` to its Service (same namespace).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label of Services (and their slices) that no proxy should serve.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label of Services (and their slices) served by another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label of a Node's zone, for topology hints.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Annotation choosing a Service's [`Algorithm`] (`random` or `round-robin`).
pub const ANNOTATION_ALGORITHM: &str = "lb-agent.io/algorithm";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API server's default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The largest affinity timeout the API server accepts.
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// The node the agent runs on, for topology and `internalTrafficPolicy: Local`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// The node's name, as in `EndpointSlice.endpoints[].nodeName`.
    pub node_name: Option<String>,
    /// The node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

impl NodeContext {
    /// This node, with the zone its Node object's label names.
    #[must_use]
    pub fn of(node_name: Option<String>, node: Option<&k8s_openapi::api::core::v1::Node>) -> Self {
        Self {
            node_name,
            zone: node
                .and_then(|n| n.metadata.labels.as_ref()?.get(LABEL_ZONE))
                .cloned(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The algorithm of Services without the [`ANNOTATION_ALGORITHM`] annotation.
    pub default_algorithm: Algorithm,
    /// Serve only Services labelled [`LABEL_SERVICE_PROXY_NAME`] with this
    /// value; `None` serves only Services without that label (as kube-proxy).
    pub service_proxy_name: Option<String>,
}

/// The result of [`translate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    pub state: DesiredState,
    /// The `healthCheckNodePort`s this node answers.
    pub health_checks: HealthChecks,
    /// What was skipped, in the order found.
    pub problems: Vec<Problem>,
}

/// Translates Services and `EndpointSlices` (as [`Slice`]s) into the
/// frontends this node serves. Pure and linear in the size of the objects.
///
/// Takes references so that callers holding `Arc`s (reflector stores) need
/// not clone objects: pass `&vec` or `store.iter().map(AsRef::as_ref)`.
#[must_use]
pub fn translate<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a Slice>,
    node: &NodeContext,
    opts: &Options,
) -> Translation {
    let slices: Vec<&'a Slice> = slices.into_iter().collect();
    let services = services.into_iter();
    let mut problems = Problems::default();
    let mut index = SliceIndex::new(&slices, opts, &mut problems);
    let mut state = State::default();
    let mut seen = HashSet::with_capacity(services.size_hint().0);
    for service in services {
        translate_service(
            service,
            &mut index,
            node,
            opts,
            &mut seen,
            &mut state,
            &mut problems,
        );
    }
    Translation {
        health_checks: std::mem::take(&mut state.health_checks),
        state: state.finish(),
        problems: problems.0,
    }
}

fn translate_service<'a>(
    service: &'a Service,
    index: &mut SliceIndex<'_>,
    node: &NodeContext,
    opts: &Options,
    seen: &mut HashSet<(&'a str, &'a str)>,
    state: &mut State,
    problems: &mut Problems,
) {
    let metadata = &service.metadata;
    let object = Obj {
        kind: Kind::Service,
        metadata,
    };
    let Some((namespace, name)) = namespace_and_name(&object, "a Service", problems) else {
        return;
    };
    if !wanted(metadata, opts) {
        return;
    }
    let Some(spec) = &service.spec else {
        return; // No ClusterIP.
    };
    match spec.type_.as_deref() {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {}
        // Not proxied (util.ShouldSkipService).
        Some("ExternalName") => return,
        Some(other) => {
            let message = format!(
                "unsupported type {other:?}: expected ClusterIP, NodePort, LoadBalancer or ExternalName"
            );
            problems.push(&object, "spec.type", message);
            return;
        }
    }
    let Some(cluster_ips) = cluster_ips(spec, &object, problems) else {
        return; // Headless or no ClusterIP: not proxied (util.ShouldSkipService).
    };
    if !first_of_its_name(seen, (namespace, name), &object, problems) {
        return;
    }
    let Some(settings) = settings(metadata, spec, &object, opts, problems) else {
        return;
    };
    let ports = ports(spec, &object, problems);
    if cluster_ips.iter().all(Option::is_none) || ports.is_empty() {
        return;
    }
    let external = external_addresses(service, spec, &object, problems);
    let slices = index.for_service(namespace, name, problems);
    let health_port = health_check_port(spec, &object, problems);
    let mut local_ready = LocalReady::default();
    for port in &ports {
        let name = ServicePortName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port: port.name.to_owned(),
        };
        for &cluster_ip in cluster_ips.iter().flatten() {
            let family = Family::of(cluster_ip);
            let endpoints = endpoints_for(&slices, family, port);
            if health_port.is_some() {
                local_ready.add(&endpoints, node);
            }
            let internal = usable_backends(&endpoints, settings.local, node);
            let backends = PortBackends {
                cluster_wide: if settings.local {
                    usable_backends(&endpoints, false, node)
                } else {
                    internal.clone()
                },
                internal,
                node_local: settings
                    .external_local
                    .then(|| usable_backends(&endpoints, true, node)),
            };
            let frontends = frontends_of(port, cluster_ip, &external);
            insert_frontends(state, problems, &name, &settings, &backends, frontends);
        }
    }
    if let Some(port) = health_port {
        let service = ServiceName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let local_endpoints = local_ready.count();
        let check = HealthCheck {
            port,
            local_endpoints,
        };
        state.health_checks.insert(service, check);
    }
}

/// The usable endpoints of one port of a Service in one family, for each
/// kind of client.
struct PortBackends {
    /// For the `ClusterIP` (`internalTrafficPolicy`).
    internal: Vec<SocketAddr>,
    /// For the external addresses.
    cluster_wide: Vec<SocketAddr>,
    /// For the external addresses from other hosts, under
    /// `externalTrafficPolicy: Local`.
    node_local: Option<Vec<SocketAddr>>,
}

/// Adds the entries of one port's frontends: the cluster-wide endpoints for
/// every client, and where clients from other hosts get something else
/// (`externalTrafficPolicy: Local`, source ranges) an entry for them.
fn insert_frontends(
    state: &mut State,
    problems: &mut Problems,
    name: &ServicePortName,
    settings: &Settings,
    backends: &PortBackends,
    frontends: Vec<(Frontend, FrontendKind, String, &[IpNet])>,
) {
    for (frontend, kind, field, source_ranges) in frontends {
        let entry = |backends: &Vec<SocketAddr>| ServiceEntry {
            name: name.clone(),
            kind,
            algorithm: settings.algorithm,
            affinity_timeout_s: settings.affinity_timeout_s,
            backends: backends.clone(),
            source_ranges: source_ranges.to_vec(),
        };
        if kind == FrontendKind::ClusterIP {
            insert(state, frontend, entry(&backends.internal), field, problems);
            continue;
        }
        if !source_ranges.is_empty() {
            // For clients from other hosts only (see `External`).
            let chosen = backends
                .node_local
                .as_ref()
                .unwrap_or(&backends.cluster_wide);
            let frontend = Frontend {
                scope: FrontendScope::External,
                ..frontend
            };
            insert(state, frontend, entry(chosen), field, problems);
            continue;
        }
        if let Some(local) = &backends.node_local {
            state.scoped(frontend, entry(local));
        }
        insert(
            state,
            frontend,
            entry(&backends.cluster_wide),
            field,
            problems,
        );
    }
}

/// The frontends of one port of a Service in the family of `cluster_ip`:
/// the `ClusterIP`, the node port, the external addresses; each with its
/// kind, the field it came from and its source ranges.
fn frontends_of<'e>(
    port: &Port<'_>,
    cluster_ip: IpAddr,
    external: &'e [External],
) -> Vec<(Frontend, FrontendKind, String, &'e [IpNet])> {
    let at = |ip| Frontend::new(ip, port.number, port.protocol);
    let mut frontends = vec![(
        at(cluster_ip),
        FrontendKind::ClusterIP,
        format!("spec.ports[{}]", port.index),
        &[][..],
    )];
    if let Some(nodeport) = port.nodeport {
        frontends.push((
            Frontend::node_port(cluster_ip, nodeport, port.protocol),
            FrontendKind::NodePort,
            format!("spec.ports[{}].nodePort", port.index),
            &[][..],
        ));
    }
    let family = Family::of(cluster_ip);
    frontends.extend(
        external
            .iter()
            .filter(|e| Family::of(e.ip) == family)
            .map(|e| (at(e.ip), e.kind, e.field.clone(), &e.source_ranges[..])),
    );
    frontends
}
