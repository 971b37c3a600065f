//! Kubernetes objects -> desired state: a pure function, kube-proxy's rules.
//!
//! The reference is kube-proxy v1.33 (`pkg/proxy` in kubernetes/kubernetes):
//! which Services are proxied (`servicechangetracker.go`, `util.ShouldSkipService`,
//! and the label selector of kube-proxy's informers in
//! `cmd/kube-proxy/app/server.go`), how EndpointSlices are joined to service
//! ports and deduplicated (`endpointslicecache.go`), which endpoints are
//! usable (`topology.go`, `CategorizeEndpoints`) and the endpoint conditions
//! (`endpoint.go`). Comments below say where behaviour follows it and where
//! it deliberately does not.
//!
//! Only ClusterIP traffic is translated: NodePort and LoadBalancer Services
//! get their ClusterIP frontends, nothing else.
//!
//! A [`Problem`] means that an object, or one port or endpoint of it, was
//! skipped; everything else is still translated. The file source rejects a
//! file with any problem, the Kubernetes API source logs them as warnings.

use std::{
    collections::{HashMap, HashSet, hash_map},
    fmt,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::model::{Algorithm, DesiredState, Frontend, Protocol, ServiceEntry, ServicePortName};

/// Label joining an EndpointSlice to its Service (same namespace).
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

/// A Kubernetes object, for messages: `Service default/web`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    fn new(kind: &'static str, metadata: &ObjectMeta) -> Self {
        Self {
            kind,
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name: metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { kind, namespace, name } = self;
        write!(f, "{kind} {namespace}/{name}")
    }
}

/// Something skipped: `Service default/web: spec.clusterIPs[1]: "10.0.0.300" is not an IP address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectRef,
    /// Path of the offending field in the object (`spec.ports[0].port`);
    /// empty when the problem is with the object as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { object, field, message } = self;
        if field.is_empty() {
            write!(f, "{object}: {message}")
        } else {
            write!(f, "{object}: {field}: {message}")
        }
    }
}

/// Translates Services and EndpointSlices into the frontends this node
/// serves. Pure and linear in the size of the objects.
#[must_use]
pub fn translate(services: &[Service], slices: &[EndpointSlice], node: &NodeContext, opts: &Options) -> Translation {
    let mut problems = Problems::default();
    let mut index = SliceIndex::new(slices, opts, &mut problems);
    let mut state = State::default();
    let mut seen = HashSet::with_capacity(services.len());
    for service in services {
        translate_service(service, &mut index, node, opts, &mut seen, &mut state, &mut problems);
    }
    Translation { state: state.entries, problems: problems.0 }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, object: &ObjectRef, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { object: object.clone(), field: field.into(), message: message.into() });
    }
}

// ---------------------------------------------------------------------------
// Address families

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

fn parse_protocol(protocol: Option<&str>) -> Result<Protocol, String> {
    // The API server defaults an unset protocol to TCP (Service and EndpointSlice ports).
    match protocol {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!("unsupported protocol {other:?}: expected TCP, UDP or SCTP")),
    }
}

fn parse_port(port: i32) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("{port} is not a valid port number: expected 1 to 65535"))
}

