//! `lb-agent`: parses the command line and dispatches; the work is in the
//! library.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use lb_agent::{
    bpf::{
        loader::{self, Capacity},
        tc::{AttachMode, Devices},
    },
    list,
    model::Algorithm,
    node_addresses::NodePortAddresses,
    run::{self, RunConfig},
    sockets::{CloseSockets, NETNS_DIRS},
};
use tracing_subscriber::EnvFilter;

const DEFAULT_BPFFS: &str = "/sys/fs/bpf/lb";

#[derive(Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "Socket-level load balancing for Kubernetes ClusterIP services (eBPF)",
    long_about = "Translates connections to Kubernetes ClusterIP services to their endpoints at the socket, \
                  with eBPF programs on the cgroup connect/sendmsg/recvmsg/getpeername hooks. \
                  `run` loads and feeds the data path, `list` shows what it holds, `cleanup` removes it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as one JSON object each (for log shippers and
    /// tools: timestamp, level, target, and the fields by name).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data path and keep it programmed from a source.
    Run(Box<RunArgs>),
    /// Show what the data path holds, read from the pinned maps.
    List(ListArgs),
    /// Detach the programs and remove every pin.
    Cleanup(CleanupArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Read Services and EndpointSlices from this file (YAML or JSON, as
    /// `kubectl get services,endpointslices -A -o yaml` prints them) and
    /// follow its changes.
    #[arg(long, value_name = "PATH", conflicts_with = "kubeconfig")]
    services_file: Option<PathBuf>,
    /// Without --services-file, watch the Kubernetes API with this
    /// kubeconfig [default: $KUBECONFIG, ~/.kube/config, or in-cluster].
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// cgroup2 directory to attach to [default: the root of the cgroup2 mount].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Default backend choice; a service overrides it with the annotation
    /// `lb-agent.io/algorithm`.
    #[arg(long, value_enum, default_value_t = Algorithm::Random)]
    algorithm: Algorithm,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Address for kube-proxy's /healthz and /livez (what load balancers
    /// and probes ask a node); `none` (or "") serves neither.
    #[arg(long, value_name = "ADDR|none", default_value = "0.0.0.0:10256", value_parser = parse_optional_addr)]
    healthz_addr: OptionalAddr,
    /// This node's name, for `internalTrafficPolicy: Local` and topology hints.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// Serve only services labelled `service.kubernetes.io/service-proxy-name=NAME`.
    #[arg(long, value_name = "NAME")]
    service_proxy_name: Option<String>,
    /// The node addresses that answer on node ports, as kube-proxy's flag:
    /// `primary` (the Node object's primary IPv4 and IPv6 addresses; without
    /// a Node object, every local address that is not loopback or
    /// link-local), or CIDRs (`10.0.0.0/8,fd00::/64`): the local addresses
    /// in them. Followed as addresses come and go.
    #[arg(long, value_name = "primary|CIDRS", default_value = "primary")]
    nodeport_addresses: NodePortAddresses,
    /// Service ports the maps hold.
    #[arg(long, value_name = "N", default_value_t = Capacity::default().services, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_services: u32,
    /// Backends the maps hold, summed over all services.
    #[arg(long, value_name = "N", default_value_t = Capacity::default().backends, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_backends: u32,
    /// Socket/backend pairs remembered for recvmsg and getpeername (LRU).
    #[arg(long, value_name = "N", default_value_t = Capacity::default().revnat, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_sockets: u32,
    /// Sockets to close when their backend leaves the service, so that the
    /// application's next call fails and its next `connect()` is balanced
    /// anew: connected UDP sockets (as kube-proxy flushes UDP conntrack
    /// entries), also TCP connections, or none.
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = CloseSockets::Udp)]
    close_sockets: CloseSockets,
    /// Directories where the container runtime pins pods' network
    /// namespaces, searched (besides /proc) for those sockets [default:
    /// /run/netns and /var/run/netns, where containerd and CRI-O pin them].
    #[arg(long = "netns-dir", value_name = "PATH")]
    netns_dirs: Vec<PathBuf>,
    /// Client/service pairs remembered for session affinity (LRU).
    #[arg(long, value_name = "N", default_value_t = Capacity::default().affinity, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_affinity: u32,
    /// Devices where traffic from other hosts to node ports, external IPs
    /// and load-balancer IPs arrives (tc programs): `auto` (the devices of
    /// the default routes), `none`, or names separated by commas.
    #[arg(long, value_name = "auto|none|DEV,DEV", default_value = "auto")]
    devices: Devices,
    /// How the tc programs are attached: `auto` (a TCX link where the
    /// kernel has them, Linux 6.6+, else a filter on the `clsact` qdisc),
    /// `tcx`, or `clsact`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = AttachMode::Auto)]
    tc_attach: AttachMode,
    /// Connection-tracking entries for flows from other hosts (two per
    /// flow; LRU).
    #[arg(long, value_name = "N", default_value_t = Capacity::default().flows, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_flows: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// Also list the flows from other hosts the tc programs track.
    #[arg(long)]
    flows: bool,
    /// bpffs directory the agent pinned to.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
}

