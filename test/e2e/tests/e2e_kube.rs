//! End to end with the Kubernetes API source: the real agent (kube-rs client
//! and reflectors) against the project's list/watch API server, pods in
//! network namespaces, clients in a child cgroup.
//!
//! Needs root; run one at a time: `cargo xtask test` does both.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    ops::Deref,
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use lb_testbed::apiserver::ApiServer;
use lb_testbed::{
    agent::Agent,
    client::{self, Connector, tally},
    env::World,
    manifests::{self, Endpoint, annotate, ready, service, slice, terminating, typed},
    wait_for,
};
use serde_json::{Value, json};

const VIP: &str = "10.96.0.100";

/// The world, and the API server the agent watches (on a thread of this
/// process, in the node namespace: the agent reaches it on the node's
/// loopback).
struct Env {
    world: World,
    api: ApiServer,
    kubeconfig: PathBuf,
}

impl Deref for Env {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

impl Env {
    fn new(pods: usize) -> Self {
        let world = World::new(pods);
        let api = ApiServer::start().expect("start the API server");
        let kubeconfig = world.dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        let node: Node = typed(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "node-1", "labels": { "topology.kubernetes.io/zone": "zone-a" } },
        }));
        api.apply(&node);
        Self {
            world,
            api,
            kubeconfig,
        }
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        let kubeconfig = self.kubeconfig.display().to_string();
        let mut args = vec!["--kubeconfig", kubeconfig.as_str(), "--node-name", "node-1"];
        args.extend_from_slice(extra);
        self.world.agent(&args)
    }

    fn apply_service(&self, svc: Value) {
        self.api.apply(&typed::<Service>(svc));
    }

    fn apply_slice(&self, s: Value) {
        self.api.apply(&typed::<EndpointSlice>(s));
    }

    /// A service and its slice, in that order.
    fn apply(&self, [svc, slice]: [Value; 2]) {
        self.apply_service(svc);
        self.apply_slice(slice);
    }

    /// The `web` service (VIP:80 -> :8080, round-robin) and its slice.
    fn web(&self, endpoints: &[Endpoint]) {
        self.apply(manifests::web(VIP, "round-robin", endpoints));
    }
}

fn vip(port: u16) -> SocketAddr {
    format!("{VIP}:{port}").parse().expect("addr")
}

/// The pods that answer `n` requests.
fn answering(n: usize) -> BTreeSet<String> {
    tally(vip(80), n).into_keys().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(ToString::to_string).collect()
}

#[test]
fn a_new_service_answers_on_its_cluster_ip_within_1s_of_creation() {
    let env = Env::new(2);
    let _agent = env.agent(&[]);
    let ips = env.pod_ips();
    let created = Instant::now();
    env.web(&[ready(&ips[0]), ready(&ips[1])]);
    wait_for("the new service to answer", Duration::from_secs(1), || {
        client::tcp(vip(80)).is_ok()
    });
    eprintln!("answered {:?} after creation", created.elapsed());
    assert_eq!(answering(10), set(&["pod-1", "pod-2"]));
}

#[test]
fn scaling_endpoints_up_and_down_changes_the_backends() {
    let env = Env::new(3);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0])]);
    let _agent = env.agent(&[]);
    assert_eq!(answering(6), set(&["pod-1"]));
    env.web(&[ready(&ips[0]), ready(&ips[1]), ready(&ips[2])]);
    wait_for("scale up", Duration::from_secs(2), || {
        answering(6).len() == 3
    });
    env.web(&[ready(&ips[2])]);
    wait_for("scale down", Duration::from_secs(2), || {
        answering(6) == set(&["pod-3"])
    });
}

#[test]
fn terminating_endpoints_get_new_connections_only_when_none_is_ready() {
    let env = Env::new(3);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0]), terminating(&ips[1])]);
    let _agent = env.agent(&[]);
    assert_eq!(
        answering(10),
        set(&["pod-1"]),
        "a ready endpoint exists: terminating ones get nothing"
    );
    env.web(&[terminating(&ips[1]), terminating(&ips[2])]);
    wait_for(
        "the fallback to terminating endpoints",
        Duration::from_secs(2),
        || answering(10) == set(&["pod-2", "pod-3"]),
    );
}

