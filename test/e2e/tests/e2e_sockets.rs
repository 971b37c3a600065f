//! Sockets left on a removed backend (issue 9): when an endpoint leaves a
//! Service, the agent closes the connected sockets the data path sent to it
//! for that Service (`sock_diag` `SOCK_DESTROY`), in every network namespace,
//! and nothing else.
//!
//! The world: pod-1 is the client pod; pod-2 and pod-3 are the backends.
//! Needs root; run one at a time: `cargo xtask test` does both.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_testbed::{
    agent::{Agent, histogram},
    cluster::POD_HOLD_PORT,
    env::FileEnv,
    manifests::{self, annotate, ready, service, slice},
    skip, wait_for,
};
use serde_json::Value;

const VIP: &str = "10.96.0.100";
const OTHER_VIP: &str = "10.96.0.101";
/// What a user may wait for: the bound for the next call to fail.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(2);

fn vip(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// `dns` at VIP: UDP 53 -> :8080 and TCP 7070 -> :7070, round-robin, on the
/// pods numbered `backends` (1-based); `other` at `OTHER_VIP`: UDP 53 ->
/// pod-2:8080 always.
fn objects(env: &FileEnv, backends: &[usize]) -> Vec<Value> {
    let ips = env.pod_ips();
    let eps: Vec<_> = backends.iter().map(|&p| ready(&ips[p - 1])).collect();
    vec![
        annotate(
            service(
                "dns",
                &[VIP],
                &[
                    manifests::udp("dns", 53, 8080),
                    manifests::tcp("hold", 7070, POD_HOLD_PORT),
                ],
            ),
            "lb-agent.io/algorithm",
            "round-robin",
        ),
        slice(
            "dns",
            "dns-1",
            &eps,
            &[("dns", 8080, "UDP"), ("hold", POD_HOLD_PORT, "TCP")],
        ),
        service("other", &[OTHER_VIP], &[manifests::udp("dns", 53, 8080)]),
        slice(
            "other",
            "other-1",
            &[ready(&ips[1])],
            &[("dns", 8080, "UDP")],
        ),
    ]
}

/// A connected socket of either kind, as an application holds it.
enum Conn {
    Udp(UdpSocket),
    Tcp(BufReader<TcpStream>),
}

impl Conn {
    fn udp(addr: SocketAddr) -> Self {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind udp");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.connect(addr).expect("connect udp");
        Self::Udp(s)
    }

    fn tcp(addr: SocketAddr) -> Self {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect tcp");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Self::Tcp(BufReader::new(s))
    }

    /// One request on the connected socket; the answering pod's name.
    fn ask(&mut self) -> io::Result<String> {
        match self {
            Self::Udp(s) => {
                s.send(b"hello")?;
                let mut buf = [0u8; 64];
                let n = s.recv(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
            }
            Self::Tcp(s) => {
                s.get_mut().write_all(b"hello\n")?;
                let mut line = String::new();
                if s.read_line(&mut line)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed by peer",
                    ));
                }
                Ok(line.trim().to_owned())
            }
        }
    }
}

/// Opens connections with `open` until one is answered by `pod`.
fn answered_by(pod: &str, mut open: impl FnMut() -> Conn) -> Conn {
    for _ in 0..20 {
        let mut c = open();
        if c.ask().expect("the service answers") == pod {
            return c;
        }
    }
    panic!("no connection reached {pod} in 20 tries");
}

