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

use k8s_openapi::{
    api::{
        core::v1::{ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig},
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
            ForZone,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::LABEL_SERVICE_NAME;

/// Sets `key` to `value` in a map that may not exist yet.
fn set(map: &mut Option<std::collections::BTreeMap<String, String>>, key: &str, value: &str) {
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

/// A Service `default/name`, without a spec until a method sets part of it.
pub(crate) fn service(name: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        metadata: metadata(name),
        ..Service::default()
    })
}

#[derive(Clone, Debug)]
pub(crate) struct ServiceBuilder(Service);

impl Metadata for ServiceBuilder {
    fn metadata(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl ServiceBuilder {
    #[must_use]
    pub(crate) fn build(self) -> Service {
        self.0
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_default()
    }

    /// `spec.type`.
    #[must_use]
    pub(crate) fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.to_owned());
        self
    }

    #[must_use]
    pub(crate) fn cluster_ip(mut self, ip: &str) -> Self {
        self.spec().cluster_ip = Some(ip.to_owned());
        self
    }

    #[must_use]
    pub(crate) fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.spec().cluster_ips = Some(strings(ips));
        self
    }

    #[must_use]
    pub(crate) fn ip_families(mut self, families: &[&str]) -> Self {
        self.spec().ip_families = Some(strings(families));
        self
    }

    #[must_use]
    pub(crate) fn external_name(mut self, name: &str) -> Self {
        self.spec().external_name = Some(name.to_owned());
        self
    }

    #[must_use]
    pub(crate) fn session_affinity(mut self, affinity: &str) -> Self {
        self.spec().session_affinity = Some(affinity.to_owned());
        self
    }

    /// `spec.sessionAffinityConfig.clientIP.timeoutSeconds`.
    #[must_use]
    pub(crate) fn affinity_timeout(mut self, seconds: i32) -> Self {
        self.spec().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(seconds),
            }),
        });
        self
    }

    #[must_use]
    pub(crate) fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().internal_traffic_policy = Some(policy.to_owned());
        self
    }

    /// Adds a port to `spec.ports`.
    #[must_use]
    pub(crate) fn port(mut self, port: PortBuilder) -> Self {
        self.spec().ports.get_or_insert_default().push(port.0);
        self
    }
}

/// A Service port, unnamed and without protocol or targetPort.
pub(crate) fn port(number: i32) -> PortBuilder {
    PortBuilder(ServicePort {
        port: number,
        ..ServicePort::default()
    })
}

#[derive(Clone, Debug)]
pub(crate) struct PortBuilder(ServicePort);

impl PortBuilder {
    #[must_use]
    pub(crate) fn name(mut self, name: &str) -> Self {
        self.0.name = Some(name.to_owned());
        self
    }

    #[must_use]
    pub(crate) fn protocol(mut self, protocol: &str) -> Self {
        self.0.protocol = Some(protocol.to_owned());
        self
    }

    /// A `targetPort` number.
    #[must_use]
    pub(crate) fn target(mut self, number: i32) -> Self {
        self.0.target_port = Some(IntOrString::Int(number));
        self
    }

    /// A `targetPort` name.
    #[must_use]
    pub(crate) fn target_name(mut self, name: &str) -> Self {
        self.0.target_port = Some(IntOrString::String(name.to_owned()));
        self
    }

    #[must_use]
    pub(crate) fn node_port(mut self, number: i32) -> Self {
        self.0.node_port = Some(number);
        self
    }
}

/// An `EndpointSlice` `default/name` of `service` (its label), of IPv4
/// addresses, without ports or endpoints.
pub(crate) fn slice(name: &str, service: &str) -> SliceBuilder {
    let mut metadata = metadata(name);
    set(&mut metadata.labels, LABEL_SERVICE_NAME, service);
    SliceBuilder(EndpointSlice {
        address_type: "IPv4".to_owned(),
        endpoints: Vec::new(),
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
    pub(crate) fn build(self) -> EndpointSlice {
        self.0
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
        self.0.endpoints.push(endpoint.0);
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

impl SlicePortBuilder {
    #[must_use]
    pub(crate) fn name(mut self, name: &str) -> Self {
        self.0.name = Some(name.to_owned());
        self
    }

    #[must_use]
    pub(crate) fn protocol(mut self, protocol: &str) -> Self {
        self.0.protocol = Some(protocol.to_owned());
        self
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
