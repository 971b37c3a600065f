//! Measurements that live with lb-agent's tests, because they need its test
//! support (the list/watch server, the namespaces and pods): ignored tests
//! that print one JSON object per line. This builds one in release, runs it,
//! and collects those lines.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::util::workspace_root;

/// Builds integration-test target `target` of the end-to-end package in
/// release and returns its executable.
fn build(target: &str) -> Result<PathBuf> {
    let out = Command::new("cargo")
        .current_dir(workspace_root())
        .args([
            "test",
            "--release",
            "-p",
            crate::test::E2E_PACKAGE,
            "--test",
            target,
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run cargo test --no-run")?;
    ensure!(
        out.status.success(),
        "building the {target} benchmark failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == target)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo did not report the {target} executable"))
}

/// The ignored test `test` of end-to-end target `target`, whose rows go to
/// `json` in the results directory.
pub struct Ignored<'a> {
    pub target: &'a str,
    pub test: &'a str,
    pub json: &'a str,
}

impl Ignored<'_> {
    /// Runs it for numbers of Services `sizes` (`LB_BENCH_SIZES`) with the
    /// agent at `agent_bin` and `env` besides: see [`run`].
    pub fn run_sizes(
        &self,
        sizes: &[usize],
        env: &[(&str, String)],
        agent_bin: &Path,
        out: &Path,
    ) -> Result<Vec<Value>> {
        let sizes_arg = sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut all = vec![
            ("LB_BENCH_SIZES", sizes_arg.clone()),
            ("LB_AGENT_BIN", agent_bin.display().to_string()),
        ];
        all.extend_from_slice(env);
        run(self.target, self.test, &all, out, self.json)
            .with_context(|| format!("{} for sizes {sizes_arg}", self.test))
    }
}

/// Runs the ignored test `test` of `target` with `env` and returns the JSON
/// rows it printed, also written to `out/name` (next to `results.md`). Fails
/// if the test failed, saying how many rows it printed first (they are in
/// `out/name` all the same).
pub fn run(
    target: &str,
    test: &str,
    env: &[(&str, String)],
    out: &Path,
    name: &str,
) -> Result<Vec<Value>> {
    let exe = build(target)?;
    let output = Command::new(&exe)
        .args([
            "--ignored",
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {}", exe.display()))?;
    let rows: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        // libtest may print `test NAME ... ` on the same line first.
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Written also when the test failed: the rows before the failure.
    let path = out.join(name);
    fs::write(&path, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    ensure!(
        output.status.success(),
        "the {target} benchmark failed (after {} result rows, in {})",
        rows.len(),
        path.display()
    );
    Ok(rows)
}

/// A number of milliseconds from a row, for a table cell (`-` if absent).
pub fn ms(row: &Value, key: &str, decimals: usize) -> String {
    row[key]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$} ms"))
}
