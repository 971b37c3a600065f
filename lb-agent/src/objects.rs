//! Parsing files of Kubernetes objects: what the file source
//! (`lb-agent run --services-file PATH`) reads.
//!
//! The accepted input is what `kubectl get services,endpointslices -A -o yaml`
//! (or `-o json`) prints:
//!
//! - a `v1` `List` (`kind: List`, `items: [...]`), or typed lists
//!   (`ServiceList`, `EndpointSliceList`, whose items may omit `apiVersion`
//!   and `kind`, as the API server's list responses do);
//! - single objects: `Service` (`v1`) and `EndpointSlice` (`discovery.k8s.io/v1`);
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

use std::{
    borrow::Cow,
    fmt,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServiceSpec, ServiceStatus},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;
use serde_saphyr::{MessageFormatter as _, granit_parser};

use crate::model::Printable;

/// The Services and `EndpointSlices` of a file, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
}

pub type Result<T, E = ParseError> = std::result::Result<T, E>;

/// The slow path's results: errors are boxed inside the module.
type Boxed<T> = std::result::Result<T, Box<ParseError>>;

/// Why a file of objects could not be read. Every variant displays as one
/// line naming the file, the document (1-based, counting empty ones), the
/// line and column where the parser knows them, the list item and object
/// where known, and the field path:
///
/// `services.yaml: document 2, line 17, column 13: Service default/web: spec.ports[0].port: expected i32, found "http"`
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is not well-formed YAML (or JSON).
    #[error("{}{message}", Place { file, document: *document, line: *line, column: *column, item: None, object: None, field: None })]
    Syntax {
        file: PathBuf,
        document: usize,
        line: Option<u64>,
        column: Option<u64>,
        message: String,
    },
    /// A document or list item is not an object of a supported kind and apiVersion.
    #[error("{}{}", Place { file, document: *document, line: None, column: None, item: *item, object: object.as_deref(), field: None }, unsupported_message(kind.as_deref(), api_version.as_deref(), *in_list))]
    Unsupported {
        file: PathBuf,
        document: usize,
        /// Index in the list's `items`, when the object is in a list.
        item: Option<usize>,
        /// `Kind namespace/name`, when the document says.
        object: Option<String>,
        kind: Option<String>,
        api_version: Option<String>,
        /// Whether the object is an item of a list (lists cannot nest).
        in_list: bool,
    },
    /// An object (or a field of it) does not have the expected shape or type.
    #[error("{}{message}", Place { file, document: *document, line: *line, column: *column, item: *item, object: object.as_deref(), field: field.as_deref() })]
    Invalid {
        file: PathBuf,
        document: usize,
        line: Option<u64>,
        column: Option<u64>,
        item: Option<usize>,
        object: Option<String>,
        /// Path of the field inside the object, as in `spec.ports[0].port`.
        field: Option<String>,
        message: String,
    },
}

/// The prefix of a [`ParseError`]'s line: where the error is.
struct Place<'a> {
    file: &'a Path,
    document: usize,
    line: Option<u64>,
    column: Option<u64>,
    item: Option<usize>,
    object: Option<&'a str>,
    field: Option<&'a str>,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            file,
            document,
            line,
            column,
            item,
            object,
            field,
        } = self;
        write!(f, "{}: document {document}", file.display())?;
        if let Some(line) = line {
            write!(f, ", line {line}")?;
            if let Some(column) = column {
                write!(f, ", column {column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(item) = item {
            write!(f, "items[{item}]: ")?;
        }
        if let Some(object) = object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = field.filter(|field| !field.is_empty()) {
            write!(f, "{field}: ")?;
        }
        Ok(())
    }
}

const EXPECTED_KINDS: &str =
    "expected Service (apiVersion v1) or EndpointSlice (apiVersion discovery.k8s.io/v1)";

fn unsupported_message(kind: Option<&str>, api_version: Option<&str>, in_list: bool) -> String {
    let what = match (kind, api_version) {
        (None, _) => "no kind".to_owned(),
        (Some(kind), None) => format!("kind {kind:?} without apiVersion"),
        (Some(kind), Some(api_version)) => {
            format!("unsupported kind {kind:?} with apiVersion {api_version:?}")
        }
    };
    if in_list {
        format!("{what}: {EXPECTED_KINDS} in a list")
    } else {
        format!("{what}: {EXPECTED_KINDS}, or a List, ServiceList or EndpointSliceList of them")
    }
}

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
pub fn parse(text: &str, origin: &Path) -> Result<Objects> {
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

// ---------------------------------------------------------------------------
// Kinds

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    EndpointSlice,
}

