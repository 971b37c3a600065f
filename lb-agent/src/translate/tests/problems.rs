//! What is wrong is a problem and skipped, and only that: invalid fields,
//! duplicate objects, frontends two Services claim.

use super::{assert_clean, backends, entry, frontends, http, plain, problems, run, web, web_slice};
use crate::translate::{
    Kind, ObjectRef, Problem,
    testing::{
        Metadata as _, PortFields as _, endpoint, endpoint_at, port, ready, service, slice,
        slice_port,
    },
};

#[test]
fn invalid_cluster_ip_is_a_problem_and_the_rest_is_served() {
    let services = [
        service("web")
            .cluster_ip("10.0.0.1")
            .cluster_ips(&["10.0.0.1", "10.0.0.300"])
            .port(port(80).name("http")),
        plain("api", "10.0.0.2"),
        plain("bad", "not-an-ip"),
        service("twice")
            .cluster_ips(&["10.0.0.3", "10.0.0.4"])
            .port(port(80)),
    ];
    let t = run(&services, &[]);
    assert_eq!(
        problems(&t),
        [
            "Service default/web: spec.clusterIPs[1]: \"10.0.0.300\" is not an IP address",
            "Service default/bad: spec.clusterIP: \"not-an-ip\" is not an IP address",
            "Service default/twice: spec.clusterIPs[1]: a second IPv4 ClusterIP (10.0.0.4): a Service has at most one per family",
        ]
    );
    assert_eq!(
        t.problems[0],
        Problem {
            object: ObjectRef {
                kind: Kind::Service,
                namespace: "default".to_owned(),
                name: "web".to_owned()
            },
            field: "spec.clusterIPs[1]".to_owned(),
            message: "\"10.0.0.300\" is not an IP address".to_owned(),
        }
    );
    assert_eq!(
        frontends(&t),
        ["10.0.0.1:80/TCP", "10.0.0.2:80/TCP", "10.0.0.3:80/TCP"]
    );
}

#[test]
fn invalid_ports_are_problems_and_the_other_ports_are_served() {
    let services = [service("web")
        .cluster_ip("10.0.0.1")
        .port(port(0).name("a"))
        .port(port(70_000).name("b"))
        .port(port(80).name("c").protocol("ICMP"))
        .port(port(81).name("d").target(0))
        .port(port(82).name("e").target_name("Not_A_Name"))
        .port(port(83).name("f").target_name("8080"))
        .port(port(84).name("ok").protocol("UDP").target(9000))
        .port(port(85).name("ok").protocol("UDP"))
        .port(port(86).name("ok"))];
    let t = run(&services, &[]);
    assert_eq!(
        problems(&t),
        [
            "Service default/web: spec.ports[0].port: 0 is not a valid port number: expected 1 to 65535",
            "Service default/web: spec.ports[1].port: 70000 is not a valid port number: expected 1 to 65535",
            "Service default/web: spec.ports[2].protocol: unsupported protocol \"ICMP\": expected TCP, UDP or SCTP",
            "Service default/web: spec.ports[3].targetPort: 0 is not a valid port number: expected 1 to 65535",
            "Service default/web: spec.ports[4].targetPort: \"Not_A_Name\" is neither a port number nor a port name (at most 15 \
                 lower-case letters, digits and inner hyphens)",
            "Service default/web: spec.ports[5].targetPort: \"8080\" is neither a port number nor a port name (at most 15 \
                 lower-case letters, digits and inner hyphens)",
            "Service default/web: spec.ports[7]: a second UDP port named \"ok\": port names must be unique",
        ]
    );
    assert_eq!(frontends(&t), ["10.0.0.1:84/UDP", "10.0.0.1:86/TCP"]);
}

#[test]
fn invalid_type_or_traffic_policy_is_a_problem() {
    let services = [
        plain("a", "10.0.0.1").type_("Magic"),
        plain("b", "10.0.0.2").internal_traffic_policy("Nearby"),
    ];
    let t = run(&services, &[]);
    assert_eq!(
        problems(&t),
        [
            "Service default/a: spec.type: unsupported type \"Magic\": expected ClusterIP, NodePort, LoadBalancer or ExternalName",
            "Service default/b: spec.internalTrafficPolicy: unsupported value \"Nearby\": expected Cluster or Local",
        ]
    );
    assert!(t.state.is_empty());
}

