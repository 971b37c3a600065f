//! How fast the agent closes sockets whose backend left the service, with
//! many sockets in many namespaces: a benchmark, run by `cargo xtask bench`
//! (ignored by plain test runs; it needs root).
//!
//! `LB_BENCH_SOCKETS` lists `namespaces x sockets-per-namespace` cases
//! (default `10x10,100x20,200x20`). In each case every socket is a
//! connected UDP socket to one service whose only backend is pod-2, in its
//! own client namespace (pinned under /run/netns, like a pod's). The file
//! then moves the service to pod-3; the time from that write until every
//! socket reports the close is measured, and the agent's own time for the
//! pass (`lb_socket_scan_duration_seconds`). One JSON line per case.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use lb_testbed::{
    agent::histogram,
    env::FileEnv,
    manifests::{self, ready, service, slice},
    net::Netns,
};
use serde_json::{Value, json};

const VIP: &str = "10.96.0.100";

fn objects(pod_ip: &str) -> Vec<Value> {
    vec![
        service("dns", &[VIP], &[manifests::udp("dns", 53, 8080)]),
        slice("dns", "dns-1", &[ready(pod_ip)], &[("dns", 8080, "UDP")]),
    ]
}

/// `10x10,100x20` -> `[(10, 10), (100, 20)]`.
fn cases() -> Vec<(usize, usize)> {
    std::env::var("LB_BENCH_SOCKETS")
        .unwrap_or_else(|_| "10x10,100x20,200x20".to_owned())
        .split(',')
        .map(|c| {
            let (n, s) = c.split_once('x').expect("NAMESPACESxSOCKETS");
            (n.parse().expect("namespaces"), s.parse().expect("sockets"))
        })
        .collect()
}

/// A client namespace: only loopback, with an address and a default route
/// on it, so that `connect()` finds a route (no datagram is ever sent).
fn client_namespace() -> Netns {
    let ns = Netns::new("cli");
    ns.ip(&["addr", "add", "10.201.0.1/32", "dev", "lo"]);
    ns.ip(&["route", "add", "default", "dev", "lo"]);
    ns
}

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`, needs root"]
fn stale_socket_close_latency() {
    for (namespaces, per_namespace) in cases() {
        let env = FileEnv::new(3, "services.json");
        let ips = env.pod_ips();
        env.write(&objects(&ips[1]));
        let agent = env.agent(&[]);
        let vip: SocketAddr = format!("{VIP}:53").parse().expect("addr");

        let clients: Vec<Netns> = (0..namespaces).map(|_| client_namespace()).collect();
        let mut sockets = Vec::with_capacity(namespaces * per_namespace);
        for ns in &clients {
            let _in = ns.enter();
            for _ in 0..per_namespace {
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                s.connect(vip).expect("connect to the service");
                assert_eq!(
                    s.peer_addr().expect("peer").to_string(),
                    vip.to_string(),
                    "getpeername shows the service"
                );
                s.set_nonblocking(true).expect("nonblocking");
                sockets.push(s);
            }
        }
        let before = histogram(&agent.metrics(), "lb_socket_scan_duration_seconds");

        env.write(&objects(&ips[2]));
        let written = Instant::now();
        let mut open: Vec<&UdpSocket> = sockets.iter().collect();
        while !open.is_empty() {
            open.retain(|s| {
                let mut buf = [0u8; 1];
                s.recv(&mut buf)
                    .err()
                    .is_none_or(|e| e.raw_os_error() != Some(libc::ECONNABORTED))
            });
            assert!(
                written.elapsed() < Duration::from_mins(1),
                "{} of {} sockets still open after 60 s",
                open.len(),
                sockets.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let all_closed = written.elapsed();
        // The pass has ended once its histogram counts it.
        let mut after = histogram(&agent.metrics(), "lb_socket_scan_duration_seconds");
        while after.0 <= before.0 {
            std::thread::sleep(Duration::from_millis(5));
            after = histogram(&agent.metrics(), "lb_socket_scan_duration_seconds");
        }
        let passes = after.0 - before.0;
        let destroyed = agent
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("lb_sockets_destroyed_total{protocol=\"udp\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        println!(
            "{}",
            json!({
                "namespaces": namespaces,
                "sockets": sockets.len(),
                "destroyed": destroyed,
                "write_to_all_closed_ms": all_closed.as_secs_f64() * 1e3,
                "agent_pass_ms": (after.1 - before.1) / passes * 1e3,
                "passes": passes,
            })
        );
        assert!(
            (destroyed - f64::from(u32::try_from(sockets.len()).expect("few"))).abs() < 0.5,
            "the agent closed {destroyed} of {} sockets",
            sockets.len()
        );
    }
}
