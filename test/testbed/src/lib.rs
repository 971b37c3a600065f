//! The test world of lb-agent's end-to-end suites (`test/e2e`): real
//! network namespaces joined by veth, a child cgroup the test process joins,
//! pod servers, the real agent binary, clients, services files, and a
//! list/watch Kubernetes API server ([`apiserver`]). Every resource is an
//! RAII guard that cleans up on drop (also when the test panics), so a run
//! leaves no namespace, cgroup, pin or process behind.
//!
//! Tests using this need root and run one at a time: the test process itself
//! moves into the test's cgroup, so a [`net::Cgroup`] holds a process-wide
//! lock for as long as it lives.

#![expect(
    clippy::missing_panics_doc,
    clippy::missing_errors_doc,
    clippy::must_use_candidate,
    reason = "test support: every helper panics with what failed, as a test wants, and the API is the tests'"
)]

pub mod agent;
pub mod apiserver;
pub mod client;
pub mod cluster;
pub mod env;
pub mod manifests;
pub mod net;
pub mod podman;
pub mod two_nodes;

use std::{
    fs::OpenOptions,
    io::Write as _,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// A name unique to this process and call, for namespaces, cgroups, pins.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Records that the current test is skipped because the kernel lacks
/// something, and says so. `cargo xtask test`/`vm` read the report file
/// (`LB_TEST_REPORT`) and show the test as skipped, not passed.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("LB_TEST_REPORT")
        && let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "SKIP\t{test}\t{reason}");
    }
}

/// Polls `condition` until it holds; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across processes (the
/// bench's probe prints it, the bench compares it with its own).
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// A memory field of `/proc/PID/status` (`VmRSS`, `VmHWM`, `RssAnon`...) in
/// KiB; `None` if the process or the field is not there.
pub fn proc_status_kib(pid: impl std::fmt::Display, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
