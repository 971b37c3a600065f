//! Typed handles on the maps, opened from a fresh load or from pins, and the
//! read side shared by adoption (`BpfDataplane::adopt`) and `lb-agent list`.

use std::{
    collections::BTreeMap,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    ptr::NonNull,
};

use aya::maps::{
    Array, ArrayOfMaps, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray,
};
use lb_common::{
    affinity::MemberKey,
    backend::Backend,
    map_names,
    meta::Meta,
    service::{ServiceKey, ServiceName, ServiceState, ServiceValue, SourceRange},
    stats::{STAT_COUNT, ServiceStats},
};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::{Error, convert::name_str};

type Result<T, E = Error> = std::result::Result<T, E>;

/// The pinned maps the agent reads and writes. The arrays the agent
/// writes in bulk are mapped into its memory; the hash maps are read
/// through aya and written in batches where the kernel can
/// (`super::batch`).
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub state: MmapArray<ServiceState>,
    pub backends: MmapArray<Backend>,
    pub members: HashMap<MapData, MemberKey, u32>,
    pub ranges: LpmTrie<MapData, SourceRange, u8>,
    pub rr: MmapArray<u64>,
    pub service_stats: MmapArray<ServiceStats>,
    pub stats: PerCpuArray<MapData, u64>,
    pub names: HashMap<MapData, u32, ServiceName>,
    pub meta: Array<MapData, Meta>,
}

/// Something that hands out maps by name, each as the type its user
/// wants (a typed aya map, checked against the map's key and value sizes):
/// a freshly loaded object, or a directory of pins.
pub trait MapSource {
    /// # Errors
    /// When the map is missing, cannot be opened, or is not a `T`.
    fn take<T: TryFrom<Map, Error = MapError>>(&mut self, name: &'static str) -> Result<T>;
}

impl MapSource for aya::Ebpf {
    fn take<T: TryFrom<Map, Error = MapError>>(&mut self, name: &'static str) -> Result<T> {
        let map = self.take_map(name).ok_or(Error::MissingMap { name })?;
        T::try_from(map).map_err(|source| Error::MapLayout { name, source })
    }
}

/// Opens maps pinned under `<dir>/<name>`.
pub struct PinDir(pub PathBuf);

impl MapSource for PinDir {
    fn take<T: TryFrom<Map, Error = MapError>>(&mut self, name: &'static str) -> Result<T> {
        open_pinned(&self.0.join(name))
    }
}

/// Opens the map pinned at `path` as `T`, a typed aya map (`HashMap`,
/// `Array`, ...), which checks the map's type and its key and value sizes.
/// The one way the agent opens a pinned map.
///
/// # Errors
/// [`Error::OpenPin`], naming the path, when nothing is pinned there or
/// the map there is not a `T`.
pub fn open_pinned<T: TryFrom<Map, Error = MapError>>(path: &Path) -> Result<T> {
    let open_error = |source| Error::OpenPin {
        path: path.into(),
        source,
    };
    let map = pinned_data(path)
        .and_then(Map::from_map_data)
        .map_err(open_error)?;
    T::try_from(map).map_err(open_error)
}

/// The untyped handle on the map pinned at `path`, for [`open_pinned`] and
/// [`pinned_shape`] only.
fn pinned_data(path: &Path) -> Result<MapData, MapError> {
    MapData::from_pin(path)
}

impl Maps {
    /// Takes every shared map from `source` and checks its layout.
    ///
    /// # Errors
    /// When a map is missing or its key/value sizes are not this build's.
    pub fn open(source: &mut impl MapSource) -> Result<Self> {
        Ok(Self {
            services: source.take(map_names::SERVICES)?,
            state: MmapArray::new(source.take(map_names::SERVICE_STATE)?)?,
            backends: MmapArray::new(source.take(map_names::BACKENDS)?)?,
            members: source.take(map_names::AFFINITY_MEMBERS)?,
            ranges: source.take(map_names::SOURCE_RANGES)?,
            rr: MmapArray::new(source.take(map_names::RR_COUNTERS)?)?,
            service_stats: MmapArray::new(source.take(map_names::SERVICE_STATS)?)?,
            stats: source.take(map_names::GLOBAL_STATS)?,
            names: source.take(map_names::SERVICE_NAMES)?,
            meta: source.take(map_names::META)?,
        })
    }

