//! The desired state: what the maps should hold, independent of where it
//! came from (a file or the Kubernetes API) and of how it is stored (BPF maps).
//!
//! Sources translate Kubernetes objects into a [`DesiredState`]
//! (`crate::translate`); the sync loop diffs it against what is programmed
//! and hands the difference to the dataplane.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use ipnet::IpNet;
use serde::Serialize;

/// Transport protocol of a service port. Each protocol is a distinct service:
/// a TCP-only port is never translated for UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number, as the kernel and the maps use it.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::proto::TCP,
            Self::Udp => lb_common::proto::UDP,
            Self::Sctp => lb_common::proto::SCTP,
        }
    }

    /// The inverse of [`Protocol::number`].
    #[must_use]
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::proto::TCP => Some(Self::Tcp),
            lb_common::proto::UDP => Some(Self::Udp),
            lb_common::proto::SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The spelling Kubernetes uses (`TCP`, `UDP`, `SCTP`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a service picks a backend for each new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Uniformly random, as kube-proxy's `statistic --mode random` chain.
    #[default]
    Random,
    /// Exact rotation over the backends, shared by all CPUs.
    RoundRobin,
}

impl Algorithm {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::RoundRobin => "round-robin",
        }
    }

    /// The value stored in `ServiceValue::algorithm`.
    #[must_use]
    pub const fn to_raw(self) -> u8 {
        match self {
            Self::Random => lb_common::service::ALGORITHM_RANDOM,
            Self::RoundRobin => lb_common::service::ALGORITHM_ROUND_ROBIN,
        }
    }

    /// The inverse of [`Algorithm::to_raw`].
    #[must_use]
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            lb_common::service::ALGORITHM_RANDOM => Some(Self::Random),
            lb_common::service::ALGORITHM_ROUND_ROBIN => Some(Self::RoundRobin),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for an algorithm name that is neither `random` nor `round-robin`.
#[derive(Debug, thiserror::Error)]
#[error("unknown algorithm {0:?}: expected \"random\" or \"round-robin\"")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Self::Random),
            "round-robin" => Ok(Self::RoundRobin),
            other => Err(UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// What a client connects to: one address (a `ClusterIP`, a node address,
/// an external or load-balancer IP), port and protocol.
///
/// In what the sources publish, the unspecified address (`0.0.0.0`, `::`)
/// stands for "every node-port address of this family" (see
/// [`Frontend::node_port`]); the sync loop expands it into one frontend per
/// node address before anything reaches the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: FrontendScope,
}

/// Which clients a frontend's entry serves. A Service with
/// `externalTrafficPolicy: Local` has two entries for each external
/// address: one for clients on the node (every endpoint, as kube-proxy's
/// short circuit) and one for clients from other hosts (this node's
/// endpoints only), which the tc programs read first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendScope {
    /// Every client.
    #[default]
    Any,
    /// Clients from other hosts, under `externalTrafficPolicy: Local`.
    External,
}

impl FrontendScope {
    /// The value stored in `ServiceKey::scope`.
    #[must_use]
    pub const fn to_raw(self) -> u8 {
        match self {
            Self::Any => lb_common::service::SCOPE_ANY,
            Self::External => lb_common::service::SCOPE_EXTERNAL,
        }
    }

    /// The inverse of [`FrontendScope::to_raw`].
    #[must_use]
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            lb_common::service::SCOPE_ANY => Some(Self::Any),
            lb_common::service::SCOPE_EXTERNAL => Some(Self::External),
            _ => None,
        }
    }
}

impl Frontend {
    /// A frontend for every client.
    #[must_use]
    pub const fn new(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            ip,
            port,
            protocol,
            scope: FrontendScope::Any,
        }
    }

    /// A `nodePort` on every node-port address of `ip`'s family.
    #[must_use]
    pub fn node_port(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        let ip = match ip {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        Self::new(ip, port, protocol)
    }

    /// Whether this stands for every node-port address of its family.
    #[must_use]
    pub fn is_node_port(&self) -> bool {
        self.ip.is_unspecified()
    }
}