#[test]
fn slice_problems_skip_only_what_is_wrong() {
    let slices = [
        slice("orphan", "web").unlabelled(),
        web_slice("web-bad-type", [ready("10.1.0.9")]).address_type("IPv5"),
        slice("web-1", "web")
            .port(slice_port(7000))
            .port(slice_port(0).name("http"))
            .port(http().protocol("QUIC"))
            .port(http())
            .endpoints([
                endpoint("10.1.0.300"),
                endpoint("fd00::1"),
                endpoint_at(&[]),
                ready("10.1.0.1"),
            ]),
    ];
    let t = run(&[web()], &slices);
    assert_eq!(
        problems(&t),
        [
            "EndpointSlice default/orphan: metadata.labels[\"kubernetes.io/service-name\"]: missing: the label names the Service of the slice",
            "EndpointSlice default/web-bad-type: addressType: unsupported address type \"IPv5\": expected IPv4, IPv6 or FQDN",
            "EndpointSlice default/web-1: ports[0].name: missing (the port of an unnamed service port is named \"\")",
            "EndpointSlice default/web-1: ports[1].port: 0 is not a valid port number: expected 1 to 65535",
            "EndpointSlice default/web-1: ports[2].protocol: unsupported protocol \"QUIC\": expected TCP, UDP or SCTP",
            "EndpointSlice default/web-1: endpoints[0].addresses[0]: \"10.1.0.300\" is not an IP address",
            "EndpointSlice default/web-1: endpoints[1].addresses[0]: fd00::1 is not an IPv4 address (the slice's addressType)",
            "EndpointSlice default/web-1: endpoints[2].addresses: empty",
        ]
    );
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
}

#[test]
fn a_slice_shared_by_two_ports_is_checked_once() {
    let services = [service("web")
        .cluster_ip("10.0.0.1")
        .cluster_ips(&["10.0.0.1", "fd00::1"])
        .port(port(80).name("http"))
        .port(port(81).name("b"))];
    let slices = [slice("web-1", "web")
        .port(http())
        .port(slice_port(8081).name("b"))
        .endpoints([endpoint("bad"), ready("10.1.0.1")])];
    let t = run(&services, &slices);
    assert_eq!(
        problems(&t),
        ["EndpointSlice default/web-1: endpoints[0].addresses[0]: \"bad\" is not an IP address"]
    );
}

#[test]
fn slices_of_services_not_served_are_not_checked() {
    let services = [service("headless").cluster_ip("None")];
    let slices = [slice("headless-1", "headless")
        .port(http())
        .endpoint(endpoint("bad"))];
    assert_clean(&run(&services, &slices));
}

#[test]
fn duplicate_objects_are_problems_and_the_first_one_wins() {
    let services = [web(), plain("web", "10.0.0.2")];
    let slices = [
        web_slice("web-1", [ready("10.1.0.1")]),
        web_slice("web-1", [ready("10.1.0.2")]),
    ];
    let t = run(&services, &slices);
    assert_eq!(
        problems(&t),
        [
            "EndpointSlice default/web-1: duplicate EndpointSlice: the first one with this name is used",
            "Service default/web: duplicate Service: the first one with this name is used",
        ]
    );
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP"]);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
}

#[test]
fn shared_frontend_goes_to_the_smaller_name_whatever_the_order() {
    let a = service("a").cluster_ip("10.0.0.1").port(port(80).name("x"));
    let b = service("b")
        .cluster_ip("10.0.0.1")
        .port(port(81).name("y"))
        .port(port(80).name("x"));
    for services in [[a.clone(), b.clone()], [b, a]] {
        let t = run(&services, &[]);
        assert_eq!(
            problems(&t),
            [
                "Service default/b: spec.ports[1]: 10.0.0.1:80/TCP is also a frontend of default/a:x, which keeps it"
            ]
        );
        assert_eq!(entry(&t, "10.0.0.1:80/TCP").name.name, "a");
        assert_eq!(entry(&t, "10.0.0.1:81/TCP").name.name, "b");
    }
}

#[test]
fn objects_without_names_are_problems() {
    let t = run(&[plain("web", "10.0.0.1").without_name()], &[]);
    assert_eq!(
        problems(&t),
        ["Service default/: metadata: a Service needs a name and a namespace"]
    );
    assert!(t.state.is_empty());
}
