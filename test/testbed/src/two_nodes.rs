//! A two-node cluster on one machine, for traffic that does not start at a
//! local socket: node ports, external IPs and load-balancer IPs dialled by a
//! client outside the cluster, answered by pods on either node.
//!
//! ```text
//!            client (eth0 192.168.77.100, fd00:77::100; the test thread)
//!               |
//!   underlay (br0 192.168.77.254/24, fd00:77::fe/64; the API server)
//!          |                                |
//!   node-a (eth0 192.168.77.1,        node-b (eth0 192.168.77.2,
//!           fd00:77::1)                       fd00:77::2)
//!   br0 10.201.1.1/24, fd00:201:1::1  br0 10.201.2.1/24, fd00:201:2::1
//!   pods pod-a1.. at .11.., ::11..    pods pod-b1.. at .11.., ::11..
//! ```
//!
//! Every box is a network namespace; the lines are veth pairs (`eth0`
//! inside, `node-a`/`node-b`/`client` on the underlay bridge); pods hang off
//! their node's `br0` as in [`crate::cluster`]. Routes, as a routed pod
//! network has them: each node reaches the other's pods via the other's
//! underlay address and forwards (IPv4 and IPv6); the client reaches the
//! test VIPs ([`VIPS4`], [`VIPS6`]) via node-a and each node's pods via that
//! node (the "direct route" a benchmark compares with). No namespace has a
//! default route, so a mistaken address fails here instead of leaving the
//! machine.
//!
//! Each node runs its own agent, in its namespace, with `--node-name`, its
//! own bpffs directory and its own cgroup: an empty child of the test's
//! [`Cgroup`], so that no agent's socket programs touch the client or the
//! pods (threads of the test process) and every translation a test sees is
//! the packet path's. Both agents watch one [`ApiServer`] on the underlay.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::{
    agent::{self, Agent},
    apiserver::{self, ApiServer},
    cluster::{Cluster, Node, Pod, Subnet},
    manifests::{self, Endpoint, ready},
    net::{Cgroup, ChildCgroup, Entered, Netns},
};

/// Whether the agents get `--devices eth0`. Set to `true` once `lb-agent
/// run` has the flag (issue 12's tc data path); until then the agents would
/// refuse it.
pub const DEVICES_FLAG: bool = true;

/// The underlay network: the bridge's addresses (where the API server
/// listens); node `i` is host `i`, the client host 100.
pub const UNDERLAY: Subnet = Subnet {
    gateway4: Ipv4Addr::new(192, 168, 77, 254),
    prefix4: 24,
    gateway6: Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0xfe),
};
/// The ranges tests take external and load-balancer IPs from: the client
/// routes them to node-a.
pub const VIPS4: &str = "10.97.0.0/24";
pub const VIPS6: &str = "fd00:97::/64";

/// One of the two nodes.
pub struct ClusterNode {
    /// `node-a` or `node-b`: the Node object and `--node-name`.
    pub name: &'static str,
    /// The address of `eth0` on the underlay.
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The node's namespace, its pod bridge and pods.
    pub cluster: Cluster,
    /// Where this node's agent attaches its socket programs.
    pub cgroup: ChildCgroup,
}

impl ClusterNode {
    /// `name`'s namespace with a pod bridge on `pods_subnet` and `pods`
    /// pods named `pod-<letter>1`..., plugged into the underlay as host
    /// `index`, forwarding.
    fn new(
        name: &'static str,
        index: u8,
        pods_subnet: Subnet,
        pods: usize,
        underlay: &Node,
        cgroup: &Cgroup,
    ) -> Self {
        let letter = name.trim_start_matches("node-");
        let node = Node::with_subnet(Netns::new(name), pods_subnet);
        let (ip4, ip6) = UNDERLAY.host(index);
        underlay.plug(&node, name, ip4, Some(ip6));
        node.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ]);
        Self {
            name,
            ip4,
            ip6,
            cluster: Cluster::on(node, &format!("pod-{letter}"), pods),
            cgroup: cgroup.child(name),
        }
    }

    pub fn netns(&self) -> &Netns {
        &self.cluster.node
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.cluster.pod(name)
    }

    /// `ip4:port` on the underlay (a node port, as an outside client dials it).
    pub fn addr4(&self, port: u16) -> SocketAddr {
        (self.ip4, port).into()
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        (self.ip6, port).into()
    }

    /// Ready endpoints on this node, one per pod: IPv4, then IPv6.
    pub fn endpoints(&self) -> (Vec<Endpoint>, Vec<Endpoint>) {
        let pods = &self.cluster.pods;
        (
            pods.iter().map(|p| ready(p.ip4).on(self.name)).collect(),
            pods.iter().map(|p| ready(p.ip6).on(self.name)).collect(),
        )
    }

    /// A route to the other node's pods via its underlay address.
    fn route_pods_via(&self, other: &Self) {
        let subnet = other.cluster.node.subnet;
        let netns = self.netns();
        netns.ip(&[
            "route",
            "add",
            &subnet.cidr4(),
            "via",
            &other.ip4.to_string(),
        ]);
        netns.ip(&[
            "-6",
            "route",
            "add",
            &subnet.cidr6(),
            "via",
            &other.ip6.to_string(),
        ]);
    }
}

