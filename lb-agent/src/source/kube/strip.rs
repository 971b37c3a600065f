//! Watched Services and Nodes stripped to what translation reads, before
//! the reflectors store them: managed fields, other controllers'
//! annotations, status conditions and the rest of a Node are most of an
//! object's size and none of the translation's input. (`EndpointSlices`
//! are stored as [`translate::Slice`]s.)

use k8s_openapi::{
    api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, Node, NodeSpec, NodeStatus, Service,
        ServiceStatus, Taint,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{health, translate};

/// Name, namespace, the labels in `labels` (a label map costs half a
/// kilobyte even with one entry), the annotations translation reads, and
/// the resource version.
fn metadata(meta: &mut ObjectMeta, labels: &[&str]) {
    let mut annotations = meta.annotations.take();
    if let Some(a) = &mut annotations {
        a.retain(|key, _| key == translate::ANNOTATION_ALGORITHM);
    }
    let mut kept = meta.labels.take();
    if let Some(l) = &mut kept {
        l.retain(|key, _| labels.contains(&key.as_str()));
    }
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: kept.filter(|l| !l.is_empty()),
        annotations: annotations.filter(|a| !a.is_empty()),
        resource_version: meta.resource_version.take(),
        ..ObjectMeta::default()
    };
}

/// The labels selection reads; the spec but its `selector` (the
/// EndpointSlice controller's business) and `externalName` (not proxied);
/// of the status, the load balancer's ingress IPs and their `ipMode` (a
/// hostname is for DNS, not for us).
pub(super) fn service(service: &mut Service) {
    metadata(
        &mut service.metadata,
        &[
            translate::LABEL_HEADLESS,
            translate::LABEL_SERVICE_PROXY_NAME,
        ],
    );
    if let Some(spec) = &mut service.spec {
        spec.selector = None;
        spec.external_name = None;
    }
    let ingress = service
        .status
        .take()
        .and_then(|s| s.load_balancer?.ingress)
        .map(|ingress| {
            ingress
                .into_iter()
                .map(|i| LoadBalancerIngress {
                    ip: i.ip,
                    ip_mode: i.ip_mode,
                    ..LoadBalancerIngress::default()
                })
                .collect()
        });
    service.status = ingress.map(|ingress| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(ingress),
        }),
        ..ServiceStatus::default()
    });
}

