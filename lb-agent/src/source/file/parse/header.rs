//! The slow path's first pass: a lenient look at each document's
//! `apiVersion`, `kind`, `metadata.name`/`namespace` and list items, which
//! never fails on types, to know what each object should be and how to name
//! it.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use crate::model::Printable;

#[derive(Debug, Default)]
pub(super) enum Shape {
    Mapping,
    #[default]
    Null,
    Other(&'static str),
}

#[derive(Debug, Default)]
pub(super) struct Header {
    pub(super) shape: Shape,
    pub(super) api_version: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) items: Option<Vec<Self>>,
}

impl Header {
    fn other(what: &'static str) -> Self {
        Self {
            shape: Shape::Other(what),
            ..Self::default()
        }
    }

    /// `Kind namespace/name`, for messages.
    pub(super) fn describe(&self, kind: Option<&str>) -> Option<String> {
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

pub(super) fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// What a lenient type makes of each kind of value; it never fails on a
/// type. The defaults read nothing: the value (sequences and maps are read
/// through) gives `Self::default()`, as do null and an absent value.
trait Lenient: Default {
    fn from_str(_: &str) -> Self {
        Self::default()
    }

    fn from_string(value: String) -> Self {
        Self::from_str(&value)
    }

    fn from_i64(_: i64) -> Self {
        Self::default()
    }

    fn from_u64(_: u64) -> Self {
        Self::default()
    }

    fn from_f64(_: f64) -> Self {
        Self::default()
    }

    fn from_bool(_: bool) -> Self {
        Self::default()
    }

    fn from_bytes(_: &[u8]) -> Self {
        Self::default()
    }

    fn from_seq<'de, A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error> {
        drain_seq(seq).map(|()| Self::default())
    }

    fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        drain_map(map).map(|()| Self::default())
    }
}

/// The one visitor of every [`Lenient`] type.
struct LenientVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient> Visitor<'de> for LenientVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::from_str(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok(T::from_string(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Ok(T::from_i64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::from_u64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Ok(T::from_f64(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        Ok(T::from_bool(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<T, E> {
        Ok(T::from_bytes(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::from_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_map(map)
    }
}

/// `Deserialize` for [`Lenient`] types, through [`LenientVisitor`].
macro_rules! deserialize_leniently {
    ($($type:ty),*) => {$(
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any(LenientVisitor(PhantomData))
            }
        }
    )*};
}

deserialize_leniently!(LenientString, LenientMeta, LenientItems, Header);

/// A string if the value is one (or an integer), else `None`.
#[derive(Default)]
struct LenientString(Option<String>);

impl Lenient for LenientString {
    fn from_str(value: &str) -> Self {
        Self(Some(value.to_owned()))
    }

    fn from_string(value: String) -> Self {
        Self(Some(value))
    }

    fn from_i64(value: i64) -> Self {
        Self(Some(value.to_string()))
    }

    fn from_u64(value: u64) -> Self {
        Self(Some(value.to_string()))
    }
}

/// `metadata.name` and `metadata.namespace`, if it is a mapping.
#[derive(Default)]
struct LenientMeta {
    name: Option<String>,
    namespace: Option<String>,
}

impl Lenient for LenientMeta {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut meta = Self::default();
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
}

/// A list's `items`: `None` unless it is a sequence.
#[derive(Default)]
struct LenientItems(Option<Vec<Header>>);

impl Lenient for LenientItems {
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element::<Header>()? {
            items.push(item);
        }
        Ok(Self(Some(items)))
    }
}

/// A document or list item: what a mapping says, or what else it is (null
/// and an empty document are [`Shape::Null`]).
impl Lenient for Header {
    fn from_str(_: &str) -> Self {
        Self::other("a string")
    }

    fn from_i64(_: i64) -> Self {
        Self::other("a number")
    }

    fn from_u64(_: u64) -> Self {
        Self::other("a number")
    }

    fn from_f64(_: f64) -> Self {
        Self::other("a number")
    }

    fn from_bool(_: bool) -> Self {
        Self::other("a boolean")
    }

    fn from_bytes(_: &[u8]) -> Self {
        Self::other("binary data")
    }

    fn from_seq<'de, A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error> {
        drain_seq(seq).map(|()| Self::other("a sequence"))
    }

    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut header = Self {
            shape: Shape::Mapping,
            ..Self::default()
        };
        while let Some(LenientString(key)) = map.next_key()? {
            match key.as_deref() {
                Some("apiVersion") => header.api_version = map.next_value::<LenientString>()?.0,
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
}
