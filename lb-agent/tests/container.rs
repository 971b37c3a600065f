//! The image users run, run the way `deploy/daemonset.yaml` runs it.
//!
//! podman (with runc) starts the DaemonSet's init container, then its agent
//! container, from the image `cargo xtask image` put in the local store, with
//! what the manifest gives them, read from the manifest (`container/pod.rs`):
//! command and arguments, user, capabilities (the agent is not privileged),
//! security options, read-only root, memory limit, host network, and the
//! host's bpffs, cgroup2 root and pinned network namespaces where the
//! volumes mount them. The agent watches the test API server with kube-rs;
//! a client in a pod's namespace reaches a ClusterIP; `lb-agent list` and
//! bpftool run in the container; the probes' endpoints answer; stopping the
//! container leaves the data path working; the next pod adopts the pins;
//! `lb-agent cleanup` run from the image, as deploy/README.md says, removes them.
//!
//! What stands in for the node:
//! - its network is the test world's node namespace (the pods' bridge, the
//!   API server on its loopback), in which podman is started;
//! - its `/sys/fs/bpf` is a directory of the test's own, an empty shared
//!   mount point: the init container really mounts bpffs there and its
//!   Bidirectional mount really reaches the host (the machine's bpffs, which
//!   other tests use, is not touched);
//! - its cgroup2 root is the test's child cgroup, never the machine's root;
//! - `/run/netns` is the machine's, where the pods' namespaces are;
//! - the service account's in-cluster credentials are a kubeconfig (the test
//!   API server speaks plain HTTP), mounted read-only, named by `KUBECONFIG`;
//! - the containers' rlimits are the machine's own (root here may not raise
//!   them; a runtime's default is to pass on its own).
//!
//! Needs root, podman and the image: `cargo xtask test` builds the image and
//! runs this. Not an `e2e_*` target: the VM suite has no container runtime.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "container/pod.rs"]
mod pod;
mod support;

