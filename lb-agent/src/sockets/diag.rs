//! The kernel's socket diagnostics over netlink (`NETLINK_SOCK_DIAG`): dump
//! a network namespace's sockets and destroy one (`SOCK_DESTROY`, which needs
//! `CONFIG_INET_DIAG_DESTROY`). A [`Diag`] socket talks to the namespace it
//! was opened in, whichever thread uses it later.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsFd as _,
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use nix::sys::{
    socket::{setsockopt, sockopt::ReceiveTimeout},
    time::TimeVal,
};

use crate::model::Protocol;

/// How long a dump or a destroy may take before the kernel is deemed stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Dumps arrive in chunks of about a page; 64 KiB holds any of them.
const RECV_BUFFER: usize = 64 * 1024;
/// Destroy requests per datagram.
const DESTROY_BATCH: usize = 64;

/// The address families a dump covers. An IPv6 socket may be connected to an
/// IPv4-mapped address, so both are dumped for either service family.
pub(crate) const FAMILIES: [u8; 2] = [AF_INET, AF_INET6];

/// One socket from a dump: enough to name it again in a destroy.
#[derive(Clone, Debug)]
pub(crate) struct DumpedSocket {
    pub family: u8,
    pub protocol: Protocol,
    pub id: SocketId,
}

impl DumpedSocket {
    /// The socket cookie, as `bpf_get_socket_cookie()` returns it.
    pub(crate) fn cookie(&self) -> u64 {
        cookie(self.id.cookie)
    }

    /// The peer the socket is connected to (IPv4-mapped addresses as IPv4).
    pub(crate) fn peer(&self) -> SocketAddr {
        SocketAddr::new(
            self.id.destination_address.to_canonical(),
            self.id.destination_port,
        )
    }
}

