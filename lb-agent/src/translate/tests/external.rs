//! Every address of a Service beyond its `ClusterIP`: node ports, external
//! IPs and load-balancer VIPs, case by case against kube-proxy v1.35
//! (`serviceport.go`, `newBaseServiceInfo`; `topology.go`,
//! `CategorizeEndpoints`; the nftables proxier's external chains).

use super::{
    assert_clean, backends, entry, frontends, node, problems, run, run_with, web, web_slice,
};
use crate::{
    model::{FrontendKind, FrontendScope},
    translate::Options,
    translate::testing::{
        Metadata as _, PortFields as _, SliceBuilder, endpoint, port, ready, service, terminating,
    },
};

/// The external addresses of [`web_lb`]'s port (the node port as its
/// placeholder).
const WEB_LB_EXTERNAL: [&str; 3] = [
    "0.0.0.0:30080/TCP",
    "192.0.2.10:80/TCP",
    "198.51.100.7:80/TCP",
];

/// One endpoint of `web` on node-1 (this node in `run`), one on node-2.
fn one_here_one_there() -> [SliceBuilder; 1] {
    [web_slice(
        "web-1",
        [
            endpoint("10.1.0.1").node("node-1"),
            endpoint("10.1.0.2").node("node-2"),
        ],
    )]
}

/// `web` of type LoadBalancer: node port 30080, an external IP, a VIP.
fn web_lb() -> crate::translate::testing::ServiceBuilder {
    service("web")
        .type_("LoadBalancer")
        .cluster_ip("10.0.0.1")
        .external_ips(&["192.0.2.10"])
        .ingress("198.51.100.7", None)
        .port(port(80).name("http").target_name("http").node_port(30_080))
}

#[test]
fn every_address_of_a_service_is_a_frontend_of_its_kind() {
    let slices = [web_slice("web-1", [ready("10.1.0.1"), ready("10.1.0.2")])];
    let t = run(&[web_lb()], &slices);
    assert_clean(&t);
    // The node port stands for every node-port address (the unspecified
    // address of its family); the sync loop expands it.
    assert_eq!(
        frontends(&t),
        [
            "0.0.0.0:30080/TCP",
            "10.0.0.1:80/TCP",
            "192.0.2.10:80/TCP",
            "198.51.100.7:80/TCP"
        ]
    );
    let kinds: Vec<FrontendKind> = t.state.values().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            FrontendKind::NodePort,
            FrontendKind::ClusterIP,
            FrontendKind::ExternalIP,
            FrontendKind::LoadBalancer
        ]
    );
    for frontend in frontends(&t) {
        assert_eq!(
            backends(&t, &frontend),
            ["10.1.0.1:8080", "10.1.0.2:8080"],
            "{frontend}"
        );
        assert_eq!(entry(&t, &frontend).name.to_string(), "default/web:http");
    }
}

#[test]
fn external_ips_need_no_type_and_a_node_port_needs_one() {
    let t = run(&[web().external_ips(&["192.0.2.10"])], &[]);
    assert_clean(&t);
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP", "192.0.2.10:80/TCP"]);

    // The API server allocates node ports to NodePort and LoadBalancer
    // Services only, and rejects one on a ClusterIP Service.
    let t = run(
        &[service("web")
            .cluster_ip("10.0.0.1")
            .port(port(80).node_port(30_080))],
        &[],
    );
    assert_eq!(
        problems(&t),
        [
            "Service default/web: spec.ports[0].nodePort: may not be used when `type` is not NodePort or LoadBalancer"
        ]
    );
    // A LoadBalancer without node ports (allocateLoadBalancerNodePorts: false).
    let t = run(
        &[service("web")
            .type_("LoadBalancer")
            .cluster_ip("10.0.0.1")
            .ingress("198.51.100.7", None)
            .port(port(80))],
        &[],
    );
    assert_clean(&t);
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP", "198.51.100.7:80/TCP"]);
}

