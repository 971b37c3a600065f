//! Loading the data path: probe the kernel, check pins from an earlier run,
//! load the object with its maps pinned, attach every supported hook through
//! a BPF link pinned in bpffs (so the data path outlives the agent), and
//! swap out the links of an earlier run without a moment with none attached.
//!
//! Pin layout under the `--bpffs` directory:
//! - `maps/<name>`: every shared map (see `lb_common::map_names::PINNED`);
//! - `links/<program>`: one link per attached cgroup hook;
//! - `links/<program>@<device>`: one TCX link per tc program and device
//!   (see `super::tc`).

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use lb_common::{
    affinity::{AffinityKey, AffinityValue, ClientAffinityKey, MemberKey},
    backend::Backend,
    capacity,
    conntrack::{CtKey, CtValue, Device},
    globals,
    map_names::{self, PINNED},
    meta::{
        ABI_VERSION, FEATURE_ATOMIC_FETCH, FEATURE_CONNECT4, FEATURE_NAMES, FEATURE_NETNS_COOKIE,
        FEATURE_SET_RETVAL, FEATURE_SOCK_DESTROY, Meta,
    },
    revnat::{RevNatKey, RevNatValue},
    service::{ServiceKey, ServiceName, ServiceState, ServiceValue, SourceRange},
    stats::{STAT_COUNT, ServiceStats, TC_STAT_COUNT},
};

use super::{
    Error,
    features::{Features, HOOKS},
    maps::{Barrier, MapShape, Maps, open_pinned, pinned_shape},
    object, tc,
};
use crate::{model::Algorithm, system};

type Result<T, E = Error> = std::result::Result<T, E>;

/// Map sizes, set at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Service ports (frontends), and so service ids.
    pub services: u32,
    /// Backend slots, summed over all services.
    pub backends: u32,
    /// Reverse-translation entries (sockets x backends).
    pub revnat: u32,
    /// Session-affinity entries (client namespaces x services).
    pub affinity: u32,
    /// Connection-tracking entries of the tc programs (two per flow from
    /// another host).
    pub flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use lb_common::capacity;
        Self {
            services: capacity::SERVICES,
            backends: capacity::BACKENDS,
            revnat: capacity::REVNAT,
            affinity: capacity::AFFINITY,
            flows: capacity::CONNTRACK,
        }
    }
}

/// Where and how to load.
#[derive(Clone, Debug)]
pub struct Config {
    /// bpffs directory for pins.
    pub bpffs: PathBuf,
    /// cgroup2 directory to attach to.
    pub cgroup: PathBuf,
    pub capacity: Capacity,
    pub default_algorithm: Algorithm,
    /// Devices for the tc programs (resolved names; empty: none).
    pub devices: Vec<String>,
    /// How to attach the tc programs.
    pub tc_attach: tc::AttachMode,
}

/// Paths of the pins under the bpffs directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self { root: root.into() }
    }

    #[must_use]
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    #[must_use]
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    #[must_use]
    pub fn link(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }
}

/// A loaded, attached data path.
pub struct Loaded {
    pub maps: Maps,
    pub barrier: Barrier,
    pub features: Features,
    /// Feature bits actually active (hooks attached, helpers used).
    pub active: u32,
    /// Whether maps pinned by an earlier run were adopted.
    pub adopted: bool,
    /// Keeps the programs and the log buffer alive while the agent runs.
    pub ebpf: Ebpf,
}

