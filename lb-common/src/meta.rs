//! `lb_meta`: a one-entry array describing what the agent loaded, so that
//! `lb-agent list` (and a restarted agent) can tell without asking it.

/// Bumped whenever the layout of any pinned map changes. A new agent refuses
/// to adopt pins with another version (and says to run `lb-agent cleanup`).
pub const ABI_VERSION: u32 = 2;

/// Value of `lb_meta` (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// [`ABI_VERSION`] of the agent that created the maps.
    pub abi_version: u32,
    /// Bit set of `FEATURE_*` active in the running kernel.
    pub features: u32,
    /// Bit set of `FEATURE_*` the kernel lacks (probed, not guessed).
    pub unsupported: u32,
    /// Default algorithm ([`crate::service::ALGORITHM_RANDOM`] or round-robin).
    pub default_algorithm: u8,
    pub pad: [u8; 3],
    /// Number of completed syncs since the maps were created.
    pub generation: u64,
    /// Wall-clock time of the last completed sync, ms since the Unix epoch.
    pub last_sync_unix_ms: u64,
}

pub const FEATURE_CONNECT4: u32 = 1 << 0;
pub const FEATURE_CONNECT6: u32 = 1 << 1;
pub const FEATURE_SENDMSG4: u32 = 1 << 2;
pub const FEATURE_SENDMSG6: u32 = 1 << 3;
pub const FEATURE_RECVMSG4: u32 = 1 << 4;
pub const FEATURE_RECVMSG6: u32 = 1 << 5;
pub const FEATURE_GETPEERNAME4: u32 = 1 << 6;
pub const FEATURE_GETPEERNAME6: u32 = 1 << 7;
/// `connect()` to a service without endpoints fails with `ECONNREFUSED`
/// (`bpf_set_retval`); without it, `EPERM`.
pub const FEATURE_SET_RETVAL: u32 = 1 << 8;
/// Exact round-robin shared by all CPUs (atomic fetch-and-add).
pub const FEATURE_ATOMIC_FETCH: u32 = 1 << 9;
/// Session affinity per client network namespace.
pub const FEATURE_NETNS_COOKIE: u32 = 1 << 10;
/// `sock_diag` `SOCK_DESTROY` (`CONFIG_INET_DIAG_DESTROY`): the agent closes
/// connected UDP sockets (and, if asked, TCP ones) whose backend left the
/// service. Not a program feature: the agent probes it over netlink.
pub const FEATURE_SOCK_DESTROY: u32 = 1 << 11;

/// Every feature with its name, for logs and `lb-agent list`.
pub const FEATURE_NAMES: [(u32, &str); 12] = [
    (FEATURE_CONNECT4, "connect4"),
    (FEATURE_CONNECT6, "connect6"),
    (FEATURE_SENDMSG4, "sendmsg4"),
    (FEATURE_SENDMSG6, "sendmsg6"),
    (FEATURE_RECVMSG4, "recvmsg4"),
    (FEATURE_RECVMSG6, "recvmsg6"),
    (FEATURE_GETPEERNAME4, "getpeername4"),
    (FEATURE_GETPEERNAME6, "getpeername6"),
    (FEATURE_SET_RETVAL, "set_retval"),
    (FEATURE_ATOMIC_FETCH, "atomic_fetch"),
    (FEATURE_NETNS_COOKIE, "netns_cookie"),
    (FEATURE_SOCK_DESTROY, "sock_destroy"),
];

const _: () = assert!(size_of::<Meta>() == 32);

#[cfg(feature = "user")]
// SAFETY: plain integers and byte arrays, explicit padding, no niches.
unsafe impl aya::Pod for Meta {}
