//! `healthCheckNodePort`: which Services have one, and how their local
//! endpoints are counted (kube-proxy v1.35: `NeedsHealthCheck`,
//! `LocalReadyEndpoints`).

use super::{http, node, problems, run, run_with};
use crate::{
    model::{HealthCheck, ServiceName},
    translate::{
        Options,
        testing::{
            PortFields as _, ServiceBuilder, endpoint, port, ready, service, slice, slice_port,
            terminating,
        },
    },
};

/// `web`: a LoadBalancer with `externalTrafficPolicy: Local`, health check
/// port 32000, and two ports (`http` 80, `metrics` 9090).
fn web_local() -> ServiceBuilder {
    service("web")
        .type_("LoadBalancer")
        .cluster_ip("10.0.0.1")
        .external_traffic_policy("Local")
        .health_check_node_port(32_000)
        .port(port(80).name("http").node_port(30_080))
        .port(port(9090).name("metrics").node_port(30_090))
}

fn web_name() -> ServiceName {
    ServiceName {
        namespace: "default".to_owned(),
        name: "web".to_owned(),
    }
}

#[test]
fn ready_endpoints_on_this_node_are_counted_once_per_address() {
    let slices = [slice("web-1", "web")
        .port(http())
        .port(slice_port(9090).name("metrics"))
        .endpoints([
            // Serves both ports: one endpoint, as kube-proxy counts.
            ready("10.1.0.1").node("node-1"),
            ready("10.1.0.2").node("node-1"),
            // Elsewhere, not ready, or only still serving: not counted.
            ready("10.1.0.3").node("node-2"),
            endpoint("10.1.0.4").ready(false).node("node-1"),
            terminating("10.1.0.5").node("node-1"),
            ready("10.1.0.6"),
        ])];
    let t = run(&[web_local()], &slices);
    assert_eq!(problems(&t), Vec::<String>::new());
    let expected = HealthCheck {
        port: 32_000,
        local_endpoints: 2,
    };
    assert_eq!(t.health_checks, [(web_name(), expected)].into());

    // Without endpoints here the check stays, with none counted.
    let t = run(&[web_local()], &[]);
    assert_eq!(t.health_checks[&web_name()].local_endpoints, 0);
    // A node without a name has no local endpoints.
    let t = run_with(
        &[web_local()],
        &slices,
        &node(None, None),
        &Options::default(),
    );
    assert_eq!(t.health_checks[&web_name()].local_endpoints, 0);
}

#[test]
fn only_load_balancers_with_the_local_policy_have_a_health_check() {
    let cluster = web_local().external_traffic_policy("Cluster");
    let node_port = web_local().type_("NodePort");
    let unset = web_local().health_check_node_port(0);
    for s in [cluster, node_port, unset] {
        let t = run(std::slice::from_ref(&s), &[]);
        assert!(t.health_checks.is_empty(), "{s:?}");
    }
}

#[test]
fn an_invalid_health_check_port_is_a_problem() {
    let t = run(&[web_local().health_check_node_port(70_000)], &[]);
    assert!(t.health_checks.is_empty());
    let found = problems(&t);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("Service default/web: spec.healthCheckNodePort: "),
        "{found:?}"
    );
    // The rest of the Service is still translated.
    assert!(!t.state.is_empty());
}

#[test]
fn a_dual_stack_pod_is_one_local_endpoint() {
    let dual = web_local().cluster_ips(&["10.0.0.1", "fd00::1"]);
    let slices = [
        slice("web-v4", "web").port(http()).endpoints([
            ready("10.1.0.1").node("node-1"),
            ready("10.1.0.2").node("node-1"),
        ]),
        slice("web-v6", "web")
            .address_type("IPv6")
            .port(http())
            .endpoints([
                ready("fd00:1::1").node("node-1"),
                ready("fd00:1::2").node("node-1"),
            ]),
    ];
    let t = run(&[dual], &slices);
    assert_eq!(problems(&t), Vec::<String>::new());
    assert_eq!(t.health_checks[&web_name()].local_endpoints, 2);
}
