//! `EndpointSlices` indexed by Service, each validated once and only when a
//! served Service needs it, and the endpoints of a service port joined
//! across them (`endpointslicecache.go`).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::discovery::v1::{ForNode, ForZone};

use super::{
    LABEL_SERVICE_NAME, NodeContext, Options,
    compact::{Address, Slice},
    family::Family,
    problem::{Kind, Obj, Problems},
    selection::wanted_labels,
    validate::{Port, first_of_its_name, namespace_and_name, parse_port, parse_protocol},
};
use crate::model::Protocol;

/// One port of a slice: endpoints of the slice serve the service port of
/// this name and protocol on this port number.
struct SlicePort<'a> {
    name: &'a str,
    protocol: Protocol,
    port: u16,
}

/// An endpoint with kube-proxy's view of its conditions (`endpointslicecache.go`).
pub(super) struct Endpoint<'a> {
    pub(super) ip: IpAddr,
    /// `conditions.ready`, nil meaning true.
    pub(super) ready: bool,
    /// `conditions.serving`, nil meaning true.
    pub(super) serving: bool,
    /// `conditions.terminating`, nil meaning false.
    pub(super) terminating: bool,
    pub(super) node_name: Option<&'a str>,
    /// `hints.forZones`, empty without hints.
    pub(super) zone_hints: &'a [ForZone],
    /// `hints.forNodes`, empty without hints.
    pub(super) node_hints: &'a [ForNode],
}

impl Endpoint<'_> {
    pub(super) fn hinted_for_zone(&self, zone: &str) -> bool {
        self.zone_hints.iter().any(|hint| hint.name == zone)
    }

    pub(super) fn hinted_for_node(&self, node_name: &str) -> bool {
        self.node_hints.iter().any(|hint| hint.name == node_name)
    }

    /// Whether the endpoint runs on `node` (never when the node's name is
    /// unknown).
    pub(super) fn is_on(&self, node: &NodeContext) -> bool {
        let node_name = node.node_name.as_deref().filter(|n| !n.is_empty());
        node_name.is_some() && self.node_name == node_name
    }
}

pub(super) struct PreparedSlice<'a> {
    family: Family,
    ports: Vec<SlicePort<'a>>,
    endpoints: Vec<Endpoint<'a>>,
}

enum SliceState<'a> {
    /// Not looked at yet: only slices joined to a served Service are.
    Pending(Family),
    Prepared(PreparedSlice<'a>),
}

/// The `EndpointSlices` by Service, each validated once, when first needed.
pub(super) struct SliceIndex<'a> {
    slices: &'a [&'a Slice],
    states: Vec<Option<SliceState<'a>>>,
    by_service: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> SliceIndex<'a> {
    pub(super) fn new(slices: &'a [&'a Slice], opts: &Options, problems: &mut Problems) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<usize>> =
            HashMap::with_capacity(slices.len());
        let mut states = Vec::with_capacity(slices.len());
        let mut seen = HashSet::with_capacity(slices.len());
        for (index, slice) in slices.iter().enumerate() {
            states.push(None);
            let metadata = &slice.metadata;
            if !wanted_labels(slice.headless, slice.proxy_name.as_deref(), opts) {
                continue;
            }
            let object = Obj {
                kind: Kind::EndpointSlice,
                metadata,
            };
            let Some((namespace, name)) = namespace_and_name(&object, "an EndpointSlice", problems)
            else {
                continue;
            };
            // kube-proxy cannot key a slice without this label (endpointSliceCacheKeys).
            let Some(service) = slice.service.as_deref().filter(|s| !s.is_empty()) else {
                problems.push(
                    &object,
                    format!("metadata.labels[{LABEL_SERVICE_NAME:?}]"),
                    "missing: the label names the Service of the slice",
                );
                continue;
            };
            if !first_of_its_name(&mut seen, (namespace, name), &object, problems) {
                continue;
            }
            // kube-proxy's proxiers only take slices of their address family (one
            // proxier per family); FQDN slices have no meaning for proxies.
            let family = match slice.address_type.as_str() {
                "IPv4" => Family::V4,
                "IPv6" => Family::V6,
                "FQDN" => continue,
                other => {
                    problems.push(
                        &object,
                        "addressType",
                        format!("unsupported address type {other:?}: expected IPv4, IPv6 or FQDN"),
                    );
                    continue;
                }
            };
            if let Some(state) = states.last_mut() {
                *state = Some(SliceState::Pending(family));
            }
            by_service
                .entry((namespace, service))
                .or_default()
                .push(index);
        }
        Self {
            slices,
            states,
            by_service,
        }
    }

    /// The usable slices of a Service, validated (once) now.
    pub(super) fn for_service(
        &mut self,
        namespace: &str,
        name: &str,
        problems: &mut Problems,
    ) -> Vec<&PreparedSlice<'a>> {
        let Some(indexes) = self.by_service.get(&(namespace, name)) else {
            return Vec::new();
        };
        for &index in indexes {
            if let (Some(state), Some(slice)) = (self.states.get_mut(index), self.slices.get(index))
                && let Some(SliceState::Pending(family)) = state
            {
                *state = Some(SliceState::Prepared(prepare_slice(
                    slice, *family, problems,
                )));
            }
        }
        indexes
            .iter()
            .filter_map(|&index| match self.states.get(index) {
                Some(Some(SliceState::Prepared(prepared))) => Some(prepared),
                _ => None,
            })
            .collect()
    }
}

