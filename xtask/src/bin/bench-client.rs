//! `bench-client`: the side of `cargo xtask bench` that runs inside the
//! benchmark's network namespaces, built in release mode
//! (`cargo build --release -p xtask --bin bench-client`) so that what it
//! measures is the kernel, not an unoptimised loop.
//!
//! - `serve`: the pods' server: epoll, one thread per `--threads`, every
//!   thread listening on every port with `SO_REUSEPORT`. Each read of a
//!   request is answered with 6 bytes: the server's own address and port
//!   (IPv4, network order), so a client knows which backend it reached.
//!   Connections stay open until the client closes them (keep-alive).
//! - `latency`: times `connect()` alone (socket creation and close are
//!   outside the clock), one connection at a time.
//! - `conn-rate`: new connections per second: connect, one request and
//!   reply, close; `--threads` loops in parallel.
//! - `rps`: requests per second on kept-alive connections, one per thread,
//!   one request in flight on each.
//! - `probe`: connects again and again until a reply comes from `--expect`,
//!   and prints the `CLOCK_MONOTONIC` time that connect started.
//! - `bulk`: bulk throughput: one connection per thread, opened with
//!   [`BULK_HELLO`] (the server then reads and never answers), written to
//!   as fast as the path takes it; bytes are counted as the kernel accepts
//!   them (the socket's send buffer, a few MiB, bounds the error).
//!
//! Every client closes with `SO_LINGER` 0 (a reset), so that no `TIME_WAIT`
//! is left to run the client out of ports. Results are one JSON object on
//! stdout. `--cgroup` joins a cgroup (v2 directory) before anything else.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write as _},
    mem,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use lb_testbed::monotonic_ns;
use serde_json::json;

/// Request size; the server answers each read, whatever its size.
const REQUEST: [u8; 16] = *b"bench-request\r\n\n";
/// Reply: IPv4 address (4 bytes) and port (2 bytes), network order.
const REPLY_LEN: usize = 6;
/// The first bytes of a `bulk` connection: the server answers nothing on it.
const BULK_HELLO: &[u8] = b"bench-bulk\n";

#[derive(Parser)]
#[command(name = "bench-client", about = "Measuring side of `cargo xtask bench`")]
struct Cli {
    /// Join this cgroup (v2 directory) first.
    #[arg(long, global = true)]
    cgroup: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve on PORTS until killed; prints `ready` once listening.
    Serve {
        #[arg(long, value_delimiter = ',', required = true)]
        ports: Vec<u16>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Time `connect()` COUNT times (after WARMUP untimed), rotating over ADDRS.
    Latency {
        #[arg(long, value_delimiter = ',', required = true)]
        addrs: Vec<SocketAddrV4>,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 50)]
        warmup: usize,
    },
    /// New connections per second (connect, request, reply, close).
    ConnRate(Load),
    /// Requests per second on kept-alive connections, one per thread.
    Rps(Load),
    /// Bytes per second written on one connection per thread (`ok`: bytes).
    Bulk(Load),
    /// Connect to ADDR until EXPECT answers; prints `ready` after the first answer.
    Probe {
        #[arg(long)]
        addr: SocketAddrV4,
        #[arg(long)]
        expect: SocketAddrV4,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 100)]
        interval_us: u64,
    },
}

/// A rate measurement: `--threads` loops over `--addrs` for `--duration-ms`.
#[derive(clap::Args)]
struct Load {
    #[arg(long, value_delimiter = ',', required = true)]
    addrs: Vec<SocketAddrV4>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    duration_ms: u64,
}

