//! Kubernetes objects -> desired state: a pure function, kube-proxy's rules.
//!
//! The reference is kube-proxy v1.33 (`pkg/proxy` in kubernetes/kubernetes):
//! which Services are proxied (`servicechangetracker.go`, `util.ShouldSkipService`,
//! and the label selector of kube-proxy's informers in
//! `cmd/kube-proxy/app/server.go`), how `EndpointSlices` are joined to service
//! ports and deduplicated (`endpointslicecache.go`), which endpoints are
//! usable (`topology.go`, `CategorizeEndpoints`) and the endpoint conditions
//! (`endpoint.go`). Comments in each module say where behaviour follows it
//! and where it deliberately does not.
//!
//! Only `ClusterIP` traffic is translated: `NodePort` and `LoadBalancer` Services
//! get their `ClusterIP` frontends, nothing else.
//!
//! A [`Problem`] means that an object, or one port or endpoint of it, was
//! skipped; everything else is still translated. The file source rejects a
//! file with any problem, the Kubernetes API source logs them as warnings.
//!
//! Here: the public types, [`translate`] and the steps of one Service. One
//! job per submodule: `selection` (which objects this proxy serves),
//! `slices` (`EndpointSlices` indexed by Service, validated once, joined to
//! a port), `family` (address families and `ClusterIP`s), `validate` (a
//! Service's ports and settings), `topology` (which endpoints are usable),
//! `conflict` (two Services, one frontend) and `problem` ([`Problem`]).

mod conflict;
mod family;
mod problem;
mod selection;
mod slices;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod topology;
mod validate;

use std::collections::HashSet;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

pub use self::problem::{Kind, ObjectRef, Problem};
use self::{
    conflict::{State, insert},
    family::{Family, cluster_ips},
    problem::{Obj, Problems},
    selection::wanted,
    slices::{SliceIndex, endpoints_for},
    topology::usable_backends,
    validate::{first_of_its_name, namespace_and_name, ports, settings},
};
use crate::model::{Algorithm, DesiredState, Frontend, ServiceEntry, ServicePortName};

/// Label joining an `EndpointSlice` to its Service (same namespace).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label of Services (and their slices) that no proxy should serve.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label of Services (and their slices) served by another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Annotation choosing a Service's [`Algorithm`] (`random` or `round-robin`).
pub const ANNOTATION_ALGORITHM: &str = "lb-agent.io/algorithm";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API server's default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The largest affinity timeout the API server accepts.
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// kube-proxy's `PreferSameTrafficDistribution` feature gate, which makes it
/// honour `hints.forNodes`: alpha and off by default in v1.33 (beta and on
/// in v1.34), so `forNodes` hints are ignored. The logic is here and tested,
/// flip this to follow v1.34.
const PREFER_SAME_NODE: bool = false;

/// The node the agent runs on, for topology and `internalTrafficPolicy: Local`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// The node's name, as in `EndpointSlice.endpoints[].nodeName`.
    pub node_name: Option<String>,
    /// The node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
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
    /// What was skipped, in the order found.
    pub problems: Vec<Problem>,
}

/// Translates Services and `EndpointSlices` into the frontends this node
/// serves. Pure and linear in the size of the objects.
///
/// Takes references so that callers holding `Arc`s (reflector stores) need
/// not clone objects: pass `&vec` or `store.iter().map(AsRef::as_ref)`.
#[must_use]
pub fn translate<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeContext,
    opts: &Options,
) -> Translation {
    let slices: Vec<&'a EndpointSlice> = slices.into_iter().collect();
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
        state: state.entries,
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
    let slices = index.for_service(namespace, name, problems);
    for port in &ports {
        for &cluster_ip in cluster_ips.iter().flatten() {
            let family = Family::of(cluster_ip);
            let endpoints = endpoints_for(&slices, family, port);
            let backends = usable_backends(&endpoints, settings.local, node, PREFER_SAME_NODE);
            let frontend = Frontend {
                ip: cluster_ip,
                port: port.number,
                protocol: port.protocol,
            };
            let entry = ServiceEntry {
                name: ServicePortName {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    port: port.name.to_owned(),
                },
                algorithm: settings.algorithm,
                affinity_timeout_s: settings.affinity_timeout_s,
                backends,
            };
            insert(state, frontend, entry, port.index, problems);
        }
    }
}
