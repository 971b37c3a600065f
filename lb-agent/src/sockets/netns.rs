//! Finding every network namespace on the node without a container runtime
//! API: the agent's own, the one of each process (`/proc/<pid>/ns/net`), and
//! the ones pinned by bind mounts in the given directories (`ip netns`,
//! containerd and CRI-O pin pod namespaces under `/run/netns` or
//! `/var/run/netns`, so a pod's namespace is found even when none of its
//! processes is visible). Each namespace is listed once, however many paths
//! lead to it.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// One network namespace, open (so it cannot go away while it is used).
pub(crate) struct Namespace {
    pub file: File,
    /// The first path that led to it, for messages.
    pub path: PathBuf,
}

impl Namespace {
    /// Moves the calling thread into this namespace.
    pub(crate) fn enter(&self) -> io::Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    }
}

/// What a search found.
#[derive(Default)]
pub(crate) struct Found {
    pub namespaces: Vec<Namespace>,
    /// Paths that name a namespace but could not be opened (a process that
    /// exited meanwhile is not counted; a missing privilege is).
    pub unreadable: Vec<(PathBuf, io::Error)>,
}

/// Every network namespace reachable from `proc` and `pin_dirs`, the
/// calling thread's own first.
pub(crate) fn find(proc: &Path, pin_dirs: &[PathBuf]) -> Found {
    let mut found = Found::default();
    let mut seen = BTreeSet::new();
    let mut consider = |path: PathBuf, found: &mut Found| {
        // stat() first: most paths lead to a namespace already seen, and
        // opening costs more than looking.
        let id = match fs::metadata(&path) {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) => {
                note_unreadable(found, path, e);
                return;
            }
        };
        if !seen.insert(id) {
            return;
        }
        match File::open(&path) {
            Ok(file) => found.namespaces.push(Namespace { file, path }),
            Err(e) => note_unreadable(found, path, e),
        }
    };
    consider(proc.join("thread-self/ns/net"), &mut found);
    if let Ok(entries) = fs::read_dir(proc) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                consider(entry.path().join("ns/net"), &mut found);
            }
        }
    }
    for dir in pin_dirs {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.filter_map(Result::ok) {
                consider(entry.path(), &mut found);
            }
        }
    }
    found
}

fn note_unreadable(found: &mut Found, path: PathBuf, e: io::Error) {
    // Processes come and go between readdir and open; that is not a failure.
    if e.kind() != io::ErrorKind::NotFound && e.raw_os_error() != Some(libc::ESRCH) {
        found.unreadable.push((path, e));
    }
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn own_namespace_comes_first_and_each_namespace_once() {
        let proc = std::path::Path::new("/proc");
        let found = find(proc, &[]);
        let first = found.namespaces.first().expect("own namespace");
        assert!(first.path.ends_with("thread-self/ns/net"));
        let mut ids: Vec<_> = found
            .namespaces
            .iter()
            .map(|n| {
                let m = n.file.metadata().expect("fstat");
                (
                    std::os::unix::fs::MetadataExt::dev(&m),
                    std::os::unix::fs::MetadataExt::ino(&m),
                )
            })
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "a namespace listed twice");
    }
}