#[test]
fn a_service_whose_endpoints_are_all_gone_refuses_connections() {
    let env = Env::new(2);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0]), ready(&ips[1])]);
    let agent = env.agent(&[]);
    assert!(client::tcp(vip(80)).is_ok());
    env.web(&[]);
    wait_for("refusal", Duration::from_secs(2), || {
        client::tcp(vip(80)).is_err()
    });
    let err = client::tcp(vip(80)).expect_err("refused");
    assert_eq!(err.kind(), agent.refusal(), "{err:?}");
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let env = Env::new(3);
    let ips = env.pod_ips();
    let mut svc = annotate(
        service("web", &[VIP], &[manifests::tcp("http", 80, 8080)]),
        "lb-agent.io/algorithm",
        "round-robin",
    );
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    env.apply_service(svc);
    env.apply_slice(slice(
        "web",
        "web-1",
        &[ready(&ips[0]), ready(&ips[1]).on("node-2"), ready(&ips[2])],
        &[("http", 8080, "TCP")],
    ));
    let _agent = env.agent(&[]);
    assert_eq!(answering(12), set(&["pod-1", "pod-3"]));
    // No local endpoint left: refuse rather than send traffic off-node.
    env.apply_slice(slice(
        "web",
        "web-1",
        &[ready(&ips[1]).on("node-2")],
        &[("http", 8080, "TCP")],
    ));
    wait_for(
        "refusal without local endpoints",
        Duration::from_secs(2),
        || client::tcp(vip(80)).is_err(),
    );
}

#[test]
fn zone_hints_pick_this_zones_endpoints_only_when_every_endpoint_has_one() {
    let env = Env::new(3);
    let ips = env.pod_ips();
    env.web(&[
        ready(&ips[0]).hinted("zone-a"),
        ready(&ips[1]).hinted("zone-b"),
        ready(&ips[2]).hinted("zone-a"),
    ]);
    let _agent = env.agent(&[]);
    assert_eq!(
        answering(12),
        set(&["pod-1", "pod-3"]),
        "node-1 is in zone-a"
    );
    // One endpoint without a hint: kube-proxy ignores hints altogether.
    env.web(&[
        ready(&ips[0]).hinted("zone-a"),
        ready(&ips[1]),
        ready(&ips[2]).hinted("zone-a"),
    ]);
    wait_for("hints ignored", Duration::from_secs(2), || {
        answering(12).len() == 3
    });
}

#[test]
fn client_ip_affinity_holds_across_changes_and_expires() {
    let env = Env::new(3);
    let ips = env.pod_ips();
    let with_affinity = |timeout: u32| {
        let mut svc = annotate(
            service("web", &[VIP], &[manifests::tcp("http", 80, 8080)]),
            "lb-agent.io/algorithm",
            "round-robin",
        );
        svc["spec"]["sessionAffinity"] = json!("ClientIP");
        svc["spec"]["sessionAffinityConfig"] = json!({ "clientIP": { "timeoutSeconds": timeout } });
        svc
    };
    env.apply_service(with_affinity(2));
    env.apply_slice(slice(
        "web",
        "web-1",
        &[ready(&ips[0]), ready(&ips[1])],
        &[("http", 8080, "TCP")],
    ));
    let agent = env.agent(&[]);
    if !agent.has_feature("netns_cookie") {
        lb_testbed::skip(
            "client_ip_affinity_holds_across_changes_and_expires",
            "no bpf_get_netns_cookie for sock_addr programs (Linux 5.7+)",
        );
        return;
    }
    let first = client::tcp(vip(80)).expect("connect").body;
    assert_eq!(
        answering(10),
        set(&[&first]),
        "round-robin would rotate; affinity keeps {first}"
    );

    // A new endpoint does not move the client.
    env.apply_slice(slice(
        "web",
        "web-1",
        &[ready(&ips[0]), ready(&ips[1]), ready(&ips[2])],
        &[("http", 8080, "TCP")],
    ));
    wait_for("the third backend", Duration::from_secs(2), || {
        agent.list()["services"][0]["backends"]
            .as_array()
            .map(Vec::len)
            == Some(3)
    });
    assert_eq!(
        answering(10),
        set(&[&first]),
        "still sticky after the backend set changed"
    );

    // Idle past the timeout: the next connection is chosen afresh.
    std::thread::sleep(Duration::from_millis(2500));
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        seen.insert(client::tcp(vip(80)).expect("connect").body);
        std::thread::sleep(Duration::from_millis(2500));
    }
    assert!(
        seen.iter().any(|p| *p != first),
        "after expiry round-robin moves on, got only {seen:?}"
    );

    // The sticky backend removed: the client moves at once.
    let now = client::tcp(vip(80)).expect("connect").body;
    let keep: Vec<Endpoint> = env
        .cluster
        .pods
        .iter()
        .filter(|p| p.name != now)
        .map(|p| ready(p.ip4))
        .collect();
    env.apply_slice(slice("web", "web-1", &keep, &[("http", 8080, "TCP")]));
    wait_for(
        "the client to leave the removed backend",
        Duration::from_secs(2),
        || client::tcp(vip(80)).is_ok_and(|r| r.body != now),
    );
}