impl Kind {
    const fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        }
    }
}

/// What a document's (or item's) `apiVersion` and `kind` say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Object(Kind),
    /// A list, with the kind its items default to (typed lists).
    List(Option<Kind>),
    Unsupported,
}

fn classify(api_version: Option<&str>, kind: Option<&str>) -> Class {
    match (api_version, kind) {
        (Some("v1"), Some("Service")) => Class::Object(Kind::Service),
        (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => Class::Object(Kind::EndpointSlice),
        (Some("v1"), Some("List")) => Class::List(None),
        (Some("v1"), Some("ServiceList")) => Class::List(Some(Kind::Service)),
        (Some("discovery.k8s.io/v1"), Some("EndpointSliceList")) => {
            Class::List(Some(Kind::EndpointSlice))
        }
        _ => Class::Unsupported,
    }
}

/// The kind of a list item, given the list's default kind. Items of typed
/// lists may omit `apiVersion` and `kind`; when present they must agree.
fn classify_item(
    api_version: Option<&str>,
    kind: Option<&str>,
    default: Option<Kind>,
) -> Option<Kind> {
    let (api_version, kind) = match default {
        Some(Kind::Service) => (api_version.or(Some("v1")), kind.or(Some("Service"))),
        Some(Kind::EndpointSlice) => (
            api_version.or(Some("discovery.k8s.io/v1")),
            kind.or(Some("EndpointSlice")),
        ),
        None => (api_version, kind),
    };
    match classify(api_version, kind) {
        Class::Object(found) if default.is_none_or(|default| default == found) => Some(found),
        _ => None,
    }
}

/// A parsed object, before it is sorted into [`Objects`].
enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

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
        }
    }
    out
}

fn default_namespace(metadata: &mut ObjectMeta) {
    if metadata.namespace.is_none() {
        metadata.namespace = Some("default".to_owned());
    }
}

// ---------------------------------------------------------------------------
// Fast path: every field of both kinds in one struct, deserialized in one
// pass without buffering (kubectl sorts keys, so `kind` comes after `items`
// and after an EndpointSlice's `endpoints`: we cannot dispatch on it first).

/// The union of the fields of a Service, an `EndpointSlice` and a list.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<ObjectMeta>,
    // Service
    spec: Option<ServiceSpec>,
    status: Option<ServiceStatus>,
    // EndpointSlice
    address_type: Option<String>,
    endpoints: Option<Vec<Endpoint>>,
    ports: Option<Vec<EndpointPort>>,
    // List
    items: Option<Vec<Self>>,
}

impl RawObject {
    /// The object this is, if it is one of `kind` (fields of the other kind
    /// are ignored, as k8s-openapi ignores unknown fields).
    fn into_object(self, kind: Kind) -> Object {
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
        match kind {
            Kind::Service => Object::Service(Box::new(Service {
                metadata,
                spec,
                status,
            })),
            Kind::EndpointSlice => Object::EndpointSlice(Box::new(EndpointSlice {
                address_type: address_type.unwrap_or_default(),
                endpoints: endpoints.unwrap_or_default(),
                metadata,
                ports,
            })),
        }
    }
}

/// The objects of the documents, or `None` if anything is wrong (the slow
/// path then finds out what).
fn assemble(documents: Vec<RawObject>) -> Option<Objects> {
    let mut objects = Vec::with_capacity(documents.len());
    for document in documents {
        match classify(document.api_version.as_deref(), document.kind.as_deref()) {
            Class::Object(kind) => objects.push(document.into_object(kind)),
            Class::List(default) => {
                for item in document.items.unwrap_or_default() {
                    let kind =
                        classify_item(item.api_version.as_deref(), item.kind.as_deref(), default)?;
                    objects.push(item.into_object(kind));
                }
            }
            Class::Unsupported => return None,
        }
    }
    Some(collect(objects))
}

