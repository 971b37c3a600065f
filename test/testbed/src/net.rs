//! Network namespaces, veth, and the child cgroup.

use std::{
    fs::{self, File},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

use super::{sh, unique};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace with a name unique to this process and call.
    pub fn new(role: &str) -> Self {
        Self::named(&unique(&format!("lbt-{role}-")))
    }

    /// A namespace called `name`; one of that name left by an interrupted
    /// earlier run is replaced.
    pub fn named(name: &str) -> Self {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        sh("ip", &["netns", "add", name]);
        sh("ip", &["-n", name, "link", "set", "lo", "up"]);
        Self {
            name: name.to_owned(),
        }
    }

    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Sets sysctls (`("net.ipv4.ip_forward", "1")`, ...) of this
    /// namespace, from a thread inside it (`/proc/sys/net` is the calling
    /// thread's namespace's); no `sysctl` program needed.
    pub fn sysctl(&self, settings: &[(&str, &str)]) {
        let settings: Vec<(PathBuf, String)> = settings
            .iter()
            .map(|(key, value)| {
                let path = Path::new("/proc/sys").join(key.replace('.', "/"));
                (path, (*value).to_owned())
            })
            .collect();
        let name = self.name.clone();
        spawn_in(&self.path(), move || {
            for (path, value) in settings {
                fs::write(&path, &value).unwrap_or_else(|e| {
                    panic!("write {value} to {} in {name}: {e}", path.display())
                });
            }
        })
        .join()
        .expect("sysctl thread");
    }

    /// `program` run in this namespace and nothing else: unlike `ip netns
    /// exec`, `nsenter --net` does not remount /sys, so the cgroup2 and
    /// bpffs mounts stay visible.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        in_netns(&self.name, program)
    }

    /// Runs `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Waits until every link here that is up has a carrier and the kernel
    /// has acted on it (operational state `UP`). The kernel does that from
    /// its link watcher, batched up to a second after the carrier comes;
    /// until then an IPv6 address on the link has not joined its
    /// solicited-node group, and neighbour solicitations for it are lost.
    ///
    /// # Panics
    /// After 5 s with a link still not up.
    pub fn wait_links_up(&self) {
        let what = format!("every link in {} up (`ip -o link show up`)", self.name);
        crate::wait_for(&what, std::time::Duration::from_secs(5), || {
            self.ip(&["-o", "link", "show", "up"])
                .lines()
                .all(|l| l.contains(" state UP ") || l.contains("LOOPBACK"))
        });
    }

    /// Moves the calling thread into this namespace until the guard drops.
    /// Threads and processes started by it meanwhile inherit the namespace.
    pub fn enter(&self) -> Entered {
        let original = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(self.path()).expect("open netns");
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
        Entered { original }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The calling thread is in another namespace until this drops.
pub struct Entered {
    original: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let _ = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET);
    }
}

/// Where `ip netns add NAME` pins the namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// `program` run in the network namespace called `name` (see
/// [`Netns::command`]).
pub fn in_netns(name: &str, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut net = std::ffi::OsString::from("--net=");
    net.push(netns_path(name));
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(net).arg("--").arg(program);
    cmd
}

/// Runs `f` on a thread inside `netns` (for servers that must live there).
pub fn spawn_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let target = File::open(&netns).expect("open netns");
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Held by every live [`Cgroup`]: the whole test process joins it, so two
/// tests of one binary cannot run at once whatever `--test-threads` says.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A child of the cgroup2 root that the test process joins; moved back and
/// removed on drop. Programs are attached here, never to the root.
pub struct Cgroup {
    pub path: PathBuf,
    original: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Cgroup {
    pub fn new() -> Self {
        // A test that panicked poisoned the lock; its cleanup has still run.
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let root = cgroup2_root().expect("a cgroup2 mount");
        let path = root.join(unique("lb-test-"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let own = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/');
        Self {
            path,
            original: root.join(rel),
            _turn: turn,
        }
    }

    /// A child cgroup `name` of this one (for one of several agents),
    /// removed on drop.
    pub fn child(&self, name: &str) -> ChildCgroup {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        ChildCgroup { path }
    }

    /// Moves the whole test process into this cgroup.
    pub fn join(&self) {
        fs::write(
            self.path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap_or_else(|e| panic!("join {}: {e}", self.path.display()));
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let pid = std::process::id().to_string();
        if fs::write(self.original.join("cgroup.procs"), &pid).is_err()
            && let Ok(root) = cgroup2_root()
        {
            let _ = fs::write(root.join("cgroup.procs"), &pid);
        }
        // Children (agents) may take a moment to exit.
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// A cgroup below a [`Cgroup`] that no process joins: programs attached
/// here see only the sockets of processes moved into it.
pub struct ChildCgroup {
    pub path: PathBuf,
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!(
                "warning: could not remove cgroup {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The cgroup2 mount point, from `/proc/self/mountinfo` (whose fields
/// escape spaces and other odd bytes as `\ooo`).
pub fn cgroup2_root() -> std::io::Result<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut fields = pre.split_whitespace();
            let (root, mount_point) = (fields.nth(3)?, fields.next()?);
            (post.split_whitespace().next()? == "cgroup2" && root == "/")
                .then(|| unescape(mount_point))
        })
        .ok_or_else(|| std::io::Error::other("no cgroup2 filesystem is mounted"))
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        if let Some(b) = octal {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape("/sys/fs/cgroup/my\\040dir"),
            std::path::Path::new("/sys/fs/cgroup/my dir")
        );
        assert_eq!(unescape("/plain"), std::path::Path::new("/plain"));
        assert_eq!(unescape("/odd\\9"), std::path::Path::new("/odd\\9"));
    }
}
