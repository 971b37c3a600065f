//! SCTP Services at the socket (issue 11): what lb-agent does with an SCTP
//! ClusterIP, as a client in the agent's cgroup sees it.
//!
//! What is true (Linux 5.10 to 6.12; kernel evidence in the README's
//! "Semantics" section): the cgroup `sock_addr` hooks the data path uses do
//! not run for SCTP sockets. Both kinds of SCTP socket (one-to-one
//! `SOCK_STREAM` and one-to-many `SOCK_SEQPACKET`) use SCTP's own
//! `inet_seqpacket_ops`, whose `connect` is `sctp_inet_connect`, not
//! `inet_stream_connect`/`inet_dgram_connect`, where `connect4` runs; and
//! `sctp_sendmsg`/`sctp_recvmsg` run no hook (`sendmsg4`/`recvmsg4` are
//! UDP's). `getpeername()` does go through `inet_getname` and its hook, but
//! nothing was recorded for the socket, so it shows the kernel's own peer.
//! So the agent programs the SCTP frontend, and an SCTP association to the
//! ClusterIP goes to the ClusterIP itself, untranslated.
//!
//! The world: pod-2 and pod-3 are the Service's backends (SCTP on
//! `SCTP_TARGET`; the pods' usual TCP servers for the Service's TCP port,
//! the control that shows the agent translating this cgroup's sockets).
//! pod-1 is not a backend: it holds the ClusterIP addresses themselves and
//! answers SCTP on the Service port (bound to each address alone), so that an
//! untranslated association arrives somewhere the test can see. A second
//! SCTP Service's ClusterIP (`UNROUTED`) is held by nobody, as on a node
//! without kube-proxy: there the association is never set up. Everything
//! is done for IPv4 and IPv6 ClusterIPs (`connect6` and `sendmsg6` do not
//! run for SCTP either), except the unrouted case (IPv4 only).
//!
//! The host kernel has no SCTP (`CONFIG_IP_SCTP` unset): there the test is
//! recorded as skipped. The Debian kernels `cargo xtask vm` boots have the
//! `sctp` module, which the VM loads at boot. Needs root; one test at a
//! time (`cargo xtask test` and `cargo xtask vm` do that).

use std::{
    collections::BTreeMap,
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use lb_testbed::{
    client,
    cluster::Pod,
    env::FileEnv,
    manifests::{self, annotate, ready, service, slice},
    net::{Netns, spawn_in},
    skip,
};
use serde_json::Value;

const TEST: &str = "sctp_clusterip_is_not_translated_at_the_socket";
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 132);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x132);
/// The ClusterIP of a second SCTP Service that nothing routes (no pod holds
/// it; the node has no default route), as on a node without kube-proxy.
const UNROUTED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 133);
/// The Service's SCTP port, and the backends' port behind it.
const SCTP_PORT: u16 = 9132;
const SCTP_TARGET: u16 = 8132;
/// The Service's TCP port (to the pods' TCP :8080 servers): the control.
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
const ROUNDS: usize = 4;
/// Client and server socket timeouts (connect included, via `SO_SNDTIMEO`).
const TIMEOUT: Duration = Duration::from_secs(5);
/// `msg_flags` bit of an SCTP notification (`<netinet/sctp.h>`).
const MSG_NOTIFICATION: libc::c_int = 0x8000;

// ---------------------------------------------------------------------------
// SCTP sockets with libc (std has none).
// ---------------------------------------------------------------------------

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn checked_len(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// `socket(family, kind, IPPROTO_SCTP)`.
fn sctp_socket(family: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall.
    let fd = check(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, libc::IPPROTO_SCTP) })?;
    // SAFETY: a descriptor just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn family(a: SocketAddr) -> libc::c_int {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("small")
}

/// `a` as the kernel takes it: a `sockaddr_in` or `sockaddr_in6` in a
/// `sockaddr_storage`, and its length.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("fits"),
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger and aligned for any sockaddr.
            unsafe { (&raw mut ss).cast::<libc::sockaddr_in>().write(sin) };
            socklen::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).expect("fits"),
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { (&raw mut ss).cast::<libc::sockaddr_in6>().write(sin6) };
            socklen::<libc::sockaddr_in6>()
        }
    };
    (ss, len)
}