#[test]
fn api_server_down_for_10s_keeps_connects_working_and_the_agent_catches_up() {
    let env = Env::new(3);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0]), ready(&ips[1])]);
    let agent = env.agent(&[]);
    assert_eq!(answering(6).len(), 2);

    env.api.stop();
    // A change made while the agent cannot see it.
    env.web(&[ready(&ips[2])]);
    let stale = |a: &Agent| {
        a.metrics()
            .contains("lb_source_stale{source=\"kubernetes\"} 1")
    };
    wait_for(
        "the source to be reported stale",
        Duration::from_secs(10),
        || stale(&agent),
    );
    let down_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < down_until {
        assert_eq!(
            answering(4),
            set(&["pod-1", "pod-2"]),
            "the programmed state must stay while the API is down"
        );
        assert!(
            client::http_get(agent.metrics, "/readyz").is_ok_and(|(s, _)| s == 200),
            "ready while stale"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    env.api.restart().expect("restart the API server");
    wait_for("the agent to catch up", Duration::from_secs(30), || {
        answering(4) == set(&["pod-3"])
    });
    wait_for("staleness to clear", Duration::from_secs(10), || {
        !stale(&agent)
    });
}

/// The watchers resume as soon as the agent's probe sees the API server
/// again, not when their back-off ends.
///
/// Not a bound on this machine's speed. kube-rs's default back-off starts
/// at 800 ms and doubles, and its jitter only adds (up to 2x each wait): a
/// watcher's fifth try comes 12 to 24 s after its first failure and its
/// sixth 24.8 s or later. So with the server back 21 s after it stopped, a
/// watcher left to its back-off retries within the 3 s that follow only if
/// its jitter put the fifth try there (a few percent, and the services and
/// the slices watchers must both have been so lucky); the resume makes it
/// within the probe's interval. A slow machine makes the back-off no
/// shorter, only the catch-up slower.
#[test]
fn watchers_resume_as_soon_as_the_api_server_answers_again() {
    let env = Env::new(2);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0])]);
    let agent = env.agent(&[]);
    assert_eq!(answering(2), set(&["pod-1"]));

    env.api.stop();
    env.web(&[ready(&ips[1])]);
    std::thread::sleep(Duration::from_secs(21));
    env.api.restart().expect("restart the API server");
    let restarted = Instant::now();
    wait_for(
        "the change made during the outage to be programmed",
        Duration::from_secs(3),
        || answering(2) == set(&["pod-2"]),
    );
    eprintln!("caught up {:?} after the restart", restarted.elapsed());
    assert!(
        !agent
            .metrics()
            .contains("lb_source_stale{source=\"kubernetes\"} 1"),
        "no longer stale"
    );
}

#[test]
fn a_relist_after_410_removes_what_was_deleted() {
    let env = Env::new(2);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0])]);
    env.apply(manifests::http("gone", "10.96.0.101", &[ready(&ips[1])]));
    let agent = env.agent(&[]);
    let gone: SocketAddr = "10.96.0.101:80".parse().expect("addr");
    assert!(client::tcp(gone).is_ok());

    let _ = env.api.take_requests();
    env.api.stop();
    env.api.delete::<Service>("default", "gone");
    env.api.delete::<EndpointSlice>("default", "gone-1");
    env.api.compact();
    env.api.restart().expect("restart");
    wait_for(
        "the deleted service to disappear",
        Duration::from_secs(30),
        || agent.list()["services"].as_array().map(Vec::len) == Some(1),
    );
    let err = client::tcp(gone).expect_err("no longer translated");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err:?}");
    let requests = env.api.take_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.is(lb_testbed::apiserver::Verb::List, "services")),
        "the watcher had to relist services: {}",
        requests
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(client::tcp(vip(80)).is_ok());
}

