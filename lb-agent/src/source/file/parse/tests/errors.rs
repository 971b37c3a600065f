//! Malformed text and mistyped fields: the error says the document, line,
//! column, object and field path.

use super::{KUBECTL_LIST, parse_err, parse_ok};
use crate::source::file::parse::ParseError;

#[test]
fn type_error_names_document_line_object_and_field() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: ok}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.0.0.1
  ports:
  - name: http
    port: http
";
    let error = parse_err(text);
    assert_eq!(
        error.to_string(),
        "services.yaml: document 2, line 14, column 11: Service default/web: spec.ports[0].port: expected i32, found \"http\""
    );
    assert!(
        matches!(&error, ParseError::Invalid { document: 2, line: Some(14), item: None, field: Some(f), .. } if f == "spec.ports[0].port"),
        "{error:?}"
    );
}

#[test]
fn type_error_in_a_list_names_the_item() {
    let text = KUBECTL_LIST.replace("      ready: true", "      ready: [yes]");
    let error = parse_err(&text);
    assert!(
        matches!(&error, ParseError::Invalid { document: 1, item: Some(1), object: Some(o), field: Some(f), line: Some(_), .. }
                if o == "EndpointSlice default/web-x7k2p" && f == "endpoints[0].conditions.ready"),
        "{error:?}"
    );
    let line = text
        .lines()
        .position(|l| l.contains("ready: [yes]"))
        .expect("line")
        + 1;
    assert!(
            error.to_string().starts_with(&format!(
                "services.yaml: document 1, line {line}, column 14: items[1]: EndpointSlice default/web-x7k2p: endpoints[0].conditions.ready: "
            )),
            "{error}"
        );
}

#[test]
fn type_error_in_metadata_map_keys_is_quoted() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels:\n    app.kubernetes.io/name: [x]\n";
    let error = parse_err(text);
    assert!(
        matches!(&error, ParseError::Invalid { field: Some(f), .. } if f == "metadata.labels[\"app.kubernetes.io/name\"]"),
        "{error:?}"
    );
}

#[test]
fn json_type_error_has_serde_message_and_path() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
  {"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"ports":[{"port":"http"}]}}
]}"#;
    let error = parse_err(text);
    assert_eq!(
        error.to_string(),
        "services.yaml: document 1: items[0]: Service default/web: spec.ports[0].port: invalid type: string \"http\", expected i32"
    );
}

#[test]
fn truncated_yaml_is_a_syntax_error_with_document_and_line() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: \"b\n";
    let error = parse_err(text);
    assert!(
        matches!(
            error,
            ParseError::Syntax {
                document: 2,
                line: Some(7),
                ..
            }
        ),
        "{error:?}"
    );
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a\n";
    let error = parse_err(text);
    assert!(
        matches!(error, ParseError::Syntax { document: 1, .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains('\n'), "{error}");
}

#[test]
fn truncated_json_is_a_syntax_error_with_line() {
    let text = "{\"apiVersion\": \"v1\",\n \"kind\": \"List\",\n \"items\": [\n  {\"apiVersion\": \"v1\", \"kind\": ";
    let error = parse_err(text);
    assert!(
        matches!(
            error,
            ParseError::Syntax {
                document: 1,
                line: Some(4),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.to_string().contains(" at line "), "{error}");
}

#[test]
fn duplicate_keys_are_an_error() {
    let error = parse_err(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 10.0.0.1\n  clusterIP: 10.0.0.2\n",
    );
    assert!(
        matches!(
            error,
            ParseError::Invalid {
                document: 1,
                line: Some(6),
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn json_keys_given_twice_are_refused_where_they_are() {
    // In a list item, deep in the object; an escaped key is the same key.
    let text = r#"{"kind": "List", "apiVersion": "v1", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.1"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"},
             "spec": {"ports": [{"port": 80, "p\u006frt": 81}]}}]}"#;
    let error = parse_err(text).to_string();
    assert_eq!(
        error,
        r#"services.yaml: document 1, line 4, column 56: duplicate key "port""#
    );
    // The same key in two objects is fine.
    let text = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"ports": [{"port": 80}, {"port": 81}]}}"#;
    assert_eq!(parse_ok(text).services.len(), 1);
}