#[test]
fn proxy_mode_and_hostname_ingress_points_are_left_to_the_load_balancer() {
    let lb = service("web")
        .type_("LoadBalancer")
        .cluster_ip("10.0.0.1")
        .ingress("198.51.100.1", Some("VIP"))
        .ingress("198.51.100.2", Some("Proxy"))
        .ingress("198.51.100.3", None)
        .port(port(80));
    let t = run(&[lb], &[]);
    assert_clean(&t);
    assert_eq!(
        frontends(&t),
        [
            "10.0.0.1:80/TCP",
            "198.51.100.1:80/TCP",
            "198.51.100.3:80/TCP"
        ]
    );
}

#[test]
fn source_ranges_make_the_vips_of_their_family_for_other_hosts_only() {
    // Whether a connection may pass depends on its source address, which
    // a socket hook does not know yet: the VIP is served to clients from
    // other hosts only (the tc programs check the ranges), and a client on
    // the node goes to the load balancer. The external IPs are not subject
    // to the ranges (kube-proxy applies them to load-balancer VIPs only).
    let lb = service("web")
        .type_("LoadBalancer")
        .cluster_ips(&["10.0.0.1", "fd00::1"])
        .external_ips(&["192.0.2.10"])
        .ingress("198.51.100.7", None)
        .ingress("2001:db8::7", None)
        .source_ranges(&[" 203.0.113.9/24 ", "192.0.2.0/25"])
        .port(port(80));
    let t = run(&[lb], &[]);
    assert_clean(&t);
    assert_eq!(
        frontends(&t),
        [
            "10.0.0.1:80/TCP",
            "192.0.2.10:80/TCP",
            "198.51.100.7:80/TCP (from other hosts)",
            "[2001:db8::7]:80/TCP",
            "[fd00::1]:80/TCP"
        ]
    );
    let ranges = |f: &str| -> Vec<String> {
        entry(&t, f)
            .source_ranges
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    // Sorted, truncated to their prefixes, of the VIP's family only.
    assert_eq!(
        ranges("198.51.100.7:80/TCP (from other hosts)"),
        ["192.0.2.0/25", "203.0.113.0/24"]
    );
    for other in [
        "192.0.2.10:80/TCP",
        "[2001:db8::7]:80/TCP",
        "10.0.0.1:80/TCP",
    ] {
        assert!(ranges(other).is_empty(), "{other}");
    }
}

#[test]
fn each_family_gets_its_own_node_port_and_addresses() {
    let dual = service("web")
        .type_("NodePort")
        .cluster_ips(&["10.0.0.1", "fd00::1"])
        .external_ips(&["192.0.2.10", "2001:db8::10"])
        .port(port(80).node_port(30_080));
    let t = run(&[dual], &[]);
    assert_clean(&t);
    assert_eq!(
        frontends(&t),
        [
            "0.0.0.0:30080/TCP",
            "10.0.0.1:80/TCP",
            "192.0.2.10:80/TCP",
            "[::]:30080/TCP",
            "[2001:db8::10]:80/TCP",
            "[fd00::1]:80/TCP"
        ]
    );
    // An address of a family the Service does not have is not served
    // (kube-proxy's proxier of each family filters them).
    let single = service("web")
        .cluster_ip("10.0.0.1")
        .external_ips(&["2001:db8::10"])
        .port(port(80));
    let t = run(&[single], &[]);
    assert_clean(&t);
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP"]);
}

#[test]
fn external_addresses_use_the_cluster_wide_endpoints_whatever_the_policies() {
    let slices = one_here_one_there();
    // internalTrafficPolicy: Local governs the ClusterIP only
    // (UsesClusterEndpoints is true for an externally accessible port);
    // externalTrafficPolicy: Local is short-circuited for clients on the
    // node, which are all a socket hook sees.
    for (internal, external) in [
        ("Local", "Cluster"),
        ("Cluster", "Local"),
        ("Local", "Local"),
    ] {
        let svc = web_lb()
            .internal_traffic_policy(internal)
            .external_traffic_policy(external);
        let t = run(&[svc], &slices);
        assert_clean(&t);
        let cluster_ip = if internal == "Local" {
            vec!["10.1.0.1:8080"]
        } else {
            vec!["10.1.0.1:8080", "10.1.0.2:8080"]
        };
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            cluster_ip,
            "{internal}/{external}"
        );
        for external_address in WEB_LB_EXTERNAL {
            assert_eq!(
                backends(&t, external_address),
                ["10.1.0.1:8080", "10.1.0.2:8080"],
                "{external_address} with {internal}/{external}"
            );
        }
    }
}

