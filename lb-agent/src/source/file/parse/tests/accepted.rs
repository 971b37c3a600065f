//! What the parser accepts: kubectl's lists and streams, in YAML and JSON.

use std::path::Path;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::{KUBECTL_LIST, names, parse_ok};
use crate::{
    source::file::parse::{Objects, fast::fast_json, slow_json::slow_json},
    translate::Address,
};

#[test]
fn kubectl_v1_list() {
    let objects = parse_ok(KUBECTL_LIST);
    assert_eq!(
        names(&objects),
        (
            vec!["default/web".to_owned()],
            vec!["default/web-x7k2p".to_owned()]
        )
    );
    let spec = objects.services[0].spec.as_ref().expect("spec");
    assert_eq!(
        spec.cluster_ips.as_deref(),
        Some(&["10.96.0.10".to_owned()][..])
    );
    let port = &spec.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.port, port.target_port.as_ref()),
        (80, Some(&IntOrString::String("http".to_owned())))
    );
    let slice = &objects.endpoint_slices[0];
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(
        slice.endpoints[0].address,
        Address::Ip("10.244.1.5".parse().expect("an address"))
    );
    assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-1"));
    assert_eq!(slice.ports[0].port, Some(8080));
}

#[test]
fn json_list_parses_like_yaml() {
    let value: serde_json::Value = serde_saphyr::from_str(KUBECTL_LIST).expect("yaml");
    let json = serde_json::to_string_pretty(&value).expect("json");
    assert_eq!(parse_ok(&json), parse_ok(KUBECTL_LIST));
}

#[test]
fn multi_document_yaml_with_lists_and_empty_documents() {
    let text = "\
# leading comment: not a document of its own
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns1}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
---
---
# only a comment
---
~
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: b, namespace: ns2}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: b-1, namespace: ns2}
  addressType: IPv4
  endpoints: []
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: ns1}
addressType: IPv6
endpoints: null
...
";
    let objects = parse_ok(text);
    assert_eq!(
        names(&objects),
        (
            vec!["ns1/a".to_owned(), "ns2/b".to_owned()],
            vec!["ns2/b-1".to_owned(), "ns1/a-1".to_owned()]
        )
    );
}

#[test]
fn empty_inputs_are_empty() {
    for text in [
        "",
        "\n",
        "# nothing\n",
        "---\n",
        "---\n---\n",
        "~\n",
        "null\n",
    ] {
        assert_eq!(parse_ok(text), Objects::default(), "{text:?}");
    }
}

#[test]
fn typed_lists_default_item_kinds() {
    let text = "\
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: a, namespace: x}
  spec: {clusterIP: 10.0.0.1}
- apiVersion: v1
  kind: Service
  metadata: {name: b, namespace: x}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}
  addressType: IPv4
  endpoints: [{addresses: [10.1.0.1]}]
";
    let objects = parse_ok(text);
    assert_eq!(
        names(&objects),
        (
            vec!["x/a".to_owned(), "x/b".to_owned()],
            vec!["x/a-1".to_owned()]
        )
    );
}

#[test]
fn json_stream_of_objects() {
    let text = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}
{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"a-1"},"addressType":"IPv4","endpoints":[]}"#;
    let objects = parse_ok(text);
    assert_eq!(
        names(&objects),
        (vec!["default/a".to_owned()], vec!["default/a-1".to_owned()])
    );
}

#[test]
fn missing_namespace_is_default() {
    let objects = parse_ok("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n");
    assert_eq!(
        objects.services[0].metadata.namespace.as_deref(),
        Some("default")
    );
}

#[test]
fn unknown_fields_of_the_other_kind_are_ignored() {
    // The fast path reads every field of both kinds; a stray `spec` in an
    // EndpointSlice makes it fail, and the slow path, with the real
    // types, ignores it as the API machinery does.
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4\nendpoints: []\nspec: 5\n";
    assert_eq!(parse_ok(text).endpoint_slices.len(), 1);
}

#[test]
fn byte_order_mark_is_skipped() {
    assert_eq!(
        parse_ok("\u{feff}apiVersion: v1\nkind: Service\nmetadata: {name: a}\n")
            .services
            .len(),
        1
    );
    assert_eq!(
        parse_ok("\u{feff}{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": []}")
            .services
            .len(),
        0
    );
}

/// A JSON list large enough for its items to be parsed on several threads
/// reads the same on the fast path as on the slow path, item for item; a
/// Service with a stray `items` key is read as a Service (the fast path
/// leaves it to the slow one).
#[test]
fn json_lists_read_alike_on_the_fast_and_the_slow_path() {
    let items: Vec<serde_json::Value> = (0..2_500)
        .flat_map(|i| {
            let name = format!("s{i}");
            [
                json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": { "name": name, "labels": { "app": "x" } },
                    "spec": { "clusterIP": "10.96.0.1", "ports": [{ "name": "http", "port": 80 }] },
                }),
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": { "name": format!("{name}-1"), "labels": { "kubernetes.io/service-name": name } },
                    "addressType": "IPv4",
                    "endpoints": [{
                        "addresses": [format!("10.200.{}.{}", i / 250, i % 250)],
                        "conditions": { "ready": i % 2 == 0 }, "nodeName": "node-1",
                    }],
                    "ports": [{ "name": "http", "port": 8080 }],
                }),
            ]
        })
        .collect();
    let text = json!({ "apiVersion": "v1", "kind": "List", "items": items }).to_string();
    let fast = fast_json(&text).expect("the fast path reads it");
    let slow = slow_json(&text, Path::new("services.json")).expect("the slow path reads it");
    assert_eq!(
        (fast.services.len(), fast.endpoint_slices.len()),
        (2_500, 2_500)
    );
    assert!(fast == slow, "the two paths differ");

    let stray = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"items":[]}"#;
    assert!(fast_json(stray).is_none());
    assert_eq!(names(&parse_ok(stray)).0, ["default/a"]);
}