/// Name, labels (the zone), the addresses (node ports answer there), and
/// what says the node is going away: its deletion timestamp and the
/// cluster autoscaler's taint (`/healthz` reports them).
pub(super) fn node(node: &mut Node) {
    let deletion_timestamp = node.metadata.deletion_timestamp.take();
    metadata(&mut node.metadata, &[translate::LABEL_ZONE]);
    node.metadata.deletion_timestamp = deletion_timestamp;
    let taints: Vec<Taint> = (node
        .spec
        .take()
        .and_then(|s| s.taints)
        .into_iter()
        .flatten())
    .filter(|t| t.key == health::TO_BE_DELETED_TAINT)
    .collect();
    node.spec = (!taints.is_empty()).then(|| NodeSpec {
        taints: Some(taints),
        ..NodeSpec::default()
    });
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        ..NodeStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use crate::{
        health, node_addresses,
        translate::{self, NodeContext, Options, Slice},
    };

    fn typed<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
        serde_json::from_value(value).expect("a valid object")
    }

    fn full_service() -> Service {
        typed(json!({
            "metadata": {
                "name": "web", "namespace": "default", "resourceVersion": "7",
                "labels": { "app": "web", "service.kubernetes.io/service-proxy-name": "lb-agent" },
                "annotations": {
                    "lb-agent.io/algorithm": "round-robin",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
                },
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
                "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
            },
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "selector": { "app": "web" },
                "externalIPs": ["192.0.2.7"],
                "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080 }],
            },
            "status": {
                "loadBalancer": { "ingress": [
                    { "ip": "198.51.100.1", "ipMode": "VIP", "ports": [{ "port": 80, "protocol": "TCP" }] },
                    { "ip": "198.51.100.2", "ipMode": "Proxy" },
                    { "hostname": "lb.example.com" },
                ]},
                "conditions": [{ "type": "Ready", "status": "True", "reason": "x", "message": "y", "lastTransitionTime": "2026-01-01T00:00:00Z" }],
            },
        }))
    }

    fn full_slice() -> EndpointSlice {
        typed(json!({
            "metadata": {
                "name": "web-1", "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "x",
                    "service.kubernetes.io/service-proxy-name": "lb-agent",
                },
                "annotations": { "endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z" },
                "managedFields": [{ "manager": "kube-controller-manager", "operation": "Update" }],
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u" }],
            },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": [
                { "addresses": ["10.200.0.1"], "conditions": { "ready": true }, "nodeName": "node-1", "zone": "a" },
                { "addresses": ["10.200.0.2"], "conditions": { "ready": false, "serving": true, "terminating": true } },
            ],
        }))
    }

    fn full_node() -> Node {
        typed(json!({
            "metadata": {
                "name": "node-1",
                "labels": { "topology.kubernetes.io/zone": "a" },
                "annotations": { "node.alpha.kubernetes.io/ttl": "0" },
                "managedFields": [{ "manager": "kubelet", "operation": "Update" }],
            },
            "spec": {
                "podCIDR": "10.244.0.0/24", "providerID": "p",
                "taints": [{ "key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule" }],
            },
            "status": {
                "addresses": [
                    { "type": "InternalIP", "address": "192.0.2.1" },
                    { "type": "Hostname", "address": "node-1" },
                ],
                "images": [{ "names": ["registry/image:tag"], "sizeBytes": 1 }],
                "conditions": [{ "type": "Ready", "status": "True" }],
            },
        }))
    }

    /// Translation reads the same from a stripped object as from the whole
    /// one (addresses, algorithm, node ports, ingress IPs and their modes,
    /// the zone), and what is dropped is gone.
    #[test]
    fn stripped_objects_translate_as_the_whole_ones() {
        let (service, slice, node) = (full_service(), full_slice(), full_node());
        let (mut s, mut n) = (service.clone(), node.clone());
        super::service(&mut s);
        super::node(&mut n);
        let compact = Slice::from(slice.clone());

        let translate = |service: &Service, node: &Node| {
            let ctx = NodeContext::of(Some("node-1".to_owned()), Some(node));
            let opts = Options {
                service_proxy_name: Some("lb-agent".to_owned()),
                ..Options::default()
            };
            let t = translate::translate([service], [&compact], &ctx, &opts);
            (
                t.state,
                t.problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
        };
        let whole = translate(&service, &node);
        assert!(!whole.0.is_empty(), "the example translates to something");
        assert_eq!(translate(&s, &n), whole);
        assert_eq!(
            node_addresses::primary_ips(&n),
            node_addresses::primary_ips(&node)
        );

        assert!(s.metadata.managed_fields.is_none() && compact.metadata.managed_fields.is_none());
        let labels = s.metadata.labels.as_ref().expect("the proxy name");
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            [translate::LABEL_SERVICE_PROXY_NAME]
        );
        assert!(s.spec.as_ref().is_some_and(|spec| spec.selector.is_none()));
        let annotations = s.metadata.annotations.as_ref().expect("the algorithm");
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [translate::ANNOTATION_ALGORITHM]
        );
        assert!(
            compact.metadata.annotations.is_none() && compact.metadata.owner_references.is_none()
        );
        assert_eq!(compact.service.as_deref(), Some("web"));
        let status = s.status.as_ref().expect("status");
        assert!(status.conditions.is_none());
        let ingress = status
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.ingress.as_ref());
        assert_eq!(ingress.map(Vec::len), Some(3));
        assert!(
            ingress
                .into_iter()
                .flatten()
                .all(|i| i.hostname.is_none() && i.ports.is_none())
        );
        assert!(n.spec.is_none() && n.metadata.annotations.is_none());
        let status = n.status.as_ref().expect("status");
        assert!(status.images.is_none() && status.conditions.is_none());
    }

    /// A Node being deleted, or tainted for deletion, is still seen as
    /// such once stripped.
    #[test]
    fn what_says_a_node_is_going_away_is_kept() {
        let mut deleted = full_node();
        deleted.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let mut tainted = full_node();
        let taint = typed(json!({ "key": health::TO_BE_DELETED_TAINT, "effect": "NoSchedule" }));
        tainted
            .spec
            .get_or_insert_default()
            .taints
            .get_or_insert_default()
            .push(taint);
        for whole in [full_node(), deleted, tainted] {
            let mut stripped = whole.clone();
            super::node(&mut stripped);
            assert_eq!(
                health::node_eligible(&stripped),
                health::node_eligible(&whole),
                "{whole:?}"
            );
        }
        let mut n = full_node();
        super::node(&mut n);
        assert!(health::node_eligible(&n), "an untainted node is eligible");
    }
}