impl Load {
    fn run(&self, body: Loop) -> Result<()> {
        parallel(
            &self.addrs,
            self.threads,
            Duration::from_millis(self.duration_ms),
            body,
        )
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = cli
        .cgroup
        .as_ref()
        .map_or(Ok(()), |cg| join_cgroup(cg))
        .and_then(|()| run(cli.command));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-client: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn join_cgroup(cgroup: &std::path::Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("failed to join cgroup {}", procs.display()))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve { ports, threads } => serve(&ports, threads),
        Command::Latency {
            addrs,
            count,
            warmup,
        } => latency(&addrs, count, warmup),
        Command::ConnRate(load) => load.run(conn_loop),
        Command::Rps(load) => load.run(rps_loop),
        Command::Bulk(load) => load.run(bulk_loop),
        Command::Probe {
            addr,
            expect,
            timeout_ms,
            interval_us,
        } => probe(
            addr,
            expect,
            Duration::from_millis(timeout_ms),
            Duration::from_micros(interval_us),
        ),
    }
}

// ---- sockets ----------------------------------------------------------------

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(ret)
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

#[expect(clippy::cast_possible_truncation, reason = "small fixed-size structs")]
fn socklen<T>() -> libc::socklen_t {
    size_of::<T>() as libc::socklen_t
}

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: value points to a live T of the given length.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            socklen::<T>(),
        )
    };
    check(ret, what).map(drop)
}

/// A TCP socket that resets on close (no `TIME_WAIT`), not yet connected.
fn client_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &linger,
        "SO_LINGER",
    )?;
    let one: libc::c_int = 1;
    setsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        &one,
        "TCP_NODELAY",
    )?;
    Ok(fd)
}

fn connect(fd: &OwnedFd, addr: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr(addr);
    // SAFETY: sa is a valid sockaddr_in of the given length.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sa).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    };
    check(ret, &format!("connect {addr}")).map(drop)
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = check(
            i32::try_from(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) }).unwrap_or(-1),
            "write",
        )?;
        buf = &buf[usize::try_from(n).unwrap_or(0)..];
    }
    Ok(())
}

fn read_exact(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the tail of buf is valid for writing.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed",
                ));
            }
            n if n < 0 => return Err(io::Error::last_os_error()),
            n => got += usize::try_from(n).unwrap_or(0),
        }
    }
    Ok(())
}

/// One request and its reply; returns who answered.
fn request(fd: &OwnedFd) -> io::Result<SocketAddrV4> {
    write_all(fd.as_raw_fd(), &REQUEST)?;
    let mut reply = [0u8; REPLY_LEN];
    read_exact(fd.as_raw_fd(), &mut reply)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::new(reply[0], reply[1], reply[2], reply[3]),
        u16::from_be_bytes([reply[4], reply[5]]),
    ))
}

// ---- clients ----------------------------------------------------------------

fn latency(addrs: &[SocketAddrV4], count: usize, warmup: usize) -> Result<()> {
    let mut samples: Vec<u64> = Vec::with_capacity(count);
    let mut errors = 0u64;
    let mut first_error = None;
    for i in 0..warmup + count {
        let addr = addrs[i % addrs.len()];
        let fd = client_socket()?;
        let start = Instant::now();
        let result = connect(&fd, addr);
        let took = start.elapsed();
        drop(fd);
        match result {
            Ok(()) if i >= warmup => {
                samples.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            }
            Ok(()) => {}
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
                if errors > 100 && errors * 10 > u64::try_from(i).unwrap_or(0) {
                    bail!(
                        "too many failed connects: {}",
                        first_error.unwrap_or_default()
                    );
                }
            }
        }
    }
    println!(
        "{}",
        json!({ "samples_ns": samples, "errors": errors, "first_error": first_error })
    );
    Ok(())
}

/// What one thread of `conn-rate` or `rps` did.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: &io::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

type Loop = fn(&[SocketAddrV4], usize, &AtomicBool) -> Tally;

fn parallel(addrs: &[SocketAddrV4], threads: usize, duration: Duration, body: Loop) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (addrs, stop) = (addrs.to_vec(), Arc::clone(&stop));
            thread::spawn(move || body(&addrs, t, &stop))
        })
        .collect();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        total.ok += t.ok;
        total.errors += t.errors;
        if total.first_error.is_none() {
            total.first_error = t.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "ok": total.ok, "errors": total.errors, "seconds": elapsed, "first_error": total.first_error })
    );
    Ok(())
}