    /// Capacity of the service table (and of the per-service arrays).
    #[must_use]
    pub const fn service_capacity(&self) -> u32 {
        self.rr.capacity()
    }

    /// # Errors
    /// When the map cannot be read.
    pub fn read_meta(&self) -> Result<Meta> {
        self.meta
            .get(&0, 0)
            .map_err(|source| Error::map("read", map_names::META, source))
    }

    /// # Errors
    /// When the map cannot be written.
    pub fn write_meta(&mut self, meta: &Meta) -> Result<()> {
        self.meta
            .set(0, meta, 0)
            .map_err(|source| Error::map("write", map_names::META, source))
    }

    /// The global counters summed over CPUs, indexed by `STAT_*`.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn read_stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        let mut out = [0u64; STAT_COUNT as usize];
        for (i, slot) in (0..STAT_COUNT).zip(out.iter_mut()) {
            let per_cpu = self
                .stats
                .get(&i, 0)
                .map_err(|source| Error::map("read", map_names::GLOBAL_STATS, source))?;
            *slot = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(out)
    }

    /// Everything in the service table, with backends, names and counters.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn read_services(&self) -> Result<Vec<ServiceRecord>> {
        let mut names = BTreeMap::new();
        for item in &self.names {
            let (id, name) =
                item.map_err(|source| Error::map("read", map_names::SERVICE_NAMES, source))?;
            names.insert(id, name);
        }
        let mut out = Vec::new();
        for item in &self.services {
            let (key, ServiceValue { id }) =
                item.map_err(|source| Error::map("read", map_names::SERVICES, source))?;
            let state = self.state.get(id);
            let backends =
                state.and_then(|s| self.backends.read(s.backends.first, s.backends.count));
            out.push(ServiceRecord {
                key,
                id,
                state,
                name: names.get(&id).map(name_str),
                backends,
                stats: self.service_stats.get(id).unwrap_or_default(),
            });
        }
        Ok(out)
    }
}

/// One entry of the service table as read back from the maps.
#[derive(Clone, Debug)]
pub struct ServiceRecord {
    pub key: ServiceKey,
    pub id: u32,
    /// `None` when the id is outside the table (corrupt entry).
    pub state: Option<ServiceState>,
    pub name: Option<String>,
    /// `None` when the range is outside the table (corrupt entry).
    pub backends: Option<Vec<Backend>>,
    pub stats: ServiceStats,
}

/// A `BPF_F_MMAPABLE` array mapped into the agent's memory: entries are
/// read and written with plain loads and stores, no syscall. The element
/// stride of a BPF array is the value size rounded up to 8, so `T` must be
/// a multiple of 8 bytes.
pub struct MmapArray<T: aya::Pod> {
    /// Keeps the map (and so the mapping's backing) alive.
    _map: Array<MapData, T>,
    ptr: NonNull<T>,
    len: u32,
    mapped_bytes: usize,
}

// SAFETY: the mapping is owned by this value and only accessed through
// `&self`/`&mut self`; `T` is plain data.
unsafe impl<T: aya::Pod + Send> Send for MmapArray<T> {}
// SAFETY: as above; shared access only reads.
unsafe impl<T: aya::Pod + Sync> Sync for MmapArray<T> {}

impl<T: aya::Pod> MmapArray<T> {
    fn new(map: Array<MapData, T>) -> Result<Self> {
        const {
            assert!(
                size_of::<T>().is_multiple_of(8),
                "BPF array stride is a multiple of 8"
            );
        }
        let len = map.len();
        let page = page_size();
        let bytes = (len as usize * size_of::<T>()).div_ceil(page) * page;
        let length = std::num::NonZeroUsize::new(bytes).ok_or(Error::Mmap {
            source: nix::Error::EINVAL,
        })?;
        let fd = map.map().fd().as_fd();
        // SAFETY: a shared mapping of a BPF array's value area; the kernel
        // keeps it valid while the map lives, which `_map` ensures.
        let addr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(|source| Error::Mmap { source })?;
        Ok(Self {
            _map: map,
            ptr: addr.cast(),
            len,
            mapped_bytes: bytes,
        })
    }

