//! End to end: every address of a Service for clients on the node, from the
//! host (the node's namespace) and from a pod's namespace: node ports on
//! the chosen node addresses (and on no other), a node address added at
//! run time, external IPs, load-balancer VIPs (not an `ipMode: Proxy`
//! one), `externalTrafficPolicy: Local` short-circuited, exact
//! round-robin, `getpeername()` showing the address dialled, refusals.
//!
//! Needs root; run one at a time: `cargo xtask test` does both.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use lb_testbed::{
    client::{self, Reply, tally},
    env::FileEnv,
    manifests::{
        Endpoint, annotate, expose, external_ips, ingress, node, ready, service, slice, tcp, udp,
    },
    net::spawn_in,
    wait_for,
};
use serde_json::Value;

const VIP: &str = "10.96.0.100";
const VIP6: &str = "fd00:96::100";
/// The node's addresses on its bridge (see `lb_testbed::cluster`).
const NODE: &str = "10.200.0.1";
const NODE6: &str = "fd00:200::1";
const NODE_PORT: u16 = 30_080;
const NODE_PORT_UDP: u16 = 30_090;
/// The node-port addresses of most tests: the bridge networks.
const BRIDGE_CIDRS: &str = "10.200.0.0/24,fd00:200::/64";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// `web`: dual-stack, round-robin, `http` 80 -> 8080/TCP on node port
/// 30080 and `dns` 90 -> 9090/UDP on 30090, type `type_`, with a slice
/// per family of these endpoints (IPv4; the IPv6 ones are the same pods).
fn web(env: &FileEnv, type_: &str, endpoints: &[Endpoint]) -> Vec<Value> {
    let svc = service(
        "web",
        &[VIP, VIP6],
        &[tcp("http", 80, 8080), udp("dns", 90, 9090)],
    );
    let svc = annotate(svc, "lb-agent.io/algorithm", "round-robin");
    let svc = expose(svc, type_, &[NODE_PORT, NODE_PORT_UDP]);
    let ports = [("http", 8080, "TCP"), ("dns", 9090, "UDP")];
    let v6: Vec<Endpoint> = endpoints
        .iter()
        .map(|e| {
            let pod = env
                .cluster
                .pods
                .iter()
                .find(|p| p.ip4.to_string() == e.ip)
                .expect("a pod's address");
            Endpoint {
                ip: pod.ip6.to_string(),
                ..e.clone()
            }
        })
        .collect();
    vec![
        svc,
        slice("web", "web-v4", endpoints, &ports),
        slice("web", "web-v6", &v6, &ports),
    ]
}

fn all_ready(env: &FileEnv) -> Vec<Endpoint> {
    env.pod_ips().into_iter().map(ready).collect()
}

/// A TCP request from a client in `pod`'s network namespace.
fn from_pod(env: &FileEnv, pod: &str, to: SocketAddr) -> std::io::Result<Reply> {
    spawn_in(&env.cluster.pod(pod).netns.path(), move || client::tcp(to))
        .join()
        .expect("client thread")
}

#[track_caller]
fn assert_answered(reply: std::io::Result<Reply>, dialled: SocketAddr) {
    let reply = reply.unwrap_or_else(|e| panic!("{dialled}: {e}"));
    assert!(
        reply.body.starts_with("pod-"),
        "{dialled}: answered by {:?}",
        reply.body
    );
    assert_eq!(
        reply.peer, dialled,
        "getpeername() shows the address dialled"
    );
}

#[test]
fn node_ports_answer_on_the_chosen_node_addresses_only() {
    let env = FileEnv::new(3, "services.json");
    // A local address outside the chosen ranges.
    env.cluster
        .node
        .ip(&["addr", "add", "10.201.0.1/32", "dev", "lo"]);
    env.write(&web(&env, "NodePort", &all_ready(&env)));
    let agent = env.agent(&["--nodeport-addresses", BRIDGE_CIDRS]);
    assert_eq!(
        agent.frontends("NodePort"),
        [
            "10.200.0.1:30080/TCP",
            "10.200.0.1:30090/UDP",
            "[fd00:200::1]:30080/TCP",
            "[fd00:200::1]:30090/UDP"
        ]
    );

    // From the host: exact round-robin, and the node address in getpeername.
    let node_port = addr(NODE, NODE_PORT);
    let counts = tally(node_port, 30);
    let expected: BTreeMap<String, usize> = [("pod-1", 10), ("pod-2", 10), ("pod-3", 10)]
        .map(|(p, n)| (p.to_owned(), n))
        .into();
    assert_eq!(counts, expected);
    assert_answered(client::tcp(node_port), node_port);
    let node_port6 = addr(NODE6, NODE_PORT);
    assert_answered(client::tcp(node_port6), node_port6);
    let (reply, from) = client::udp_connected(addr(NODE, NODE_PORT_UDP)).expect("udp");
    assert!(reply.body.starts_with("pod-"), "{reply:?}");
    assert_eq!(
        (reply.peer, from),
        (addr(NODE, NODE_PORT_UDP), addr(NODE, NODE_PORT_UDP))
    );

    // From a pod, which reaches the node through its default route.
    assert_answered(from_pod(&env, "pod-1", node_port), node_port);
    assert_answered(from_pod(&env, "pod-2", node_port6), node_port6);

    // Not on the other local addresses: nothing listens there.
    for other in [addr("10.201.0.1", NODE_PORT), addr("127.0.0.1", NODE_PORT)] {
        let result = client::tcp(other);
        assert_eq!(
            result.as_ref().map_err(std::io::Error::kind).err(),
            Some(std::io::ErrorKind::ConnectionRefused),
            "{other}: {result:?}"
        );
    }
}

