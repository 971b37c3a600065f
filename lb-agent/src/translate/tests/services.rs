//! Which Services are served (proxy name and headless labels, types,
//! `ClusterIP`s) and the settings of those that are: algorithm and session
//! affinity.

use super::{
    assert_clean, backends, entry, frontends, node, plain, problems, run, run_with, web, web_slice,
};
use crate::{
    model::Algorithm,
    translate::{
        ANNOTATION_ALGORITHM, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, Options,
        testing::{Metadata as _, ServiceBuilder, port, ready, service},
    },
};

#[test]
fn session_affinity_client_ip_default_and_explicit_timeout() {
    let services = [
        plain("a", "10.0.0.1").session_affinity("ClientIP"),
        plain("b", "10.0.0.2")
            .session_affinity("ClientIP")
            .affinity_timeout(60),
        plain("c", "10.0.0.3").session_affinity("None"),
        plain("d", "10.0.0.4")
            .session_affinity("ClientIP")
            .affinity_timeout(86_400),
    ];
    let t = run(&services, &[]);
    assert_clean(&t);
    assert_eq!(
        entry(&t, "10.0.0.1:80/TCP").affinity_timeout_s,
        Some(10_800)
    );
    assert_eq!(entry(&t, "10.0.0.2:80/TCP").affinity_timeout_s, Some(60));
    assert_eq!(entry(&t, "10.0.0.3:80/TCP").affinity_timeout_s, None);
    assert_eq!(
        entry(&t, "10.0.0.4:80/TCP").affinity_timeout_s,
        Some(86_400)
    );
}

#[test]
fn session_affinity_out_of_range_is_a_problem() {
    for timeout in [0, 86_401, -5] {
        let services = [
            plain("a", "10.0.0.1")
                .session_affinity("ClientIP")
                .affinity_timeout(timeout),
            plain("b", "10.0.0.2"),
        ];
        let t = run(&services, &[]);
        assert_eq!(
            problems(&t),
            [format!(
                "Service default/a: spec.sessionAffinityConfig.clientIP.timeoutSeconds: {timeout} is out of range: expected 1 to 86400 seconds"
            )]
        );
        assert_eq!(frontends(&t), ["10.0.0.2:80/TCP"]);
    }
    let t = run(&[plain("a", "10.0.0.1").session_affinity("Sticky")], &[]);
    assert_eq!(
        problems(&t),
        [
            "Service default/a: spec.sessionAffinity: unsupported value \"Sticky\": expected None or ClientIP"
        ]
    );
}

#[test]
fn algorithm_annotation_overrides_the_default() {
    let services = [
        plain("rr", "10.0.0.1").annotation(ANNOTATION_ALGORITHM, "round-robin"),
        plain("rand", "10.0.0.2").annotation(ANNOTATION_ALGORITHM, "random"),
        plain("plain", "10.0.0.3"),
    ];
    let opts = Options {
        default_algorithm: Algorithm::RoundRobin,
        service_proxy_name: None,
    };
    let t = run_with(&services, &[], &node(None, None), &opts);
    assert_clean(&t);
    assert_eq!(
        entry(&t, "10.0.0.1:80/TCP").algorithm,
        Algorithm::RoundRobin
    );
    assert_eq!(entry(&t, "10.0.0.2:80/TCP").algorithm, Algorithm::Random);
    assert_eq!(
        entry(&t, "10.0.0.3:80/TCP").algorithm,
        Algorithm::RoundRobin
    );
    let t = run_with(&services, &[], &node(None, None), &Options::default());
    assert_eq!(entry(&t, "10.0.0.3:80/TCP").algorithm, Algorithm::Random);
}

#[test]
fn bad_algorithm_annotation_is_a_problem_and_skips_the_service() {
    let services = [
        plain("web", "10.0.0.1").annotation(ANNOTATION_ALGORITHM, "least-conn"),
        plain("other", "10.0.0.2"),
    ];
    let t = run(&services, &[]);
    assert_eq!(
        problems(&t),
        [
            "Service default/web: metadata.annotations[\"lb-agent.io/algorithm\"]: unknown algorithm \"least-conn\": expected \"random\" or \"round-robin\""
        ]
    );
    assert_eq!(frontends(&t), ["10.0.0.2:80/TCP"]);
}

fn proxy_services() -> [ServiceBuilder; 3] {
    [
        plain("mine", "10.0.0.1"),
        plain("labelled", "10.0.0.2").label(LABEL_SERVICE_PROXY_NAME, "lb"),
        plain("others", "10.0.0.3").label(LABEL_SERVICE_PROXY_NAME, "other"),
    ]
}

#[test]
fn services_of_another_proxy_are_skipped() {
    let t = run(&proxy_services(), &[]);
    assert_clean(&t);
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP"]);
}

#[test]
fn with_a_proxy_name_only_its_services_are_served() {
    let opts = Options {
        service_proxy_name: Some("lb".to_owned()),
        ..Options::default()
    };
    let t = run_with(&proxy_services(), &[], &node(None, None), &opts);
    assert_clean(&t);
    assert_eq!(frontends(&t), ["10.0.0.2:80/TCP"]);
}

#[test]
fn slices_labelled_for_another_proxy_or_headless_are_ignored() {
    let labelled = |key: &str, value: &str, ip: &str| {
        web_slice(&format!("web-{}", ip.replace('.', "-")), [ready(ip)]).label(key, value)
    };
    let slices = [
        labelled(LABEL_SERVICE_PROXY_NAME, "other", "10.1.0.1"),
        labelled(LABEL_HEADLESS, "", "10.1.0.2"),
        web_slice("web-3", [ready("10.1.0.3")]),
    ];
    let t = run(&[web()], &slices);
    assert_clean(&t);
    assert_eq!(backends(&t, "10.0.0.1:80/TCP"), ["10.1.0.3:8080"]);
}

#[test]
fn headless_external_name_and_ip_less_services_are_skipped_silently() {
    let services = [
        plain("headless", "None"),
        plain("headless2", "None").cluster_ips(&["None"]),
        service("external")
            .type_("ExternalName")
            .external_name("example.com")
            .port(port(80)),
        plain("external-ip", "10.0.0.9").type_("ExternalName"),
        service("no-ip").port(port(80)),
        plain("empty-ip", ""),
        service("no-spec"),
        plain("labelled", "10.0.0.8").label(LABEL_HEADLESS, ""),
        plain("served", "10.0.0.1"),
    ];
    let t = run(&services, &[]);
    assert_clean(&t);
    assert_eq!(frontends(&t), ["10.0.0.1:80/TCP"]);
}
