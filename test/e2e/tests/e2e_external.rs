//! End to end: traffic from outside the cluster, on the two-node world of
//! `lb_testbed::two_nodes` (two node namespaces with their own agents and
//! pods, an underlay, an external client; the test thread is the client).
//! Node ports on each node to a local and a remote backend, with
//! `externalTrafficPolicy` Cluster (masqueraded) and Local (the client's
//! address kept, no local endpoint: dropped), external and load-balancer
//! IPs, UDP, refusal without endpoints, exact round-robin, IPv6, and the
//! routed pod network the packet path is compared with.
//!
//! The tests marked `needs the tc data path` state what the agent's tc
//! programs (issue 12) must do; without them nothing on a node answers a
//! packet for a node port.
//!
//! Needs root; run one at a time: `cargo xtask test` does both.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    ops::Deref,
    time::{Duration, Instant},
};

use lb_testbed::{
    agent::Agent,
    client::{self, tcp_echo, udp_echo},
    cluster::{Echo, POD_ECHO_PORT, POD_HOLD_PORT},
    manifests::{Endpoint, annotate, expose, external_ips, ingress, service, slice, tcp, udp},
    two_nodes::{ClusterNode, TwoNodes},
};
use serde_json::Value;

const NODE_PORT: u16 = 30_080;
const NODE_PORT_UDP: u16 = 30_090;
/// `spec.healthCheckNodePort` of the `externalTrafficPolicy: Local` tests.
const HEALTH_CHECK_PORT: u16 = 32_000;
/// An external IP and a load-balancer IP, in the ranges the client routes
/// to node-a (`two_nodes::VIPS4`, `VIPS6`).
const EXTERNAL_IP: &str = "10.97.0.10";
const EXTERNAL_IP6: &str = "fd00:97::10";
const LB_IP: &str = "10.97.0.20";
/// How long a dropped connection attempt is given.
const DROPPED: Duration = Duration::from_millis(500);

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// `web`: dual-stack, round-robin, `externalTrafficPolicy: policy`, type
/// `type_`: `echo` 80 -> the pods' echo port over TCP on node port 30080
/// and over UDP on 30090, with a slice per family of `endpoints` (IPv4,
/// IPv6).
fn web(type_: &str, policy: &str, endpoints: &(Vec<Endpoint>, Vec<Endpoint>)) -> Vec<Value> {
    let svc = service(
        "web",
        &["10.96.0.100", "fd00:96::100"],
        &[
            tcp("echo", 80, POD_ECHO_PORT),
            udp("echo-udp", 80, POD_ECHO_PORT),
        ],
    );
    let mut svc = expose(
        annotate(svc, "lb-agent.io/algorithm", "round-robin"),
        type_,
        &[NODE_PORT, NODE_PORT_UDP],
    );
    svc["spec"]["externalTrafficPolicy"] = policy.into();
    let ports = [
        ("echo", POD_ECHO_PORT, "TCP"),
        ("echo-udp", POD_ECHO_PORT, "UDP"),
    ];
    vec![
        svc,
        slice("web", "web-v4", &endpoints.0, &ports),
        slice("web", "web-v6", &endpoints.1, &ports),
    ]
}

/// The world with both agents running; they stop first.
struct Running {
    /// node-a's, node-b's.
    agents: [Agent; 2],
    world: TwoNodes,
}

impl Deref for Running {
    type Target = TwoNodes;

    fn deref(&self) -> &TwoNodes {
        &self.world
    }
}

/// `pods` pods on each node, the objects `items` builds stored, then both
/// agents started.
fn running(pods: usize, items: impl FnOnce(&TwoNodes) -> Vec<Value>) -> Running {
    let world = TwoNodes::new(pods);
    world.apply(&items(&world));
    Running {
        agents: world.agents(&[]),
        world,
    }
}

/// [`web`] as a `NodePort` with `externalTrafficPolicy: Cluster` over
/// `pod-a1` and `pod-b1`.
fn cluster_policy(world: &TwoNodes) -> Vec<Value> {
    web(
        "NodePort",
        "Cluster",
        &endpoints(world, &["pod-a1", "pod-b1"]),
    )
}

