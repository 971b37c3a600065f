//! Benchmark, not a test: the agent at N Services x 10 endpoints, from a
//! services file and from the Kubernetes API (the project's list/watch
//! server, kube-rs's real client in the agent).
//!
//! For each source and N:
//! - ready: from the agent's start until its `/readyz` answers;
//! - steady: its RSS once settled after that, and of it the anonymous
//!   memory (`RssAnon`: the heap; the rest is mostly the BPF maps the agent
//!   maps into its memory, which are the kernel's);
//! - reload: the whole state again, every Service's endpoints moved (the
//!   file rewritten and renamed; the API's watches expired, so that the
//!   watchers relist, then one change after the relist): the time until
//!   the change reaches the data path, the peak RSS meanwhile (the kernel's
//!   high-water mark `VmHWM`, reset before by writing 5 to
//!   `/proc/PID/clear_refs`) and the RSS once settled again;
//! - catch-up (API only): the server stopped for 10 s while N/100 slices
//!   and the measured Service's change; from its restart until a
//!   `connect()` reaches the measured Service's new pod.
//!
//! Needs root. Run by `cargo xtask bench`, or:
//! `sudo cargo test --release -p lb-e2e --test agent_scale -- --ignored --nocapture`
//! (`LB_BENCH_SIZES=1000,10000` sets the sizes, `LB_BENCH_SOURCES=file,api`
//! the sources, `LB_AGENT_BIN` the agent; with `LB_BENCH_VERBOSE` set, the
//! API agent's log is printed after the catch-up).

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use lb_testbed::{
    agent::Agent,
    apiserver::{ApiServer, Verb},
    client,
    cluster::Cluster,
    manifests::{self, ready},
    net::Cgroup,
};
use serde_json::{Value, json};

const VIP: &str = "10.127.255.250";
/// How long the agent is left alone before its RSS counts as settled (the
/// file source frees the parsed objects on a thread of their own).
const SETTLE: Duration = Duration::from_secs(3);
const OUTAGE: Duration = Duration::from_secs(10);

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture (cargo xtask bench does)"]
fn agent_memory_readiness_and_catch_up() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let sources = env_list("LB_BENCH_SOURCES", "file,api");
    for n in env_list("LB_BENCH_SIZES", "1000,10000") {
        let n: usize = n.parse().expect("LB_BENCH_SIZES: numbers");
        assert!(n >= 1, "at least the measured Service");
        for source in &sources {
            let row = match source.as_str() {
                "file" => file(n),
                "api" => api(n),
                other => panic!("LB_BENCH_SOURCES: unknown source {other:?}"),
            };
            println!("{row}");
        }
    }
}

/// A node with two pods, this thread in it and in a cgroup of its own, and
/// the agent's arguments for `n` Services.
struct World {
    cluster: Cluster,
    cgroup: Cgroup,
    dir: tempfile::TempDir,
    sizes: [String; 4],
}

impl World {
    fn new(n: usize) -> Self {
        let cluster = Cluster::new(2);
        let cgroup = Cgroup::new();
        Self {
            cluster,
            cgroup,
            dir: tempfile::tempdir().expect("tempdir"),
            sizes: [
                "--max-services".to_owned(),
                (n + 16).max(65_536).to_string(),
                // Ten endpoints each, twice over: the old and the new state
                // of a reload are both in the maps for a moment.
                "--max-backends".to_owned(),
                (n * 22).max(262_144).to_string(),
            ],
        }
    }

    /// The measured Service, its endpoint on pod `pod`.
    fn measured(&self, pod: usize) -> [Value; 2] {
        manifests::http("measured", VIP, &[ready(self.cluster.pods[pod].ip4)])
    }

