//! A Service's ports and settings (algorithm, session affinity, traffic
//! policy) as the API server would validate them, and the port and
//! protocol checks that slices share.

use std::collections::HashSet;

use k8s_openapi::{
    api::core::v1::{ServicePort, ServiceSpec},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{
    ANNOTATION_ALGORITHM, DEFAULT_AFFINITY_TIMEOUT_S, MAX_AFFINITY_TIMEOUT_S, Options,
    problem::{Obj, Problems},
};
use crate::model::{Algorithm, Protocol};

/// A port of a Service, validated.
pub(super) struct Port<'a> {
    pub(super) index: usize,
    pub(super) name: &'a str,
    pub(super) protocol: Protocol,
    pub(super) number: u16,
    /// The `nodePort`, when the Service has one for this port.
    pub(super) nodeport: Option<u16>,
}

/// Everything about a Service that applies to all its frontends.
pub(super) struct Settings {
    pub(super) algorithm: Algorithm,
    pub(super) affinity_timeout_s: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub(super) local: bool,
    /// `externalTrafficPolicy: Local`.
    pub(super) external_local: bool,
}

/// The valid ports; each invalid one is a problem and skipped.
pub(super) fn ports<'a>(
    spec: &'a ServiceSpec,
    object: &Obj<'_>,
    problems: &mut Problems,
) -> Vec<Port<'a>> {
    let mut out: Vec<Port<'a>> = Vec::new();
    for (index, port) in spec.ports.iter().flatten().enumerate() {
        let ServicePort {
            name,
            port: number,
            protocol,
            target_port,
            app_protocol: _,
            node_port,
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
        let node_port = match node_port.filter(|&n| n != 0).map(parse_port) {
            None => None,
            Some(Err(message)) => {
                problems.push(object, field(".nodePort"), message);
                continue;
            }
            // The API server allocates node ports to these types only.
            Some(Ok(_)) if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) => {
                let message = "may not be used when `type` is not NodePort or LoadBalancer";
                problems.push(object, field(".nodePort"), message.to_owned());
                continue;
            }
            Some(Ok(n)) => Some(n),
        };
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
            nodeport: node_port,
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

pub(super) fn parse_protocol(protocol: Option<&str>) -> Result<Protocol, String> {
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

pub(super) fn parse_port(port: i32) -> Result<u16, String> {
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

/// An object's namespace and name or, when either is missing or empty, a
/// problem: `what` (`a Service`) needs both.
pub(super) fn namespace_and_name<'a>(
    object: &Obj<'a>,
    what: &str,
    problems: &mut Problems,
) -> Option<(&'a str, &'a str)> {
    let metadata = object.metadata;
    let found = non_empty(metadata.namespace.as_deref()).zip(non_empty(metadata.name.as_deref()));
    if found.is_none() {
        problems.push(
            object,
            "metadata",
            format!("{what} needs a name and a namespace"),
        );
    }
    found
}

/// Whether the object named `key` (namespace, name) is the first of that
/// name; a later one is a problem, and skipped.
pub(super) fn first_of_its_name<'a>(
    seen: &mut HashSet<(&'a str, &'a str)>,
    key: (&'a str, &'a str),
    object: &Obj<'_>,
    problems: &mut Problems,
) -> bool {
    let first = seen.insert(key);
    if !first {
        problems.push(
            object,
            "",
            format!(
                "duplicate {}: the first one with this name is used",
                object.kind
            ),
        );
    }
    first
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

pub(super) fn settings(
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
    // For clients on the node the external policy changes nothing: kube-proxy
    // sends their traffic to an external address to the cluster-wide
    // endpoints even when it is `Local` (the "short circuit" of its external
    // chains), and every client a socket hook sees is on the node. Clients
    // from other hosts (the tc programs) get this node's endpoints only.
    let external_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            problems.push(
                object,
                "spec.externalTrafficPolicy",
                format!("unsupported value {other:?}: expected Cluster or Local"),
            );
            return None;
        }
    };
    Some(Settings {
        algorithm,
        affinity_timeout_s,
        local,
        external_local,
    })
}
