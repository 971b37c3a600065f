//! `cargo xtask bench`: this project side by side with kube-proxy's
//! iptables and nftables modes, and with no load balancer at all.
//!
//! For each size N (services programmed), in throwaway namespaces (see
//! [`world`]):
//! - **program**: the time to program all N services from nothing: the
//!   agent from a file write to its `synced` log line; kube-proxy's rule
//!   sets (generated in kube-proxy's own structure, see [`workload`]) with
//!   `iptables-restore` / `nft -f` into a fresh client namespace. A load
//!   that takes longer than `--budget` is stopped and reported as such;
//! - **data path**, measured by `bench-client` (release build) in each
//!   peer's client namespace, in alternating batches so that the shared
//!   machine's noise falls on every peer alike: `connect()` latency to the
//!   measured service, new connections per second with 1 and 2 threads,
//!   requests per second on a kept-alive connection. "direct" connects to
//!   the pod IPs: the floor;
//! - **endpoint change -> data path**: a probe connects to the churn
//!   service again and again while its endpoint moves to another pod; the
//!   time from the change (file rename; start of `iptables-restore` /
//!   `nft -f` of what kube-proxy's partial sync writes) to the first
//!   connection that reaches the new pod;
//! - the agent's resident memory and its maps' kernel memory, and its
//!   programming time for N services with `--program-endpoints` endpoints;
//! - then, in sections of their own: endpoint changes through the
//!   Kubernetes API ([`api`]), closing the sockets of a removed backend
//!   ([`sockets`]), and traffic from outside the node to a node port in the
//!   two-node world ([`nodeport`]).
//!
//! Results go to `target/bench/<UTC time>/`: `results.md` (tables),
//! `results.json` (everything), `bench.svg` (latency and programming time
//! against N).

mod agent;
mod api;
mod ignored;
mod nodeport;
mod report;
mod scale;
mod sockets;
mod stats;
mod workload;
mod world;

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use lb_testbed::{monotonic_ns, net::in_netns};
use serde::Serialize;
use serde_json::Value;

use self::{
    agent::{Agent, EMPTY, Memory, Programmed},
    stats::{Percentiles, median},
    workload::{CHURN_VIP, MEASURED_VIP, SERVICE_PORT, TARGET_PORT, Workload},
    world::{ClientNs, PODS, World},
};
use crate::{
    build, setup,
    util::{cmd_output, is_root, run_cmd, workspace_root},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct Args {
    /// Numbers of services to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    pub sizes: Vec<usize>,
    /// A smoke run: fewer and shorter batches (about a minute for `--sizes 1,1000`).
    #[arg(long)]
    pub quick: bool,
    /// Peers to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,lb-agent,iptables,iptables-legacy,nftables"
    )]
    pub peers: Vec<Peer>,
    /// Endpoints per service for the data-path measurements.
    #[arg(long, default_value_t = 3)]
    pub endpoints: usize,
    /// Endpoints per service for the agent's programming target (N x this).
    #[arg(long, default_value_t = 10)]
    pub program_endpoints: usize,
    /// Seconds a peer may take to program one size (or apply one change).
    #[arg(long, default_value_t = 120)]
    pub budget: u64,
    /// Rounds of alternating batches (default: 8, or 3 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Record the agent with `perf` while it programs N x --program-endpoints
    /// services (N >= 10,000); the reports go to the results directory.
    #[arg(long)]
    pub profile: bool,
    /// Results directory [default: target/bench/<UTC time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this lb-agent binary instead of building one (release) first.
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
    /// Skip the endpoint-change measurement through the Kubernetes API.
    #[arg(long)]
    pub no_api: bool,
    /// Closing the sockets of a removed backend: measure it after the rest
    /// (`run`), not at all (`skip`), or alone (`only`).
    #[arg(long, value_enum, default_value_t = Section::Run)]
    pub sockets: Section,
    /// Traffic from outside the node to a node port, in the two-node world:
    /// after the rest (`run`), not at all (`skip`), or alone (`only`).
    #[arg(long, value_enum, default_value_t = Section::Run)]
    pub nodeport: Section,
    /// Numbers of services programmed for the node-port section.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    pub nodeport_sizes: Vec<usize>,
    /// The agent at scale, from a services file and from the API (ready,
    /// steady and peak memory, reloads, catch-up after an outage): after
    /// the rest (`run`), not at all (`skip`), or alone (`only`).
    #[arg(long, value_enum, default_value_t = Section::Run)]
    pub scale: Section,
    /// Numbers of services for the scale section.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub scale_sizes: Vec<usize>,
}

/// Whether a section of its own is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Run,
    Skip,
    Only,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// The pod IPs, no load balancer: the floor.
    Direct,
    /// This project.
    LbAgent,
    /// kube-proxy's iptables mode with the system's `iptables-restore`
    /// (the `nf_tables` backend on current distributions).
    Iptables,
    /// kube-proxy's iptables mode with `iptables-legacy-restore` (`x_tables`).
    IptablesLegacy,
    /// kube-proxy's nftables mode.
    Nftables,
}

