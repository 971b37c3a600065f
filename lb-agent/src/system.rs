//! The machine the agent runs on: privileges, the cgroup2 mount, bpffs.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{FsType, statfs},
};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: FsType = FsType(0xcafe_4a11);
/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: FsType = FsType(0x6367_7270);
/// Where bpffs lives by convention.
const BPF_FS_DEFAULT: &str = "/sys/fs/bpf";

/// Errors a user can cause or fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "lb-agent needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN to load and attach eBPF programs (and CAP_SYS_ADMIN to mount bpffs); run it as root (sudo) or as the DaemonSet in deploy/"
    )]
    NotPrivileged,
    #[error(
        "no cgroup2 filesystem is mounted (checked /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup` or pass --cgroup PATH"
    )]
    NoCgroup2,
    #[error("{path}: not a cgroup2 directory; pass a directory of the cgroup2 mount with --cgroup")]
    NotCgroup2 { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not on a bpf filesystem and lb-agent only mounts one at {BPF_FS_DEFAULT}; mount it with `mount -t bpf bpf DIR` or pick a --bpffs path under {BPF_FS_DEFAULT}"
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "failed to mount bpffs at {BPF_FS_DEFAULT}: {source}; mount it with `mount -t bpf bpf {BPF_FS_DEFAULT}`"
    )]
    MountBpffs {
        #[source]
        source: nix::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// A capability the agent uses, and what for.
#[derive(Clone, Copy, Debug)]
pub struct Capability {
    /// As container runtimes and `capabilities(7)` name it, without `CAP_`.
    pub name: &'static str,
    /// Its bit in `CapEff`.
    pub bit: u32,
    pub what_for: &'static str,
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Every capability the agent uses (the DaemonSet grants exactly these).
/// [`check_privileges`] refuses to start without `NET_ADMIN` and one of
/// `BPF` or `SYS_ADMIN`; without `SYS_ADMIN` it cannot enter pods' network
/// namespaces to close their sockets (it warns), nor mount bpffs.
pub const CAPABILITIES: [Capability; 3] = [
    Capability {
        name: "BPF",
        bit: CAP_BPF,
        what_for: "bpf(): create the maps, load the programs, pin them (CAP_SYS_ADMIN also allows it)",
    },
    Capability {
        name: "NET_ADMIN",
        bit: CAP_NET_ADMIN,
        what_for: "load and attach cgroup sock_addr programs; destroy sockets over sock_diag",
    },
    Capability {
        name: "SYS_ADMIN",
        bit: CAP_SYS_ADMIN,
        what_for: "enter pods' network namespaces (setns) to close their sockets; mount bpffs",
    },
];

/// Checks the effective capabilities before anything is loaded, so that a
/// missing privilege gets one clear line instead of an `EPERM` from deep
/// inside a syscall.
///
/// # Errors
/// [`Error::NotPrivileged`] when a needed capability is missing.
pub fn check_privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").map_err(|source| Error::Io {
        path: "/proc/self/status".into(),
        source,
    })?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    if !(has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))) {
        return Err(Error::NotPrivileged);
    }
    for cap in CAPABILITIES.iter().filter(|c| !has(c.bit)) {
        tracing::warn!(
            capability = cap.name,
            what_for = cap.what_for,
            "capability missing: what it is for will fail"
        );
    }
    Ok(())
}

/// Lifts `RLIMIT_MEMLOCK`: before Linux 5.11, BPF maps are charged to it
/// and the default (often 64 KiB or 8 MiB) is far too small for the maps.
/// Unlimited needs `CAP_SYS_RESOURCE`; without it the soft limit is raised
/// to the hard one. Later kernels charge the memory cgroup instead, so a
/// failure here is only logged.
pub fn raise_memlock_limit() {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid, writable rlimit struct for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut current) } != 0 {
        return;
    }
    for wanted in [
        libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        },
        libc::rlimit {
            rlim_cur: current.rlim_max,
            rlim_max: current.rlim_max,
        },
    ] {
        // SAFETY: a valid rlimit struct for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const wanted) } == 0 {
            return;
        }
    }
    tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
}

/// The root of the cgroup2 mount, found in `/proc/self/mountinfo` (it is
/// `/sys/fs/cgroup` on most systems, `/sys/fs/cgroup/unified` on hybrid ones).
///
/// # Errors
/// [`Error::NoCgroup2`] when no cgroup2 filesystem is mounted.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|source| Error::Io {
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    cgroup2_from_mountinfo(&mountinfo).ok_or(Error::NoCgroup2)
}

fn cgroup2_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let root = pre.split_whitespace().nth(3)?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&oct, 8) {
                out.push(char::from(b));
            } else {
                out.push('\\');
                out.push_str(&oct);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks that `path` is a cgroup2 directory.
///
/// # Errors
/// [`Error::NotCgroup2`] if it is not (or does not exist).
pub fn check_cgroup2(path: &Path) -> Result<()> {
    match statfs(path) {
        Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => Ok(()),
        _ => Err(Error::NotCgroup2 { path: path.into() }),
    }
}

/// Makes sure `dir` exists on a bpf filesystem, mounting bpffs at
/// `/sys/fs/bpf` when `dir` is under it and nothing is mounted there.
///
/// # Errors
/// When `dir` is elsewhere and not on bpffs, or the mount fails.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    if !on_bpffs(dir) {
        let default = Path::new(BPF_FS_DEFAULT);
        if !dir.starts_with(default) || on_bpffs(default) {
            return Err(Error::NotBpffs { path: dir.into() });
        }
        fs::create_dir_all(default).map_err(|source| Error::Io {
            path: default.into(),
            source,
        })?;
        mount(
            Some("bpf"),
            default,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| Error::MountBpffs { source })?;
        tracing::info!(path = BPF_FS_DEFAULT, "mounted bpffs");
    }
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })
}

/// Whether the nearest existing ancestor of `path` is on bpffs.
fn on_bpffs(path: &Path) -> bool {
    path.ancestors()
        .find(|p| p.exists())
        .and_then(|p| statfs(p).ok())
        .is_some_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::cgroup2_from_mountinfo;

    #[test]
    fn finds_hybrid_cgroup2_mount() {
        let mi = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 35 0:38 / /sys/fs/cgroup/unified rw,relatime shared:13 - cgroup2 cgroup2 rw
42 35 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_from_mountinfo(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn skips_bind_mounts_of_sub_cgroups_and_unescapes() {
        let mi = "\
50 24 0:38 /kubepods /host/cg rw - cgroup2 cgroup2 rw
51 24 0:38 / /my\\040cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_from_mountinfo(mi),
            Some(PathBuf::from("/my cgroup"))
        );
    }

    #[test]
    fn none_without_cgroup2() {
        assert_eq!(
            cgroup2_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}
