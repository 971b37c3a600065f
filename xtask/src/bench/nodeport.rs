//! "From outside the node": the tests' two-node world
//! ([`lb_testbed::two_nodes`]). The external client dials node-a's node
//! port, whose only endpoint is a pod on node-b, so every connection is
//! translated on node-a (the backend picked, the client masqueraded as
//! `externalTrafficPolicy: Cluster` asks) and crosses node-b. The peers:
//! - **direct**: no load balancer: the client dials the pod's IP, routed
//!   via node-b (the shortest path, the floor the issue names);
//! - **direct via node-a**: the pod's IP routed through node-a both ways
//!   (the client's route and node-b's route back to the client), the links
//!   a translated connection crosses without the translation: the gap to
//!   this one is what translating costs;
//! - **lb-agent**: both nodes' agents, from a services file, with their tc
//!   programs on `eth0`;
//! - **iptables**, **iptables-legacy**, **nftables**: kube-proxy's rules for
//!   the same services ([`Workload`], its node port included) loaded into
//!   both nodes' namespaces.
//!
//! N services are programmed in every peer (N - 1 fillers, as in the
//! `ClusterIP` bench). Every batch gets a world of its own, so no peer meets
//! another's state (iptables' nat table keeps connection tracking on in a
//! namespace once loaded), and the order of the peers rotates every round.
//! `bench-client` in the client's namespace measures `connect()` latency,
//! new connections per second (connect, request, reply, reset) with 1 and 2
//! threads, and bulk throughput on one connection.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use lb_testbed::{
    agent::Agent,
    two_nodes::{TwoNodes, UNDERLAY},
};
use serde::Serialize;
use serde_json::Value;

use super::{
    Peer, bench_client, check_interrupted, flush_rules, latency_samples_us, load_command,
    per_second,
    stats::{Percentiles, median},
    timed,
    workload::Workload,
    world,
};

/// Where the bench server listens in the pod (the service's target port).
const SERVE_PORT: u16 = 5001;
const NODE_PORT: u16 = 30080;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub sizes: Vec<usize>,
    pub peers: Vec<Peer>,
    pub rounds: usize,
    /// `connect()` samples per batch.
    pub latency_count: usize,
    /// Length of a rate or bulk batch.
    pub batch_ms: u64,
    /// Longest a peer may take to program.
    pub budget: Duration,
    pub agent_bin: PathBuf,
    pub client_bin: PathBuf,
}

/// One way from the client to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Peer(Peer),
    DirectViaNodeA,
}

impl Route {
    const fn name(self) -> &'static str {
        match self {
            Self::Peer(peer) => peer.name(),
            Self::DirectViaNodeA => "direct via node-a",
        }
    }
}

/// What one batch measured.
#[derive(Default)]
struct Batch {
    latency_us: Vec<f64>,
    conn_rate_1: f64,
    conn_rate_2: f64,
    bulk_gbit_s: f64,
    errors: u64,
    first_error: Option<String>,
}

/// One route at one size, over every round.
#[derive(Debug, Default, Serialize)]
pub struct Row {
    pub size: usize,
    pub peer: String,
    pub latency_us: Option<Percentiles>,
    /// Medians over the rounds.
    pub conn_rate_1: Option<f64>,
    pub conn_rate_2: Option<f64>,
    pub bulk_gbit_s: Option<f64>,
    pub errors: u64,
    pub notes: Vec<String>,
}

#[derive(Default)]
struct Samples {
    latency_us: Vec<f64>,
    conn_rate_1: Vec<f64>,
    conn_rate_2: Vec<f64>,
    bulk_gbit_s: Vec<f64>,
    errors: u64,
    notes: Vec<String>,
    failed: bool,
}

impl Samples {
    fn add(&mut self, b: Batch) {
        self.latency_us.extend(b.latency_us);
        self.conn_rate_1.push(b.conn_rate_1);
        self.conn_rate_2.push(b.conn_rate_2);
        self.bulk_gbit_s.push(b.bulk_gbit_s);
        self.errors += b.errors;
        if let Some(e) = b.first_error
            && self.notes.is_empty()
        {
            self.notes.push(format!("first error: {e}"));
        }
    }

