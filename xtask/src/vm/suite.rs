//! What runs in the VM: the end-to-end test binaries (built with cargo, or
//! given directly), the agent, and the tests each binary holds.

use std::{
    collections::BTreeSet,
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;

use crate::util::{cmd_output, workspace_root};

/// An end-to-end suite: which tests, and what the VM must hold for them.
#[derive(Clone, Debug)]
pub struct Suite {
    pub tests: TestSource,
    /// Kernel modules to load at boot when the kernel has them as modules
    /// (with their dependencies); built-in ones are only reported.
    pub modules: Vec<String>,
    /// Host programs copied in with their shared libraries (looked up in `PATH`).
    pub tools: Vec<String>,
    /// Time limit for one VM, boot to power-off.
    pub vm_timeout: Duration,
    /// Time limit for one test inside the VM.
    pub test_timeout: Duration,
}

/// Where the test binaries come from.
#[derive(Clone, Debug)]
pub enum TestSource {
    /// `cargo test -p <package> --no-run`, the integration-test targets that
    /// `targets` selects, and the binary `agent` (if any: `(package, bin)`,
    /// built with `cargo build`). The workspace is this one unless
    /// `manifest_path` names another.
    Cargo {
        package: String,
        targets: Targets,
        agent: Option<(String, String)>,
        manifest_path: Option<PathBuf>,
    },
    /// Prebuilt libtest binaries (for trying the runner itself).
    Binaries {
        tests: Vec<PathBuf>,
        agent: Option<PathBuf>,
    },
}

/// Which integration-test targets are end-to-end tests.
#[derive(Clone, Debug)]
pub enum Targets {
    /// Targets whose names start with this.
    Prefix(String),
    /// Exactly these targets.
    Names(Vec<String>),
}

impl Suite {
    /// lb-agent's end-to-end suite: the `e2e*` integration tests of
    /// `test/e2e`, and the agent binary.
    pub fn lb_agent() -> Self {
        Self {
            tests: TestSource::Cargo {
                package: crate::test::E2E_PACKAGE.to_owned(),
                targets: Targets::Prefix("e2e".to_owned()),
                agent: Some(("lb-agent".to_owned(), "lb-agent".to_owned())),
                manifest_path: None,
            },
            // veth and bridge: the tests' pods and node; cls_bpf and
            // sch_ingress (clsact): tc programs; ipv6: reported (built in);
            // inet_diag, udp_diag and tcp_diag: sock_diag dumps and
            // SOCK_DESTROY, which close sockets of departed backends; sctp:
            // `e2e_sctp` (what the socket hooks do with SCTP).
            modules: [
                "veth",
                "bridge",
                "cls_bpf",
                "sch_ingress",
                "ipv6",
                "inet_diag",
                "udp_diag",
                "tcp_diag",
                "sctp",
            ]
            .map(str::to_owned)
            .to_vec(),
            tools: ["ip", "tc", "bpftool"].map(str::to_owned).to_vec(),
            // The suites take about 21 minutes on 6.1 under TCG on 2 cores
            // (the churn tests are half of it): room for a slower machine.
            vm_timeout: Duration::from_mins(30),
            test_timeout: Duration::from_mins(10),
        }
    }
}

impl Suite {
    /// The same suite with exactly these integration-test targets (for
    /// `TestSource::Cargo`; others are returned unchanged).
    #[must_use]
    pub fn with_targets(mut self, names: &[String]) -> Self {
        if let TestSource::Cargo { targets, .. } = &mut self.tests {
            *targets = Targets::Names(names.to_vec());
        }
        self
    }
}

/// A test binary with the tests the filter selected.
pub struct TestBinary {
    /// The cargo target name (file name without the hash for prebuilt ones).
    pub name: String,
    pub path: PathBuf,
    pub tests: Vec<TestCase>,
}

pub struct TestCase {
    pub name: String,
    /// `#[ignore]`d and not asked for with `--ignored`/`--include-ignored`.
    pub ignored: bool,
}

/// The built suite, ready to go into an initramfs.
pub struct Built {
    pub binaries: Vec<TestBinary>,
    pub agent: Option<PathBuf>,
    /// Run ignored tests too (the filter had `--ignored` or `--include-ignored`).
    pub include_ignored: bool,
}

impl Built {
    pub fn test_count(&self) -> usize {
        self.binaries.iter().map(|b| b.tests.len()).sum()
    }

    /// The same suite with only the tests `keep` names (binary, test).
    pub fn only(&self, keep: &[(String, String)]) -> Self {
        Self {
            binaries: self
                .binaries
                .iter()
                .map(|b| TestBinary {
                    name: b.name.clone(),
                    path: b.path.clone(),
                    tests: b
                        .tests
                        .iter()
                        .filter(|t| {
                            keep.iter()
                                .any(|(bin, name)| *bin == b.name && *name == t.name)
                        })
                        .map(|t| TestCase {
                            name: t.name.clone(),
                            ignored: t.ignored,
                        })
                        .collect(),
                })
                .filter(|b| !b.tests.is_empty())
                .collect(),
            agent: self.agent.clone(),
            include_ignored: self.include_ignored,
        }
    }
}

/// Builds (or takes) the binaries and lists their tests on the host with
/// libtest's own filter semantics: `filter` is what would follow `cargo test --`.
pub fn build(suite: &Suite, filter: &[String]) -> Result<Built> {
    let (executables, agent) = match &suite.tests {
        TestSource::Cargo {
            package,
            targets,
            agent,
            manifest_path,
        } => cargo_build(package, targets, agent.as_ref(), manifest_path.as_deref())?,
        TestSource::Binaries { tests, agent } => {
            let named = tests
                .iter()
                .map(|p| {
                    let file = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    // cargo's deps/ names carry "-<16 hex digits>".
                    let name = match file.rsplit_once('-') {
                        Some((stem, hash))
                            if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
                        {
                            stem.to_owned()
                        }
                        _ => file,
                    };
                    (name, p.clone())
                })
                .collect();
            (named, agent.clone())
        }
    };
    let include_ignored = filter
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored");
    let mut binaries = Vec::new();
    for (name, path) in executables {
        let all = list_tests(&path, filter, false)?;
        let ignored: BTreeSet<String> = if include_ignored {
            BTreeSet::new()
        } else {
            list_tests(&path, filter, true)?.into_iter().collect()
        };
        let tests = all
            .into_iter()
            .map(|name| TestCase {
                ignored: ignored.contains(&name),
                name,
            })
            .collect();
        binaries.push(TestBinary { name, path, tests });
    }
    ensure!(
        binaries
            .iter()
            .map(|b| b.name.as_str())
            .collect::<BTreeSet<_>>()
            .len()
            == binaries.len(),
        "two test binaries share a name: {:?}",
        binaries.iter().map(|b| &b.name).collect::<Vec<_>>()
    );
    Ok(Built {
        binaries,
        agent,
        include_ignored,
    })
}

#[derive(Deserialize)]
struct CargoMessage {
    reason: String,
    target: Option<CargoTarget>,
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct CargoTarget {
    name: String,
    kind: Vec<String>,
}

/// (target name, executable) of each test binary.
type Executables = Vec<(String, PathBuf)>;

/// `cargo test --no-run --message-format=json`: (target name, executable) of
/// the selected test targets; and `cargo build` of the agent binary.
fn cargo_build(
    package: &str,
    targets: &Targets,
    agent: Option<&(String, String)>,
    manifest_path: Option<&Path>,
) -> Result<(Executables, Option<PathBuf>)> {
    let mut cmd = cargo(&["test", "--package", package, "--no-run"], manifest_path);
    match targets {
        Targets::Prefix(prefix) => cmd.arg("--test").arg(format!("{prefix}*")),
        Targets::Names(names) => names.iter().fold(&mut cmd, |c, n| c.arg("--test").arg(n)),
    };
    let stdout = cmd_output(&mut cmd)
        .with_context(|| format!("failed to build the end-to-end tests of {package}"))?;
    let mut tests: Executables = artifacts(&stdout)?
        .filter(|(target, _)| target.kind.iter().any(|k| k == "test"))
        .filter(|(target, _)| match targets {
            Targets::Prefix(prefix) => target.name.starts_with(prefix.as_str()),
            Targets::Names(names) => names.contains(&target.name),
        })
        .map(|(target, exe)| (target.name, exe))
        .collect();
    if tests.is_empty() {
        bail!("{package} has no end-to-end test targets ({targets:?})");
    }
    tests.sort();
    let Some((agent_package, bin)) = agent else {
        return Ok((tests, None));
    };
    let mut cmd = cargo(
        &["build", "--package", agent_package, "--bin", bin],
        manifest_path,
    );
    let stdout = cmd_output(&mut cmd).with_context(|| format!("failed to build {bin}"))?;
    let agent_path = artifacts(&stdout)?
        .find(|(target, _)| target.kind.iter().any(|k| k == "bin") && target.name == *bin)
        .map(|(_, exe)| exe)
        .with_context(|| format!("cargo built no binary {bin:?} for {agent_package}"))?;
    Ok((tests, Some(agent_path)))
}

/// `cargo ARGS --message-format=json-render-diagnostics` in this workspace
/// (or the one of `manifest_path`).
fn cargo(args: &[&str], manifest_path: Option<&Path>) -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root())
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    if let Some(manifest) = manifest_path {
        cmd.arg("--manifest-path").arg(manifest);
    }
    cmd
}

/// The (target, executable) of each artifact cargo reported.
fn artifacts(stdout: &str) -> Result<impl Iterator<Item = (CargoTarget, PathBuf)>> {
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let msg: CargoMessage = serde_json::from_str(line)
            .with_context(|| format!("unexpected cargo message: {line}"))?;
        if msg.reason != "compiler-artifact" {
            continue;
        }
        if let (Some(target), Some(exe)) = (msg.target, msg.executable) {
            out.push((target, exe));
        }
    }
    Ok(out.into_iter())
}

/// The tests a libtest binary holds, as `--list` with the filter prints them.
fn list_tests(binary: &Path, filter: &[String], ignored_only: bool) -> Result<Vec<String>> {
    let mut cmd = Command::new(binary);
    cmd.arg("--list").args(filter);
    if ignored_only {
        cmd.arg("--ignored");
    }
    let out = cmd_output(&mut cmd)?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}