/// Probes, loads, pins and attaches.
///
/// # Errors
/// On anything that would leave the data path not working: no privilege,
/// no cgroup2 or bpffs, a kernel without `connect4`, incompatible pins, a
/// verifier rejection, or a failed attach. Nothing attached before is
/// detached on error.
pub fn load(cfg: &Config) -> Result<Loaded> {
    system::check_privileges()?;
    system::raise_memlock_limit();
    system::check_cgroup2(&cfg.cgroup)?;
    system::ensure_bpffs(&cfg.bpffs)?;
    let features = Features::probe()?;
    if !features.has(FEATURE_CONNECT4) {
        return Err(Error::KernelTooOld);
    }
    tracing::info!(features = %features.describe(), "probed kernel");

    let layout = PinLayout::new(&cfg.bpffs);
    for dir in [layout.maps_dir(), layout.links_dir()] {
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let adopted = check_pins(&layout, &cfg.capacity)?;

    let flag = |f: u32| u8::from(features.has(f));
    let (set_retval, fetch, netns) = (
        flag(FEATURE_SET_RETVAL),
        flag(FEATURE_ATOMIC_FETCH),
        flag(FEATURE_NETNS_COOKIE),
    );
    let map_paths: Vec<(&'static str, PathBuf)> =
        PINNED.iter().map(|&n| (n, layout.map(n))).collect();
    let mut loader = EbpfLoader::new();
    loader
        .override_global(globals::HAS_SET_RETVAL, &set_retval, true)
        .override_global(globals::HAS_ATOMIC_FETCH, &fetch, true)
        .override_global(globals::HAS_NETNS_COOKIE, &netns, true);
    for (name, size) in capacities(&cfg.capacity) {
        loader.map_max_entries(name, size);
    }
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(object::datapath(features.has(FEATURE_ATOMIC_FETCH))?)
        .map_err(|source| Error::Load {
            what: "the data-path programs",
            source: Box::new(source),
        })?;

    let mut active = features.supported
        & (FEATURE_SET_RETVAL | FEATURE_ATOMIC_FETCH | FEATURE_NETNS_COOKIE | FEATURE_SOCK_DESTROY);
    let mut new_links: Vec<(String, FdLink)> = Vec::new();
    for (hook, link) in attach_all(&mut ebpf, features, &cfg.cgroup)? {
        active |= hook_feature(hook);
        new_links.push((hook.to_owned(), link));
    }
    for tc_link in tc::attach(&mut ebpf, &cfg.devices, cfg.tc_attach)? {
        if let Some(link) = tc_link.link {
            new_links.push((tc_link.name, link));
        }
    }
    swap_links(&layout, new_links)?;

    let mut maps = Maps::open(&mut ebpf)?;
    let barrier = Barrier::open(&mut ebpf)?;
    let previous = maps.read_meta().unwrap_or_default();
    maps.write_meta(&Meta {
        abi_version: ABI_VERSION,
        features: active,
        unsupported: known_features() & !features.supported,
        default_algorithm: cfg.default_algorithm.to_raw(),
        pad: [0; 3],
        generation: previous.generation,
        last_sync_unix_ms: previous.last_sync_unix_ms,
    })?;
    for hook in HOOKS.iter().filter(|h| !features.has(h.feature)) {
        tracing::warn!(
            hook = hook.program,
            lost = hook.lost,
            "hook unsupported on this kernel"
        );
    }
    Ok(Loaded {
        maps,
        barrier,
        features,
        active,
        adopted,
        ebpf,
    })
}

fn hook_feature(program: &str) -> u32 {
    HOOKS
        .iter()
        .find(|h| h.program == program)
        .map_or(0, |h| h.feature)
}

fn known_features() -> u32 {
    FEATURE_NAMES.iter().fold(0, |acc, (bit, _)| acc | bit)
}

fn capacities(c: &Capacity) -> [(&'static str, u32); 12] {
    [
        (map_names::SERVICES, c.services),
        (map_names::SERVICE_STATE, c.services),
        (map_names::SERVICE_NAMES, c.services),
        (map_names::BACKENDS, c.backends),
        (map_names::REVNAT, c.revnat),
        (map_names::AFFINITY, c.affinity),
        (map_names::AFFINITY_MEMBERS, c.backends),
        (map_names::RR_COUNTERS, c.services),
        (map_names::SERVICE_STATS, c.services),
        (map_names::CONNTRACK, c.flows),
        (map_names::TC_AFFINITY, c.affinity),
        (map_names::SOURCE_RANGES, c.services),
    ]
}

/// The shape every pinned map must have for this build and these sizes.
fn expected_shapes(c: &Capacity) -> Vec<(&'static str, MapShape)> {
    fn shape<K, V>(max_entries: u32) -> MapShape {
        #[expect(clippy::cast_possible_truncation, reason = "map types are small")]
        MapShape {
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
        }
    }
    vec![
        (
            map_names::SERVICES,
            shape::<ServiceKey, ServiceValue>(c.services),
        ),
        (
            map_names::SERVICE_STATE,
            shape::<u32, ServiceState>(c.services),
        ),
        (map_names::BACKENDS, shape::<u32, Backend>(c.backends)),
        (map_names::REVNAT, shape::<RevNatKey, RevNatValue>(c.revnat)),
        (
            map_names::AFFINITY,
            shape::<AffinityKey, AffinityValue>(c.affinity),
        ),
        (
            map_names::AFFINITY_MEMBERS,
            shape::<MemberKey, u32>(c.backends),
        ),
        (map_names::RR_COUNTERS, shape::<u32, u64>(c.services)),
        (
            map_names::SERVICE_STATS,
            shape::<u32, ServiceStats>(c.services),
        ),
        (map_names::GLOBAL_STATS, shape::<u32, u64>(STAT_COUNT)),
        (
            map_names::SERVICE_NAMES,
            shape::<u32, ServiceName>(c.services),
        ),
        (map_names::META, shape::<u32, Meta>(1)),
        (map_names::CONNTRACK, shape::<CtKey, CtValue>(c.flows)),
        (map_names::DEVICES, shape::<u32, Device>(capacity::DEVICES)),
        (map_names::TC_STATS, shape::<u32, u64>(TC_STAT_COUNT)),
        (
            map_names::TC_AFFINITY,
            shape::<ClientAffinityKey, AffinityValue>(c.affinity),
        ),
        (
            map_names::SOURCE_RANGES,
            shape::<aya::maps::lpm_trie::Key<SourceRange>, u8>(c.services),
        ),
    ]
}

/// Checks maps pinned by an earlier run against this build and these sizes.
/// Returns whether there were any to adopt.
fn check_pins(layout: &PinLayout, capacity: &Capacity) -> Result<bool> {
    let mut found = false;
    for (name, want) in expected_shapes(capacity) {
        let path = layout.map(name);
        let Some(have) = pinned_shape(&path)? else {
            continue;
        };
        found = true;
        if have.key_size != want.key_size || have.value_size != want.value_size {
            return Err(Error::IncompatiblePins {
                dir: layout.root.clone(),
                detail: format!(
                    "{name} has {}-byte keys and {}-byte values, this build uses {} and {} (created by another lb-agent version)",
                    have.key_size, have.value_size, want.key_size, want.value_size
                ),
            });
        }
        if have.max_entries != want.max_entries {
            return Err(Error::IncompatiblePins {
                dir: layout.root.clone(),
                detail: format!(
                    "{name} holds {} entries but the flags ask for {} (a map cannot be resized)",
                    have.max_entries, want.max_entries
                ),
            });
        }
    }
    if found {
        let meta_path = layout.map(map_names::META);
        if let Ok(pinned) = open_pinned::<Array<MapData, Meta>>(&meta_path) {
            let meta = pinned.get(&0, 0).ok();
            if let Some(meta) = meta.filter(|m| m.abi_version != 0 && m.abi_version != ABI_VERSION)
            {
                return Err(Error::IncompatiblePins {
                    dir: layout.root.clone(),
                    detail: format!(
                        "they use map layout version {}, this build uses {ABI_VERSION}",
                        meta.abi_version
                    ),
                });
            }
        }
    }
    Ok(found)
}

/// Loads and attaches every hook the kernel supports. The links are held
/// by file descriptor until [`swap_links`] pins them.
fn attach_all(
    ebpf: &mut Ebpf,
    features: Features,
    cgroup: &Path,
) -> Result<Vec<(&'static str, FdLink)>> {
    let cgroup_file = File::open(cgroup).map_err(|source| Error::Io {
        path: cgroup.into(),
        source,
    })?;
    let mut links = Vec::new();
    for hook in HOOKS.iter().filter(|h| features.has(h.feature)) {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(hook.program)
            .ok_or(Error::MissingMap { name: hook.program })?
            .try_into()
            .map_err(|source| Error::Program {
                program: hook.program,
                source,
            })?;
        program.load().map_err(|source| Error::Program {
            program: hook.program,
            source,
        })?;
        // With BPF links, the kernel always attaches in multi mode and
        // rejects any flag: `Single` is what asks for no flags.
        let id = program
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .map_err(|source| Error::Attach {
                program: hook.program,
                cgroup: cgroup.into(),
                source,
            })?;
        let link = program.take_link(id).map_err(|source| Error::Attach {
            program: hook.program,
            cgroup: cgroup.into(),
            source,
        })?;
        let link: FdLink = link.try_into().map_err(|_| Error::NoLinks)?;
        links.push((hook.program, link));
    }
    Ok(links)
}

/// Replaces the pinned links of an earlier run by the new ones. The new
/// links are attached (held by fd) before the old pins go, so there is no
/// moment without a program; while both are attached the old one translates
/// and the new one sees a backend address and leaves it alone.
fn swap_links(layout: &PinLayout, new_links: Vec<(String, FdLink)>) -> Result<()> {
    remove_link_pins(layout)?;
    for (program, link) in new_links {
        let path = layout.link(&program);
        link.pin(&path)
            .map_err(|source| Error::Pin { path, source })?;
    }
    Ok(())
}

/// Removes every pinned link: each is detached once no one holds it.
fn remove_link_pins(layout: &PinLayout) -> Result<Vec<PathBuf>> {
    remove_links(layout, false)
}

/// Removes every pinned link; with `detach`, detaches each first so that
/// no program runs once this returns (otherwise the kernel detaches it
/// when it releases the link, shortly after).
fn remove_links(layout: &PinLayout, detach: bool) -> Result<Vec<PathBuf>> {
    let dir = layout.links_dir();
    let mut removed = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    for entry in entries {
        let path = entry
            .map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?
            .path();
        if detach {
            match super::sys::detach_link(&path) {
                Ok(()) => {}
                // Before Linux 5.9 there is no BPF_LINK_DETACH: the unpin
                // below still detaches, asynchronously.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {}
                Err(source) => return Err(Error::Io { path, source }),
            }
        }
        fs::remove_file(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    Ok(removed)
}

/// What `cleanup` removed.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub links: Vec<PathBuf>,
    pub maps: Vec<PathBuf>,
}

/// Detaches the programs (by removing their link pins) and removes the map
/// pins and the directories. Works without loading anything, so it also
/// clears pins an incompatible build left.
///
/// # Errors
/// When a pin exists but cannot be removed.
pub fn cleanup(bpffs: &Path) -> Result<Cleaned> {
    let layout = PinLayout::new(bpffs);
    let mut cleaned = Cleaned {
        links: remove_links(&layout, true)?,
        maps: Vec::new(),
    };
    tc::detach_filters_except(&[]);
    let maps_dir = layout.maps_dir();
    if let Ok(entries) = fs::read_dir(&maps_dir) {
        for entry in entries {
            let path = entry
                .map_err(|source| Error::Io {
                    path: maps_dir.clone(),
                    source,
                })?
                .path();
            fs::remove_file(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            cleaned.maps.push(path);
        }
    }
    for dir in [layout.links_dir(), maps_dir, layout.root.clone()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { path: dir, source }),
        }
    }
    Ok(cleaned)
}