/// The address in a `sockaddr_storage` the kernel filled.
fn from_sockaddr(ss: &libc::sockaddr_storage) -> SocketAddr {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says what the storage holds.
            let sin = unsafe { &*(&raw const *ss).cast::<libc::sockaddr_in>() };
            SocketAddr::from((
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above.
            let sin6 = unsafe { &*(&raw const *ss).cast::<libc::sockaddr_in6>() };
            SocketAddr::from((
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            ))
        }
        other => panic!("the kernel returned an address of family {other}"),
    }
}

fn set_timeouts(fd: &OwnedFd) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(TIMEOUT.as_secs()).expect("small"),
        tv_usec: 0,
    };
    let len = libc::socklen_t::try_from(size_of_val(&tv)).expect("small");
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: a valid descriptor and a timeval of the given length.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const tv).cast(),
                len,
            )
        })?;
    }
    Ok(())
}

fn send(fd: &OwnedFd, data: &[u8]) -> io::Result<()> {
    // SAFETY: a valid descriptor and buffer.
    let n =
        checked_len(unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) })?;
    if n == data.len() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "short send: {n} of {}",
            data.len()
        )))
    }
}

/// One message (a line: the server's answer); empty at the end.
fn recv(fd: &OwnedFd) -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: a valid descriptor and buffer.
    let n =
        checked_len(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// Whether this kernel can make SCTP sockets, after `modprobe sctp`; why
/// not, if it cannot.
fn sctp_support() -> Result<(), String> {
    let modprobe = match Command::new("modprobe").arg("sctp").output() {
        Ok(out) if out.status.success() => "succeeded".to_owned(),
        Ok(out) => format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("could not run: {e}"),
    };
    sctp_socket(libc::AF_INET, libc::SOCK_STREAM).map(drop).map_err(|e| {
        format!(
            "NOT TESTED: this kernel has no SCTP (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {e}; \
             `modprobe sctp` {modprobe}). Whether an SCTP ClusterIP works is checked only in the \
             VMs: cargo xtask vm --kernel 6.1 --test-target e2e_sctp"
        )
    })
}

// ---------------------------------------------------------------------------
// Servers and clients.
// ---------------------------------------------------------------------------

/// A one-to-one SCTP server in a pod: answers each association with the
/// pod's name, reads what the client sends until it closes, and counts it.
struct SctpServer {
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SctpServer {
    fn start(netns: &Path, addr: SocketAddr, reply: &str) -> Self {
        let (stop, served) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (stop, served, reply) = (Arc::clone(&stop), Arc::clone(&served), reply.to_owned());
            spawn_in(netns, move || {
                let listener = match listen(addr) {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    if let Some(conn) = accept(&listener) {
                        served.fetch_add(1, Ordering::Relaxed);
                        let _ = set_timeouts(&conn);
                        let _ = send(&conn, format!("{reply}\n").as_bytes());
                        // Until the client closes (or the timeout).
                        while matches!(recv(&conn), Ok(s) if !s.is_empty()) {}
                    }
                }
            })
        };
        ready_rx
            .recv()
            .expect("SCTP server thread")
            .unwrap_or_else(|e| panic!("SCTP server on {addr} in {}: {e}", netns.display()));
        Self {
            served,
            stop,
            thread: Some(thread),
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for SctpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A one-to-one listener on `addr` (`[::]` takes IPv4 too).
fn listen(addr: SocketAddr) -> io::Result<OwnedFd> {
    let fd = sctp_socket(family(addr), libc::SOCK_STREAM)?;
    let (sa, len) = sockaddr(addr);
    // SAFETY: a valid descriptor and address.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) })?;
    // SAFETY: a valid descriptor.
    check(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    Ok(fd)
}

/// The next association within 50 ms, if any.
fn accept(listener: &OwnedFd) -> Option<OwnedFd> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&raw mut pfd, 1, 50) } <= 0 {
        return None;
    }
    // SAFETY: a valid listening descriptor; the peer address is not wanted.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    // SAFETY: a descriptor just made, owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What an SCTP client saw: who answered, and the peer address the kernel
/// gave the application.
#[derive(Debug)]
struct Seen {
    body: String,
    peer: SocketAddr,
}

/// One SCTP exchange with a server: [`one_to_one`] or [`one_to_many`].
type Exchange = fn(SocketAddr) -> io::Result<Seen>;

/// One-to-one (TCP-style) client: `connect()`, `getpeername()`, a request,
/// the answer.
fn one_to_one(to: SocketAddr) -> io::Result<Seen> {
    let fd = sctp_socket(family(to), libc::SOCK_STREAM)?;
    set_timeouts(&fd)?;
    let (sa, len) = sockaddr(to);
    // SAFETY: a valid descriptor and address.
    check(unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) })?;
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut peer: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = socklen::<libc::sockaddr_storage>();
    // SAFETY: a valid descriptor and a buffer of `len` bytes.
    check(unsafe { libc::getpeername(fd.as_raw_fd(), (&raw mut peer).cast(), &raw mut len) })?;
    send(&fd, b"hello\n")?;
    let body = recv(&fd)?;
    Ok(Seen {
        body,
        peer: from_sockaddr(&peer),
    })
}

/// What a non-blocking one-to-one `connect()` saw.
#[derive(Debug)]
struct Pending {
    /// `connect()`'s error (`EINPROGRESS` while the association is set up).
    connect: Option<io::Error>,
    /// Whether the association came up (or failed) within the wait.
    settled: bool,
    /// `getpeername()` after the wait.
    peer: io::Result<SocketAddr>,
}

/// A non-blocking one-to-one `connect()` to `to`, given `wait` to settle.
fn connect_nonblocking(to: SocketAddr, wait: Duration) -> io::Result<Pending> {
    let fd = sctp_socket(family(to), libc::SOCK_STREAM | libc::SOCK_NONBLOCK)?;
    let (sa, len) = sockaddr(to);
    // SAFETY: a valid descriptor and address.
    let connect =
        check(unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) }).err();
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).expect("small");
    // SAFETY: one valid pollfd.
    let settled = check(unsafe { libc::poll(&raw mut pfd, 1, ms) })? > 0;
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut peer: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = socklen::<libc::sockaddr_storage>();
    // SAFETY: a valid descriptor and a buffer of `len` bytes.
    let peer =
        check(unsafe { libc::getpeername(fd.as_raw_fd(), (&raw mut peer).cast(), &raw mut len) })
            .map(|_| from_sockaddr(&peer));
    Ok(Pending {
        connect,
        settled,
        peer,
    })
}

