//! End to end, on this machine's kernel: the real agent on a services file,
//! real cgroup hooks, pods in network namespaces, clients in a child cgroup.
//!
//! Needs root; run one at a time: `cargo xtask test` does both.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_testbed::{
    agent::{Agent, run_cli},
    client::{self, Connector, tally},
    env::FileEnv,
    manifests::{self, Endpoint, Port, annotate, ready, service, slice, terminating},
    wait_for,
};
use nix::sys::signal::Signal;
use serde_json::Value;
use statrs::distribution::{ChiSquared, ContinuousCDF as _};

const VIP: &str = "10.96.0.100";
const VIP6: &str = "fd00:96::100";

type Env = FileEnv;

fn env(pods: usize) -> Env {
    FileEnv::new(pods, "services.json")
}

/// The demo service: VIP:80 -> every pod :8080, TCP.
fn web(env: &Env, algorithm: &str) -> Vec<Value> {
    let eps: Vec<Endpoint> = env.pod_ips().into_iter().map(ready).collect();
    manifests::web(VIP, algorithm, &eps).to_vec()
}

fn vip(port: u16) -> SocketAddr {
    format!("{VIP}:{port}").parse().expect("addr")
}

fn vip6(port: u16) -> SocketAddr {
    format!("[{VIP6}]:{port}").parse().expect("addr")
}

#[test]
fn round_robin_gives_each_of_three_backends_exactly_100_of_300() {
    let env = env(3);
    env.write(&web(&env, "round-robin"));
    let _agent = env.agent(&[]);
    let counts = tally(vip(80), 300);
    let expected: BTreeMap<String, usize> = [("pod-1", 100), ("pod-2", 100), ("pod-3", 100)]
        .map(|(p, n)| (p.to_owned(), n))
        .into();
    assert_eq!(counts, expected);
}

#[test]
fn random_stays_within_chi_square_bounds() {
    let env = env(3);
    env.write(&web(&env, "random"));
    let _agent = env.agent(&["--algorithm", "round-robin"]); // the annotation wins
    let n = 900;
    let counts = tally(vip(80), n);
    assert_eq!(counts.len(), 3, "every backend used: {counts:?}");
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let expected = n as f64 / 3.0;
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let stat: f64 = counts
        .values()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    let chi2 = ChiSquared::new(2.0).expect("chi2");
    // Two-sided at 1e-4 each: too uneven is not uniform, too even is not random.
    let (low, high) = (chi2.inverse_cdf(1e-4), chi2.inverse_cdf(1.0 - 1e-4));
    assert!(
        (low..high).contains(&stat),
        "chi-square {stat:.3} outside [{low:.4}, {high:.2}] for {counts:?}"
    );
}

#[test]
fn tcp_connect_and_getpeername_show_the_cluster_ip() {
    let env = env(2);
    env.write(&web(&env, "random"));
    let _agent = env.agent(&[]);
    for _ in 0..10 {
        let r = client::tcp(vip(80)).expect("connect to the ClusterIP");
        assert!(r.body.starts_with("pod-"), "reply {r:?}");
        assert_eq!(
            r.peer,
            vip(80),
            "getpeername must report the ClusterIP, not the pod"
        );
    }
}

/// Service `dns`: VIP:53 -> :8080 over UDP, and its slice.
fn dns(endpoints: &[Endpoint]) -> [Value; 2] {
    [
        service("dns", &[VIP], &[manifests::udp("dns", 53, 8080)]),
        slice("dns", "dns-1", endpoints, &[("dns", 8080, "UDP")]),
    ]
}

#[test]
fn connected_udp_replies_come_from_the_cluster_ip() {
    let env = env(2);
    let eps: Vec<Endpoint> = env.pod_ips().into_iter().map(ready).collect();
    env.write(&dns(&eps));
    let _agent = env.agent(&[]);
    for _ in 0..10 {
        let (reply, from) = client::udp_connected(vip(53)).expect("udp exchange");
        assert!(reply.body.starts_with("pod-"), "{reply:?}");
        assert_eq!(reply.peer, vip(53), "getpeername");
        assert_eq!(from, vip(53), "the reply's source");
    }
}

#[test]
fn unconnected_udp_replies_come_from_the_cluster_ip() {
    let env = env(3);
    let eps: Vec<Endpoint> = env.pod_ips().into_iter().map(ready).collect();
    let [svc, slice] = dns(&eps);
    env.write(&[annotate(svc, "lb-agent.io/algorithm", "round-robin"), slice]);
    let _agent = env.agent(&[]);
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let (body, from) = client::udp_unconnected(vip(53)).expect("udp exchange");
        assert_eq!(
            from,
            vip(53),
            "recvfrom must report the ClusterIP, not the pod"
        );
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{seen:?}"
    );
}

