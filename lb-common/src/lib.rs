//! The layout of every map shared by the eBPF programs (`lb-ebpf`) and the
//! agent (`lb-agent`).
//!
//! Rules for everything in this crate:
//! - every type is `#[repr(C)]`, `Copy`, and made only of integers and byte
//!   arrays with explicit `pad` fields, so the kernel, the agent and `bpftool`
//!   agree on it byte for byte;
//! - no `bool`, enum or `Option` crosses the kernel boundary: flags are
//!   integers with named constants;
//! - byte order is in the field name (`_be` = network byte order) or its doc.
//!
//! Addresses are always 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`). One service table then serves `connect4`,
//! `connect6` and IPv4-mapped IPv6 sockets alike.
#![no_std]

pub mod addr;
pub mod affinity;
pub mod backend;
pub mod conntrack;
pub mod meta;
pub mod revnat;
pub mod service;
pub mod stats;

/// Names of the maps, as they appear in `bpftool map list` and as pin files
/// under the agent's bpffs directory.
pub mod map_names {
    pub const SERVICES: &str = "lb_services";
    pub const SERVICE_STATE: &str = "lb_svc";
    pub const BACKENDS: &str = "lb_backends";
    pub const REVNAT: &str = "lb_revnat";
    pub const AFFINITY: &str = "lb_affinity";
    pub const AFFINITY_MEMBERS: &str = "lb_affinity_members";
    pub const RR_COUNTERS: &str = "lb_rr";
    pub const SERVICE_STATS: &str = "lb_svc_stats";
    pub const GLOBAL_STATS: &str = "lb_stats";
    pub const SERVICE_NAMES: &str = "lb_svc_names";
    pub const META: &str = "lb_meta";
    pub const BARRIER: &str = "lb_barrier";
    pub const CONNTRACK: &str = "lb_ct";
    pub const DEVICES: &str = "lb_devices";
    pub const TC_STATS: &str = "lb_tc_stats";
    pub const TC_AFFINITY: &str = "lb_tc_affinity";
    pub const SOURCE_RANGES: &str = "lb_source_ranges";

    /// Every map that is pinned (the barrier is private to one agent run).
    pub const PINNED: [&str; 16] = [
        SERVICES,
        SERVICE_STATE,
        BACKENDS,
        REVNAT,
        AFFINITY,
        AFFINITY_MEMBERS,
        RR_COUNTERS,
        SERVICE_STATS,
        GLOBAL_STATS,
        SERVICE_NAMES,
        META,
        CONNTRACK,
        DEVICES,
        TC_STATS,
        TC_AFFINITY,
        SOURCE_RANGES,
    ];
}

/// Names of the `.rodata` globals the agent sets at load time from what it
/// probed in the running kernel. The verifier sees them as constants and
/// prunes the branch a kernel cannot run (an unknown helper or instruction in
/// a pruned branch is never checked).
pub mod globals {
    /// `1` when `bpf_set_retval` exists (Linux 5.18+).
    pub const HAS_SET_RETVAL: &str = "LB_HAS_SET_RETVAL";
    /// `1` when BPF atomics with fetch exist (Linux 5.12+).
    pub const HAS_ATOMIC_FETCH: &str = "LB_HAS_ATOMIC_FETCH";
    /// `1` when `bpf_get_netns_cookie` exists for `sock_addr` programs (5.7+).
    pub const HAS_NETNS_COOKIE: &str = "LB_HAS_NETNS_COOKIE";
}

/// IP protocol numbers used in [`service::ServiceKey::proto`].
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Default capacities; the agent sets the real ones at load time.
pub mod capacity {
    pub const SERVICES: u32 = 65_536;
    pub const BACKENDS: u32 = 262_144;
    pub const REVNAT: u32 = 262_144;
    pub const AFFINITY: u32 = 65_536;
    /// Flows from other hosts (two entries each).
    pub const CONNTRACK: u32 = 262_144;
    /// Devices the tc programs are attached to.
    pub const DEVICES: u32 = 64;
}
