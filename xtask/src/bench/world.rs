//! The benchmark's throwaway world, removed on drop (also on error and
//! Ctrl-C): a node network namespace with a bridge, three pods running the
//! bench server, one client namespace per peer, and a child cgroup for the
//! agent's client. Nothing outside is touched: the peers' iptables and
//! nftables rules live in their clients' own namespaces and go with them.
//!
//! Addresses (10.200.0.0/16 on the bridge): node 10.200.0.1, pods
//! 10.200.0.11-13, clients 10.200.1.x (a new address for every namespace,
//! so that no neighbour cache remembers an old one).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_testbed::{
    cluster::Node,
    net::{Netns, cgroup2_root, in_netns},
};

use crate::util::run_cmd;

/// Prefix of everything this creates (namespaces, cgroup, pins).
pub const PREFIX: &str = "lb-bench";
pub const NODE: &str = "lb-bench-node";
pub const PODS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 200, 0, 11),
    Ipv4Addr::new(10, 200, 0, 12),
    Ipv4Addr::new(10, 200, 0, 13),
];
/// Ports every pod serves.
pub const POD_PORTS: &str = "8080,8081";

/// A client network namespace joined to the node's bridge.
#[derive(Clone, Debug)]
pub struct ClientNs {
    pub name: String,
}

pub struct World {
    pub client_bin: PathBuf,
    /// The agent's cgroup: its programs are attached here.
    pub cgroup: PathBuf,
    /// A sibling with nothing attached, for every other client, so that
    /// cgroup membership is the same for all peers but the agent's hooks.
    pub base_cgroup: PathBuf,
    pub dir: PathBuf,
    /// Pods and clients (removed before the node, on drop).
    netns: Vec<Netns>,
    servers: Vec<Child>,
    next_client: u8,
    node: Node,
}

impl World {
    /// Removes what an interrupted earlier run left, then builds the node,
    /// the pods and the cgroup.
    pub fn new(client_bin: &Path) -> Result<Self> {
        remove_leftovers();
        let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let root = cgroup2_root().context("failed to find the cgroup2 mount")?;
        let cgroup = root.join(PREFIX);
        let base_cgroup = root.join(format!("{PREFIX}-base"));
        for cg in [&cgroup, &base_cgroup] {
            fs::create_dir_all(cg)
                .with_context(|| format!("failed to create cgroup {}", cg.display()))?;
        }
        let mut world = Self {
            client_bin: client_bin.to_path_buf(),
            cgroup,
            base_cgroup,
            dir,
            netns: Vec::new(),
            servers: Vec::new(),
            next_client: 1,
            node: Node::new(Netns::named(NODE), 16),
        };
        for (i, pod) in PODS.iter().enumerate() {
            let ns = world.attach(
                &format!("{PREFIX}-pod-{}", i + 1),
                &format!("lbbp{}", i + 1),
                *pod,
            )?;
            let server = serve(&ns, &world.client_bin, POD_PORTS)?;
            world.servers.push(server);
        }
        Ok(world)
    }

    /// A new client namespace on the bridge (a new name and address each time).
    pub fn client(&mut self, role: &str) -> Result<ClientNs> {
        let n = self.next_client;
        ensure!(n < 250, "out of client addresses");
        self.next_client += 1;
        let ip = Ipv4Addr::new(10, 200, 1, n);
        let name = self.attach(&format!("{PREFIX}-{role}-{n}"), &format!("lbbc{n}"), ip)?;
        // Many short connections: use every port.
        run_cmd(
            in_netns(&name, "sysctl")
                .args(["-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"])
                .stdout(Stdio::null()),
        )?;
        Ok(ClientNs { name })
    }

    /// Deletes a client namespace (and every rule in it).
    pub fn remove_client(&mut self, client: &ClientNs) {
        self.netns.retain(|n| n.name != client.name);
    }

    /// A namespace `name` joined to the bridge at `addr`; returns its name.
    fn attach(&mut self, name: &str, host_if: &str, addr: Ipv4Addr) -> Result<String> {
        if super::interrupted() {
            bail!("interrupted");
        }
        let ns = Netns::named(name);
        self.node.attach(&ns, host_if, addr, None);
        self.netns.push(ns);
        Ok(name.to_owned())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for mut s in self.servers.drain(..) {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Pods and clients before the node (their veth ends go with them).
        self.netns.drain(..).rev().for_each(drop);
        for cg in [&self.cgroup, &self.base_cgroup] {
            for _ in 0..100 {
                if fs::remove_dir(cg).is_ok() || !cg.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts the bench server on `ports` (`8080,8081`) in the namespace
/// called `ns` and waits until it listens. The caller kills it.
pub fn serve(ns: &str, client_bin: &Path, ports: &str) -> Result<Child> {
    let mut server = in_netns(ns, client_bin)
        .args(["serve", "--ports", ports, "--threads", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start the bench server in {ns}"))?;
    let mut line = String::new();
    let read = server
        .stdout
        .take()
        .context("server stdout")
        .and_then(|out| Ok(BufReader::new(out).read_line(&mut line)?));
    if read.is_err() || line.trim() != "ready" {
        let _ = server.kill();
        let _ = server.wait();
        bail!("the bench server in {ns} did not start: {line:?}");
    }
    Ok(server)
}

/// Namespaces, cgroup and pins named `lb-bench*` from an interrupted run.
fn remove_leftovers() {
    if let Ok(list) = fs::read_dir("/run/netns") {
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    if let Ok(list) = fs::read_dir("/sys/fs/bpf") {
        for e in list.flatten() {
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                if let Ok(agent) = crate::build::agent_path(true) {
                    let _ = Command::new(agent)
                        .arg("cleanup")
                        .arg("--bpffs")
                        .arg(e.path())
                        .stderr(Stdio::null())
                        .status();
                }
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(root) = cgroup2_root() {
        let _ = fs::remove_dir(root.join(PREFIX));
        let _ = fs::remove_dir(root.join(format!("{PREFIX}-base")));
    }
}