#[derive(clap::Args)]
struct CleanupArgs {
    /// bpffs directory the agent pinned to.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(a) => {
            let cfg = RunConfig {
                services_file: a.services_file,
                kubeconfig: a.kubeconfig,
                cgroup: a.cgroup,
                bpffs: a.bpffs,
                algorithm: a.algorithm,
                metrics_addr: a.metrics_addr,
                healthz_addr: a.healthz_addr.0,
                capacity: Capacity {
                    services: a.max_services,
                    backends: a.max_backends,
                    revnat: a.max_sockets,
                    affinity: a.max_affinity,
                    flows: a.max_flows,
                },
                devices: a.devices,
                tc_attach: a.tc_attach,
                node_name: a.node_name,
                service_proxy_name: a.service_proxy_name,
                nodeport_addresses: a.nodeport_addresses,
                close_sockets: a.close_sockets,
                netns_dirs: if a.netns_dirs.is_empty() {
                    NETNS_DIRS.iter().map(PathBuf::from).collect()
                } else {
                    a.netns_dirs
                },
            };
            cfg.before_threads();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run::run(cfg))
        }
        Command::List(a) => {
            let listing = list::read(&a.bpffs, a.flows).map_err(|e| {
                anyhow::anyhow!(
                    "{e} (is `lb-agent run` pinning to {}? see --bpffs)",
                    a.bpffs.display()
                )
            })?;
            let text = match a.output {
                Output::Table => list::render_table(&listing),
                Output::Json => serde_json::to_string_pretty(&listing)? + "\n",
            };
            write_stdout(&text)
        }
        Command::Cleanup(a) => {
            let cleaned = loader::cleanup(&a.bpffs)?;
            eprintln!(
                "lb-agent: removed {} link(s) (programs detached) and {} map pin(s) from {}",
                cleaned.links.len(),
                cleaned.maps.len(),
                a.bpffs.display()
            );
            Ok(())
        }
    }
}

/// An address, or `none` (or an empty value) for no address.
/// An address, or none (`none` or empty on the command line). A type of its
/// own: clap reads an `Option` field as "the flag may be absent".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OptionalAddr(Option<SocketAddr>);

fn parse_optional_addr(text: &str) -> Result<OptionalAddr, String> {
    match text {
        "" | "none" => Ok(OptionalAddr(None)),
        _ => text.parse().map(|a| OptionalAddr(Some(a))).map_err(|e| {
            format!("{e}: expected an address such as 0.0.0.0:10256 or [::]:10256, or none")
        }),
    }
}

/// Writes to standard output; a reader that went away (`| head`) ends the
/// output quietly, as for any Unix tool, instead of a panic.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command, OptionalAddr};

    fn run_args(extra: &[&str]) -> Box<super::RunArgs> {
        let args = [&["lb-agent", "run"][..], extra].concat();
        match Cli::try_parse_from(args).expect("parses").command {
            Command::Run(a) => a,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn every_run_flag_parses_into_its_field() {
        assert_eq!(
            run_args(&[]).healthz_addr,
            OptionalAddr(Some("0.0.0.0:10256".parse().expect("addr")))
        );
        assert_eq!(
            run_args(&["--healthz-addr", "none"]).healthz_addr,
            OptionalAddr(None)
        );
        let a = run_args(&[
            "--healthz-addr",
            "127.0.0.1:10256",
            "--devices",
            "eth0,eth1",
            "--tc-attach",
            "clsact",
            "--max-flows",
            "1024",
        ]);
        assert_eq!(a.healthz_addr.0.map(|s| s.port()), Some(10256));
        assert_eq!(a.max_flows, 1024);
        assert!(Cli::try_parse_from(["lb-agent", "run", "--devices", "a/b"]).is_err());
    }
}