#[test]
fn external_local_adds_this_nodes_endpoints_for_clients_from_other_hosts() {
    let slices = one_here_one_there();
    let t = run(&[web_lb().external_traffic_policy("Local")], &slices);
    assert_clean(&t);
    for external_address in WEB_LB_EXTERNAL {
        // Clients on the node: every endpoint (the short circuit).
        assert_eq!(
            backends(&t, external_address),
            ["10.1.0.1:8080", "10.1.0.2:8080"]
        );
        // Clients from other hosts (the tc programs): node-1's only.
        let scoped = format!("{external_address} (from other hosts)");
        assert_eq!(backends(&t, &scoped), ["10.1.0.1:8080"], "{scoped}");
    }
    // The ClusterIP has no such entry; a Cluster policy adds none at all.
    assert!(!frontends(&t).contains(&"10.0.0.1:80/TCP (from other hosts)".to_owned()));
    let t = run(&[web_lb()], &slices);
    assert!(t.state.keys().all(|f| f.scope == FrontendScope::Any));
    // No endpoint on this node: the scoped entries exist and are empty,
    // so that the tc programs drop rather than use the cluster-wide ones.
    let t = run_with(
        &[web_lb().external_traffic_policy("Local")],
        &slices,
        &node(Some("node-3"), None),
        &Options::default(),
    );
    let scoped: Vec<_> = t
        .state
        .iter()
        .filter(|(f, _)| f.scope == FrontendScope::External)
        .collect();
    assert_eq!(scoped.len(), 3);
    assert!(scoped.iter().all(|(_, e)| e.backends.is_empty()));
}

#[test]
fn the_external_local_entry_follows_the_owner_of_its_address() {
    // Two Services claim one external IP: the smaller name keeps it for
    // every client, and only its scoped entry is kept.
    let a = web_lb().external_traffic_policy("Local");
    let b = service("zzz")
        .cluster_ip("10.0.0.2")
        .external_ips(&["192.0.2.10"])
        .port(port(80).name("http").target_name("http"))
        .external_traffic_policy("Local");
    let slices = [web_slice("web-1", [endpoint("10.1.0.1").node("node-1")])];
    let t = run(&[b, a], &slices);
    let owners: Vec<_> = t
        .state
        .iter()
        .filter(|(f, _)| f.ip.to_string() == "192.0.2.10")
        .map(|(f, e)| (f.scope, e.name.name.clone()))
        .collect();
    assert_eq!(
        owners,
        [
            (FrontendScope::Any, "web".to_owned()),
            (FrontendScope::External, "web".to_owned())
        ]
    );
}

#[test]
fn no_endpoints_refuse_and_terminating_ones_serve_on_every_address() {
    let t = run(&[web_lb()], &[]);
    assert_clean(&t);
    for frontend in frontends(&t) {
        assert_eq!(backends(&t, &frontend), Vec::<String>::new(), "{frontend}");
    }
    let slices = [web_slice("web-1", [terminating("10.1.0.9")])];
    let t = run(&[web_lb()], &slices);
    for frontend in frontends(&t) {
        assert_eq!(backends(&t, &frontend), ["10.1.0.9:8080"], "{frontend}");
    }
}

