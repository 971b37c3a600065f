//! `cargo xtask <task>`: everything the project does besides compiling.
//!
//! - `setup`: install what a fresh machine lacks (idempotent);
//! - `build`: build the agent and its eBPF programs;
//! - `image`: the container image from `deploy/Dockerfile`, without a registry;
//! - `demo`: three pods, a ClusterIP, nine requests (the README's first command);
//! - `test`: unit and end-to-end tests (the README's second command);
//! - `vm`: the end-to-end suite in qemu VMs across kernels;
//! - `bench`: latency, throughput and programming time against kube-proxy's modes.

mod bench;
mod build;
mod demo;
mod image;
mod setup;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

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
    /// The container image from deploy/Dockerfile, with podman and no registry (needs root).
    Image(image::Args),
    /// Three pods, a ClusterIP, nine requests: see it work (needs root).
    Demo(demo::Args),
    /// Unit, protocol and end-to-end tests, on this kernel and in a VM (needs root).
    Test(test::Args),
    /// Run the end-to-end suite in qemu VMs on other kernels.
    Vm(vm::Args),
    /// Latency, throughput and programming time against kube-proxy's modes (needs root).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup(args) => setup::run(&args),
        Task::Build(args) => build::run(&args).map(drop),
        Task::Image(args) => image::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Vm(args) => vm::run(&args),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
