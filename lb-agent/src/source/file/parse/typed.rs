//! The slow path's second pass: the document again, each object into its
//! own k8s-openapi type (so the semantics are exactly those of the types),
//! with the path of the field that failed.

use std::fmt;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use super::{Object, header::drain_seq, kind::Kind, plan::Plan};

struct ObjectSeed(Kind);

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Object;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Object, D::Error> {
        Ok(match self.0 {
            Kind::Service => Object::Service(Box::new(Service::deserialize(deserializer)?)),
            Kind::EndpointSlice => {
                Object::EndpointSlice(Box::new(EndpointSlice::deserialize(deserializer)?.into()))
            }
            Kind::Node => Object::Node(Box::new(Node::deserialize(deserializer)?)),
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
pub(super) fn typed<'de, D: Deserializer<'de>>(
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
pub(super) fn split_path(path: &serde_path_to_error::Path, list: bool) -> (Option<usize>, String) {
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
