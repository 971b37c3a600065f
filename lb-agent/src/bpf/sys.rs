//! The two `bpf()` commands aya does not expose: opening a pinned object by
//! path and `BPF_LINK_DETACH` (Linux 5.9+), which detaches a link at once,
//! whoever else holds it. Without it, a link goes away only when the kernel
//! gets round to releasing its last reference, so `lb-agent cleanup` could
//! return while the programs still run.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd, RawFd},
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
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<T>(),
        )
    };
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
