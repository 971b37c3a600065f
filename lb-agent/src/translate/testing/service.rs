//! Builders of Services and their ports.

use k8s_openapi::{
    api::core::v1::{
        ClientIPConfig, LoadBalancerIngress, Service, ServicePort, ServiceSpec,
        SessionAffinityConfig,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{Metadata, PortFields, metadata, strings};

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

    #[must_use]
    pub(crate) fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.to_owned());
        self
    }

    /// `spec.healthCheckNodePort`.
    #[must_use]
    pub(crate) fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    #[must_use]
    pub(crate) fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(strings(ips));
        self
    }

    #[must_use]
    pub(crate) fn source_ranges(mut self, cidrs: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(strings(cidrs));
        self
    }

    /// Adds a load-balancer ingress point to `status.loadBalancer.ingress`,
    /// with an `ipMode` when given.
    #[must_use]
    pub(crate) fn ingress(mut self, ip: &str, ip_mode: Option<&str>) -> Self {
        self.0
            .status
            .get_or_insert_default()
            .load_balancer
            .get_or_insert_default()
            .ingress
            .get_or_insert_default()
            .push(LoadBalancerIngress {
                ip: Some(ip.to_owned()),
                ip_mode: ip_mode.map(str::to_owned),
                ..LoadBalancerIngress::default()
            });
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

impl PortFields for PortBuilder {
    fn name_and_protocol(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.0.name, &mut self.0.protocol)
    }
}

impl PortBuilder {
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
