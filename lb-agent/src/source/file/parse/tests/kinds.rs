//! Documents that are not objects of a supported kind and apiVersion, and
//! how the error names them.

use super::parse_err;
use crate::source::file::parse::ParseError;

#[test]
fn typed_list_with_other_kind_is_an_error() {
    let error = parse_err(
        "apiVersion: v1\nkind: ServiceList\nitems:\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {name: s, namespace: x}\n",
    );
    assert!(
        matches!(
            error,
            ParseError::Unsupported {
                document: 1,
                item: Some(0),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "services.yaml: document 1: items[0]: EndpointSlice x/s: unsupported kind \"EndpointSlice\" with apiVersion \
             \"discovery.k8s.io/v1\": expected Service (apiVersion v1), EndpointSlice (apiVersion discovery.k8s.io/v1) or Node (apiVersion v1) in a list"
    );
}

#[test]
fn wrong_kind_is_an_error() {
    let error = parse_err(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: kube-system}\n",
    );
    assert_eq!(
        error,
        ParseError::Unsupported {
            file: "services.yaml".into(),
            document: 2,
            item: None,
            object: Some("ConfigMap kube-system/cm".to_owned()),
            kind: Some("ConfigMap".to_owned()),
            api_version: Some("v1".to_owned()),
            in_list: false,
        }
    );
    assert_eq!(
        error.to_string(),
        "services.yaml: document 2: ConfigMap kube-system/cm: unsupported kind \"ConfigMap\" with apiVersion \"v1\": \
             expected Service (apiVersion v1), EndpointSlice (apiVersion discovery.k8s.io/v1) or Node (apiVersion v1), \
             or a List, ServiceList, EndpointSliceList or NodeList of them"
    );
}

#[test]
fn wrong_kind_in_a_list_names_the_item() {
    let error = parse_err(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n- {apiVersion: apps/v1, kind: Deployment, metadata: {name: d, namespace: x}}\n",
    );
    assert!(
        error.to_string().starts_with(
            "services.yaml: document 1: items[1]: Deployment x/d: unsupported kind \"Deployment\""
        ),
        "{error}"
    );
}

#[test]
fn wrong_api_version_is_an_error() {
    for (text, kind, api_version) in [
        (
            "apiVersion: apps/v1\nkind: Service\nmetadata: {name: a}\n",
            "Service",
            "apps/v1",
        ),
        (
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a}\n",
            "EndpointSlice",
            "discovery.k8s.io/v1beta1",
        ),
        (
            "apiVersion: v1\nkind: EndpointSlice\nmetadata: {name: a}\n",
            "EndpointSlice",
            "v1",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: List\nitems: []\n",
            "List",
            "discovery.k8s.io/v1",
        ),
    ] {
        let error = parse_err(text);
        assert!(
            matches!(&error, ParseError::Unsupported { kind: Some(k), api_version: Some(a), document: 1, .. } if k == kind && a == api_version),
            "{text:?}: {error:?}"
        );
    }
}

#[test]
fn missing_kind_or_api_version_is_an_error() {
    let error = parse_err("metadata: {name: a}\nspec: {}\n");
    assert!(error.to_string().ends_with(": no kind: expected Service (apiVersion v1), EndpointSlice (apiVersion discovery.k8s.io/v1) or Node (apiVersion v1), or a List, ServiceList, EndpointSliceList or NodeList of them"), "{error}");
    let error = parse_err("kind: Service\nmetadata: {name: a}\n");
    assert_eq!(
        error.to_string().split(": expected").next(),
        Some("services.yaml: document 1: Service default/a: kind \"Service\" without apiVersion")
    );
    let error = parse_err("apiVersion: v1\nkind: List\nitems:\n- metadata: {name: a}\n");
    assert!(
        matches!(
            error,
            ParseError::Unsupported {
                item: Some(0),
                kind: None,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn nested_lists_are_an_error() {
    let error = parse_err(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n",
    );
    assert!(
        matches!(
            error,
            ParseError::Unsupported {
                item: Some(0),
                in_list: true,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn non_object_documents_are_an_error() {
    let error =
        parse_err("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n- just\n- a list\n");
    assert_eq!(
        error.to_string(),
        "services.yaml: document 2: expected a Kubernetes object (a mapping), found a sequence"
    );
    let error = parse_err("hello\n");
    assert!(
        matches!(error, ParseError::Invalid { document: 1, .. }),
        "{error:?}"
    );
    let error = parse_err("apiVersion: v1\nkind: List\nitems:\n- 42\n");
    assert_eq!(
        error.to_string(),
        "services.yaml: document 1: items[0]: expected a Kubernetes object (a mapping), found a number"
    );
}

#[test]
fn document_numbers_count_empty_documents() {
    let text = "# a comment is not a document\n---\n---\n# nothing\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
    let error = parse_err(text);
    assert!(
        matches!(error, ParseError::Unsupported { document: 3, .. }),
        "{error:?}"
    );
    let text =
        "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": []}\nnull\n{\"kind\": \"Pod\"}";
    assert!(matches!(
        parse_err(text),
        ParseError::Unsupported { document: 3, .. }
    ));
}

#[test]
fn a_node_keeps_its_name_labels_and_addresses() {
    let yaml = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels: {topology.kubernetes.io/zone: zone-a}\n  annotations: {a: b}\nspec: {podCIDR: 10.244.1.0/24}\nstatus:\n  addresses:\n  - {type: InternalIP, address: 10.0.0.5}\n  conditions:\n  - {type: Ready, status: \"True\"}\n  capacity: {cpu: \"2\"}\n";
    let fast = super::parse_ok(yaml);
    // The same in a stream with a typed list.
    let listed = super::parse_ok(&format!(
        "{yaml}---\napiVersion: v1\nkind: NodeList\nitems:\n- metadata: {{name: node-2}}\n"
    ));
    for objects in [&fast, &listed] {
        let node = &objects.nodes[0];
        assert_eq!(node.metadata.name.as_deref(), Some("node-1"));
        assert_eq!(node.metadata.namespace, None, "Nodes have no namespace");
        assert_eq!(node.metadata.annotations, None);
        assert_eq!(node.spec, None);
        let status = node.status.as_ref().expect("status");
        assert_eq!(
            status.addresses.as_ref().expect("addresses")[0].address,
            "10.0.0.5"
        );
        assert_eq!(status.conditions, None);
    }
    assert_eq!(fast.nodes[0], listed.nodes[0]);
    assert_eq!(listed.nodes[1].metadata.name.as_deref(), Some("node-2"));
}
