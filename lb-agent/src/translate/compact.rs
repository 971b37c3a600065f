//! What translation reads of an `EndpointSlice`, kept in a fraction of the
//! object's size: both sources convert slices to [`Slice`] as they get them,
//! and the Kubernetes source's reflector stores these, not the objects.
//!
//! A `k8s-openapi` `Endpoint` is 352 bytes before its strings (target
//! reference, deprecated topology, hostname, all optional and inline); a
//! [`SliceEndpoint`] is 56, its address parsed, and the slice's labels are
//! three fields instead of a map. At 100,000 slices of 10 endpoints that is
//! about 0.5 GiB less in the agent.
//!
//! Nothing translation checks is decided here: an address that does not
//! parse is kept as written, so that translation reports it where it is,
//! as it did from the object.

use std::{borrow::Cow, net::IpAddr};

use k8s_openapi::{
    NamespaceResourceScope,
    api::discovery::v1::{Endpoint, EndpointHints, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME};

/// An `EndpointSlice` as translation reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slice {
    /// Name, namespace and resource version: the labels are below.
    pub metadata: ObjectMeta,
    /// The [`LABEL_SERVICE_NAME`] label: the slice's Service.
    pub service: Option<String>,
    /// Labelled [`LABEL_HEADLESS`] (with any value).
    pub headless: bool,
    /// The [`LABEL_SERVICE_PROXY_NAME`] label.
    pub proxy_name: Option<String>,
    /// `addressType` as written.
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// An endpoint of a [`Slice`].
#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    /// The first of `addresses`: kube-proxy uses no other.
    pub address: Address,
    /// `conditions.ready`, `.serving` and `.terminating` as written.
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<Box<str>>,
    /// `hints` (zones and nodes), rare enough to be boxed.
    pub hints: Option<Box<EndpointHints>>,
}

/// The first address of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `addresses` is empty.
    Missing,
    Ip(IpAddr),
    /// Not an IP address: kept as written, for the problem that says so.
    Invalid(Box<str>),
}

impl From<EndpointSlice> for Slice {
    fn from(slice: EndpointSlice) -> Self {
        let EndpointSlice {
            address_type,
            endpoints,
            metadata,
            ports,
        } = slice;
        let mut labels = metadata.labels.unwrap_or_default();
        let endpoints = endpoints.unwrap_or_default();
        // Not `collect()`: it would convert in place and keep the objects'
        // allocation, six times the size of the endpoints it then holds.
        let mut compact = Vec::with_capacity(endpoints.len());
        compact.extend(endpoints.into_iter().map(SliceEndpoint::from));
        Self {
            metadata: ObjectMeta {
                name: metadata.name,
                namespace: metadata.namespace,
                resource_version: metadata.resource_version,
                ..ObjectMeta::default()
            },
            service: labels.remove(LABEL_SERVICE_NAME),
            headless: labels.contains_key(LABEL_HEADLESS),
            proxy_name: labels.remove(LABEL_SERVICE_PROXY_NAME),
            address_type,
            ports: ports.unwrap_or_default(),
            endpoints: compact,
        }
    }
}

impl From<Endpoint> for SliceEndpoint {
    fn from(endpoint: Endpoint) -> Self {
        let address = match endpoint.addresses.into_iter().next() {
            None => Address::Missing,
            Some(text) => text
                .parse()
                .map_or_else(|_| Address::Invalid(text.into()), Address::Ip),
        };
        let conditions = endpoint.conditions.unwrap_or_default();
        Self {
            address,
            ready: conditions.ready,
            serving: conditions.serving,
            terminating: conditions.terminating,
            node_name: endpoint.node_name.map(String::into_boxed_str),
            hints: endpoint
                .hints
                .filter(|h| h.for_zones.is_some() || h.for_nodes.is_some())
                .map(Box::new),
        }
    }
}

/// So that a reflector can store slices in this form (the watch still
/// lists and watches `EndpointSlices`; see `source::kube`).
impl kube::Resource for Slice {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed("EndpointSlice")
    }

    fn group((): &()) -> Cow<'_, str> {
        Cow::Borrowed("discovery.k8s.io")
    }

    fn version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural((): &()) -> Cow<'_, str> {
        Cow::Borrowed("endpointslices")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

    use super::{Address, Slice, SliceEndpoint};

    /// The size the module's documentation promises, and no more: the
    /// endpoints do not keep the allocation of the objects they came from
    /// (a `collect()` from them would, converting in place).
    #[test]
    fn an_endpoint_is_a_sixth_of_the_object() {
        assert_eq!(size_of::<SliceEndpoint>(), 56);
        assert!(size_of::<Endpoint>() >= 6 * 56);
        assert_eq!(size_of::<Address>(), 24);

        let endpoint = Endpoint {
            addresses: vec!["10.0.0.1".to_owned()],
            ..Endpoint::default()
        };
        let slice = Slice::from(EndpointSlice {
            endpoints: Some(vec![endpoint; 10]),
            ..EndpointSlice::default()
        });
        assert_eq!(slice.endpoints.capacity(), 10);
        assert_eq!(
            slice.endpoints[0].address,
            Address::Ip("10.0.0.1".parse().expect("an address"))
        );
    }
}
