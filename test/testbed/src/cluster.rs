//! A one-node "cluster" in network namespaces: a [`Node`] (a namespace with
//! a bridge) and pods (each its own namespace, joined to the bridge by a
//! veth pair) running servers that answer with the pod's name. The bench
//! and the two-node world ([`crate::two_nodes`]) are built on [`Node`] and
//! [`Cluster`] too.
//!
//! Addresses ([`Subnet::ONE_NODE`]): node bridge `10.200.0.1/24` and
//! `fd00:200::1/64`; pod `i` (from 1) `10.200.0.(10+i)` and
//! `fd00:200::(10+i)`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::net::{Netns, spawn_in};

/// Ports every pod serves, TCP and UDP.
pub const POD_PORTS: [u16; 2] = [8080, 9090];
/// A TCP port every pod serves with connections that stay open: each line
/// the client sends is answered with the pod's name.
pub const POD_HOLD_PORT: u16 = 7070;
/// A port every pod serves, TCP and UDP, answering with its name and the
/// source address it saw ([`Echo`]): what a translation did to the client.
pub const POD_ECHO_PORT: u16 = 6060;

/// A pod's answer on [`POD_ECHO_PORT`]: `NAME SOURCE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echo {
    pub pod: String,
    /// The peer address the pod's socket saw (IPv4 as IPv4, not mapped).
    pub source: SocketAddr,
}

impl Echo {
    fn answer(pod: &str, source: SocketAddr) -> String {
        let source = SocketAddr::new(source.ip().to_canonical(), source.port());
        format!("{pod} {source}")
    }

    /// Reads an answer; `None` if `text` is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (pod, source) = text.trim().split_once(' ')?;
        Some(Self {
            pod: pod.to_owned(),
            source: source.parse().ok()?,
        })
    }
}

/// A bridge network: the bridge's addresses (the gateway of everything
/// attached) and where hosts on it live. Host `i` is `i` in the last IPv4
/// octet and the decimal digits of `i` read as hex in the last IPv6 group,
/// so that pod 1 is `.11` and `::11`.
#[derive(Clone, Copy, Debug)]
pub struct Subnet {
    pub gateway4: Ipv4Addr,
    pub prefix4: u8,
    /// In a `/64`.
    pub gateway6: Ipv6Addr,
}

impl Subnet {
    /// The one-node world's pod network.
    pub const ONE_NODE: Self = Self {
        gateway4: Ipv4Addr::new(10, 200, 0, 1),
        prefix4: 24,
        gateway6: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1),
    };

    /// Host `i`'s addresses (see the type's docs).
    pub fn host(&self, i: u8) -> (Ipv4Addr, Ipv6Addr) {
        let [a, b, c, _] = self.gateway4.octets();
        let mut groups = self.gateway6.segments();
        groups[7] = u16::from_str_radix(&i.to_string(), 16).expect("decimal digits are hex");
        (Ipv4Addr::new(a, b, c, i), Ipv6Addr::from(groups))
    }

    /// `a.b.c.d/len`.
    pub fn cidr4(&self) -> String {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix4))
            .unwrap_or(0);
        let network = Ipv4Addr::from(u32::from(self.gateway4) & mask);
        format!("{network}/{}", self.prefix4)
    }

    /// `x:y::/64`.
    pub fn cidr6(&self) -> String {
        let mut groups = self.gateway6.segments();
        groups[4..].fill(0);
        format!("{}/64", Ipv6Addr::from(groups))
    }
}

pub struct Pod {
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub netns: Netns,
    /// Requests served (TCP connections + UDP datagrams), all ports.
    pub served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pod {
    pub fn addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip4), port)
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6), port)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A node: a network namespace with a bridge (`br0`) that namespaces are
/// attached to by veth pairs, as a node's pods are. The node's addresses
/// on the bridge are the gateway of everything attached.
pub struct Node {
    pub netns: Netns,
    pub subnet: Subnet,
}

impl Node {
    /// The node namespace `netns` with `br0` at `10.200.0.1/<prefix4>` and
    /// `fd00:200::1/64`.
    pub fn new(netns: Netns, prefix4: u8) -> Self {
        Self::with_subnet(
            netns,
            Subnet {
                prefix4,
                ..Subnet::ONE_NODE
            },
        )
    }

    /// The namespace `netns` with `br0` at the gateway addresses of `subnet`.
    pub fn with_subnet(netns: Netns, subnet: Subnet) -> Self {
        netns.ip(&["link", "add", "br0", "type", "bridge"]);
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/{}", subnet.gateway4, subnet.prefix4),
            "dev",
            "br0",
        ]);
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/64", subnet.gateway6),
            "dev",
            "br0",
            "nodad",
        ]);
        netns.ip(&["link", "set", "br0", "up"]);
        Self { netns, subnet }
    }

    /// Joins `ns` to the bridge: a veth pair (`host_if` on the node, `eth0`
    /// in `ns`), the addresses, and default routes via the node.
    pub fn attach(&self, ns: &Netns, host_if: &str, ip4: Ipv4Addr, ip6: Option<Ipv6Addr>) {
        self.plug(ns, host_if, ip4, ip6);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &self.subnet.gateway4.to_string(),
        ]);
        if ip6.is_some() {
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &self.subnet.gateway6.to_string(),
            ]);
        }
    }

    /// [`Node::attach`] without the default routes: `eth0` in `ns` reaches
    /// the bridge's network and nothing else.
    pub fn plug(&self, ns: &Netns, host_if: &str, ip4: Ipv4Addr, ip6: Option<Ipv6Addr>) {
        self.netns.ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.netns
            .ip(&["link", "set", host_if, "master", "br0", "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{ip4}/{}", self.subnet.prefix4),
            "dev",
            "eth0",
        ]);
        if let Some(ip6) = ip6 {
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
    }
}

