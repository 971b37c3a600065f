//! The `bpf()` commands aya does not expose:
//! - opening a pinned object by path and `BPF_LINK_DETACH` (Linux 5.9+),
//!   which detaches a link at once, whoever else holds it. Without it, a
//!   link goes away only when the kernel gets round to releasing its last
//!   reference, so `lb-agent cleanup` could return while programs still run;
//! - `BPF_MAP_UPDATE_BATCH`/`BPF_MAP_DELETE_BATCH` (Linux 5.6+): thousands
//!   of map writes per syscall instead of one, for programming at scale.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `bpf_attr` for `BPF_OBJ_GET` (the fields used here).
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `bpf_attr` for `BPF_LINK_DETACH`.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for `cmd`, and its size is
    // passed; the kernel checks that it knows every byte given.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the object pinned at `path`.
///
/// # Errors
/// When nothing is pinned there.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = RawFd::try_from(bpf(BPF_OBJ_GET, &mut attr)?)
        .map_err(|_| io::Error::other("file descriptor out of range"))?;
    // SAFETY: the kernel just returned this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link behind `fd` now.
///
/// # Errors
/// `EINVAL`/`EOPNOTSUPP` on kernels before 5.9, or for a link that cannot
/// be detached.
pub fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = LinkDetachAttr {
        link_fd: u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Elements per batch call: bounds the kernel's time in one syscall.
const BATCH: usize = 16_384;

/// `bpf_attr` for the batch commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch stopped early.
#[derive(Debug)]
pub struct BatchError {
    /// Elements processed before the failure.
    pub done: usize,
    pub error: io::Error,
}

impl BatchError {
    /// The kernel has no batch operations for this map (before Linux 5.6).
    #[must_use]
    pub fn unsupported(&self) -> bool {
        // ENOTSUPP (524) is kernel-internal but reaches user space from bpf().
        self.done == 0
            && matches!(
                self.error.raw_os_error(),
                Some(libc::EINVAL | 524 | libc::EOPNOTSUPP)
            )
    }
}

/// Writes `keys[i] -> values[i]` in order, `BATCH` elements per syscall
/// (`BPF_MAP_UPDATE_BATCH`, Linux 5.6+). `K`/`V` must be the map's key and
/// value types.
///
/// # Errors
/// With the number done when an element fails (that element and the ones
/// after it were not written).
pub fn update_batch<K, V>(
    map_fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let sent = batch(
            BPF_MAP_UPDATE_BATCH,
            map_fd,
            k.as_ptr() as u64,
            v.as_ptr() as u64,
            k.len(),
        )
        .map_err(|(n, error)| BatchError {
            done: done + n,
            error,
        })?;
        done += sent;
    }
    Ok(())
}

/// Deletes `keys`, `BATCH` per syscall (`BPF_MAP_DELETE_BATCH`, Linux 5.6+).
///
/// # Errors
/// With the number done when a key fails (a missing key fails with ENOENT).
pub fn delete_batch<K>(map_fd: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    let mut done = 0;
    for k in keys.chunks(BATCH) {
        let sent = batch(BPF_MAP_DELETE_BATCH, map_fd, k.as_ptr() as u64, 0, k.len()).map_err(
            |(n, error)| BatchError {
                done: done + n,
                error,
            },
        )?;
        done += sent;
    }
    Ok(())
}

fn batch(
    cmd: libc::c_long,
    map_fd: BorrowedFd<'_>,
    keys: u64,
    values: u64,
    count: usize,
) -> Result<usize, (usize, io::Error)> {
    use std::os::fd::AsRawFd as _;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys,
        values,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        map_fd: u32::try_from(map_fd.as_raw_fd()).unwrap_or(u32::MAX),
        elem_flags: 0,
        flags: 0,
    };
    match bpf(cmd, &mut attr) {
        // On success and on error the kernel leaves the number done in `count`.
        Ok(_) => Ok(attr.count as usize),
        Err(error) => Err((attr.count as usize, error)),
    }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// `bpf_attr` for the single-element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Writes one element (`BPF_MAP_UPDATE_ELEM`, `BPF_ANY`).
///
/// # Errors
/// As the kernel reports them (`E2BIG` when a hash map is full).
pub fn update_elem<K, V>(map_fd: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = ElemAttr {
        map_fd: u32::try_from(map_fd.as_raw_fd()).unwrap_or(u32::MAX),
        pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Deletes one element; a missing key is not an error.
///
/// # Errors
/// As the kernel reports them.
pub fn delete_elem<K>(map_fd: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = ElemAttr {
        map_fd: u32::try_from(map_fd.as_raw_fd()).unwrap_or(u32::MAX),
        pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: 0,
        flags: 0,
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(drop),
    }
}
