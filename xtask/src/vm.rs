//! `cargo xtask vm`: the end-to-end suite in qemu VMs on the kernels users run
//! (Debian's 5.10, 6.1 and 6.12 cloud kernels), because the agent's hooks
//! and helpers arrived in different releases.
//!
//! Per kernel: fetch the newest Debian kernel of its suite (cached,
//! [`kernel`]), build an initramfs with busybox, `ip`/`tc`/`bpftool`, the
//! needed modules, the agent and the test binaries with their libraries
//! ([`initramfs`]), boot it under TCG ([`qemu`]) and follow the results
//! channel ([`guest`], [`report`]).
//!
//! The library entry for other tasks is [`run_suite`] (one kernel) or
//! [`run_suites`] (several, built once), then [`print_reports`].

mod guest;
mod initramfs;
mod kernel;
mod qemu;
mod report;
mod suite;

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, ensure};

use self::{guest::Marker, initramfs::Initramfs, qemu::VmEnd, suite::Built};
pub use self::{
    kernel::{Kernel, Mirrors},
    report::{Outcome, SuiteReport, print_reports},
    suite::{Suite, TestSource},
};
use crate::{setup, util::workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Kernel line(s) to run on; repeat or use `all` (the default).
    #[arg(long = "kernel", value_enum)]
    kernels: Vec<KernelChoice>,
    /// Time limit for each VM, in seconds (TCG is slow).
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    timeout: u64,
    /// Time limit for each test inside the VM, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    test_timeout: u64,
    /// Integration-test targets of lb-agent to run (repeatable; default: those named `e2e*`).
    #[arg(long = "test-target", value_name = "NAME")]
    test_targets: Vec<String>,
    /// Re-read the Debian package lists even if they are less than a day old.
    #[arg(long)]
    refresh: bool,
    /// Print both serial consoles as the VMs run.
    #[arg(long)]
    show_console: bool,
    /// Keep each VM's initramfs next to its console log.
    #[arg(long)]
    keep_initramfs: bool,
    /// Run these prebuilt libtest binaries instead of building lb-agent's (for
    /// trying the runner itself).
    #[arg(long = "test-binary", value_name = "PATH", hide = true)]
    test_binaries: Vec<PathBuf>,
    /// The agent binary to put at /bin/lb-agent with `--test-binary`.
    #[arg(long, value_name = "PATH", hide = true)]
    agent_binary: Option<PathBuf>,
    /// Build the tests of the package in another workspace.
    #[arg(long, value_name = "PATH", hide = true)]
    manifest_path: Option<PathBuf>,
    /// Which tests to run, as after `cargo test --` (names, `--exact`, `--skip NAME`).
    #[arg(last = true, value_name = "TEST FILTER")]
    filter: Vec<String>,
}

/// `--kernel`: one of the [`Kernel`] lines, or `all` of them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KernelChoice {
    One(Kernel),
    All,
}

impl clap::ValueEnum for KernelChoice {
    fn value_variants<'a>() -> &'a [Self] {
        const CHOICES: [KernelChoice; Kernel::ALL.len() + 1] = {
            let mut choices = [KernelChoice::All; Kernel::ALL.len() + 1];
            let mut i = 0;
            while i < Kernel::ALL.len() {
                choices[i] = KernelChoice::One(Kernel::ALL[i]);
                i += 1;
            }
            choices
        };
        &CHOICES
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            Self::One(kernel) => clap::ValueEnum::to_possible_value(kernel),
            Self::All => Some(clap::builder::PossibleValue::new("all").help("All of the above")),
        }
    }
}

/// Infrastructure settings (as opposed to what the suite is).
pub struct Options {
    /// Kernels, package lists, console logs: `target/vm-cache` by default.
    pub cache_dir: PathBuf,
    pub mirrors: Mirrors,
    /// Re-read the package lists now.
    pub refresh: bool,
    /// Print the consoles as they come.
    pub show_console: bool,
    pub keep_initramfs: bool,
}

