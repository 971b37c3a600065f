//! Address families, and a Service's `ClusterIP`s: at most one per family.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServiceSpec;

use super::problem::{Obj, Problems};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// The `ClusterIP`s, at most one per family (IPv4, IPv6): `spec.clusterIPs`,
/// or `spec.clusterIP` without it. `None` when the Service is headless or
/// has no `ClusterIP`.
pub(super) fn cluster_ips(
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