use std::{
    collections::BTreeSet,
    fs,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use apiserver::ApiServer;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_agent::bpf::loader::PinLayout;
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use pod::{Manifest, Node};
use serde_json::Value;
use support::{
    agent::run_cli,
    client::{self, http_get, tally},
    env::World,
    manifests::{annotate, ready, service, slice, tcp, typed, udp},
    net::spawn_in,
    unique, wait_for,
};

const VIP: &str = "10.96.0.100";
const NODE_NAME: &str = "node-1";
/// Where the kubeconfig is mounted in the agent's container.
const KUBECONFIG: &str = "/etc/lb-test/kubeconfig";
const TEST: &str = "the_daemonset_pod_serves_cluster_ips_from_the_image_and_hands_over_its_pins";

#[test]
fn the_daemonset_pod_serves_cluster_ips_from_the_image_and_hands_over_its_pins() {
    let Some(env) = Env::new() else {
        return;
    };
    env.web(&[1, 2]);

    // The first pod: its init container mounts bpffs on the host.
    let (first, init) = env.start_pod();
    assert!(
        env.host_bpffs.is_bpffs(),
        "after the init container, the host's bpffs directory holds no bpffs:\n{init}"
    );
    assert_eq!(env.answering(8), set(&["pod-1", "pod-2"]));
    let listed = env.list(&first);
    let http = row(&listed, "TCP");
    assert_eq!(http["service"], "default/web:http", "{listed:#}");
    assert_eq!(
        backends(http),
        set(&["10.200.0.11:8080", "10.200.0.12:8080"]),
        "{listed:#}"
    );
    assert!(http["translated"].as_u64() >= Some(8), "{listed:#}");
    let text = env.metrics();
    assert!(text.lines().any(|l| l == "lb_services 2"), "{text}");
    assert!(text.contains("\nlb_datapath_connect_total "), "{text}");
    assert_eq!(
        env.get(&env.live_path).0,
        200,
        "the liveness probe's endpoint"
    );
    let services_map = env.pins.map(lb_common::map_names::SERVICES);
    let map_id = first.pinned_map_id(&services_map);
    let held = env.udp_answered_by("pod-1");

    // Stopped, as at a rollout: the agent exits on SIGTERM as PID 1, well
    // within the grace period, and the data path stays.
    let grace = Duration::from_secs(env.manifest.grace_seconds());
    let (code, took) = first.stop(grace);
    assert_eq!(code, 0, "the agent's exit status on SIGTERM");
    assert!(
        took < grace,
        "podman stop took {took:?}: killed at the end of the grace period?"
    );
    assert_eq!(
        env.answering(8),
        set(&["pod-1", "pod-2"]),
        "with no agent running"
    );
    env.web(&[2]);
    assert_eq!(
        env.answering(4),
        set(&["pod-1", "pod-2"]),
        "with no agent, the last programmed state stays"
    );

    // The next pod: bpffs is already there; the agent adopts the pins (the
    // same maps), brings them up to date, and closes the pod's UDP socket
    // left on pod-1 (in its namespace, through the /run/netns volume).
    let (second, init) = env.start_pod();
    assert_eq!(
        second.pinned_map_id(&services_map),
        map_id,
        "the second agent made new maps instead of adopting the pinned ones; init said:\n{init}"
    );
    wait_for(
        "the change made while no agent ran",
        Duration::from_secs(5),
        || env.answering(4) == set(&["pod-2"]),
    );
    let listed = env.list(&second);
    assert_eq!(
        backends(row(&listed, "TCP")),
        set(&["10.200.0.12:8080"]),
        "{listed:#}"
    );
    if listed["features"]
        .as_str()
        .is_some_and(|f| f.split(' ').any(|f| f == "sock_destroy"))
    {
        wait_for(
            "the UDP socket on pod-1 to be closed",
            Duration::from_secs(5),
            || {
                let mut buf = [0u8; 64];
                held.send(b"hello")
                    .and_then(|_| held.recv(&mut buf))
                    .is_err()
            },
        );
        let text = env.metrics();
        assert!(
            text.contains("\nlb_sockets_destroyed_total{protocol=\"udp\"} 1\n"),
            "{text}"
        );
    } else {
        support::skip(
            TEST,
            "socket closing: no sock_diag SOCK_DESTROY in this kernel",
        );
    }
    let (code, _) = second.stop(grace);
    assert_eq!(code, 0);

    env.cleanup_from_the_image();
    let after = spawn_in(&env.client, || client::tcp(vip()))
        .join()
        .expect("the client thread");
    assert!(
        after.is_err(),
        "the ClusterIP still answers after cleanup: {after:?}"
    );
}

/// The world, the API server, the node's stand-ins and what the manifest
/// says about the agent. Fields drop in order: the bpffs directory (and the
/// pins on it), the API server, then the world (cgroup, namespaces).
struct Env {
    host_bpffs: HostBpffs,
    api: ApiServer,
    world: World,
    manifest: Manifest,
    node: Node,
    /// The agent's pins, in its container and on the host.
    pins: PinLayout,
    pins_on_host: PathBuf,
    /// The agent's metrics port on the node, and its probes' paths.
    metrics: SocketAddr,
    ready_path: String,
    live_path: String,
    /// pod-3's namespace, where the clients run.
    client: PathBuf,
}

impl Env {
    /// `None` (recorded as skipped) without podman.
    fn new() -> Option<Self> {
        if Command::new("podman").arg("--version").output().is_err() {
            support::skip(
                TEST,
                "podman is not installed (`cargo xtask image` installs it and builds the image)",
            );
            return None;
        }
        let manifest = Manifest::load();
        let agent = manifest.agent();
        let image = agent.image.as_deref().expect("the agent names its image");
        assert!(
            podman(&["image", "exists", image]).status.success(),
            "{image}, the image deploy/daemonset.yaml runs, is not in podman's local store: \
             build it with `cargo xtask image`"
        );
        let (ready_path, port) = pod::http_probe(agent.readiness_probe.as_ref(), "readiness");
        let (live_path, _) = pod::http_probe(agent.liveness_probe.as_ref(), "liveness");
        let metrics = ([127, 0, 0, 1], Manifest::port(agent, &port)).into();
        let pins = PinLayout::new(Path::new(&flag(
            agent.args.as_deref().unwrap_or_default(),
            "bpffs",
        )));

        let world = World::new(3);
        let api = ApiServer::start().expect("start the API server");
        let kubeconfig = world.dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        api.apply(&apiserver::node(NODE_NAME, &["10.200.0.1"]));
        let host_bpffs = HostBpffs::new(world.dir.path());
        let node = Node {
            host_paths: [
                ("/sys/fs/bpf", host_bpffs.path.clone()),
                ("/sys/fs/cgroup", world.cgroup.path.clone()),
                ("/run/netns", PathBuf::from("/run/netns")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            name: NODE_NAME.to_owned(),
            files: vec![(kubeconfig, KUBECONFIG.to_owned())],
            env: vec![("KUBECONFIG".to_owned(), KUBECONFIG.to_owned())],
            ulimits: ulimits(),
        };
        let pins_on_host = manifest.host_path_of(manifest.agent(), &pins.root, &node);
        let client = world.cluster.pod("pod-3").netns.path();
        Some(Self {
            host_bpffs,
            api,
            world,
            manifest,
            node,
            pins,
            pins_on_host,
            metrics,
            ready_path,
            live_path,
            client,
        })
    }

    /// `web` at VIP: TCP 80 -> :8080 and UDP 53 -> :9090, round-robin, on
    /// the pods numbered `pods` (from 1).
    fn web(&self, pods: &[usize]) {
        let ips = self.world.pod_ips();
        let endpoints: Vec<_> = pods.iter().map(|&p| ready(&ips[p - 1])).collect();
        let svc = annotate(
            service(
                "web",
                &[VIP],
                &[tcp("http", 80, 8080), udp("dns", 53, 9090)],
            ),
            "lb-agent.io/algorithm",
            "round-robin",
        );
        let slice = slice(
            "web",
            "web-1",
            &endpoints,
            &[("http", 8080, "TCP"), ("dns", 9090, "UDP")],
        );
        self.api.apply(&typed::<Service>(svc));
        self.api.apply(&typed::<EndpointSlice>(slice));
    }

    /// The pod as the kubelet starts it: the init containers run to
    /// completion, then the agent's container, until its readiness probe's
    /// endpoint answers. Returns the agent and what the init containers said.
    fn start_pod(&self) -> (Running, String) {
        let init = run_init_containers(&self.manifest, &self.node);
        let agent = Running::start(&self.manifest, &self.node);
        let started = Instant::now();
        let mut exited = false;
        wait_for(
            "the agent container to be ready",
            Duration::from_mins(1),
            || {
                exited = !agent.running();
                exited || self.get(&self.ready_path).0 == 200
            },
        );
        assert!(!exited, "the agent container exited:\n{}", agent.logs());
        eprintln!("{} ready after {:?}", agent.name, started.elapsed());
        (agent, init)
    }

    /// GET `path` on the agent's metrics port: the status (0 if no answer)
    /// and the body.
    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics, path).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }

    /// The pods that answer `n` TCP requests from pod-3 to VIP:80.
    fn answering(&self, n: usize) -> BTreeSet<String> {
        spawn_in(&self.client, move || tally(vip(), n).into_keys().collect())
            .join()
            .expect("the client thread")
    }

    /// A connected UDP socket in pod-3's namespace to VIP:53, answered by `pod`.
    fn udp_answered_by(&self, pod: &'static str) -> UdpSocket {
        spawn_in(&self.client, move || {
            for _ in 0..20 {
                let socket = UdpSocket::bind("0.0.0.0:0").expect("bind udp");
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                socket.connect((VIP, 53)).expect("connect udp");
                socket.send(b"hello").expect("send");
                let mut buf = [0u8; 64];
                let n = socket.recv(&mut buf).expect("an answer from the service");
                if String::from_utf8_lossy(&buf[..n]).trim() == pod {
                    return socket;
                }
            }
            panic!("no UDP socket to {VIP}:53 reached {pod} in 20 tries");
        })
        .join()
        .expect("the client thread")
    }

    /// `lb-agent list -o json` in the agent's container.
    fn list(&self, agent: &Running) -> Value {
        let bpffs = self.pins.root.display().to_string();
        let text = agent.exec(&["lb-agent", "list", "-o", "json", "--bpffs", &bpffs]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("list: {e}: {text}"))
    }

    /// Removes the data path as deploy/README.md says: `lb-agent cleanup`
    /// from the image, in a privileged container with the node's root at
    /// /host (what `kubectl debug node --profile=sysadmin` gives).
    fn cleanup_from_the_image(&self) {
        let image = self.manifest.agent().image.as_deref().expect("an image");
        let pins = Path::new("/host").join(self.pins_on_host.strip_prefix("/").expect("absolute"));
        let mut args = vec![
            "run",
            "--rm",
            "--pull=never",
            "--privileged",
            "--network=host",
            "--volume=/:/host:rslave",
        ];
        let ulimits = ulimits();
        args.extend(ulimits.iter().map(String::as_str));
        let pins = pins.display().to_string();
        args.extend([image, "cleanup", "--bpffs", &pins]);
        let out = podman(&args);
        assert!(
            out.status.success(),
            "cleanup from the image: {}",
            text_of(&out)
        );
        assert!(
            !self.pins_on_host.exists(),
            "pins left after cleanup: {}",
            text_of(&out)
        );
    }
}

/// The row of `list` for VIP and `protocol`.
fn row<'a>(listed: &'a Value, protocol: &str) -> &'a Value {
    listed["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| {
            r["frontend"].as_str().is_some_and(|f| f.starts_with(VIP)) && r["protocol"] == protocol
        })
        .unwrap_or_else(|| panic!("no {protocol} row for {VIP}: {listed:#}"))
}

