//! `cargo xtask test`: everything that must pass before a change lands.
//!
//! Steps: formatting and lints, unit tests, the integration tests that need
//! no privilege (the test API server, the manifests), the end-to-end suites
//! (`test/e2e`) on this machine's kernel (as root, one test at a time,
//! in network namespaces and child cgroups), the container image and its
//! test (the image run under podman as the DaemonSet runs it), and the same
//! end-to-end suites in a VM on Linux 6.1. Every step runs even if an earlier one failed, and
//! a summary lists each step, its time, and the tests that were skipped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    image, setup,
    util::{is_root, workspace_root},
    vm,
};

#[derive(clap::Args)]
pub struct Args {
    /// Skip the VM run (the suites on Linux 6.1).
    #[arg(long)]
    pub no_vm: bool,
    /// Only run end-to-end tests whose names contain this.
    #[arg(long)]
    pub filter: Option<String>,
}

/// The package of the end-to-end suites (root only; not a default member).
pub const E2E_PACKAGE: &str = "lb-e2e";

/// The container test: `test/e2e/tests/container.rs` (not `e2e_*`: the VM
/// has no container runtime).
const CONTAINER_TARGET: &str = "container";

/// Lints: every crate but the eBPF one, which only builds for BPF.
const CLIPPY: [&str; 8] = [
    "clippy",
    "--workspace",
    "--exclude",
    "lb-ebpf",
    "--all-targets",
    "--",
    "-D",
    "warnings",
];

/// The end-to-end test targets: `test/e2e/tests/e2e_*.rs`.
pub fn e2e_targets() -> Result<Vec<String>> {
    let dir = workspace_root().join("test/e2e/tests");
    let mut targets: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("failed to read {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("e2e_") && Path::new(n).extension().is_some_and(|e| e == "rs"))
        .map(|n| n.trim_end_matches(".rs").to_owned())
        .collect();
    targets.sort();
    Ok(targets)
}

struct Step {
    name: String,
    took: Duration,
    ok: bool,
    note: String,
}

pub fn run(args: &Args) -> Result<()> {
    setup::ensure_all()?;
    ensure!(
        is_root(),
        "the end-to-end tests need root (network namespaces, cgroups, BPF): run `sudo cargo xtask test`"
    );
    let root = workspace_root();
    let mut steps: Vec<Step> = Vec::new();
    let mut run_step = |name: &str, f: &mut dyn FnMut() -> Result<String>| {
        eprintln!("\n==> {name}");
        let started = Instant::now();
        let (ok, note) = match f() {
            Ok(note) => (true, note),
            Err(e) => (false, format!("{e:#}")),
        };
        steps.push(Step {
            name: name.to_owned(),
            took: started.elapsed(),
            ok,
            note,
        });
    };

    run_step("formatting (cargo fmt --check)", &mut || {
        cargo(&root, &["fmt", "--all", "--check"], &[]).map(|()| String::new())
    });
    run_step("lints (cargo clippy --workspace -D warnings)", &mut || {
        cargo(&root, &CLIPPY, &[]).map(|()| String::new())
    });
    run_step("unit tests", &mut || {
        cargo(&root, &["test", "--lib", "--bins"], &[]).map(|()| String::new())
    });
    run_step(
        "integration tests (test API server, manifests)",
        &mut || {
            cargo(
                &root,
                &["test", "-p", "lb-testbed", "-p", "lb-agent", "--tests"],
                &[],
            )
            .map(|()| String::new())
        },
    );
    run_step(
        "the agent the end-to-end suites run (cargo build)",
        &mut || {
            cargo(
                &root,
                &["build", "-p", "lb-agent", "--bin", "lb-agent"],
                &[],
            )
            .map(|()| String::new())
        },
    );
    let targets = e2e_targets()?;
    for target in &targets {
        let filter = args.filter.clone();
        run_step(&format!("end-to-end {target} (host kernel)"), &mut || {
            host_e2e(&root, target, filter.as_deref())
        });
    }
    // The image runs on this machine only: the VM has no container runtime,
    // which is why the test's target is not named `e2e_*`.
    let mut image_built = false;
    run_step("container image (cargo xtask image)", &mut || {
        let built = image::build(&image::Args::default())?;
        image_built = true;
        Ok(built.summary())
    });
    run_step(
        &format!("{CONTAINER_TARGET}: the image under podman, as the DaemonSet runs it"),
        &mut || {
            ensure!(image_built, "not run: the image did not build");
            host_e2e(&root, CONTAINER_TARGET, args.filter.as_deref())
        },
    );
    if !args.no_vm {
        run_step("end-to-end suites in a VM (Linux 6.1)", &mut || {
            vm_e2e(&targets, args.filter.as_deref())
        });
    }

    eprintln!("\n==> summary");
    for s in &steps {
        let status = if s.ok { "ok  " } else { "FAIL" };
        eprintln!("{status} {:>7.1}s  {}", s.took.as_secs_f64(), s.name);
        for line in s.note.lines().filter(|l| !l.is_empty()) {
            eprintln!("              {line}");
        }
    }
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("{} step(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("failed to run cargo {}", args.join(" ")))?;
    ensure!(
        status.success(),
        "cargo {} failed ({status})",
        args.join(" ")
    );
    Ok(())
}

/// Runs one end-to-end target as root, one test at a time; returns the
/// skipped tests (from the report file the tests append to).
fn host_e2e(root: &Path, target: &str, filter: Option<&str>) -> Result<String> {
    let report = report_path(target);
    let _ = fs::remove_file(&report);
    let report_str = report.display().to_string();
    let mut args = vec!["test", "-p", E2E_PACKAGE, "--test", target, "--"];
    if let Some(f) = filter {
        args.push(f);
    }
    args.push("--test-threads=1");
    let result = cargo(
        root,
        &args,
        &[("LB_TEST_REPORT", &report_str), ("RUST_BACKTRACE", "1")],
    );
    let skipped = skipped_tests(&report);
    result.map(|()| skipped)
}

fn report_path(target: &str) -> PathBuf {
    workspace_root()
        .join("target")
        .join(format!("{target}.report"))
}

/// `skipped: NAME (REASON)` lines from a report file.
pub fn skipped_tests(report: &Path) -> String {
    fs::read_to_string(report)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '\t');
            (parts.next()? == "SKIP").then(|| {
                format!(
                    "skipped: {} ({})",
                    parts.next().unwrap_or("?"),
                    parts.next().unwrap_or("")
                )
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The end-to-end targets in a VM on Linux 6.1: an older kernel and
/// verifier than most hosts, on every change. The full matrix (5.10, 6.1,
/// 6.12) is `cargo xtask vm`.
fn vm_e2e(targets: &[String], filter: Option<&str>) -> Result<String> {
    let suite = vm::Suite::lb_agent().with_targets(targets);
    let filter: Vec<String> = filter.map(|f| vec![f.to_owned()]).unwrap_or_default();
    let report = vm::run_suite(vm::Kernel::V6_1, &suite, &filter)?;
    vm::print_reports(std::slice::from_ref(&report));
    ensure!(
        report.success(),
        "{} test(s) failed on Linux 6.1; console log: {}",
        report.failed(),
        report.log.display()
    );
    Ok(report
        .guest
        .tests
        .iter()
        .filter_map(|t| match &t.outcome {
            vm::Outcome::Skipped(reason) => Some(format!("skipped on 6.1: {} ({reason})", t.name)),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n"))
}