/// The kernel writes the 64-bit cookie as two native 32-bit words, low first.
fn cookie(raw: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The states a dump asks for: connected sockets only (a UDP socket is
/// `ESTABLISHED` once connected; listening and time-wait TCP sockets have no
/// peer to leave).
fn connected_states(protocol: Protocol) -> StateFlags {
    match protocol {
        Protocol::Udp => StateFlags::ESTABLISHED,
        Protocol::Tcp | Protocol::Sctp => {
            StateFlags::ESTABLISHED
                | StateFlags::SYN_SENT
                | StateFlags::SYN_RECV
                | StateFlags::FIN_WAIT1
                | StateFlags::FIN_WAIT2
                | StateFlags::CLOSE_WAIT
                | StateFlags::LAST_ACK
                | StateFlags::CLOSING
        }
    }
}

/// A `NETLINK_SOCK_DIAG` socket in the namespace it was opened in.
pub(crate) struct Diag {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Diag {
    /// Opens a socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let timeout = TimeVal::new(
            i64::try_from(REPLY_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
            0,
        );
        setsockopt(&socket.as_fd(), ReceiveTimeout, &timeout).map_err(io::Error::from)?;
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUFFER],
            seq: 0,
        })
    }

    /// Every connected socket of `protocol` and `family`.
    pub(crate) fn dump(&mut self, family: u8, protocol: Protocol) -> io::Result<Vec<DumpedSocket>> {
        let request = InetRequest {
            family,
            protocol: protocol.number(),
            extensions: ExtensionFlags::empty(),
            states: connected_states(protocol),
            socket_id: empty_id(family),
        };
        let seq = self.send(
            SockDiagMessage::InetRequest(request),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut sockets = Vec::new();
        loop {
            let mut done = false;
            self.receive(seq, |payload| match payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let InetResponse { header, .. } = *r;
                    sockets.push(DumpedSocket {
                        family: header.family,
                        protocol,
                        id: header.socket_id,
                    });
                    Ok(())
                }
                NetlinkPayload::Done(_) => {
                    done = true;
                    Ok(())
                }
                NetlinkPayload::Error(e) => Err(e.to_io()),
                _ => Ok(()),
            })?;
            if done {
                return Ok(sockets);
            }
        }
    }

    /// Destroys sockets from a dump: each owner's next call fails with
    /// `ECONNABORTED` (a TCP peer gets a reset). Many requests go in one
    /// datagram, without acknowledgements (the kernel answers only the
    /// failures, before the send returns); returns each failure with the
    /// index of its socket (`ENOENT`: closed by its owner meanwhile).
    pub(crate) fn destroy_all(
        &mut self,
        sockets: &[DumpedSocket],
    ) -> io::Result<Vec<(usize, io::Error)>> {
        let mut failures = Vec::new();
        let mut bytes = Vec::new();
        for (chunk_no, chunk) in sockets.chunks(DESTROY_BATCH).enumerate() {
            let first_seq = self.seq.wrapping_add(1);
            bytes.clear();
            for socket in chunk {
                self.seq = self.seq.wrapping_add(1);
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_REQUEST;
                header.sequence_number = self.seq;
                let request = InetRequest {
                    family: socket.family,
                    protocol: socket.protocol.number(),
                    extensions: ExtensionFlags::empty(),
                    states: StateFlags::all(),
                    socket_id: socket.id.clone(),
                };
                let mut message = NetlinkMessage::new(
                    header,
                    NetlinkPayload::InnerMessage(SockDiagDestroy::new(
                        SockDiagMessage::InetRequest(request),
                    )),
                );
                message.finalize();
                let at = bytes.len();
                // Messages in one datagram start on 4-byte boundaries.
                bytes.resize(at + message.buffer_len().next_multiple_of(4), 0);
                message.serialize(&mut bytes[at..at + message.buffer_len()]);
            }
            self.socket.send(&bytes, 0)?;
            self.drain_errors(|seq, e| {
                let i = usize::try_from(seq.wrapping_sub(first_seq)).unwrap_or(usize::MAX);
                if i < chunk.len() {
                    failures.push((chunk_no * DESTROY_BATCH + i, e));
                }
            })?;
        }
        Ok(failures)
    }

    /// Reads what the kernel queued without waiting: the error answers.
    fn drain_errors(&mut self, mut each: impl FnMut(u32, io::Error)) -> io::Result<()> {
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut offset = 0;
            while offset < n {
                let message = NetlinkMessage::<SockDiagDestroy>::deserialize(&self.buf[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                if let NetlinkPayload::Error(e) = &message.payload
                    && e.code.is_some()
                {
                    each(message.header.sequence_number, e.to_io());
                }
                let len = message.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len.next_multiple_of(4);
            }
        }
    }

    fn send<M: NetlinkSerializable>(&mut self, inner: M, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Reads one datagram and hands each message of sequence `seq` in it to
    /// `each`; messages of earlier requests are skipped.
    fn receive<M: NetlinkDeserializable>(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkPayload<M>) -> io::Result<()>,
    ) -> io::Result<()> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let message = NetlinkMessage::<M>::deserialize(&self.buf[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = message.header.length as usize;
            if message.header.sequence_number == seq {
                each(message.payload)?;
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
        Ok(())
    }
}

fn empty_id(family: u8) -> SocketId {
    if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    }
}

/// Whether this kernel destroys sockets on request: a UDP socket of the
/// agent's own, connected to itself on loopback (no packet is sent), is
/// destroyed and must then fail with `ECONNABORTED`.
///
/// # Errors
/// Why it cannot: `EOPNOTSUPP` without `CONFIG_INET_DIAG_DESTROY`, `ENOENT`
/// without UDP socket diagnostics (`udp_diag`), `EPERM` without
/// `CAP_NET_ADMIN`.
pub(crate) fn probe_destroy() -> io::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let local = socket.local_addr()?;
    socket.connect(local)?;
    let id = SocketId {
        source_port: local.port(),
        destination_port: local.port(),
        source_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        destination_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        interface_id: 0,
        // All ones: "any cookie" (INET_DIAG_NOCOOKIE).
        cookie: [0xff; 8],
    };
    let failed = Diag::open()?.destroy_all(&[DumpedSocket {
        family: AF_INET,
        protocol: Protocol::Udp,
        id,
    }])?;
    if let Some((_, e)) = failed.into_iter().next() {
        return Err(e);
    }
    socket.set_nonblocking(true)?;
    match socket.recv(&mut [0; 1]) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        Err(e) => Err(io::Error::other(format!(
            "the destroyed probe socket reported {e}, not ECONNABORTED"
        ))),
        Ok(_) => Err(io::Error::other(
            "the destroyed probe socket still received data",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::cookie;

    #[test]
    fn cookie_words_are_low_then_high() {
        let raw: u64 = 0x0000_0012_3456_789a;
        let lo = u32::try_from(raw & 0xffff_ffff)
            .expect("low word")
            .to_ne_bytes();
        let hi = u32::try_from(raw >> 32).expect("high word").to_ne_bytes();
        let bytes = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
        assert_eq!(cookie(bytes), raw);
    }
}
