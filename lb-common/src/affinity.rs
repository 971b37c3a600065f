//! Session affinity (`sessionAffinity: ClientIP`).
//!
//! At the socket the client is known by its network namespace (one pod, one
//! IP), so `lb_affinity` is keyed by `bpf_get_netns_cookie()` and service id.
//! An entry is honoured only while its backend is still a member of the
//! service (`lb_affinity_members`, maintained by the agent for services with
//! affinity) and it was used within the service's timeout.

/// Key of `lb_affinity` (LRU hash).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Network namespace cookie of the client socket.
    pub netns_cookie: u64,
    /// [`crate::service::ServiceValue::id`].
    pub service_id: u32,
    pub pad: [u8; 4],
}

/// Value of `lb_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// The chosen backend (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Backend port, network byte order.
    pub port_be: u16,
    pub pad: [u8; 6],
    /// `bpf_ktime_get_ns()` of the last connection that used it.
    pub last_used_ns: u64,
}

/// Key of `lb_tc_affinity` (LRU hash, value [`AffinityValue`]): from
/// other hosts the client is known by its address, as kube-proxy's
/// `recent` match knows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAffinityKey {
    /// The client's address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// [`crate::service::ServiceValue::id`].
    pub service_id: u32,
    pub pad: [u8; 4],
}

/// Key of `lb_affinity_members` (hash, value `u32` = 1): "this backend is a
/// usable endpoint of this service".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    /// [`crate::service::ServiceValue::id`].
    pub service_id: u32,
    /// Backend port, network byte order.
    pub port_be: u16,
    pub pad: [u8; 2],
    /// Backend address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
}

const _: () = assert!(size_of::<AffinityKey>() == 16);
const _: () = assert!(size_of::<AffinityValue>() == 32);
const _: () = assert!(size_of::<MemberKey>() == 24);
const _: () = assert!(size_of::<ClientAffinityKey>() == 24);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain integers and byte arrays, explicit padding, no niches.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MemberKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientAffinityKey {}
}