/// Which of a Service's addresses a frontend is, as `lb-agent list` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendKind {
    /// `spec.clusterIPs`.
    #[default]
    ClusterIP,
    /// A node address and `spec.ports[].nodePort`.
    NodePort,
    /// `spec.externalIPs`.
    ExternalIP,
    /// `status.loadBalancer.ingress[].ip` (`ipMode: VIP` or unset).
    LoadBalancer,
}

impl FrontendKind {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::ExternalIP => "ExternalIP",
            Self::LoadBalancer => "LoadBalancer",
        }
    }

    /// The value stored in `ServiceState::kind`.
    #[must_use]
    pub const fn to_raw(self) -> u8 {
        match self {
            Self::ClusterIP => lb_common::service::KIND_CLUSTER_IP,
            Self::NodePort => lb_common::service::KIND_NODE_PORT,
            Self::ExternalIP => lb_common::service::KIND_EXTERNAL_IP,
            Self::LoadBalancer => lb_common::service::KIND_LOAD_BALANCER,
        }
    }

    /// The inverse of [`FrontendKind::to_raw`].
    #[must_use]
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            lb_common::service::KIND_CLUSTER_IP => Some(Self::ClusterIP),
            lb_common::service::KIND_NODE_PORT => Some(Self::NodePort),
            lb_common::service::KIND_EXTERNAL_IP => Some(Self::ExternalIP),
            lb_common::service::KIND_LOAD_BALANCER => Some(Self::LoadBalancer),
            _ => None,
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.ip, self.port),
            self.protocol
        )?;
        if self.scope == FrontendScope::External {
            f.write_str(" (from other hosts)")?;
        }
        Ok(())
    }
}

/// The Kubernetes name of a service port: `namespace/name:port`, where `port`
/// is the port's name (empty for a single unnamed port).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            Printable(&self.namespace),
            Printable(&self.name)
        )?;
        if !self.port.is_empty() {
            write!(f, ":{}", Printable(&self.port))?;
        }
        Ok(())
    }
}

/// A Service: its namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            Printable(&self.namespace),
            Printable(&self.name)
        )
    }
}

/// What load balancers ask this node about a `LoadBalancer` Service with
/// `externalTrafficPolicy: Local`: its `spec.healthCheckNodePort`, and how
/// many ready endpoints it has on this node (by address, over all its
/// ports, as kube-proxy's `LocalReadyEndpoints` counts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    pub local_endpoints: usize,
}

/// The health checks this node answers, by Service.
pub type HealthChecks = BTreeMap<ServiceName, HealthCheck>;

/// Text from an object (a name, a port name) as it goes into a message or
/// a table: control characters escaped (`\n`, `\u{1b}`), so that one
/// message stays one line and cannot forge others.
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Everything programmed for one frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    pub name: ServicePortName,
    pub kind: FrontendKind,
    pub algorithm: Algorithm,
    /// `sessionAffinity: ClientIP` timeout in seconds, if affinity is on.
    pub affinity_timeout_s: Option<u32>,
    /// The usable endpoints, sorted, without duplicates, all of the
    /// frontend's address family. Empty means "refuse connections".
    pub backends: Vec<SocketAddr>,
    /// `loadBalancerSourceRanges` of the frontend's family, for a VIP
    /// served to clients from other hosts only; empty: every client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<IpNet>,
}

/// The whole desired state, keyed by frontend (sorted, so diffs and listings
/// are deterministic). Entries are shared: the translator, the sync loop
/// and the dataplane each hold the whole state, and at 100,000 Services an
/// entry copied three times is about 100 MiB.
pub type DesiredState = BTreeMap<Frontend, Arc<ServiceEntry>>;

/// Changes to a [`DesiredState`]: `None` removes the frontend.
pub type StateDelta = BTreeMap<Frontend, Option<Arc<ServiceEntry>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_messages_stay_on_one_line() {
        let name = ServicePortName {
            namespace: "default".to_owned(),
            name: "web\nINFO forged\r\u{1b}[31m".to_owned(),
            port: "http\t".to_owned(),
        };
        assert_eq!(
            name.to_string(),
            r"default/web\nINFO forged\r\u{1b}[31m:http\t"
        );
        assert_eq!(Printable("café/ü").to_string(), "café/ü");
    }
}