/// The endpoints of these pods (by name), on whichever node they are.
fn endpoints(world: &TwoNodes, pods: &[&str]) -> (Vec<Endpoint>, Vec<Endpoint>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for node in world.nodes() {
        let (node4, node6) = node.endpoints();
        for (e4, e6) in node4.into_iter().zip(node6) {
            let pod = node
                .cluster
                .pods
                .iter()
                .find(|p| p.ip4.to_string() == e4.ip);
            if pod.is_some_and(|p| pods.contains(&p.name.as_str())) {
                v4.push(e4);
                v6.push(e6);
            }
        }
    }
    assert_eq!(v4.len(), pods.len(), "pods {pods:?} exist");
    (v4, v6)
}

/// `n` TCP requests to `dialled`: the answers, per pod.
fn answers(dialled: SocketAddr, n: usize) -> BTreeMap<String, Vec<Echo>> {
    let mut out: BTreeMap<String, Vec<Echo>> = BTreeMap::new();
    for i in 0..n {
        let echo = tcp_echo(dialled).unwrap_or_else(|e| panic!("request {i} to {dialled}: {e}"));
        out.entry(echo.pod.clone()).or_default().push(echo);
    }
    out
}

fn sources(echoes: &[Echo]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = echoes.iter().map(|e| e.source.ip()).collect();
    ips.sort();
    ips.dedup();
    ips
}

#[track_caller]
fn assert_dropped(dialled: SocketAddr) {
    let started = Instant::now();
    let error = client::tcp_within(dialled, DROPPED).expect_err("dropped");
    assert_eq!(
        error.kind(),
        ErrorKind::TimedOut,
        "{dialled}: dropped, not refused or unreachable ({error}, after {:?})",
        started.elapsed()
    );
}

/// The routed pod network without any translation: the client reaches
/// every pod by its address through the pod's node, and the pod sees the
/// client's own address. The baseline the packet path is measured against.
#[test]
fn the_client_reaches_pods_on_both_nodes_through_their_node() {
    let world = TwoNodes::new(2);
    for node in world.nodes() {
        for pod in &node.cluster.pods {
            let echo = tcp_echo(pod.addr4(POD_ECHO_PORT))
                .unwrap_or_else(|e| panic!("{} from the client: {e}", pod.name));
            assert_eq!(echo.pod, pod.name);
            assert_eq!(echo.source.ip(), IpAddr::V4(world.client4));
            let echo = tcp_echo(pod.addr6(POD_ECHO_PORT)).expect("IPv6");
            assert_eq!(
                (echo.pod.as_str(), echo.source.ip()),
                (pod.name.as_str(), IpAddr::V6(world.client6))
            );
            let echo = udp_echo(pod.addr4(POD_ECHO_PORT)).expect("UDP");
            assert_eq!(
                (echo.pod.as_str(), echo.source.ip()),
                (pod.name.as_str(), IpAddr::V4(world.client4))
            );
        }
    }
    // Pods reach the other node's pods by the routes between the nodes.
    let (from, to) = (world.a.pod("pod-a1"), world.b.pod("pod-b2"));
    let target = to.addr4(POD_ECHO_PORT);
    let echo = lb_testbed::net::spawn_in(&from.netns.path(), move || tcp_echo(target))
        .join()
        .expect("client thread")
        .expect("pod to pod across nodes");
    assert_eq!(
        (echo.pod.as_str(), echo.source.ip()),
        ("pod-b2", IpAddr::V4(from.ip4))
    );
    // The test ranges go nowhere without a translation.
    assert!(client::tcp_within(addr(EXTERNAL_IP, 80), DROPPED).is_err());
}

/// Both agents watch the one API server and serve node ports on their own
/// underlay addresses.
#[test]
fn each_agent_serves_node_ports_on_its_own_underlay_addresses() {
    let world = running(1, cluster_policy);
    for (node, agent) in world.nodes().into_iter().zip(&world.agents) {
        let mut expected = [
            format!("{}/TCP", node.addr4(NODE_PORT)),
            format!("{}/UDP", node.addr4(NODE_PORT_UDP)),
            format!("{}/TCP", node.addr6(NODE_PORT)),
            format!("{}/UDP", node.addr6(NODE_PORT_UDP)),
        ];
        expected.sort();
        assert_eq!(agent.frontends("NodePort"), expected, "{}", node.name);
    }
}

