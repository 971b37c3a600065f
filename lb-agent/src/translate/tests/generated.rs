//! Many generated Services and slices: they translate, and how fast.

use std::time::Instant;

use k8s_openapi::api::core::v1::Service;

use super::{assert_clean, http, node};
use crate::translate::{
    Options, Slice,
    testing::{Metadata as _, PortFields as _, port, ready, service, slice},
    translate,
};

/// `n` services, each with one slice of `endpoints` endpoints, as a
/// cluster has them (see `generate_yaml` in the file parser's tests).
fn generate(n: usize, endpoints: usize) -> (Vec<Service>, Vec<Slice>) {
    (0..n)
        .map(|i| {
            // Unique addresses up to 2^17 services: 10.96.0.0/15 and 10.100.0.0/11.
            let (high, mid, low) = (i >> 16, (i >> 8) & 255, i & 255);
            let name = format!("svc-{i}");
            let ip = format!("10.{}.{mid}.{low}", 96 + high);
            let service = service(&name)
                .namespace("bench")
                .type_("ClusterIP")
                .cluster_ip(&ip)
                .cluster_ips(&[&ip])
                .ip_families(&["IPv4"])
                .internal_traffic_policy("Cluster")
                .session_affinity("None")
                .port(port(80).name("http").protocol("TCP").target(8080));
            let slice = slice(&format!("{name}-abcde"), &name)
                .namespace("bench")
                .port(http().protocol("TCP"))
                .endpoints((0..endpoints).map(|e| {
                    ready(&format!("10.{}.{mid}.{low}", 100 + 2 * e + high))
                        .serving(true)
                        .terminating(false)
                        .node(&format!("node-{e}"))
                }));
            (service.build(), slice.build())
        })
        .unzip()
}

#[test]
fn generated_objects_translate() {
    let (services, slices) = generate(300, 3);
    let t = translate(
        &services,
        &slices,
        &node(Some("node-1"), Some("zone-a")),
        &Options::default(),
    );
    assert_clean(&t);
    assert_eq!(t.state.len(), 300);
    assert!(t.state.values().all(|entry| entry.backends.len() == 3));
}

/// Translation time for 10,000 and 100,000 services of 10 endpoints. Run with
/// `cargo test -p lb-agent --lib --release -- --ignored --nocapture bench_translate`.
#[test]
#[ignore = "benchmark: run in release"]
fn bench_translate() {
    for n in [10_000, 100_000] {
        let (services, slices) = generate(n, 10);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            let t = translate(
                &services,
                &slices,
                &node(Some("node-1"), Some("zone-a")),
                &Options::default(),
            );
            best = best.min(start.elapsed().as_secs_f64());
            assert_eq!((t.state.len(), t.problems.len()), (n, 0));
        }
        println!(
            "translate {n} services + {n} slices x 10 endpoints: {:.1} ms",
            best * 1e3
        );
    }
}
