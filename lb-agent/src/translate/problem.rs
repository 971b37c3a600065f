//! What was skipped and why: [`Problem`], named by [`ObjectRef`].

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::Printable;

/// The kinds of object translation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        })
    }
}

/// A Kubernetes object, for messages: `Service default/web`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    fn new(kind: Kind, metadata: &ObjectMeta) -> Self {
        Self {
            kind,
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name: metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            kind,
            namespace,
            name,
        } = self;
        write!(f, "{kind} {}/{}", Printable(namespace), Printable(name))
    }
}

/// Something skipped: `Service default/web: spec.clusterIPs[1]: "10.0.0.300" is not an IP address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectRef,
    /// Path of the offending field in the object (`spec.ports[0].port`);
    /// empty when the problem is with the object as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            object,
            field,
            message,
        } = self;
        if field.is_empty() {
            write!(f, "{object}: {message}")
        } else {
            write!(f, "{object}: {field}: {message}")
        }
    }
}

#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(
        &mut self,
        object: &Obj<'_>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push_ref(ObjectRef::new(object.kind, object.metadata), field, message);
    }

    pub(super) fn push_ref(
        &mut self,
        object: ObjectRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(Problem {
            object,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// The object being translated, named (allocated) only for a problem.
#[derive(Clone, Copy)]
pub(super) struct Obj<'a> {
    pub(super) kind: Kind,
    pub(super) metadata: &'a ObjectMeta,
}