#[test]
fn a_node_address_added_at_run_time_starts_answering_and_a_removed_one_stops() {
    let env = FileEnv::new(2, "services.json");
    env.write(&web(&env, "NodePort", &all_ready(&env)));
    let agent = env.agent(&["--nodeport-addresses", BRIDGE_CIDRS]);
    let added = addr("10.200.0.2", NODE_PORT);
    assert!(
        !agent
            .frontends("NodePort")
            .contains(&format!("{added}/TCP"))
    );

    env.cluster
        .node
        .ip(&["addr", "add", "10.200.0.2/24", "dev", "br0"]);
    wait_for(
        "the new address's node port",
        Duration::from_secs(10),
        || {
            agent
                .frontends("NodePort")
                .contains(&format!("{added}/TCP"))
        },
    );
    assert_answered(client::tcp(added), added);
    assert_answered(from_pod(&env, "pod-1", added), added);

    env.cluster
        .node
        .ip(&["addr", "del", "10.200.0.2/24", "dev", "br0"]);
    wait_for(
        "the removed address's node port to go",
        Duration::from_secs(10),
        || {
            !agent
                .frontends("NodePort")
                .contains(&format!("{added}/TCP"))
        },
    );
    // The others stay.
    assert_answered(client::tcp(addr(NODE, NODE_PORT)), addr(NODE, NODE_PORT));
}

#[test]
fn primary_node_port_addresses_are_the_node_objects() {
    let env = FileEnv::new(2, "services.json");
    let mut items = web(&env, "NodePort", &all_ready(&env));
    // The Node says its primary address is the bridge's IPv4 one only;
    // `primary` is the default.
    items.push(node(
        "node-1",
        &[("topology.kubernetes.io/zone", "zone-a")],
        &[("InternalIP", NODE), ("Hostname", "node-1")],
    ));
    env.write(&items);
    let agent = env.agent(&["--node-name", "node-1"]);
    assert_eq!(
        agent.frontends("NodePort"),
        ["10.200.0.1:30080/TCP", "10.200.0.1:30090/UDP"]
    );
    assert_answered(client::tcp(addr(NODE, NODE_PORT)), addr(NODE, NODE_PORT));

    // The Node changes its address: the node ports move with it.
    let mut items = web(&env, "NodePort", &all_ready(&env));
    items.push(node("node-1", &[], &[("InternalIP", NODE6)]));
    env.write(&items);
    wait_for(
        "the node ports to move to the IPv6 address",
        Duration::from_secs(10),
        || agent.frontends("NodePort") == ["[fd00:200::1]:30080/TCP", "[fd00:200::1]:30090/UDP"],
    );
    assert_answered(client::tcp(addr(NODE6, NODE_PORT)), addr(NODE6, NODE_PORT));
}