#[test]
fn settings_apply_to_every_address() {
    let svc = web_lb()
        .session_affinity("ClientIP")
        .affinity_timeout(60)
        .annotation(crate::translate::ANNOTATION_ALGORITHM, "round-robin");
    let t = run(&[svc], &[]);
    assert_clean(&t);
    for (frontend, e) in &t.state {
        assert_eq!(e.affinity_timeout_s, Some(60), "{frontend}");
        assert_eq!(
            e.algorithm,
            crate::model::Algorithm::RoundRobin,
            "{frontend}"
        );
    }
}

#[test]
fn addresses_the_api_server_rejects_are_problems() {
    let svc = web()
        .type_("LoadBalancer")
        .external_ips(&["192.0.2.10", "not-an-ip", "127.0.0.1", "0.0.0.0", "fe80::1"])
        .ingress("198.51.100.7", Some("Tunnel"))
        .ingress("300.1.1.1", None)
        .source_ranges(&["10.0.0.0/33"]);
    let t = run(&[svc], &[]);
    assert_eq!(
        problems(&t),
        [
            "Service default/web: spec.externalIPs[1]: \"not-an-ip\" is not an IP address",
            "Service default/web: spec.externalIPs[2]: 127.0.0.1 may not be unspecified, loopback, link-local or multicast",
            "Service default/web: spec.externalIPs[3]: 0.0.0.0 may not be unspecified, loopback, link-local or multicast",
            "Service default/web: spec.externalIPs[4]: fe80::1 may not be unspecified, loopback, link-local or multicast",
            "Service default/web: spec.loadBalancerSourceRanges[0]: \"10.0.0.0/33\" is not a CIDR",
            "Service default/web: status.loadBalancer.ingress[0].ipMode: unsupported ipMode \"Tunnel\": expected VIP or Proxy",
            "Service default/web: status.loadBalancer.ingress[1].ip: \"300.1.1.1\" is not an IP address",
        ]
    );
    // The rest is still served.
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP", "192.0.2.10:80/TCP"]);

    let t = run(&[web().external_traffic_policy("Nearby")], &[]);
    assert_eq!(
        problems(&t),
        [
            "Service default/web: spec.externalTrafficPolicy: unsupported value \"Nearby\": expected Cluster or Local"
        ]
    );
    assert_eq!(frontends(&t), Vec::<String>::new());
}

#[test]
fn an_external_ip_on_another_services_cluster_ip_is_a_conflict_the_smaller_name_wins() {
    let a = service("a").cluster_ip("10.0.0.1").port(port(80));
    let b = service("b")
        .cluster_ip("10.0.0.2")
        .external_ips(&["10.0.0.1"])
        .port(port(80));
    let t = run(&[b, a], &[]);
    assert_eq!(
        problems(&t),
        [
            "Service default/b: spec.externalIPs[0]: 10.0.0.1:80/TCP is also a frontend of default/a, which keeps it"
        ]
    );
    assert_eq!(entry(&t, "10.0.0.1:80/TCP").name.to_string(), "default/a");
    assert_eq!(entry(&t, "10.0.0.1:80/TCP").kind, FrontendKind::ClusterIP);
}

#[test]
fn one_address_twice_in_one_service_is_one_frontend() {
    // The VIP is also listed as an external IP: the first kind keeps it.
    let svc = service("web")
        .type_("LoadBalancer")
        .cluster_ip("10.0.0.1")
        .external_ips(&["198.51.100.7"])
        .ingress("198.51.100.7", None)
        .port(port(80));
    let t = run(&[svc], &[]);
    assert_clean(&t);
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP", "198.51.100.7:80/TCP"]);
    assert_eq!(
        entry(&t, "198.51.100.7:80/TCP").kind,
        FrontendKind::ExternalIP
    );
}
