//! `cargo xtask demo`: the README's first command.
//!
//! Builds the agent, then, all inside the test world of `lb-testbed`
//! (throwaway network namespaces and a child cgroup; the machine's own
//! network and root cgroup are not touched):
//! - a "node" network namespace with a bridge, and three "pods" (network
//!   namespaces joined to it by veth pairs) each serving :8080 with its name;
//! - the agent on `examples/services.yaml` (ClusterIP 10.96.0.100:80 ->
//!   the pods' :8080, round-robin), attached to the child cgroup;
//! - nine requests to the ClusterIP from a client in that cgroup, each
//!   printed with the pod that answered;
//! - `lb-agent list`.
//!
//! Everything it created is removed at the end, on error, and on Ctrl-C.

use std::{
    net::SocketAddr,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, ensure};
use lb_testbed::{agent::Agent, client, env::World};

use crate::{
    build, setup,
    util::{is_root, run_cmd, workspace_root},
};

const CLUSTER_IP: &str = "10.96.0.100:80";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(clap::Args)]
pub struct Args {
    /// Number of requests to make.
    #[arg(long, default_value_t = 9)]
    pub requests: usize,
}

pub fn run(args: &Args) -> Result<()> {
    ensure!(
        is_root(),
        "the demo creates network namespaces and loads eBPF programs: run `sudo cargo xtask demo`"
    );
    setup::ensure(&[setup::Need::Netns])?;
    let built = build::run(&build::Args::default())?;
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("failed to handle Ctrl-C")?;
    let root = workspace_root();
    let services = root.join("examples/services.yaml");

    step("creating the node namespace and three pods (netns + veth + bridge)");
    // The calling thread enters the node's namespace; the process joins a
    // child cgroup, where the agent attaches its programs.
    let world = World::new(3);
    for pod in &world.cluster.pods {
        println!(
            "  {}: {}:8080 in network namespace {}",
            pod.name, pod.ip4, pod.netns.name
        );
    }
    let outcome = (|| {
        check_interrupted()?;
        step(&format!(
            "starting lb-agent on examples/services.yaml (cgroup {})",
            world.cgroup.path.display()
        ));
        let services = services.display().to_string();
        let agent = Agent::start_bin(
            &built.agent,
            &world.cgroup.path,
            &["--services-file", &services],
        );
        println!("  ready (log: {})", agent.log.display());

        step(&format!(
            "{} requests to the ClusterIP {CLUSTER_IP} from a client in the cgroup",
            args.requests
        ));
        let addr: SocketAddr = CLUSTER_IP.parse().context("the ClusterIP")?;
        for i in 1..=args.requests {
            check_interrupted()?;
            let reply =
                client::tcp(addr).with_context(|| format!("request {i} to {addr} failed"))?;
            println!(
                "  request {i}: connect({addr}) -> answered by {} (getpeername: {})",
                reply.body, reply.peer
            );
        }

        step("lb-agent list (what the data path holds, read from the pinned maps)");
        run_cmd(Command::new(&built.agent).args([
            "list",
            "--bpffs",
            &agent.bpffs.display().to_string(),
        ]))?;
        step("cleaning up");
        Ok(())
    })();
    drop(world);
    println!("  removed the namespaces, the cgroup and the pins");
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("demo: interrupted; everything it created was removed");
        return Ok(());
    }
    outcome
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn check_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}
