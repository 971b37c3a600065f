//! The backend table: `lb_backends`, an array. Each service owns a
//! contiguous range of it (see [`crate::service`] for the update protocol).
//! An entry is only written while no service references it, so the programs
//! never see one half-written.

/// Value of `lb_backends`: one endpoint (pod IP and target port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// IPv6 address, or IPv4-mapped IPv6 address for IPv4 (network order).
    pub addr: [u8; 16],
    /// Port, network byte order.
    pub port_be: u16,
    pub pad: [u8; 2],
}

const _: () = assert!(size_of::<Backend>() == 20);

#[cfg(feature = "user")]
// SAFETY: plain integers and byte arrays, explicit padding, no niches.
unsafe impl aya::Pod for Backend {}
