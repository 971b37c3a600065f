//! Reverse translation: `lb_revnat`, an LRU hash keyed by socket cookie and
//! backend. Written when `connect()`/`sendmsg()` is translated; read by
//! `recvmsg()` and `getpeername()` so that they report the ClusterIP, never
//! the pod.

/// Key of `lb_revnat`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie()` of the client socket.
    pub cookie: u64,
    /// The backend the socket was sent to (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Backend port, network byte order.
    pub port_be: u16,
    pub pad: [u8; 6],
}

/// Value of `lb_revnat`: the address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    /// The ClusterIP (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Service port, network byte order.
    pub port_be: u16,
    pub pad: [u8; 2],
}

const _: () = assert!(size_of::<RevNatKey>() == 32);
const _: () = assert!(size_of::<RevNatValue>() == 20);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain integers and byte arrays, explicit padding, no niches.
    unsafe impl aya::Pod for super::RevNatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RevNatValue {}
}