impl Peer {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::LbAgent => "lb-agent",
            Self::Iptables => "iptables",
            Self::IptablesLegacy => "iptables-legacy",
            Self::Nftables => "nftables",
        }
    }
}

/// How much to measure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Settings {
    pub rounds: usize,
    pub latency_per_batch: usize,
    pub rate_batch_ms: u64,
    pub changes: usize,
    /// Seconds of endpoint changes per peer and size, at most.
    pub change_seconds: u64,
    pub budget_s: u64,
    pub endpoints: usize,
    pub program_endpoints: usize,
}

/// What one peer did at one size.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerResult {
    pub peer: String,
    /// Programming all N services from nothing, per sample.
    pub program_ms: Vec<f64>,
    /// The load did not finish within the budget (it was stopped).
    pub program_timed_out: bool,
    pub latency_us: Option<Percentiles>,
    pub latency_errors: u64,
    /// New connections per second (median over batches), 1 and 2 threads.
    pub conn_rate_1: Option<f64>,
    pub conn_rate_2: Option<f64>,
    /// Requests per second on one kept-alive connection (median over batches).
    pub rps: Option<f64>,
    pub rate_errors: u64,
    /// Endpoint change -> first connection to the new endpoint.
    pub change_ms: Option<Percentiles>,
    /// The reload itself: `iptables-restore` / `nft -f` run time, or the agent's sync.
    pub change_reload_ms: Option<Percentiles>,
    pub notes: Vec<String>,
}

/// The agent at one size, beyond the data path.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentResult {
    pub capacity: (u32, u32),
    pub program: Vec<Programmed>,
    pub memory: Memory,
    pub program_wide: Vec<Programmed>,
    pub memory_wide: Memory,
    pub services_file_mib: f64,
    pub services_file_wide_mib: f64,
    /// The agent's CPU use while nothing changed (during the data-path
    /// batches), in percent of one core.
    pub idle_cpu_percent: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    pub size: usize,
    pub peers: Vec<PeerResult>,
    pub agent: Option<AgentResult>,
}

impl SizeResult {
    pub fn peer(&self, peer: Peer) -> Option<&PeerResult> {
        self.peers.iter().find(|p| p.peer == peer.name())
    }
}

pub fn run(args: &Args) -> Result<()> {
    ensure!(
        is_root(),
        "the benchmark creates network namespaces, cgroups and BPF programs: run `sudo cargo xtask bench`"
    );
    ensure!(!args.sizes.is_empty(), "--sizes is empty");
    ensure!(
        args.sizes.iter().chain(&args.scale_sizes).all(|&n| n >= 1),
        "every size must be at least 1"
    );
    ensure!(
        args.endpoints >= 1 && args.program_endpoints >= 1,
        "endpoints must be at least 1"
    );
    check_tools()?;
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let settings = settings(args);

    let agent_bin = agent_binary(args)?;
    if args.sockets == Section::Only {
        return section_only(args, "closing the sockets of a removed backend", |out| {
            sockets::run(socket_cases(args), &agent_bin, out)
        });
    }
    if args.scale == Section::Only {
        return section_only(args, "the agent at scale", |out| {
            scale::run(&scale_sizes(args), &agent_bin, out)
        });
    }
    let client_bin = build_client()?;
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("failed to handle Ctrl-C")?;
    if args.nodeport == Section::Only {
        let options = nodeport_options(args, &agent_bin, &client_bin);
        return section_only(args, "traffic from outside the node", |out| {
            nodeport::run(&options, out)
        });
    }

    let started = report::utc_now();
    let out = args.out.clone().unwrap_or_else(|| {
        workspace_root()
            .join("target/bench")
            .join(started.replace(':', ""))
    });
    fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    let command = report::command_line();
    let load_before = report::loadavg();
    eprintln!(
        "bench: load average before: {load_before}; results go to {}",
        out.display()
    );

    let clock = Instant::now();
    let mut world = World::new(&client_bin)?;
    let progress = progress_bar(&sizes, args, &settings);
    let mut results = Vec::new();
    let mut failure = None;
    for (seq, &size) in sizes.iter().enumerate() {
        let mut bench = SizeBench {
            world: &mut world,
            agent_bin: &agent_bin,
            args,
            settings,
            size,
            seq,
            progress: &progress,
            out: &out,
        };
        match bench.run() {
            Ok(r) => results.push(r),
            Err(e) => {
                failure = Some(e.context(format!("size {size}")));
                break;
            }
        }
    }
    progress.finish_and_clear();
    drop(world);
    if interrupted() {
        eprintln!("bench: interrupted; everything it created was removed");
    }

    let meta = report::Meta {
        command,
        started,
        took_s: clock.elapsed().as_secs_f64(),
        load_before,
        load_after: report::loadavg(),
        machine: report::machine(),
        settings,
        agent: agent_bin.display().to_string(),
    };
    if !results.is_empty() {
        let mut written = report::write(&out, &meta, &results)?;
        if failure.is_none() && !interrupted() {
            let bins = (agent_bin.as_path(), client_bin.as_path());
            failure = add_sections(args, &sizes, bins, &out, &mut written).err();
        }
        println!("{written}");
        eprintln!("bench: results in {}", out.display());
    }
    failure.map_or(Ok(()), Err)
}