fn prepare_slice<'a>(
    slice: &'a Slice,
    family: Family,
    problems: &mut Problems,
) -> PreparedSlice<'a> {
    let object = Obj {
        kind: Kind::EndpointSlice,
        metadata: &slice.metadata,
    };
    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().enumerate() {
        // kube-proxy ignores (and logs) ports without a name or number.
        let Some(name) = port.name.as_deref() else {
            problems.push(
                &object,
                format!("ports[{i}].name"),
                "missing (the port of an unnamed service port is named \"\")",
            );
            continue;
        };
        let number = match port
            .port
            .ok_or_else(|| "missing".to_owned())
            .and_then(parse_port)
        {
            Ok(number) => number,
            Err(message) => {
                problems.push(&object, format!("ports[{i}].port"), message);
                continue;
            }
        };
        match parse_protocol(port.protocol.as_deref()) {
            Ok(protocol) => ports.push(SlicePort {
                name,
                protocol,
                port: number,
            }),
            Err(message) => problems.push(&object, format!("ports[{i}].protocol"), message),
        }
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let ip = match &endpoint.address {
            Address::Ip(ip) if Family::of(*ip) == family => *ip,
            Address::Ip(ip) => {
                problems.push(
                    &object,
                    format!("endpoints[{i}].addresses[0]"),
                    format!(
                        "{ip} is not an {} address (the slice's addressType)",
                        family.name()
                    ),
                );
                continue;
            }
            Address::Invalid(address) => {
                problems.push(
                    &object,
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{address:?} is not an IP address"),
                );
                continue;
            }
            Address::Missing => {
                problems.push(&object, format!("endpoints[{i}].addresses"), "empty");
                continue;
            }
        };
        let hints = endpoint.hints.as_deref();
        endpoints.push(Endpoint {
            ip,
            ready: endpoint.ready.unwrap_or(true),
            serving: endpoint.serving.unwrap_or(true),
            terminating: endpoint.terminating.unwrap_or(false),
            node_name: endpoint.node_name.as_deref(),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_deref())
                .unwrap_or_default(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_deref())
                .unwrap_or_default(),
        });
    }
    PreparedSlice {
        family,
        ports,
        endpoints,
    }
}

/// The endpoints of a service port in one family, sorted and
/// deduplicated by address and port across slices
/// (`EndpointSliceCache.addEndpoints`): of the copies of an address, in input
/// order, a later one replaces an earlier one unless it is terminating, so a
/// running pod wins over a terminating one that had the same IP.
pub(super) fn endpoints_for<'s, 'a>(
    slices: &[&'s PreparedSlice<'a>],
    family: Family,
    port: &Port<'_>,
) -> Vec<(SocketAddr, &'s Endpoint<'a>)> {
    let mut out: Vec<(SocketAddr, &Endpoint<'a>)> = Vec::new();
    for slice in slices.iter().filter(|slice| slice.family == family) {
        // Joined by port name and protocol (kube-proxy's ServicePortName).
        for slice_port in slice
            .ports
            .iter()
            .filter(|p| p.name == port.name && p.protocol == port.protocol)
        {
            out.extend(
                slice
                    .endpoints
                    .iter()
                    .map(|endpoint| (SocketAddr::new(endpoint.ip, slice_port.port), endpoint)),
            );
        }
    }
    // A stable sort keeps the input order among copies of an address.
    out.sort_by_key(|(address, _)| *address);
    out.dedup_by(|(address, later), (kept_address, kept)| {
        if address != kept_address {
            return false;
        }
        if !later.terminating {
            *kept = *later;
        }
        true
    });
    out
}
