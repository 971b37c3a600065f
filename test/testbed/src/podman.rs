//! What podman needs to run a container on this project's machines (the
//! image test and `cargo xtask image`).

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, rlim_t};

/// podman 4.3 lowers its own `RLIMIT_NPROC` to this at start (seen on
/// Debian 12), and a container cannot be given more than podman holds.
/// Root is not held to `RLIMIT_NPROC` anyway (the kernel exempts it).
const PODMAN_NPROC: rlim_t = 32_768;

/// `--ulimit` arguments a container can be given here: this process's open
/// file limit and at most podman's process limit. podman's defaults
/// (1048576) fail where root lacks `CAP_SYS_RESOURCE`, as on this project's
/// machines ("setrlimit ... operation not permitted"); a kubelet's runtime
/// passes its own limits on likewise.
pub fn ulimit_args() -> Vec<String> {
    let limit = |resource| getrlimit(resource).unwrap_or_else(|e| panic!("getrlimit: {e}"));
    let (soft, hard) = limit(Resource::RLIMIT_NOFILE);
    let mut out = vec![];
    if hard != RLIM_INFINITY {
        out.push(format!("--ulimit=nofile={soft}:{hard}"));
    }
    let (soft, hard) = limit(Resource::RLIMIT_NPROC);
    out.push(format!(
        "--ulimit=nproc={}:{}",
        soft.min(PODMAN_NPROC),
        hard.min(PODMAN_NPROC)
    ));
    out
}