/// `--agent-bin`, or the agent built in release.
fn agent_binary(args: &Args) -> Result<PathBuf> {
    match &args.agent_bin {
        Some(path) => {
            ensure!(
                path.exists(),
                "--agent-bin {} does not exist",
                path.display()
            );
            Ok(path.clone())
        }
        None => Ok(build::run(&build::Args { release: true })?.agent),
    }
}

/// The peers' tools must be there (installed if missing).
fn check_tools() -> Result<()> {
    setup::ensure(&[setup::Need::Netns, setup::Need::Peers])?;
    for tool in [
        "ip",
        "nsenter",
        "iptables-restore",
        "iptables-legacy-restore",
        "nft",
        "sysctl",
    ] {
        which::which(tool)
            .with_context(|| format!("{tool} is not installed; run `cargo xtask setup`"))?;
    }
    Ok(())
}

/// The sections after the main tables, as `args` asks: API, sockets, node
/// port. `bins`: the agent and `bench-client`.
fn add_sections(
    args: &Args,
    sizes: &[usize],
    (agent_bin, client_bin): (&Path, &Path),
    out: &Path,
    written: &mut String,
) -> Result<()> {
    if !args.no_api {
        add_api_section(args, sizes, agent_bin, out, written)?;
    }
    if args.sockets == Section::Run {
        check_interrupted()?;
        add_section(out, written, || {
            sockets::run(socket_cases(args), agent_bin, out)
        })?;
    }
    if args.scale == Section::Run {
        check_interrupted()?;
        add_section(out, written, || {
            scale::run(&scale_sizes(args), agent_bin, out)
        })?;
    }
    if args.nodeport == Section::Run {
        check_interrupted()?;
        let options = nodeport_options(args, agent_bin, client_bin);
        add_section(out, written, || nodeport::run(&options, out))?;
    }
    Ok(())
}

/// Measures endpoint changes through the Kubernetes API and adds them to
/// `results.md`.
fn add_api_section(
    args: &Args,
    sizes: &[usize],
    agent_bin: &Path,
    out: &Path,
    written: &mut String,
) -> Result<()> {
    eprintln!("bench: endpoint changes through the Kubernetes API");
    let changes = if args.quick { 20 } else { 200 };
    add_section(out, written, || api::run(sizes, changes, agent_bin, out))
}

/// Appends the section `measure` returns to `results.md`.
fn add_section(
    out: &Path,
    written: &mut String,
    measure: impl FnOnce() -> Result<String>,
) -> Result<()> {
    written.push_str(&measure()?);
    let md_path = out.join("results.md");
    fs::write(&md_path, &*written).with_context(|| format!("failed to write {}", md_path.display()))
}

/// `namespaces x sockets per namespace` for the socket-closing section.
const fn socket_cases(args: &Args) -> &'static str {
    if args.quick {
        "10x10,100x20"
    } else {
        "10x10,100x20,200x20,200x50"
    }
}

/// `--sockets only` or `--nodeport only`: one section alone, `measure`d
/// into the results directory it is given.
fn section_only(
    args: &Args,
    title: &str,
    measure: impl FnOnce(&Path) -> Result<String>,
) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| {
        workspace_root()
            .join("target/bench")
            .join(report::utc_now().replace(':', ""))
    });
    fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    eprintln!("bench: {title}; results go to {}", out.display());
    let mut written = format!("# lb-agent: {title}\n\n{}\n", report::command_line());
    add_section(&out, &mut written, || measure(&out))?;
    println!("{written}");
    Ok(())
}

/// The scale section's sizes: sorted, once each.
fn scale_sizes(args: &Args) -> Vec<usize> {
    let mut sizes = args.scale_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// The node-port section's settings.
fn nodeport_options(args: &Args, agent_bin: &Path, client_bin: &Path) -> nodeport::Options {
    let s = settings(args);
    let mut sizes = args.nodeport_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    nodeport::Options {
        sizes,
        peers: args.peers.clone(),
        rounds: s.rounds,
        latency_count: s.latency_per_batch,
        batch_ms: s.rate_batch_ms,
        budget: Duration::from_secs(args.budget),
        agent_bin: agent_bin.to_path_buf(),
        client_bin: client_bin.to_path_buf(),
    }
}

/// How much to measure, from the flags.
fn settings(args: &Args) -> Settings {
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 8 });
    Settings {
        rounds,
        latency_per_batch: if args.quick { 300 } else { 2000 },
        rate_batch_ms: if args.quick { 300 } else { 700 },
        changes: if args.quick { 5 } else { 20 },
        change_seconds: if args.quick { 15 } else { 60 },
        budget_s: args.budget,
        endpoints: args.endpoints,
        program_endpoints: args.program_endpoints,
    }
}

