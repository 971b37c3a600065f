//! Closing sockets that the data path pointed at a backend which has since
//! left the service: kube-proxy's conntrack flush, at the socket.
//!
//! The data path rewrites a connected socket's destination once, at
//! `connect()`, so nothing moves it when its backend goes: a long-lived
//! connected UDP socket (every DNS resolver) would keep talking to a removed
//! pod. After each sync, the backends that left a frontend are handed to a
//! [`Closer`], which on its own thread (never delaying the next sync):
//!
//! 1. finds every network namespace on the node (`netns`);
//! 2. in each, dumps the connected sockets of the protocols it closes whose
//!    peer is one of those backends (`diag`, `sock_diag` over netlink);
//! 3. closes a socket only when `lb_revnat` says the data path sent *this*
//!    socket (by cookie) to *this* backend for *that* frontend; a socket that
//!    dialled the pod directly, or reached it through another service, has
//!    no such entry and is left alone;
//! 4. destroys it (`SOCK_DESTROY`): the application's next call fails with
//!    `ECONNABORTED` (a send on the now unconnected UDP socket with
//!    `EDESTADDRREQ`), and its next `connect()` is balanced anew.
//!
//! UDP by default; TCP only when asked (kube-proxy leaves established TCP
//! flows to a removed, still running pod alone).

mod diag;
mod netns;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        mpsc::{Receiver, Sender, channel},
    },
    time::Instant,
};

use aya::maps::{HashMap, MapData};
use lb_common::revnat::{RevNatKey, RevNatValue};

use crate::{
    bpf::{
        convert::{addr16, ip_of},
        maps::open_pinned,
    },
    metrics::Metrics,
    model::{Frontend, Protocol},
    sync::Departure,
};

pub(crate) use diag::probe_destroy;

/// Where container runtimes pin pod network namespaces by default
/// (`--netns-dir`): containerd, CRI-O and `ip netns`.
pub const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// Which sockets to close when their backend leaves the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseSockets {
    /// None: sockets stay on removed backends until the application closes them.
    None,
    /// Connected UDP sockets (kube-proxy flushes UDP conntrack entries).
    #[default]
    Udp,
    /// Connected UDP sockets and TCP connections.
    UdpTcp,
}

impl CloseSockets {
    const fn closes(self, protocol: Protocol) -> bool {
        match (self, protocol) {
            (Self::Udp | Self::UdpTcp, Protocol::Udp) | (Self::UdpTcp, Protocol::Tcp) => true,
            // The kernel has no socket destroy for SCTP.
            _ => false,
        }
    }
}

/// The error of [`Closer::start`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the reverse-translation map: {0}")]
    Map(#[source] crate::bpf::Error),
    #[error("failed to start the socket-closing thread: {0}")]
    Thread(#[source] io::Error),
}

/// Hands departed backends to the closing thread.
pub struct Closer {
    tx: Sender<Vec<Departure>>,
    protocols: CloseSockets,
}

impl Closer {
    /// Starts the closing thread, reading `lb_revnat` from its pin.
    ///
    /// # Errors
    /// When the pinned map cannot be opened.
    pub fn start(
        revnat_pin: &Path,
        protocols: CloseSockets,
        netns_dirs: Vec<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let revnat: RevNat = open_pinned(revnat_pin).map_err(StartError::Map)?;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("socket-closer".into())
            .spawn(move || work(&rx, &revnat, &netns_dirs, &metrics))
            .map_err(StartError::Thread)?;
        Ok(Self { tx, protocols })
    }

    /// Queues the sockets of these departures for closing; returns at once.
    pub fn submit(&self, departed: &[Departure]) {
        let wanted: Vec<Departure> = departed
            .iter()
            .filter(|(fe, _)| self.protocols.closes(fe.protocol))
            .copied()
            .collect();
        if !wanted.is_empty() {
            // The thread only ends with the process.
            let _ = self.tx.send(wanted);
        }
    }
}

/// Departures grouped by what a dumped socket shows: protocol and peer.
#[derive(Debug, Default)]
struct Targets(BTreeMap<(Protocol, SocketAddr), BTreeSet<Frontend>>);

impl Targets {
    fn add(&mut self, departed: impl IntoIterator<Item = Departure>) {
        for (fe, backend) in departed {
            self.0.entry((fe.protocol, backend)).or_default().insert(fe);
        }
    }

    fn protocols(&self) -> BTreeSet<Protocol> {
        self.0.keys().map(|(p, _)| *p).collect()
    }

    /// The frontends whose sockets to `peer` over `protocol` are stale.
    fn frontends(&self, protocol: Protocol, peer: SocketAddr) -> Option<&BTreeSet<Frontend>> {
        self.0.get(&(protocol, peer))
    }
}

/// What one batch did.
#[derive(Debug, Default)]
struct Closed {
    namespaces: usize,
    /// Per protocol.
    destroyed: BTreeMap<Protocol, u64>,
    failed: BTreeMap<Protocol, u64>,
    /// Namespaces that could not be entered or dumped.
    scan_errors: u64,
}

fn work(rx: &Receiver<Vec<Departure>>, revnat: &RevNat, netns_dirs: &[PathBuf], metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let started = Instant::now();
        let mut targets = Targets::default();
        targets.add(first);
        // Whatever queued up meanwhile goes in the same pass.
        while let Ok(more) = rx.try_recv() {
            targets.add(more);
        }
        let closed = close(&targets, revnat, netns_dirs);
        let took = started.elapsed();
        let m = &metrics.sockets;
        m.scan_duration.observe(took.as_secs_f64());
        for (protocol, n) in &closed.destroyed {
            m.destroyed(*protocol).inc_by(*n);
        }
        for (protocol, n) in &closed.failed {
            m.failures(*protocol).inc_by(*n);
        }
        m.scan_errors.inc_by(closed.scan_errors);
        tracing::debug!(
            backends = targets.0.len(),
            namespaces = closed.namespaces,
            destroyed = closed.destroyed.values().sum::<u64>(),
            failed = closed.failed.values().sum::<u64>(),
            scan_errors = closed.scan_errors,
            took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            "closed sockets of departed backends"
        );
    }
}

