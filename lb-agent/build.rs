//! Builds the eBPF objects (`lb-ebpf`: the data path; `lb-ebpf-legacy`: the
//! same without fetching atomics, for kernels before 5.12; `lb-probe`:
//! kernel feature probes) with aya-build and leaves them in `OUT_DIR`, where
//! `src/bpf/object.rs` embeds them.
//!
//! Stub mode: with `LB_EBPF_STUB=1`, or when nightly/bpf-linker are missing,
//! empty objects are written instead, so `cargo check`, `clippy` and the
//! unit tests work on any machine. A stub agent says so when asked to load.

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const OBJECTS: [&str; 3] = ["lb-ebpf", "lb-ebpf-legacy", "lb-probe"];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LB_EBPF_STUB");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);

    let forced = env::var("LB_EBPF_STUB").is_ok_and(|v| v == "1");
    let missing = missing_toolchain();
    if forced || missing.is_some() {
        if let Some(why) = missing.filter(|_| !forced) {
            println!(
                "cargo:warning=building lb-agent WITHOUT eBPF programs: {why}; run `cargo xtask setup`"
            );
        }
        for name in OBJECTS {
            fs::write(out_dir.join(name), b"").with_context(|| format!("writing stub {name}"))?;
        }
        return Ok(());
    }

    let ebpf_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir,
            ..Package::default()
        }],
        Toolchain::default(),
    )
}

/// Why the eBPF objects cannot be built here, if they cannot.
fn missing_toolchain() -> Option<String> {
    if which::which("bpf-linker").is_err() {
        return Some("bpf-linker is not installed".to_owned());
    }
    let nightly_src = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .map(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core"));
    match nightly_src {
        None => Some("the nightly toolchain is not installed".to_owned()),
        Some(core) if !core.exists() => Some("rust-src is not installed for nightly".to_owned()),
        Some(_) => None,
    }
}
