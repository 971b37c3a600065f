//! A one-node "cluster" in network namespaces: a [`Node`] (a namespace with
//! a bridge) and pods (each its own namespace, joined to the bridge by a
//! veth pair) running servers that answer with the pod's name. The bench
//! builds its own world on [`Node`] too.
//!
//! Addresses: node bridge `10.200.0.1/24` and `fd00:200::1/64`; pod `i`
//! (from 1) `10.200.0.(10+i)` and `fd00:200::(10+i)`.

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
    /// IPv4 prefix length of the bridge network.
    prefix4: u8,
}

impl Node {
    /// The node namespace `netns` with `br0` at `10.200.0.1/<prefix4>` and
    /// `fd00:200::1/64`.
    pub fn new(netns: Netns, prefix4: u8) -> Self {
        netns.ip(&["link", "add", "br0", "type", "bridge"]);
        netns.ip(&[
            "addr",
            "add",
            &format!("10.200.0.1/{prefix4}"),
            "dev",
            "br0",
        ]);
        netns.ip(&["addr", "add", "fd00:200::1/64", "dev", "br0", "nodad"]);
        netns.ip(&["link", "set", "br0", "up"]);
        Self { netns, prefix4 }
    }

    /// Joins `ns` to the bridge: a veth pair (`host_if` on the node, `eth0`
    /// in `ns`), the addresses, and default routes via the node.
    pub fn attach(&self, ns: &Netns, host_if: &str, ip4: Ipv4Addr, ip6: Option<Ipv6Addr>) {
        self.netns.ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.netns
            .ip(&["link", "set", host_if, "master", "br0", "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{ip4}/{}", self.prefix4),
            "dev",
            "eth0",
        ]);
        if let Some(ip6) = ip6 {
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", "10.200.0.1"]);
        if ip6.is_some() {
            ns.ip(&["-6", "route", "add", "default", "via", "fd00:200::1"]);
        }
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
        let mut cluster = Self {
            node: Node::new(Netns::new("node"), 24),
            pods: Vec::new(),
        };
        for i in 1..=pods {
            cluster.add_pod(&format!("pod-{i}"));
        }
        cluster
    }

    /// Adds a pod with the next address.
    pub fn add_pod(&mut self, name: &str) -> &Pod {
        let index = u8::try_from(self.pods.len() + 1).expect("at most 200 pods");
        let netns = Netns::new("pod");
        let ip4 = Ipv4Addr::new(10, 200, 0, 10 + index);
        let ip6: Ipv6Addr = format!("fd00:200::{}", 10 + u16::from(index))
            .parse()
            .expect("ipv6");
        self.node
            .attach(&netns, &format!("v{index}"), ip4, Some(ip6));

        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for port in POD_PORTS {
            let (reply, s, c) = (name.to_owned(), Arc::clone(&stop), Arc::clone(&served));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(spawn_in(&netns.path(), move || {
                serve_tcp(port, &reply, &s, &c, &ready_tx);
            }));
            ready_rx.recv().expect("tcp server started");
            let (reply, s, c) = (name.to_owned(), Arc::clone(&stop), Arc::clone(&served));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(spawn_in(&netns.path(), move || {
                serve_udp(port, &reply, &s, &c, &ready_tx);
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
        self.pods.last().expect("just pushed")
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

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
    reply: &str,
    stop: &AtomicBool,
    served: &AtomicU64,
    ready: &std::sync::mpsc::Sender<()>,
) {
    accept_until(port, stop, ready, |mut stream| {
        served.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(format!("{reply}\n").as_bytes());
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
    reply: &str,
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
            let _ = socket.send_to(reply.as_bytes(), from);
        }
    }
}
