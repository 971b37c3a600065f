//! A Service's addresses beyond its `ClusterIP`s: `spec.externalIPs` and
//! the load balancer's VIPs (`status.loadBalancer.ingress[].ip`), as
//! kube-proxy reads them (`serviceport.go`, `newBaseServiceInfo`), and the
//! external traffic policy.
//!
//! The `nodePort`s are read with the ports (`validate::ports`); the node
//! addresses they answer on are not known here (see `model::Frontend`).

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::{
    family::Family,
    problem::{Obj, Problems},
};
use crate::model::FrontendKind;

/// One external address of a Service, with the field it came from (for
/// the message when another Service has the same frontend).
pub(super) struct External {
    pub(super) ip: IpAddr,
    pub(super) kind: FrontendKind,
    pub(super) field: String,
    /// For a load-balancer VIP whose family has `loadBalancerSourceRanges`:
    /// those ranges (the VIP is then for clients from other hosts only).
    pub(super) source_ranges: Vec<IpNet>,
}

/// `spec.externalIPs`, then the VIPs of the load balancer. Each address
/// that the API server would reject is a problem and skipped.
///
/// A load-balancer address is left out when its `ipMode` is `Proxy`: the
/// load balancer proxies to the nodes, so traffic to it must reach the load
/// balancer (kube-proxy's `IsVIPMode`).
///
/// A VIP of a family that has `loadBalancerSourceRanges` carries them:
/// whether a connection is allowed depends on its source address, which a
/// socket hook does not know before the connection is routed, so only the
/// tc programs serve it; a client on the node goes to the load balancer,
/// which applies the ranges (the README's Semantics section says more).
pub(super) fn external_addresses(
    service: &Service,
    spec: &ServiceSpec,
    object: &Obj<'_>,
    problems: &mut Problems,
) -> Vec<External> {
    let mut out = Vec::new();
    for (i, text) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        match external_ip(text) {
            Ok(ip) => out.push(External {
                ip,
                kind: FrontendKind::ExternalIP,
                field,
                source_ranges: Vec::new(),
            }),
            Err(message) => problems.push(object, field, message),
        }
    }
    let ranges = source_ranges(spec, object, problems);
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ingress) in ingress.into_iter().flatten().enumerate() {
        let Some(text) = ingress.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue; // A hostname: DNS points clients at the load balancer.
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        match ingress.ip_mode.as_deref() {
            None | Some("VIP") => {}
            Some("Proxy") => continue,
            Some(other) => {
                let message = format!("unsupported ipMode {other:?}: expected VIP or Proxy");
                problems.push(
                    object,
                    format!("status.loadBalancer.ingress[{i}].ipMode"),
                    message,
                );
                continue;
            }
        }
        match external_ip(text) {
            Ok(ip) => out.push(External {
                ip,
                kind: FrontendKind::LoadBalancer,
                field,
                source_ranges: ranges
                    .iter()
                    .filter(|r| Family::of(r.addr()) == Family::of(ip))
                    .copied()
                    .collect(),
            }),
            Err(message) => problems.push(object, field, message),
        }
    }
    out
}

/// An external or load-balancer address, as the API server validates it
/// (`ValidateNonSpecialIP`): not unspecified, loopback, link-local or
/// multicast.
fn external_ip(text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address"))?;
    let special = match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_loopback() || v4.is_link_local() || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_unicast_link_local()
                || v6.is_multicast()
        }
    };
    if special {
        return Err(format!(
            "{ip} may not be unspecified, loopback, link-local or multicast"
        ));
    }
    Ok(ip)
}

/// `loadBalancerSourceRanges`, each truncated to its prefix (kube-proxy
/// trims spaces, which the API server's validation lets through).
fn source_ranges(spec: &ServiceSpec, object: &Obj<'_>, problems: &mut Problems) -> Vec<IpNet> {
    let mut ranges = Vec::new();
    for (i, text) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        match text.trim().parse::<IpNet>() {
            Ok(net) => ranges.push(net.trunc()),
            Err(_) => problems.push(
                object,
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{text:?} is not a CIDR"),
            ),
        }
    }
    ranges.sort_unstable();
    ranges.dedup();
    ranges
}
