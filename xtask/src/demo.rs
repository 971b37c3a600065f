//! `cargo xtask demo`: the README's first command.
//!
//! Builds the agent, then, all inside throwaway namespaces and a child
//! cgroup (the machine's own network and root cgroup are not touched):
//! - a "node" network namespace with a bridge, and three "pods" (network
//!   namespaces joined to it by veth pairs) each running a server on :8080
//!   that answers with its name;
//! - the agent on `examples/services.yaml` (ClusterIP 10.96.0.100:80 ->
//!   the pods' :8080, round-robin), attached to the child cgroup;
//! - nine requests to the ClusterIP from a client in that cgroup, each
//!   printed with the pod that answered;
//! - `lb-agent list`.
//!
//! Everything it created is removed at the end, on error, and on Ctrl-C.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    build,
    util::{is_root, run_cmd, workspace_root},
};

const NODE: &str = "lb-demo-node";
const PODS: [(&str, &str); 3] = [
    ("pod-1", "10.200.0.11"),
    ("pod-2", "10.200.0.12"),
    ("pod-3", "10.200.0.13"),
];
const CLUSTER_IP: &str = "10.96.0.100:80";
const BPFFS: &str = "/sys/fs/bpf/lb-demo";
const METRICS: &str = "127.0.0.1:9464";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(clap::Args)]
pub struct Args {
    /// Number of requests to make.
    #[arg(long, default_value_t = 9)]
    pub requests: usize,
}

/// Hidden helpers the demo runs in its namespaces (subcommands of xtask).
#[derive(clap::Subcommand)]
pub enum Helper {
    /// Serve `NAME\n` to every TCP connection on PORT.
    PodServer { name: String, port: u16 },
    /// Join CGROUP, then make N requests to ADDR and print who answered.
    Client {
        cgroup: PathBuf,
        addr: SocketAddr,
        n: usize,
    },
}

pub fn run(args: &Args) -> Result<()> {
    ensure!(
        is_root(),
        "the demo creates network namespaces and loads eBPF programs: run `sudo cargo xtask demo`"
    );
    let built = build::run(&build::Args::default())?;
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("failed to handle Ctrl-C")?;

    let mut demo = Demo::default();
    let result = demo.run(&built.agent, args.requests);
    drop(demo); // clean up before reporting
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("demo: interrupted; everything it created was removed");
        return Ok(());
    }
    result
}

/// What the demo created, removed on drop in reverse order.
#[derive(Default)]
struct Demo {
    netns: Vec<String>,
    children: Vec<Child>,
    agent: Option<(Child, PathBuf)>,
    cgroup: Option<PathBuf>,
}