/// `externalTrafficPolicy: Cluster` through either node: both backends
/// answer; the one on the other node sees the address of the node the
/// client dialled (masquerading), so its reply goes back through it; the
/// one on the dialled node sees the client (see the README: kube-proxy
/// masquerades there too, for no gain).
#[test]
fn node_ports_reach_local_and_remote_backends_masqueraded() {
    let world = running(1, cluster_policy);
    let cases: [(&ClusterNode, &str, &str); 2] = [
        (&world.a, "pod-a1", "pod-b1"),
        (&world.b, "pod-b1", "pod-a1"),
    ];
    for (node, local, remote) in cases {
        let dialled = node.addr4(NODE_PORT);
        let answers = answers(dialled, 4);
        assert_eq!(
            answers
                .iter()
                .map(|(pod, e)| (pod.as_str(), e.len()))
                .collect::<Vec<_>>(),
            [("pod-a1", 2), ("pod-b1", 2)],
            "{dialled}: round-robin over a local and a remote backend"
        );
        assert_eq!(
            sources(&answers[remote]),
            [IpAddr::V4(node.ip4)],
            "{dialled}: the remote backend {remote} sees {}'s address",
            node.name
        );
        assert_eq!(
            sources(&answers[local]),
            [IpAddr::V4(world.client4)],
            "{dialled}: the local backend {local} sees the client"
        );
    }
}

#[test]
fn node_ports_over_ipv6_reach_local_and_remote_backends_masqueraded() {
    let world = running(1, cluster_policy);
    let dialled = world.a.addr6(NODE_PORT);
    let answers = answers(dialled, 4);
    assert_eq!(answers.len(), 2, "{dialled}: {answers:?}");
    assert_eq!(sources(&answers["pod-b1"]), [IpAddr::V6(world.a.ip6)]);
}

/// `externalTrafficPolicy: Local`: a node sends to its own endpoints only,
/// keeping the client's address; a node without one drops (kube-proxy's
/// behaviour: the load balancer's health check takes it out).
#[test]
fn local_policy_uses_local_endpoints_keeps_the_client_address_and_drops_elsewhere() {
    let world = running(2, |world| {
        web(
            "LoadBalancer",
            "Local",
            &endpoints(world, &["pod-a1", "pod-a2", "pod-b1"]),
        )
    });
    let client = [IpAddr::V4(world.client4)];
    let via_a = answers(world.a.addr4(NODE_PORT), 6);
    assert_eq!(
        via_a
            .iter()
            .map(|(pod, e)| (pod.as_str(), e.len()))
            .collect::<Vec<_>>(),
        [("pod-a1", 3), ("pod-a2", 3)]
    );
    let via_b = answers(world.b.addr4(NODE_PORT), 3);
    assert_eq!(via_b.keys().collect::<Vec<_>>(), ["pod-b1"]);
    for echoes in via_a.values().chain(via_b.values()) {
        assert_eq!(sources(echoes), client, "the client's address is kept");
    }
    let echo = udp_echo(world.b.addr4(NODE_PORT_UDP)).expect("UDP via node-b");
    assert_eq!((echo.pod.as_str(), echo.source.ip()), ("pod-b1", client[0]));

    // node-b's endpoint goes: node-b drops, node-a answers as before.
    world.apply(&web(
        "LoadBalancer",
        "Local",
        &endpoints(&world, &["pod-a1", "pod-a2"]),
    ));
    lb_testbed::wait_for("node-b to stop answering", Duration::from_secs(5), || {
        client::tcp_within(world.b.addr4(NODE_PORT), DROPPED).is_err()
    });
    assert_dropped(world.b.addr4(NODE_PORT));
    assert_dropped(world.b.addr6(NODE_PORT));
    assert_eq!(answers(world.a.addr4(NODE_PORT), 2).len(), 2);
}

