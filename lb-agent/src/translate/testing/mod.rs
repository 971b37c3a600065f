//! Typed builders of the objects that translation reads, for tests: a
//! Service or an `EndpointSlice` in one expression, each field the
//! k8s-openapi type's own, and nothing set that the test does not say
//! (but a name, a namespace and, for a slice, its Service's label).
//!
//! ```ignore
//! let web = service("web").cluster_ip("10.0.0.1").port(port(80).name("http"));
//! let slice = slice("web-1", "web").port(slice_port(8080).name("http"))
//!     .endpoint(ready("10.1.0.1"));
//! ```

mod service;
mod slice;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub(crate) use self::{
    service::{ServiceBuilder, port, service},
    slice::{
        EndpointBuilder, SliceBuilder, SlicePortBuilder, endpoint, endpoint_at, ready, slice,
        slice_port, terminating,
    },
};

/// Sets `key` to `value` in a map that may not exist yet.
fn set(map: &mut Option<BTreeMap<String, String>>, key: &str, value: &str) {
    map.get_or_insert_default()
        .insert(key.to_owned(), value.to_owned());
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|&value| value.to_owned()).collect()
}

/// The metadata of an object `default/name`.
fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("default".to_owned()),
        ..ObjectMeta::default()
    }
}

/// The metadata both builders set.
pub(crate) trait Metadata: Sized {
    fn metadata(&mut self) -> &mut ObjectMeta;

    #[must_use]
    fn namespace(mut self, namespace: &str) -> Self {
        self.metadata().namespace = Some(namespace.to_owned());
        self
    }

    #[must_use]
    fn without_name(mut self) -> Self {
        self.metadata().name = None;
        self
    }

    #[must_use]
    fn label(mut self, key: &str, value: &str) -> Self {
        set(&mut self.metadata().labels, key, value);
        self
    }

    /// Without labels (a slice's Service's included).
    #[must_use]
    fn unlabelled(mut self) -> Self {
        self.metadata().labels = None;
        self
    }

    #[must_use]
    fn annotation(mut self, key: &str, value: &str) -> Self {
        set(&mut self.metadata().annotations, key, value);
        self
    }
}

/// The name and protocol both kinds of port carry.
pub(crate) trait PortFields: Sized {
    fn name_and_protocol(&mut self) -> (&mut Option<String>, &mut Option<String>);

    #[must_use]
    fn name(mut self, name: &str) -> Self {
        *self.name_and_protocol().0 = Some(name.to_owned());
        self
    }

    #[must_use]
    fn protocol(mut self, protocol: &str) -> Self {
        *self.name_and_protocol().1 = Some(protocol.to_owned());
        self
    }
}