fn vip() -> SocketAddr {
    format!("{VIP}:80").parse().expect("addr")
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(ToString::to_string).collect()
}

fn backends(service: &Value) -> BTreeSet<String> {
    service["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str().map(str::to_owned))
        .collect()
}

/// The value of `--NAME=VALUE` or `--NAME VALUE` in the manifest's args.
fn flag(args: &[String], name: &str) -> String {
    let long = format!("--{name}");
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix(&long)? {
            "" => args.get(i + 1).cloned(),
            rest => rest.strip_prefix('=').map(str::to_owned),
        })
        .unwrap_or_else(|| panic!("the agent's args have no {long}: {args:?}"))
}

/// podman with runc: crun refuses this machine's hybrid cgroup layout.
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .expect("run podman")
}

fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// podman 4.3 lowers its own `RLIMIT_NPROC` to this at start (seen on
/// Debian 12), and a container cannot be given more than podman holds.
/// Root is not held to `RLIMIT_NPROC` anyway (the kernel exempts it).
const PODMAN_NPROC: libc::rlim_t = 32_768;

/// `--ulimit` arguments a container can be given here: this process's open
/// file limit and at most podman's process limit. podman's defaults
/// (1048576) fail where root lacks `CAP_SYS_RESOURCE`, as on this project's
/// machines; a kubelet's runtime passes its own limits on likewise.
fn ulimits() -> Vec<String> {
    let limit = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let ok = unsafe { libc::getrlimit(resource, &raw mut limit) } == 0;
        assert!(ok, "getrlimit: {}", std::io::Error::last_os_error());
        (limit.rlim_cur, limit.rlim_max)
    };
    let (soft, hard) = limit(libc::RLIMIT_NOFILE);
    let mut out = vec![];
    if hard != libc::RLIM_INFINITY {
        out.push(format!("--ulimit=nofile={soft}:{hard}"));
    }
    let (soft, hard) = limit(libc::RLIMIT_NPROC);
    out.push(format!(
        "--ulimit=nproc={}:{}",
        soft.min(PODMAN_NPROC),
        hard.min(PODMAN_NPROC)
    ));
    out
}