/// The two-node world (see the module docs). Fields drop in order: the
/// test thread leaves the client's namespace, the API server stops, then
/// the nodes (pods, namespaces, cgroups), the client, the underlay, the
/// test's cgroup and the scratch directory go. Agents a test started drop
/// before all of it.
pub struct TwoNodes {
    _in_client: Entered,
    pub api: ApiServer,
    pub a: ClusterNode,
    pub b: ClusterNode,
    /// The external client's namespace, which the calling thread is in.
    pub client: Netns,
    pub client4: Ipv4Addr,
    pub client6: Ipv6Addr,
    pub underlay: Node,
    pub cgroup: Cgroup,
    pub dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl TwoNodes {
    /// `pods` pods on each node; the calling thread enters the client's
    /// namespace (its sockets are the external client's); the API server
    /// serves the two Node objects.
    pub fn new(pods: usize) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "end-to-end tests need root (network namespaces, cgroups, BPF): run `sudo cargo xtask test`"
        );
        let cgroup = Cgroup::new();
        let underlay = Node::with_subnet(Netns::new("underlay"), UNDERLAY);
        let pods_of = |third: u8| Subnet {
            gateway4: Ipv4Addr::new(10, 201, third, 1),
            prefix4: 24,
            gateway6: Ipv6Addr::new(0xfd00, 0x201, third.into(), 0, 0, 0, 0, 1),
        };
        let a = ClusterNode::new("node-a", 1, pods_of(1), pods, &underlay, &cgroup);
        let b = ClusterNode::new("node-b", 2, pods_of(2), pods, &underlay, &cgroup);
        a.route_pods_via(&b);
        b.route_pods_via(&a);

        let client = Netns::new("client");
        let (client4, client6) = UNDERLAY.host(100);
        underlay.plug(&client, "client", client4, Some(client6));
        let via = |node: &ClusterNode, cidr4: &str, cidr6: &str| {
            client.ip(&["route", "add", cidr4, "via", &node.ip4.to_string()]);
            client.ip(&["-6", "route", "add", cidr6, "via", &node.ip6.to_string()]);
        };
        client.wait_links_up();
        underlay.wait_links_up();
        via(&a, VIPS4, VIPS6);
        for node in [&a, &b] {
            let subnet = node.cluster.node.subnet;
            via(node, &subnet.cidr4(), &subnet.cidr6());
        }

        let api = {
            let _in_underlay = underlay.enter();
            ApiServer::start_with(apiserver::Options {
                address: UNDERLAY.gateway4,
                ..apiserver::Options::default()
            })
            .expect("start the API server")
        };
        for node in [&a, &b] {
            let addresses = [node.ip4.to_string(), node.ip6.to_string()];
            api.apply(&apiserver::node(node.name, &[&addresses[0], &addresses[1]]));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Self {
            _in_client: client.enter(),
            api,
            a,
            b,
            client,
            client4,
            client6,
            underlay,
            cgroup,
            dir,
            kubeconfig,
        }
    }

    pub fn nodes(&self) -> [&ClusterNode; 2] {
        [&self.a, &self.b]
    }

    /// Stores Services, EndpointSlices, Nodes built by [`manifests`].
    pub fn apply(&self, items: &[Value]) {
        manifests::apply(&self.api, items);
    }

    /// The arguments of `node`'s agent: the API server, its name, node
    /// ports on its underlay addresses, its device (see [`DEVICES_FLAG`]),
    /// then `extra`.
    pub fn agent_args(&self, node: &ClusterNode, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--kubeconfig",
            &self.kubeconfig.display().to_string(),
            "--node-name",
            node.name,
            "--nodeport-addresses",
            &format!("{},{}", UNDERLAY.cidr4(), UNDERLAY.cidr6()),
        ]
        .map(str::to_owned)
        .into();
        if DEVICES_FLAG {
            args.extend(["--devices".to_owned(), "eth0".to_owned()]);
        }
        args.extend(extra.iter().map(ToString::to_string));
        args
    }

    /// Starts `node`'s agent and waits until it is ready.
    pub fn agent(&self, node: &ClusterNode, extra: &[&str]) -> Agent {
        let mut agent = self.spawn_agent(&agent::bin(), node, extra);
        agent.wait_ready();
        agent
    }

    /// Starts both agents at once and waits until both are ready:
    /// node-a's, node-b's.
    pub fn agents(&self, extra: &[&str]) -> [Agent; 2] {
        self.agents_bin(&agent::bin(), extra)
    }

    /// [`TwoNodes::agents`] with the agent binary at `bin`.
    pub fn agents_bin(&self, bin: &Path, extra: &[&str]) -> [Agent; 2] {
        let mut agents = self.nodes().map(|node| self.spawn_agent(bin, node, extra));
        for agent in &mut agents {
            agent.wait_ready();
        }
        agents
    }

    fn spawn_agent(&self, bin: &Path, node: &ClusterNode, extra: &[&str]) -> Agent {
        let args = self.agent_args(node, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::spawn_bin_in(bin, &node.netns().name, &node.cgroup.path, &args)
    }
}
