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

use crate::{demo::cgroup2_root, util::run_cmd};

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
    netns: Vec<String>,
    servers: Vec<Child>,
    next_client: u8,
}

impl World {
    /// Removes what an interrupted earlier run left, then builds the node,
    /// the pods and the cgroup.
    pub fn new(client_bin: &Path) -> Result<Self> {
        remove_leftovers();
        let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let cgroup = cgroup2_root()?.join(PREFIX);
        let base_cgroup = cgroup2_root()?.join(format!("{PREFIX}-base"));
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
        };
        world.netns_add(NODE)?;
        ip(&["-n", NODE, "link", "set", "lo", "up"])?;
        ip(&["-n", NODE, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", NODE, "addr", "add", "10.200.0.1/16", "dev", "br0"])?;
        ip(&["-n", NODE, "link", "set", "br0", "up"])?;
        for (i, pod) in PODS.iter().enumerate() {
            let ns = format!("{PREFIX}-pod-{}", i + 1);
            world.attach(&ns, &format!("lbbp{}", i + 1), *pod)?;
            let mut server = in_netns(&ns)
                .arg(&world.client_bin)
                .args(["serve", "--ports", POD_PORTS, "--threads", "2"])
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("failed to start the bench server in {ns}"))?;
            let stdout = server.stdout.take().context("server stdout")?;
            world.servers.push(server);
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .with_context(|| format!("the bench server in {ns} did not start"))?;
            ensure!(
                line.trim() == "ready",
                "the bench server in {ns} did not start: {line:?}"
            );
        }
        Ok(world)
    }

    /// A new client namespace on the bridge (a new name and address each time).
    pub fn client(&mut self, role: &str) -> Result<ClientNs> {
        let n = self.next_client;
        ensure!(n < 250, "out of client addresses");
        self.next_client += 1;
        let name = format!("{PREFIX}-{role}-{n}");
        let ip = Ipv4Addr::new(10, 200, 1, n);
        self.attach(&name, &format!("lbbc{n}"), ip)?;
        // Many short connections: use every port.
        run_cmd(
            in_netns(&name)
                .args([
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_local_port_range=1024 65535",
                ])
                .stdout(Stdio::null()),
        )?;
        Ok(ClientNs { name })
    }

    /// Deletes a client namespace (and every rule in it).
    pub fn remove_client(&mut self, client: &ClientNs) {
        let _ = Command::new("ip")
            .args(["netns", "del", &client.name])
            .status();
        self.netns.retain(|n| n != &client.name);
    }

    fn attach(&mut self, ns: &str, host_if: &str, addr: Ipv4Addr) -> Result<()> {
        self.netns_add(ns)?;
        ip(&[
            "-n", NODE, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", NODE, "link", "set", host_if, "master", "br0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", "10.200.0.1"])?;
        Ok(())
    }

    fn netns_add(&mut self, name: &str) -> Result<()> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        self.netns.push(name.to_owned());
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for mut s in self.servers.drain(..) {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in self.netns.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
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

/// A command run in network namespace `ns` (nsenter keeps /sys as it is,
/// so the cgroup2 and bpffs mounts stay visible).
pub fn in_netns(ns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg("--");
    cmd
}

fn ip(args: &[&str]) -> Result<()> {
    if super::interrupted() {
        bail!("interrupted");
    }
    run_cmd(Command::new("ip").args(args))
}
