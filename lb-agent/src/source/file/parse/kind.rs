//! Kind detection: what a document's (or list item's) `apiVersion` and
//! `kind` say it is, the only kinds and versions the file may hold.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }
}

/// What a document's (or item's) `apiVersion` and `kind` say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Object(Kind),
    /// A list, with the kind its items default to (typed lists).
    List(Option<Kind>),
    Unsupported,
}

pub(super) fn classify(api_version: Option<&str>, kind: Option<&str>) -> Class {
    match (api_version, kind) {
        (Some("v1"), Some("Service")) => Class::Object(Kind::Service),
        (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => Class::Object(Kind::EndpointSlice),
        (Some("v1"), Some("Node")) => Class::Object(Kind::Node),
        (Some("v1"), Some("List")) => Class::List(None),
        (Some("v1"), Some("NodeList")) => Class::List(Some(Kind::Node)),
        (Some("v1"), Some("ServiceList")) => Class::List(Some(Kind::Service)),
        (Some("discovery.k8s.io/v1"), Some("EndpointSliceList")) => {
            Class::List(Some(Kind::EndpointSlice))
        }
        _ => Class::Unsupported,
    }
}

/// The kind of a list item, given the list's default kind. Items of typed
/// lists may omit `apiVersion` and `kind`; when present they must agree.
pub(super) fn classify_item(
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
        Some(Kind::Node) => (api_version.or(Some("v1")), kind.or(Some("Node"))),
        None => (api_version, kind),
    };
    match classify(api_version, kind) {
        Class::Object(found) if default.is_none_or(|default| default == found) => Some(found),
        _ => None,
    }
}
