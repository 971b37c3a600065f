//! Kubernetes objects for the agent's services file, built as JSON values
//! (a `v1 List`, as `kubectl get ... -o json` prints).

use std::path::Path;

use k8s_openapi::api::{core::v1, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::apiserver::ApiServer;

/// A service port: name, port, targetPort (number or name), protocol.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: &'static str,
    pub port: u16,
    pub target: Value,
    pub protocol: &'static str,
}

pub fn tcp(name: &'static str, port: u16, target: u16) -> Port {
    Port {
        name,
        port,
        target: json!(target),
        protocol: "TCP",
    }
}

pub fn udp(name: &'static str, port: u16, target: u16) -> Port {
    Port {
        name,
        port,
        target: json!(target),
        protocol: "UDP",
    }
}

pub fn sctp(name: &'static str, port: u16, target: u16) -> Port {
    Port {
        name,
        port,
        target: json!(target),
        protocol: "SCTP",
    }
}

/// A ClusterIP service in `default`.
pub fn service(name: &str, cluster_ips: &[&str], ports: &[Port]) -> Value {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default", "annotations": {} },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "ipFamilies": families,
            "ports": ports.iter().map(|p| json!({
                "name": p.name, "port": p.port, "targetPort": p.target, "protocol": p.protocol,
            })).collect::<Vec<_>>(),
        }
    })
}

/// Sets an annotation on a service built by [`service`].
pub fn annotate(mut svc: Value, key: &str, value: &str) -> Value {
    svc["metadata"]["annotations"][key] = json!(value);
    svc
}

/// An endpoint: address, conditions, node and zone hints.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: String,
    pub hint_zones: Vec<String>,
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "tests pass owned addresses and references alike"
)]
pub fn ready(ip: impl ToString) -> Endpoint {
    Endpoint {
        ip: ip.to_string(),
        ready: true,
        serving: true,
        terminating: false,
        node: "node-1".to_owned(),
        hint_zones: Vec::new(),
    }
}

pub fn terminating(ip: impl ToString) -> Endpoint {
    Endpoint {
        ready: false,
        terminating: true,
        ..ready(ip)
    }
}

impl Endpoint {
    /// On node `node` (default `node-1`).
    #[must_use]
    pub fn on(mut self, node: &str) -> Self {
        node.clone_into(&mut self.node);
        self
    }

    /// With a `hints.forZones` entry for `zone`.
    #[must_use]
    pub fn hinted(mut self, zone: &str) -> Self {
        self.hint_zones.push(zone.to_owned());
        self
    }
}

/// A JSON object as a typed Kubernetes object.
pub fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// Stores `items` (Services, EndpointSlices, Nodes as built here) in the
/// test API server, in order.
pub fn apply(api: &ApiServer, items: &[Value]) {
    for item in items {
        match item["kind"].as_str() {
            Some("Service") => {
                api.apply(&typed::<v1::Service>(item.clone()));
            }
            Some("EndpointSlice") => {
                api.apply(&typed::<EndpointSlice>(item.clone()));
            }
            Some("Node") => {
                api.apply(&typed::<v1::Node>(item.clone()));
            }
            other => panic!("the test API server is not given {other:?} objects here"),
        }
    }
}

/// An EndpointSlice for `service` with `ports` = (name, port, protocol).
pub fn slice(
    service: &str,
    name: &str,
    endpoints: &[Endpoint],
    ports: &[(&str, u16, &str)],
) -> Value {
    let family = if endpoints.first().is_some_and(|e| e.ip.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": family,
        "endpoints": endpoints.iter().map(|e| {
            let mut ep = json!({
                "addresses": [e.ip],
                "conditions": { "ready": e.ready, "serving": e.serving, "terminating": e.terminating },
                "nodeName": e.node,
            });
            if !e.hint_zones.is_empty() {
                ep["hints"] = json!({ "forZones": e.hint_zones.iter().map(|z| json!({ "name": z })).collect::<Vec<_>>() });
            }
            ep
        }).collect::<Vec<_>>(),
        "ports": ports.iter().map(|(n, p, proto)| json!({ "name": n, "port": p, "protocol": proto })).collect::<Vec<_>>(),
    })
}

/// Writes `items` as a `v1 List` to `path` atomically (write + rename, as
/// editors and config management do).
pub fn write(path: &Path, items: &[Value]) {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
    write_raw(path, serde_json::to_string_pretty(&list).expect("json"));
}

/// Writes `contents` to `path` atomically (write and rename, as editors do).
pub fn write_raw(path: &Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write services file");
    std::fs::rename(&tmp, path).expect("rename services file");
}

/// Service `name`: `cluster_ip`:80 -> :8080 (port `http`, TCP), and its
/// slice `<name>-1` with these endpoints.
pub fn http(name: &str, cluster_ip: &str, endpoints: &[Endpoint]) -> [Value; 2] {
    [
        service(name, &[cluster_ip], &[tcp("http", 80, 8080)]),
        slice(
            name,
            &format!("{name}-1"),
            endpoints,
            &[("http", 8080, "TCP")],
        ),
    ]
}

/// Filler Service `filler-I` for the benchmarks: [`http`] on a ClusterIP of
/// its own (unique for a million Services) with ten ready endpoints that
/// nothing answers on (10.200.0.0/16); `shift` moves them along, so that a
/// state built with another `shift` changes every filler.
pub fn filler(i: usize, shift: usize) -> [Value; 2] {
    let ip = format!("10.{}.{}.{}", 96 + i / 62_500, (i / 250) % 250, i % 250 + 1);
    let endpoints: Vec<_> = (0..10)
        .map(|j| {
            let k = i * 10 + j + shift;
            ready(format!("10.200.{}.{}", 1 + k / 250 % 250, k % 250 + 1))
        })
        .collect();
    http(&format!("filler-{i}"), &ip, &endpoints)
}

/// The demo Service `web`: [`http`] with this algorithm.
pub fn web(vip: &str, algorithm: &str, endpoints: &[Endpoint]) -> [Value; 2] {
    let [svc, slice] = http("web", vip, endpoints);
    [annotate(svc, "lb-agent.io/algorithm", algorithm), slice]
}

/// Makes a service built by [`service`] a `LoadBalancer` (or `NodePort`,
/// per `type_`) with these node ports, one per port in order.
pub fn expose(mut svc: Value, type_: &str, node_ports: &[u16]) -> Value {
    svc["spec"]["type"] = json!(type_);
    for (i, node_port) in node_ports.iter().enumerate() {
        svc["spec"]["ports"][i]["nodePort"] = json!(node_port);
    }
    svc
}

/// Sets `spec.externalIPs`.
pub fn external_ips(mut svc: Value, ips: &[&str]) -> Value {
    svc["spec"]["externalIPs"] = json!(ips);
    svc
}

/// Sets `status.loadBalancer.ingress`: (ip, ipMode) pairs.
pub fn ingress(mut svc: Value, points: &[(&str, Option<&str>)]) -> Value {
    svc["status"]["loadBalancer"]["ingress"] = points
        .iter()
        .map(|(ip, mode)| match mode {
            Some(mode) => json!({ "ip": ip, "ipMode": mode }),
            None => json!({ "ip": ip }),
        })
        .collect();
    svc
}

/// A `v1 Node` with these labels and `status.addresses` ((type, address)).
pub fn node(name: &str, labels: &[(&str, &str)], addresses: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": labels },
        "status": {
            "addresses": addresses.iter().map(|(t, a)| json!({ "type": t, "address": a })).collect::<Vec<_>>(),
        }
    })
}
