//! The addresses a `nodePort` answers on, chosen as kube-proxy's
//! `--nodeport-addresses` chooses them, and the node's local addresses,
//! followed over rtnetlink as interfaces and DHCP change them.

use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr};

use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use rtnetlink::{Handle, MulticastGroup, new_multicast_connection};

use crate::source::{Published, Publisher, Update};

/// `--nodeport-addresses`: which of the node's addresses answer on node ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The node's primary addresses, as its Node object says
    /// (`status.addresses`: the first `InternalIP` of each family, else
    /// `ExternalIP`); without a Node object, every local address that is
    /// not loopback or link-local.
    #[default]
    Primary,
    /// The local addresses in one of these ranges (loopback included, when
    /// a range holds it).
    Cidrs(Vec<IpNet>),
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Primary => f.write_str("primary"),
            Self::Cidrs(cidrs) => {
                for (i, cidr) in cidrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{cidr}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for NodePortAddresses {
    type Err = String;

    /// `primary`, or CIDRs separated by commas (`10.0.0.0/8,fd00::/64`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "primary" {
            return Ok(Self::Primary);
        }
        let cidrs = s
            .split(',')
            .map(|part| {
                let part = part.trim();
                part.parse::<IpNet>().map_err(|_| {
                    format!("{part:?} is not a CIDR: expected \"primary\" or CIDRs such as 10.0.0.0/8,fd00::/64")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Cidrs(cidrs))
    }
}

/// What decides the node-port addresses, as it is known so far.
#[derive(Clone, Debug, Default)]
pub struct NodeAddresses {
    pub mode: NodePortAddresses,
    /// The primary addresses from the Node object, when there is one.
    pub node_ips: Option<Vec<IpAddr>>,
    /// Every address of the node's interfaces.
    pub local: BTreeSet<IpAddr>,
}

impl NodeAddresses {
    /// The addresses node ports answer on now.
    #[must_use]
    pub fn chosen(&self) -> BTreeSet<IpAddr> {
        match &self.mode {
            NodePortAddresses::Cidrs(cidrs) => self
                .local
                .iter()
                .copied()
                .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
                .collect(),
            NodePortAddresses::Primary => match self.node_ips.as_deref() {
                Some(ips) if !ips.is_empty() => ips.iter().copied().collect(),
                _ => self.local.iter().copied().filter(is_routable).collect(),
            },
        }
    }
}

/// Not loopback, link-local, multicast or unspecified.
fn is_routable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_multicast() || v4.is_unspecified())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unicast_link_local()
                || v6.is_multicast()
                || v6.is_unspecified())
        }
    }
}

/// The node's primary addresses from a Node's `status.addresses`, as
/// kube-proxy takes them (`GetNodeHostIPs`): the `InternalIP`s then the
/// `ExternalIP`s; the first of them, and the first of the other family.
#[must_use]
pub fn primary_ips(node: &k8s_openapi::api::core::v1::Node) -> Vec<IpAddr> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let of_type = |t: &'static str| {
        addresses
            .iter()
            .filter(move |a| a.type_ == t)
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
    };
    let all: Vec<IpAddr> = of_type("InternalIP").chain(of_type("ExternalIP")).collect();
    let Some(&first) = all.first() else {
        return Vec::new();
    };
    let mut out = vec![first];
    if let Some(&other) = all.iter().find(|ip| ip.is_ipv4() != first.is_ipv4()) {
        out.push(other);
    }
    out
}

/// The address an interface address message carries: `IFA_LOCAL` (on a
/// point-to-point link `IFA_ADDRESS` is the peer's), else `IFA_ADDRESS`.
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

/// Every address of the node's interfaces, now.
async fn dump(handle: &Handle) -> Result<BTreeSet<IpAddr>, rtnetlink::Error> {
    handle
        .address()
        .get()
        .execute()
        .try_filter_map(|m| std::future::ready(Ok(address_of(&m))))
        .try_collect()
        .await
}

