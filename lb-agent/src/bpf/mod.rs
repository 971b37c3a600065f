//! Everything that touches the kernel's BPF objects: the embedded programs,
//! feature probes, loading and pinning, the maps, the conversions between
//! the model and the map types, and the map-backed dataplane that
//! implements the update protocol (with its id allocator and its reaper).

mod batch;
pub mod conntrack;
pub mod convert;
pub mod dataplane;
pub(crate) mod features;
mod ids;
pub mod loader;
pub mod maps;
mod object;
mod reaper;
mod sys;
pub mod tc;

use std::path::PathBuf;

use aya::{
    EbpfError,
    maps::MapError,
    pin::PinError,
    programs::{ProgramError, links::LinkError},
};

/// Errors from the BPF layer. Each says what failed and, where a user can
/// act, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this lb-agent was built without its eBPF programs (stub build: nightly, rust-src or bpf-linker was missing); run `cargo xtask setup` and rebuild"
    )]
    StubBuild,
    #[error("failed to load {what}: {source}")]
    Load {
        what: &'static str,
        #[source]
        source: Box<EbpfError>,
    },
    #[error(
        "this kernel cannot run cgroup/connect4 programs (Linux 4.17+ with CONFIG_CGROUP_BPF is required, 5.10+ recommended); lb-agent cannot work here"
    )]
    KernelTooOld,
    #[error(
        "this kernel has no BPF links for cgroups (Linux 5.7+), so programs cannot stay attached after the agent exits; upgrade the kernel"
    )]
    NoLinks,
    #[error("the eBPF object has no map {name} (build mismatch)")]
    MissingMap { name: &'static str },
    #[error("failed to open pinned map {path}: {source}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("map {name} does not have this build's layout: {source}")]
    MapLayout {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "pinned maps in {dir} do not match this lb-agent: {detail}; keep the old settings, or run `lb-agent cleanup --bpffs {dir}` (services stop being translated until the agent programs them again)"
    )]
    IncompatiblePins { dir: PathBuf, detail: String },
    #[error("failed to {op} map {map}: {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("failed to {op} map {map}: {source}")]
    Sys {
        op: &'static str,
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for running programs failed: {0}")]
    Reaper(String),
    #[error("failed to map a BPF array into memory (needs Linux 5.5+): {source}")]
    Mmap {
        #[source]
        source: nix::Error,
    },
    #[error("the kernel rejected program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("failed to attach {program} to cgroup {cgroup}: {source}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("device {device} (--devices): {detail}")]
    Device { device: String, detail: String },
    #[error("failed to pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("failed to open pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    System(#[from] crate::system::Error),
}

impl Error {
    pub(crate) const fn map(op: &'static str, map: &'static str, source: MapError) -> Self {
        Self::Map { op, map, source }
    }
}
