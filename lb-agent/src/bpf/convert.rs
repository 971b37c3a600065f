//! Conversions between the model (`crate::model`) and the map types of
//! `lb_common`: addresses, frontends, backends, affinity members, names,
//! and whole service records read back from the maps.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    ops::Range,
};

use ipnet::IpNet;
use lb_common::{
    affinity::MemberKey,
    backend::Backend,
    service::{
        BackendRange, FLAG_AFFINITY, FLAG_SOURCE_RANGES, ServiceKey, ServiceName, ServiceState,
        SourceRange,
    },
};

use super::maps::ServiceRecord;
use crate::model::{
    Algorithm, Frontend, FrontendKind, FrontendScope, Protocol, ServiceEntry, ServicePortName,
};

/// The 16-byte form of an address (IPv4-mapped for IPv4).
#[must_use]
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr16`].
#[must_use]
pub fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

#[must_use]
pub fn service_key(fe: &Frontend) -> ServiceKey {
    ServiceKey {
        addr: addr16(fe.ip),
        port_be: fe.port.to_be(),
        proto: fe.protocol.number(),
        scope: fe.scope.to_raw(),
    }
}

/// The inverse of [`service_key`]; `None` for a protocol or scope the
/// model lacks.
#[must_use]
pub fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        ip: ip_of(key.addr),
        port: u16::from_be(key.port_be),
        protocol: Protocol::from_number(key.proto)?,
        scope: FrontendScope::from_raw(key.scope)?,
    })
}

#[must_use]
pub(crate) fn backend(b: &SocketAddr) -> Backend {
    Backend {
        addr: addr16(b.ip()),
        port_be: b.port().to_be(),
        pad: [0; 6],
    }
}

/// The inverse of [`backend`].
#[must_use]
pub fn socket_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(ip_of(b.addr), u16::from_be(b.port_be))
}

#[must_use]
fn member_key(id: u32, b: &SocketAddr) -> MemberKey {
    MemberKey {
        service_id: id,
        port_be: b.port().to_be(),
        pad: [0; 2],
        addr: addr16(b.ip()),
    }
}

/// The members of service `id` (`lb_affinity_members`): one per backend
/// when the entry has session affinity or is one the tc programs serve
/// (they check that a flow's backend is still an endpoint), none otherwise.
#[must_use]
pub(crate) fn members(id: u32, entry: Option<&ServiceEntry>) -> BTreeSet<MemberKey> {
    entry
        .filter(|e| e.affinity_timeout_s.is_some() || e.kind != FrontendKind::ClusterIP)
        .map(|e| e.backends.iter().map(|b| member_key(id, b)).collect())
        .unwrap_or_default()
}

/// The `lb_source_ranges` entries of service `id` (prefix length and
/// data): one per `loadBalancerSourceRanges` range of the entry.
#[must_use]
pub(crate) fn source_ranges(id: u32, entry: Option<&ServiceEntry>) -> BTreeSet<(u32, SourceRange)> {
    entry
        .map(|e| {
            e.source_ranges
                .iter()
                .map(|net| {
                    // IPv4 ranges match the IPv4-mapped form: 96 more bits.
                    let bits = match net {
                        IpNet::V4(v4) => 96 + u32::from(v4.prefix_len()),
                        IpNet::V6(v6) => u32::from(v6.prefix_len()),
                    };
                    let data = SourceRange {
                        service_id_be: id.to_be_bytes(),
                        addr: addr16(net.network()),
                    };
                    (32 + bits, data)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The record of a service whose backends are `range`.
#[must_use]
pub(crate) fn service_state(
    frontend: &Frontend,
    entry: &ServiceEntry,
    range: &Range<u32>,
) -> ServiceState {
    ServiceState {
        backends: BackendRange {
            first: range.start,
            count: range.end - range.start,
        },
        key: service_key(frontend),
        algorithm: entry.algorithm.to_raw(),
        flags: if entry.affinity_timeout_s.is_some() {
            FLAG_AFFINITY
        } else {
            0
        } | if entry.source_ranges.is_empty() {
            0
        } else {
            FLAG_SOURCE_RANGES
        },
        kind: entry.kind.to_raw(),
        pad: 0,
        affinity_timeout_s: entry.affinity_timeout_s.unwrap_or(0),
        pad2: [0; 4],
    }
}

/// A range as the programs read it: one little-endian word, `first` in the
/// low half (the layout of `BackendRange`).
#[must_use]
pub(crate) fn range_word(range: &Range<u32>) -> u64 {
    u64::from(range.start) | (u64::from(range.end - range.start) << 32)
}

/// The UTF-8 text of a NUL-padded name.
#[must_use]
pub(crate) fn name_str(name: &ServiceName) -> String {
    let end = name
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(name.name.len());
    String::from_utf8_lossy(&name.name[..end]).into_owned()
}

/// A name as stored (truncated to fit, on a character boundary).
#[must_use]
pub(crate) fn service_name(text: &str) -> ServiceName {
    let mut name = ServiceName { name: [0; 128] };
    let mut end = text.len().min(name.name.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    name.name[..end].copy_from_slice(&text.as_bytes()[..end]);
    name
}

/// Parses `namespace/name:port` back (the form `ServicePortName` prints).
fn parse_name(s: &str) -> ServicePortName {
    let (namespace, rest) = s.split_once('/').unwrap_or(("", s));
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    ServicePortName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port: port.to_owned(),
    }
}

/// Rebuilds a frontend and entry from one record of the service table.
///
/// # Errors
/// What makes the record unusable, for the log.
pub(crate) fn adopt_record(
    r: &ServiceRecord,
    service_capacity: u32,
) -> Result<(Frontend, ServiceEntry, ServiceState), String> {
    let frontend = frontend_of(&r.key)
        .ok_or_else(|| format!("unknown protocol {} in {:?}", r.key.proto, r.key))?;
    if r.id >= service_capacity {
        return Err(format!("{frontend}: id {} beyond the table", r.id));
    }
    let state = r
        .state
        .ok_or_else(|| format!("{frontend}: id {} has no record", r.id))?;
    if state.key != r.key {
        return Err(format!(
            "{frontend}: the record of id {} is another frontend's",
            r.id
        ));
    }
    let backends = r
        .backends
        .as_ref()
        .ok_or_else(|| format!("{frontend}: backend range outside the table"))?;
    let algorithm = Algorithm::from_raw(state.algorithm)
        .ok_or_else(|| format!("{frontend}: unknown algorithm {}", state.algorithm))?;
    let name = r.name.as_deref().map(parse_name).unwrap_or_default();
    let kind = FrontendKind::from_raw(state.kind)
        .ok_or_else(|| format!("{frontend}: unknown kind {}", state.kind))?;
    Ok((
        frontend,
        ServiceEntry {
            name,
            kind,
            algorithm,
            affinity_timeout_s: (state.flags & FLAG_AFFINITY != 0)
                .then_some(state.affinity_timeout_s),
            backends: backends.iter().map(socket_addr).collect(),
            // Not read back: the first sync rewrites them if they differ.
            source_ranges: Vec::new(),
        },
        state,
    ))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::{addr16, frontend_of, ip_of, parse_name, service_key};
    use crate::model::{Frontend, FrontendScope, Protocol};

    #[test]
    fn addresses_round_trip_both_families() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        ] {
            assert_eq!(ip_of(addr16(ip)), ip);
            let fe = Frontend::new(ip, 8080, Protocol::Udp);
            assert_eq!(frontend_of(&service_key(&fe)), Some(fe));
            let local = Frontend {
                scope: FrontendScope::External,
                ..fe
            };
            assert_eq!(frontend_of(&service_key(&local)), Some(local));
            assert_ne!(service_key(&local), service_key(&fe));
        }
        assert_eq!(
            &addr16("10.0.0.1".parse().expect("ip"))[..12],
            &lb_common::addr::V4_MAPPED_PREFIX
        );
    }

    #[test]
    fn names_parse_back() {
        let n = parse_name("default/web:http");
        assert_eq!(
            (n.namespace.as_str(), n.name.as_str(), n.port.as_str()),
            ("default", "web", "http")
        );
        assert_eq!(parse_name("kube-system/dns").to_string(), "kube-system/dns");
    }
}