/// A port name as the API server validates it (`IANA_SVC_NAME`): at most 15
/// lower-case letters, digits and non-adjacent inner hyphens, with a letter.
fn is_valid_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn label<'a>(metadata: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// Whether this proxy serves objects with these labels. kube-proxy watches
/// Services and EndpointSlices with the selector
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`;
/// an agent with a proxy name serves exactly the Services labelled with it.
fn wanted(metadata: &ObjectMeta, opts: &Options) -> bool {
    if label(metadata, LABEL_HEADLESS).is_some() {
        return false;
    }
    match (label(metadata, LABEL_SERVICE_PROXY_NAME), opts.service_proxy_name.as_deref()) {
        (None, None) => true,
        (Some(have), Some(want)) => have == want,
        (Some(_), None) | (None, Some(_)) => false,
    }
}

// ---------------------------------------------------------------------------
// EndpointSlices

/// One port of a slice: endpoints of the slice serve the service port of
/// this name and protocol on this port number.
struct SlicePort<'a> {
    name: &'a str,
    protocol: Protocol,
    port: u16,
}

/// An endpoint with kube-proxy's view of its conditions (`endpointslicecache.go`).
struct Endpoint<'a> {
    ip: IpAddr,
    /// `conditions.ready`, nil meaning true.
    ready: bool,
    /// `conditions.serving`, nil meaning true.
    serving: bool,
    /// `conditions.terminating`, nil meaning false.
    terminating: bool,
    node_name: Option<&'a str>,
    zone_hints: Vec<&'a str>,
    node_hints: Vec<&'a str>,
}

struct PreparedSlice<'a> {
    family: Family,
    ports: Vec<SlicePort<'a>>,
    endpoints: Vec<Endpoint<'a>>,
}

enum SliceState<'a> {
    /// Not looked at yet: only slices joined to a served Service are.
    Pending(Family),
    Prepared(PreparedSlice<'a>),
}

/// The EndpointSlices by Service, each validated once, when first needed.
struct SliceIndex<'a> {
    slices: &'a [EndpointSlice],
    states: Vec<Option<SliceState<'a>>>,
    by_service: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> SliceIndex<'a> {
    fn new(slices: &'a [EndpointSlice], opts: &Options, problems: &mut Problems) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<usize>> = HashMap::with_capacity(slices.len());
        let mut states = Vec::with_capacity(slices.len());
        let mut seen = HashSet::with_capacity(slices.len());
        for (index, slice) in slices.iter().enumerate() {
            states.push(None);
            let metadata = &slice.metadata;
            if !wanted(metadata, opts) {
                continue;
            }
            let object = ObjectRef::new("EndpointSlice", metadata);
            let (Some(namespace), Some(name)) = (non_empty(&metadata.namespace), non_empty(&metadata.name)) else {
                problems.push(&object, "metadata", "an EndpointSlice needs a name and a namespace");
                continue;
            };
            // kube-proxy cannot key a slice without this label (endpointSliceCacheKeys).
            let Some(service) = label(metadata, LABEL_SERVICE_NAME).filter(|s| !s.is_empty()) else {
                problems.push(
                    &object,
                    format!("metadata.labels[{LABEL_SERVICE_NAME:?}]"),
                    "missing: the label names the Service of the slice",
                );
                continue;
            };
            if !seen.insert((namespace, name)) {
                problems.push(&object, "", "duplicate EndpointSlice: the first one with this name is used");
                continue;
            }
            // kube-proxy's proxiers only take slices of their address family (one
            // proxier per family); FQDN slices have no meaning for proxies.
            let family = match slice.address_type.as_str() {
                "IPv4" => Family::V4,
                "IPv6" => Family::V6,
                "FQDN" => continue,
                other => {
                    problems.push(&object, "addressType", format!("unsupported address type {other:?}: expected IPv4, IPv6 or FQDN"));
                    continue;
                }
            };
            states[index] = Some(SliceState::Pending(family));
            by_service.entry((namespace, service)).or_default().push(index);
        }
        Self { slices, states, by_service }
    }

    /// The usable slices of a Service, validated (once) now.
    fn for_service(&mut self, namespace: &str, name: &str, problems: &mut Problems) -> Vec<&PreparedSlice<'a>> {
        let Some(indexes) = self.by_service.get(&(namespace, name)) else {
            return Vec::new();
        };
        for &index in indexes {
            if let (Some(state), Some(slice)) = (self.states.get_mut(index), self.slices.get(index))
                && let Some(SliceState::Pending(family)) = state
            {
                *state = Some(SliceState::Prepared(prepare_slice(slice, *family, problems)));
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

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn prepare_slice<'a>(slice: &'a EndpointSlice, family: Family, problems: &mut Problems) -> PreparedSlice<'a> {
    let object = ObjectRef::new("EndpointSlice", &slice.metadata);
    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        // kube-proxy ignores (and logs) ports without a name or number.
        let Some(name) = port.name.as_deref() else {
            problems.push(&object, format!("ports[{i}].name"), "missing (the port of an unnamed service port is named \"\")");
            continue;
        };
        let number = match port.port.ok_or_else(|| "missing".to_owned()).and_then(parse_port) {
            Ok(number) => number,
            Err(message) => {
                problems.push(&object, format!("ports[{i}].port"), message);
                continue;
            }
        };
        match parse_protocol(port.protocol.as_deref()) {
            Ok(protocol) => ports.push(SlicePort { name, protocol, port: number }),
            Err(message) => problems.push(&object, format!("ports[{i}].protocol"), message),
        }
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        // Only the first address is used, as kube-proxy does.
        let Some(address) = endpoint.addresses.first() else {
            problems.push(&object, format!("endpoints[{i}].addresses"), "empty");
            continue;
        };
        let ip = match address.parse::<IpAddr>() {
            Ok(ip) if Family::of(ip) == family => ip,
            Ok(_) => {
                problems.push(
                    &object,
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{address} is not an {} address (the slice's addressType)", family.name()),
                );
                continue;
            }
            Err(_) => {
                problems.push(&object, format!("endpoints[{i}].addresses[0]"), format!("{address:?} is not an IP address"));
                continue;
            }
        };
        let conditions = endpoint.conditions.as_ref();
        let hints = endpoint.hints.as_ref();
        endpoints.push(Endpoint {
            ip,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name: endpoint.node_name.as_deref(),
            zone_hints: hints.and_then(|h| h.for_zones.as_ref()).into_iter().flatten().map(|z| z.name.as_str()).collect(),
            node_hints: hints.and_then(|h| h.for_nodes.as_ref()).into_iter().flatten().map(|n| n.name.as_str()).collect(),
        });
    }
    PreparedSlice { family, ports, endpoints }
}

// ---------------------------------------------------------------------------
// Services

/// The desired state being built, and which port of which Service each
/// frontend came from (to name the loser of a conflict).
#[derive(Default)]
struct State {
    entries: DesiredState,
    origins: HashMap<Frontend, usize>,
}

/// A port of a Service, validated.
struct Port<'a> {
    index: usize,
    name: &'a str,
    protocol: Protocol,
    port: u16,
}

/// Everything about a Service that applies to all its frontends.
struct Settings {
    algorithm: Algorithm,
    affinity_timeout_s: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    local: bool,
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
    let object = ObjectRef::new("Service", metadata);
    let (Some(namespace), Some(name)) = (non_empty(&metadata.namespace), non_empty(&metadata.name)) else {
        problems.push(&object, "metadata", "a Service needs a name and a namespace");
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
            let message = format!("unsupported type {other:?}: expected ClusterIP, NodePort, LoadBalancer or ExternalName");
            problems.push(&object, "spec.type", message);
            return;
        }
    }
    let Some(cluster_ips) = cluster_ips(spec, &object, problems) else {
        return; // Headless or no ClusterIP: not proxied (util.ShouldSkipService).
    };
    if !seen.insert((namespace, name)) {
        problems.push(&object, "", "duplicate Service: the first one with this name is used");
        return;
    }
    let Some(settings) = settings(metadata, spec, &object, opts, problems) else {
        return;
    };
    let ports = ports(spec, &object, problems);
    if cluster_ips.is_empty() || ports.is_empty() {
        return;
    }
    let slices = index.for_service(namespace, name, problems);
    for port in &ports {
        for &cluster_ip in &cluster_ips {
            let family = Family::of(cluster_ip);
            let endpoints = endpoints_for(&slices, family, port);
            let backends = usable_backends(&endpoints, settings.local, node, PREFER_SAME_NODE);
            let frontend = Frontend { ip: cluster_ip, port: port.port, protocol: port.protocol };
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

/// The ClusterIPs, one per family: `spec.clusterIPs`, or `spec.clusterIP`
/// without it. `None` when the Service is headless or has no ClusterIP.
fn cluster_ips(spec: &ServiceSpec, object: &ObjectRef, problems: &mut Problems) -> Option<Vec<IpAddr>> {
    let (field, ips): (&str, Vec<&str>) = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips.iter().map(String::as_str).collect()),
        _ => ("spec.clusterIP", spec.cluster_ip.as_deref().into_iter().collect()),
    };
    match ips.first() {
        None | Some(&("" | "None")) => return None,
        Some(_) => {}
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for (i, text) in ips.iter().enumerate() {
        let field = if field == "spec.clusterIPs" { format!("{field}[{i}]") } else { field.to_owned() };
        match text.parse::<IpAddr>() {
            Ok(ip) if out.iter().any(|&other| Family::of(other) == Family::of(ip)) => problems.push(
                object,
                field,
                format!("a second {} ClusterIP ({ip}): a Service has at most one per family", Family::of(ip).name()),
            ),
            Ok(ip) => out.push(ip),
            Err(_) => problems.push(object, field, format!("{text:?} is not an IP address")),
        }
    }
    Some(out)
}

fn settings(
    metadata: &ObjectMeta,
    spec: &ServiceSpec,
    object: &ObjectRef,
    opts: &Options,
    problems: &mut Problems,
) -> Option<Settings> {
    let algorithm = match metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_ALGORITHM)) {
        None => opts.default_algorithm,
        Some(value) => match value.parse::<Algorithm>() {
            Ok(algorithm) => algorithm,
            Err(error) => {
                problems.push(object, format!("metadata.annotations[{ANNOTATION_ALGORITHM:?}]"), error.to_string());
                return None;
            }
        },
    };
    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
            match timeout.map(u32::try_from) {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_S),
                Some(Ok(timeout @ 1..=MAX_AFFINITY_TIMEOUT_S)) => Some(timeout),
                Some(_) => {
                    problems.push(
                        object,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{} is out of range: expected 1 to {MAX_AFFINITY_TIMEOUT_S} seconds", timeout.unwrap_or_default()),
                    );
                    return None;
                }
            }
        }
        Some(other) => {
            problems.push(object, "spec.sessionAffinity", format!("unsupported value {other:?}: expected None or ClientIP"));
            return None;
        }
    };
    let local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            problems.push(object, "spec.internalTrafficPolicy", format!("unsupported value {other:?}: expected Cluster or Local"));
            return None;
        }
    };
    Some(Settings { algorithm, affinity_timeout_s, local })
}

/// The valid ports; each invalid one is a problem and skipped.
fn ports<'a>(spec: &'a ServiceSpec, object: &ObjectRef, problems: &mut Problems) -> Vec<Port<'a>> {
    let mut out: Vec<Port<'a>> = Vec::new();
    for (index, port) in spec.ports.iter().flatten().enumerate() {
        let ServicePort { name, port: number, protocol, target_port, app_protocol: _, node_port: _ } = port;
        let field = |leaf: &str| format!("spec.ports[{index}]{leaf}");
        let protocol = match parse_protocol(protocol.as_deref()) {
            Ok(protocol) => protocol,
            Err(message) => {
                problems.push(object, field(".protocol"), message);
                continue;
            }
        };
        let number = match parse_port(*number) {
            Ok(number) => number,
            Err(message) => {
                problems.push(object, field(".port"), message);
                continue;
            }
        };
        // The backend port is the EndpointSlice's (that is how a named
        // targetPort resolves), but a targetPort the API server would reject
        // is still a mistake worth reporting.
        match target_port {
            None => {}
            Some(IntOrString::Int(target)) => {
                if let Err(message) = parse_port(*target) {
                    problems.push(object, field(".targetPort"), message);
                    continue;
                }
            }
            Some(IntOrString::String(target)) => {
                if !is_valid_port_name(target) {
                    let message = format!(
                        "{target:?} is neither a port number nor a port name (at most 15 lower-case letters, digits and inner hyphens)"
                    );
                    problems.push(object, field(".targetPort"), message);
                    continue;
                }
            }
        }
        let name = name.as_deref().unwrap_or_default();
        if out.iter().any(|other| other.name == name && other.protocol == protocol) {
            problems.push(object, field(""), format!("a second {protocol} port named {name:?}: port names must be unique"));
            continue;
        }
        out.push(Port { index, name, protocol, port: number });
    }
    out
}

/// The endpoints of a service port in one family, deduplicated by address
/// and port across slices (`EndpointSliceCache.addEndpoints`): a later
/// endpoint replaces an earlier one unless it is terminating, so a running
/// pod wins over a terminating one that had the same IP.
fn endpoints_for<'s, 'a>(slices: &[&'s PreparedSlice<'a>], family: Family, port: &Port<'_>) -> Vec<(SocketAddr, &'s Endpoint<'a>)> {
    let mut out: Vec<(SocketAddr, &Endpoint<'a>)> = Vec::new();
    let mut positions: HashMap<SocketAddr, usize> = HashMap::new();
    for slice in slices.iter().filter(|slice| slice.family == family) {
        // Joined by port name and protocol (kube-proxy's ServicePortName).
        for slice_port in slice.ports.iter().filter(|p| p.name == port.name && p.protocol == port.protocol) {
            for endpoint in &slice.endpoints {
                let address = SocketAddr::new(endpoint.ip, slice_port.port);
                match positions.entry(address) {
                    hash_map::Entry::Vacant(vacant) => {
                        vacant.insert(out.len());
                        out.push((address, endpoint));
                    }
                    hash_map::Entry::Occupied(occupied) => {
                        if !endpoint.terminating
                            && let Some(slot) = out.get_mut(*occupied.get())
                        {
                            slot.1 = endpoint;
                        }
                    }
                }
            }
        }
    }
    out
}

/// kube-proxy's topology mode (`topologyModeFromHints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every ready endpoint.
    All,
    /// Only endpoints hinted for this node (`PreferSameNode`).
    SameNode,
    /// Only endpoints hinted for this node's zone (`PreferSameZone`).
    SameZone,
}

