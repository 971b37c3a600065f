//! Counters: `lb_stats` (per-CPU array of `u64`, indexed by `STAT_*`) and
//! `lb_svc_stats` (array of [`ServiceStats`] indexed by service id).

/// `connect()` translated to a backend.
pub const STAT_CONNECT: u32 = 0;
/// `sendmsg()` (unconnected UDP) translated to a backend.
pub const STAT_SENDMSG: u32 = 1;
/// `connect()`/`sendmsg()` refused: the service has no usable endpoint.
pub const STAT_REFUSED: u32 = 2;
/// `recvmsg()` source rewritten back to the ClusterIP.
pub const STAT_RECVMSG_REVERSED: u32 = 3;
/// `getpeername()` rewritten back to the ClusterIP.
pub const STAT_GETPEERNAME_REVERSED: u32 = 4;
/// A backend slot inside a live range could not be read. Always 0 unless
/// the update protocol is broken; the connection was left untranslated.
pub const STAT_BACKEND_MISSING: u32 = 5;
/// The reverse-translation entry could not be written (replies to that
/// socket would show the pod address).
pub const STAT_REVNAT_UPDATE_FAILED: u32 = 6;
/// Session affinity entry reused.
pub const STAT_AFFINITY_HIT: u32 = 7;
/// A service lookup raced the removal of that frontend (the `lb_services`
/// element was reused for another key); the connection was left alone.
pub const STAT_LOOKUP_RACED: u32 = 8;
/// Number of global counters.
pub const STAT_COUNT: u32 = 9;

/// Names of the global counters, indexed by `STAT_*` (for metrics and `list`).
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "connect",
    "sendmsg",
    "refused",
    "recvmsg_reversed",
    "getpeername_reversed",
    "backend_missing",
    "revnat_update_failed",
    "affinity_hit",
    "lookup_raced",
];

/// Counters of the tc programs: `lb_tc_stats` (per-CPU array of `u64`,
/// indexed by `TC_*`), kept apart from `lb_stats` so that maps pinned by an
/// agent without them are still adopted.
///
/// A packet to a frontend from another host started a new flow.
pub const TC_NEW_FLOW: u32 = 0;
/// A packet of a known flow was translated (either direction).
pub const TC_TRANSLATED: u32 = 1;
/// Dropped: an entry for clients from other hosts only has no usable
/// endpoint (`externalTrafficPolicy: Local` and none on this node, or a VIP
/// with source ranges and none at all).
pub const TC_DROP_NO_LOCAL_ENDPOINT: u32 = 2;
/// Dropped: an external or load-balancer IP of a Service with no usable
/// endpoint (a node port is left to the node's stack, which refuses it).
pub const TC_DROP_NO_ENDPOINT: u32 = 3;
/// Passed to the stack: a node port with no usable endpoint (the kernel
/// answers with a TCP reset or ICMP port unreachable).
pub const TC_REFUSED_BY_STACK: u32 = 4;
/// Dropped: no free source port for masquerading to that backend.
pub const TC_DROP_NO_PORT: u32 = 5;
/// Dropped: no route to the backend or the client, or no address on the
/// device to masquerade with.
pub const TC_DROP_NO_ROUTE: u32 = 6;
/// Dropped: the packet could not be rewritten or the flow recorded.
pub const TC_DROP_ERROR: u32 = 7;
/// A UDP datagram found its flow's backend gone and picked anew.
pub const TC_RESELECTED: u32 = 8;
/// A new flow went to its client's backend (`sessionAffinity: ClientIP`).
pub const TC_AFFINITY_HIT: u32 = 9;
/// Dropped: a client outside the `loadBalancerSourceRanges` of the VIP.
pub const TC_DROP_SOURCE_RANGE: u32 = 10;
/// Number of tc counters.
pub const TC_STAT_COUNT: u32 = 11;
/// Names of the tc counters, indexed by `TC_*`.
pub const TC_STAT_NAMES: [&str; TC_STAT_COUNT as usize] = [
    "new_flow",
    "translated",
    "drop_no_local_endpoint",
    "drop_no_endpoint",
    "refused_by_stack",
    "drop_no_port",
    "drop_no_route",
    "drop_error",
    "reselected",
    "affinity_hit",
    "drop_source_range",
];

/// Value of `lb_svc_stats`: per-service counters (updated atomically).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceStats {
    /// Connections and datagram destinations translated to a backend.
    pub translated: u64,
    /// Connections refused because the service had no usable endpoint.
    pub refused: u64,
}

const _: () = assert!(size_of::<ServiceStats>() == 16);

#[cfg(feature = "user")]
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for ServiceStats {}