    /// Number of entries.
    #[must_use]
    pub const fn capacity(&self) -> u32 {
        self.len
    }

    /// Writes `values` at `first..`. For `lb_backends` the caller guarantees
    /// that no service references the range (update protocol,
    /// `lb_common::service`).
    ///
    /// # Panics
    /// If the range is outside the array (an allocator bug).
    pub fn write(&mut self, first: u32, values: &[T]) {
        let end = first as usize + values.len();
        assert!(
            end <= self.len as usize,
            "range {first}..{end} outside the array"
        );
        for (i, v) in values.iter().enumerate() {
            // SAFETY: in bounds (checked above), aligned (stride = size).
            unsafe { self.ptr.as_ptr().add(first as usize + i).write_volatile(*v) };
        }
        // Publish the entries before the map update that references them.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Reads `count` entries at `first`; `None` when out of bounds.
    #[must_use]
    pub fn read(&self, first: u32, count: u32) -> Option<Vec<T>> {
        let end = u64::from(first) + u64::from(count);
        if end > u64::from(self.len) {
            return None;
        }
        Some(
            (first..first + count)
                // SAFETY: in bounds (checked above), aligned.
                .map(|i| unsafe { self.ptr.as_ptr().add(i as usize).read_volatile() })
                .collect(),
        )
    }

    /// Stores `word` into the first 8 bytes of entry `index` with one
    /// aligned 8-byte store (how a service's backend range changes while
    /// programs read it with one 8-byte load).
    ///
    /// # Panics
    /// If the index is outside the array, or `T` is not 8-byte aligned.
    pub fn store_first_word(&mut self, index: u32, word: u64) {
        assert!(index < self.len, "index {index} outside the array");
        assert!(align_of::<T>() >= 8, "the first word must be aligned");
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: in bounds (checked), 8-byte aligned (checked), inside a
        // mapping this value owns; an atomic store is one instruction.
        unsafe {
            let word_ptr = self.ptr.as_ptr().add(index as usize).cast::<u64>();
            std::sync::atomic::AtomicU64::from_ptr(word_ptr)
                .store(word, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// One entry; `None` when out of bounds.
    #[must_use]
    pub fn get(&self, index: u32) -> Option<T> {
        // SAFETY: in bounds (checked), aligned.
        (index < self.len).then(|| unsafe { self.ptr.as_ptr().add(index as usize).read_volatile() })
    }
}

impl<T: aya::Pod> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping created in `new`, unmapped once.
        let _ = unsafe { munmap(self.ptr.cast(), self.mapped_bytes) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Waits for every running program to finish: updating an entry of a
/// map-in-map makes the kernel run `synchronize_rcu()` before the syscall
/// returns (`maybe_wait_bpf_programs`). Step 3 of the update protocol.
pub struct Barrier {
    outer: ArrayOfMaps<MapData, Array<MapData, u32>>,
    inner: Array<MapData, u32>,
}

impl Barrier {
    /// # Errors
    /// When the map is missing or the inner map cannot be created.
    pub fn open(source: &mut impl MapSource) -> Result<Self> {
        let outer = source.take(map_names::BARRIER)?;
        let inner = Array::<MapData, u32>::create(1, 0)
            .map_err(|source| Error::map("create", "lb_barrier inner", source))?;
        Ok(Self { outer, inner })
    }

    /// Returns once no program that started before the call is running.
    ///
    /// # Errors
    /// When the kernel refuses the update.
    pub fn wait(&mut self) -> Result<()> {
        self.outer
            .set(0, &self.inner, 0)
            .map_err(|source| Error::map("update", map_names::BARRIER, source))
    }
}

/// What a pinned map looks like, for checking pins against this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapShape {
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The shape of the map pinned at `path`, if there is one.
///
/// # Errors
/// When something is pinned there but cannot be opened as a map.
pub fn pinned_shape(path: &Path) -> Result<Option<MapShape>> {
    if !path.exists() {
        return Ok(None);
    }
    let info = pinned_data(path)
        .and_then(|map| map.info())
        .map_err(|source| Error::OpenPin {
            path: path.into(),
            source,
        })?;
    Ok(Some(MapShape {
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }))
}