#[test]
fn tcp_only_port_is_not_translated_for_udp() {
    let env = env(1);
    env.write(&web(&env, "random"));
    let _agent = env.agent(&[]);
    assert!(client::tcp(vip(80)).is_ok());
    // No route to the ClusterIP: an untranslated datagram cannot be sent.
    let err = client::udp_unconnected(vip(80)).expect_err("UDP to a TCP-only service port");
    assert!(
        matches!(err.raw_os_error(), Some(libc::ENETUNREACH))
            || err.kind() == ErrorKind::WouldBlock
            || err.kind() == ErrorKind::TimedOut,
        "unexpected error {err:?}"
    );
}

#[test]
fn ipv6_service() {
    let env = env(2);
    let eps: Vec<Endpoint> = env.cluster.pods.iter().map(|p| ready(p.ip6)).collect();
    env.write(&[
        annotate(
            service(
                "web6",
                &[VIP6],
                &[
                    manifests::tcp("http", 80, 8080),
                    manifests::udp("dns", 53, 8080),
                ],
            ),
            "lb-agent.io/algorithm",
            "round-robin",
        ),
        slice(
            "web6",
            "web6-1",
            &eps,
            &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
        ),
    ]);
    let _agent = env.agent(&[]);
    let counts = tally(vip6(80), 20);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10],
        "{counts:?}"
    );
    let r = client::tcp(vip6(80)).expect("tcp");
    assert_eq!(r.peer, vip6(80));
    let (_, from) = client::udp_unconnected(vip6(53)).expect("udp");
    assert_eq!(from, vip6(53));
}

#[test]
fn dual_stack_service_and_v4_mapped_socket() {
    let env = env(2);
    let v4: Vec<Endpoint> = env.pod_ips().into_iter().map(ready).collect();
    let v6: Vec<Endpoint> = env.cluster.pods.iter().map(|p| ready(p.ip6)).collect();
    env.write(&[
        service("dual", &[VIP, VIP6], &[manifests::tcp("http", 80, 8080)]),
        slice("dual", "dual-v4", &v4, &[("http", 8080, "TCP")]),
        slice("dual", "dual-v6", &v6, &[("http", 8080, "TCP")]),
    ]);
    let _agent = env.agent(&[]);
    assert_eq!(client::tcp(vip(80)).expect("v4").peer, vip(80));
    assert_eq!(client::tcp(vip6(80)).expect("v6").peer, vip6(80));

    // An IPv6 socket reaching the IPv4 ClusterIP as ::ffff:10.96.0.100.
    let mapped: SocketAddr = format!("[::ffff:{VIP}]:80").parse().expect("addr");
    let r = client::tcp(mapped).expect("v4-mapped connect");
    assert!(r.body.starts_with("pod-"));
    assert_eq!(
        r.peer, mapped,
        "getpeername on the v6 socket shows the mapped ClusterIP"
    );
}

#[test]
fn service_without_endpoints_is_refused_within_10ms() {
    let env = env(1);
    env.write(&[service(
        "empty",
        &[VIP],
        &[manifests::tcp("http", 80, 8080)],
    )]);
    let agent = env.agent(&[]);
    let started = Instant::now();
    let err = std::net::TcpStream::connect_timeout(&vip(80), Duration::from_secs(2))
        .expect_err("a service without endpoints must refuse");
    let took = started.elapsed();
    // Kernels without bpf_set_retval (before 5.18) can only fail with EPERM.
    assert_eq!(err.kind(), agent.refusal(), "{err:?}");
    assert!(took < Duration::from_millis(10), "refused after {took:?}");
}

#[test]
fn target_port_by_name() {
    let env = env(2);
    let eps: Vec<Endpoint> = env.pod_ips().into_iter().map(ready).collect();
    env.write(&[
        service(
            "named",
            &[VIP],
            &[Port {
                name: "web",
                port: 80,
                target: serde_json::json!("web-port"),
                protocol: "TCP",
            }],
        ),
        // The endpoints controller resolves the name to 9090 in the slice.
        slice("named", "named-1", &eps, &[("web", 9090, "TCP")]),
    ]);
    let agent = env.agent(&[]);
    assert!(client::tcp(vip(80)).is_ok());
    let list = agent.list();
    let backends = &list["services"][0]["backends"];
    assert_eq!(backends.as_array().map(Vec::len), Some(2), "{list}");
    assert!(
        backends
            .as_array()
            .expect("array")
            .iter()
            .all(|b| b.as_str().is_some_and(|s| s.ends_with(":9090"))),
        "{backends}"
    );
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let env = env(3);
    let ips = env.pod_ips();
    env.write(&manifests::http(
        "web",
        VIP,
        &[ready(&ips[0]), terminating(&ips[1])],
    ));
    let agent = env.agent(&[]);
    assert_eq!(tally(vip(80), 20).keys().collect::<Vec<_>>(), vec!["pod-1"]);
    env.write(&manifests::http(
        "web",
        VIP,
        &[terminating(&ips[1]), terminating(&ips[2])],
    ));
    wait_for(
        "the fallback to terminating endpoints",
        Duration::from_secs(2),
        || tally(vip(80), 10).keys().all(|k| k != "pod-1"),
    );
    assert_eq!(
        tally(vip(80), 20).keys().collect::<Vec<_>>(),
        vec!["pod-2", "pod-3"]
    );
    drop(agent);
}