/// Builds `bench-client` in release mode.
fn build_client() -> Result<PathBuf> {
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "xtask",
        "--bin",
        "bench-client",
    ]))?;
    let bin = root.join("target/release/bench-client");
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

fn progress_bar(sizes: &[usize], args: &Args, s: &Settings) -> ProgressBar {
    let peers = args.peers.len() as u64;
    let rounds = s.rounds as u64;
    let per_size = peers + rounds * peers * 4 + s.changes as u64 + 1;
    let bar = ProgressBar::new(per_size * sizes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// One peer at one size: where its client runs and what it connects to.
struct PeerRun {
    peer: Peer,
    client: Option<ClientNs>,
    cgroup: Option<PathBuf>,
    targets: Vec<SocketAddrV4>,
    usable: bool,
    result: PeerResult,
    latency: Vec<f64>,
    conn1: Vec<f64>,
    conn2: Vec<f64>,
    rps: Vec<f64>,
    change: Vec<f64>,
    reload: Vec<f64>,
    change_time: Duration,
}

struct SizeBench<'a> {
    world: &'a mut World,
    agent_bin: &'a Path,
    args: &'a Args,
    settings: Settings,
    size: usize,
    seq: usize,
    progress: &'a ProgressBar,
    out: &'a Path,
}

impl SizeBench<'_> {
    fn say(&self, what: &str) {
        self.progress
            .set_message(format!("N={}: {what}", self.size));
    }

    fn budget(&self) -> Duration {
        Duration::from_secs(self.settings.budget_s)
    }

    fn run(&mut self) -> Result<SizeResult> {
        let s = self.settings;
        let mut workload = Workload::new(self.size, s.endpoints, &PODS);
        let dir = self.world.dir.clone();
        let mut agent = None;
        let mut agent_result = None;
        let mut runs = Vec::new();
        for &peer in &self.args.peers {
            check_interrupted()?;
            self.say(&format!("programming {}", peer.name()));
            let run = match peer {
                Peer::Direct => self.plain_peer(peer, self.world.base_cgroup.clone())?,
                Peer::LbAgent => match self.agent_peer(&workload) {
                    Ok((a, r, run)) => {
                        agent = Some(a);
                        agent_result = Some(r);
                        run
                    }
                    Err(e) => {
                        check_interrupted()?;
                        let mut run = self.plain_peer(peer, self.world.cgroup.clone())?;
                        run.usable = false;
                        let why = format!("{e:#}");
                        self.progress
                            .println(format!("N={}: lb-agent failed: {why}", self.size));
                        run.result.notes.push(format!(
                            "failed: {}",
                            why.lines().next().unwrap_or_default()
                        ));
                        run
                    }
                },
                Peer::Iptables | Peer::IptablesLegacy | Peer::Nftables => {
                    let text = if peer == Peer::Nftables {
                        workload.nft_full()
                    } else {
                        workload.iptables_full()
                    };
                    let file = dir.join(format!("{}-{}.rules", peer.name(), self.size));
                    fs::write(&file, text)
                        .with_context(|| format!("failed to write {}", file.display()))?;
                    let run = self.rules_peer(peer, &file)?;
                    let _ = fs::remove_file(&file);
                    run
                }
            };
            runs.push(run);
            self.progress.inc(1);
        }

        let idle_from = agent.as_ref().map(|a| (a.cpu_seconds(), Instant::now()));
        self.data_path(&mut runs)?;
        if let (Some(a), Some(r), Some((Ok(cpu0), at))) =
            (agent.as_ref(), agent_result.as_mut(), idle_from)
        {
            r.idle_cpu_percent = (a.cpu_seconds()? - cpu0) / at.elapsed().as_secs_f64() * 100.0;
        }
        self.changes(&mut workload, &mut runs, agent.as_mut())?;
        if let (Some(a), Some(r)) = (agent.as_mut(), agent_result.as_mut()) {
            self.agent_wide(a, r)?;
        }
        self.progress.inc(1);
        drop(agent);
        self.say("removing the client namespaces");
        for run in &runs {
            if let Some(client) = &run.client {
                flush_rules(run.peer, &client.name);
                self.world.remove_client(client);
            }
        }
        Ok(SizeResult {
            size: self.size,
            peers: runs.into_iter().map(finish).collect(),
            agent: agent_result,
        })
    }

    /// A peer whose client needs no rules (direct; the agent's, in a cgroup).
    fn plain_peer(&mut self, peer: Peer, cgroup: PathBuf) -> Result<PeerRun> {
        let client = self.world.client(peer.name())?;
        let targets = if peer == Peer::Direct {
            PODS.iter()
                .map(|&ip| SocketAddrV4::new(ip, TARGET_PORT))
                .collect()
        } else {
            vec![SocketAddrV4::new(MEASURED_VIP, SERVICE_PORT)]
        };
        Ok(PeerRun {
            peer,
            client: Some(client),
            cgroup: Some(cgroup),
            targets,
            usable: true,
            result: PeerResult {
                peer: peer.name().to_owned(),
                ..PeerResult::default()
            },
            latency: Vec::new(),
            conn1: Vec::new(),
            conn2: Vec::new(),
            rps: Vec::new(),
            change: Vec::new(),
            reload: Vec::new(),
            change_time: Duration::ZERO,
        })
    }

    /// Starts the agent on an empty file and programs the size into it.
    fn agent_peer(&mut self, workload: &Workload) -> Result<(Agent, AgentResult, PeerRun)> {
        let s = self.settings;
        let wide = s.endpoints.max(s.program_endpoints);
        let capacity = capacity(self.size + 1, wide);
        let mut agent = Agent::start(self.agent_bin, self.world, self.seq, capacity)?;
        let text = workload.services_file();
        let mut result = AgentResult {
            capacity,
            #[expect(clippy::cast_precision_loss, reason = "file sizes fit an f64")]
            services_file_mib: text.len() as f64 / 1_048_576.0,
            ..AgentResult::default()
        };
        let samples = if self.size <= 10_000 { 3 } else { 1 };
        for i in 0..samples {
            check_interrupted()?;
            if i > 0 {
                agent.program(EMPTY, self.budget())?;
            }
            result.program.push(agent.program(&text, self.budget())?);
        }
        result.memory = agent.memory()?;
        let mut run = self.plain_peer(Peer::LbAgent, self.world.cgroup.clone())?;
        run.result.program_ms = result.program.iter().map(|p| p.end_to_end_ms).collect();
        Ok((agent, result, run))
    }

    /// Loads kube-proxy's rules into a fresh client namespace, timed; for
    /// small sizes three times (each into a new namespace).
    fn rules_peer(&mut self, peer: Peer, file: &Path) -> Result<PeerRun> {
        let samples = if self.size <= 1000 { 3 } else { 1 };
        let mut times = Vec::new();
        let mut run = self.plain_peer(peer, self.world.base_cgroup.clone())?;
        run.targets = vec![SocketAddrV4::new(MEASURED_VIP, SERVICE_PORT)];
        for i in 0..samples {
            check_interrupted()?;
            if i > 0 {
                if let Some(old) = run.client.take() {
                    flush_rules(peer, &old.name);
                    self.world.remove_client(&old);
                }
                run.client = Some(self.world.client(peer.name())?);
            }
            let client = run.client.as_ref().context("client namespace")?;
            let started = Instant::now();
            match timed(load_command(peer, &client.name, file)?, self.budget()) {
                Ok(Some(took)) => times.push(took.as_secs_f64() * 1000.0),
                Err(e) => {
                    check_interrupted()?;
                    run.usable = false;
                    let why = format!("{e:#}");
                    self.progress.println(format!(
                        "N={}: {} failed: {why}",
                        self.size,
                        peer.name()
                    ));
                    // The tool's own message: after the command and its status.
                    let last = why
                        .rsplit("): ")
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    run.result.notes.push(format!(
                        "load failed after {:.0} s: {last}",
                        started.elapsed().as_secs_f64()
                    ));
                    break;
                }
                Ok(None) => {
                    run.usable = false;
                    run.result.program_timed_out = true;
                    run.result.notes.push(format!(
                        "did not finish loading within {} s (stopped)",
                        self.settings.budget_s
                    ));
                    break;
                }
            }
        }
        run.result.program_ms = times;
        Ok(run)
    }

    /// Alternating batches of every measurement over the usable peers.
    fn data_path(&self, runs: &mut [PeerRun]) -> Result<()> {
        let s = self.settings;
        let usable: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].usable).collect();
        for round in 0..s.rounds {
            // Rotate the order so that no peer always goes first.
            let order: Vec<usize> = (0..usable.len())
                .map(|k| usable[(k + round) % usable.len()])
                .collect();
            for &i in &order {
                let v = self.batch(
                    &runs[i],
                    round,
                    "connect() latency",
                    "latency",
                    &["--count".into(), s.latency_per_batch.to_string()],
                )?;
                let run = &mut runs[i];
                run.result.latency_errors += v["errors"].as_u64().unwrap_or(0);
                run.latency.extend(latency_samples_us(&v));
                self.progress.inc(1);
            }
            for (what, threads) in [("conn-rate", 1), ("conn-rate", 2), ("rps", 1)] {
                for &i in &order {
                    let v = self.batch(
                        &runs[i],
                        round,
                        &format!("{what} x{threads}"),
                        what,
                        &[
                            "--threads".into(),
                            threads.to_string(),
                            "--duration-ms".into(),
                            s.rate_batch_ms.to_string(),
                        ],
                    )?;
                    let run = &mut runs[i];
                    run.result.rate_errors += v["errors"].as_u64().unwrap_or(0);
                    let rate = per_second(&v);
                    match (what, threads) {
                        ("rps", _) => run.rps.push(rate),
                        (_, 1) => run.conn1.push(rate),
                        _ => run.conn2.push(rate),
                    }
                    self.progress.inc(1);
                }
            }
        }
        Ok(())
    }

    /// One batch of `bench-client <command> <args> --addrs <targets>` for
    /// one peer, announced as `what` in round `round`.
    fn batch(
        &self,
        run: &PeerRun,
        round: usize,
        what: &str,
        command: &str,
        args: &[String],
    ) -> Result<Value> {
        check_interrupted()?;
        self.say(&format!(
            "{what}, round {}/{}, {}",
            round + 1,
            self.settings.rounds,
            run.peer.name()
        ));
        let mut full = vec![command.to_owned()];
        full.extend_from_slice(args);
        full.extend(["--addrs".to_owned(), addrs(&run.targets)]);
        client_json(self.world, run, &full)
    }

    /// Moves the churn service's endpoint between pod 1 and pod 2, timing
    /// each change to the data path, peers alternating.
    fn changes(
        &self,
        workload: &mut Workload,
        runs: &mut [PeerRun],
        mut agent: Option<&mut Agent>,
    ) -> Result<()> {
        let s = self.settings;
        let dir = &self.world.dir;
        let ipt_file = dir.join("iptables-change.rules");
        let nft_file = dir.join("nftables-change.rules");
        for k in 0..s.changes {
            check_interrupted()?;
            let to = SocketAddrV4::new(PODS[(k + 1) % 2], TARGET_PORT);
            let (before, after) = workload.move_churn(to);
            let active: Vec<usize> = (0..runs.len())
                .filter(|&i| {
                    let r = &runs[i];
                    r.usable
                        && r.peer != Peer::Direct
                        && r.change_time < Duration::from_secs(s.change_seconds)
                })
                .collect();
            if active
                .iter()
                .any(|&i| matches!(runs[i].peer, Peer::Iptables | Peer::IptablesLegacy))
            {
                fs::write(&ipt_file, workload.iptables_change(&before, &after))
                    .with_context(|| format!("failed to write {}", ipt_file.display()))?;
            }
            if active.iter().any(|&i| runs[i].peer == Peer::Nftables) {
                fs::write(&nft_file, Workload::nft_change(&before, &after))
                    .with_context(|| format!("failed to write {}", nft_file.display()))?;
            }
            let agent_text = active
                .iter()
                .any(|&i| runs[i].peer == Peer::LbAgent)
                .then(|| workload.services_file());
            for j in 0..active.len() {
                let i = active[(j + k) % active.len()];
                self.say(&format!(
                    "endpoint change {}/{}, {}",
                    k + 1,
                    s.changes,
                    runs[i].peer.name()
                ));
                let started = Instant::now();
                let (took, reload) = match runs[i].peer {
                    Peer::LbAgent => {
                        let agent = agent.as_deref_mut().context("the agent is not running")?;
                        agent.stage(agent_text.as_deref().unwrap_or_default())?;
                        self.one_change(&runs[i], to, || {
                            agent.commit()?;
                            Ok(Some(Duration::ZERO))
                        })
                        .and_then(|(took, _)| Ok((took, agent.wait_synced(self.budget())?)))?
                    }
                    peer => {
                        let client = runs[i].client.clone().context("client namespace")?;
                        let file = if peer == Peer::Nftables {
                            &nft_file
                        } else {
                            &ipt_file
                        };
                        let (took, reload) = self.one_change(&runs[i], to, || {
                            timed(load_command(peer, &client.name, file)?, self.budget())
                        })?;
                        (took, reload.unwrap_or(f64::NAN))
                    }
                };
                let run = &mut runs[i];
                run.change_time += started.elapsed();
                match took {
                    Some(ms) => {
                        run.change.push(ms);
                        run.reload.push(reload);
                    }
                    None => run.result.notes.push(format!(
                        "an endpoint change did not reach the data path within {} s",
                        s.budget_s
                    )),
                }
            }
            self.progress.inc(1);
        }
        Ok(())
    }

    /// Starts a probe, applies a change, and returns the time from the change
    /// to the first connection the new endpoint answered (None: it never did),
    /// and the reload's own time in milliseconds.
    fn one_change(
        &self,
        run: &PeerRun,
        to: SocketAddrV4,
        apply: impl FnOnce() -> Result<Option<Duration>>,
    ) -> Result<(Option<f64>, Option<f64>)> {
        let client = run.client.as_ref().context("client namespace")?;
        let mut cmd = in_netns(&client.name, &self.world.client_bin);
        if let Some(cg) = &run.cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        let mut probe = cmd
            .args([
                "probe",
                "--addr",
                &format!("{CHURN_VIP}:{SERVICE_PORT}"),
                "--expect",
                &to.to_string(),
            ])
            .args([
                "--timeout-ms",
                &(self.settings.budget_s * 1000).to_string(),
                "--interval-us",
                "250",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to start the probe")?;
        let mut lines = BufReader::new(probe.stdout.take().context("probe stdout")?).lines();
        let ready = lines
            .next()
            .transpose()
            .context("failed to read the probe")?;
        if ready.as_deref() != Some("ready") {
            let mut err = String::new();
            if let Some(mut e) = probe.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = probe.wait();
            bail!("the probe in {} did not start: {}", client.name, err.trim());
        }
        let t0 = monotonic_ns();
        let reload = apply();
        let reload = match reload {
            Ok(r) => r,
            Err(e) => {
                let _ = probe.kill();
                let _ = probe.wait();
                return Err(e);
            }
        };
        let Some(reload) = reload else {
            let _ = probe.kill();
            let _ = probe.wait();
            return Ok((None, None));
        };
        let line = lines
            .next()
            .transpose()
            .context("failed to read the probe")?;
        let status = probe.wait().context("failed to wait for the probe")?;
        let took = line
            .filter(|_| status.success())
            .and_then(|l| serde_json::from_str::<Value>(&l).ok())
            .and_then(|v| v["switched_ns"].as_u64())
            .map(|switched| {
                #[expect(clippy::cast_precision_loss, reason = "nanoseconds fit an f64")]
                let ms = switched.saturating_sub(t0) as f64 / 1e6;
                ms
            });
        Ok((took, Some(reload.as_secs_f64() * 1000.0)))
    }

    /// The agent programming N x `--program-endpoints` from nothing.
    fn agent_wide(&self, agent: &mut Agent, result: &mut AgentResult) -> Result<()> {
        let s = self.settings;
        self.say(&format!(
            "agent: {} services x {} endpoints",
            self.size, s.program_endpoints
        ));
        let wide = Workload::new(self.size, s.program_endpoints, &PODS).services_file();
        #[expect(clippy::cast_precision_loss, reason = "file sizes fit an f64")]
        let mib = wide.len() as f64 / 1_048_576.0;
        result.services_file_wide_mib = mib;
        let samples = if self.size <= 10_000 { 3 } else { 2 };
        for _ in 0..samples {
            check_interrupted()?;
            agent.program(EMPTY, self.budget())?;
            result
                .program_wide
                .push(agent.program(&wide, self.budget())?);
        }
        if self.args.profile && self.size >= 10_000 {
            // One more run under perf, kept out of the numbers above.
            self.say("agent: programming under perf");
            agent.program(EMPTY, self.budget())?;
            let data = self.out.join(format!("perf-{}.data", self.size));
            let perf = start_perf(agent.pid(), &data)?;
            let programmed = agent.program(&wide, self.budget());
            let report = self
                .out
                .join(format!("perf-{}x{}.txt", self.size, s.program_endpoints));
            stop_perf(perf, &report)?;
            programmed?;
        }
        result.memory_wide = agent.memory()?;
        Ok(())
    }
}

fn finish(mut run: PeerRun) -> PeerResult {
    let r = &mut run.result;
    r.latency_us = Percentiles::of(&run.latency);
    r.conn_rate_1 = median(&run.conn1);
    r.conn_rate_2 = median(&run.conn2);
    r.rps = median(&run.rps);
    r.change_ms = Percentiles::of(&run.change);
    let reload: Vec<f64> = run
        .reload
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    r.change_reload_ms = Percentiles::of(&reload);
    run.result
}

/// Map sizes for `services` services of `endpoints` endpoints: the agent's
/// defaults, or more when they do not fit.
fn capacity(services: usize, endpoints: usize) -> (u32, u32) {
    let want_services = u32::try_from(services.next_power_of_two()).unwrap_or(u32::MAX);
    let want_backends =
        u32::try_from((services * endpoints).next_power_of_two()).unwrap_or(u32::MAX);
    (want_services.max(65_536), want_backends.max(262_144))
}

/// `iptables-restore` (kube-proxy's flags) or `nft -f` of `file` in `ns`.
fn load_command(peer: Peer, ns: &str, file: &Path) -> Result<Command> {
    match peer {
        Peer::Iptables | Peer::IptablesLegacy => {
            let tool = if peer == Peer::Iptables {
                "iptables-restore"
            } else {
                "iptables-legacy-restore"
            };
            let mut cmd = in_netns(ns, tool);
            cmd.args(["-w", "5", "--noflush", "--counters"]);
            cmd.stdin(
                fs::File::open(file)
                    .with_context(|| format!("failed to open {}", file.display()))?,
            );
            Ok(cmd)
        }
        Peer::Nftables => {
            let mut cmd = in_netns(ns, "nft");
            cmd.arg("-f").arg(file);
            Ok(cmd)
        }
        _ => bail!("{} loads no rules", peer.name()),
    }
}

/// Empties a rules peer's tables before its namespace goes: deleting a
/// namespace frees its rules later, in the background, where the cleanup
/// would steal CPU from the next measurements; a flush frees them now.
fn flush_rules(peer: Peer, ns: &str) {
    let script: &[&[&str]] = match peer {
        Peer::Iptables | Peer::Nftables => &[&["nft", "flush", "ruleset"]],
        Peer::IptablesLegacy => &[
            &["iptables-legacy", "-t", "nat", "-F"],
            &["iptables-legacy", "-t", "nat", "-X"],
            &["iptables-legacy", "-t", "filter", "-F"],
            &["iptables-legacy", "-t", "filter", "-X"],
        ],
        Peer::Direct | Peer::LbAgent => &[],
    };
    for (program, args) in script.iter().filter_map(|a| a.split_first()) {
        let _ = in_netns(ns, program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` to completion, timed; None if it took longer than `budget`
/// (it is then killed).
fn timed(mut cmd: Command, budget: Duration) -> Result<Option<Duration>> {
    let desc = format!("{cmd:?}");
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {desc}"))?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(Instant::now());
        out
    });
    let finished = rx.recv_timeout(budget).ok();
    if finished.is_none() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let out = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiting for {desc} panicked"))?
        .with_context(|| format!("failed to wait for {desc}"))?;
    match finished {
        None => Ok(None),
        Some(at) => {
            if !out.status.success() {
                bail!(
                    "{desc} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(Some(at - started))
        }
    }
}

/// Runs `bench-client ARGS` as `run`'s client and parses its JSON line.
fn client_json(world: &World, run: &PeerRun, args: &[String]) -> Result<Value> {
    let client = run.client.as_ref().context("client namespace")?;
    bench_client(&world.client_bin, &client.name, run.cgroup.as_deref(), args)
        .with_context(|| format!("for {}", run.peer.name()))
}

/// The `connect()` times of a `bench-client latency` result, in µs.
fn latency_samples_us(v: &Value) -> Vec<f64> {
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds fit an f64")]
    let us = |ns: u64| ns as f64 / 1000.0;
    v["samples_ns"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).map(us).collect())
        .unwrap_or_default()
}

/// The rate of a `bench-client` load result: `ok` per second.
fn per_second(v: &Value) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "counts fit an f64")]
    let ok = v["ok"].as_u64().unwrap_or(0) as f64;
    ok / v["seconds"].as_f64().unwrap_or(1.0)
}

/// Runs `bench-client [--cgroup CGROUP] ARGS` in the namespace `ns` and
/// parses the JSON line it prints last.
fn bench_client(bin: &Path, ns: &str, cgroup: Option<&Path>, args: &[String]) -> Result<Value> {
    let mut cmd = in_netns(ns, bin);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    cmd.args(args);
    let text = cmd_output(&mut cmd).with_context(|| format!("bench-client {}", args.join(" ")))?;
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("bench-client printed {line:?}"))
}

fn addrs(targets: &[SocketAddrV4]) -> String {
    targets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `perf record` of the agent, with call graphs.
fn start_perf(pid: Option<u32>, data: &Path) -> Result<(std::process::Child, PathBuf)> {
    let pid = pid.context("the agent is not running")?;
    which::which("perf").context("--profile needs perf (apt-get install linux-perf)")?;
    let child = Command::new("perf")
        .args([
            "record",
            "-q",
            "-F",
            "2999",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start perf record")?;
    // perf takes a while to attach on a busy machine (reading symbols).
    std::thread::sleep(Duration::from_secs(2));
    Ok((child, data.to_path_buf()))
}

fn stop_perf((mut child, data): (std::process::Child, PathBuf), report: &Path) -> Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap_or(0), libc::SIGINT) };
    child.wait().context("failed to wait for perf record")?;
    let mut text = String::new();
    for (title, mode) in [
        (
            "inclusive time (children): where the time goes, by caller",
            "--children",
        ),
        ("self time: the leaves", "--no-children"),
    ] {
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                mode,
                "--sort",
                "symbol",
                "--percent-limit",
                "1",
            ])
            .args(["-g", "none", "-i"])
            .arg(&data)
            .output()
            .context("failed to run perf report")?;
        let _ = writeln!(text, "==== {title} ====");
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    fs::write(report, text).with_context(|| format!("failed to write {}", report.display()))?;
    let _ = fs::remove_file(&data);
    Ok(())
}
