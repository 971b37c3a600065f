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
//! - the containers' rlimits are the ones root has here, which it may not
//!   raise (see `lb_testbed::podman::ulimit_args`).
//!
//! Needs root, podman and the image: `cargo xtask test` builds the image and
//! runs this. Not an `e2e_*` target: the VM suite has no container runtime.

#[path = "container/pod.rs"]
mod pod;
#[path = "container/runtime.rs"]
mod runtime;

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_agent::bpf::loader::PinLayout;
use lb_testbed::apiserver::{self, ApiServer};
use lb_testbed::{
    client::{self, http_get, tally},
    env::World,
    manifests::{annotate, ready, service, slice, tcp, typed, udp},
    net::spawn_in,
    podman::ulimit_args,
    wait_for,
};
use pod::{Manifest, Node};
use runtime::{HostBpffs, Running, podman, run_init_containers, text_of};
use serde_json::Value;

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
        lb_testbed::skip(
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
            lb_testbed::skip(
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
            ulimits: ulimit_args(),
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
        let ulimits = ulimit_args();
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
