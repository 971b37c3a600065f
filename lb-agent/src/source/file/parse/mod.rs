//! Parsing files of Kubernetes objects: what the file source
//! (`lb-agent run --services-file PATH`) reads.
//!
//! The accepted input is what `kubectl get services,endpointslices -A -o yaml`
//! (or `-o json`) prints:
//!
//! - a `v1` `List` (`kind: List`, `items: [...]`), or typed lists
//!   (`ServiceList`, `EndpointSliceList`, whose items may omit `apiVersion`
//!   and `kind`, as the API server's list responses do);
//! - single objects: `Service` (`v1`) and `EndpointSlice` (`discovery.k8s.io/v1`),
//!   and `Node` (`v1`, `NodeList`): of a Node only the name, the labels and
//!   `status.addresses` are kept (what the file source reads of its node);
//! - YAML streams of several documents (`---`), each a single object or a list;
//!   empty (or `null`) documents are ignored;
//! - JSON when the text starts with `{`: one value, or several concatenated.
//!
//! Anything else (another kind or apiVersion, a list inside a list) is an
//! error. An object without `metadata.namespace` is put in `default`, as
//! `kubectl apply -f` would do with the default context.
//!
//! Parsing takes a fast path (straight into the typed objects, one pass) and
//! only when that fails redoes the work slowly, document by document and with
//! field-path tracking, to say precisely what is wrong: see [`ParseError`].
//!
//! - `kind`: what an `apiVersion` and `kind` say a document is;
//! - `fast`: the fast path (the items of a JSON list on every core);
//! - `unique_keys`: the check that no JSON object has a key twice;
//! - `header`, `plan`, `typed`: the slow path's lenient first pass, what it
//!   decides, and the typed second pass that tracks field paths;
//! - `slow_yaml`, `slow_json`: the slow path for each syntax;
//! - `error`: [`ParseError`] and how it displays.

mod error;
mod fast;
mod header;
mod kind;
mod plan;
mod slow_json;
mod slow_yaml;
#[cfg(test)]
mod tests;
mod typed;
mod unique_keys;

use std::path::Path;

use k8s_openapi::{
    api::core::v1::{Node, NodeStatus, Service},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::translate::Slice;

pub use self::error::ParseError;
use self::{
    fast::{fast_json, fast_yaml},
    slow_json::slow_json,
    slow_yaml::slow_yaml,
};

/// The Services, `EndpointSlices` and Nodes of a file, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub services: Vec<Service>,
    /// In the form translation keeps them, converted as they are parsed
    /// (an `EndpointSlice` object is several times larger).
    pub endpoint_slices: Vec<Slice>,
    /// Only `metadata.name`, `metadata.labels` and `status.addresses` of each.
    pub nodes: Vec<Node>,
}

/// The slow path's results: errors are boxed inside the module.
type Boxed<T> = Result<T, Box<ParseError>>;

/// Parses the text of a file of Kubernetes objects. `origin` names the file
/// in error messages only.
///
/// # Errors
///
/// [`ParseError`] when the text is not well-formed, holds objects of another
/// kind or apiVersion, or a field has the wrong type. Never panics.
#[expect(
    clippy::result_large_err,
    reason = "one error per file, at most: its plain named fields matter more than its size"
)]
pub fn parse(text: &str, origin: &Path) -> Result<Objects, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let json = text.trim_start().starts_with('{');
    let fast = if json {
        fast_json(text)
    } else {
        fast_yaml(text)
    };
    if let Some(objects) = fast {
        return Ok(objects);
    }
    let slow = if json {
        slow_json(text, origin)
    } else {
        slow_yaml(text, origin)
    };
    slow.map_err(|error| *error)
}

/// A parsed object, before it is sorted into [`Objects`].
enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<Slice>),
    Node(Box<Node>),
}

/// Sorts parsed objects into [`Objects`], in `default` when they say no namespace.
fn collect(objects: impl IntoIterator<Item = Object>) -> Objects {
    let mut out = Objects::default();
    for object in objects {
        match object {
            Object::Service(mut service) => {
                default_namespace(&mut service.metadata);
                out.services.push(*service);
            }
            Object::EndpointSlice(mut slice) => {
                default_namespace(&mut slice.metadata);
                out.endpoint_slices.push(*slice);
            }
            Object::Node(node) => out.nodes.push(what_is_read(*node)),
        }
    }
    out
}

/// What the file source reads of a Node (a Node is cluster-scoped: no
/// namespace). The fast and slow paths keep the same.
fn what_is_read(node: Node) -> Node {
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name,
            labels: node.metadata.labels,
            ..ObjectMeta::default()
        },
        spec: None,
        status: node.status.map(|s| NodeStatus {
            addresses: s.addresses,
            ..NodeStatus::default()
        }),
    }
}

fn default_namespace(metadata: &mut ObjectMeta) {
    if metadata.namespace.is_none() {
        metadata.namespace = Some("default".to_owned());
    }
}

/// YAML options: the limits are sized for 100,000s of objects in one file
/// (the operator's own file, read from memory), but nesting stays limited.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_documents = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    // Kubernetes objects nest about 10 deep (managedFields a little more).
    budget.max_depth = 64;
    serde_saphyr::options! {
        budget: Some(budget),
        with_snippet: false,
    }
}