fn fast_yaml(text: &str) -> Option<Objects> {
    let documents =
        serde_saphyr::from_multiple_with_options::<RawObject>(text, yaml_options()).ok()?;
    assemble(documents)
}

fn fast_json(text: &str) -> Option<Objects> {
    let raw = serde_json::Deserializer::from_str(text)
        .into_iter::<&RawValue>()
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let mut documents = Vec::with_capacity(raw.len());
    for doc in raw {
        let shell: ListShell<'_> = serde_json::from_str(doc.get()).ok()?;
        if let Some(items) = shell.items {
            // A list: one cheap scan split it, now its items are parsed on
            // every core (they are independent).
            documents.push(RawObject {
                api_version: shell.api_version,
                kind: shell.kind,
                items: Some(parse_items(&items)?),
                ..RawObject::default()
            });
        } else {
            serde_json::from_str::<UniqueKeys>(doc.get()).ok()?;
            documents.push(serde_json::from_str(doc.get()).ok()?);
        }
    }
    assemble(documents)
}

/// A JSON value in which no object has a key twice. `serde_json` keeps the
/// last value of a repeated key, as the typed objects do; `kubectl`'s strict
/// field validation and the YAML parser refuse it, and so does this.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        // Objects have a handful of keys: a linear scan beats hashing.
        let mut keys: Vec<Key<'de>> = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if keys.contains(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {:?}", key.0)));
            }
            map.next_value::<UniqueKeys>()?;
            keys.push(key);
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E: de::Error>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
}

/// An object's key, borrowed from the text unless it has escapes (serde's
/// own `Cow` always copies).
#[derive(PartialEq, Eq)]
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
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

