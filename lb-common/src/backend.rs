//! The backend table: `lb_backends`, an array. Each service owns a
//! contiguous range of it (see [`crate::service`] for the update protocol).
//! An entry is only written while no service references it, so the programs
//! never see one half-written. The array is created `BPF_F_MMAPABLE`: the
//! agent writes ranges straight into the kernel's memory, one store per
//! entry instead of one syscall.

/// Value of `lb_backends`: one endpoint (pod IP and target port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// IPv6 address, or IPv4-mapped IPv6 address for IPv4 (network order).
    pub addr: [u8; 16],
    /// Port, network byte order.
    pub port_be: u16,
    pub pad: [u8; 6],
}

// A multiple of 8: the element stride of a BPF array, so the mmap'd array is
// a plain `[Backend]`.
const _: () = assert!(size_of::<Backend>() == 24);

#[cfg(feature = "user")]
// SAFETY: plain integers and byte arrays, explicit padding, no niches.
unsafe impl aya::Pod for Backend {}