/// Topology hints are used only when every ready endpoint has one and at
/// least one names this node (or zone); otherwise they are ignored.
fn topology(endpoints: &[(SocketAddr, &Endpoint<'_>)], node: &NodeContext, prefer_same_node: bool) -> Topology {
    let node_name = node.node_name.as_deref().unwrap_or_default();
    let zone = node.zone.as_deref().unwrap_or_default();
    let mut any_ready = false;
    let (mut all_node_hints, mut for_node) = (true, false);
    let (mut all_zone_hints, mut for_zone) = (true, false);
    for (_, endpoint) in endpoints.iter().filter(|(_, e)| e.ready) {
        any_ready = true;
        if endpoint.node_hints.is_empty() {
            all_node_hints = false;
        } else if endpoint.node_hints.contains(&node_name) {
            for_node = true;
        }
        if endpoint.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if endpoint.zone_hints.contains(&zone) {
            for_zone = true;
        }
    }
    if !any_ready {
        Topology::All
    } else if prefer_same_node && all_node_hints && for_node {
        Topology::SameNode
    } else if all_zone_hints && for_zone {
        Topology::SameZone
    } else {
        Topology::All
    }
}

/// The backends of a frontend (`CategorizeEndpoints`): ready endpoints
/// (local ones for `internalTrafficPolicy: Local`, else those the topology
/// allows), or when there is none, the serving and terminating ones.
/// Sorted; empty means the service refuses connections.
fn usable_backends(
    endpoints: &[(SocketAddr, &Endpoint<'_>)],
    local: bool,
    node: &NodeContext,
    prefer_same_node: bool,
) -> Vec<SocketAddr> {
    let pick = |keep: &dyn Fn(&Endpoint<'_>) -> bool| -> Vec<SocketAddr> {
        endpoints.iter().filter(|(_, e)| keep(e)).map(|(address, _)| *address).collect()
    };
    let fallback = |e: &Endpoint<'_>| e.serving && e.terminating;
    let mut backends = if local {
        // An endpoint is local when its nodeName is this node's (never when
        // the node's name is unknown). Topology does not apply.
        let node_name = node.node_name.as_deref().filter(|n| !n.is_empty());
        let is_local = |e: &Endpoint<'_>| node_name.is_some() && e.node_name == node_name;
        let ready = pick(&|e| is_local(e) && e.ready);
        if ready.is_empty() { pick(&|e| is_local(e) && fallback(e)) } else { ready }
    } else {
        let mode = topology(endpoints, node, prefer_same_node);
        let node_name = node.node_name.as_deref().unwrap_or_default();
        let zone = node.zone.as_deref().unwrap_or_default();
        let allowed = |e: &Endpoint<'_>| match mode {
            Topology::All => true,
            Topology::SameNode => e.node_hints.contains(&node_name),
            Topology::SameZone => e.zone_hints.contains(&zone),
        };
        let ready = pick(&|e| e.ready && allowed(e));
        // No ready endpoint anywhere (the topology would have been ignored
        // otherwise): fall back, without topology.
        if ready.is_empty() { pick(&fallback) } else { ready }
    };
    backends.sort_unstable();
    backends.dedup();
    backends
}

/// Adds a frontend. Two Services cannot share one: the one with the smaller
/// name keeps it, whatever the input order (every node decides alike), and
/// the other's port is a problem.
fn insert(state: &mut State, frontend: Frontend, entry: ServiceEntry, port_index: usize, problems: &mut Problems) {
    let loser = match state.entries.get(&frontend) {
        None => None,
        Some(existing) if existing.name <= entry.name => Some((entry.name.clone(), port_index, existing.name.clone())),
        Some(existing) => {
            let existing_index = state.origins.get(&frontend).copied().unwrap_or_default();
            Some((existing.name.clone(), existing_index, entry.name.clone()))
        }
    };
    if let Some((loser, loser_index, winner)) = &loser {
        let object = ObjectRef { kind: "Service", namespace: loser.namespace.clone(), name: loser.name.clone() };
        problems.push(
            &object,
            format!("spec.ports[{loser_index}]"),
            format!("{frontend} is also a frontend of {winner}, which keeps it"),
        );
        if *loser == entry.name {
            return;
        }
    }
    state.origins.insert(frontend, port_index);
    state.entries.insert(frontend, entry);
}
