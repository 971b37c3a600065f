//! Clients as applications use them: plain sockets, with what they see.

use std::{
    io::{self, Read as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use super::cluster::Echo;

const TIMEOUT: Duration = Duration::from_secs(3);

/// What a TCP client saw.
#[derive(Debug)]
pub struct Reply {
    /// The server's answer (a pod name).
    pub body: String,
    /// `getpeername()` on the client socket.
    pub peer: SocketAddr,
}

/// Connects, reads the reply to EOF.
pub fn tcp(addr: SocketAddr) -> io::Result<Reply> {
    tcp_within(addr, TIMEOUT)
}

/// [`tcp`], giving up on the connection and on the reply after `timeout`
/// each: a dropped SYN is `TimedOut` after `timeout`.
pub fn tcp_within(addr: SocketAddr, timeout: Duration) -> io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let peer = s.peer_addr()?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(Reply {
        body: body.trim().to_owned(),
        peer,
    })
}

/// Connected UDP: `connect()`, `send()`, `recv_from()`.
/// Returns the reply, `getpeername()`, and the reply's source.
pub fn udp_connected(addr: SocketAddr) -> io::Result<(Reply, SocketAddr)> {
    let s = UdpSocket::bind(unspecified(addr))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.connect(addr)?;
    s.send(b"hello")?;
    let mut buf = [0u8; 256];
    let (n, from) = s.recv_from(&mut buf)?;
    let peer = s.peer_addr()?;
    Ok((
        Reply {
            body: String::from_utf8_lossy(&buf[..n]).trim().to_owned(),
            peer,
        },
        from,
    ))
}

/// Unconnected UDP: `sendto()` the service, `recvfrom()` the answer.
/// Returns the reply and its source as the application sees it.
pub fn udp_unconnected(addr: SocketAddr) -> io::Result<(String, SocketAddr)> {
    let s = UdpSocket::bind(unspecified(addr))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.send_to(b"hello", addr)?;
    let mut buf = [0u8; 256];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).trim().to_owned(), from))
}

/// A TCP request to a pod's [`crate::cluster::POD_ECHO_PORT`] (or a service
/// translated to it): which pod answered and the source it saw.
pub fn tcp_echo(addr: SocketAddr) -> io::Result<Echo> {
    parse_echo(&tcp(addr)?.body)
}

/// [`tcp_echo`] over unconnected UDP; the reply must come from `addr`.
pub fn udp_echo(addr: SocketAddr) -> io::Result<Echo> {
    let (body, from) = udp_unconnected(addr)?;
    if from != addr {
        return Err(io::Error::other(format!(
            "the reply came from {from}, not from {addr}"
        )));
    }
    parse_echo(&body)
}

fn parse_echo(body: &str) -> io::Result<Echo> {
    Echo::parse(body).ok_or_else(|| io::Error::other(format!("not an echo answer: {body:?}")))
}

fn unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    }
}

/// Counts replies per pod over `n` TCP requests.
pub fn tally(addr: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..n {
        let r = tcp(addr).unwrap_or_else(|e| panic!("request {i} to {addr} failed: {e}"));
        *counts.entry(r.body).or_insert(0) += 1;
    }
    counts
}

/// Minimal HTTP GET (for /metrics and /readyz): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    use std::io::Write as _;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad HTTP response: {text:.200}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// TCP connects to one address without pause, from a thread in a network
/// namespace, counting those that worked and those that failed: the load
/// that must see no failure while the agent restarts or the state changes.
pub struct Connector {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counts: std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>,
    thread: std::thread::JoinHandle<()>,
}

impl Connector {
    /// Starts connecting to `addr` from a thread in `netns`.
    pub fn start(netns: &std::path::Path, addr: SocketAddr) -> Self {
        use std::sync::{Arc, atomic::Ordering};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts: Arc<[std::sync::atomic::AtomicUsize; 2]> = Arc::default();
        let thread = {
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            super::net::spawn_in(netns, move || {
                while !stop.load(Ordering::Relaxed) {
                    let failed = usize::from(tcp(addr).is_err());
                    counts[failed].fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Self {
            stop,
            counts,
            thread,
        }
    }

    /// Stops; returns how many connections worked and how many failed.
    pub fn stop(self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("connector thread");
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}
