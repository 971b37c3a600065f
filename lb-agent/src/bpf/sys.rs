//! The `bpf()` commands aya 0.14 does not expose, wrapped once with
//! aya-obj's generated `bpf_cmd` and `bpf_attr`, and typed as aya's map API
//! is (keys and values `aya::Pod`, checked against the map's sizes):
//! - `BPF_LINK_DETACH` (Linux 5.9+), which detaches a link at once,
//!   whoever else holds it. Without it, a link goes away only when the
//!   kernel gets round to releasing its last reference, so `lb-agent
//!   cleanup` could return while programs still run. aya's `PinnedLink`
//!   opens a pinned link but keeps its descriptor to itself, so the link is
//!   opened here (`BPF_OBJ_GET`);
//! - `BPF_MAP_UPDATE_BATCH`/`BPF_MAP_DELETE_BATCH` (Linux 5.6+): thousands
//!   of map writes per syscall instead of one, for programming at scale.
//!
//! Everything aya has (single elements, opening pinned maps) goes through
//! aya.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::{
    Pod,
    maps::{MapData, MapError},
};
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Elements per batch call: bounds the kernel's time in one syscall.
const BATCH: usize = 16_384;

/// A `bpf_attr` with every byte zero, as the kernel wants the ones a
/// command does not use.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a union of plain integer structs, for which
    // all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a whole `bpf_attr` with the fields of `cmd` set and
    // the rest zero, and its size is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A file descriptor as `bpf_attr` holds it.
fn attr_fd(fd: RawFd) -> u32 {
    u32::try_from(fd).unwrap_or(u32::MAX)
}

/// Detaches the link pinned at `path` now (`BPF_LINK_DETACH`); the pin
/// stays.
///
/// # Errors
/// When nothing is pinned there; `EINVAL`/`EOPNOTSUPP` on kernels before
/// 5.9, or for a link that cannot be detached.
pub(super) fn detach_link(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = c_path.as_ptr() as u64;
    let fd = RawFd::try_from(bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?)
        .map_err(|_| io::Error::other("file descriptor out of range"))?;
    // SAFETY: the kernel just returned this new descriptor.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = attr_fd(link.as_raw_fd());
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Why a batch stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    /// The key or value type is not the map's, or the map's sizes could
    /// not be read.
    #[error(transparent)]
    Layout(MapError),
    /// The kernel refused element `done` (the ones before it were done).
    #[error("after {done} elements: {error}")]
    Kernel {
        done: usize,
        #[source]
        error: io::Error,
    },
}

impl BatchError {
    /// The kernel has no batch operations for this map (before Linux 5.6).
    pub(super) fn unsupported(&self) -> bool {
        // ENOTSUPP (524) is kernel-internal but reaches user space from bpf().
        matches!(
            self,
            Self::Kernel { done: 0, error }
                if matches!(error.raw_os_error(), Some(libc::EINVAL | 524 | libc::EOPNOTSUPP))
        )
    }
}

/// The key and value sizes of `map`, as the kernel has them.
fn sizes(map: &MapData) -> Result<(u32, u32), MapError> {
    let info = map.info()?;
    Ok((info.key_size(), info.value_size()))
}

/// Checks that `K` is `key_size` bytes and, when a value size is given,
/// that `V` is `value_size` bytes, as aya's typed maps do when they are
/// made.
fn check_sizes<K: Pod, V: Pod>(key_size: u32, value_size: Option<u32>) -> Result<(), MapError> {
    let (size, expected) = (size_of::<K>(), key_size as usize);
    if size != expected {
        return Err(MapError::InvalidKeySize { size, expected });
    }
    match value_size.map(|v| (size_of::<V>(), v as usize)) {
        Some((size, expected)) if size != expected => {
            Err(MapError::InvalidValueSize { size, expected })
        }
        _ => Ok(()),
    }
}

