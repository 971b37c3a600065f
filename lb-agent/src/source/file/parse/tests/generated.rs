//! Generated files of many objects: they parse, and how fast.

use std::{fmt::Write as _, path::Path, time::Instant};

use super::parse_ok;
use crate::source::file::parse::{parse, yaml_options};

/// `n` services with one `EndpointSlice` each of `endpoints` endpoints, as
/// kubectl prints them (a `v1` List, without managedFields).
fn generate_yaml(n: usize, endpoints: usize) -> String {
    let mut s = String::with_capacity(n * (900 + endpoints * 330));
    s.push_str("apiVersion: v1\nitems:\n");
    for i in 0..n {
        // Unique addresses up to 2^17 services: 10.96.0.0/15 and 10.100.0.0/11.
        let (high, mid, low) = (i >> 16, (i >> 8) & 255, i & 255);
        let block = 96 + high;
        let _ = write!(
            s,
            "- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: \"2025-05-01T10:00:00Z\"
    labels:
      app: svc-{i}
    name: svc-{i}
    namespace: bench
    resourceVersion: \"{i}\"
    uid: 00000000-0000-0000-0000-{i:012}
  spec:
    clusterIP: 10.{block}.{mid}.{low}
    clusterIPs:
    - 10.{block}.{mid}.{low}
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
    selector:
      app: svc-{i}
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {{}}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
"
        );
        for e in 0..endpoints {
            let _ = write!(
                s,
                "  - addresses:
    - 10.{}.{}.{}
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-{e}
    targetRef:
      kind: Pod
      name: svc-{i}-pod-{e}
      namespace: bench
      uid: 11111111-0000-0000-0000-{i:08}{e:04}
    zone: zone-{}
",
                100 + 2 * e + high,
                mid,
                low,
                e % 3
            );
        }
        let _ = write!(
            s,
            "  kind: EndpointSlice
  metadata:
    generateName: svc-{i}-
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: svc-{i}
    name: svc-{i}-abcde
    namespace: bench
    resourceVersion: \"{i}\"
    uid: 22222222-0000-0000-0000-{i:012}
  ports:
  - name: http
    port: 8080
    protocol: TCP
"
        );
    }
    s.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    s
}

#[test]
fn generated_file_parses() {
    let objects = parse_ok(&generate_yaml(3, 2));
    assert_eq!(
        (objects.services.len(), objects.endpoint_slices.len()),
        (3, 3)
    );
    assert_eq!(objects.endpoint_slices[2].endpoints.len(), 2);
}

/// Parse time for 10,000 services and their 10,000 `EndpointSlices` of 10
/// endpoints each, in YAML and in JSON. Run with
/// `cargo test -p lb-agent --lib --release -- --ignored --nocapture bench_parse`.
#[test]
#[ignore = "benchmark: run in release"]
fn bench_parse() {
    for n in [10_000, 100_000] {
        let yaml = generate_yaml(n, 10);
        let value: serde_json::Value =
            serde_saphyr::from_str_with_options(&yaml, yaml_options()).expect("yaml");
        let json = serde_json::to_string(&value).expect("json");
        drop(value);
        for (format, text) in [("yaml", &yaml), ("json", &json)] {
            let mut best = f64::MAX;
            for _ in 0..(if n > 10_000 { 1 } else { 3 }) {
                let start = Instant::now();
                let objects = parse(text, Path::new("bench")).expect("parse");
                best = best.min(start.elapsed().as_secs_f64());
                assert_eq!(objects.services.len(), n);
            }
            println!(
                "parse {n} services + {n} slices x 10 endpoints, {format} ({} MB): {:.1} ms",
                text.len() / 1_000_000,
                best * 1e3
            );
        }
        // The slow path, for comparison: an error at the very end.
        if n == 10_000 {
            for (format, broken) in [
                ("yaml", format!("{yaml}---\n[\n")),
                ("json", format!("{json}\n{{\"kind\": 1}}")),
            ] {
                let start = Instant::now();
                assert!(parse(&broken, Path::new("bench")).is_err());
                println!(
                    "  {format} with an error at the end (slow path): {:.1} ms",
                    start.elapsed().as_secs_f64() * 1e3
                );
            }
        }
    }
}
