//! The real `lb-agent` binary, run as a child process.

use std::{
    fs::{self, File},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    client::http_get,
    net::{in_netns, netns_path, spawn_in},
    unique, wait_for,
};

/// The agent binary: `LB_AGENT_BIN` (VM runs, benchmarks), else the one
/// cargo built beside the running test (`target/<profile>/lb-agent`; `cargo
/// xtask test` builds it first).
///
/// # Panics
/// When there is none: build it with `cargo build -p lb-agent`.
pub fn bin() -> PathBuf {
    if let Some(path) = std::env::var_os("LB_AGENT_BIN") {
        return PathBuf::from(path);
    }
    // A test runs from target/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("lb-agent"))
        .expect("the test runs from target/<profile>/deps");
    assert!(
        path.exists(),
        "{} does not exist: build the agent first (`cargo build -p lb-agent`; `cargo xtask test` does), or set LB_AGENT_BIN",
        path.display()
    );
    path
}

/// `_count` and `_sum` of the histogram `name` in a `/metrics` text.
pub fn histogram(metrics: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (value("count"), value("sum"))
}

/// Runs `lb-agent ARGS` to completion.
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run lb-agent")
}

/// `http_get` from the network namespace `netns` (`None`: this thread's).
fn get_in(netns: Option<&str>, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let Some(netns) = netns else {
        return http_get(addr, path);
    };
    let path = path.to_owned();
    spawn_in(&netns_path(netns), move || http_get(addr, &path))
        .join()
        .expect("GET thread")
}

/// A running agent with its own pin directory, cleaned up on drop.
pub struct Agent {
    child: Option<Child>,
    bin: PathBuf,
    pub bpffs: PathBuf,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    /// The network namespace it runs in (by name); `None`: the one of the
    /// thread that started it.
    netns: Option<String>,
    args: Vec<String>,
    starts: u32,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `lb-agent run ARGS --cgroup CGROUP --bpffs <unique>` and waits
    /// until `/readyz` says ready.
    pub fn start(cgroup: &Path, args: &[&str]) -> Self {
        let mut agent = Self::spawn(cgroup, args);
        agent.wait_ready();
        agent
    }

    /// Starts the agent without waiting for readiness.
    pub fn spawn(cgroup: &Path, args: &[&str]) -> Self {
        Self::spawn_bin(&bin(), cgroup, args)
    }

    /// [`Agent::start`] with the agent binary at `bin`.
    pub fn start_bin(bin: &Path, cgroup: &Path, args: &[&str]) -> Self {
        let mut agent = Self::spawn_bin(bin, cgroup, args);
        agent.wait_ready();
        agent
    }

    /// [`Agent::spawn_bin`] in the network namespace called `netns` (also
    /// after a restart); its metrics address is that namespace's.
    pub fn spawn_bin_in(bin: &Path, netns: &str, cgroup: &Path, args: &[&str]) -> Self {
        Self::spawn_with(bin, Some(netns), cgroup, args)
    }

    /// [`Agent::spawn`] with the agent binary at `bin`.
    pub fn spawn_bin(bin: &Path, cgroup: &Path, args: &[&str]) -> Self {
        Self::spawn_with(bin, None, cgroup, args)
    }

    fn spawn_with(bin: &Path, netns: Option<&str>, cgroup: &Path, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bpffs = PathBuf::from("/sys/fs/bpf").join(unique("lb-test-"));
        let metrics: SocketAddr = "127.0.0.1:9464".parse().expect("addr");
        let mut all: Vec<String> = args.iter().map(ToString::to_string).collect();
        all.extend([
            "--cgroup".into(),
            cgroup.display().to_string(),
            "--bpffs".into(),
            bpffs.display().to_string(),
            "--metrics-addr".into(),
            metrics.to_string(),
        ]);
        // kube-proxy's /healthz on loopback unless a test asks: a test
        // opens no port on the machine's own addresses.
        if !args.iter().any(|a| a.starts_with("--healthz-addr")) {
            all.extend(["--healthz-addr".into(), "127.0.0.1:10256".into()]);
        }
        let mut agent = Self {
            child: None,
            bin: bin.to_path_buf(),
            bpffs,
            metrics,
            log: dir.path().join("agent.log"),
            netns: netns.map(str::to_owned),
            args: all,
            starts: 0,
            _dir: dir,
        };
        agent.launch();
        agent
    }