fn conn_loop(addrs: &[SocketAddrV4], thread: usize, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let mut i = thread;
    while !stop.load(Ordering::Relaxed) {
        let addr = addrs[i % addrs.len()];
        i += 1;
        let result = client_socket().and_then(|fd| {
            connect(&fd, addr)?;
            request(&fd)
        });
        match result {
            Ok(_) => tally.ok += 1,
            Err(e) => {
                tally.error(&e);
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    tally
}

/// Thread `thread`'s one connection of a kept-alive load over `addrs`;
/// `None` (the error tallied) if it could not connect.
fn kept_alive(addrs: &[SocketAddrV4], thread: usize, tally: &mut Tally) -> Option<OwnedFd> {
    let connected = client_socket().and_then(|fd| {
        connect(&fd, addrs[thread % addrs.len()])?;
        Ok(fd)
    });
    connected.map_err(|e| tally.error(&e)).ok()
}

fn rps_loop(addrs: &[SocketAddrV4], thread: usize, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let Some(fd) = kept_alive(addrs, thread, &mut tally) else {
        return tally;
    };
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            match request(&fd) {
                Ok(_) => tally.ok += 1,
                Err(e) => {
                    tally.error(&e);
                    return tally;
                }
            }
        }
    }
    tally
}

/// `bulk`: `ok` counts bytes.
fn bulk_loop(addrs: &[SocketAddrV4], thread: usize, stop: &AtomicBool) -> Tally {
    const CHUNK: usize = 256 * 1024;
    let mut tally = Tally::default();
    let Some(fd) = kept_alive(addrs, thread, &mut tally) else {
        return tally;
    };
    if let Err(e) = write_all(fd.as_raw_fd(), BULK_HELLO) {
        tally.error(&e);
        return tally;
    }
    let chunk = vec![0x5a_u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match write_all(fd.as_raw_fd(), &chunk) {
            Ok(()) => tally.ok += CHUNK as u64,
            Err(e) => {
                tally.error(&e);
                return tally;
            }
        }
    }
    tally
}

fn probe(
    addr: SocketAddrV4,
    expect: SocketAddrV4,
    timeout: Duration,
    interval: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut ready = false;
    let mut probes = 0u64;
    let mut errors = 0u64;
    loop {
        let started_ns = monotonic_ns();
        let result = client_socket().and_then(|fd| {
            connect(&fd, addr)?;
            request(&fd)
        });
        probes += 1;
        match result {
            Ok(who) if who == expect && ready => {
                println!(
                    "{}",
                    json!({ "switched_ns": started_ns, "probes": probes, "errors": errors })
                );
                return Ok(());
            }
            Ok(_) if !ready => {
                ready = true;
                println!("ready");
                io::stdout().flush().context("failed to write to stdout")?;
            }
            Ok(_) => {}
            Err(_) => errors += 1,
        }
        if Instant::now() > deadline {
            bail!(
                "{expect} did not answer {addr} within {timeout:?} ({probes} probes, {errors} errors)"
            );
        }
        thread::sleep(interval);
    }
}

// ---- server -----------------------------------------------------------------

fn serve(ports: &[u16], threads: usize) -> Result<()> {
    let mut workers = Vec::new();
    for _ in 0..threads.max(1) {
        let listeners: Vec<OwnedFd> = ports
            .iter()
            .map(|&p| listener(p).with_context(|| format!("failed to listen on :{p}")))
            .collect::<Result<_>>()?;
        workers.push(thread::spawn(move || serve_loop(&listeners)));
    }
    println!("ready");
    io::stdout().flush().context("failed to write to stdout")?;
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a server thread panicked"))??;
    }
    Ok(())
}

fn listener(port: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = check(
        unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        },
        "socket",
    )?;
    // SAFETY: fd was just returned by socket().
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &one,
        "SO_REUSEADDR",
    )?;
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        &one,
        "SO_REUSEPORT",
    )?;
    let sa = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    // SAFETY: sa is a valid sockaddr_in.
    check(
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sa).cast(),
                socklen::<libc::sockaddr_in>(),
            )
        },
        "bind",
    )?;
    // SAFETY: plain syscall on an owned fd.
    check(unsafe { libc::listen(fd.as_raw_fd(), 4096) }, "listen")?;
    Ok(fd)
}