impl Demo {
    fn run(&mut self, agent_bin: &Path, requests: usize) -> Result<()> {
        let root = workspace_root();
        let services = root.join("examples/services.yaml");
        let xtask = std::env::current_exe().context("cannot find the xtask binary")?;

        step("creating the node namespace and three pods (netns + veth + bridge)");
        self.netns_add(NODE)?;
        ip(&["-n", NODE, "link", "set", "lo", "up"])?;
        ip(&["-n", NODE, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", NODE, "addr", "add", "10.200.0.1/24", "dev", "br0"])?;
        ip(&["-n", NODE, "link", "set", "br0", "up"])?;
        for (i, (pod, addr)) in PODS.iter().enumerate() {
            let ns = format!("lb-demo-{pod}");
            self.netns_add(&ns)?;
            let host_if = format!("veth{}", i + 1);
            ip(&[
                "-n", NODE, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", NODE, "link", "set", &host_if, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "default", "via", "10.200.0.1"])?;
            let server = in_netns(&ns)
                .arg(&xtask)
                .args(["demo-helper", "pod-server", pod, "8080"])
                .spawn()
                .with_context(|| format!("failed to start the server in {ns}"))?;
            self.children.push(server);
            println!("  {pod}: {addr}:8080 in network namespace {ns}");
        }

        let cgroup = cgroup2_root()?.join("lb-demo");
        fs::create_dir_all(&cgroup)
            .with_context(|| format!("failed to create {}", cgroup.display()))?;
        self.cgroup = Some(cgroup.clone());

        step(&format!(
            "starting lb-agent on {} (cgroup {})",
            rel(&services, &root),
            cgroup.display()
        ));
        let log = std::env::temp_dir().join("lb-demo-agent.log");
        let agent = in_netns(NODE)
            .arg(agent_bin)
            .arg("run")
            .arg("--services-file")
            .arg(&services)
            .arg("--cgroup")
            .arg(&cgroup)
            .args(["--bpffs", BPFFS, "--metrics-addr", METRICS])
            .stdout(Stdio::null())
            .stderr(
                fs::File::create(&log)
                    .with_context(|| format!("failed to create {}", log.display()))?,
            )
            .spawn()
            .context("failed to start lb-agent")?;
        self.agent = Some((agent, log.clone()));
        self.wait_ready(&log)?;
        println!("  ready (log: {})", log.display());

        step(&format!(
            "{requests} requests to the ClusterIP {CLUSTER_IP} from a client in the cgroup"
        ));
        let status = in_netns(NODE)
            .arg(&xtask)
            .args(["demo-helper", "client"])
            .arg(&cgroup)
            .args([CLUSTER_IP, &requests.to_string()])
            .status()
            .context("failed to run the client")?;
        ensure!(status.success(), "the client failed ({status})");

        step("lb-agent list (what the data path holds, read from the pinned maps)");
        run_cmd(Command::new(agent_bin).args(["list", "--bpffs", BPFFS]))?;
        Ok(())
    }

    fn netns_add(&mut self, name: &str) -> Result<()> {
        // A namespace left by an interrupted earlier run is replaced.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        self.netns.push(name.to_owned());
        Ok(())
    }

    fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            check_interrupted()?;
            if let Some((child, _)) = self.agent.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "lb-agent exited ({status}):\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if readyz() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "lb-agent was not ready after 30 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Asks /readyz from inside the node namespace.
fn readyz() -> bool {
    in_netns(NODE)
        .arg(std::env::current_exe().unwrap_or_default())
        .args(["demo-helper", "client", "-", METRICS, "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Demo {
    fn drop(&mut self) {
        step("cleaning up");
        if let Some((mut agent, _)) = self.agent.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &agent.id().to_string()])
                .status();
            let _ = agent.wait();
        }
        if let Ok(agent) = build::agent_path(false) {
            let _ = Command::new(agent)
                .args(["cleanup", "--bpffs", BPFFS])
                .status();
        }
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.netns.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if let Some(cgroup) = self.cgroup.take() {
            for _ in 0..50 {
                if fs::remove_dir(&cgroup).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        println!("  removed the namespaces, the cgroup and the pins");
    }
}

/// Runs a hidden helper inside the demo's namespaces.
pub fn helper(h: &Helper) -> Result<()> {
    match h {
        Helper::PodServer { name, port } => {
            let listener =
                TcpListener::bind(("0.0.0.0", *port)).with_context(|| format!("bind :{port}"))?;
            for stream in listener.incoming() {
                let mut s = stream?;
                let _ = s.write_all(format!("{name}\n").as_bytes());
            }
            Ok(())
        }
        Helper::Client { cgroup, addr, n } => {
            if cgroup.as_os_str() != "-" {
                fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
                    .with_context(|| format!("failed to join {}", cgroup.display()))?;
            }
            if *n == 0 {
                // Readiness probe: GET /readyz.
                let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(1))?;
                s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")?;
                let mut r = String::new();
                s.read_to_string(&mut r)?;
                ensure!(
                    r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"),
                    "not ready"
                );
                return Ok(());
            }
            for i in 1..=*n {
                let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(2))
                    .with_context(|| format!("request {i} to {addr} failed"))?;
                let peer = s.peer_addr()?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                println!(
                    "  request {i}: connect({addr}) -> answered by {} (getpeername: {peer})",
                    reply.trim()
                );
            }
            Ok(())
        }
    }
}

/// A command run in network namespace `ns` and nothing else: unlike
/// `ip netns exec`, `nsenter --net` does not remount /sys, so the cgroup2
/// and bpffs mounts stay visible.
fn in_netns(ns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg("--");
    cmd
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    check_interrupted()?;
    run_cmd(Command::new("ip").args(args).stderr(Stdio::inherit()))
}

fn rel(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The cgroup2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo")
        .context("failed to read /proc/self/mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut fields = pre.split_whitespace();
            let (root, mount_point) = (fields.nth(3)?, fields.next()?);
            (post.split_whitespace().next()? == "cgroup2" && root == "/")
                .then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 filesystem is mounted")
}