    fn row(self, size: usize, route: Route) -> Row {
        Row {
            size,
            peer: route.name().to_owned(),
            latency_us: Percentiles::of(&self.latency_us),
            conn_rate_1: median(&self.conn_rate_1),
            conn_rate_2: median(&self.conn_rate_2),
            bulk_gbit_s: median(&self.bulk_gbit_s),
            errors: self.errors,
            notes: self.notes,
        }
    }
}

/// Measures every route at every size and returns a Markdown section (the
/// rows also go to `out/nodeport.json`).
pub fn run(o: &Options, out: &Path) -> Result<String> {
    let mut routes: Vec<Route> = o.peers.iter().map(|&p| Route::Peer(p)).collect();
    if o.peers.contains(&Peer::Direct) {
        routes.insert(1, Route::DirectViaNodeA);
    }
    let mut rows = Vec::new();
    for &size in &o.sizes {
        let mut samples: Vec<Samples> = routes.iter().map(|_| Samples::default()).collect();
        for round in 0..o.rounds {
            for k in 0..routes.len() {
                let i = (k + round) % routes.len();
                if samples[i].failed {
                    continue;
                }
                check_interrupted()?;
                eprintln!(
                    "bench: from outside, N={size}, round {}/{}, {}",
                    round + 1,
                    o.rounds,
                    routes[i].name()
                );
                match in_new_world(o, size, routes[i]) {
                    Ok(batch) => samples[i].add(batch),
                    Err(e) => {
                        check_interrupted()?;
                        eprintln!("bench: {} failed: {e:#}", routes[i].name());
                        samples[i].notes.push(format!("failed: {e:#}"));
                        samples[i].failed = true;
                    }
                }
            }
        }
        rows.extend(
            samples
                .into_iter()
                .zip(&routes)
                .map(|(s, &route)| s.row(size, route)),
        );
    }
    let path = out.join("nodeport.json");
    fs::write(&path, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(markdown(&rows))
}

/// [`batch`] on a thread of its own: the world moves its thread into the
/// client's namespace, and its setup panics (test support) on failure.
fn in_new_world(o: &Options, size: usize, route: Route) -> Result<Batch> {
    let o = o.clone();
    std::thread::spawn(move || batch(&o, size, route))
        .join()
        .map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            anyhow!("the two-node world failed: {why}")
        })?
}

/// The bench server in a pod, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A new world with `route` set up, measured once. Locals drop in reverse:
/// agents and server before the world.
fn batch(o: &Options, size: usize, route: Route) -> Result<Batch> {
    let world = TwoNodes::new(1);
    let pod = world.b.cluster.pods.first().context("node-b has no pod")?;
    let _server = Server(world::serve(
        &pod.netns.name,
        &o.client_bin,
        &SERVE_PORT.to_string(),
    )?);
    let backend = SocketAddrV4::new(pod.ip4, SERVE_PORT);
    let node_port = SocketAddrV4::new(world.a.ip4, NODE_PORT);
    let workload = Workload::new(size, 1, &[pod.ip4]).with_node_port(NODE_PORT, backend);
    let mut agents = Vec::new();
    let target = match route {
        Route::Peer(Peer::Direct) => backend,
        Route::DirectViaNodeA => {
            let via_a = world.a.ip4.to_string();
            let pods_b = world.b.cluster.node.subnet.cidr4();
            world
                .client
                .ip(&["route", "replace", &pods_b, "via", &via_a]);
            world.b.netns().ip(&[
                "route",
                "add",
                &format!("{}/32", world.client4),
                "via",
                &via_a,
            ]);
            // node-a would redirect the client to node-b, the shorter way.
            world
                .client
                .sysctl(&[("net.ipv4.conf.all.accept_redirects", "0")]);
            backend
        }
        Route::Peer(Peer::LbAgent) => {
            let file = world.dir.path().join("services.json");
            fs::write(&file, workload.services_file())
                .with_context(|| format!("failed to write {}", file.display()))?;
            let file = file.display().to_string();
            let nodeport_addresses = UNDERLAY.cidr4();
            for node in world.nodes() {
                let args = [
                    "--services-file",
                    &file,
                    "--node-name",
                    node.name,
                    "--nodeport-addresses",
                    &nodeport_addresses,
                    "--devices",
                    "eth0",
                ];
                agents.push(Agent::spawn_bin_in(
                    &o.agent_bin,
                    &node.netns().name,
                    &node.cgroup.path,
                    &args,
                ));
            }
            for agent in &mut agents {
                agent.wait_ready();
            }
            node_port
        }
        Route::Peer(peer) => {
            for node in world.nodes() {
                let rules = if peer == Peer::Nftables {
                    workload.nft_full() + &Workload::nft_nodeport_ip(node.ip4)
                } else {
                    workload.iptables_full()
                };
                let file = world.dir.path().join(format!("{}.rules", node.name));
                fs::write(&file, rules)
                    .with_context(|| format!("failed to write {}", file.display()))?;
                let ns = &node.netns().name;
                if timed(load_command(peer, ns, &file)?, o.budget)?.is_none() {
                    bail!("did not load within {:?}", o.budget);
                }
            }
            node_port
        }
    };
    let measured = measure(o, &world.client.name, target, backend);
    if let Route::Peer(peer) = route {
        for node in world.nodes() {
            flush_rules(peer, &node.netns().name);
        }
    }
    measured
}

