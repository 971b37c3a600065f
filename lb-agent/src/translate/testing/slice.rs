//! Builders of `EndpointSlices`, their ports and endpoints.

use k8s_openapi::{
    api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{Metadata, PortFields, metadata, set, strings};
use crate::translate::{LABEL_SERVICE_NAME, Slice};

/// An `EndpointSlice` `default/name` of `service` (its label), of IPv4
/// addresses, without ports or endpoints.
pub(crate) fn slice(name: &str, service: &str) -> SliceBuilder {
    let mut metadata = metadata(name);
    set(&mut metadata.labels, LABEL_SERVICE_NAME, service);
    SliceBuilder(EndpointSlice {
        address_type: "IPv4".to_owned(),
        endpoints: None,
        metadata,
        ports: None,
    })
}

#[derive(Clone, Debug)]
pub(crate) struct SliceBuilder(EndpointSlice);

impl Metadata for SliceBuilder {
    fn metadata(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl SliceBuilder {
    #[must_use]
    /// The slice as translation keeps it.
    pub(crate) fn build(self) -> Slice {
        self.0.into()
    }

    #[must_use]
    pub(crate) fn address_type(mut self, address_type: &str) -> Self {
        address_type.clone_into(&mut self.0.address_type);
        self
    }

    /// Adds a port to `ports`.
    #[must_use]
    pub(crate) fn port(mut self, port: SlicePortBuilder) -> Self {
        self.0.ports.get_or_insert_default().push(port.0);
        self
    }

    #[must_use]
    pub(crate) fn endpoint(mut self, endpoint: EndpointBuilder) -> Self {
        self.0.endpoints.get_or_insert_default().push(endpoint.0);
        self
    }

    #[must_use]
    pub(crate) fn endpoints(self, endpoints: impl IntoIterator<Item = EndpointBuilder>) -> Self {
        endpoints.into_iter().fold(self, Self::endpoint)
    }
}

/// A port of a slice, unnamed and without protocol.
pub(crate) fn slice_port(number: i32) -> SlicePortBuilder {
    SlicePortBuilder(EndpointPort {
        port: Some(number),
        ..EndpointPort::default()
    })
}

#[derive(Clone, Debug)]
pub(crate) struct SlicePortBuilder(EndpointPort);

impl PortFields for SlicePortBuilder {
    fn name_and_protocol(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.0.name, &mut self.0.protocol)
    }
}

/// An endpoint at `ip`, without conditions, node or hints.
pub(crate) fn endpoint(ip: &str) -> EndpointBuilder {
    endpoint_at(&[ip])
}

/// An endpoint with these addresses (kube-proxy uses the first).
pub(crate) fn endpoint_at(addresses: &[&str]) -> EndpointBuilder {
    EndpointBuilder(Endpoint {
        addresses: strings(addresses),
        ..Endpoint::default()
    })
}

/// An endpoint at `ip` whose only condition is `ready: true`.
pub(crate) fn ready(ip: &str) -> EndpointBuilder {
    endpoint(ip).ready(true)
}

/// An endpoint at `ip` of a pod that is terminating but still serving:
/// `ready: false, serving: true, terminating: true`.
pub(crate) fn terminating(ip: &str) -> EndpointBuilder {
    endpoint(ip).ready(false).serving(true).terminating(true)
}

#[derive(Clone, Debug)]
pub(crate) struct EndpointBuilder(Endpoint);

impl EndpointBuilder {
    fn conditions(&mut self) -> &mut EndpointConditions {
        self.0.conditions.get_or_insert_default()
    }

    fn hints(&mut self) -> &mut EndpointHints {
        self.0.hints.get_or_insert_default()
    }

    /// `conditions: {}`: present, every condition unset.
    #[must_use]
    pub(crate) fn with_empty_conditions(mut self) -> Self {
        self.conditions();
        self
    }

    #[must_use]
    pub(crate) fn ready(mut self, ready: bool) -> Self {
        self.conditions().ready = Some(ready);
        self
    }

    #[must_use]
    pub(crate) fn serving(mut self, serving: bool) -> Self {
        self.conditions().serving = Some(serving);
        self
    }

    #[must_use]
    pub(crate) fn terminating(mut self, terminating: bool) -> Self {
        self.conditions().terminating = Some(terminating);
        self
    }

    /// `nodeName`.
    #[must_use]
    pub(crate) fn node(mut self, node_name: &str) -> Self {
        self.0.node_name = Some(node_name.to_owned());
        self
    }

    /// `hints.forZones`.
    #[must_use]
    pub(crate) fn zone_hints(mut self, zones: &[&str]) -> Self {
        let zones = zones.iter().map(|&name| ForZone {
            name: name.to_owned(),
        });
        self.hints().for_zones = Some(zones.collect());
        self
    }

    /// `hints.forNodes`.
    #[must_use]
    pub(crate) fn node_hints(mut self, nodes: &[&str]) -> Self {
        let nodes = nodes.iter().map(|&name| ForNode {
            name: name.to_owned(),
        });
        self.hints().for_nodes = Some(nodes.collect());
        self
    }
}