/// A load balancer checks `healthCheckNodePort` to send only to nodes with
/// local endpoints: kube-proxy answers 200 and the count of local
/// endpoints there, 503 on a node without one.
#[test]
fn health_check_node_port_answers_200_with_local_endpoints_and_503_without() {
    let world = running(2, |world| {
        let mut items = web(
            "LoadBalancer",
            "Local",
            &endpoints(world, &["pod-a1", "pod-a2"]),
        );
        items[0]["spec"]["healthCheckNodePort"] = HEALTH_CHECK_PORT.into();
        items
    });
    let (status, body) = client::http_get(world.a.addr4(HEALTH_CHECK_PORT), "/")
        .expect("node-a's health check port");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("kube-proxy's JSON answer");
    assert_eq!(body["localEndpoints"], 2, "{body}");
    let (status, body) = client::http_get(world.b.addr4(HEALTH_CHECK_PORT), "/")
        .expect("node-b's health check port");
    assert_eq!(status, 503, "{body}");
}

/// External and load-balancer IPs, routed to node-a by the client, are
/// translated there like a node port, for TCP and UDP, both families.
#[test]
fn external_and_load_balancer_ips_are_translated_on_the_node_they_reach() {
    let _world = running(1, |world| {
        let mut items = cluster_policy(world);
        items[0] = external_ips(items[0].clone(), &[EXTERNAL_IP, EXTERNAL_IP6]);
        items[0] = ingress(
            expose(items[0].clone(), "LoadBalancer", &[]),
            &[(LB_IP, None)],
        );
        items
    });
    for dialled in [
        addr(EXTERNAL_IP, 80),
        addr(EXTERNAL_IP6, 80),
        addr(LB_IP, 80),
    ] {
        let answers = answers(dialled, 2);
        assert_eq!(answers.len(), 2, "{dialled}: {answers:?}");
        let reply = client::tcp(dialled).expect("answered");
        assert_eq!(
            reply.peer, dialled,
            "the reply comes from the address dialled"
        );
        let echo = udp_echo(dialled).unwrap_or_else(|e| panic!("UDP {dialled}: {e}"));
        assert!(echo.pod.starts_with("pod-"), "{echo:?}");
    }
}

/// UDP to a node port: the reply comes back from the node port itself,
/// from a local and from a remote backend.
#[test]
fn udp_node_port_requests_get_replies_from_the_node_port() {
    let world = running(1, cluster_policy);
    let dialled = world.a.addr4(NODE_PORT_UDP);
    let mut pods = BTreeMap::new();
    for _ in 0..4 {
        // `udp_echo` checks that the reply's source is `dialled`.
        let echo = udp_echo(dialled).unwrap_or_else(|e| panic!("{dialled}: {e}"));
        pods.insert(echo.pod.clone(), echo.source.ip());
    }
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert_eq!(pods["pod-b1"], IpAddr::V4(world.a.ip4));
    let echo = udp_echo(world.a.addr6(NODE_PORT_UDP)).expect("UDP over IPv6");
    assert!(echo.pod.starts_with("pod-"), "{echo:?}");
}

/// No endpoint at all: a node port refuses at once (TCP reset, ICMP port
/// unreachable: the node's stack answers, nothing listens there), as
/// kube-proxy's nftables mode does. An external IP without endpoints is
/// dropped instead (the README's "Not done yet").
#[test]
fn a_service_without_endpoints_refuses_at_once() {
    let world = running(1, |_| {
        let mut items = web("NodePort", "Cluster", &(Vec::new(), Vec::new()));
        items[0] = external_ips(items[0].clone(), &[EXTERNAL_IP]);
        items
    });
    assert_dropped(addr(EXTERNAL_IP, 80));
    for dialled in [
        world.a.addr4(NODE_PORT),
        world.b.addr4(NODE_PORT),
        world.a.addr6(NODE_PORT),
    ] {
        let started = Instant::now();
        let error = client::tcp(dialled).expect_err("refused");
        assert_eq!(
            error.kind(),
            ErrorKind::ConnectionRefused,
            "{dialled}: {error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{dialled}: at once"
        );
    }
    let error = client::udp_connected(world.a.addr4(NODE_PORT_UDP)).expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "UDP: {error}");
}