type RevNat = HashMap<MapData, RevNatKey, RevNatValue>;

/// One pass over every namespace. Runs on a thread of its own that moves
/// from namespace to namespace and ends with the pass, so no thread of the
/// agent is ever left in a pod's namespace.
fn close(targets: &Targets, revnat: &RevNat, netns_dirs: &[PathBuf]) -> Closed {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let found = netns::find(Path::new("/proc"), netns_dirs);
                let mut closed = Closed {
                    namespaces: found.namespaces.len(),
                    ..Closed::default()
                };
                for (path, e) in &found.unreadable {
                    tracing::debug!(path = %path.display(), error = %e, "cannot open network namespace");
                }
                closed.scan_errors += found.unreadable.len() as u64;
                for ns in &found.namespaces {
                    if let Err(e) = close_in(ns, targets, revnat, &mut closed) {
                        closed.scan_errors += 1;
                        tracing::warn!(
                            netns = %ns.path.display(),
                            error = %e,
                            "cannot look for sockets of departed backends in this network namespace"
                        );
                    }
                }
                closed
            })
            .join()
            .unwrap_or_else(|_| {
                tracing::error!("the socket-closing pass panicked");
                Closed {
                    scan_errors: 1,
                    ..Closed::default()
                }
            })
    })
}

fn close_in(
    ns: &netns::Namespace,
    targets: &Targets,
    revnat: &RevNat,
    closed: &mut Closed,
) -> io::Result<()> {
    ns.enter()?;
    let mut diag = diag::Diag::open()?;
    let mut stale = Vec::new();
    for protocol in targets.protocols() {
        for family in diag::FAMILIES {
            for socket in diag.dump(family, protocol)? {
                if is_stale(&socket, targets, revnat) {
                    stale.push(socket);
                }
            }
        }
    }
    let failures = diag.destroy_all(&stale)?;
    for socket in &stale {
        *closed.destroyed.entry(socket.protocol).or_default() += 1;
    }
    for (i, e) in failures {
        let socket = &stale[i];
        *closed.destroyed.entry(socket.protocol).or_default() -= 1;
        // ENOENT: closed by its owner since the dump.
        if e.raw_os_error() != Some(libc::ENOENT) {
            *closed.failed.entry(socket.protocol).or_default() += 1;
            tracing::warn!(
                netns = %ns.path.display(),
                peer = %socket.peer(),
                error = %e,
                "failed to close a socket of a departed backend"
            );
        }
    }
    Ok(())
}

/// Whether the data path sent this socket to its peer for a frontend that
/// the peer has left.
fn is_stale(socket: &diag::DumpedSocket, targets: &Targets, revnat: &RevNat) -> bool {
    let peer = socket.peer();
    let Some(frontends) = targets.frontends(socket.protocol, peer) else {
        return false;
    };
    let key = RevNatKey {
        cookie: socket.cookie(),
        addr: addr16(peer.ip()),
        port_be: peer.port().to_be(),
        pad: [0; 6],
    };
    let Ok(service) = revnat.get(&key, 0) else {
        return false;
    };
    frontends.contains(&Frontend::new(
        ip_of(service.addr),
        u16::from_be(service.port_be),
        socket.protocol,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{CloseSockets, Targets};
    use crate::model::{Frontend, Protocol};

    fn fe(port: u16, protocol: Protocol) -> Frontend {
        Frontend::new("10.96.0.10".parse().expect("ip"), port, protocol)
    }

    #[test]
    fn udp_by_default_tcp_when_asked_sctp_never() {
        let default = CloseSockets::default();
        assert!(default.closes(Protocol::Udp));
        assert!(!default.closes(Protocol::Tcp));
        assert!(CloseSockets::UdpTcp.closes(Protocol::Tcp));
        assert!(!CloseSockets::UdpTcp.closes(Protocol::Sctp));
        assert!(!CloseSockets::None.closes(Protocol::Udp));
    }

    #[test]
    fn targets_are_keyed_by_protocol_and_backend() {
        let pod = "10.200.0.12:53".parse().expect("addr");
        let mut t = Targets::default();
        t.add([(fe(53, Protocol::Udp), pod), (fe(5353, Protocol::Udp), pod)]);
        assert_eq!(t.frontends(Protocol::Udp, pod).map(BTreeSet::len), Some(2));
        assert!(t.frontends(Protocol::Tcp, pod).is_none());
        assert_eq!(
            t.protocols().into_iter().collect::<Vec<_>>(),
            [Protocol::Udp]
        );
    }
}
