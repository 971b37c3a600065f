//! Slices joined to service ports: by name and protocol, per family, in
//! the Service's namespace, merged and deduplicated across slices.

use super::{assert_clean, backends, entry, frontends, http, run, web, web_slice};
use crate::{
    model::Algorithm,
    translate::testing::{
        Metadata as _, PortFields as _, endpoint, port, ready, service, slice, slice_port,
        terminating,
    },
};

#[test]
fn target_port_by_name_resolves_through_the_slice_port() {
    let services = [service("web")
        .cluster_ip("10.0.0.1")
        .port(port(80).name("http").target_name("web"))
        .port(port(81).name("admin").target(9000))];
    let slices = [slice("web-1", "web")
        .port(slice_port(9000).name("admin"))
        .port(http())
        .endpoints([ready("10.1.0.2"), ready("10.1.0.1")])];
    let t = run(&services, &slices);
    assert_clean(&t);
    assert_eq!(
        backends(&t, "10.0.0.1:80/TCP"),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
    assert_eq!(
        backends(&t, "10.0.0.1:81/TCP"),
        ["10.1.0.1:9000", "10.1.0.2:9000"]
    );
    let entry = entry(&t, "10.0.0.1:80/TCP");
    assert_eq!(entry.name.to_string(), "default/web:http");
    assert_eq!(
        (entry.algorithm, entry.affinity_timeout_s),
        (Algorithm::Random, None)
    );
}

#[test]
fn unnamed_port_joins_the_unnamed_slice_port() {
    let services = [service("web").cluster_ip("10.0.0.1").port(port(80))];
    let slices = [slice("web-1", "web")
        .port(slice_port(8080).name(""))
        .endpoint(ready("10.1.0.1"))];
    let t = run(&services, &slices);
    assert_clean(&t);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
    assert_eq!(entry(&t, "10.0.0.1:80/TCP").name.to_string(), "default/web");
}

#[test]
fn service_without_endpoints_refuses() {
    let t = run(&[web()], &[]);
    assert_clean(&t);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), Vec::<String>::new());
}

#[test]
fn dual_stack_programs_each_family_from_its_slices() {
    let services = [service("web")
        .cluster_ip("10.0.0.1")
        .cluster_ips(&["10.0.0.1", "fd00::1"])
        .ip_families(&["IPv4", "IPv6"])
        .port(port(80).name("http"))];
    let slices = [
        web_slice("web-v4", [ready("10.1.0.1")]),
        web_slice("web-v6", [ready("fd00:1::1"), ready("fd00:1::2")]).address_type("IPv6"),
    ];
    let t = run(&services, &slices);
    assert_clean(&t);
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP", "[fd00::1]:80/TCP"]);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
    assert_eq!(
        backends(&t, "[fd00::1]:80/TCP"),
        ["[fd00:1::1]:8080", "[fd00:1::2]:8080"]
    );
}

#[test]
fn single_cluster_ip_without_cluster_ips() {
    let services = [service("web")
        .cluster_ip("fd00::5")
        .port(port(80).name("http"))];
    let slices = [
        web_slice("web-v6", [ready("fd00:1::1")]).address_type("IPv6"),
        web_slice("web-v4", [ready("10.1.0.1")]),
    ];
    let t = run(&services, &slices);
    assert_clean(&t);
    assert_eq!(frontends(&t), ["[fd00::5]:80/TCP"]);
    assert_eq!(backends(&t, "[fd00::5]:80/TCP"), ["[fd00:1::1]:8080"]);
}