#[test]
fn external_and_load_balancer_ips_answer_but_not_a_proxy_mode_one() {
    let env = FileEnv::new(3, "services.json");
    let mut items = web(&env, "LoadBalancer", &all_ready(&env));
    items[0] = external_ips(items[0].clone(), &["192.0.2.10", "2001:db8::10"]);
    items[0] = ingress(
        items[0].clone(),
        &[
            ("198.51.100.7", None),
            ("2001:db8::7", Some("VIP")),
            ("198.51.100.8", Some("Proxy")),
        ],
    );
    env.write(&items);
    let agent = env.agent(&["--nodeport-addresses", BRIDGE_CIDRS]);
    assert_eq!(
        agent.frontends("ExternalIP"),
        [
            "192.0.2.10:80/TCP",
            "192.0.2.10:90/UDP",
            "[2001:db8::10]:80/TCP",
            "[2001:db8::10]:90/UDP"
        ]
    );
    assert_eq!(
        agent.frontends("LoadBalancer"),
        [
            "198.51.100.7:80/TCP",
            "198.51.100.7:90/UDP",
            "[2001:db8::7]:80/TCP",
            "[2001:db8::7]:90/UDP"
        ]
    );
    for dialled in [
        addr("192.0.2.10", 80),
        addr("2001:db8::10", 80),
        addr("198.51.100.7", 80),
        addr("2001:db8::7", 80),
    ] {
        assert_answered(client::tcp(dialled), dialled);
        assert_answered(from_pod(&env, "pod-3", dialled), dialled);
    }
    let lb = addr("198.51.100.7", 80);
    let counts = tally(lb, 9);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [3, 3, 3],
        "{counts:?}"
    );
    let (reply, from) = client::udp_connected(addr("192.0.2.10", 90)).expect("udp");
    assert!(reply.body.starts_with("pod-"), "{reply:?}");
    assert_eq!(from, addr("192.0.2.10", 90));

    // ipMode Proxy: left to the load balancer, so the connection is routed
    // as it is; the node has no route there.
    let proxied = addr("198.51.100.8", 80);
    assert!(client::tcp(proxied).is_err(), "{proxied} is not translated");
    assert!(
        !agent
            .frontends("LoadBalancer")
            .iter()
            .any(|f| f.starts_with("198.51.100.8")),
        "an ipMode: Proxy address is not a frontend"
    );
}

#[test]
fn external_traffic_policy_local_is_short_circuited_for_clients_on_the_node() {
    let env = FileEnv::new(3, "services.json");
    // Every endpoint is on another node.
    let elsewhere: Vec<Endpoint> = env
        .pod_ips()
        .into_iter()
        .map(|ip| ready(ip).on("node-2"))
        .collect();
    let mut items = web(&env, "LoadBalancer", &elsewhere);
    items[0]["spec"]["externalTrafficPolicy"] = "Local".into();
    items[0]["spec"]["internalTrafficPolicy"] = "Local".into();
    items[0] = external_ips(items[0].clone(), &["192.0.2.10"]);
    env.write(&items);
    let agent = env.agent(&[
        "--node-name",
        "node-1",
        "--nodeport-addresses",
        BRIDGE_CIDRS,
    ]);
    // internalTrafficPolicy: Local and no endpoint here: the ClusterIP refuses.
    let refused = client::tcp(addr(VIP, 80)).expect_err("no local endpoint");
    assert_eq!(refused.kind(), agent.refusal());
    // The external addresses use every endpoint of the cluster, as
    // kube-proxy does for traffic from the node and its pods.
    for dialled in [addr(NODE, NODE_PORT), addr("192.0.2.10", 80)] {
        let counts = tally(dialled, 3);
        assert_eq!(counts.len(), 3, "{dialled}: {counts:?}");
        assert_answered(from_pod(&env, "pod-1", dialled), dialled);
    }
}

#[test]
fn a_service_without_endpoints_refuses_on_every_address() {
    let env = FileEnv::new(1, "services.json");
    let mut items = web(&env, "LoadBalancer", &[]);
    items[0] = external_ips(items[0].clone(), &["192.0.2.10"]);
    items[0] = ingress(items[0].clone(), &[("198.51.100.7", None)]);
    env.write(&items);
    let agent = env.agent(&["--nodeport-addresses", BRIDGE_CIDRS]);
    for dialled in [
        addr(VIP, 80),
        addr(NODE, NODE_PORT),
        addr(NODE6, NODE_PORT),
        addr("192.0.2.10", 80),
        addr("198.51.100.7", 80),
    ] {
        let error = client::tcp(dialled).expect_err("refused");
        assert_eq!(error.kind(), agent.refusal(), "{dialled}");
    }
    // Two ports, each on the ClusterIP and the node port of both families,
    // the external IP and the VIP.
    let states: Vec<String> = agent.list()["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|row| row["state"].as_str().expect("state").to_owned())
        .collect();
    assert_eq!(states.len(), 12, "{states:?}");
    assert!(states.iter().all(|s| s == "no-endpoints"), "{states:?}");
}

/// `lb-agent list` writing into a pipe whose reader has gone (as in
/// `lb-agent list | head`) exits quietly, without a panic.
#[test]
fn list_into_a_closed_pipe_exits_quietly() {
    let env = FileEnv::new(1, "services.json");
    env.write(&web(&env, "NodePort", &all_ready(&env)));
    let agent = env.agent(&["--nodeport-addresses", BRIDGE_CIDRS]);
    let bpffs = agent.list()["bpffs"].as_str().expect("bpffs").to_owned();
    for output in ["json", "table"] {
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        drop(reader);
        let out = std::process::Command::new(lb_testbed::agent::bin())
            .args(["list", "-o", output, "--bpffs", &bpffs])
            .stdout(std::process::Stdio::from(writer))
            .output()
            .expect("lb-agent list");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "-o {output}: {:?}: {stderr}",
            out.status
        );
        assert_eq!(stderr, "", "-o {output}");
    }
}