/// Every measurement from the client's namespace `ns` to `target`, once
/// it answers (from `backend`).
fn measure(o: &Options, ns: &str, target: SocketAddrV4, backend: SocketAddrV4) -> Result<Batch> {
    let client = |args: &[String]| bench_client(&o.client_bin, ns, None, args);
    let target = target.to_string();
    let arg = |s: &str| s.to_owned();
    client(&[
        arg("probe"),
        arg("--addr"),
        target.clone(),
        arg("--expect"),
        backend.to_string(),
        arg("--timeout-ms"),
        arg("10000"),
    ])
    .context("the service never answered")?;

    let mut batch = Batch::default();
    let mut tally = |v: &Value| {
        batch.errors += v["errors"].as_u64().unwrap_or(0);
        if let Some(e) = v["first_error"].as_str() {
            batch.first_error.get_or_insert_with(|| e.to_owned());
        }
    };
    let latency = client(&[
        arg("latency"),
        arg("--addrs"),
        target.clone(),
        arg("--count"),
        o.latency_count.to_string(),
    ])?;
    tally(&latency);
    let latency_us = latency_samples_us(&latency);
    let mut rate = |command: &str, threads: usize| -> Result<f64> {
        let v = client(&[
            arg(command),
            arg("--addrs"),
            target.clone(),
            arg("--threads"),
            threads.to_string(),
            arg("--duration-ms"),
            o.batch_ms.to_string(),
        ])?;
        tally(&v);
        Ok(per_second(&v))
    };
    let conn_rate_1 = rate("conn-rate", 1)?;
    let conn_rate_2 = rate("conn-rate", 2)?;
    let bulk_gbit_s = rate("bulk", 1)? * 8.0 / 1e9;
    batch.latency_us = latency_us;
    batch.conn_rate_1 = conn_rate_1;
    batch.conn_rate_2 = conn_rate_2;
    batch.bulk_gbit_s = bulk_gbit_s;
    Ok(batch)
}

fn markdown(rows: &[Row]) -> String {
    let mut md = String::from(
        "\n## From outside the node: a node port with its backend on the other node\n\n\
         The tests' two-node world: an external client on the underlay dials node-a's node port \
         (`externalTrafficPolicy: Cluster`, so masqueraded), whose only endpoint is a pod on \
         node-b; N services programmed. \"direct\" dials the pod's IP via node-b (the shortest \
         path); \"direct via node-a\" routes the pod's IP through node-a both ways, the links a \
         translated connection crosses, without translation. Every batch in a new world, peers \
         alternating. Connections per second: connect, one request and reply, reset.\n\n\
         | N | peer | connect p50 | p99 | conn/s x1 | conn/s x2 | bulk | errors | notes |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} µs"));
        let rate = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.size,
            r.peer,
            us(r.latency_us.map(|p| p.p50)),
            us(r.latency_us.map(|p| p.p99)),
            rate(r.conn_rate_1),
            rate(r.conn_rate_2),
            r.bulk_gbit_s
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2} Gbit/s")),
            r.errors,
            r.notes.join("; "),
        );
    }
    md
}