#[test]
fn tcp_udp_and_sctp_are_distinct_frontends() {
    let services = [service("dns")
        .cluster_ip("10.0.0.10")
        .port(port(53).name("dns").protocol("UDP"))
        .port(port(53).name("dns-tcp").protocol("TCP"))
        .port(port(9).name("sig").protocol("SCTP"))];
    let slices = [slice("dns-1", "dns")
        .port(slice_port(5353).name("dns").protocol("UDP"))
        .port(slice_port(5354).name("dns-tcp").protocol("TCP"))
        .port(slice_port(9999).name("sig").protocol("SCTP"))
        .endpoint(ready("10.1.0.1"))];
    let t = run(&services, &slices);
    assert_clean(&t);
    assert_eq!(
        frontends(&t),
        ["10.0.0.10:9/SCTP", "10.0.0.10:53/TCP", "10.0.0.10:53/UDP"]
    );
    assert_eq!(backends(&t, "10.0.0.10:53/UDP"), ["10.1.0.1:5353"]);
    assert_eq!(backends(&t, "10.0.0.10:53/TCP"), ["10.1.0.1:5354"]);
    assert_eq!(backends(&t, "10.0.0.10:9/SCTP"), ["10.1.0.1:9999"]);
}

#[test]
fn slice_port_of_another_protocol_is_not_joined() {
    let services = [service("dns")
        .cluster_ip("10.0.0.10")
        .port(port(53).name("dns").protocol("UDP"))];
    let slices = [slice("dns-1", "dns")
        .port(slice_port(53).name("dns").protocol("TCP"))
        .endpoint(ready("10.1.0.1"))];
    let t = run(&services, &slices);
    assert_clean(&t);
    assert_eq!(backends(&t, "10.0.0.10:53/UDP"), Vec::<String>::new());
}

#[test]
fn fqdn_slices_are_ignored() {
    let slices = [
        web_slice("web-fqdn", [endpoint("example.com")]).address_type("FQDN"),
        web_slice("web-v4", [ready("10.1.0.1")]),
    ];
    let t = run(&[web()], &slices);
    assert_clean(&t);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.1:8080"]);
}

#[test]
fn slices_of_the_other_family_are_ignored() {
    let slices = [web_slice("web-v6", [ready("fd00:1::1")]).address_type("IPv6")];
    let t = run(&[web()], &slices);
    assert_clean(&t);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), Vec::<String>::new());
}

#[test]
fn slices_join_by_label_in_the_same_namespace_only() {
    let slices = [
        web_slice("web-1", [ready("10.1.0.9")]).namespace("other"),
        slice("api-1", "api")
            .port(http())
            .endpoint(ready("10.1.0.8")),
    ];
    let t = run(&[web()], &slices);
    assert_clean(&t);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), Vec::<String>::new());
}

#[test]
fn endpoints_of_several_slices_are_merged_and_deduplicated() {
    let slices = [
        web_slice("web-1", [ready("10.1.0.3"), ready("10.1.0.1")]),
        web_slice("web-2", [ready("10.1.0.1"), ready("10.1.0.2")]),
    ];
    let t = run(&[web()], &slices);
    assert_clean(&t);
    assert_eq!(
        backends(&t, "10.0.0.1:80/TCP"),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    );
}

#[test]
fn duplicate_endpoint_the_non_terminating_one_wins() {
    // 10.1.0.1 is a terminating pod in one slice and a new ready pod in
    // the other; 10.1.0.2 is ready elsewhere, so the terminating copy of
    // 10.1.0.1, had it won, would leave it out.
    let old = terminating("10.1.0.1");
    for (first, second) in [
        (old.clone(), ready("10.1.0.1")),
        (ready("10.1.0.1"), old.clone()),
    ] {
        let slices = [
            web_slice("web-1", [first.clone()]),
            web_slice("web-2", [second.clone(), ready("10.1.0.2")]),
        ];
        let t = run(&[web()], &slices);
        assert_clean(&t);
        assert_eq!(
            backends(&t, "10.0.0.1:80/TCP"),
            ["10.1.0.1:8080", "10.1.0.2:8080"],
            "{first:?} then {second:?}"
        );
    }
}

#[test]
fn duplicate_endpoint_not_ready_in_the_later_slice_wins() {
    // Both copies are non-terminating: the later one wins, as in
    // kube-proxy (whose order is the map's); here the file's order.
    let slices = [
        web_slice("web-1", [ready("10.1.0.1"), ready("10.1.0.2")]),
        web_slice("web-2", [endpoint("10.1.0.1").ready(false)]),
    ];
    let t = run(&[web()], &slices);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.2:8080"]);
}
