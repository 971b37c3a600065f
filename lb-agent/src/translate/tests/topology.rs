//! Topology hints (zones, and nodes behind kube-proxy's feature gate) and
//! `internalTrafficPolicy: Local`.

use super::{assert_clean, backends, backends_on, node, run, run_with, web, web_slice};
use crate::translate::{
    Options,
    testing::{
        EndpointBuilder, PortFields as _, ServiceBuilder, endpoint, port, ready, service,
        terminating,
    },
};

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
    assert_eq!(
        backends_on(&node(Some("node-1"), Some("zone-a")), &[web()], &slices),
        ["10.1.0.1:8080", "10.1.0.3:8080"]
    );
    assert_eq!(
        backends_on(&node(Some("node-1"), Some("zone-b")), &[web()], &slices),
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
    assert_eq!(
        backends_on(&node(Some("node-1"), Some("zone-a")), &[web()], &slices),
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
    assert_eq!(
        backends_on(&node(Some("node-1"), Some("zone-a")), &[web()], &slices),
        ["10.1.0.1:8080"]
    );
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
        assert_eq!(
            backends_on(&node, &[web()], &slices),
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
fn for_nodes_hints_keep_this_node_only_as_kube_proxy_1_35() {
    // PreferSameTrafficDistribution is GA (locked on) since v1.35: node
    // hints come before zone hints.
    let here = node(Some("node-1"), Some("zone-a"));
    let slices = [web_slice("web-1", node_hinted(true))];
    assert_eq!(backends_on(&here, &[web()], &slices), ["10.1.0.1:8080"]);
    // No endpoint for this node: fall through to the zone hints.
    assert_eq!(
        backends_on(&node(Some("node-9"), Some("zone-b")), &[web()], &slices),
        ["10.1.0.3:8080"]
    );
    // Not every endpoint has a node hint: zone hints again.
    let [first, second, _] = node_hinted(true);
    let partial = [first, second, zoned("10.1.0.3", &["zone-b"])];
    let slices = [web_slice("web-1", partial)];
    assert_eq!(
        backends_on(&here, &[web()], &slices),
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
    assert_eq!(
        backends_on(&node(Some("node-2"), Some("zone-a")), &[local()], &slices),
        ["10.1.0.2:8080"]
    );
}

#[test]
fn internal_traffic_policy_local_without_local_endpoints_refuses() {
    let slices = [web_slice("web-1", [endpoint("10.1.0.1").node("node-2")])];
    for node in [
        node(Some("node-1"), None),
        node(None, None),
        node(Some(""), None),
    ] {
        assert_eq!(
            backends_on(&node, &[local()], &slices),
            Vec::<String>::new(),
            "{node:?}"
        );
    }
    // An endpoint without nodeName is never local, even for a nameless node.
    let slices = [web_slice("web-1", [endpoint("10.1.0.1")])];
    assert_eq!(
        backends_on(&node(None, None), &[local()], &slices),
        Vec::<String>::new()
    );
}

#[test]
fn internal_traffic_policy_local_falls_back_to_local_terminating() {
    let slices = [web_slice(
        "web-1",
        [
            terminating("10.1.0.1").node("node-1"),
            endpoint("10.1.0.2").node("node-2"),
        ],
    )];
    assert_eq!(
        backends(&run(&[local()], &slices), "10.0.0.1:80/TCP"),
        ["10.1.0.1:8080"]
    );
}