#[test]
fn agent_restarted_while_objects_change_converges_without_failed_connects() {
    let env = Env::new(3);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0]), ready(&ips[1])]);
    let mut agent = env.agent(&[]);
    assert_eq!(answering(6).len(), 2);

    let connector = Connector::start(&env.cluster.node.path(), vip(80));
    agent.kill();
    env.web(&[ready(&ips[1]), ready(&ips[2])]);
    env.apply(manifests::http("new", "10.96.0.102", &[ready(&ips[0])]));
    agent.restart();
    agent.wait_ready();
    wait_for("convergence", Duration::from_secs(5), || {
        let list = agent.list();
        let services = list["services"].as_array().cloned().unwrap_or_default();
        services.len() == 2
            && services.iter().any(|s| {
                s["frontend"] == "10.96.0.100:80"
                    && s["backends"]
                        == json!([format!("{}:8080", ips[1]), format!("{}:8080", ips[2])])
            })
    });
    let (ok, failed) = connector.stop();
    assert_eq!(failed, 0, "connects failed ({ok} ok)");
    assert!(client::tcp("10.96.0.102:80".parse().expect("addr")).is_ok());
}

#[test]
fn services_of_another_proxy_and_headless_ones_are_not_served() {
    let env = Env::new(1);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0])]);
    let [mut other, mut other_slice] = manifests::http("other", "10.96.0.101", &[ready(&ips[0])]);
    other["metadata"]["labels"] =
        json!({ "service.kubernetes.io/service-proxy-name": "other-proxy" });
    other_slice["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] =
        json!("other-proxy");
    env.apply([other, other_slice]);

    let agent = env.agent(&[]);
    let services: Vec<Value> = agent.list()["services"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        services.len(),
        1,
        "only the service without a proxy name: {services:?}"
    );
    drop(agent);

    let agent = env.agent(&["--service-proxy-name", "other-proxy"]);
    let services: Vec<Value> = agent.list()["services"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        services.len(),
        1,
        "only other-proxy's service: {services:?}"
    );
    assert_eq!(services[0]["frontend"], "10.96.0.101:80");
}

#[test]
fn unusable_objects_are_skipped_with_a_warning_and_the_rest_still_works() {
    let env = Env::new(1);
    let ips = env.pod_ips();
    env.web(&[ready(&ips[0])]);
    let mut bad = service("bad", &["10.96.0.101"], &[manifests::tcp("http", 80, 8080)]);
    bad["spec"]["ports"][0]["protocol"] = json!("QUIC");
    env.apply_service(bad);
    let agent = env.agent(&[]);
    assert!(client::tcp(vip(80)).is_ok());
    wait_for("the warning", Duration::from_secs(2), || {
        let log = agent.log();
        log.contains("Service default/bad") && log.contains("QUIC")
    });
}

#[test]
fn node_ports_answer_on_the_node_objects_primary_address_and_follow_it() {
    let env = Env::new(2);
    let with_address = |address: &str| -> Node {
        typed(manifests::node(
            "node-1",
            &[("topology.kubernetes.io/zone", "zone-a")],
            &[("InternalIP", address)],
        ))
    };
    env.api.apply(&with_address("10.200.0.1"));
    let ips = env.pod_ips();
    let [svc, slice] = manifests::web(VIP, "round-robin", &[ready(&ips[0]), ready(&ips[1])]);
    env.apply_service(manifests::external_ips(
        manifests::expose(svc, "NodePort", &[30_080]),
        &["192.0.2.10"],
    ));
    env.apply_slice(slice);
    // `--nodeport-addresses primary` (the default): the Node's address.
    let agent = env.agent(&[]);
    assert_eq!(agent.frontends("NodePort"), ["10.200.0.1:30080/TCP"]);
    let node_port: SocketAddr = "10.200.0.1:30080".parse().expect("addr");
    let counts = tally(node_port, 4);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [2, 2],
        "{counts:?}"
    );
    let reply = client::tcp("192.0.2.10:80".parse().expect("addr")).expect("external IP");
    assert_eq!(reply.peer.to_string(), "192.0.2.10:80");

    // The Node's address changes (the bridge has a second one): the node
    // port moves to it.
    env.cluster
        .node
        .ip(&["addr", "add", "10.200.0.2/24", "dev", "br0"]);
    env.api.apply(&with_address("10.200.0.2"));
    wait_for("the node port to move", Duration::from_secs(5), || {
        agent.frontends("NodePort") == ["10.200.0.2:30080/TCP"]
    });
    let moved: SocketAddr = "10.200.0.2:30080".parse().expect("addr");
    assert_eq!(client::tcp(moved).expect("moved node port").peer, moved);
}