/// Runs the pod's init containers in order, each to completion, as the
/// kubelet does before it starts the agent; returns what they printed.
fn run_init_containers(manifest: &Manifest, node: &Node) -> String {
    let mut printed = String::new();
    for container in manifest.init_containers() {
        let name = unique(&format!("lbt-{}-", container.name));
        let args = manifest.run_args(container, node, &name);
        let mut all = vec!["run", "--rm"];
        all.extend(args.iter().map(String::as_str));
        let out = podman(&all);
        assert!(
            out.status.success(),
            "init container {} failed ({}): {}",
            container.name,
            out.status,
            text_of(&out)
        );
        eprintln!(
            "init container {}: {}",
            container.name,
            text_of(&out).trim()
        );
        printed.push_str(&text_of(&out));
    }
    printed
}

/// The agent's container, removed on drop (its log printed if the test
/// failed).
struct Running {
    name: String,
}

impl Running {
    fn start(manifest: &Manifest, node: &Node) -> Self {
        let name = unique("lbt-lb-agent-");
        let args = manifest.run_args(manifest.agent(), node, &name);
        let mut all = vec!["run", "--detach"];
        all.extend(args.iter().map(String::as_str));
        let out = podman(&all);
        assert!(out.status.success(), "podman run failed: {}", text_of(&out));
        Self { name }
    }