/// The node's namespace is the node (`cluster.node.enter()`).
impl std::ops::Deref for Node {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.netns
    }
}

pub struct Cluster {
    pub node: Node,
    pub pods: Vec<Pod>,
}

impl Cluster {
    /// A node with `pods` pods named `pod-1` ... `pod-N`.
    pub fn new(pods: usize) -> Self {
        Self::on(Node::new(Netns::new("node"), 24), "pod-", pods)
    }

    /// `node` with `pods` pods named `<prefix>1` ... `<prefix>N`.
    pub fn on(node: Node, prefix: &str, pods: usize) -> Self {
        let mut cluster = Self {
            node,
            pods: Vec::new(),
        };
        for i in 1..=pods {
            cluster.add_pod(&format!("{prefix}{i}"));
        }
        cluster.wait_links_up();
        cluster
    }

    /// [`Netns::wait_links_up`] on the node and every pod.
    fn wait_links_up(&self) {
        self.node.wait_links_up();
        for pod in &self.pods {
            pod.netns.wait_links_up();
        }
    }

    /// Adds a pod with the next address (its links perhaps not up yet).
    fn add_pod(&mut self, name: &str) {
        let index = u8::try_from(self.pods.len() + 1).expect("at most 200 pods");
        let netns = Netns::new("pod");
        let (ip4, ip6) = self.node.subnet.host(10 + index);
        self.node
            .attach(&netns, &format!("v{index}"), ip4, Some(ip6));

        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let name_only = |name: &str, _: SocketAddr| name.to_owned();
        let servers = POD_PORTS
            .map(|port| (port, name_only as Answer))
            .into_iter()
            .chain([(POD_ECHO_PORT, Echo::answer as Answer)]);
        for (port, answer) in servers {
            let (reply, s, c) = (name.to_owned(), Arc::clone(&stop), Arc::clone(&served));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(spawn_in(&netns.path(), move || {
                serve_tcp(port, |peer| answer(&reply, peer), &s, &c, &ready_tx);
            }));
            ready_rx.recv().expect("tcp server started");
            let (reply, s, c) = (name.to_owned(), Arc::clone(&stop), Arc::clone(&served));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(spawn_in(&netns.path(), move || {
                serve_udp(port, |peer| answer(&reply, peer), &s, &c, &ready_tx);
            }));
            ready_rx.recv().expect("udp server started");
        }
        let (reply, s) = (name.to_owned(), Arc::clone(&stop));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        threads.push(spawn_in(&netns.path(), move || {
            serve_held_tcp(POD_HOLD_PORT, &reply, &s, &ready_tx);
        }));
        ready_rx.recv().expect("held tcp server started");
        self.pods.push(Pod {
            name: name.to_owned(),
            ip4,
            ip6,
            netns,
            served,
            stop,
            threads,
        });
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

/// What a pod server answers: from the pod's name and the client's address.
type Answer = fn(&str, SocketAddr) -> String;

/// Waits up to 50 ms for `fd` to be readable; false on timeout.
fn readable(fd: &impl std::os::fd::AsFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(50u16)), Ok(n) if n > 0)
}

/// Binds `[::]:port` (IPv4 too, with the default bindv6only=0), says it
/// is ready, and hands each connection to `handle` until `stop`.
fn accept_until(
    port: u16,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<()>,
    mut handle: impl FnMut(TcpStream),
) {
    let listener = TcpListener::bind(("::", port)).expect("bind tcp");
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        if !readable(&listener) {
            continue;
        }
        if let Ok((stream, _)) = listener.accept() {
            handle(stream);
        }
    }
}

fn serve_tcp(
    port: u16,
    reply: impl Fn(SocketAddr) -> String,
    stop: &AtomicBool,
    served: &AtomicU64,
    ready: &std::sync::mpsc::Sender<()>,
) {
    accept_until(port, stop, ready, |mut stream| {
        served.fetch_add(1, Ordering::Relaxed);
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(format!("{}\n", reply(peer)).as_bytes());
        // Drain whatever the client sent, then close.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 64];
        let _ = stream.read(&mut sink);
    });
}

/// Serves [`POD_HOLD_PORT`]: a thread per connection, which ends when the
/// client closes (or the pod stops).
fn serve_held_tcp(
    port: u16,
    reply: &str,
    stop: &Arc<AtomicBool>,
    ready: &std::sync::mpsc::Sender<()>,
) {
    accept_until(port, stop, ready, |mut stream| {
        let (reply, stop) = (format!("{reply}\n"), Arc::clone(stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                if !readable(&stream) {
                    continue;
                }
                match stream.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    });
}

fn serve_udp(
    port: u16,
    reply: impl Fn(SocketAddr) -> String,
    stop: &AtomicBool,
    served: &AtomicU64,
    ready: &std::sync::mpsc::Sender<()>,
) {
    let socket = UdpSocket::bind(("::", port)).expect("bind udp");
    let _ = ready.send(());
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if !readable(&socket) {
            continue;
        }
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            served.fetch_add(1, Ordering::Relaxed);
            let _ = socket.send_to(reply(from).as_bytes(), from);
        }
    }
}