/// Round-robin is exact through a node port: 300 connections over three
/// backends on two nodes, 100 each.
#[test]
fn round_robin_is_exact_over_300_external_connections() {
    let world = running(2, |world| {
        web(
            "NodePort",
            "Cluster",
            &endpoints(world, &["pod-a1", "pod-a2", "pod-b1"]),
        )
    });
    let counts: Vec<(String, usize)> = answers(world.a.addr4(NODE_PORT), 300)
        .into_iter()
        .map(|(pod, echoes)| (pod, echoes.len()))
        .collect();
    assert_eq!(
        counts,
        [("pod-a1", 100), ("pod-a2", 100), ("pod-b1", 100)].map(|(p, n)| (p.to_owned(), n))
    );
}

/// `loadBalancerSourceRanges`: the VIP answers a client in the ranges and
/// drops one outside them; the Service's node port is not subject to them
/// (kube-proxy applies them to load-balancer IPs only).
#[test]
fn load_balancer_source_ranges_admit_only_their_clients() {
    let world = running(1, |world| {
        let mut items = cluster_policy(world);
        items[0] = ingress(
            expose(
                items[0].clone(),
                "LoadBalancer",
                &[NODE_PORT, NODE_PORT_UDP],
            ),
            &[(LB_IP, None)],
        );
        items[0]["spec"]["loadBalancerSourceRanges"] = vec![format!("{}/32", world.client4)].into();
        items
    });
    // A second address on the client, outside the ranges.
    let outsider = "192.168.77.101";
    world
        .client
        .ip(&["addr", "add", &format!("{outsider}/24"), "dev", "eth0"]);
    let lb = addr(LB_IP, 80);
    assert_eq!(
        answers(lb, 2).len(),
        2,
        "{lb} from the client in the ranges"
    );
    let from = |source: &str, to: SocketAddr| {
        let socket = std::net::UdpSocket::bind(addr(source, 0)).expect("bind");
        socket.set_read_timeout(Some(DROPPED)).expect("timeout");
        socket.send_to(b"hello", to).expect("send");
        let mut buf = [0u8; 256];
        socket
            .recv_from(&mut buf)
            .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let client = world.client4.to_string();
    assert!(from(&client, lb).is_ok(), "UDP {lb} from {client}");
    let refused = from(outsider, lb).expect_err("outside the ranges: dropped");
    assert!(
        matches!(refused.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{refused}"
    );
    let node_port = world.a.addr4(NODE_PORT_UDP);
    assert!(
        from(outsider, node_port).is_ok(),
        "node ports ignore the ranges"
    );
}

/// `sessionAffinity: ClientIP` from another host: every connection of one
/// client goes to one backend, through either node.
#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    let world = running(2, |world| {
        let mut items = web(
            "NodePort",
            "Cluster",
            &endpoints(world, &["pod-a1", "pod-a2", "pod-b1", "pod-b2"]),
        );
        items[0]["spec"]["sessionAffinity"] = "ClientIP".into();
        items
    });
    for node in world.nodes() {
        let dialled = node.addr4(NODE_PORT);
        let answers = answers(dialled, 12);
        assert_eq!(
            answers.len(),
            1,
            "{dialled}: one backend for one client: {answers:?}"
        );
    }
}

