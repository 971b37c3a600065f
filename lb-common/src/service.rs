//! The service tables.
//!
//! - `lb_services` (hash): ClusterIP:port/protocol -> service id. Written
//!   only when a frontend appears or goes.
//! - `lb_svc` (array indexed by id, mmapable): the service's live state, its
//!   backend range among them, with a copy of its key.
//!
//! The split is what keeps a concurrent `connect()` right. The kernel reuses
//! the element of a replaced or deleted hash entry at once (no grace
//! period), so a program between its lookup and its read could read another
//! key's value; array elements are never reused that way. So the only hash
//! value a program reads is an id it then checks against the key copy in
//! `lb_svc` (a mismatch means the lookup raced a removal: the connection is
//! left alone and counted), and everything that changes with the endpoints
//! is in the array.
//!
//! # Update protocol (enforced by the agent's dataplane, relied on here)
//!
//! A service's backends are a contiguous range of `lb_backends` (an array).
//! To change them the agent:
//! 1. writes the new backends into a *fresh* range nobody references yet;
//! 2. stores the new range into `lb_svc[id].backends` with one aligned
//!    8-byte store, which the programs read with one 8-byte load: a program
//!    sees the old range or the new one, never a mix and never a count
//!    beyond its range (a new service's `lb_svc` entry is written before its
//!    `lb_services` entry);
//! 3. (behind the update, on another thread) waits for an RCU grace period:
//!    every program that could have read the old range has returned;
//! 4. only then frees the old range for reuse (and a removed service's id,
//!    so its `lb_svc` entry is not rewritten under a reader either).
//!
//! So a concurrent `connect()` never fails and never reads a slot beyond the
//! count, and once the update returns no new connection can reach a removed
//! backend: a connection that starts after step 2 reads the new range.

/// Key of `lb_services`: one ClusterIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv6 address, or IPv4-mapped IPv6 address for IPv4 (network order).
    pub addr: [u8; 16],
    /// Port, network byte order.
    pub port_be: u16,
    /// IP protocol number ([`crate::proto`]).
    pub proto: u8,
    /// Which clients the entry serves (`SCOPE_*`).
    pub scope: u8,
}

/// Every client: the socket hooks and the tc programs (what maps written
/// before scopes existed hold).
pub const SCOPE_ANY: u8 = 0;
/// Clients from other hosts only, where they get something else than
/// clients on the node: this node's endpoints under
/// `externalTrafficPolicy: Local`, or a load-balancer VIP with
/// `loadBalancerSourceRanges` (which the socket hooks leave to the load
/// balancer). Read by the tc programs before the [`SCOPE_ANY`] entry of the
/// same address; never by the socket hooks. No usable endpoint in such an
/// entry means "drop", as kube-proxy drops under `Local`.
pub const SCOPE_EXTERNAL: u8 = 1;

/// Where a service's backends are in `lb_backends`: entries
/// `first .. first + count`. Eight-byte aligned so that the programs read it
/// with one load (see the module docs).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendRange {
    /// Index of the first backend in `lb_backends`.
    pub first: u32,
    /// Number of backends; `0` means "no usable endpoints": refuse.
    pub count: u32,
}

/// Value of `lb_services`: the service's id, its index in `lb_svc` and the
/// other per-service arrays (`lb_rr`, `lb_svc_stats`, `lb_svc_names`) and in
/// affinity keys. An id is given to another service only after its old
/// frontend is gone and a grace period has passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub id: u32,
}

/// Value of `lb_svc` (indexed by service id): what a service does now.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceState {
    /// The live backend range. Must stay the first field (8-byte aligned).
    pub backends: BackendRange,
    /// The frontend this id serves: the programs check it against the key
    /// they looked up.
    pub key: ServiceKey,
    /// [`ALGORITHM_RANDOM`] or [`ALGORITHM_ROUND_ROBIN`].
    pub algorithm: u8,
    /// Bit set of `FLAG_*`.
    pub flags: u8,
    /// What kind of address the frontend is (`KIND_*`): for `lb-agent
    /// list` and `bpftool`, and for the tc programs, which translate every
    /// kind but a `ClusterIP` (the socket hooks treat every kind alike).
    pub kind: u8,
    pub pad: u8,
    /// Session affinity idle timeout, seconds (with [`FLAG_AFFINITY`]).
    pub affinity_timeout_s: u32,
    pub pad2: [u8; 4],
}

/// Uniformly random backend per connection, as kube-proxy does.
pub const ALGORITHM_RANDOM: u8 = 0;
/// Exact rotation, shared by all CPUs.
pub const ALGORITHM_ROUND_ROBIN: u8 = 1;

/// The Service's `ClusterIP` (`0`, what maps written before kinds existed hold).
pub const KIND_CLUSTER_IP: u8 = 0;
/// A node address and a `nodePort`.
pub const KIND_NODE_PORT: u8 = 1;
/// One of `spec.externalIPs`.
pub const KIND_EXTERNAL_IP: u8 = 2;
/// One of `status.loadBalancer.ingress[].ip`.
pub const KIND_LOAD_BALANCER: u8 = 3;

/// `sessionAffinity: ClientIP`: a client (network namespace) keeps its backend.
pub const FLAG_AFFINITY: u8 = 1 << 0;
/// Only clients in `lb_source_ranges` for this service may use it
/// (`loadBalancerSourceRanges`); read by the tc programs.
pub const FLAG_SOURCE_RANGES: u8 = 1 << 1;

/// Data of a `lb_source_ranges` key (LPM trie, value `u8` = 1): the service
/// id, then the client address; the prefix length covers the id's 32 bits
/// and the range's bits (of the IPv4-mapped form for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// [`ServiceValue::id`], big-endian (the trie matches bits in order).
    pub service_id_be: [u8; 4],
    pub addr: [u8; 16],
}

/// Bits of a [`SourceRange`] a whole address matches.
pub const SOURCE_RANGE_BITS: u32 = 160;

/// A service's name, for `lb-agent list` and `bpftool` (value of `lb_svc_names`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    /// `namespace/name:port`, UTF-8, NUL-padded.
    pub name: [u8; 128],
}

const _: () = assert!(size_of::<ServiceKey>() == 20);
const _: () = assert!(size_of::<BackendRange>() == 8);
const _: () = assert!(size_of::<ServiceValue>() == 4);
const _: () = assert!(size_of::<ServiceState>() == 40);
const _: () = assert!(core::mem::offset_of!(ServiceState, backends) == 0);
const _: () = assert!(size_of::<ServiceName>() == 128);
const _: () = assert!(size_of::<SourceRange>() == 20);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain integers and byte arrays, explicit padding, no niches.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SourceRange {}
}