#[test]
fn edit_removing_a_backend_stops_new_connections_to_it_within_1s() {
    let env = env(3);
    env.write(&web(&env, "round-robin"));
    let _agent = env.agent(&[]);
    assert_eq!(tally(vip(80), 30).len(), 3);

    // Clients keep connecting while the file changes.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let log: Arc<std::sync::Mutex<Vec<(Instant, String)>>> = Arc::default();
    let client = {
        let (stop, failures, log) = (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&log));
        let node = env.cluster.node.path();
        lb_testbed::net::spawn_in(&node, move || {
            while !stop.load(Ordering::Relaxed) {
                // The time a connection started is what "new connection" means.
                let started = Instant::now();
                match client::tcp(vip(80)) {
                    Ok(r) => log.lock().expect("lock").push((started, r.body)),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut items = web(&env, "round-robin");
    let ips = env.pod_ips();
    items[1] = slice(
        "web",
        "web-1",
        &[ready(&ips[0]), ready(&ips[1])],
        &[("http", 8080, "TCP")],
    );
    let edited = Instant::now();
    env.write(&items);
    // Run until there is enough evidence after the 1 s mark (slow VMs need
    // longer than fast hosts).
    let after_mark = |log: &[(Instant, String)]| {
        log.iter()
            .filter(|(t, _)| *t > edited + Duration::from_secs(1))
            .count()
    };
    wait_for(
        "20 requests after the 1 s mark",
        Duration::from_mins(1),
        || after_mark(&log.lock().expect("lock")) >= 20,
    );
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client thread");

    let log = log.lock().expect("lock");
    let last_pod3 = log
        .iter()
        .filter(|(_, b)| b == "pod-3")
        .map(|(t, _)| *t)
        .max();
    let after = log
        .iter()
        .filter(|(t, _)| *t > edited + Duration::from_secs(1))
        .count();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "connects failed during the edit"
    );
    assert!(
        after >= 20,
        "too few requests after the edit to tell ({after})"
    );
    if let Some(t) = last_pod3 {
        let lag = t.saturating_duration_since(edited);
        assert!(
            lag < Duration::from_secs(1),
            "pod-3 still got a new connection {lag:?} after the edit"
        );
        eprintln!("removed backend's last new connection: {lag:?} after the edit");
    }
}

#[test]
fn malformed_file_is_rejected_whole_and_the_old_state_stays() {
    let env = env(2);
    env.write(&web(&env, "round-robin"));
    let agent = env.agent(&[]);
    let before = agent.list()["services"].clone();
    let errors = |a: &Agent| {
        a.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("lb_source_errors_total{source=\"file\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let errors_before = errors(&agent);

    // A truncated document, then a valid document with one bad object
    // next to a good change: both rejected whole.
    manifests::write_raw(
        &env.file,
        "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [",
    );
    wait_for("the parse error", Duration::from_secs(2), || {
        errors(&agent) > errors_before
    });
    let mut items = web(&env, "round-robin");
    items.push(service(
        "bad",
        &["10.96.0.300"],
        &[manifests::tcp("http", 80, 8080)],
    ));
    items[1] = slice(
        "web",
        "web-1",
        &[ready(&env.pod_ips()[0])],
        &[("http", 8080, "TCP")],
    );
    env.write(&items);
    wait_for("the validation error", Duration::from_secs(2), || {
        errors(&agent) > errors_before + 1
    });

    assert_eq!(
        agent.list()["services"],
        before,
        "the programmed state changed"
    );
    assert_eq!(tally(vip(80), 10).len(), 2, "both backends still used");
    let log = agent.log();
    assert!(
        log.contains(&env.file.display().to_string()),
        "the error names the file:\n{log}"
    );
    assert!(
        log.contains("Service default/bad") && log.contains("10.96.0.300"),
        "the error names the object and value:\n{log}"
    );
}

#[test]
fn sighup_reloads_the_file() {
    let env = env(2);
    env.write(&web(&env, "round-robin"));
    let agent = env.agent(&[]);
    let before = agent.log().matches("loaded services file").count();
    agent.signal(Signal::SIGHUP);
    wait_for("a reload", Duration::from_secs(2), || {
        agent.log().matches("loaded services file").count() > before
    });
}

#[test]
fn sigkill_leaves_connects_working_and_a_restart_adopts_the_state() {
    let env = env(3);
    env.write(&web(&env, "round-robin"));
    let mut agent = env.agent(&[]);
    assert_eq!(tally(vip(80), 30).len(), 3);

    agent.kill();
    assert_eq!(
        tally(vip(80), 30).len(),
        3,
        "the data path must outlive the agent"
    );
    assert_eq!(
        agent.list()["services"].as_array().map(Vec::len),
        Some(1),
        "list reads the pins without an agent"
    );

    // Connect continuously while the agent starts again over the pins.
    let connector = Connector::start(&env.cluster.node.path(), vip(80));
    agent.restart();
    agent.wait_ready();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = connector.stop();
    assert_eq!(failed, 0, "connects failed during the restart ({ok} ok)");
    assert!(ok > 0);
    let log = agent.log();
    assert!(
        log.contains("adopted_services=1"),
        "the restart adopts the pinned state:\n{log}"
    );
    assert_eq!(tally(vip(80), 30).len(), 3);
}

#[test]
fn cleanup_leaves_no_pin_or_attachment() {
    let env = env(1);
    env.write(&web(&env, "random"));
    let mut agent = env.agent(&[]);
    assert!(client::tcp(vip(80)).is_ok());
    agent.stop();
    assert!(
        client::tcp(vip(80)).is_ok(),
        "stopping the agent keeps the data path"
    );
    let out = agent.cleanup();
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !agent.bpffs.exists(),
        "pins left in {}",
        agent.bpffs.display()
    );
    if let Ok(out) = std::process::Command::new("bpftool")
        .args(["cgroup", "show", &env.cgroup.path.display().to_string()])
        .output()
    {
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "programs still attached: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let err = client::tcp(vip(80)).expect_err("the ClusterIP is not translated any more");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err:?}");
}

#[test]
fn list_shows_frontends_backends_algorithm_and_state() {
    let env = env(2);
    let mut items = web(&env, "round-robin");
    items.push(service(
        "empty",
        &["10.96.0.101"],
        &[manifests::tcp("http", 80, 8080)],
    ));
    env.write(&items);
    let agent = env.agent(&[]);
    tally(vip(80), 4);
    let list = agent.list();
    let services = list["services"].as_array().expect("services");
    assert_eq!(services.len(), 2, "{list}");
    let web = services
        .iter()
        .find(|s| s["service"] == "default/web:http")
        .expect("web");
    assert_eq!(web["frontend"], "10.96.0.100:80");
    assert_eq!(web["protocol"], "TCP");
    assert_eq!(web["algorithm"], "round-robin");
    assert_eq!(web["state"], "active");
    assert_eq!(
        web["backends"],
        serde_json::json!(["10.200.0.11:8080", "10.200.0.12:8080"])
    );
    assert_eq!(web["translated"], 4);
    let empty = services
        .iter()
        .find(|s| s["service"] == "default/empty:http")
        .expect("empty");
    assert_eq!(empty["state"], "no-endpoints");
    assert!(
        list["features"]
            .as_str()
            .is_some_and(|f| f.contains("connect4")),
        "{list}"
    );

    let table = run_cli(&["list", "--bpffs", &agent.bpffs.display().to_string()]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("10.96.0.100:80")
            && table.contains("default/web:http")
            && table.contains("no-endpoints"),
        "{table}"
    );
}

#[test]
fn readyz_and_metrics() {
    let env = env(1);
    env.write(&web(&env, "random"));
    let agent = env.agent(&[]);
    tally(vip(80), 3);
    let m = agent.metrics();
    assert!(m.contains("lb_services 1"), "{m}");
    assert!(m.contains("lb_backends 1"), "{m}");
    assert!(m.contains("lb_datapath_connect_total 3"), "{m}");
    assert!(
        m.contains("lb_kernel_feature{feature=\"connect4\"} 1"),
        "{m}"
    );
}

#[test]
fn user_errors_exit_non_zero_with_one_line() {
    let env = env(1);
    env.write(&web(&env, "random"));
    let file = env.file.display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "run",
                "--services-file",
                &file,
                "--bpffs",
                "/tmp/not-bpffs/lb",
            ],
            "not on a bpf filesystem",
        ),
        (
            &["run", "--services-file", &file, "--cgroup", "/tmp"],
            "not a cgroup2 directory",
        ),
        (
            &["run", "--services-file", &file, "--algorithm", "fastest"],
            "invalid value 'fastest'",
        ),
        (
            &["list", "--bpffs", "/sys/fs/bpf/does-not-exist"],
            "does-not-exist",
        ),
    ];
    for (args, needle) in cases {
        let out = run_cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    }
}