/// Asks every 10 ms until the socket fails; the time and the error, and the
/// pods that answered meanwhile with when.
fn until_closed(conn: &mut Conn, since: Instant) -> (Duration, io::Error, Vec<(Duration, String)>) {
    let mut answers = Vec::new();
    loop {
        let asked = since.elapsed();
        match conn.ask() {
            Ok(pod) => answers.push((asked, pod)),
            Err(e) => return (since.elapsed(), e, answers),
        }
        assert!(
            since.elapsed() < CLOSE_WITHIN * 10,
            "the socket still works {:?} after its backend left; answers: {answers:?}",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The labelled counter `lb_sockets_destroyed_total{protocol="..."}` once
/// the pass that closed the sockets has ended: the agent counts a pass when
/// it has searched every namespace, which is after the first socket it
/// closed has already failed for its owner.
fn destroyed(agent: &Agent, protocol: &str) -> f64 {
    let prefix = format!("lb_sockets_destroyed_total{{protocol=\"{protocol}\"}} ");
    let mut value = None;
    wait_for(
        "the socket-closing pass to end",
        Duration::from_secs(10),
        || {
            let metrics = agent.metrics();
            let (passes, _) = histogram(&metrics, "lb_socket_scan_duration_seconds");
            value = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()));
            passes >= 1.0
        },
    );
    value.unwrap_or_else(|| panic!("no {prefix}in /metrics"))
}

/// Whether the agent probed `SOCK_DESTROY` as working; records a skip if not.
fn can_destroy(agent: &Agent, test: &str) -> bool {
    let yes = agent.has_feature("sock_destroy");
    if !yes {
        skip(
            test,
            "no sock_diag SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY, udp_diag)",
        );
    }
    yes
}

/// pod-2 and pod-3 behind the services, the agent on them with `args`;
/// `None` (and the test recorded as skipped) without `SOCK_DESTROY`.
fn start(test: &str, args: &[&str]) -> Option<(FileEnv, Agent)> {
    let env = FileEnv::new(3, "services.json");
    env.write(&objects(&env, &[2, 3]));
    let agent = env.agent(args);
    can_destroy(&agent, test).then_some((env, agent))
}

fn assert_closed_error(e: &io::Error) {
    let code = e.raw_os_error();
    assert!(
        matches!(
            code,
            Some(libc::ECONNABORTED | libc::EDESTADDRREQ | libc::ECONNRESET | libc::EPIPE)
        ) || e.kind() == io::ErrorKind::UnexpectedEof,
        "unexpected error from a closed socket: {e}"
    );
}

#[test]
fn connected_udp_client_in_a_pod_moves_off_a_removed_backend() {
    let Some((env, agent)) = start(
        "connected_udp_client_in_a_pod_moves_off_a_removed_backend",
        &[],
    ) else {
        return;
    };
    let in_pod = env.cluster.pods[0].netns.enter();
    let mut conn = answered_by("pod-2", || Conn::udp(vip(VIP, 53)));

    env.write(&objects(&env, &[3]));
    let edited = Instant::now();
    let (closed_after, error, answers) = until_closed(&mut conn, edited);
    eprintln!(
        "the socket failed {closed_after:?} after the file changed ({error}); answered before: {}",
        answers.len()
    );
    assert!(
        closed_after < CLOSE_WITHIN,
        "the socket on the removed backend failed only {closed_after:?} after the change"
    );
    assert_closed_error(&error);
    assert!(answers.iter().all(|(_, pod)| pod == "pod-2"), "{answers:?}");

    // The application reconnects, as resolvers do on an error.
    for i in 0..10 {
        let mut again = Conn::udp(vip(VIP, 53));
        let pod = again.ask().unwrap_or_else(|e| panic!("reconnect {i}: {e}"));
        assert_eq!(pod, "pod-3", "reconnect {i} reached a removed backend");
    }
    drop(in_pod); // the metrics listen in the node's namespace
    assert!(
        (destroyed(&agent, "udp") - 1.0).abs() < f64::EPSILON,
        "exactly one socket was the data path's on pod-2"
    );
}

#[test]
fn only_sockets_the_data_path_sent_to_the_removed_backend_are_closed() {
    let Some((env, agent)) = start(
        "only_sockets_the_data_path_sent_to_the_removed_backend_are_closed",
        &[],
    ) else {
        return;
    };
    let pod2 = env.cluster.pods[1].addr4(8080);
    // A client on the node (the agent's own namespace) ...
    let mut node_stale = answered_by("pod-2", || Conn::udp(vip(VIP, 53)));
    // ... and in a pod.
    let in_pod = env.cluster.pods[0].netns.enter();
    let mut stale = answered_by("pod-2", || Conn::udp(vip(VIP, 53)));
    let mut others = [
        (
            "UDP to the service, on pod-3",
            answered_by("pod-3", || Conn::udp(vip(VIP, 53))),
        ),
        (
            "UDP to another service, on pod-2",
            Conn::udp(vip(OTHER_VIP, 53)),
        ),
        ("UDP to pod-2 directly", Conn::udp(pod2)),
        (
            "TCP to the service, on pod-2",
            answered_by("pod-2", || Conn::tcp(vip(VIP, 7070))),
        ),
    ];
    for (what, c) in &mut others {
        c.ask().unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    env.write(&objects(&env, &[3]));
    let edited = Instant::now();
    let (pod_closed, e, _) = until_closed(&mut stale, edited);
    assert_closed_error(&e);
    drop(in_pod);
    let (node_closed, e, _) = until_closed(&mut node_stale, edited);
    assert_closed_error(&e);
    eprintln!("closed after {pod_closed:?} (pod) and {node_closed:?} (node)");
    assert!(pod_closed.max(node_closed) < CLOSE_WITHIN);

    let expect = ["pod-3", "pod-2", "pod-2", "pod-2"];
    for ((what, c), pod) in others.iter_mut().zip(expect) {
        let answer = c
            .ask()
            .unwrap_or_else(|e| panic!("{what}: closed, but it is not stale: {e}"));
        assert_eq!(answer, pod, "{what}");
    }
    assert!((destroyed(&agent, "udp") - 2.0).abs() < f64::EPSILON);
    assert!(destroyed(&agent, "tcp").abs() < f64::EPSILON);
}

#[test]
fn close_sockets_udp_tcp_also_resets_tcp_connections_to_the_removed_backend() {
    let Some((env, agent)) = start(
        "close_sockets_udp_tcp_also_resets_tcp_connections_to_the_removed_backend",
        &["--close-sockets", "udp-tcp"],
    ) else {
        return;
    };
    let in_pod = env.cluster.pods[0].netns.enter();
    let mut stale = answered_by("pod-2", || Conn::tcp(vip(VIP, 7070)));
    let mut kept = answered_by("pod-3", || Conn::tcp(vip(VIP, 7070)));
    let mut direct = Conn::tcp(env.cluster.pods[1].addr4(POD_HOLD_PORT));
    assert_eq!(direct.ask().expect("direct"), "pod-2");

    env.write(&objects(&env, &[3]));
    let edited = Instant::now();
    let (closed_after, e, _) = until_closed(&mut stale, edited);
    eprintln!("the TCP connection failed {closed_after:?} after the change ({e})");
    assert_closed_error(&e);
    assert!(closed_after < CLOSE_WITHIN);
    assert_eq!(kept.ask().expect("the connection to pod-3"), "pod-3");
    assert_eq!(direct.ask().expect("the direct connection"), "pod-2");
    drop(in_pod);
    assert!((destroyed(&agent, "tcp") - 1.0).abs() < f64::EPSILON);
}