fn parse_items(items: &[&RawValue]) -> Option<Vec<RawObject>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    let parse = |chunk: &[&RawValue]| -> Option<Vec<RawObject>> {
        chunk
            .iter()
            .map(|i| {
                serde_json::from_str::<UniqueKeys>(i.get()).ok()?;
                serde_json::from_str(i.get()).ok()
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

// ---------------------------------------------------------------------------
// Slow path, first pass: a lenient look at each document's `apiVersion`,
// `kind`, `metadata.name`/`namespace` and list items, which never fails on
// types, to know what each object should be and how to name it.

#[derive(Debug, Default)]
enum Shape {
    Mapping,
    #[default]
    Null,
    Other(&'static str),
}

#[derive(Debug, Default)]
struct Header {
    shape: Shape,
    api_version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    items: Option<Vec<Self>>,
}

impl Header {
    /// `Kind namespace/name`, for messages.
    fn describe(&self, kind: Option<&str>) -> Option<String> {
        let kind = Printable(kind.or(self.kind.as_deref())?);
        let namespace = Printable(self.namespace.as_deref().unwrap_or("default"));
        Some(match &self.name {
            Some(name) => format!("{kind} {namespace}/{}", Printable(name)),
            None => format!("{kind} {namespace}/(no name)"),
        })
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A string if the value is one (or an integer), else `None`; never an error.
struct LenientString(Option<String>);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientString(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientString(None))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
                Ok(LenientString(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientString(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientString(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                LenientString::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| LenientString(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| LenientString(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `metadata.name` and `metadata.namespace`, leniently.
#[derive(Default)]
struct LenientMeta {
    name: Option<String>,
    namespace: Option<String>,
}

impl<'de> Deserialize<'de> for LenientMeta {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientMeta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut meta = LenientMeta::default();
                while let Some(LenientString(key)) = map.next_key()? {
                    match key.as_deref() {
                        Some("name") => meta.name = map.next_value::<LenientString>()?.0,
                        Some("namespace") => meta.namespace = map.next_value::<LenientString>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(meta)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                LenientMeta::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| LenientMeta::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LenientMeta::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientMeta::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientMeta::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientMeta::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientMeta::default())
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
                Ok(LenientMeta::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientMeta::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientMeta::default())
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A list's `items`, leniently: `None` unless it is a sequence.
struct LenientItems(Option<Vec<Header>>);

impl<'de> Deserialize<'de> for LenientItems {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientItems;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element::<Header>()? {
                    items.push(item);
                }
                Ok(LenientItems(Some(items)))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                LenientItems::deserialize(d)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| LenientItems(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LenientItems(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientItems(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientItems(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientItems(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientItems(None))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
                Ok(LenientItems(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientItems(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientItems(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut header = Header {
                    shape: Shape::Mapping,
                    ..Header::default()
                };
                while let Some(LenientString(key)) = map.next_key()? {
                    match key.as_deref() {
                        Some("apiVersion") => {
                            header.api_version = map.next_value::<LenientString>()?.0;
                        }
                        Some("kind") => header.kind = map.next_value::<LenientString>()?.0,
                        Some("metadata") => {
                            let LenientMeta { name, namespace } = map.next_value()?;
                            header.name = name;
                            header.namespace = namespace;
                        }
                        Some("items") => header.items = map.next_value::<LenientItems>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(header)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Header::deserialize(d)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Header::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Header::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| other("a sequence"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(other("a string"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(other("a number"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(other("a boolean"))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
                Ok(other("binary data"))
            }
        }
        fn other(what: &'static str) -> Header {
            Header {
                shape: Shape::Other(what),
                ..Header::default()
            }
        }
        deserializer.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Slow path, second pass: the document again, each object into its own
// k8s-openapi type (so the semantics are exactly those of the types), with
// the field path tracked.

/// What a document holds, decided from its [`Header`].
enum Plan {
    /// A null or empty document: nothing.
    Nothing,
    Single(Kind),
    /// A list, with the kind of each item.
    List(Vec<Kind>),
}

/// Why a document cannot be planned: a [`ParseError`] without the file and
/// document number.
enum PlanError {
    NotAnObject {
        item: Option<usize>,
        found: &'static str,
    },
    Unsupported {
        item: Option<usize>,
        header: Box<Header>,
    },
}

fn plan(mut header: Header) -> Result<(Plan, Header), PlanError> {
    match header.shape {
        Shape::Null => return Ok((Plan::Nothing, header)),
        Shape::Other(found) => return Err(PlanError::NotAnObject { item: None, found }),
        Shape::Mapping => {}
    }
    match classify(header.api_version.as_deref(), header.kind.as_deref()) {
        Class::Object(kind) => Ok((Plan::Single(kind), header)),
        Class::List(default) => {
            let items = header.items.as_deref().unwrap_or_default();
            let mut kinds = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                match item.shape {
                    Shape::Mapping => {}
                    Shape::Null => {
                        return Err(PlanError::NotAnObject {
                            item: Some(index),
                            found: "null",
                        });
                    }
                    Shape::Other(found) => {
                        return Err(PlanError::NotAnObject {
                            item: Some(index),
                            found,
                        });
                    }
                }
                if let Some(kind) =
                    classify_item(item.api_version.as_deref(), item.kind.as_deref(), default)
                {
                    kinds.push(kind);
                } else {
                    let item = header
                        .items
                        .as_mut()
                        .and_then(|items| items.get_mut(index))
                        .map(std::mem::take);
                    return Err(PlanError::Unsupported {
                        item: Some(index),
                        header: Box::new(item.unwrap_or_default()),
                    });
                }
            }
            Ok((Plan::List(kinds), header))
        }
        Class::Unsupported => Err(PlanError::Unsupported {
            item: None,
            header: Box::new(header),
        }),
    }
}

struct ObjectSeed(Kind);

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Object;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Object, D::Error> {
        Ok(match self.0 {
            Kind::Service => Object::Service(Box::new(Service::deserialize(deserializer)?)),
            Kind::EndpointSlice => {
                Object::EndpointSlice(Box::new(EndpointSlice::deserialize(deserializer)?))
            }
        })
    }
}

/// A list document: only its `items` matter, each with its kind.
struct ListSeed<'a>(&'a [Kind]);

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = Vec<Object>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Object>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = Vec<Object>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Object>, A::Error> {
        let mut objects = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                objects = map.next_value_seed(ItemsSeed(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(objects)
    }
}

struct ItemsSeed<'a>(&'a [Kind]);

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = Vec<Object>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Object>, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = Vec<Object>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of objects")
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<Object>, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<Object>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Object>, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Object>, A::Error> {
        let mut objects = Vec::with_capacity(self.0.len());
        for &kind in self.0 {
            match seq.next_element_seed(ObjectSeed(kind))? {
                Some(object) => objects.push(object),
                None => return Ok(objects),
            }
        }
        // The first pass saw as many items as there are; anything more is ignored.
        drain_seq(seq)?;
        Ok(objects)
    }
}

/// The typed second pass over one document, with the path of the field
/// that failed.
fn typed<'de, D: Deserializer<'de>>(
    deserializer: D,
    plan: &Plan,
) -> (Result<Vec<Object>, D::Error>, serde_path_to_error::Path) {
    let mut track = serde_path_to_error::Track::new();
    let wrapped = serde_path_to_error::Deserializer::new(deserializer, &mut track);
    let result = match plan {
        Plan::Nothing => IgnoredAny::deserialize(wrapped).map(|_| Vec::new()),
        Plan::Single(kind) => ObjectSeed(*kind)
            .deserialize(wrapped)
            .map(|object| vec![object]),
        Plan::List(kinds) => ListSeed(kinds).deserialize(wrapped),
    };
    (result, track.path())
}

/// Splits a document's field path into the list item (for lists) and the
/// path inside the object, formatted as `spec.ports[0].port`.
fn split_path(path: &serde_path_to_error::Path, list: bool) -> (Option<usize>, String) {
    use serde_path_to_error::Segment;
    let mut segments = path.iter().peekable();
    let mut item = None;
    if list
        && let Some(Segment::Map { key }) = segments.peek()
        && key == "items"
    {
        segments.next();
        if let Some(Segment::Seq { index }) = segments.peek() {
            item = Some(*index);
            segments.next();
        } else {
            // An error in `items` itself.
            let mut out = "items".to_owned();
            push_segments(&mut out, segments);
            return (None, out);
        }
    }
    let mut out = String::new();
    push_segments(&mut out, segments);
    (item, out)
}

fn push_segments<'a>(
    out: &mut String,
    segments: impl Iterator<Item = &'a serde_path_to_error::Segment>,
) {
    use std::fmt::Write as _;

    use serde_path_to_error::Segment;
    for segment in segments {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                } else {
                    let _ = write!(out, "[{key:?}]");
                }
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
}

/// Everything the slow path knows about a failed document, to build a
/// [`ParseError`].
struct DocumentError {
    line: Option<u64>,
    column: Option<u64>,
    item: Option<usize>,
    object: Option<String>,
    field: Option<String>,
    message: String,
}

impl DocumentError {
    fn into_parse_error(self, file: &Path, document: usize) -> ParseError {
        let Self {
            line,
            column,
            item,
            object,
            field,
            message,
        } = self;
        ParseError::Invalid {
            file: file.to_owned(),
            document,
            line,
            column,
            item,
            object,
            field,
            message,
        }
    }
}

fn plan_error(error: PlanError, file: &Path, document: usize) -> ParseError {
    match error {
        PlanError::NotAnObject { item, found } => ParseError::Invalid {
            file: file.to_owned(),
            document,
            line: None,
            column: None,
            item,
            object: None,
            field: None,
            message: format!("expected a Kubernetes object (a mapping), found {found}"),
        },
        PlanError::Unsupported { item, header } => {
            let object = header.describe(None);
            let Header {
                kind, api_version, ..
            } = *header;
            ParseError::Unsupported {
                file: file.to_owned(),
                document,
                item,
                object,
                kind,
                api_version,
                in_list: item.is_some(),
            }
        }
    }
}

/// Names the object a typed-pass error is in.
fn object_of(header: &Header, plan: &Plan, item: Option<usize>) -> Option<String> {
    match (plan, item) {
        (Plan::Single(kind), _) => header.describe(Some(kind.name())),
        (Plan::List(kinds), Some(index)) => {
            let item = header.items.as_ref()?.get(index)?;
            item.describe(kinds.get(index).map(|kind| kind.name()))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Slow path for YAML.

/// One document of a YAML stream: its bytes and its first line.
struct YamlDocument<'a> {
    text: &'a str,
    /// Lines before the document's first line.
    line_offset: u64,
}

/// Splits a YAML stream into its documents with the event parser, or says
/// where it is not well-formed.
fn split_yaml<'a>(text: &'a str, file: &Path) -> Boxed<Vec<YamlDocument<'a>>> {
    use granit_parser::{Event, Parser};

    let mut documents = Vec::new();
    let mut start: Option<(usize, u64)> = None;
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        match event {
            Ok((Event::DocumentStart(..), span)) => {
                let offset = byte_offset(text, span.start.byte_offset(), span.start.index());
                // From the start of the line: indentation is significant.
                let line_start = text
                    .get(..offset)
                    .and_then(|before| before.rfind('\n'))
                    .map_or(0, |nl| nl + 1);
                start = Some((line_start, to_u64(span.start.line()).saturating_sub(1)));
            }
            Ok((Event::DocumentEnd, span)) => {
                let end = byte_offset(text, span.end.byte_offset(), span.end.index());
                if let Some((begin, line_offset)) = start.take() {
                    let text = text.get(begin..end.max(begin)).unwrap_or_default();
                    documents.push(YamlDocument { text, line_offset });
                }
            }
            Ok(_) => {}
            Err(error) => {
                return Err(Box::new(ParseError::Syntax {
                    file: file.to_owned(),
                    document: documents.len() + 1,
                    line: Some(to_u64(error.marker().line())),
                    column: Some(to_u64(error.marker().col()).saturating_add(1)),
                    message: clean(&error.info()),
                }));
            }
        }
    }
    Ok(documents)
}

/// The byte offset of a parser marker (the parser gives byte offsets for
/// string input; the character index is the fallback).
fn byte_offset(text: &str, bytes: Option<usize>, chars: usize) -> usize {
    bytes
        .filter(|&b| text.is_char_boundary(b))
        .unwrap_or_else(|| {
            text.char_indices()
                .nth(chars)
                .map_or(text.len(), |(b, _)| b)
        })
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Error text on one line.
fn clean(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn slow_yaml(text: &str, file: &Path) -> Boxed<Objects> {
    let mut objects = Vec::new();
    for (index, document) in split_yaml(text, file)?.into_iter().enumerate() {
        let number = index + 1;
        let header = serde_saphyr::from_str_with_options::<Header>(document.text, yaml_options())
            .map_err(|error| {
            yaml_error(&error, &document, None, None, None).into_parse_error(file, number)
        })?;
        let (plan, header) = plan(header).map_err(|error| plan_error(error, file, number))?;
        let mut path = None;
        let result = serde_saphyr::with_deserializer_from_str_with_options(
            document.text,
            yaml_options(),
            |de| {
                let (result, failed_at) = typed(de, &plan);
                path = Some(failed_at);
                result
            },
        );
        match result {
            Ok(found) => objects.extend(found),
            Err(error) => {
                let (item, field) = path.as_ref().map_or((None, None), |path| {
                    let (item, field) = split_path(path, matches!(plan, Plan::List(_)));
                    (item, Some(field))
                });
                let object = object_of(&header, &plan, item);
                return Err(Box::new(
                    yaml_error(&error, &document, item, object, field)
                        .into_parse_error(file, number),
                ));
            }
        }
    }
    Ok(collect(objects))
}

fn yaml_error(
    error: &serde_saphyr::Error,
    document: &YamlDocument<'_>,
    item: Option<usize>,
    object: Option<String>,
    field: Option<String>,
) -> DocumentError {
    let error = innermost(error);
    let location = error.location();
    let mut message = clean(&yaml_message(error));
    if let serde_saphyr::Error::InvalidScalar { ty, location } = error {
        // Say what was found, as serde's own "invalid type" messages do.
        let span = location.span();
        if let (Some(start), Some(len)) = (span.byte_offset(), span.byte_len())
            && let Some(found) = usize::try_from(start)
                .ok()
                .zip(usize::try_from(start.saturating_add(len)).ok())
                .and_then(|(start, end)| document.text.get(start..end))
        {
            message = format!("expected {ty}, found {:?}", clean(found));
        }
    }
    DocumentError {
        line: location.map(|l| l.line().saturating_add(document.line_offset)),
        column: location.map(|l| l.column()),
        item,
        object,
        field,
        message,
    }
}

/// A YAML error as a sentence for the file's author: the library's own
/// text is written for the programs that call it (it suggests its options,
/// or prints its structures).
fn yaml_message(error: &serde_saphyr::Error) -> String {
    use serde_saphyr::{Error, budget::BudgetBreach as Breach};
    match error {
        Error::DuplicateMappingKey { key: Some(key), .. } => format!("duplicate key {key:?}"),
        Error::DuplicateMappingKey { key: None, .. } => "duplicate key".to_owned(),
        Error::Budget { breach, .. } => {
            let what = match breach {
                Breach::Aliases { aliases } => format!("{aliases} aliases"),
                Breach::Anchors { anchors } => format!("{anchors} anchors"),
                Breach::AliasAnchorRatio { aliases, anchors } => {
                    format!("{aliases} aliases of {anchors} anchors")
                }
                Breach::Depth { depth } => format!("nested {depth} deep"),
                Breach::MergeKeys { merge_keys } => format!("{merge_keys} merge keys"),
                Breach::RecordedAnchorEvents {
                    recorded_anchor_events: n,
                } => format!("aliases that expand to {n} nodes"),
                Breach::RecordedAnchorBytes {
                    recorded_anchor_bytes: n,
                } => format!("aliases that expand to {n} bytes"),
                _ => "over the parser's limits".to_owned(),
            };
            format!("the YAML is too large or too complex to read: {what}")
        }
        other => serde_saphyr::UserMessageFormatter
            .format_message(other)
            .into_owned(),
    }
}

/// The error inside snippet and alias wrappers.
fn innermost(error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match error {
        serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } => innermost(error),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Slow path for JSON: each value once as a `serde_json::Value` (exact for
// JSON, whose values carry their types), then typed from it.

fn slow_json(text: &str, file: &Path) -> Boxed<Objects> {
    // `serde_json::Value` keeps the last of a repeated key: look for one
    // first, where the parser still knows the line and column.
    let stream = serde_json::Deserializer::from_str(text).into_iter::<UniqueKeys>();
    for (index, checked) in stream.enumerate() {
        if let Err(error) = checked {
            return Err(Box::new(ParseError::Syntax {
                file: file.to_owned(),
                document: index + 1,
                line: Some(to_u64(error.line())),
                column: Some(to_u64(error.column())),
                message: json_message(&error),
            }));
        }
    }
    let mut objects = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    for (index, value) in stream.enumerate() {
        let number = index + 1;
        let value = value.map_err(|error| ParseError::Syntax {
            file: file.to_owned(),
            document: number,
            line: Some(to_u64(error.line())),
            column: Some(to_u64(error.column())),
            message: json_message(&error),
        })?;
        let header = Header::deserialize(&value).map_err(|error| ParseError::Invalid {
            file: file.to_owned(),
            document: number,
            line: None,
            column: None,
            item: None,
            object: None,
            field: None,
            message: json_message(&error),
        })?;
        let (plan, header) = plan(header).map_err(|error| plan_error(error, file, number))?;
        let (result, path) = typed(&value, &plan);
        match result {
            Ok(found) => objects.extend(found),
            Err(error) => {
                let (item, field) = split_path(&path, matches!(plan, Plan::List(_)));
                return Err(Box::new(ParseError::Invalid {
                    file: file.to_owned(),
                    document: number,
                    line: None,
                    column: None,
                    object: object_of(&header, &plan, item),
                    item,
                    field: Some(field),
                    message: json_message(&error),
                }));
            }
        }
    }
    Ok(collect(objects))
}

/// A `serde_json` error's message without the location it appends (kept
/// separately in [`ParseError`]).
fn json_message(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    clean(full.strip_suffix(&suffix).unwrap_or(&full))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{fmt::Write as _, time::Instant};

    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

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
    const KUBECTL_LIST: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      lb-agent.io/algorithm: round-robin
    creationTimestamp: "2025-05-01T10:00:00Z"
    labels:
      app.kubernetes.io/name: web
    name: web
    namespace: default
    resourceVersion: "1234"
    uid: 0b7e2f3c-1a2b-4c5d-8e9f-001122334455
  spec:
    clusterIP: 10.96.0.10
    clusterIPs:
    - 10.96.0.10
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: http
    selector:
      app.kubernetes.io/name: web
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.5
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-1
    targetRef:
      kind: Pod
      name: web-7d9c-abcde
      namespace: default
      uid: 9a8b7c6d-0000-1111-2222-333344445555
    zone: zone-a
  kind: EndpointSlice
  metadata:
    generateName: web-
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-x7k2p
    namespace: default
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: web
      uid: 0b7e2f3c-1a2b-4c5d-8e9f-001122334455
    resourceVersion: "1240"
  ports:
  - name: http
    port: 8080
    protocol: TCP
kind: List
metadata:
  resourceVersion: ""
"#;

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
        assert_eq!(slice.endpoints[0].addresses, ["10.244.1.5"]);
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-1"));
        assert_eq!(slice.ports.as_ref().expect("ports")[0].port, Some(8080));
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
             \"discovery.k8s.io/v1\": expected Service (apiVersion v1) or EndpointSlice (apiVersion discovery.k8s.io/v1) in a list"
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
             expected Service (apiVersion v1) or EndpointSlice (apiVersion discovery.k8s.io/v1), or a List, ServiceList or \
             EndpointSliceList of them"
        );
    }

    #[test]
    fn wrong_kind_in_a_list_names_the_item() {
        let error = parse_err(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n- {apiVersion: apps/v1, kind: Deployment, metadata: {name: d, namespace: x}}\n",
        );
        assert!(
            error.to_string().starts_with("services.yaml: document 1: items[1]: Deployment x/d: unsupported kind \"Deployment\""),
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
        assert!(error.to_string().ends_with(": no kind: expected Service (apiVersion v1) or EndpointSlice (apiVersion discovery.k8s.io/v1), or a List, ServiceList or EndpointSliceList of them"), "{error}");
        let error = parse_err("kind: Service\nmetadata: {name: a}\n");
        assert_eq!(
            error.to_string().split(": expected").next(),
            Some(
                "services.yaml: document 1: Service default/a: kind \"Service\" without apiVersion"
            )
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
        let error = parse_err(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n- just\n- a list\n",
        );
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

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        for text in [
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  annotations: {}\n",
                "[".repeat(100_000)
            ),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {}{}\n",
                "[".repeat(500),
                "]".repeat(500)
            ),
            (0..200).fold(
                String::from("apiVersion: v1\nkind: Service\nx:\n"),
                |mut s, depth| {
                    let _ = writeln!(s, "{}- ", "  ".repeat(depth + 1));
                    s
                },
            ),
            format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {{\"labels\": {}{}}}}}",
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
        ] {
            assert!(parse(&text, Path::new("deep")).is_err(), "{}", &text[..60]);
        }
        // Unknown fields too are read within the depth limits (the check for
        // repeated keys reads every JSON object): an error, never a crash.
        let json = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"x\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let error = parse(&json, Path::new("deep")).expect_err("too deep");
        assert!(
            error.to_string().ends_with("recursion limit exceeded"),
            "{error}"
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
        let text = "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": []}\nnull\n{\"kind\": \"Pod\"}";
        assert!(matches!(
            parse_err(text),
            ParseError::Unsupported { document: 3, .. }
        ));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from(
            "apiVersion: v1\nkind: Service\nmetadata:\n  annotations:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for level in 1..12 {
            let previous = level - 1;
            let refs = vec![format!("*a{previous}"); 10].join(", ");
            let _ = writeln!(text, "    a{level}: &a{level} [{refs}]");
        }
        let start = Instant::now();
        assert!(parse(&text, Path::new("bomb")).is_err());
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    }

    #[test]
    fn no_panic_on_any_truncation_or_corruption() {
        let json = {
            let value: serde_json::Value = serde_saphyr::from_str(KUBECTL_LIST).expect("yaml");
            serde_json::to_string_pretty(&value).expect("json")
        };
        for text in [KUBECTL_LIST, json.as_str()] {
            for end in (0..text.len()).filter(|&end| text.is_char_boundary(end)) {
                let _ = parse(&text[..end], Path::new("t"));
            }
            // Deterministic corruption: one byte replaced by an interesting one.
            let mut seed = 0x2545_f491_u32;
            let specials = b"-:[]{}\"'&*!|>%@`#,? \n\t0";
            for _ in 0..2_000 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let mut bytes = text.as_bytes().to_vec();
                let at = seed as usize % bytes.len();
                bytes[at] = specials[(seed >> 16) as usize % specials.len()];
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    let _ = parse(text, Path::new("t"));
                }
            }
        }
    }

    /// `n` services with one `EndpointSlice` each of `endpoints` endpoints, as
    /// kubectl prints them (a `v1` List, without managedFields).
    pub(crate) fn generate_yaml(n: usize, endpoints: usize) -> String {
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
}