/// Writes `keys[i] -> values[i]` in order, `BATCH` elements per syscall
/// (`BPF_MAP_UPDATE_BATCH`, Linux 5.6+).
///
/// # Errors
/// [`BatchError::Layout`] when `K` or `V` is not the map's key or value
/// type (nothing written); [`BatchError::Kernel`] with the number done when
/// an element fails (that element and the ones after it were not written).
///
/// # Panics
/// When there is not one value per key.
pub(super) fn update_batch<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    batches(bpf_cmd::BPF_MAP_UPDATE_BATCH, map, keys, Some(values))
}

/// Deletes `keys`, `BATCH` per syscall (`BPF_MAP_DELETE_BATCH`, Linux 5.6+).
///
/// # Errors
/// [`BatchError::Layout`] when `K` is not the map's key type (nothing
/// deleted); [`BatchError::Kernel`] with the number done when a key fails
/// (a missing key fails with ENOENT).
pub(super) fn delete_batch<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), BatchError> {
    batches(bpf_cmd::BPF_MAP_DELETE_BATCH, map, keys, None::<&[K]>)
}

/// Runs `cmd` over `keys` (and `values`, as many), `BATCH` elements per
/// syscall, once their sizes are checked against the map's.
fn batches<K: Pod, V: Pod>(
    cmd: bpf_cmd,
    map: &MapData,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<(), BatchError> {
    if keys.is_empty() {
        return Ok(());
    }
    sizes(map)
        .and_then(|(key_size, value_size)| {
            check_sizes::<K, V>(key_size, values.map(|_| value_size))
        })
        .map_err(BatchError::Layout)?;
    let mut done = 0;
    for (i, k) in keys.chunks(BATCH).enumerate() {
        let v = values.map_or(0, |v| v[i * BATCH..].as_ptr() as u64);
        done += batch(cmd, map, k.as_ptr() as u64, v, k.len()).map_err(|(n, error)| {
            BatchError::Kernel {
                done: done + n,
                error,
            }
        })?;
    }
    Ok(())
}

/// One batch command over `count` elements; the number done, also on error.
fn batch(
    cmd: bpf_cmd,
    map: &MapData,
    keys: u64,
    values: u64,
    count: usize,
) -> Result<usize, (usize, io::Error)> {
    let mut attr = zeroed_attr();
    attr.batch.keys = keys;
    attr.batch.values = values;
    attr.batch.count = u32::try_from(count).unwrap_or(u32::MAX);
    attr.batch.map_fd = attr_fd(map.fd().as_fd().as_raw_fd());
    let result = bpf(cmd, &mut attr);
    // On success and on error the kernel leaves the number done in `count`.
    // SAFETY: reading the plain integer the kernel wrote into the member
    // this command uses.
    let done = unsafe { attr.batch.count } as usize;
    result.map(|_| done).map_err(|error| (done, error))
}

#[cfg(test)]
mod tests {
    use std::io;

    use aya::maps::MapError;
    use lb_common::service::{ServiceKey, ServiceValue};

    use super::{BatchError, check_sizes};

    #[test]
    fn keys_and_values_must_have_the_map_sizes() {
        assert!(check_sizes::<ServiceKey, ServiceValue>(20, Some(4)).is_ok());
        assert!(
            check_sizes::<ServiceKey, u64>(20, None).is_ok(),
            "no value to check"
        );
        assert!(matches!(
            check_sizes::<u32, ServiceValue>(20, Some(4)),
            Err(MapError::InvalidKeySize {
                size: 4,
                expected: 20
            })
        ));
        assert!(matches!(
            check_sizes::<ServiceKey, ServiceKey>(20, Some(4)),
            Err(MapError::InvalidValueSize {
                size: 20,
                expected: 4
            })
        ));
    }

    #[test]
    fn only_a_first_element_refusal_means_no_batches() {
        let kernel = |done, errno| BatchError::Kernel {
            done,
            error: io::Error::from_raw_os_error(errno),
        };
        assert!(kernel(0, libc::EINVAL).unsupported());
        assert!(kernel(0, 524).unsupported());
        assert!(!kernel(3, libc::EINVAL).unsupported(), "some were written");
        assert!(!kernel(0, libc::E2BIG).unsupported(), "map full");
    }
}