    fn running(&self) -> bool {
        let out = podman(&["inspect", "--format={{.State.Running}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    fn logs(&self) -> String {
        text_of(&podman(&["logs", &self.name]))
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        let out = podman(&all);
        assert!(
            out.status.success(),
            "podman exec {args:?}: {}",
            text_of(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The kernel's id of a pinned map, from the image's bpftool.
    fn pinned_map_id(&self, pin: &Path) -> u64 {
        let pin = pin.display().to_string();
        let text = self.exec(&["bpftool", "--json", "map", "show", "pinned", &pin]);
        let shown: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("bpftool: {e}: {text}"));
        shown["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("bpftool printed no id: {text}"))
    }

    /// `podman stop` with the pod's grace period; the exit code and how long it took.
    fn stop(&self, grace: Duration) -> (i64, Duration) {
        let started = Instant::now();
        let out = podman(&["stop", &format!("--time={}", grace.as_secs()), &self.name]);
        let took = started.elapsed();
        assert!(out.status.success(), "podman stop: {}", text_of(&out));
        let out = podman(&["inspect", "--format={{.State.ExitCode}}", &self.name]);
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("exit code of {}: {e}: {}", self.name, text_of(&out)));
        (code, took)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.logs());
        }
        let _ = podman(&["rm", "--force", &self.name]);
    }
}

/// The node's `/sys/fs/bpf`, played by an empty directory that is a shared
/// mount point of its own, so that a Bidirectional mount on it in a
/// container reaches it (on systemd hosts `/` is shared; here it may not
/// be). Drop removes the pins (detaching the programs from the test's
/// cgroup), whatever is mounted on it, and the directory.
struct HostBpffs {
    path: PathBuf,
}

impl HostBpffs {
    fn new(parent: &Path) -> Self {
        let path = parent.join("host-sys-fs-bpf");
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let this = Self { path };
        mount(
            Some(&this.path),
            &this.path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind the bpffs directory onto itself");
        mount(
            None::<&str>,
            &this.path,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("make the bpffs directory a shared mount");
        this
    }

    fn is_bpffs(&self) -> bool {
        statfs(&self.path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
    }
}

impl Drop for HostBpffs {
    fn drop(&mut self) {
        // Only agents' pin directories can be on this bpffs.
        if self.is_bpffs() {
            for entry in fs::read_dir(&self.path).into_iter().flatten().flatten() {
                let _ = run_cli(&["cleanup", "--bpffs", &entry.path().display().to_string()]);
            }
        }
        // bpffs (if the init container mounted it), then the bind mount.
        for _ in 0..3 {
            if umount2(&self.path, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}
