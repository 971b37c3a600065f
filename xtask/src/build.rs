//! `cargo xtask build`: the agent with its eBPF programs.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{
    setup,
    util::{run_cmd, workspace_root},
};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Build with the release profile (what the benchmarks use).
    #[arg(long)]
    pub release: bool,
}

/// What a build produced.
pub struct Built {
    pub agent: PathBuf,
}

pub fn run(args: &Args) -> Result<Built> {
    setup::ensure(&[setup::Need::Build])?;
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["build", "--package", "lb-agent", "--bin", "lb-agent"]);
    if args.release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    Ok(Built {
        agent: agent_path(args.release)?,
    })
}

/// Where `cargo build` puts the agent.
///
/// # Errors
/// When it has not been built.
pub fn agent_path(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    let path = workspace_root()
        .join("target")
        .join(profile)
        .join("lb-agent");
    anyhow::ensure!(
        path.exists(),
        "{} is not built; run `cargo xtask build`",
        path.display()
    );
    Ok(path)
}
