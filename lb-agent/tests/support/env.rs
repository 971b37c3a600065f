//! One file-source test's world: pods, the node namespace the test thread
//! runs in, the cgroup the test process has joined, and a services file.

use std::path::PathBuf;

use serde_json::Value;

use super::{
    agent::Agent,
    cluster::Cluster,
    manifests,
    net::{Cgroup, Entered},
};

/// Fields drop in order: leave the node namespace, leave the cgroup, then
/// delete the namespaces and the file's directory.
pub struct FileEnv {
    _in_node: Entered,
    pub cgroup: Cgroup,
    pub cluster: Cluster,
    _dir: tempfile::TempDir,
    pub file: PathBuf,
}

impl FileEnv {
    /// `pods` pod namespaces; the services file is `file_name` (its
    /// extension tells YAML from JSON only to the reader) in a fresh
    /// directory.
    pub fn new(pods: usize, file_name: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "end-to-end tests need root (network namespaces, cgroups, BPF): run `sudo cargo xtask test`"
        );
        let cluster = Cluster::new(pods);
        let in_node = cluster.node.enter();
        let cgroup = Cgroup::new();
        cgroup.join();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(file_name);
        Self {
            _in_node: in_node,
            cgroup,
            cluster,
            _dir: dir,
            file,
        }
    }

    /// Replaces the file with these objects, atomically.
    pub fn write(&self, items: &[Value]) {
        manifests::write(&self.file, items);
    }

    /// Replaces the file's bytes atomically.
    pub fn write_bytes(&self, bytes: &[u8]) {
        manifests::write_raw(&self.file, bytes);
    }

    /// Starts the agent on this file, in this cgroup.
    pub fn agent(&self, extra: &[&str]) -> Agent {
        let file = self.file.display().to_string();
        let mut args = vec!["--services-file", file.as_str()];
        args.extend_from_slice(extra);
        Agent::start(&self.cgroup.path, &args)
    }

    pub fn pod_ips(&self) -> Vec<String> {
        self.cluster
            .pods
            .iter()
            .map(|p| p.ip4.to_string())
            .collect()
    }
}
