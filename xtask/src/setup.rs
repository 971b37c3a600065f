//! `cargo xtask setup`: make a fresh Debian machine able to build, run and
//! test the project. Idempotent: every step checks before it acts, so the
//! other tasks call it on every run and it costs a few milliseconds when
//! nothing is missing.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::util::{cmd_output, run_cmd};

/// What a task needs installed; each task asks only for its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Building the eBPF programs: rust-src for nightly, bpf-linker.
    Build,
    /// Network namespaces and veth (`ip`).
    Netns,
    /// The kube-proxy peers of the benchmark: iptables, nftables.
    Peers,
    /// The VM runs: qemu, busybox, cpio, kmod (depmod), xz-utils (6.12's
    /// modules), ca-certificates (the CA bundle the agent's client loads),
    /// and the tools the guest runs (ip, tc, bpftool).
    Vm,
    /// Building and running the container image: podman, runc, mmdebstrap
    /// (the base), binutils (objcopy strips debug sections).
    Image,
}

impl Need {
    /// Everything: what `cargo xtask setup` and `cargo xtask test` install.
    pub const ALL: [Self; 5] = [Self::Build, Self::Netns, Self::Peers, Self::Vm, Self::Image];

    const fn packages(self) -> &'static [&'static str] {
        match self {
            Self::Build => &[],
            Self::Netns => &["iproute2"],
            Self::Peers => &["iptables", "nftables"],
            Self::Vm => &[
                "qemu-system-x86",
                "busybox-static",
                "cpio",
                "kmod",
                "xz-utils",
                "ca-certificates",
                "iproute2",
                "bpftool",
            ],
            Self::Image => &["podman", "runc", "mmdebstrap", "binutils"],
        }
    }
}

/// The bpf-linker release that matches the nightly toolchain's LLVM (22).
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args)]
pub struct Args {
    /// Only report what is missing.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        eprintln!("setup: everything is installed");
        return Ok(());
    }
    if args.check {
        for m in &missing {
            eprintln!("setup: missing {m}");
        }
        bail!("{} item(s) missing; run `cargo xtask setup`", missing.len());
    }
    ensure_all()
}

/// Installs whatever is missing for everything.
pub fn ensure_all() -> Result<()> {
    ensure(&Need::ALL)
}

/// Installs whatever `needs` lack. Called by the other tasks.
pub fn ensure(needs: &[Need]) -> Result<()> {
    ensure_packages(&packages(needs))?;
    if needs.contains(&Need::Build) {
        ensure_rust_src()?;
        ensure_bpf_linker()?;
    }
    Ok(())
}

/// The Debian packages `needs` ask for, each once.
fn packages(needs: &[Need]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = needs.iter().flat_map(|n| n.packages()).copied().collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn missing() -> Vec<String> {
    let mut out: Vec<String> = missing_packages(&packages(&Need::ALL))
        .into_iter()
        .map(|p| format!("Debian package {p}"))
        .collect();
    if !rust_src_installed() {
        out.push("rust-src for the nightly toolchain".to_owned());
    }
    if !bpf_linker_ok() {
        out.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    out
}

fn missing_packages(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            cmd_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map_or(true, |s| !s.contains("install ok installed"))
        })
        .collect()
}

fn ensure_packages(packages: &[&'static str]) -> Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    ensure!(
        root,
        "Debian packages {} are missing and installing them needs root: run `sudo cargo xtask setup`",
        missing.join(", ")
    );
    eprintln!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["-q", "update"]))?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "-y", "install", "--no-install-recommends"])
            .args(&missing),
    )
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = cmd_output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("the nightly toolchain is needed to build the eBPF programs; install it with `rustup toolchain install nightly`")?;
    Ok(PathBuf::from(out.trim()))
}

fn rust_src_installed() -> bool {
    nightly_sysroot().is_ok_and(|s| {
        s.join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
    })
}

fn ensure_rust_src() -> Result<()> {
    if rust_src_installed() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker_ok() -> bool {
    cmd_output(Command::new("bpf-linker").arg("--version"))
        .is_ok_and(|v| v.trim() == format!("bpf-linker {BPF_LINKER_VERSION}"))
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM (Debian has
/// no LLVM 22): a prefix directory with a placeholder `llvm-config` and the
/// library under the names the build script looks for. The binary finds the
/// library through an rpath into the prefix, so the prefix stays.
fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib_dir = sysroot.join("lib");
    // The real library is `libLLVM.so.<version>`; nightly also ships a
    // `libLLVM-<n>-rust-*.so` that is a 43-byte linker script, not a library.
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("failed to read {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .max_by_key(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let major = llvm_major(&sysroot)?;

    let prefix = cargo_home().join("lb-llvm-prefix");
    fs::create_dir_all(prefix.join("bin"))?;
    fs::create_dir_all(prefix.join("lib"))?;
    let llvm_config = prefix.join("bin/llvm-config");
    fs::write(&llvm_config, "#!/bin/sh\nexit 0\n")?;
    set_executable(&llvm_config)?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = prefix.join("lib").join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("failed to link {}", link.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        libllvm.display()
    );
    run_cmd(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
    )?;
    ensure!(
        bpf_linker_ok(),
        "bpf-linker was installed but `bpf-linker --version` does not work"
    );
    Ok(())
}

fn llvm_major(sysroot: &Path) -> Result<u32> {
    let rustc = sysroot.join("bin/rustc");
    let out = cmd_output(Command::new(&rustc).args(["--version", "--verbose"]))?;
    let version = out
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .with_context(|| {
            format!(
                "`{} --version --verbose` does not name its LLVM",
                rustc.display()
            )
        })?;
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {version:?}"))
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("failed to chmod {}", path.display()))
}
