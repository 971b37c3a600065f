//! Kubernetes objects -> desired state: a pure function, kube-proxy's rules.
//!
//! The reference is kube-proxy v1.33 (`pkg/proxy` in kubernetes/kubernetes):
//! which Services are proxied (`servicechangetracker.go`, `util.ShouldSkipService`,
//! and the label selector of kube-proxy's informers in
//! `cmd/kube-proxy/app/server.go`), how `EndpointSlices` are joined to service
//! ports and deduplicated (`endpointslicecache.go`), which endpoints are
//! usable (`topology.go`, `CategorizeEndpoints`) and the endpoint conditions
//! (`endpoint.go`). Comments below say where behaviour follows it and where
//! it deliberately does not.
//!
//! Only `ClusterIP` traffic is translated: `NodePort` and `LoadBalancer` Services
//! get their `ClusterIP` frontends, nothing else.
//!
//! A [`Problem`] means that an object, or one port or endpoint of it, was
//! skipped; everything else is still translated. The file source rejects a
//! file with any problem, the Kubernetes API source logs them as warnings.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{EndpointSlice, ForNode, ForZone},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::model::{
    Algorithm, DesiredState, Frontend, Printable, Protocol, ServiceEntry, ServicePortName,
};

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

#[cfg(test)]
pub(crate) mod testing;

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
        let Self {
            kind,
            namespace,
            name,
        } = self;
        write!(f, "{kind} {}/{}", Printable(namespace), Printable(name))
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
        let Self {
            object,
            field,
            message,
        } = self;
        if field.is_empty() {
            write!(f, "{object}: {message}")
        } else {
            write!(f, "{object}: {field}: {message}")
        }
    }
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

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, object: &Obj<'_>, field: impl Into<String>, message: impl Into<String>) {
        self.push_ref(ObjectRef::new(object.kind, object.metadata), field, message);
    }

    fn push_ref(
        &mut self,
        object: ObjectRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(Problem {
            object,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// The object being translated, named (allocated) only for a problem.
#[derive(Clone, Copy)]
struct Obj<'a> {
    kind: &'static str,
    metadata: &'a ObjectMeta,
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
        Some(other) => Err(format!(
            "unsupported protocol {other:?}: expected TCP, UDP or SCTP"
        )),
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
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn label<'a>(metadata: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// Whether this proxy serves objects with these labels. kube-proxy watches
/// Services and `EndpointSlices` with the selector
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`;
/// an agent with a proxy name serves exactly the Services labelled with it.
fn wanted(metadata: &ObjectMeta, opts: &Options) -> bool {
    if label(metadata, LABEL_HEADLESS).is_some() {
        return false;
    }
    match (
        label(metadata, LABEL_SERVICE_PROXY_NAME),
        opts.service_proxy_name.as_deref(),
    ) {
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
    /// `hints.forZones`, empty without hints.
    zone_hints: &'a [ForZone],
    /// `hints.forNodes`, empty without hints.
    node_hints: &'a [ForNode],
}

impl Endpoint<'_> {
    fn hinted_for_zone(&self, zone: &str) -> bool {
        self.zone_hints.iter().any(|hint| hint.name == zone)
    }

    fn hinted_for_node(&self, node_name: &str) -> bool {
        self.node_hints.iter().any(|hint| hint.name == node_name)
    }
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

/// The `EndpointSlices` by Service, each validated once, when first needed.
struct SliceIndex<'a> {
    slices: &'a [&'a EndpointSlice],
    states: Vec<Option<SliceState<'a>>>,
    by_service: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> SliceIndex<'a> {
    fn new(slices: &'a [&'a EndpointSlice], opts: &Options, problems: &mut Problems) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<usize>> =
            HashMap::with_capacity(slices.len());
        let mut states = Vec::with_capacity(slices.len());
        let mut seen = HashSet::with_capacity(slices.len());
        for (index, slice) in slices.iter().enumerate() {
            states.push(None);
            let metadata = &slice.metadata;
            if !wanted(metadata, opts) {
                continue;
            }
            let object = Obj {
                kind: "EndpointSlice",
                metadata,
            };
            let (Some(namespace), Some(name)) = (
                non_empty(metadata.namespace.as_deref()),
                non_empty(metadata.name.as_deref()),
            ) else {
                problems.push(
                    &object,
                    "metadata",
                    "an EndpointSlice needs a name and a namespace",
                );
                continue;
            };
            // kube-proxy cannot key a slice without this label (endpointSliceCacheKeys).
            let Some(service) = label(metadata, LABEL_SERVICE_NAME).filter(|s| !s.is_empty())
            else {
                problems.push(
                    &object,
                    format!("metadata.labels[{LABEL_SERVICE_NAME:?}]"),
                    "missing: the label names the Service of the slice",
                );
                continue;
            };
            if !seen.insert((namespace, name)) {
                problems.push(
                    &object,
                    "",
                    "duplicate EndpointSlice: the first one with this name is used",
                );
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
    fn for_service(
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

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn prepare_slice<'a>(
    slice: &'a EndpointSlice,
    family: Family,
    problems: &mut Problems,
) -> PreparedSlice<'a> {
    let object = Obj {
        kind: "EndpointSlice",
        metadata: &slice.metadata,
    };
    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
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
                    format!(
                        "{address} is not an {} address (the slice's addressType)",
                        family.name()
                    ),
                );
                continue;
            }
            Err(_) => {
                problems.push(
                    &object,
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{address:?} is not an IP address"),
                );
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
    number: u16,
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
    let object = Obj {
        kind: "Service",
        metadata,
    };
    let (Some(namespace), Some(name)) = (
        non_empty(metadata.namespace.as_deref()),
        non_empty(metadata.name.as_deref()),
    ) else {
        problems.push(
            &object,
            "metadata",
            "a Service needs a name and a namespace",
        );
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
    if !seen.insert((namespace, name)) {
        problems.push(
            &object,
            "",
            "duplicate Service: the first one with this name is used",
        );
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

/// The `ClusterIP`s, at most one per family (IPv4, IPv6): `spec.clusterIPs`,
/// or `spec.clusterIP` without it. `None` when the Service is headless or
/// has no `ClusterIP`.
fn cluster_ips(
    spec: &ServiceSpec,
    object: &Obj<'_>,
    problems: &mut Problems,
) -> Option<[Option<IpAddr>; 2]> {
    let (list, ips) = match (spec.cluster_ips.as_deref(), spec.cluster_ip.as_ref()) {
        (Some(ips), _) if !ips.is_empty() => (true, ips),
        (_, Some(ip)) => (false, std::slice::from_ref(ip)),
        _ => return None,
    };
    match ips.first().map(String::as_str) {
        None | Some("" | "None") => return None,
        Some(_) => {}
    }
    let mut out = [None, None];
    for (i, text) in ips.iter().enumerate() {
        let field = || {
            if list {
                format!("spec.clusterIPs[{i}]")
            } else {
                "spec.clusterIP".to_owned()
            }
        };
        let Ok(ip) = text.parse::<IpAddr>() else {
            problems.push(object, field(), format!("{text:?} is not an IP address"));
            continue;
        };
        let [v4, v6] = &mut out;
        let slot = match Family::of(ip) {
            Family::V4 => v4,
            Family::V6 => v6,
        };
        if slot.is_some() {
            let message = format!(
                "a second {} ClusterIP ({ip}): a Service has at most one per family",
                Family::of(ip).name()
            );
            problems.push(object, field(), message);
        } else {
            *slot = Some(ip);
        }
    }
    Some(out)
}

fn settings(
    metadata: &ObjectMeta,
    spec: &ServiceSpec,
    object: &Obj<'_>,
    opts: &Options,
    problems: &mut Problems,
) -> Option<Settings> {
    let algorithm = match metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_ALGORITHM))
    {
        None => opts.default_algorithm,
        Some(value) => match value.parse::<Algorithm>() {
            Ok(algorithm) => algorithm,
            Err(error) => {
                problems.push(
                    object,
                    format!("metadata.annotations[{ANNOTATION_ALGORITHM:?}]"),
                    error.to_string(),
                );
                return None;
            }
        },
    };
    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout.map(u32::try_from) {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_S),
                Some(Ok(timeout @ 1..=MAX_AFFINITY_TIMEOUT_S)) => Some(timeout),
                Some(_) => {
                    problems.push(
                        object,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!(
                            "{} is out of range: expected 1 to {MAX_AFFINITY_TIMEOUT_S} seconds",
                            timeout.unwrap_or_default()
                        ),
                    );
                    return None;
                }
            }
        }
        Some(other) => {
            problems.push(
                object,
                "spec.sessionAffinity",
                format!("unsupported value {other:?}: expected None or ClientIP"),
            );
            return None;
        }
    };
    let local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            problems.push(
                object,
                "spec.internalTrafficPolicy",
                format!("unsupported value {other:?}: expected Cluster or Local"),
            );
            return None;
        }
    };
    Some(Settings {
        algorithm,
        affinity_timeout_s,
        local,
    })
}

/// The valid ports; each invalid one is a problem and skipped.
fn ports<'a>(spec: &'a ServiceSpec, object: &Obj<'_>, problems: &mut Problems) -> Vec<Port<'a>> {
    let mut out: Vec<Port<'a>> = Vec::new();
    for (index, port) in spec.ports.iter().flatten().enumerate() {
        let ServicePort {
            name,
            port: number,
            protocol,
            target_port,
            app_protocol: _,
            node_port: _,
        } = port;
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
        // The backend port is the `EndpointSlice`'s (that is how a named
        // targetPort resolves), but a targetPort the API server would reject
        // is still a mistake worth reporting.
        if let Err(message) = check_target_port(target_port.as_ref()) {
            problems.push(object, field(".targetPort"), message);
            continue;
        }
        let name = name.as_deref().unwrap_or_default();
        if out
            .iter()
            .any(|other| other.name == name && other.protocol == protocol)
        {
            problems.push(
                object,
                field(""),
                format!("a second {protocol} port named {name:?}: port names must be unique"),
            );
            continue;
        }
        out.push(Port {
            index,
            name,
            protocol,
            number,
        });
    }
    out
}

/// A targetPort is a port number or an `IANA_SVC_NAME` port name.
fn check_target_port(target: Option<&IntOrString>) -> Result<(), String> {
    match target {
        None => Ok(()),
        Some(IntOrString::Int(number)) => parse_port(*number).map(drop),
        Some(IntOrString::String(name)) if is_valid_port_name(name) => Ok(()),
        Some(IntOrString::String(name)) => Err(format!(
            "{name:?} is neither a port number nor a port name (at most 15 lower-case letters, digits and inner hyphens)"
        )),
    }
}

/// The endpoints of a service port in one family, sorted and
/// deduplicated by address and port across slices
/// (`EndpointSliceCache.addEndpoints`): of the copies of an address, in input
/// order, a later one replaces an earlier one unless it is terminating, so a
/// running pod wins over a terminating one that had the same IP.
fn endpoints_for<'s, 'a>(
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
fn topology(
    endpoints: &[(SocketAddr, &Endpoint<'_>)],
    node: &NodeContext,
    prefer_same_node: bool,
) -> Topology {
    let node_name = node.node_name.as_deref().unwrap_or_default();
    let zone = node.zone.as_deref().unwrap_or_default();
    let mut any_ready = false;
    let (mut all_node_hints, mut for_node) = (true, false);
    let (mut all_zone_hints, mut for_zone) = (true, false);
    for (_, endpoint) in endpoints.iter().filter(|(_, e)| e.ready) {
        any_ready = true;
        if endpoint.node_hints.is_empty() {
            all_node_hints = false;
        } else if endpoint.hinted_for_node(node_name) {
            for_node = true;
        }
        if endpoint.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if endpoint.hinted_for_zone(zone) {
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
        endpoints
            .iter()
            .filter(|(_, e)| keep(e))
            .map(|(address, _)| *address)
            .collect()
    };
    let fallback = |e: &Endpoint<'_>| e.serving && e.terminating;
    let mut backends = if local {
        // An endpoint is local when its nodeName is this node's (never when
        // the node's name is unknown). Topology does not apply.
        let node_name = node.node_name.as_deref().filter(|n| !n.is_empty());
        let is_local = |e: &Endpoint<'_>| node_name.is_some() && e.node_name == node_name;
        let ready = pick(&|e| is_local(e) && e.ready);
        if ready.is_empty() {
            pick(&|e| is_local(e) && fallback(e))
        } else {
            ready
        }
    } else {
        let mode = topology(endpoints, node, prefer_same_node);
        let node_name = node.node_name.as_deref().unwrap_or_default();
        let zone = node.zone.as_deref().unwrap_or_default();
        let allowed = |e: &Endpoint<'_>| match mode {
            Topology::All => true,
            Topology::SameNode => e.hinted_for_node(node_name),
            Topology::SameZone => e.hinted_for_zone(zone),
        };
        let ready = pick(&|e| e.ready && allowed(e));
        // No ready endpoint anywhere (the topology would have been ignored
        // otherwise): fall back, without topology.
        if ready.is_empty() {
            pick(&fallback)
        } else {
            ready
        }
    };
    backends.sort_unstable();
    backends.dedup();
    backends
}

/// Adds a frontend. Two Services cannot share one: the one with the smaller
/// name keeps it, whatever the input order (every node decides alike), and
/// the other's port is a problem.
fn insert(
    state: &mut State,
    frontend: Frontend,
    entry: ServiceEntry,
    port_index: usize,
    problems: &mut Problems,
) {
    let loser = match state.entries.get(&frontend) {
        None => None,
        Some(existing) if existing.name <= entry.name => {
            Some((entry.name.clone(), port_index, existing.name.clone()))
        }
        Some(existing) => {
            let existing_index = state.origins.get(&frontend).copied().unwrap_or_default();
            Some((existing.name.clone(), existing_index, entry.name.clone()))
        }
    };
    if let Some((loser, loser_index, winner)) = &loser {
        let object = ObjectRef {
            kind: "Service",
            namespace: loser.namespace.clone(),
            name: loser.name.clone(),
        };
        problems.push_ref(
            object,
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{
        testing::{
            EndpointBuilder, Metadata as _, ServiceBuilder, SliceBuilder, SlicePortBuilder,
            endpoint, endpoint_at, port, ready, service, slice, slice_port,
        },
        *,
    };

    fn node(name: Option<&str>, zone: Option<&str>) -> NodeContext {
        NodeContext {
            node_name: name.map(str::to_owned),
            zone: zone.map(str::to_owned),
        }
    }

    fn run_with(
        services: &[ServiceBuilder],
        slices: &[SliceBuilder],
        node: &NodeContext,
        opts: &Options,
    ) -> Translation {
        let services: Vec<Service> = services
            .iter()
            .cloned()
            .map(ServiceBuilder::build)
            .collect();
        let slices: Vec<EndpointSlice> = slices.iter().cloned().map(SliceBuilder::build).collect();
        translate(&services, &slices, node, opts)
    }

    fn run(services: &[ServiceBuilder], slices: &[SliceBuilder]) -> Translation {
        run_with(
            services,
            slices,
            &node(Some("node-1"), Some("zone-a")),
            &Options::default(),
        )
    }

    /// `web`: 10.0.0.1, port `http` 80 to the target port named `http`.
    fn web() -> ServiceBuilder {
        service("web")
            .cluster_ip("10.0.0.1")
            .port(port(80).name("http").target_name("http"))
    }

    /// The slice port `http`, 8080.
    fn http() -> SlicePortBuilder {
        slice_port(8080).name("http")
    }

    /// A slice of `web` with the port `http` and these endpoints.
    fn web_slice(name: &str, endpoints: impl IntoIterator<Item = EndpointBuilder>) -> SliceBuilder {
        slice(name, "web").port(http()).endpoints(endpoints)
    }

    /// The frontends, as `ip:port/PROTO`.
    fn frontends(t: &Translation) -> Vec<String> {
        t.state.keys().map(ToString::to_string).collect()
    }

    /// The backends of a frontend given as `ip:port/PROTO`.
    fn backends(t: &Translation, frontend: &str) -> Vec<String> {
        entry(t, frontend)
            .backends
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[track_caller]
    fn entry<'a>(t: &'a Translation, frontend: &str) -> &'a ServiceEntry {
        let Some((_, entry)) = t.state.iter().find(|(f, _)| f.to_string() == frontend) else {
            panic!("no frontend {frontend} in {:?}", frontends(t));
        };
        entry
    }

    fn problems(t: &Translation) -> Vec<String> {
        t.problems.iter().map(ToString::to_string).collect()
    }

    #[track_caller]
    fn assert_clean(t: &Translation) {
        assert_eq!(problems(t), Vec::<String>::new());
    }

    #[test]
    fn target_port_by_name_resolves_through_the_slice_port() {
        let services = [service("web")
            .cluster_ip("10.0.0.1")
            .port(port(80).name("http").target_name("web"))
            .port(port(81).name("admin").target(9000))];
        let slices = [slice("web-1", "web")
            .port(slice_port(9000).name("admin"))
            .port(http())
            .endpoints([ready("10.1.0.2"), ready("10.1.0.1")])];
        let t = run(&services, &slices);
        assert_clean(&t);
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.2:8080"]
        );
        assert_eq!(
            backends(&t, "10.0.0.1:81/TCP"),
            ["10.1.0.1:9000", "10.1.0.2:9000"]
        );
        let entry = entry(&t, "10.0.0.1:80/TCP");
        assert_eq!(entry.name.to_string(), "default/web:http");
        assert_eq!(
            (entry.algorithm, entry.affinity_timeout_s),
            (Algorithm::Random, None)
        );
    }

    #[test]
    fn unnamed_port_joins_the_unnamed_slice_port() {
        let services = [service("web").cluster_ip("10.0.0.1").port(port(80))];
        let slices = [slice("web-1", "web")
            .port(slice_port(8080).name(""))
            .endpoint(ready("10.1.0.1"))];
        let t = run(&services, &slices);
        assert_clean(&t);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
        assert_eq!(entry(&t, "10.0.0.1:80/TCP").name.to_string(), "default/web");
    }

    #[test]
    fn service_without_endpoints_refuses() {
        let t = run(&[web()], &[]);
        assert_clean(&t);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), Vec::<String>::new());
    }

    #[test]
    fn dual_stack_programs_each_family_from_its_slices() {
        let services = [service("web")
            .cluster_ip("10.0.0.1")
            .cluster_ips(&["10.0.0.1", "fd00::1"])
            .ip_families(&["IPv4", "IPv6"])
            .port(port(80).name("http"))];
        let slices = [
            web_slice("web-v4", [ready("10.1.0.1")]),
            web_slice("web-v6", [ready("fd00:1::1"), ready("fd00:1::2")]).address_type("IPv6"),
        ];
        let t = run(&services, &slices);
        assert_clean(&t);
        assert_eq!(frontends(&t), ["10.0.0.1:80/TCP", "[fd00::1]:80/TCP"]);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
        assert_eq!(
            backends(&t, "[fd00::1]:80/TCP"),
            ["[fd00:1::1]:8080", "[fd00:1::2]:8080"]
        );
    }

    #[test]
    fn single_cluster_ip_without_cluster_ips() {
        let services = [service("web")
            .cluster_ip("fd00::5")
            .port(port(80).name("http"))];
        let slices = [
            web_slice("web-v6", [ready("fd00:1::1")]).address_type("IPv6"),
            web_slice("web-v4", [ready("10.1.0.1")]),
        ];
        let t = run(&services, &slices);
        assert_clean(&t);
        assert_eq!(frontends(&t), ["[fd00::5]:80/TCP"]);
        assert_eq!(backends(&t, "[fd00::5]:80/TCP"), ["[fd00:1::1]:8080"]);
    }

    #[test]
    fn tcp_udp_and_sctp_are_distinct_frontends() {
        let services = [service("dns")
            .cluster_ip("10.0.0.10")
            .port(port(53).name("dns").protocol("UDP"))
            .port(port(53).name("dns-tcp").protocol("TCP"))
            .port(port(9).name("sig").protocol("SCTP"))];
        let slices = [slice("dns-1", "dns")
            .port(slice_port(5353).name("dns").protocol("UDP"))
            .port(slice_port(5354).name("dns-tcp").protocol("TCP"))
            .port(slice_port(9999).name("sig").protocol("SCTP"))
            .endpoint(ready("10.1.0.1"))];
        let t = run(&services, &slices);
        assert_clean(&t);
        assert_eq!(
            frontends(&t),
            ["10.0.0.10:9/SCTP", "10.0.0.10:53/TCP", "10.0.0.10:53/UDP"]
        );
        assert_eq!(backends(&t, "10.0.0.10:53/UDP"), ["10.1.0.1:5353"]);
        assert_eq!(backends(&t, "10.0.0.10:53/TCP"), ["10.1.0.1:5354"]);
        assert_eq!(backends(&t, "10.0.0.10:9/SCTP"), ["10.1.0.1:9999"]);
    }

    #[test]
    fn slice_port_of_another_protocol_is_not_joined() {
        let services = [service("dns")
            .cluster_ip("10.0.0.10")
            .port(port(53).name("dns").protocol("UDP"))];
        let slices = [slice("dns-1", "dns")
            .port(slice_port(53).name("dns").protocol("TCP"))
            .endpoint(ready("10.1.0.1"))];
        let t = run(&services, &slices);
        assert_clean(&t);
        assert_eq!(backends(&t, "10.0.0.10:53/UDP"), Vec::<String>::new());
    }

    #[test]
    fn fqdn_slices_are_ignored() {
        let slices = [
            web_slice("web-fqdn", [endpoint("example.com")]).address_type("FQDN"),
            web_slice("web-v4", [ready("10.1.0.1")]),
        ];
        let t = run(&[web()], &slices);
        assert_clean(&t);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
    }

    #[test]
    fn slices_of_the_other_family_are_ignored() {
        let slices = [web_slice("web-v6", [ready("fd00:1::1")]).address_type("IPv6")];
        let t = run(&[web()], &slices);
        assert_clean(&t);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), Vec::<String>::new());
    }

    #[test]
    fn slices_join_by_label_in_the_same_namespace_only() {
        let slices = [
            web_slice("web-1", [ready("10.1.0.9")]).namespace("other"),
            slice("api-1", "api")
                .port(http())
                .endpoint(ready("10.1.0.8")),
        ];
        let t = run(&[web()], &slices);
        assert_clean(&t);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), Vec::<String>::new());
    }

    #[test]
    fn endpoints_of_several_slices_are_merged_and_deduplicated() {
        let slices = [
            web_slice("web-1", [ready("10.1.0.3"), ready("10.1.0.1")]),
            web_slice("web-2", [ready("10.1.0.1"), ready("10.1.0.2")]),
        ];
        let t = run(&[web()], &slices);
        assert_clean(&t);
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
        );
    }

    #[test]
    fn duplicate_endpoint_the_non_terminating_one_wins() {
        // 10.1.0.1 is a terminating pod in one slice and a new ready pod in
        // the other; 10.1.0.2 is ready elsewhere, so the terminating copy of
        // 10.1.0.1, had it won, would leave it out.
        let old = endpoint("10.1.0.1")
            .ready(false)
            .serving(true)
            .terminating(true);
        for (first, second) in [
            (old.clone(), ready("10.1.0.1")),
            (ready("10.1.0.1"), old.clone()),
        ] {
            let slices = [
                web_slice("web-1", [first.clone()]),
                web_slice("web-2", [second.clone(), ready("10.1.0.2")]),
            ];
            let t = run(&[web()], &slices);
            assert_clean(&t);
            assert_eq!(
                backends(&t, "10.0.0.1:80/TCP"),
                ["10.1.0.1:8080", "10.1.0.2:8080"],
                "{first:?} then {second:?}"
            );
        }
    }

    #[test]
    fn duplicate_endpoint_not_ready_in_the_later_slice_wins() {
        // Both copies are non-terminating: the later one wins, as in
        // kube-proxy (whose order is the map's); here the file's order.
        let slices = [
            web_slice("web-1", [ready("10.1.0.1"), ready("10.1.0.2")]),
            web_slice("web-2", [endpoint("10.1.0.1").ready(false)]),
        ];
        let t = run(&[web()], &slices);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.2:8080"]);
    }

    #[test]
    fn unset_conditions_mean_ready_serving_not_terminating() {
        let slices = [web_slice(
            "web-1",
            [
                endpoint("10.1.0.1"),
                endpoint("10.1.0.2").with_empty_conditions(),
            ],
        )];
        let t = run(&[web()], &slices);
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.2:8080"]
        );
    }

    #[test]
    fn only_the_first_address_of_an_endpoint_is_used() {
        let slices = [web_slice("web-1", [endpoint_at(&["10.1.0.1", "10.1.0.2"])])];
        assert_eq!(
            backends(&run(&[web()], &slices), "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080"]
        );
    }

    #[test]
    fn not_ready_endpoints_are_not_used_while_some_are_ready() {
        let slices = [web_slice(
            "web-1",
            [
                ready("10.1.0.1"),
                endpoint("10.1.0.2")
                    .ready(false)
                    .serving(true)
                    .terminating(true),
                endpoint("10.1.0.3").ready(false),
            ],
        )];
        assert_eq!(
            backends(&run(&[web()], &slices), "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080"]
        );
    }

    #[test]
    fn all_terminating_falls_back_to_serving_terminating_endpoints() {
        let slices = [web_slice(
            "web-1",
            [
                endpoint("10.1.0.1")
                    .ready(false)
                    .serving(true)
                    .terminating(true),
                // serving unset means serving
                endpoint("10.1.0.2").ready(false).terminating(true),
                // terminating and not serving: never used
                endpoint("10.1.0.3")
                    .ready(false)
                    .serving(false)
                    .terminating(true),
                // not ready, not terminating (starting up): never used
                endpoint("10.1.0.4")
                    .ready(false)
                    .serving(true)
                    .terminating(false),
            ],
        )];
        let t = run(&[web()], &slices);
        assert_clean(&t);
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.2:8080"]
        );
    }

    #[test]
    fn no_serving_endpoint_refuses() {
        let slices = [web_slice(
            "web-1",
            [endpoint("10.1.0.3")
                .ready(false)
                .serving(false)
                .terminating(true)],
        )];
        assert_eq!(
            backends(&run(&[web()], &slices), "10.0.0.1:80/TCP"),
            Vec::<String>::new()
        );
    }

    fn zoned(ip: &str, zones: &[&str]) -> EndpointBuilder {
        endpoint(ip).zone_hints(zones)
    }

    #[test]
    fn topology_hints_for_every_endpoint_keep_this_zone_only() {
        let slices = [web_slice(
            "web-1",
            [
                zoned("10.1.0.1", &["zone-a"]),
                zoned("10.1.0.2", &["zone-b"]),
                zoned("10.1.0.3", &["zone-b", "zone-a"]),
            ],
        )];
        let t = run_with(
            &[web()],
            &slices,
            &node(Some("node-1"), Some("zone-a")),
            &Options::default(),
        );
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.3:8080"]
        );
        let t = run_with(
            &[web()],
            &slices,
            &node(Some("node-1"), Some("zone-b")),
            &Options::default(),
        );
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.2:8080", "10.1.0.3:8080"]
        );
    }

    #[test]
    fn topology_hints_are_ignored_unless_every_ready_endpoint_has_one() {
        let slices = [web_slice(
            "web-1",
            [
                zoned("10.1.0.1", &["zone-a"]),
                zoned("10.1.0.2", &["zone-b"]),
                ready("10.1.0.3"),
            ],
        )];
        let t = run_with(
            &[web()],
            &slices,
            &node(Some("node-1"), Some("zone-a")),
            &Options::default(),
        );
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
        );
    }

    #[test]
    fn topology_hints_of_not_ready_endpoints_do_not_count() {
        // The unhinted endpoint is not ready: every *ready* endpoint is hinted.
        let slices = [web_slice(
            "web-1",
            [
                zoned("10.1.0.1", &["zone-a"]),
                zoned("10.1.0.2", &["zone-b"]),
                endpoint("10.1.0.3").ready(false),
            ],
        )];
        let t = run_with(
            &[web()],
            &slices,
            &node(Some("node-1"), Some("zone-a")),
            &Options::default(),
        );
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
    }

    #[test]
    fn topology_hints_are_ignored_when_none_is_for_this_zone() {
        let slices = [web_slice(
            "web-1",
            [
                zoned("10.1.0.1", &["zone-a"]),
                zoned("10.1.0.2", &["zone-b"]),
            ],
        )];
        for node in [
            node(Some("node-1"), Some("zone-c")),
            node(Some("node-1"), None),
        ] {
            let t = run_with(&[web()], &slices, &node, &Options::default());
            assert_eq!(
                backends(&t, "10.0.0.1:80/TCP"),
                ["10.1.0.1:8080", "10.1.0.2:8080"],
                "{node:?}"
            );
        }
    }

    /// Three endpoints, each on its own node and hinted for it, and (with
    /// `zones`) hinted for zone-a, zone-a and zone-b.
    fn node_hinted(zones: bool) -> [EndpointBuilder; 3] {
        [
            ("10.1.0.1", "node-1", "zone-a"),
            ("10.1.0.2", "node-2", "zone-a"),
            ("10.1.0.3", "node-3", "zone-b"),
        ]
        .map(|(ip, node, zone)| {
            let endpoint = endpoint(ip).node(node).node_hints(&[node]);
            if zones {
                endpoint.zone_hints(&[zone])
            } else {
                endpoint
            }
        })
    }

    #[test]
    fn for_nodes_hints_are_ignored_as_by_kube_proxy_1_33() {
        // PreferSameTrafficDistribution is off by default in v1.33: the zone
        // hints apply, the node hints do not.
        let slices = [web_slice("web-1", node_hinted(true))];
        let t = run_with(
            &[web()],
            &slices,
            &node(Some("node-1"), Some("zone-a")),
            &Options::default(),
        );
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.2:8080"]
        );
        let slices = [web_slice("web-1", node_hinted(false))];
        let t = run_with(
            &[web()],
            &slices,
            &node(Some("node-1"), Some("zone-a")),
            &Options::default(),
        );
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
        );
    }

    /// The usable backends of `web`'s one frontend, from these slices, with
    /// the `PreferSameTrafficDistribution` logic on or off.
    fn backends_with_gate(
        slices: &[SliceBuilder],
        node: &NodeContext,
        prefer_same_node: bool,
    ) -> Vec<String> {
        let slices: Vec<EndpointSlice> = slices.iter().cloned().map(SliceBuilder::build).collect();
        let mut problems = Problems::default();
        let slice_refs: Vec<&EndpointSlice> = slices.iter().collect();
        let mut index = SliceIndex::new(&slice_refs, &Options::default(), &mut problems);
        let slices = index.for_service("default", "web", &mut problems);
        let port = Port {
            index: 0,
            name: "http",
            protocol: Protocol::Tcp,
            number: 80,
        };
        let endpoints = endpoints_for(&slices, Family::V4, &port);
        usable_backends(&endpoints, false, node, prefer_same_node)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn for_nodes_hints_with_prefer_same_node_keep_this_node_only() {
        let slices = [web_slice("web-1", node_hinted(true))];
        let here = node(Some("node-1"), Some("zone-a"));
        assert_eq!(backends_with_gate(&slices, &here, true), ["10.1.0.1:8080"]);
        assert_eq!(
            backends_with_gate(&slices, &here, false),
            ["10.1.0.1:8080", "10.1.0.2:8080"]
        );
        // No endpoint for this node: fall through to the zone hints.
        assert_eq!(
            backends_with_gate(&slices, &node(Some("node-9"), Some("zone-b")), true),
            ["10.1.0.3:8080"]
        );
        // Not every endpoint has a node hint: zone hints again.
        let [first, second, _] = node_hinted(true);
        let partial = [first, second, zoned("10.1.0.3", &["zone-b"])];
        let slices = [web_slice("web-1", partial)];
        assert_eq!(
            backends_with_gate(&slices, &here, true),
            ["10.1.0.1:8080", "10.1.0.2:8080"]
        );
    }

    /// `web` with `internalTrafficPolicy: Local`.
    fn local() -> ServiceBuilder {
        service("web")
            .cluster_ip("10.0.0.1")
            .internal_traffic_policy("Local")
            .port(port(80).name("http"))
    }

    #[test]
    fn internal_traffic_policy_local_uses_this_node_only() {
        let slices = [web_slice(
            "web-1",
            [
                zoned("10.1.0.1", &["zone-b"]).node("node-1"),
                zoned("10.1.0.2", &["zone-a"]).node("node-2"),
                zoned("10.1.0.3", &["zone-a"]).node("node-1"),
            ],
        )];
        // Topology does not apply to local endpoints.
        let t = run_with(
            &[local()],
            &slices,
            &node(Some("node-1"), Some("zone-a")),
            &Options::default(),
        );
        assert_clean(&t);
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.3:8080"]
        );
        let t = run_with(
            &[local()],
            &slices,
            &node(Some("node-2"), Some("zone-a")),
            &Options::default(),
        );
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.2:8080"]);
    }

    #[test]
    fn internal_traffic_policy_local_without_local_endpoints_refuses() {
        let slices = [web_slice("web-1", [endpoint("10.1.0.1").node("node-2")])];
        for node in [
            node(Some("node-1"), None),
            node(None, None),
            node(Some(""), None),
        ] {
            let t = run_with(&[local()], &slices, &node, &Options::default());
            assert_eq!(
                backends(&t, "10.0.0.1:80/TCP"),
                Vec::<String>::new(),
                "{node:?}"
            );
        }
        // An endpoint without nodeName is never local, even for a nameless node.
        let slices = [web_slice("web-1", [endpoint("10.1.0.1")])];
        assert_eq!(
            backends(
                &run_with(&[local()], &slices, &node(None, None), &Options::default()),
                "10.0.0.1:80/TCP"
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn internal_traffic_policy_local_falls_back_to_local_terminating() {
        let slices = [web_slice(
            "web-1",
            [
                endpoint("10.1.0.1")
                    .node("node-1")
                    .ready(false)
                    .serving(true)
                    .terminating(true),
                endpoint("10.1.0.2").node("node-2"),
            ],
        )];
        assert_eq!(
            backends(&run(&[local()], &slices), "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080"]
        );
    }

    /// A Service `name` at `ip`, with one unnamed port 80.
    fn plain(name: &str, ip: &str) -> ServiceBuilder {
        service(name).cluster_ip(ip).port(port(80))
    }

    #[test]
    fn session_affinity_client_ip_default_and_explicit_timeout() {
        let services = [
            plain("a", "10.0.0.1").session_affinity("ClientIP"),
            plain("b", "10.0.0.2")
                .session_affinity("ClientIP")
                .affinity_timeout(60),
            plain("c", "10.0.0.3").session_affinity("None"),
            plain("d", "10.0.0.4")
                .session_affinity("ClientIP")
                .affinity_timeout(86_400),
        ];
        let t = run(&services, &[]);
        assert_clean(&t);
        assert_eq!(
            entry(&t, "10.0.0.1:80/TCP").affinity_timeout_s,
            Some(10_800)
        );
        assert_eq!(entry(&t, "10.0.0.2:80/TCP").affinity_timeout_s, Some(60));
        assert_eq!(entry(&t, "10.0.0.3:80/TCP").affinity_timeout_s, None);
        assert_eq!(
            entry(&t, "10.0.0.4:80/TCP").affinity_timeout_s,
            Some(86_400)
        );
    }

    #[test]
    fn session_affinity_out_of_range_is_a_problem() {
        for timeout in [0, 86_401, -5] {
            let services = [
                plain("a", "10.0.0.1")
                    .session_affinity("ClientIP")
                    .affinity_timeout(timeout),
                plain("b", "10.0.0.2"),
            ];
            let t = run(&services, &[]);
            assert_eq!(
                problems(&t),
                [format!(
                    "Service default/a: spec.sessionAffinityConfig.clientIP.timeoutSeconds: {timeout} is out of range: expected 1 to 86400 seconds"
                )]
            );
            assert_eq!(frontends(&t), ["10.0.0.2:80/TCP"]);
        }
        let t = run(&[plain("a", "10.0.0.1").session_affinity("Sticky")], &[]);
        assert_eq!(
            problems(&t),
            [
                "Service default/a: spec.sessionAffinity: unsupported value \"Sticky\": expected None or ClientIP"
            ]
        );
    }

    #[test]
    fn algorithm_annotation_overrides_the_default() {
        let services = [
            plain("rr", "10.0.0.1").annotation(ANNOTATION_ALGORITHM, "round-robin"),
            plain("rand", "10.0.0.2").annotation(ANNOTATION_ALGORITHM, "random"),
            plain("plain", "10.0.0.3"),
        ];
        let opts = Options {
            default_algorithm: Algorithm::RoundRobin,
            service_proxy_name: None,
        };
        let t = run_with(&services, &[], &node(None, None), &opts);
        assert_clean(&t);
        assert_eq!(
            entry(&t, "10.0.0.1:80/TCP").algorithm,
            Algorithm::RoundRobin
        );
        assert_eq!(entry(&t, "10.0.0.2:80/TCP").algorithm, Algorithm::Random);
        assert_eq!(
            entry(&t, "10.0.0.3:80/TCP").algorithm,
            Algorithm::RoundRobin
        );
        let t = run_with(&services, &[], &node(None, None), &Options::default());
        assert_eq!(entry(&t, "10.0.0.3:80/TCP").algorithm, Algorithm::Random);
    }

    #[test]
    fn bad_algorithm_annotation_is_a_problem_and_skips_the_service() {
        let services = [
            plain("web", "10.0.0.1").annotation(ANNOTATION_ALGORITHM, "least-conn"),
            plain("other", "10.0.0.2"),
        ];
        let t = run(&services, &[]);
        assert_eq!(
            problems(&t),
            [
                "Service default/web: metadata.annotations[\"lb-agent.io/algorithm\"]: unknown algorithm \"least-conn\": expected \"random\" or \"round-robin\""
            ]
        );
        assert_eq!(frontends(&t), ["10.0.0.2:80/TCP"]);
    }

    fn proxy_services() -> [ServiceBuilder; 3] {
        [
            plain("mine", "10.0.0.1"),
            plain("labelled", "10.0.0.2").label(LABEL_SERVICE_PROXY_NAME, "lb"),
            plain("others", "10.0.0.3").label(LABEL_SERVICE_PROXY_NAME, "other"),
        ]
    }

    #[test]
    fn services_of_another_proxy_are_skipped() {
        let t = run(&proxy_services(), &[]);
        assert_clean(&t);
        assert_eq!(frontends(&t), ["10.0.0.1:80/TCP"]);
    }

    #[test]
    fn with_a_proxy_name_only_its_services_are_served() {
        let opts = Options {
            service_proxy_name: Some("lb".to_owned()),
            ..Options::default()
        };
        let t = run_with(&proxy_services(), &[], &node(None, None), &opts);
        assert_clean(&t);
        assert_eq!(frontends(&t), ["10.0.0.2:80/TCP"]);
    }

    #[test]
    fn slices_labelled_for_another_proxy_or_headless_are_ignored() {
        let labelled = |key: &str, value: &str, ip: &str| {
            web_slice(&format!("web-{}", ip.replace('.', "-")), [ready(ip)]).label(key, value)
        };
        let slices = [
            labelled(LABEL_SERVICE_PROXY_NAME, "other", "10.1.0.1"),
            labelled(LABEL_HEADLESS, "", "10.1.0.2"),
            web_slice("web-3", [ready("10.1.0.3")]),
        ];
        let t = run(&[web()], &slices);
        assert_clean(&t);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.3:8080"]);
    }

    #[test]
    fn headless_external_name_and_ip_less_services_are_skipped_silently() {
        let services = [
            plain("headless", "None"),
            plain("headless2", "None").cluster_ips(&["None"]),
            service("external")
                .type_("ExternalName")
                .external_name("example.com")
                .port(port(80)),
            plain("external-ip", "10.0.0.9").type_("ExternalName"),
            service("no-ip").port(port(80)),
            plain("empty-ip", ""),
            service("no-spec"),
            plain("labelled", "10.0.0.8").label(LABEL_HEADLESS, ""),
            plain("served", "10.0.0.1"),
        ];
        let t = run(&services, &[]);
        assert_clean(&t);
        assert_eq!(frontends(&t), ["10.0.0.1:80/TCP"]);
    }

    #[test]
    fn node_port_and_load_balancer_services_get_their_cluster_ip() {
        let services = [
            service("np")
                .type_("NodePort")
                .cluster_ip("10.0.0.1")
                .port(port(80).node_port(30_080)),
            service("lb")
                .type_("LoadBalancer")
                .cluster_ip("10.0.0.2")
                .port(port(80).node_port(30_081)),
        ];
        let t = run(&services, &[]);
        assert_clean(&t);
        assert_eq!(frontends(&t), ["10.0.0.1:80/TCP", "10.0.0.2:80/TCP"]);
    }

    #[test]
    fn invalid_cluster_ip_is_a_problem_and_the_rest_is_served() {
        let services = [
            service("web")
                .cluster_ip("10.0.0.1")
                .cluster_ips(&["10.0.0.1", "10.0.0.300"])
                .port(port(80).name("http")),
            plain("api", "10.0.0.2"),
            plain("bad", "not-an-ip"),
            service("twice")
                .cluster_ips(&["10.0.0.3", "10.0.0.4"])
                .port(port(80)),
        ];
        let t = run(&services, &[]);
        assert_eq!(
            problems(&t),
            [
                "Service default/web: spec.clusterIPs[1]: \"10.0.0.300\" is not an IP address",
                "Service default/bad: spec.clusterIP: \"not-an-ip\" is not an IP address",
                "Service default/twice: spec.clusterIPs[1]: a second IPv4 ClusterIP (10.0.0.4): a Service has at most one per family",
            ]
        );
        assert_eq!(
            t.problems[0],
            Problem {
                object: ObjectRef {
                    kind: "Service",
                    namespace: "default".to_owned(),
                    name: "web".to_owned()
                },
                field: "spec.clusterIPs[1]".to_owned(),
                message: "\"10.0.0.300\" is not an IP address".to_owned(),
            }
        );
        assert_eq!(
            frontends(&t),
            ["10.0.0.1:80/TCP", "10.0.0.2:80/TCP", "10.0.0.3:80/TCP"]
        );
    }

    #[test]
    fn invalid_ports_are_problems_and_the_other_ports_are_served() {
        let services = [service("web")
            .cluster_ip("10.0.0.1")
            .port(port(0).name("a"))
            .port(port(70_000).name("b"))
            .port(port(80).name("c").protocol("ICMP"))
            .port(port(81).name("d").target(0))
            .port(port(82).name("e").target_name("Not_A_Name"))
            .port(port(83).name("f").target_name("8080"))
            .port(port(84).name("ok").protocol("UDP").target(9000))
            .port(port(85).name("ok").protocol("UDP"))
            .port(port(86).name("ok"))];
        let t = run(&services, &[]);
        assert_eq!(
            problems(&t),
            [
                "Service default/web: spec.ports[0].port: 0 is not a valid port number: expected 1 to 65535",
                "Service default/web: spec.ports[1].port: 70000 is not a valid port number: expected 1 to 65535",
                "Service default/web: spec.ports[2].protocol: unsupported protocol \"ICMP\": expected TCP, UDP or SCTP",
                "Service default/web: spec.ports[3].targetPort: 0 is not a valid port number: expected 1 to 65535",
                "Service default/web: spec.ports[4].targetPort: \"Not_A_Name\" is neither a port number nor a port name (at most 15 \
                 lower-case letters, digits and inner hyphens)",
                "Service default/web: spec.ports[5].targetPort: \"8080\" is neither a port number nor a port name (at most 15 \
                 lower-case letters, digits and inner hyphens)",
                "Service default/web: spec.ports[7]: a second UDP port named \"ok\": port names must be unique",
            ]
        );
        assert_eq!(frontends(&t), ["10.0.0.1:84/UDP", "10.0.0.1:86/TCP"]);
    }

    #[test]
    fn invalid_type_or_traffic_policy_is_a_problem() {
        let services = [
            plain("a", "10.0.0.1").type_("Magic"),
            plain("b", "10.0.0.2").internal_traffic_policy("Nearby"),
        ];
        let t = run(&services, &[]);
        assert_eq!(
            problems(&t),
            [
                "Service default/a: spec.type: unsupported type \"Magic\": expected ClusterIP, NodePort, LoadBalancer or ExternalName",
                "Service default/b: spec.internalTrafficPolicy: unsupported value \"Nearby\": expected Cluster or Local",
            ]
        );
        assert!(t.state.is_empty());
    }

    #[test]
    fn slice_problems_skip_only_what_is_wrong() {
        let slices = [
            slice("orphan", "web").unlabelled(),
            web_slice("web-bad-type", [ready("10.1.0.9")]).address_type("IPv5"),
            slice("web-1", "web")
                .port(slice_port(7000))
                .port(slice_port(0).name("http"))
                .port(http().protocol("QUIC"))
                .port(http())
                .endpoints([
                    endpoint("10.1.0.300"),
                    endpoint("fd00::1"),
                    endpoint_at(&[]),
                    ready("10.1.0.1"),
                ]),
        ];
        let t = run(&[web()], &slices);
        assert_eq!(
            problems(&t),
            [
                "EndpointSlice default/orphan: metadata.labels[\"kubernetes.io/service-name\"]: missing: the label names the Service of the slice",
                "EndpointSlice default/web-bad-type: addressType: unsupported address type \"IPv5\": expected IPv4, IPv6 or FQDN",
                "EndpointSlice default/web-1: ports[0].name: missing (the port of an unnamed service port is named \"\")",
                "EndpointSlice default/web-1: ports[1].port: 0 is not a valid port number: expected 1 to 65535",
                "EndpointSlice default/web-1: ports[2].protocol: unsupported protocol \"QUIC\": expected TCP, UDP or SCTP",
                "EndpointSlice default/web-1: endpoints[0].addresses[0]: \"10.1.0.300\" is not an IP address",
                "EndpointSlice default/web-1: endpoints[1].addresses[0]: fd00::1 is not an IPv4 address (the slice's addressType)",
                "EndpointSlice default/web-1: endpoints[2].addresses: empty",
            ]
        );
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
    }

    #[test]
    fn a_slice_shared_by_two_ports_is_checked_once() {
        let services = [service("web")
            .cluster_ip("10.0.0.1")
            .cluster_ips(&["10.0.0.1", "fd00::1"])
            .port(port(80).name("http"))
            .port(port(81).name("b"))];
        let slices = [slice("web-1", "web")
            .port(http())
            .port(slice_port(8081).name("b"))
            .endpoints([endpoint("bad"), ready("10.1.0.1")])];
        let t = run(&services, &slices);
        assert_eq!(
            problems(&t),
            [
                "EndpointSlice default/web-1: endpoints[0].addresses[0]: \"bad\" is not an IP address"
            ]
        );
    }

    #[test]
    fn slices_of_services_not_served_are_not_checked() {
        let services = [service("headless").cluster_ip("None")];
        let slices = [slice("headless-1", "headless")
            .port(http())
            .endpoint(endpoint("bad"))];
        assert_clean(&run(&services, &slices));
    }

    #[test]
    fn duplicate_objects_are_problems_and_the_first_one_wins() {
        let services = [web(), plain("web", "10.0.0.2")];
        let slices = [
            web_slice("web-1", [ready("10.1.0.1")]),
            web_slice("web-1", [ready("10.1.0.2")]),
        ];
        let t = run(&services, &slices);
        assert_eq!(
            problems(&t),
            [
                "EndpointSlice default/web-1: duplicate EndpointSlice: the first one with this name is used",
                "Service default/web: duplicate Service: the first one with this name is used",
            ]
        );
        assert_eq!(frontends(&t), ["10.0.0.1:80/TCP"]);
        assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
    }

    #[test]
    fn shared_frontend_goes_to_the_smaller_name_whatever_the_order() {
        let a = service("a").cluster_ip("10.0.0.1").port(port(80).name("x"));
        let b = service("b")
            .cluster_ip("10.0.0.1")
            .port(port(81).name("y"))
            .port(port(80).name("x"));
        for services in [[a.clone(), b.clone()], [b, a]] {
            let t = run(&services, &[]);
            assert_eq!(
                problems(&t),
                [
                    "Service default/b: spec.ports[1]: 10.0.0.1:80/TCP is also a frontend of default/a:x, which keeps it"
                ]
            );
            assert_eq!(entry(&t, "10.0.0.1:80/TCP").name.name, "a");
            assert_eq!(entry(&t, "10.0.0.1:81/TCP").name.name, "b");
        }
    }

    #[test]
    fn objects_without_names_are_problems() {
        let t = run(&[plain("web", "10.0.0.1").without_name()], &[]);
        assert_eq!(
            problems(&t),
            ["Service default/: metadata: a Service needs a name and a namespace"]
        );
        assert!(t.state.is_empty());
    }

    /// `n` services, each with one slice of `endpoints` endpoints, as a
    /// cluster has them (see `generate_yaml` in the file parser's tests).
    fn generate(n: usize, endpoints: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
        (0..n)
            .map(|i| {
                // Unique addresses up to 2^17 services: 10.96.0.0/15 and 10.100.0.0/11.
                let (high, mid, low) = (i >> 16, (i >> 8) & 255, i & 255);
                let name = format!("svc-{i}");
                let ip = format!("10.{}.{mid}.{low}", 96 + high);
                let service = service(&name)
                    .namespace("bench")
                    .type_("ClusterIP")
                    .cluster_ip(&ip)
                    .cluster_ips(&[&ip])
                    .ip_families(&["IPv4"])
                    .internal_traffic_policy("Cluster")
                    .session_affinity("None")
                    .port(port(80).name("http").protocol("TCP").target(8080));
                let slice = slice(&format!("{name}-abcde"), &name)
                    .namespace("bench")
                    .port(http().protocol("TCP"))
                    .endpoints((0..endpoints).map(|e| {
                        ready(&format!("10.{}.{mid}.{low}", 100 + 2 * e + high))
                            .serving(true)
                            .terminating(false)
                            .node(&format!("node-{e}"))
                    }));
                (service.build(), slice.build())
            })
            .unzip()
    }

    #[test]
    fn generated_objects_translate() {
        let (services, slices) = generate(300, 3);
        let t = translate(
            &services,
            &slices,
            &node(Some("node-1"), Some("zone-a")),
            &Options::default(),
        );
        assert_clean(&t);
        assert_eq!(t.state.len(), 300);
        assert!(t.state.values().all(|entry| entry.backends.len() == 3));
    }

    /// Translation time for 10,000 and 100,000 services of 10 endpoints. Run with
    /// `cargo test -p lb-agent --lib --release -- --ignored --nocapture bench_translate`.
    #[test]
    #[ignore = "benchmark: run in release"]
    fn bench_translate() {
        for n in [10_000, 100_000] {
            let (services, slices) = generate(n, 10);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                let t = translate(
                    &services,
                    &slices,
                    &node(Some("node-1"), Some("zone-a")),
                    &Options::default(),
                );
                best = best.min(start.elapsed().as_secs_f64());
                assert_eq!((t.state.len(), t.problems.len()), (n, 0));
            }
            println!(
                "translate {n} services + {n} slices x 10 endpoints: {:.1} ms",
                best * 1e3
            );
        }
    }
}
