//! The fast path: every field of both kinds in one struct, deserialized in
//! one pass without buffering (kubectl sorts keys, so `kind` comes after
//! `items` and after an `EndpointSlice`'s `endpoints`: we cannot dispatch on
//! it first). The items of a JSON list are parsed on every core. Any error
//! gives up (`None`): the slow path then says what is wrong.
//!
//! A Node shares `spec` and `status` with a Service: `status` is read as the
//! union of the two statuses' fields that matter (a Node's conditions are
//! of another type than a Service's, so both are kept raw until the kind is
//! known); of a Node's `spec` nothing is read.

use k8s_openapi::{
    api::{
        core::v1::{
            LoadBalancerStatus, Node, NodeAddress, NodeStatus, Service, ServiceSpec, ServiceStatus,
        },
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Object, Objects, collect,
    kind::{Class, Kind, classify, classify_item},
    unique_keys::UniqueKeys,
    yaml_options,
};

/// The union of the fields of a Service, an `EndpointSlice` and a list.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<ObjectMeta>,
    // Service
    spec: Option<ServiceSpec>,
    status: Option<RawStatus>,
    // EndpointSlice
    address_type: Option<String>,
    endpoints: Option<Vec<Endpoint>>,
    ports: Option<Vec<EndpointPort>>,
    // List
    items: Option<Vec<Self>>,
}

/// The union of the fields of a Service's and a Node's status that are read.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    // Both (of different types)
    conditions: Option<Vec<serde_json::Value>>,
    // Service
    load_balancer: Option<LoadBalancerStatus>,
    // Node
    addresses: Option<Vec<NodeAddress>>,
}

impl RawStatus {
    fn into_service(self) -> Option<ServiceStatus> {
        let conditions = match self.conditions {
            None => None,
            Some(raw) => Some(
                raw.into_iter()
                    .map(serde_json::from_value)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?,
            ),
        };
        Some(ServiceStatus {
            conditions,
            load_balancer: self.load_balancer,
        })
    }
}

impl RawObject {
    /// The object this is, if it is one of `kind` (fields of the other kind
    /// are ignored, as k8s-openapi ignores unknown fields); `None` when a
    /// field kept raw does not parse.
    fn into_object(self, kind: Kind) -> Option<Object> {
        let Self {
            api_version: _,
            kind: _,
            metadata,
            spec,
            status,
            address_type,
            endpoints,
            ports,
            items: _,
        } = self;
        let metadata = metadata.unwrap_or_default();
        Some(match kind {
            Kind::Service => Object::Service(Box::new(Service {
                metadata,
                spec,
                status: match status {
                    Some(status) => Some(status.into_service()?),
                    None => None,
                },
            })),
            Kind::EndpointSlice => Object::EndpointSlice(Box::new(
                EndpointSlice {
                    address_type: address_type.unwrap_or_default(),
                    endpoints,
                    metadata,
                    ports,
                }
                .into(),
            )),
            Kind::Node => Object::Node(Box::new(Node {
                metadata,
                spec: None,
                status: status.map(|s| NodeStatus {
                    addresses: s.addresses,
                    ..NodeStatus::default()
                }),
            })),
        })
    }
}

/// Appends the objects of one document; `None` if anything is wrong (the
/// slow path then finds out what).
fn objects_of(document: RawObject, out: &mut Vec<Object>) -> Option<()> {
    match classify(document.api_version.as_deref(), document.kind.as_deref()) {
        Class::Object(kind) => out.push(document.into_object(kind)?),
        Class::List(default) => {
            for item in document.items.unwrap_or_default() {
                out.push(item_object(item, default)?);
            }
        }
        Class::Unsupported => return None,
    }
    Some(())
}

/// An item of a list whose items default to `default`.
fn item_object(item: RawObject, default: Option<Kind>) -> Option<Object> {
    let kind = classify_item(item.api_version.as_deref(), item.kind.as_deref(), default)?;
    item.into_object(kind)
}

fn assemble(documents: Vec<RawObject>) -> Option<Objects> {
    let mut objects = Vec::with_capacity(documents.len());
    for document in documents {
        objects_of(document, &mut objects)?;
    }
    Some(collect(objects))
}

pub(super) fn fast_yaml(text: &str) -> Option<Objects> {
    let documents =
        serde_saphyr::from_multiple_with_options::<RawObject>(text, yaml_options()).ok()?;
    assemble(documents)
}

pub(super) fn fast_json(text: &str) -> Option<Objects> {
    let raw = serde_json::Deserializer::from_str(text)
        .into_iter::<&RawValue>()
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let mut objects = Vec::new();
    for doc in raw {
        let shell: ListShell<'_> = serde_json::from_str(doc.get()).ok()?;
        let class = classify(shell.api_version.as_deref(), shell.kind.as_deref());
        match (shell.items, class) {
            // A list: one cheap scan split it, now its items are parsed on
            // every core (they are independent), each into the object it is
            // at once, so that parsed fields never pile up.
            (Some(items), Class::List(default)) => {
                objects.extend(parse_items(&items, default)?);
            }
            // `items` in something else: the slow path says what it is.
            (Some(_), _) => return None,
            (None, _) => {
                serde_json::from_str::<UniqueKeys>(doc.get()).ok()?;
                objects_of(serde_json::from_str(doc.get()).ok()?, &mut objects)?;
            }
        }
    }
    Some(collect(objects))
}

/// The top of a JSON document, with a list's items left unparsed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListShell<'a> {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(borrow)]
    items: Option<Vec<&'a RawValue>>,
}

/// Below this many items one thread is faster than starting more.
const PARALLEL_ITEMS: usize = 2_000;

fn parse_items(items: &[&RawValue], default: Option<Kind>) -> Option<Vec<Object>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    let parse = |chunk: &[&RawValue]| -> Option<Vec<Object>> {
        chunk
            .iter()
            .map(|i| {
                serde_json::from_str::<UniqueKeys>(i.get()).ok()?;
                item_object(serde_json::from_str(i.get()).ok()?, default)
            })
            .collect()
    };
    if threads == 1 || items.len() < PARALLEL_ITEMS {
        return parse(items);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|chunk| scope.spawn(move || parse(chunk)))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for handle in handles {
            out.extend(handle.join().ok()??);
        }
        Some(out)
    })
}