/// One-to-many (UDP-style) client: `sendto()` sets the association up
/// implicitly; `recvmsg()` returns the answer and its source.
fn one_to_many(to: SocketAddr) -> io::Result<Seen> {
    let fd = sctp_socket(family(to), libc::SOCK_SEQPACKET)?;
    set_timeouts(&fd)?;
    let (sa, len) = sockaddr(to);
    let hello = b"hello\n";
    // SAFETY: a valid descriptor, buffer and address.
    let n = checked_len(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            hello.as_ptr().cast(),
            hello.len(),
            0,
            (&raw const sa).cast(),
            len,
        )
    })?;
    assert_eq!(n, hello.len(), "short sendto");
    loop {
        let mut buf = [0u8; 256];
        // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
        let (mut from, mut msg): (libc::sockaddr_storage, libc::msghdr) =
            unsafe { (mem::zeroed(), mem::zeroed()) };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        msg.msg_name = (&raw mut from).cast();
        msg.msg_namelen = socklen::<libc::sockaddr_storage>();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: a valid descriptor; `msg` points at live buffers.
        let n = checked_len(unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, 0) })?;
        if msg.msg_flags & MSG_NOTIFICATION != 0 {
            continue;
        }
        return Ok(Seen {
            body: String::from_utf8_lossy(&buf[..n]).trim().to_owned(),
            peer: from_sockaddr(&from),
        });
    }
}

// ---------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------