    fn launch(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open agent log");
        let mut command = match &self.netns {
            Some(netns) => in_netns(netns, &self.bin),
            None => Command::new(&self.bin),
        };
        let child = command
            .arg("run")
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lb-agent");
        self.child = Some(child);
        self.starts += 1;
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&mut self) {
        self.wait_ready_within(Duration::from_secs(30));
    }

    /// [`Agent::wait_ready`] for up to `timeout` (a first load of 100,000s
    /// of Services).
    pub fn wait_ready_within(&mut self, timeout: Duration) {
        let (netns, metrics) = (self.netns.clone(), self.metrics);
        let mut exited = None;
        wait_for("the agent to be ready", timeout, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                exited = Some(status);
                return true;
            }
            matches!(get_in(netns.as_deref(), metrics, "/readyz"), Ok((200, _)))
        });
        if let Some(status) = exited {
            panic!(
                "lb-agent exited ({status}) before it was ready:\n{}",
                self.log()
            );
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").expect("GET /metrics").1
    }

    /// GET `path` from the metrics address, in the agent's namespace.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        get_in(self.netns.as_deref(), self.metrics, path)
    }

    /// The value of an unlabelled metric line `NAME VALUE`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `lb-agent ARGS` with this agent's binary, to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .output()
            .expect("run lb-agent")
    }

    /// Whether `lb-agent list` shows the kernel feature `name` as active.
    pub fn has_feature(&self, name: &str) -> bool {
        self.list()["features"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .any(|f| f == name)
    }

    /// The error a refused `connect()` gets on this kernel: `ECONNREFUSED`
    /// with `bpf_set_retval` (Linux 5.18+), `EPERM` before.
    pub fn refusal(&self) -> std::io::ErrorKind {
        if self.has_feature("set_retval") {
            std::io::ErrorKind::ConnectionRefused
        } else {
            std::io::ErrorKind::PermissionDenied
        }
    }

    /// `lb-agent list -o json` for this agent's pins.
    pub fn list(&self) -> serde_json::Value {
        let out = self.cli(&[
            "list",
            "-o",
            "json",
            "--bpffs",
            &self.bpffs.display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "lb-agent list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("list json")
    }

    /// The frontends `lb-agent list` shows of this kind (`ClusterIP`,
    /// `NodePort`, `ExternalIP`, `LoadBalancer`), as `address:port/PROTO`,
    /// sorted.
    pub fn frontends(&self, kind: &str) -> Vec<String> {
        let mut out: Vec<String> = self.list()["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter(|row| row["kind"] == kind)
            .map(|row| {
                let field = |name: &str| row[name].as_str().unwrap_or_default().to_owned();
                format!("{}/{}", field("frontend"), field("protocol"))
            })
            .collect();
        out.sort();
        out
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .map(|c| Pid::from_raw(i32::try_from(c.id()).expect("pid")))
    }

    /// Sends a signal (SIGHUP reloads the file).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            kill(pid, signal).expect("kill");
        }
    }

    /// SIGKILL, as a crash: nothing runs on the agent's side.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Self::signal_child(&child, Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    fn signal_child(child: &Child, signal: Signal) {
        let _ = kill(
            Pid::from_raw(i32::try_from(child.id()).expect("pid")),
            signal,
        );
    }

    /// Starts the same agent again (after `kill` or `stop`), without waiting.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.launch();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits for the process to exit on its own and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut status = None;
        wait_for("lb-agent to exit", timeout, || {
            status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            status.is_some()
        });
        self.child = None;
        status.expect("exited")
    }

    /// Removes the data path (`lb-agent cleanup`).
    pub fn cleanup(&self) -> Output {
        self.cli(&["cleanup", "--bpffs", &self.bpffs.display().to_string()])
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- lb-agent log (last lines) ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.stop();
        let _ = self.cleanup();
        let _ = fs::remove_dir_all(&self.bpffs);
    }
}
