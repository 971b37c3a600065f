//! The node's side: podman, the containers it runs, and the directory that
//! plays the node's bpffs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use serde_json::Value;

use lb_testbed::{agent::run_cli, unique};

use super::pod::{Manifest, Node};

/// podman with runc: crun refuses this machine's hybrid cgroup layout.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .expect("run podman")
}

pub fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the pod's init containers in order, each to completion, as the
/// kubelet does before it starts the agent; returns what they printed.
pub fn run_init_containers(manifest: &Manifest, node: &Node) -> String {
    let mut printed = String::new();
    for container in manifest.init_containers() {
        let name = unique(&format!("lbt-{}-", container.name));
        let args = manifest.run_args(container, node, &name);
        let mut all = vec!["run", "--rm"];
        all.extend(args.iter().map(String::as_str));
        let out = podman(&all);
        assert!(
            out.status.success(),
            "init container {} failed ({}): {}",
            container.name,
            out.status,
            text_of(&out)
        );
        eprintln!(
            "init container {}: {}",
            container.name,
            text_of(&out).trim()
        );
        printed.push_str(&text_of(&out));
    }
    printed
}

/// The agent's container, removed on drop (its log printed if the test
/// failed).
pub struct Running {
    pub name: String,
}

impl Running {
    pub fn start(manifest: &Manifest, node: &Node) -> Self {
        let name = unique("lbt-lb-agent-");
        let args = manifest.run_args(manifest.agent(), node, &name);
        let mut all = vec!["run", "--detach"];
        all.extend(args.iter().map(String::as_str));
        // The guard first: a container that failed to start still exists.
        let this = Self { name };
        let out = podman(&all);
        assert!(out.status.success(), "podman run failed: {}", text_of(&out));
        this
    }

    pub fn running(&self) -> bool {
        let out = podman(&["inspect", "--format={{.State.Running}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    pub fn logs(&self) -> String {
        text_of(&podman(&["logs", &self.name]))
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        let out = podman(&all);
        assert!(
            out.status.success(),
            "podman exec {args:?}: {}",
            text_of(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The kernel's id of a pinned map, from the image's bpftool.
    pub fn pinned_map_id(&self, pin: &Path) -> u64 {
        let pin = pin.display().to_string();
        let text = self.exec(&["bpftool", "--json", "map", "show", "pinned", &pin]);
        let shown: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("bpftool: {e}: {text}"));
        shown["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("bpftool printed no id: {text}"))
    }

    /// `podman stop` with the pod's grace period; the exit code and how long it took.
    pub fn stop(&self, grace: Duration) -> (i64, Duration) {
        let started = Instant::now();
        let out = podman(&["stop", &format!("--time={}", grace.as_secs()), &self.name]);
        let took = started.elapsed();
        assert!(out.status.success(), "podman stop: {}", text_of(&out));
        let out = podman(&["inspect", "--format={{.State.ExitCode}}", &self.name]);
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("exit code of {}: {e}: {}", self.name, text_of(&out)));
        (code, took)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.logs());
        }
        let _ = podman(&["rm", "--force", &self.name]);
    }
}

/// The node's `/sys/fs/bpf`, played by an empty directory that is a shared
/// mount point of its own, so that a Bidirectional mount on it in a
/// container reaches it (on systemd hosts `/` is shared; here it may not
/// be). Drop removes the pins (detaching the programs from the test's
/// cgroup), whatever is mounted on it, and the directory.
pub struct HostBpffs {
    pub path: PathBuf,
}

impl HostBpffs {
    pub fn new(parent: &Path) -> Self {
        let path = parent.join("host-sys-fs-bpf");
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let this = Self { path };
        mount(
            Some(&this.path),
            &this.path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind the bpffs directory onto itself");
        mount(
            None::<&str>,
            &this.path,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("make the bpffs directory a shared mount");
        this
    }

    pub fn is_bpffs(&self) -> bool {
        statfs(&self.path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
    }
}

impl Drop for HostBpffs {
    fn drop(&mut self) {
        // Only agents' pin directories can be on this bpffs.
        if self.is_bpffs() {
            for entry in fs::read_dir(&self.path).into_iter().flatten().flatten() {
                let _ = run_cli(&["cleanup", "--bpffs", &entry.path().display().to_string()]);
            }
        }
        // bpffs (if the init container mounted it), then the bind mount.
        for _ in 0..3 {
            if umount2(&self.path, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}