/// Service `sig` at `VIP4` and `VIP6`: SCTP `SCTP_PORT` -> `SCTP_TARGET`
/// and TCP `TCP_PORT` -> `TCP_TARGET`, round-robin, on pod-2 and pod-3.
fn objects(env: &FileEnv) -> Vec<Value> {
    let (vip4, vip6) = (VIP4.to_string(), VIP6.to_string());
    let backends = &env.cluster.pods[1..];
    let ports = [("sig", SCTP_TARGET, "SCTP"), ("http", TCP_TARGET, "TCP")];
    vec![
        annotate(
            service(
                "sig",
                &[&vip4, &vip6],
                &[
                    manifests::sctp("sig", SCTP_PORT, SCTP_TARGET),
                    manifests::tcp("http", TCP_PORT, TCP_TARGET),
                ],
            ),
            "lb-agent.io/algorithm",
            "round-robin",
        ),
        slice(
            "sig",
            "sig-4",
            &backends.iter().map(|p| ready(p.ip4)).collect::<Vec<_>>(),
            &ports,
        ),
        slice(
            "sig",
            "sig-6",
            &backends.iter().map(|p| ready(p.ip6)).collect::<Vec<_>>(),
            &ports,
        ),
        service(
            "lone",
            &[&UNROUTED.to_string()],
            &[manifests::sctp("sig", SCTP_PORT, SCTP_TARGET)],
        ),
        slice(
            "lone",
            "lone-4",
            &backends.iter().map(|p| ready(p.ip4)).collect::<Vec<_>>(),
            &ports[..1],
        ),
    ]
}

/// The row of `lb-agent list -o json` for `frontend`/`protocol`.
fn row<'a>(list: &'a Value, frontend: &str, protocol: &str) -> &'a Value {
    list["services"]
        .as_array()
        .and_then(|rows| {
            rows.iter().find(|r| {
                r["frontend"] == frontend
                    && r["protocol"]
                        .as_str()
                        .is_some_and(|p| p.eq_ignore_ascii_case(protocol))
            })
        })
        .unwrap_or_else(|| panic!("no {frontend}/{protocol} in lb-agent list: {list:#}"))
}

/// Puts `VIP4` and `VIP6` on `holder`'s interface and routes them there
/// from `node`.
fn hold_clusterips(holder: &Pod, node: &Netns) {
    holder
        .netns
        .ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "eth0"]);
    holder.netns.ip(&[
        "addr",
        "add",
        &format!("{VIP6}/128"),
        "dev",
        "eth0",
        "nodad",
    ]);
    node.ip(&[
        "route",
        "add",
        &format!("{VIP4}/32"),
        "via",
        &holder.ip4.to_string(),
    ]);
    node.ip(&[
        "-6",
        "route",
        "add",
        &format!("{VIP6}/128"),
        "via",
        &holder.ip6.to_string(),
    ]);
}

