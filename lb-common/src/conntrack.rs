//! Connection tracking for the tc programs: `lb_ct` (LRU hash).
//!
//! Packets from other hosts to a node port, an external IP or a load
//! balancer IP are translated on the node's devices (tc ingress and egress)
//! rather than at a socket, so each flow needs state that every later
//! packet finds. One entry is one rewrite: the key is a packet's tuple as a
//! hook sees it, the value is the tuple it leaves with. A new flow writes
//! two entries, one for each direction:
//!
//! | backend | entry for the client's packets (ingress) | entry for the replies |
//! |---|---|---|
//! | on this node | `C -> F` becomes `C -> B` | egress: `B -> C` becomes `F -> C` |
//! | on another node | `C -> F` becomes `N -> B` | ingress: `B -> N` becomes `F -> C` |
//!
//! (`C` client, `F` frontend, `B` backend, `N` this node's address on the
//! device towards the backend, with a source port chosen so that the reply
//! entry is unique.) A backend on this node sees the client's address; one
//! on another node sees the node's (masquerade, as kube-proxy does for
//! `externalTrafficPolicy: Cluster`), because its replies must come back
//! through this node to be translated.

/// The hook an entry is for.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Key of `lb_ct`: a packet's addresses, ports and protocol, and the hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source and destination (IPv4-mapped for IPv4).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports, network byte order.
    pub sport_be: u16,
    pub dport_be: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `DIR_*`.
    pub dir: u8,
    pub pad: [u8; 2],
}

/// Value of `lb_ct`: what the packet leaves with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    /// Bit set of `CT_*`.
    pub flags: u8,
    pub pad: [u8; 3],
    /// The service whose frontend the flow was sent to.
    pub service_id: u32,
    /// On a TCP flow's forward entry: the sequence number (as on the wire)
    /// of the SYN that opened it, so that a retransmitted SYN is known
    /// from a new connection on the same addresses and ports.
    pub syn_seq: u32,
    /// `bpf_ktime_get_ns()` of the last packet (for expiry).
    pub last_seen_ns: u64,
}

/// The entry translates the client's packets towards the backend (the
/// other entry of the flow translates replies).
pub const CT_FORWARD: u8 = 1 << 0;
/// The source was rewritten to the node's address (masquerade).
pub const CT_SNAT: u8 = 1 << 1;
/// A TCP FIN or RST was seen: the flow is closing.
pub const CT_CLOSING: u8 = 1 << 2;

const _: () = assert!(size_of::<CtKey>() == 40);
const _: () = assert!(size_of::<CtValue>() == 56);

/// Key of `lb_devices` is the interface index; the value is the device's
/// addresses, used as the source of masqueraded flows leaving through it.
/// A device in this map is one the tc programs are attached to: a backend
/// routed through one of them is on another node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Device {
    /// First IPv4 address (IPv4-mapped), all zero if none.
    pub addr4: [u8; 16],
    /// First global IPv6 address, all zero if none.
    pub addr6: [u8; 16],
    /// How the programs are attached (`ATTACH_*`), for `lb-agent list`.
    pub attach: u8,
    pub pad: [u8; 7],
}

/// A TCX link pinned under the agent's bpffs directory (Linux 6.6+).
pub const ATTACH_TCX: u8 = 1;
/// A `cls_bpf` filter on the device's `clsact` qdisc (before TCX).
pub const ATTACH_NETLINK: u8 = 2;

const _: () = assert!(size_of::<Device>() == 40);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain integers and byte arrays, explicit padding.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Device {}
}