    /// Starts the agent with `args`, waits until the measured Service is on
    /// pod 0 and the agent has settled; returns it with the time to ready and
    /// its memory then (RSS and heap, MiB).
    fn start_settled(&self, args: &[&str], what: &str) -> (Agent, Duration, (f64, f64)) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--node-name", "node-1"]);
        all.extend(self.sizes.iter().map(String::as_str));
        let started = Instant::now();
        let mut agent = Agent::spawn(&self.cgroup.path, &all);
        agent.wait_ready_within(Duration::from_mins(5));
        let ready = started.elapsed();
        self.until_on(0, what);
        std::thread::sleep(SETTLE);
        let memory = (memory_mib(&agent, "VmRSS"), memory_mib(&agent, "RssAnon"));
        (agent, ready, memory)
    }

    /// Polls until a `connect()` to the measured Service reaches pod `pod`;
    /// returns how long that took.
    fn until_on(&self, pod: usize, what: &str) -> Duration {
        let vip: SocketAddr = format!("{VIP}:80").parse().expect("addr");
        let name = &self.cluster.pods[pod].name;
        let started = Instant::now();
        while !client::tcp(vip).is_ok_and(|r| &r.body == name) {
            assert!(
                started.elapsed() < Duration::from_mins(2),
                "{what}: the measured Service never reached {name}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        started.elapsed()
    }
}

/// `VmRSS` or `VmHWM` of `agent`, in MiB.
fn memory_mib(agent: &Agent, field: &str) -> f64 {
    let pid = agent.pid().expect("agent running");
    let kib = lb_testbed::proc_status_kib(pid, field)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    #[expect(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
    let mib = kib as f64 / 1024.0;
    mib
}

/// Starts the kernel's peak RSS of `agent` again from its current RSS.
fn reset_peak(agent: &Agent) {
    let pid = agent.pid().expect("agent running");
    fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

fn row(source: &str, n: usize, measured: &[(&str, Value)]) -> Value {
    let mut row =
        json!({ "benchmark": "agent_scale", "source": source, "services": n, "endpoints": 10 });
    for (k, v) in measured {
        row[*k] = v.clone();
    }
    row
}

fn secs(d: Duration) -> Value {
    json!(d.as_secs_f64())
}

/// The `n - 1` fillers (moved by `shift`) and the measured Service on pod
/// `pod`.
fn items(world: &World, n: usize, shift: usize, pod: usize) -> Vec<Value> {
    (0..n - 1)
        .flat_map(|i| manifests::filler(i, shift))
        .chain(world.measured(pod))
        .collect()
}

fn file(n: usize) -> Value {
    let world = World::new(n);
    let _in_node = world.cluster.node.enter();
    world.cgroup.join();
    let path = world.dir.path().join("services.json");
    manifests::write(&path, &items(&world, n, 0, 0));
    let file_mib = file_mib(&path);
    let path_arg = path.display().to_string();
    let (agent, ready, (steady, steady_anon)) =
        world.start_settled(&["--services-file", &path_arg], "the first load");

    // Staged beside it first: the clock starts at the rename.
    let staged = world.dir.path().join("staged.json");
    manifests::write(&staged, &items(&world, n, 1, 1));
    reset_peak(&agent);
    let renamed = Instant::now();
    fs::rename(&staged, &path).expect("rename the services file");
    world.until_on(1, "the reload");
    let reload = renamed.elapsed();
    std::thread::sleep(SETTLE);
    row(
        "file",
        n,
        &[
            ("file_mib", json!(file_mib)),
            ("ready_s", secs(ready)),
            ("steady_rss_mib", json!(steady)),
            ("steady_anon_mib", json!(steady_anon)),
            ("reload_s", secs(reload)),
            ("reload_peak_rss_mib", json!(memory_mib(&agent, "VmHWM"))),
            ("after_rss_mib", json!(memory_mib(&agent, "VmRSS"))),
            ("after_anon_mib", json!(memory_mib(&agent, "RssAnon"))),
        ],
    )
}

fn file_mib(path: &Path) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "file sizes fit an f64")]
    let mib = fs::metadata(path).expect("services file").len() as f64 / 1_048_576.0;
    mib
}

fn api(n: usize) -> Value {
    let world = World::new(n);
    let _in_node = world.cluster.node.enter();
    world.cgroup.join();
    let api = ApiServer::start().expect("API server");
    let kubeconfig = world.dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    for i in 0..n - 1 {
        manifests::apply(&api, &manifests::filler(i, 0));
    }
    manifests::apply(&api, &world.measured(0));
    let kubeconfig = kubeconfig.display().to_string();
    let (agent, ready, (steady, steady_anon)) =
        world.start_settled(&["--kubeconfig", &kubeconfig], "the first list");

    // Every filler moved, the watches expired: the watchers relist all of
    // it. The measured change comes after the relist, so it is programmed
    // once the relist is.
    for i in 0..n - 1 {
        manifests::apply(&api, &manifests::filler(i, 1));
    }
    reset_peak(&agent);
    let _ = api.take_requests();
    let expired = Instant::now();
    api.expire_watches();
    lb_testbed::wait_for("the watchers to relist", Duration::from_mins(2), || {
        let requests = api.requests();
        ["services", "endpointslices"].iter().all(|r| {
            requests
                .iter()
                .skip_while(|q| !q.is(Verb::List, r))
                .any(|q| q.is(Verb::Watch, r))
        })
    });
    manifests::apply(&api, &world.measured(1));
    world.until_on(1, "the relist");
    let reload = expired.elapsed();
    std::thread::sleep(SETTLE);
    let peak = memory_mib(&agent, "VmHWM");
    let after = memory_mib(&agent, "VmRSS");
    let after_anon = memory_mib(&agent, "RssAnon");

    api.stop();
    for i in 0..(n / 100).min(n - 1) {
        manifests::apply(&api, &manifests::filler(i, 2));
    }
    manifests::apply(&api, &world.measured(0));
    std::thread::sleep(OUTAGE);
    api.restart().expect("restart the API server");
    let catch_up = world.until_on(0, "the catch-up");
    if std::env::var_os("LB_BENCH_VERBOSE").is_some() {
        eprintln!("{}", agent.log());
    }
    row(
        "api",
        n,
        &[
            ("ready_s", secs(ready)),
            ("steady_rss_mib", json!(steady)),
            ("steady_anon_mib", json!(steady_anon)),
            ("reload_s", secs(reload)),
            ("reload_peak_rss_mib", json!(peak)),
            ("after_rss_mib", json!(after)),
            ("after_anon_mib", json!(after_anon)),
            ("catch_up_s", secs(catch_up)),
        ],
    )
}
