//! One test's world: pods, the node namespace the test thread runs in, the
//! cgroup the test process has joined, a scratch directory; and on top of
//! it the file source's services file.

use std::{ops::Deref, path::PathBuf};

use serde_json::Value;

use super::{
    agent::Agent,
    cluster::Cluster,
    manifests,
    net::{Cgroup, Entered},
};

/// Fields drop in order: leave the node namespace, leave the cgroup, then
/// delete the namespaces and the directory.
pub struct World {
    _in_node: Entered,
    pub cgroup: Cgroup,
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
}

impl World {
    /// `pods` pod namespaces behind a node namespace, which the calling
    /// thread enters; the whole test process joins a fresh cgroup.
    pub fn new(pods: usize) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "end-to-end tests need root (network namespaces, cgroups, BPF): run `sudo cargo xtask test`"
        );
        let cluster = Cluster::new(pods);
        let in_node = cluster.node.enter();
        let cgroup = Cgroup::new();
        cgroup.join();
        Self {
            _in_node: in_node,
            cgroup,
            cluster,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Starts the agent with these arguments, in this cgroup.
    pub fn agent(&self, args: &[&str]) -> Agent {
        Agent::start(&self.cgroup.path, args)
    }

    pub fn pod_ips(&self) -> Vec<String> {
        self.cluster
            .pods
            .iter()
            .map(|p| p.ip4.to_string())
            .collect()
    }
}

/// A [`World`] and the agent's services file in it.
pub struct FileEnv {
    world: World,
    pub file: PathBuf,
}

impl Deref for FileEnv {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

impl FileEnv {
    /// The services file is `file_name` (its extension tells YAML from
    /// JSON only to the reader).
    pub fn new(pods: usize, file_name: &str) -> Self {
        let world = World::new(pods);
        let file = world.dir.path().join(file_name);
        Self { world, file }
    }

    /// Replaces the file with these objects, atomically.
    pub fn write(&self, items: &[Value]) {
        manifests::write(&self.file, items);
    }

    /// Replaces the file's bytes atomically.
    pub fn write_bytes(&self, bytes: &[u8]) {
        manifests::write_raw(&self.file, bytes);
    }

    /// Starts the agent on this file, with `extra` arguments.
    pub fn agent(&self, extra: &[&str]) -> Agent {
        let file = self.file.display().to_string();
        let mut args = vec!["--services-file", file.as_str()];
        args.extend_from_slice(extra);
        self.world.agent(&args)
    }
}