/// `lb-agent list` shows the SCTP frontend `vip` with `backends`, and no
/// connection translated for it.
fn assert_untranslated(list: &Value, vip: SocketAddr, backends: &[SocketAddr]) {
    let sctp = row(list, &vip.to_string(), "SCTP");
    let mut listed: Vec<&str> = sctp["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    listed.sort_unstable();
    let expected: Vec<String> = backends.iter().map(ToString::to_string).collect();
    assert_eq!(listed, expected, "{list:#}");
    assert_eq!(sctp["translated"], 0, "{vip}: {CHANGED}");
}

const CHANGED: &str = "SCTP to the ClusterIP behaves differently now: if the data path translates \
                       SCTP, the README's SCTP paragraph and this test must say so";

#[test]
fn sctp_clusterip_is_not_translated_at_the_socket() {
    if let Err(why) = sctp_support() {
        skip(TEST, &why);
        return;
    }
    let env = FileEnv::new(3, "services.json");
    env.write(&objects(&env));
    let pods = &env.cluster.pods;
    // pod-1 holds both ClusterIPs; the node (where this thread runs)
    // routes them there. Nothing else is routed: the node has no default
    // route.
    let holder = &pods[0];
    hold_clusterips(holder, &env.cluster.node);
    // pod-1's servers are bound to a ClusterIP alone: an SCTP endpoint on
    // the wildcard address is multihomed (its INIT-ACK lists every address
    // of the pod) and may answer from the pod's own address, which the
    // client's association accepts as the same peer. The backends' servers
    // are on `[::]`, which takes IPv4 too.
    let vips = [
        SocketAddr::from((VIP4, SCTP_PORT)),
        SocketAddr::from((VIP6, SCTP_PORT)),
    ];
    let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, SCTP_TARGET));
    let servers = [
        SctpServer::start(&holder.netns.path(), vips[0], "pod-1"),
        SctpServer::start(&holder.netns.path(), vips[1], "pod-1"),
        SctpServer::start(&pods[1].netns.path(), any, "pod-2"),
        SctpServer::start(&pods[2].netns.path(), any, "pod-3"),
    ];
    let agent = env.agent(&[]);

    // The backends' SCTP servers answer when dialled directly.
    for (server, pod) in servers[2..].iter().zip(&pods[1..]) {
        for direct in [pod.addr4(SCTP_TARGET), pod.addr6(SCTP_TARGET)] {
            let seen = one_to_one(direct).unwrap_or_else(|e| panic!("SCTP to {direct}: {e}"));
            assert_eq!((seen.body.as_str(), seen.peer), (pod.name.as_str(), direct));
        }
        assert_eq!(server.served(), 2);
    }

    // The control: the same Service's TCP port is translated, round-robin,
    // for this process's sockets.
    let tcp = client::tally(SocketAddr::from((VIP4, TCP_PORT)), ROUNDS);
    assert_eq!(
        tcp,
        BTreeMap::from([
            ("pod-2".to_owned(), ROUNDS / 2),
            ("pod-3".to_owned(), ROUNDS / 2)
        ]),
        "TCP to the ClusterIP is not balanced: the agent is not working, so this test shows nothing about SCTP"
    );

    // One-to-one: connect() is not translated; the association is with the
    // ClusterIP itself, and getpeername() says so. One-to-many: the
    // association sendto() sets up is not translated either; recvmsg()
    // shows the ClusterIP because the peer is the ClusterIP.
    let styles: [(&str, &str, &str, Exchange); 2] = [
        ("one-to-one", "connect", "getpeername", one_to_one),
        ("one-to-many", "sendto", "recvmsg source", one_to_many),
    ];
    for vip in vips {
        for (style, call, peer_from, exchange) in styles {
            for i in 0..ROUNDS {
                let seen = exchange(vip)
                    .unwrap_or_else(|e| panic!("{style} SCTP {i} to {vip}: {e}; {CHANGED}"));
                eprintln!(
                    "{style} SCTP {call}({vip}) -> answered by {} ({peer_from}: {})",
                    seen.body, seen.peer
                );
                assert_eq!(seen.body, "pod-1", "{style} {i} to {vip}: {CHANGED}");
                assert_eq!(seen.peer, vip, "{style} {i} to {vip}: {CHANGED}");
            }
        }
    }
    // Where nothing routes the ClusterIP (a node without kube-proxy): the
    // association is never set up. connect() neither fails nor succeeds
    // while SCTP retransmits its INIT (for minutes), unlike the at-once
    // ECONNREFUSED of a TCP Service without endpoints.
    let lone = SocketAddr::from((UNROUTED, SCTP_PORT));
    let pending = connect_nonblocking(lone, Duration::from_secs(1)).expect("an SCTP socket");
    eprintln!("non-blocking SCTP connect({lone}), nothing routes it: {pending:?}");
    assert_eq!(
        pending.connect.as_ref().and_then(io::Error::raw_os_error),
        Some(libc::EINPROGRESS),
        "{pending:?}; {CHANGED}"
    );
    assert!(!pending.settled, "{pending:?}; {CHANGED}");
    assert_eq!(
        pending.peer.as_ref().map_err(io::Error::raw_os_error).err(),
        Some(Some(libc::ENOTCONN)),
        "{pending:?}; {CHANGED}"
    );

    let counts: Vec<u64> = servers.iter().map(SctpServer::served).collect();
    let each = 2 * u64::try_from(ROUNDS).expect("small");
    assert_eq!(
        counts,
        [each, each, 2, 2],
        "SCTP associations served by pod-1 on {} and on {}, pod-2, pod-3; {CHANGED}",
        vips[0],
        vips[1]
    );

    // The agent did program the SCTP frontends; the data path never saw a
    // connection to them.
    let list = agent.list();
    for (vip, addr) in vips
        .iter()
        .zip([Pod::addr4 as fn(&Pod, u16) -> SocketAddr, Pod::addr6])
    {
        let expected: Vec<SocketAddr> = pods[1..].iter().map(|p| addr(p, SCTP_TARGET)).collect();
        assert_untranslated(&list, *vip, &expected);
    }
    let expected: Vec<SocketAddr> = pods[1..].iter().map(|p| p.addr4(SCTP_TARGET)).collect();
    assert_untranslated(&list, lone, &expected);
    let tcp_row = row(
        &list,
        &SocketAddr::from((VIP4, TCP_PORT)).to_string(),
        "TCP",
    );
    assert_eq!(tcp_row["translated"], ROUNDS, "{list:#}");
}
