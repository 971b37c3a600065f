//! `cargo xtask vm`: the end-to-end suite in qemu VMs (to be written).

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    bail!("cargo xtask vm is not written yet")
}