impl Default for Options {
    fn default() -> Self {
        let target = env::var_os("CARGO_TARGET_DIR").map_or_else(
            || workspace_root().join("target"),
            |t| workspace_root().join(t),
        );
        Self {
            cache_dir: target.join("vm-cache"),
            mirrors: Mirrors::default(),
            refresh: false,
            show_console: false,
            keep_initramfs: false,
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    let Args {
        kernels,
        timeout,
        test_timeout,
        test_targets,
        refresh,
        show_console,
        keep_initramfs,
        test_binaries,
        agent_binary,
        manifest_path,
        filter,
    } = args;
    setup::ensure(&[setup::Need::Build, setup::Need::Vm])?;
    let kernels: Vec<Kernel> = if kernels.is_empty() || kernels.contains(&KernelChoice::All) {
        Kernel::ALL.to_vec()
    } else {
        let mut k: Vec<Kernel> = kernels
            .iter()
            .filter_map(|c| match c {
                KernelChoice::One(kernel) => Some(*kernel),
                KernelChoice::All => None,
            })
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let mut suite = Suite::lb_agent();
    if !test_targets.is_empty() {
        suite = suite.with_targets(test_targets);
    }
    suite.vm_timeout = Duration::from_secs(*timeout);
    suite.test_timeout = Duration::from_secs(*test_timeout);
    if let TestSource::Cargo {
        manifest_path: m, ..
    } = &mut suite.tests
    {
        m.clone_from(manifest_path);
    }
    if !test_binaries.is_empty() {
        suite.tests = TestSource::Binaries {
            tests: test_binaries.clone(),
            agent: agent_binary.clone(),
        };
    }
    let options = Options {
        refresh: *refresh,
        show_console: *show_console,
        keep_initramfs: *keep_initramfs,
        ..Options::default()
    };
    let reports = run_suites(&kernels, &suite, filter, &options)?;
    let totals = print_reports(&reports);
    ensure!(
        totals.failed == 0,
        "{} failure(s) in the end-to-end suite on {}",
        totals.failed,
        kernels
            .iter()
            .map(|k| k.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Runs `suite` on one kernel with the default [`Options`]; `filter` is what
/// would follow `cargo test --`. Infrastructure errors (no network and no
/// cached kernel, a build failure) are errors; anything that goes wrong in
/// the VM (a failed test, a panic, the time limit) is in the report.
///
/// `cargo xtask test` calls `run_suite(Kernel::V6_1, &Suite::lb_agent(), &[])`,
/// then [`print_reports`] and fails if `!report.success()`.
pub fn run_suite(kernel: Kernel, suite: &Suite, filter: &[String]) -> Result<SuiteReport> {
    let mut reports = run_suites(&[kernel], suite, filter, &Options::default())?;
    reports.pop().context("no report")
}

/// Builds the suite once and runs it on each kernel in turn.
pub fn run_suites(
    kernels: &[Kernel],
    suite: &Suite,
    filter: &[String],
    options: &Options,
) -> Result<Vec<SuiteReport>> {
    let built = suite::build(suite, filter)?;
    ensure!(
        built.test_count() > 0,
        "no end-to-end test matches the filter {filter:?} in {:?}",
        built.binaries.iter().map(|b| &b.name).collect::<Vec<_>>()
    );
    eprintln!(
        "vm: {} test(s) in {} binar{}",
        built.test_count(),
        built.binaries.len(),
        if built.binaries.len() == 1 {
            "y"
        } else {
            "ies"
        }
    );
    let base = base_initramfs(suite, &built)?;
    let runs = options.cache_dir.join("runs");
    fs::create_dir_all(&runs).with_context(|| format!("failed to create {}", runs.display()))?;
    let mut reports = Vec::new();
    for &kernel in kernels {
        let image = kernel::fetch(
            kernel,
            &options.cache_dir,
            &options.mirrors,
            options.refresh,
        )
        .with_context(|| format!("failed to get a {kernel} kernel"))?;
        let how = image.downloaded.map_or_else(
            || "cached".to_owned(),
            |t| {
                format!(
                    "downloaded in {:.1} s, unpacked in {:.1} s",
                    t.download.as_secs_f64(),
                    t.unpack.as_secs_f64()
                )
            },
        );
        eprintln!(
            "vm {kernel}: kernel {} {} ({how})",
            image.package, image.version
        );
        reports.push(run_one(
            &image,
            suite,
            &built,
            base.clone(),
            &runs,
            options,
        )?);
    }
    prune_runs(&runs, 20);
    Ok(reports)
}

/// The kernel-independent part of the initramfs.
fn base_initramfs(suite: &Suite, built: &Built) -> Result<Initramfs> {
    let mut ir = Initramfs::new();
    for binary in &built.binaries {
        ir.executable(
            &format!("{}/{}", guest::TESTS_DIR, binary.name),
            &binary.path,
        )?;
    }
    if let Some(agent) = &built.agent {
        ir.executable(guest::AGENT_PATH, agent)?;
    }
    for tool in &suite.tools {
        let host = which::which(tool)
            .with_context(|| format!("{tool} is needed in the VM but is not in PATH"))?;
        let host = fs::canonicalize(&host)
            .with_context(|| format!("failed to resolve {}", host.display()))?;
        ir.executable(&format!("/usr/sbin/{tool}"), &host)?;
    }
    let busybox = which::which("busybox")
        .context("busybox (Debian package busybox-static) is the VM's shell")?;
    ir.busybox(&busybox)?;
    // Nodes have a CA bundle, and the agent's Kubernetes client (rustls with
    // the system's roots) fails to start without one, even for plain HTTP.
    let ca_bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca_bundle.exists() {
        ir.host_file("/etc/ssl/certs/ca-certificates.crt", ca_bundle, 0o644)?;
    }
    ir.bytes(
        "etc/hosts",
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        0o644,
    );
    ir.bytes("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    ir.bytes("etc/group", "root:x:0:\n", 0o644);
    ir.bytes(
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\n",
        0o644,
    );
    Ok(ir)
}

fn run_one(
    image: &kernel::KernelImage,
    suite: &Suite,
    built: &Built,
    mut ir: Initramfs,
    runs: &Path,
    options: &Options,
) -> Result<SuiteReport> {
    let kernel = image.kernel;
    let stamp = UNIX_EPOCH.elapsed().unwrap_or_default().as_secs();
    let dir = runs.join(format!("{stamp}-{}-{kernel}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;

    let started = Instant::now();
    let scratch = options.cache_dir.join("modules");
    let modules = ir.modules(image, &suite.modules, &scratch)?;
    let modules_time = started.elapsed();
    let vm = Vm {
        image,
        suite,
        ir: &ir,
        modules: &modules,
        dir: &dir,
        options,
    };
    let first = vm.boot(built, "console.log")?;
    // The guest stopped: the kernel or qemu hung (a test that hangs is
    // killed in the guest, which goes on). The test it was running, if any,
    // and the ones not yet run run again, once, in a new VM; what happened
    // stays in the notes.
    let interrupted = first.run.interrupted;
    let again: Vec<(String, String)> = if matches!(first.end, VmEnd::Silent(_)) {
        first
            .run
            .guest
            .tests
            .iter()
            .enumerate()
            .filter(|(i, t)| interrupted == Some(*i) || matches!(t.outcome, Outcome::NotRun(_)))
            .map(|(_, t)| (t.binary.clone(), t.name.clone()))
            .collect()
    } else {
        Vec::new()
    };
    let mut report = SuiteReport {
        kernel,
        package: image.package.clone(),
        version: image.version.clone(),
        guest: first.run.guest,
        vm_time: first.vm_time,
        fetch: image.downloaded,
        initramfs_bytes: first.initramfs_bytes,
        initramfs_time: modules_time + first.initramfs_time,
        log: first.log,
    };
    if again.is_empty() {
        report.guest.problems.extend(first.run.stopped_early);
        return Ok(report);
    }
    let what = match interrupted.map(|i| &report.guest.tests[i]) {
        Some(t) => format!(
            "while {}::{} ran; it and the {} test(s) after it",
            t.binary,
            t.name,
            again.len() - 1
        ),
        None => format!("between tests; the {} test(s) not yet run", again.len()),
    };
    let how = first.run.how;
    eprintln!("vm {kernel}: {how} {what} run again in a new VM");
    report.guest.notes.push(format!(
        "{how} {what} ran again in a second VM (first VM's console log {})",
        report.log.display()
    ));
    let second = vm.boot(&built.only(&again), "console-2.log")?;
    for test in second.run.guest.tests {
        if let Some(slot) = report
            .guest
            .tests
            .iter_mut()
            .find(|t| t.binary == test.binary && t.name == test.name)
        {
            *slot = test;
        }
    }
    report.guest.problems.extend(
        second
            .run
            .guest
            .problems
            .into_iter()
            .chain(second.run.stopped_early)
            .map(|p| format!("second VM: {p}")),
    );
    report.guest.notes.extend(
        second
            .run
            .guest
            .notes
            .into_iter()
            .map(|n| format!("second VM: {n}")),
    );
    report.vm_time += second.vm_time;
    report.guest.console_tail = second.run.guest.console_tail;
    report.log = second.log;
    Ok(report)
}

/// What every VM of one kernel shares.
struct Vm<'a> {
    image: &'a kernel::KernelImage,
    suite: &'a Suite,
    /// Everything but `/init`.
    ir: &'a Initramfs,
    modules: &'a [(String, initramfs::ModuleSource)],
    dir: &'a Path,
    options: &'a Options,
}

/// One VM's run.
struct Booted {
    run: report::CollectedRun,
    end: VmEnd,
    vm_time: Duration,
    initramfs_bytes: u64,
    initramfs_time: Duration,
    log: PathBuf,
}

impl Vm<'_> {
    /// Boots a VM that runs `built`'s tests, and follows it to its end.
    fn boot(&self, built: &Built, log_name: &str) -> Result<Booted> {
        let kernel = self.image.kernel;
        let started = Instant::now();
        let marker = Marker::random();
        let mut ir = self.ir.clone();
        ir.bytes(
            "init",
            guest::init_script(&marker, built, self.modules, self.suite.test_timeout),
            0o755,
        );
        let initramfs_path = self.dir.join("initramfs.cpio");
        let initramfs_bytes = ir.write(&initramfs_path)?;
        drop(ir);
        let initramfs_time = started.elapsed();

        // The archive and its unpacked copy both live in guest memory, and
        // the kernel reserves about as much again while it unpacks: with
        // twice the archive, a 980 MiB one failed to unpack ("Initramfs
        // unpacking failed: write error", then no /init).
        let memory_mib = (1024 + 4 * initramfs_bytes.div_ceil(1 << 20)).max(2048);
        let log = self.dir.join(log_name);
        let cmdline = "console=ttyS0 panic=-1 oops=panic mitigations=off rdinit=/init";
        let mut collector = report::Collector::new(marker, kernel, built, self.suite.test_timeout);
        eprintln!(
            "vm {kernel}: booting {} under TCG (console log {})",
            self.image.release,
            log.display()
        );
        let vm_started = Instant::now();
        let end = qemu::run(
            &qemu::VmConfig {
                vmlinuz: &self.image.vmlinuz,
                initramfs: &initramfs_path,
                memory_mib,
                cmdline,
                timeout: self.suite.vm_timeout,
                silence: SILENCE,
                log: &log,
                echo: self.options.show_console,
                label: kernel.label(),
            },
            |at, stream, line| collector.feed(at, stream, line),
        )?;
        let vm_time = vm_started.elapsed();
        if !self.options.keep_initramfs {
            let _ = fs::remove_file(&initramfs_path);
        }
        let run = collector.finish(&end, vm_time, self.suite.vm_timeout);
        Ok(Booted {
            run,
            end,
            vm_time,
            initramfs_bytes,
            initramfs_time,
            log,
        })
    }
}

/// How long the guest may say nothing before it counts as stopped: it
/// says it is alive every [`guest::ALIVE_EVERY`].
const SILENCE: Duration = Duration::from_mins(2);

/// Keeps the newest `keep` run directories (console logs).
fn prune_runs(runs: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for (_, dir) in dirs.into_iter().take(excess) {
        let _ = fs::remove_dir_all(dir);
    }
}
