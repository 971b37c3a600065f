//! The health endpoints over real sockets on 127.0.0.1 (ephemeral ports):
//! status codes, headers and bodies as kube-proxy sends them.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use super::{ProxierHealth, proxier, service::ServiceHealthServers};
use crate::model::{HealthCheck, HealthChecks, ServiceName};

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Test client: one HTTP/1.1 GET over a plain TCP connection, as a load
/// balancer's probe makes it; the status code, headers and body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    Ok((status, head.to_owned(), body.to_owned()))
}

/// Serves `/healthz` and `/livez` of `health` on an ephemeral port.
fn serve_proxier(health: &Arc<ProxierHealth>) -> SocketAddr {
    let listener = crate::http::listen(SocketAddr::new(LOCALHOST, 0)).expect("listen");
    let addr = listener.local_addr().expect("address");
    proxier::serve(listener, Arc::clone(health));
    addr
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("address").port()
}

#[track_caller]
fn assert_kube_proxy_headers(head: &str) {
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    assert!(
        head.contains("x-content-type-options: nosniff\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn healthz_is_healthy_until_a_change_waits_longer_than_the_timeout() {
    let health = Arc::new(ProxierHealth::new(Duration::from_millis(200)));
    let addr = serve_proxier(&health);

    // Starting, nothing waiting: healthy, and lastUpdated is now.
    let (status, head, body) = get(addr, "/healthz").await.expect("GET");
    assert_eq!(status, 200, "{body}");
    assert_kube_proxy_headers(&head);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["nodeEligible"], true);
    assert_eq!(v["lastUpdated"], v["currentTime"], "{body}");
    assert!(
        body.ends_with(" +0000 UTC\", \"nodeEligible\": true}"),
        "{body}"
    );

    // A change arrived; not late yet.
    health.queued();
    assert_eq!(get(addr, "/healthz").await.expect("GET").0, 200);
    // Late: both endpoints fail, and the last update is Go's zero time
    // (the maps never caught up).
    tokio::time::sleep(Duration::from_millis(250)).await;
    for path in ["/healthz", "/livez"] {
        let (status, head, body) = get(addr, path).await.expect("GET");
        assert_eq!(status, 503, "{path}: {body}");
        assert_kube_proxy_headers(&head);
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["lastUpdated"], "0001-01-01 00:00:00 +0000 UTC", "{body}");
    }
    // The maps caught up.
    health.updated();
    assert_eq!(get(addr, "/healthz").await.expect("GET").0, 200);
    assert_eq!(get(addr, "/livez").await.expect("GET").0, 200);
    assert_eq!(get(addr, "/other").await.expect("GET").0, 404);
}

#[tokio::test]
async fn a_node_going_away_fails_healthz_but_not_livez() {
    let health = Arc::new(ProxierHealth::new(Duration::from_mins(1)));
    let addr = serve_proxier(&health);
    health.set_node_eligible(false);
    let (status, _, body) = get(addr, "/healthz").await.expect("GET");
    assert_eq!(status, 503);
    assert!(body.ends_with("\"nodeEligible\": false}"), "{body}");
    let (status, _, body) = get(addr, "/livez").await.expect("GET");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("nodeEligible"), "{body}");
}

fn web(port: u16, local_endpoints: usize) -> HealthChecks {
    let name = ServiceName {
        namespace: "default".to_owned(),
        name: "web".to_owned(),
    };
    let check = HealthCheck {
        port,
        local_endpoints,
    };
    [(name, check)].into()
}

/// kube-proxy's body for `default/web`.
fn body(local_endpoints: usize, proxy_healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}"
    )
}

#[tokio::test]
async fn a_health_check_port_answers_with_the_local_endpoints() {
    let proxier = Arc::new(ProxierHealth::new(Duration::from_millis(100)));
    let mut servers = ServiceHealthServers::new(LOCALHOST, Arc::clone(&proxier));
    let port = free_port();
    let addr = SocketAddr::new(LOCALHOST, port);

    assert!(servers.reconcile(&web(port, 2)).await);
    // Any path, as load balancers choose their own.
    for path in ["/", "/healthz", "/any/path"] {
        let (status, head, got) = get(addr, path).await.expect("GET");
        assert_eq!((status, got), (200, body(2, true)), "{path}");
        assert_kube_proxy_headers(&head);
    }
    // The last local endpoint left: 503, on the same listener.
    assert!(servers.reconcile(&web(port, 0)).await);
    let (status, _, got) = get(addr, "/").await.expect("GET");
    assert_eq!((status, got), (503, body(0, true)));
    // Endpoints here, but the proxy is late: 503 too.
    assert!(servers.reconcile(&web(port, 1)).await);
    proxier.queued();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, _, got) = get(addr, "/").await.expect("GET");
    assert_eq!((status, got), (503, body(1, false)));
}

#[tokio::test]
async fn a_health_check_port_closes_when_its_service_goes_or_moves() {
    let proxier = Arc::new(ProxierHealth::new(Duration::from_mins(1)));
    let mut servers = ServiceHealthServers::new(LOCALHOST, proxier);
    let (port, moved) = (free_port(), free_port());
    assert!(servers.reconcile(&web(port, 1)).await);
    assert_eq!(
        get((LOCALHOST, port).into(), "/").await.expect("GET").0,
        200
    );

    assert!(servers.reconcile(&web(moved, 1)).await);
    assert!(
        get((LOCALHOST, port).into(), "/").await.is_err(),
        "old port closed"
    );
    assert_eq!(
        get((LOCALHOST, moved).into(), "/").await.expect("GET").0,
        200
    );

    assert!(servers.reconcile(&HealthChecks::new()).await);
    let refused = get((LOCALHOST, moved).into(), "/")
        .await
        .expect_err("closed");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_port_in_use_is_retried_and_does_not_stop_the_others() {
    let proxier = Arc::new(ProxierHealth::new(Duration::from_mins(1)));
    let mut servers = ServiceHealthServers::new(LOCALHOST, proxier);
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let port = taken.local_addr().expect("address").port();
    let other = free_port();
    let mut wanted = web(port, 1);
    let api = ServiceName {
        namespace: "default".to_owned(),
        name: "api".to_owned(),
    };
    wanted.insert(
        api,
        HealthCheck {
            port: other,
            local_endpoints: 1,
        },
    );

    assert!(!servers.reconcile(&wanted).await, "reports the port in use");
    assert_eq!(
        get((LOCALHOST, other).into(), "/").await.expect("GET").0,
        200
    );
    drop(taken);
    assert!(servers.reconcile(&wanted).await, "listens once it is free");
    let (status, _, got) = get((LOCALHOST, port).into(), "/").await.expect("GET");
    assert_eq!((status, got), (200, body(1, true)));
}
