//! `cargo xtask <task>`: everything the project does besides compiling.
//!
//! - `setup`: install what a fresh machine lacks (idempotent);
//! - `build`: build the agent and its eBPF programs;
//! - `demo`: three pods, a ClusterIP, nine requests (the README's first command);
//! - `test`: unit and end-to-end tests (the README's second command);
//! - `vm`: the end-to-end suite in qemu VMs across kernels;
//! - `bench`: latency, throughput and programming time against kube-proxy's modes.

mod build;
mod setup;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project tasks for lb-agent")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install Debian packages, rust-src and bpf-linker if missing (idempotent).
    Setup(setup::Args),
    /// Build lb-agent with its eBPF programs.
    Build(build::Args),
    /// Run the end-to-end suite in qemu VMs on other kernels.
    Vm(vm::Args),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup(args) => setup::run(&args),
        Task::Build(args) => build::run(&args).map(drop),
        Task::Vm(args) => vm::run(&args),
    }
}
