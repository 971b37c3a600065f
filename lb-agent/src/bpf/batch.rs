//! Writing many elements of a hash map: in batches where the kernel can
//! (`BPF_MAP_*_BATCH`, Linux 5.6+, through `super::sys`), one by one
//! through aya's API where it cannot.

use std::cell::Cell;

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData, MapError},
    sys::SyscallError,
};

use super::{
    Error,
    sys::{self, BatchError},
};

type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether the kernel has batch map operations, found out on first use.
pub(super) struct Batcher {
    supported: Cell<bool>,
}

impl Batcher {
    pub(super) const fn new() -> Self {
        Self {
            supported: Cell::new(true),
        }
    }

    /// Runs `op` in batches unless the kernel is known to lack them;
    /// `None` when it does (now or before).
    fn batched(
        &self,
        op: impl FnOnce() -> Result<(), BatchError>,
    ) -> Option<Result<(), BatchError>> {
        if !self.supported.get() {
            return None;
        }
        match op() {
            Err(e) if e.unsupported() => {
                self.supported.set(false);
                None
            }
            other => Some(other),
        }
    }

    /// Writes `keys[i] -> values[i]`.
    ///
    /// # Errors
    /// When the types are not the map's or the kernel refuses an element.
    pub(super) fn update<K: Pod, V: Pod>(
        &self,
        map: &mut HashMap<MapData, K, V>,
        keys: &[K],
        values: &[V],
        name: &'static str,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        match self.batched(|| sys::update_batch(map.map(), keys, values)) {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => return Err(batch_error("update", name, e)),
            None => {}
        }
        for (k, v) in keys.iter().zip(values) {
            map.insert(k, v, 0)
                .map_err(|e| elem_error("update", name, e))?;
        }
        Ok(())
    }

    /// Writes as many of `keys[i] -> values[i]` from the first as one batch
    /// does, and returns how many; the caller writes the rest one by one.
    ///
    /// # Errors
    /// When the types are not the map's.
    pub(super) fn update_prefix<K: Pod, V: Pod>(
        &self,
        map: &HashMap<MapData, K, V>,
        keys: &[K],
        values: &[V],
        name: &'static str,
    ) -> Result<usize> {
        match self.batched(|| sys::update_batch(map.map(), keys, values)) {
            Some(Ok(())) => Ok(keys.len()),
            Some(Err(BatchError::Kernel { done, .. })) => Ok(done),
            Some(Err(BatchError::Layout(source))) => Err(Error::MapLayout { name, source }),
            None => Ok(0),
        }
    }

    /// Deletes `keys`; keys already gone are fine.
    ///
    /// # Errors
    /// When the key type is not the map's or the kernel refuses a key.
    pub(super) fn delete<K: Pod, V: Pod>(
        &self,
        map: &mut HashMap<MapData, K, V>,
        keys: &[K],
        name: &'static str,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let rest = match self.batched(|| sys::delete_batch(map.map(), keys)) {
            Some(Ok(())) => return Ok(()),
            // A key already gone stops the batch: finish one by one.
            Some(Err(BatchError::Kernel { done, .. })) => &keys[done..],
            Some(Err(BatchError::Layout(source))) => {
                return Err(Error::MapLayout { name, source });
            }
            None => keys,
        };
        for k in rest {
            match map.remove(k) {
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                other => other.map_err(|e| elem_error("delete", name, e))?,
            }
        }
        Ok(())
    }
}

/// The error number the kernel returned for a single-element operation.
pub(super) fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

/// A single-element failure: the kernel's own error when it refused.
pub(super) fn elem_error(op: &'static str, map: &'static str, e: MapError) -> Error {
    match e {
        MapError::SyscallError(SyscallError { io_error, .. }) => Error::Sys {
            op,
            map,
            source: io_error,
        },
        source => Error::map(op, map, source),
    }
}

fn batch_error(op: &'static str, map: &'static str, e: BatchError) -> Error {
    match e {
        BatchError::Layout(source) => Error::MapLayout { name: map, source },
        BatchError::Kernel { error, .. } => Error::Sys {
            op,
            map,
            source: error,
        },
    }
}