/// The reply for a connection: its local address.
fn local_reply(fd: RawFd) -> [u8; REPLY_LEN] {
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = socklen::<libc::sockaddr_in>();
    // SAFETY: sa and len are valid for writing.
    unsafe { libc::getsockname(fd, std::ptr::from_mut(&mut sa).cast(), &raw mut len) };
    let ip = u32::from_be(sa.sin_addr.s_addr).to_be_bytes();
    let port = u16::from_be(sa.sin_port).to_be_bytes();
    [ip[0], ip[1], ip[2], ip[3], port[0], port[1]]
}

const LISTENER_TAG: u64 = 1 << 63;

fn epoll_ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: ev is a valid epoll_event.
    check(
        unsafe { libc::epoll_ctl(epfd, op, fd, &raw mut ev) },
        "epoll_ctl",
    )
    .map(drop)
}

fn serve_loop(listeners: &[OwnedFd]) -> Result<()> {
    // SAFETY: plain syscall; owned right away.
    let epfd = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    )?;
    // SAFETY: epfd was just returned by epoll_create1.
    let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
    for (i, l) in listeners.iter().enumerate() {
        epoll_ctl(
            epfd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            l.as_raw_fd(),
            LISTENER_TAG | i as u64,
        )?;
    }
    // A connection and its reply (`None`: a `bulk` one, never answered).
    let mut conns: HashMap<RawFd, (OwnedFd, Option<[u8; REPLY_LEN]>)> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        // SAFETY: events is valid for its length.
        let n = unsafe {
            libc::epoll_wait(
                epfd.as_raw_fd(),
                events.as_mut_ptr(),
                i32::try_from(events.len()).unwrap_or(i32::MAX),
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            bail!("epoll_wait: {e}");
        }
        for ev in &events[..usize::try_from(n).unwrap_or(0)] {
            let data = ev.u64;
            if data & LISTENER_TAG != 0 {
                let Ok(index) = usize::try_from(data & !LISTENER_TAG) else {
                    continue;
                };
                accept_all(epfd.as_raw_fd(), listeners[index].as_raw_fd(), &mut conns);
                continue;
            }
            let Ok(fd) = RawFd::try_from(data) else {
                continue;
            };
            let Some((conn, reply)) = conns.get_mut(&fd) else {
                continue;
            };
            // Requests are small: a short read keeps request and reply in step.
            let want = if reply.is_some() { 4096 } else { buf.len() };
            // SAFETY: buf is valid for `want` bytes.
            let got = unsafe { libc::read(conn.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            let keep = match (usize::try_from(got), *reply) {
                (Ok(0), _) => false,
                (Err(_), _) => io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock,
                (Ok(n), Some(_)) if buf[..n].starts_with(BULK_HELLO) => {
                    *reply = None;
                    true
                }
                (Ok(_), Some(reply)) => write_all(conn.as_raw_fd(), &reply).is_ok(),
                (Ok(_), None) => true,
            };
            if !keep {
                let _ = epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0);
                conns.remove(&fd);
            }
        }
    }
}

/// Accepts every pending connection.
fn accept_all(
    epfd: RawFd,
    listener: RawFd,
    conns: &mut HashMap<RawFd, (OwnedFd, Option<[u8; REPLY_LEN]>)>,
) {
    loop {
        // SAFETY: null address pointers are allowed by accept4.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return; // EAGAIN, or a connection reset before it was accepted
        }
        // SAFETY: fd was just returned by accept4.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        let _ = setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one,
            "TCP_NODELAY",
        );
        let reply = Some(local_reply(fd));
        let data = u64::try_from(fd).unwrap_or(0);
        if epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, data).is_ok() {
            conns.insert(fd, (owned, reply));
        }
    }
}