/// The agent killed with SIGKILL: established flows through the node keep flowing
/// (to a local and to a remote, masqueraded, backend), and new ones are
/// still translated, since the programs, links and maps stay.
#[test]
fn established_flows_outlive_a_sigkilled_agent() {
    const HOLD_NODE_PORT: u16 = 30_081;
    let mut world = running(1, |world| {
        let (v4, _) = endpoints(world, &["pod-a1", "pod-b1"]);
        let svc = service("hold", &["10.96.0.101"], &[tcp("hold", 81, POD_HOLD_PORT)]);
        let svc = expose(
            annotate(svc, "lb-agent.io/algorithm", "round-robin"),
            "NodePort",
            &[HOLD_NODE_PORT],
        );
        vec![
            svc,
            slice("hold", "hold-v4", &v4, &[("hold", POD_HOLD_PORT, "TCP")]),
        ]
    });
    let dialled = world.a.addr4(HOLD_NODE_PORT);
    let mut held: Vec<(std::io::BufReader<std::net::TcpStream>, String)> = (0..2)
        .map(|_| {
            let stream = std::net::TcpStream::connect_timeout(&dialled, DROPPED * 4)
                .unwrap_or_else(|e| panic!("{dialled}: {e}"));
            stream.set_read_timeout(Some(DROPPED * 4)).expect("timeout");
            let mut reader = std::io::BufReader::new(stream);
            let pod = ask(&mut reader);
            (reader, pod)
        })
        .collect();
    let mut pods: Vec<&str> = held.iter().map(|(_, p)| p.as_str()).collect();
    pods.sort_unstable();
    assert_eq!(
        pods,
        ["pod-a1", "pod-b1"],
        "round-robin: a local and a remote backend"
    );
    world.agents[0].kill();
    for (reader, pod) in &mut held {
        for _ in 0..3 {
            assert_eq!(&ask(reader), pod, "the same connection, the same pod");
        }
    }
    let fresh = std::net::TcpStream::connect_timeout(&dialled, DROPPED * 4);
    assert!(fresh.is_ok(), "new connections after the kill: {fresh:?}");
}

/// Sends a line on a held connection; returns the pod's answer.
fn ask(reader: &mut std::io::BufReader<std::net::TcpStream>) -> String {
    use std::io::{BufRead as _, Write as _};
    reader.get_mut().write_all(b"who\n").expect("write");
    let mut line = String::new();
    reader.read_line(&mut line).expect("an answer");
    line.trim().to_owned()
}

/// 1,000 endpoint changes while clients connect continuously to both
/// nodes' node ports: no connection fails; once the last change (the
/// toggled backends gone for good) is programmed on both nodes, no new
/// connection reaches them.
#[test]
fn churn_with_external_clients_fails_no_connection() {
    const CHANGES: usize = 1_000;
    let world = running(2, cluster_policy);
    let slices = |pods: &[&str]| {
        let mut items = web("NodePort", "Cluster", &endpoints(&world, pods));
        items.remove(0);
        items
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = world
        .nodes()
        .map(|node| {
            let (dialled, stop) = (node.addr4(NODE_PORT), std::sync::Arc::clone(&stop));
            // Spawned from the test thread: in the client's namespace.
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match tcp_echo(dialled) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(format!("{dialled}: {e}")),
                    }
                }
                (ok, failed)
            })
        })
        .into();
    let toggled = [
        ["pod-a1", "pod-b1", "pod-a2"],
        ["pod-a1", "pod-b1", "pod-b2"],
    ];
    for i in 0..CHANGES {
        world.apply(&slices(&toggled[i % 2]));
        std::thread::sleep(Duration::from_millis(2));
    }
    world.apply(&slices(&["pod-a1", "pod-b1"]));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let (ok, failed) = client.join().expect("client thread");
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        total += ok;
    }
    assert!(total > 100, "only {total} connections during the churn");
    // The last change on both nodes, then never the removed backends.
    for agent in &world.agents {
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.frontends("NodePort").is_empty() || backends_listed(agent) != 2 {
            assert!(Instant::now() < deadline, "last change not programmed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for node in world.nodes() {
        let answers = answers(node.addr4(NODE_PORT), 40);
        let pods: Vec<&String> = answers.keys().collect();
        assert_eq!(pods, ["pod-a1", "pod-b1"], "{}", node.name);
    }
}

/// The backends `lb-agent list` shows for the IPv4 TCP node port.
fn backends_listed(agent: &Agent) -> usize {
    agent.list()["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|row| {
            row["kind"] == "NodePort"
                && row["protocol"] == "TCP"
                && row["scope"] == "any"
                && row["frontend"]
                    .as_str()
                    .is_some_and(|f| !f.starts_with('['))
        })
        .map_or(0, |row| row["backends"].as_array().map_or(0, Vec::len))
}
