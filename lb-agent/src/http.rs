//! The agent's HTTP servers (metrics, health): listening as kube-proxy's
//! Go servers do, and serving a router on its own task.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use axum::Router;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::TcpListener, task::JoinHandle};

/// Listens on `addr` as Go's `net.Listen("tcp", addr)` does, which is how
/// kube-proxy listens: the unspecified IPv4 address (`0.0.0.0`) means every
/// address of both families (one IPv6 socket that takes IPv4 too), or of
/// IPv4 alone where the kernel has no IPv6. `SO_REUSEADDR` is set, so a
/// port closed a moment ago can be listened on again at once.
///
/// # Errors
/// When the address cannot be bound (in use, not local, no permission).
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        let every = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port());
        match bind(every, Some(false)) {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            result => return result,
        }
    }
    bind(addr, None)
}

fn bind(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(only_v6) = only_v6 {
        socket.set_only_v6(only_v6)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves `app` on `listener` until the task is aborted; `what` names the
/// server in the log line should it stop.
pub(crate) fn spawn(listener: TcpListener, app: Router, what: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "{what} server stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    #[tokio::test]
    async fn a_loopback_address_is_listened_on_as_given() {
        let l = super::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("listen");
        let local = l.local_addr().expect("address");
        assert_eq!(local.ip(), Ipv4Addr::LOCALHOST);
        assert_ne!(local.port(), 0);
    }
}
