//! The parser's tests, through [`parse`] as the file source calls it.

mod accepted;
mod errors;
mod generated;
mod kinds;
mod limits;

use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Objects, ParseError, parse};

fn parse_ok(text: &str) -> Objects {
    match parse(text, Path::new("test.yaml")) {
        Ok(objects) => objects,
        Err(error) => panic!("parse failed: {error}"),
    }
}

fn parse_err(text: &str) -> ParseError {
    match parse(text, Path::new("services.yaml")) {
        Ok(objects) => panic!("parse succeeded: {objects:?}"),
        Err(error) => error,
    }
}

fn names(objects: &Objects) -> (Vec<String>, Vec<String>) {
    let name = |m: &ObjectMeta| {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or("?"),
            m.name.as_deref().unwrap_or("?")
        )
    };
    (
        objects.services.iter().map(|s| name(&s.metadata)).collect(),
        objects
            .endpoint_slices
            .iter()
            .map(|s| name(&s.metadata))
            .collect(),
    )
}

/// What `kubectl get services,endpointslices -A -o yaml` prints (trimmed
/// of nothing but managedFields).
const KUBECTL_LIST: &str = include_str!("kubectl_list.yaml");
