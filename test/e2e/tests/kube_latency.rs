//! Benchmark, not a test: how long an endpoint change made through the
//! Kubernetes API takes to reach the data path, with N Services programmed.
//!
//! The clock starts when the changed EndpointSlice is written to the API
//! server (the project's list/watch server, over HTTP, in this process) and
//! stops when a client's `connect()` to the ClusterIP first reaches the new
//! pod: watch delivery, kube-rs decoding, translation, the map update and
//! the first connect are all inside. The agent's own view (watch event to
//! maps) is its `lb_update_latency_seconds` histogram, printed alongside.
//!
//! Needs root. Run by `cargo xtask bench`, or:
//! `sudo cargo test --release -p lb-agent --test kube_latency -- --ignored --nocapture`
//! (`LB_BENCH_SIZES=1,1000,10000` and `LB_BENCH_CHANGES=50` set the sizes
//! and the number of changes per size).

use std::time::{Duration, Instant};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_testbed::apiserver::ApiServer;
use lb_testbed::{
    agent::{Agent, histogram},
    client,
    cluster::Cluster,
    manifests::{self, ready, service, slice, typed},
    net::Cgroup,
};
use serde_json::json;

const VIP: &str = "10.127.255.250";

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture (cargo xtask bench does)"]
fn api_event_to_data_path_latency() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let changes = env_list("LB_BENCH_CHANGES", "50")
        .first()
        .copied()
        .unwrap_or(50);
    for n in env_list("LB_BENCH_SIZES", "1,1000,10000") {
        measure(n, changes);
    }
}

fn measure(services: usize, changes: usize) {
    let cluster = Cluster::new(2);
    let _in_node = cluster.node.enter();
    let cgroup = Cgroup::new();
    cgroup.join();
    let api = ApiServer::start().expect("API server");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");

    add_fillers(&api, services.saturating_sub(1));
    let pods: Vec<(String, String)> = cluster
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.ip4.to_string()))
        .collect();
    api.apply(&typed::<Service>(service(
        "measured",
        &[VIP],
        &[manifests::tcp("http", 80, 8080)],
    )));
    let point_at = |pod: usize| {
        api.apply(&typed::<EndpointSlice>(slice(
            "measured",
            "measured-1",
            &[ready(&pods[pod].1)],
            &[("http", 8080, "TCP")],
        )));
    };
    point_at(0);

    let kubeconfig = kubeconfig.display().to_string();
    let started = Instant::now();
    let agent = Agent::start(
        &cgroup.path,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            "node-1",
            "--max-services",
            &(services + 16).max(65_536).to_string(),
            // Ten endpoints each (the fillers), and room for changes in flight.
            "--max-backends",
            &(services * 11).max(262_144).to_string(),
        ],
    );
    let programmed = started.elapsed();
    let vip = format!("{VIP}:80").parse().expect("addr");
    lb_testbed::wait_for("the measured service", Duration::from_mins(1), || {
        client::tcp(vip).is_ok_and(|r| r.body == pods[0].0)
    });

    // Warm-up, not counted: ready means the first list is done, not that
    // the watch that follows it is open yet.
    for target in [1, 0] {
        point_at(target);
        lb_testbed::wait_for("the warm-up change", Duration::from_secs(30), || {
            client::tcp(vip).is_ok_and(|r| r.body == pods[target].0)
        });
    }
    let mut samples = Vec::with_capacity(changes);
    for i in 1..=changes {
        let target = i % 2;
        let t0 = Instant::now();
        point_at(target);
        loop {
            if client::tcp(vip).is_ok_and(|r| r.body == pods[target].0) {
                samples.push(t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "change {i} never reached the data path"
            );
        }
    }
    samples.sort();
    let pct = |p: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "small indices"
        )]
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1e3
    };
    if std::env::var_os("LB_BENCH_VERBOSE").is_some() {
        eprintln!("{}", agent.log());
    }
    let metrics = agent.metrics();
    let (count, sum) = histogram(&metrics, "lb_update_latency_seconds");
    println!(
        "{}",
        json!({
            "benchmark": "api_event_to_data_path",
            "services": services,
            "changes": samples.len(),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
            "agent_event_to_maps_mean_ms": if count > 0.0 { sum / count * 1e3 } else { f64::NAN },
            "agent_ready_after_s": programmed.as_secs_f64(),
            "samples_ms": samples.iter().map(|d| (d.as_secs_f64() * 1e4).round() / 10.0).collect::<Vec<_>>(),
        })
    );
}

/// `count` other Services with 10 endpoints each.
fn add_fillers(api: &ApiServer, count: usize) {
    for i in 0..count {
        manifests::apply(api, &manifests::filler(i, 0));
    }
}
