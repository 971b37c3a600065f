//! Which endpoints of a frontend are used (`topology.go`,
//! `CategorizeEndpoints`): ready ones, local ones for
//! `internalTrafficPolicy: Local`, those the topology hints allow, or the
//! serving and terminating ones when none is ready.

use std::net::SocketAddr;

use super::{NodeContext, slices::Endpoint};

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
/// least one names this node (or zone); otherwise they are ignored. Node
/// hints come first: kube-proxy's `PreferSameTrafficDistribution` gate is
/// GA and locked on since v1.35.
fn topology(endpoints: &[(SocketAddr, &Endpoint<'_>)], node: &NodeContext) -> Topology {
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
    } else if all_node_hints && for_node {
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
pub(super) fn usable_backends(
    endpoints: &[(SocketAddr, &Endpoint<'_>)],
    local: bool,
    node: &NodeContext,
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
        // Only endpoints on this node; topology does not apply.
        let ready = pick(&|e| e.is_on(node) && e.ready);
        if ready.is_empty() {
            pick(&|e| e.is_on(node) && fallback(e))
        } else {
            ready
        }
    } else {
        let mode = topology(endpoints, node);
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