/// Follows the node's addresses: one dump now (returned), then a dump after
/// every address change, published when the set changed. Runs on the
/// caller's tokio runtime until the agent stops.
///
/// # Errors
/// When the rtnetlink socket cannot be opened or the first dump fails.
pub async fn follow(tx: Publisher) -> std::io::Result<BTreeSet<IpAddr>> {
    let (connection, handle, mut messages) =
        new_multicast_connection(&[MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr])?;
    tokio::spawn(connection);
    let first = dump(&handle).await.map_err(std::io::Error::other)?;
    let mut last = first.clone();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let relevant = matches!(
                message.payload,
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_)
                )
            ) || matches!(message.payload, NetlinkPayload::Overrun(_));
            if !relevant {
                continue;
            }
            let noticed = std::time::Instant::now();
            // One dump for a burst (an interface going down drops all its
            // addresses): take what else has arrived first.
            while let Ok(Some(_)) =
                tokio::time::timeout(std::time::Duration::ZERO, messages.next()).await
            {}
            match dump(&handle).await {
                Ok(now) if now == last => {}
                Ok(now) => {
                    last.clone_from(&now);
                    let update = Update {
                        change: Published::LocalAddresses(now),
                        noticed,
                    };
                    if tx.send(update).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the node's addresses"),
            }
        }
    });
    Ok(first)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{NodeAddresses, NodePortAddresses};

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn the_flag_takes_primary_or_cidrs() {
        assert_eq!("primary".parse(), Ok(NodePortAddresses::Primary));
        let cidrs: NodePortAddresses = "10.0.0.0/8, fd00::/64".parse().expect("cidrs");
        assert_eq!(cidrs.to_string(), "10.0.0.0/8,fd00::/64");
        let error = "10.0.0.0/8,eth0"
            .parse::<NodePortAddresses>()
            .expect_err("not a CIDR");
        assert!(error.contains("\"eth0\" is not a CIDR"), "{error}");
    }

    #[test]
    fn primary_takes_the_node_objects_addresses_else_the_routable_local_ones() {
        let local = ips(&[
            "127.0.0.1",
            "10.0.0.5",
            "169.254.1.1",
            "fe80::1",
            "fd00::5",
            "::1",
        ]);
        let mut addresses = NodeAddresses {
            mode: NodePortAddresses::Primary,
            node_ips: None,
            local: local.into_iter().collect(),
        };
        assert_eq!(
            addresses.chosen().into_iter().collect::<Vec<_>>(),
            ips(&["10.0.0.5", "fd00::5"])
        );
        addresses.node_ips = Some(ips(&["192.168.1.7"]));
        assert_eq!(
            addresses.chosen().into_iter().collect::<Vec<_>>(),
            ips(&["192.168.1.7"])
        );
    }

    #[test]
    fn cidrs_filter_the_local_addresses_loopback_included() {
        let addresses = NodeAddresses {
            mode: "127.0.0.0/8,10.0.0.0/24".parse().expect("cidrs"),
            node_ips: Some(ips(&["192.168.1.7"])),
            local: ips(&["127.0.0.1", "10.0.0.5", "10.0.1.5", "fd00::5"])
                .into_iter()
                .collect(),
        };
        assert_eq!(
            addresses.chosen().into_iter().collect::<Vec<_>>(),
            ips(&["10.0.0.5", "127.0.0.1"])
        );
    }

    #[test]
    fn primary_ips_prefer_internal_and_take_one_per_family() {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n"},
                {"type": "ExternalIP", "address": "203.0.113.9"},
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "InternalIP", "address": "10.0.0.6"},
                {"type": "ExternalIP", "address": "2001:db8::9"},
            ]}
        }))
        .expect("node");
        assert_eq!(super::primary_ips(&node), ips(&["10.0.0.5", "2001:db8::9"]));
    }
}
