//! The test API server (`lb_testbed::apiserver`) against kube-rs's real
//! `Client`, `watcher` and reflectors: the protocol the agent relies on, and
//! the chaos knobs other tests use. No root needed.

use std::{
    collections::BTreeSet,
    fmt::Debug,
    future::ready,
    net::TcpStream,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher::{self, Event, watch_object},
    },
};
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use lb_testbed::apiserver::{
    ApiServer, LabelSelector, Verb, endpoint_slice, labeled, node, service, wait_until_async,
};

/// The selector kube-proxy (and the agent) watch Services with.
const PROXY_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
const HEADLESS: (&str, &str) = ("service.kubernetes.io/headless", "");
const WAIT: Duration = Duration::from_secs(10);

/// A running server and a kube-rs client made from the kubeconfig it wrote.
struct Cluster {
    server: ApiServer,
    client: Client,
    dir: TempDir,
}

async fn cluster() -> Cluster {
    let server = ApiServer::start().expect("start the test apiserver");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&path)
        .expect("write the kubeconfig");
    let client = client_from(&path).await;
    Cluster {
        server,
        client,
        dir,
    }
}

async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("read the kubeconfig back");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a kube config from the kubeconfig");
    Client::try_from(config).expect("a kube client")
}

/// A reflector fed by a real `watcher` with the default backoff, and a log
/// of the watcher's events (`init`, `apply NAME`, `delete NAME`,
/// `init-done`, `error CODE`).
struct Reflector<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    log: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl<K> Reflector<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    async fn start(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let task = tokio::spawn(
            watcher::watcher(api, config)
                .default_backoff()
                .reflect(writer)
                .for_each(move |event| {
                    let line = match event {
                        Ok(Event::Init) => "init".to_owned(),
                        Ok(Event::InitApply(o) | Event::Apply(o)) => {
                            format!("apply {}", o.name_any())
                        }
                        Ok(Event::Delete(o)) => format!("delete {}", o.name_any()),
                        Ok(Event::InitDone) => "init-done".to_owned(),
                        Err(watcher::Error::WatchError(status)) => format!("error {}", status.code),
                        Err(e) => format!("error {e}"),
                    };
                    sink.lock().expect("log lock").push(line);
                    ready(())
                }),
        );
        tokio::time::timeout(WAIT, store.wait_until_ready())
            .await
            .expect("the reflector is ready in time")
            .expect("the reflector's writer lives");
        Self { store, log, task }
    }

    fn names(&self) -> BTreeSet<String> {
        self.store.state().iter().map(|o| o.name_any()).collect()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    fn count(&self, line: &str) -> usize {
        self.log().iter().filter(|l| *l == line).count()
    }

    async fn wait_for_names(&self, names: &[&str]) {
        let want: BTreeSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
        wait_until_async(&format!("the store holds exactly {want:?}"), WAIT, || {
            self.names() == want
        })
        .await;
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Drop for Reflector<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn web(name: &str) -> Service {
    service("default", name, "", &[("http", 80, 8080)])
}

/// The requests of one verb for `services`.
fn service_requests(server: &ApiServer, verb: Verb) -> Vec<lb_testbed::apiserver::RequestRecord> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.is(verb, "services"))
        .collect()
}

/// Checks that `request` has these query parameters (others may be there too).
fn assert_params(request: &lb_testbed::apiserver::RequestRecord, expected: &[(&str, &str)]) {
    for &(name, value) in expected {
        assert_eq!(request.param(name), Some(value), "{name} of {request}");
    }
}

#[tokio::test]
async fn initial_list_is_paged_and_selected_like_kube_proxy() {
    let Cluster { server, client, .. } = cluster().await;
    for name in ["a", "b", "c", "d", "e"] {
        server.apply(&web(name));
    }
    server.apply(&labeled(
        web("mesh"),
        &[("service.kubernetes.io/service-proxy-name", "other")],
    ));
    server.apply(&labeled(web("headless"), &[HEADLESS]));
    let list_rv = server.resource_version();

    let config = watcher::Config::default()
        .labels(PROXY_SELECTOR)
        .page_size(2);
    let services = Reflector::start(Api::<Service>::all(client), config).await;
    assert_eq!(services.names(), set(&["a", "b", "c", "d", "e"]));
    wait_until_async("the watch follows the list", WAIT, || {
        !service_requests(&server, Verb::Watch).is_empty()
    })
    .await;

    for request in server.requests() {
        eprintln!("observed: {request}");
    }
    let lists = service_requests(&server, Verb::List);
    assert_eq!(
        lists.len(),
        3,
        "5 matching objects in pages of 2: {lists:#?}"
    );
    for (i, list) in lists.iter().enumerate() {
        assert_eq!(list.path, "/api/v1/services");
        assert_eq!(list.param("limit"), Some("2"));
        assert_eq!(list.param("labelSelector"), Some(PROXY_SELECTOR));
        assert_eq!(list.param("continue").is_some(), i > 0, "page {i}");
    }
    let watch = &service_requests(&server, Verb::Watch)[0];
    assert_params(
        watch,
        &[
            ("resourceVersion", &list_rv.to_string()),
            ("labelSelector", PROXY_SELECTOR),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", "290"),
        ],
    );
}

#[tokio::test]
async fn watch_delivers_added_modified_deleted_and_selector_transitions() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&web("a"));
    let config = watcher::Config::default().labels(PROXY_SELECTOR);
    let services = Reflector::start(Api::<Service>::all(client), config).await;

    let added = server.apply(&service("default", "b", "10.96.7.7", &[("http", 80, 8080)]));
    services.wait_for_names(&["a", "b"]).await;
    let b = services
        .store
        .find(|s| s.name_any() == "b")
        .expect("b is in the store");
    assert_eq!(b.metadata.resource_version, added.metadata.resource_version);
    assert_eq!(
        b.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("10.96.7.7")
    );
    assert!(b.metadata.uid.is_some() && b.metadata.creation_timestamp.is_some());

    let modified = server.apply(&service("default", "b", "10.96.7.7", &[("http", 81, 8081)]));
    assert_eq!(modified.metadata.generation, Some(2));
    wait_until_async("b has its new port", WAIT, || {
        services
            .store
            .find(|s| s.name_any() == "b")
            .is_some_and(|s| {
                s.spec
                    .as_ref()
                    .and_then(|spec| spec.ports.as_ref())
                    .map(|p| p[0].port)
                    == Some(81)
            })
    })
    .await;

    // Starting to match the exclusion looks like a deletion to the watch,
    // stopping to match like an addition.
    server.apply(&labeled(web("a"), &[HEADLESS]));
    services.wait_for_names(&["b"]).await;
    server.apply(&web("a"));
    services.wait_for_names(&["a", "b"]).await;

    server.delete::<Service>("default", "b").expect("b existed");
    services.wait_for_names(&["a"]).await;
    assert_eq!(
        services.log(),
        [
            "init",
            "apply a",
            "init-done",
            "apply b",
            "apply b",
            "delete a",
            "apply a",
            "delete b"
        ]
    );
}

#[tokio::test]
async fn bookmarks_let_a_resumed_watch_survive_compaction() {
    let Cluster { server, client, .. } = cluster().await;
    server.set_bookmark_interval(Duration::from_millis(100));
    server.apply(&web("a"));
    // Two watchers that differ only in bookmarks (and in page size, to tell
    // their lists apart).
    let with = watcher::Config::default()
        .labels(PROXY_SELECTOR)
        .page_size(50);
    let without = watcher::Config::default()
        .labels(PROXY_SELECTOR)
        .page_size(60)
        .disable_bookmarks();
    let bookmarked = Reflector::start(Api::<Service>::all(client.clone()), with).await;
    let plain = Reflector::start(Api::<Service>::all(client), without).await;
    let lists_with_limit = |limit: &str| {
        service_requests(&server, Verb::List)
            .iter()
            .filter(|r| r.param("limit") == Some(limit))
            .count()
    };

    // Changes neither watcher is sent: only bookmarks move their position.
    for name in ["h1", "h2", "h3"] {
        server.apply(&labeled(web(name), &[HEADLESS]));
    }
    server.apply(&endpoint_slice(
        "default",
        "a-1",
        "a",
        &["10.0.0.1"],
        &[("http", 8080)],
    ));
    let rv = server.resource_version();
    wait_until_async(
        "a bookmark carries the latest resourceVersion",
        WAIT,
        || server.stats().last_bookmark_rv >= rv,
    )
    .await;

    server.compact();
    server.close_watches();
    let resumed = |bookmarks: Option<&str>| {
        let bookmarks = bookmarks.map(str::to_owned);
        let server = &server;
        move || {
            service_requests(server, Verb::Watch)
                .iter()
                .filter(|r| r.param("allowWatchBookmarks").map(str::to_owned) == bookmarks)
                .count()
                >= 2
        }
    };
    wait_until_async(
        "the bookmarked watcher resumes",
        WAIT,
        resumed(Some("true")),
    )
    .await;
    wait_until_async("the plain watcher relists", WAIT, || {
        lists_with_limit("60") == 2
    })
    .await;

    let rewatch = service_requests(&server, Verb::Watch)
        .into_iter()
        .filter(|r| r.param("allowWatchBookmarks") == Some("true"))
        .nth(1)
        .expect("a second bookmarked watch");
    assert_eq!(
        rewatch.param("resourceVersion"),
        Some(rv.to_string().as_str())
    );
    assert_eq!(
        lists_with_limit("50"),
        1,
        "the bookmarked watcher did not relist"
    );
    assert_eq!(bookmarked.count("init"), 1);
    wait_until_async("the plain watcher saw 410", WAIT, || {
        plain.count("error 410") == 1
    })
    .await;
    assert_eq!(plain.count("init"), 2);
    assert_eq!(server.stats().expired, 1);
    assert_eq!(bookmarked.names(), set(&["a"]));
}

#[tokio::test]
async fn expired_watch_relists_and_sees_what_changed_meanwhile() {
    let Cluster { server, client, .. } = cluster().await;
    for name in ["a", "b", "c"] {
        server.apply(&web(name));
    }
    let config = watcher::Config::default()
        .labels(PROXY_SELECTOR)
        .page_size(2);
    let services = Reflector::start(Api::<Service>::all(client), config).await;
    let lists_before = service_requests(&server, Verb::List).len();

    // Changes the watcher cannot see, then a history that no longer goes
    // back to its resourceVersion.
    server.stop();
    server.delete::<Service>("default", "b").expect("b existed");
    server.apply(&web("d"));
    server.compact();
    server.restart().expect("restart on the same port");

    services.wait_for_names(&["a", "c", "d"]).await;
    assert!(services.count("error 410") >= 1, "{:?}", services.log());
    assert_eq!(services.count("init"), 2, "{:?}", services.log());
    assert_eq!(
        service_requests(&server, Verb::List).len(),
        lists_before + 2,
        "a paged relist"
    );
    assert!(server.stats().expired >= 1);

    // The same through expire_watches, without a stop: what the real server
    // does to a watcher that fell behind.
    wait_until_async("the watch is open again", WAIT, || {
        server.stats().open_watches == 1
    })
    .await;
    server.expire_watches();
    wait_until_async("a third list", WAIT, || services.count("init") == 3).await;
    services.wait_for_names(&["a", "c", "d"]).await;
}

#[tokio::test]
async fn closed_watches_resume_without_a_relist() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&web("a"));
    let services = Reflector::start(Api::<Service>::all(client), watcher::Config::default()).await;
    wait_until_async("the watch is open", WAIT, || {
        server.stats().open_watches == 1
    })
    .await;

    server.close_watches();
    wait_until_async("the watcher watches again", WAIT, || {
        server.stats().watches == 2
    })
    .await;
    server.apply(&web("b"));
    services.wait_for_names(&["a", "b"]).await;

    server.set_watch_close_every(Some(Duration::from_millis(200)));
    wait_until_async("several more watches", WAIT, || server.stats().watches >= 5).await;
    server.apply(&web("c"));
    server.delete::<Service>("default", "a").expect("a existed");
    services.wait_for_names(&["b", "c"]).await;

    assert_eq!(server.stats().lists, 1, "never relisted");
    assert_eq!(services.count("init"), 1);
    let versions: Vec<u64> = service_requests(&server, Verb::Watch)
        .iter()
        .map(|w| {
            w.param("resourceVersion")
                .and_then(|rv| rv.parse().ok())
                .expect("a numeric resourceVersion")
        })
        .collect();
    assert!(
        versions.is_sorted(),
        "resumed from ever newer versions: {versions:?}"
    );

    // A client going away closes its watch at once (not at the next
    // bookmark or event).
    server.set_watch_close_every(None);
    server.set_bookmark_interval(Duration::from_hours(1));
    wait_until_async("one watch open", WAIT, || server.stats().open_watches == 1).await;
    drop(services);
    wait_until_async("no watch open", WAIT, || server.stats().open_watches == 0).await;
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&web("a"));
    server.apply(&labeled(web("h"), &[HEADLESS]));
    let config = watcher::Config::default()
        .labels(PROXY_SELECTOR)
        .streaming_lists();
    let services = Reflector::start(Api::<Service>::all(client), config).await;
    assert_eq!(services.names(), set(&["a"]));
    server.apply(&web("b"));
    services.wait_for_names(&["a", "b"]).await;

    assert_eq!(server.stats().lists, 0);
    let watch = &service_requests(&server, Verb::Watch)[0];
    eprintln!("observed: {watch}");
    assert_params(
        watch,
        &[
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("resourceVersion", "0"),
        ],
    );
}

#[tokio::test]
async fn single_object_watch_path() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&web("a"));
    server.apply(&web("b"));
    let request = axum::http::Request::get(
        "/api/v1/namespaces/default/services/b?watch=true&timeoutSeconds=1&resourceVersion=0",
    )
    .body(Vec::new())
    .expect("a request");
    let events: Vec<WatchEvent<Service>> = client
        .request_events::<Service>(request)
        .await
        .expect("watch starts")
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("no stream error");
    assert!(matches!(events.as_slice(), [WatchEvent::Added(s)] if s.name_any() == "b"));
}

#[tokio::test]
async fn watch_ends_at_timeout_seconds() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&web("a"));
    let api = Api::<Service>::all(client);
    let started = tokio::time::Instant::now();
    let events: Vec<_> = tokio::time::timeout(WAIT, async {
        api.watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
            .await
            .expect("watch starts")
            .try_collect::<Vec<_>>()
            .await
    })
    .await
    .expect("the server ends the watch")
    .expect("no stream error");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(matches!(events.as_slice(), [WatchEvent::Added(s)] if s.name_any() == "a"));
    assert_eq!(server.stats().open_watches, 0);
}

#[tokio::test]
async fn stopped_server_refuses_connections_and_the_watcher_catches_up() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&web("a"));
    server.apply(&web("b"));
    let services = Reflector::start(Api::<Service>::all(client), watcher::Config::default()).await;
    wait_until_async("the watch is open", WAIT, || {
        server.stats().open_watches == 1
    })
    .await;

    server.stop();
    let refused = TcpStream::connect(("127.0.0.1", server.port())).expect_err("nothing listens");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    server.apply(&web("c"));
    server.delete::<Service>("default", "a").expect("a existed");
    // Down long enough for the watcher to fail to reconnect at least once.
    wait_until_async("the watcher notices", WAIT, || {
        services.log().iter().any(|l| l.starts_with("error"))
    })
    .await;
    server.restart().expect("restart on the same port");

    services.wait_for_names(&["b", "c"]).await;
    assert_eq!(
        server.stats().lists,
        1,
        "caught up by watching, without a relist"
    );
    assert_eq!(services.count("init"), 1);
}

#[tokio::test]
async fn node_watched_by_name() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&node("node-a", &["192.168.0.1"]));
    server.apply(&node("node-b", &["192.168.0.2"]));
    let api = Api::<Node>::all(client);
    let mut updates = Box::pin(watch_object(api.clone(), "node-a"));
    let mut next = async || {
        tokio::time::timeout(WAIT, updates.next())
            .await
            .expect("an update in time")
            .expect("the stream goes on")
            .expect("no watch error")
    };
    let address = |node: &Node| {
        node.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| a[0].address.clone())
    };

    let first = next().await.expect("node-a exists");
    assert_eq!(address(&first).as_deref(), Some("192.168.0.1"));
    server.apply(&node("node-b", &["192.168.0.22"]));
    server.apply(&node("node-a", &["192.168.0.11"]));
    let second = next().await.expect("node-a still exists");
    assert_eq!(
        address(&second).as_deref(),
        Some("192.168.0.11"),
        "node-b's change was not sent"
    );
    server.delete::<Node>("", "node-a").expect("node-a existed");
    assert!(next().await.is_none());

    let watches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is(Verb::Watch, "nodes"))
        .collect();
    assert_eq!(watches[0].path, "/api/v1/nodes");
    assert_eq!(
        watches[0].param("fieldSelector"),
        Some("metadata.name=node-a")
    );

    let b = api.get("node-b").await.expect("get node-b");
    assert_eq!(address(&b).as_deref(), Some("192.168.0.22"));
    assert_eq!(
        api_error(api.get("node-a").await),
        (404, "NotFound".to_owned())
    );
}

#[tokio::test]
async fn endpoint_slices_by_namespace_and_service() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&endpoint_slice(
        "default",
        "web-1",
        "web",
        &["10.0.0.1"],
        &[("http", 8080)],
    ));
    server.apply(&endpoint_slice(
        "default",
        "db-1",
        "db",
        &["10.0.0.2"],
        &[("sql", 5432)],
    ));
    server.apply(&endpoint_slice(
        "other",
        "web-1",
        "web",
        &["10.0.1.1"],
        &[("http", 8080)],
    ));
    let api = Api::<EndpointSlice>::namespaced(client, "default");
    let config = watcher::Config::default().labels("kubernetes.io/service-name=web");
    let slices = Reflector::start(api, config).await;
    assert_eq!(slices.store.state().len(), 1);
    assert_eq!(
        slices.store.state()[0].namespace().as_deref(),
        Some("default")
    );

    server.apply(&endpoint_slice(
        "default",
        "web-2",
        "web",
        &["fd00::1"],
        &[("http", 8080)],
    ));
    server.apply(&endpoint_slice(
        "other",
        "web-2",
        "web",
        &["10.0.1.2"],
        &[("http", 8080)],
    ));
    slices.wait_for_names(&["web-1", "web-2"]).await;
    let v6 = slices
        .store
        .find(|s| s.name_any() == "web-2")
        .expect("web-2");
    assert_eq!(v6.address_type, "IPv6");
    assert_eq!(v6.namespace().as_deref(), Some("default"));

    let lists: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is(Verb::List, "endpointslices"))
        .collect();
    assert_eq!(
        lists[0].path,
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    );
}

#[tokio::test]
async fn list_pages_are_one_snapshot_and_the_watch_after_misses_nothing() {
    let Cluster { server, client, .. } = cluster().await;
    for name in ["a", "b", "c", "d"] {
        server.apply(&web(name));
    }
    let api = Api::<Service>::namespaced(client, "default");
    let first = api
        .list(&ListParams::default().limit(2))
        .await
        .expect("first page");
    assert_eq!(names(&first.items), ["a", "b"]);
    assert_eq!(first.metadata.remaining_item_count, Some(2));
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rv = first
        .metadata
        .resource_version
        .clone()
        .expect("a list resourceVersion");

    server.delete::<Service>("default", "c").expect("c existed");
    server.apply(&web("bb"));
    server.apply(&labeled(web("d"), &[("changed", "yes")]));
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("second page");
    assert_eq!(
        names(&second.items),
        ["c", "d"],
        "the first page's snapshot"
    );
    assert!(second.items[1].labels().get("changed").is_none());
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert!(second.metadata.continue_.is_none());

    let events: Vec<String> = api
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), &rv)
        .await
        .expect("watch from the list's resourceVersion")
        .map_ok(|event| match event {
            WatchEvent::Added(s) => format!("ADDED {}", s.name_any()),
            WatchEvent::Modified(s) => format!("MODIFIED {}", s.name_any()),
            WatchEvent::Deleted(s) => format!("DELETED {}", s.name_any()),
            WatchEvent::Bookmark(_) => "BOOKMARK".to_owned(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        })
        .try_collect()
        .await
        .expect("no stream error");
    assert_eq!(events, ["DELETED c", "ADDED bb", "MODIFIED d"]);

    server.compact();
    assert_eq!(
        api_error(
            api.list(&ListParams::default().limit(2).continue_token(&token))
                .await
        ),
        (410, "Expired".to_owned())
    );
    let exact = ListParams::default()
        .at(&rv)
        .matching(kube::api::VersionMatch::Exact);
    assert_eq!(api_error(api.list(&exact).await).0, 410);
}

/// The code and reason of the API error `result` must be.
fn api_error<T: Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names(items: &[Service]) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

#[tokio::test]
async fn reset_drops_the_data_and_watchers_relist() {
    let Cluster { server, client, .. } = cluster().await;
    server.apply(&web("a"));
    server.apply(&web("b"));
    let services = Reflector::start(Api::<Service>::all(client), watcher::Config::default()).await;
    let rv = server.resource_version();

    server.reset();
    services.wait_for_names(&[]).await;
    let fresh = server.apply(&web("z"));
    services.wait_for_names(&["z"]).await;
    assert!(
        fresh
            .metadata
            .resource_version
            .and_then(|v| v.parse::<u64>().ok())
            > Some(rv)
    );
    assert_eq!(services.count("init"), 2);
}

#[tokio::test]
async fn errors_and_knobs_clients_see() {
    let Cluster {
        server,
        client,
        dir,
    } = cluster().await;
    server.apply(&web("a"));
    let api = Api::<Service>::all(client.clone());

    server.set_response_delay(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    api.list(&ListParams::default())
        .await
        .expect("a delayed list");
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_response_delay(Duration::ZERO);

    assert_eq!(
        api_error(
            api.list(&ListParams::default().fields("spec.clusterIP=10.0.0.1"))
                .await
        ),
        (400, "BadRequest".to_owned())
    );
    assert_eq!(
        api_error(api.list(&ListParams::default().labels("a in (b")).await).0,
        400
    );

    let wrong = dir.path().join("wrong-token");
    std::fs::write(
        &wrong,
        server
            .kubeconfig()
            .replace(lb_testbed::apiserver::TOKEN, "not-the-token"),
    )
    .expect("write");
    let intruder = Api::<Service>::all(client_from(&wrong).await);
    assert_eq!(
        api_error(intruder.list(&ListParams::default()).await).0,
        401
    );
    assert_eq!(server.stats().unauthorized, 1);

    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    let core = client.list_core_api_resources("v1").await.expect("/api/v1");
    assert!(
        core.resources
            .iter()
            .any(|r| r.name == "services" && r.namespaced)
    );
    assert!(
        core.resources
            .iter()
            .any(|r| r.name == "nodes" && !r.namespaced)
    );
    let groups = client.list_api_groups().await.expect("/apis");
    assert!(groups.groups.iter().any(|g| g.name == "discovery.k8s.io"));
    let discovery = client
        .list_api_group_resources("discovery.k8s.io/v1")
        .await
        .expect("/apis/discovery.k8s.io/v1");
    assert_eq!(discovery.resources[0].name, "endpointslices");
}

#[test]
fn label_selectors_parse_and_match_as_kubernetes_does() {
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let matches = |selector: &str, pairs: &[(&str, &str)]| {
        LabelSelector::parse(selector)
            .unwrap_or_else(|e| panic!("{selector:?}: {e}"))
            .matches(&labels(pairs))
    };
    assert!(matches("", &[]));
    assert!(matches(PROXY_SELECTOR, &[("app", "web")]));
    assert!(!matches(
        PROXY_SELECTOR,
        &[("service.kubernetes.io/headless", "")]
    ));
    assert!(!matches(
        PROXY_SELECTOR,
        &[("service.kubernetes.io/service-proxy-name", "x")]
    ));
    assert!(matches("app", &[("app", "")]));
    assert!(!matches("app", &[]));
    assert!(matches("app=web", &[("app", "web")]));
    assert!(matches("app==web", &[("app", "web")]));
    assert!(!matches("app=web", &[("app", "db")]));
    assert!(matches("app!=web", &[]), "!= matches a missing label");
    assert!(!matches("app != web", &[("app", "web")]));
    assert!(matches(
        "tier in (a, b),app",
        &[("tier", "b"), ("app", "x")]
    ));
    assert!(!matches("tier in (a,b)", &[]));
    assert!(matches("tier notin (a,b)", &[]));
    assert!(!matches("tier notin (a,b)", &[("tier", "a")]));
    for bad in ["a in (b", "=x", "a=b=c d", "!", "a,,b"] {
        assert!(
            LabelSelector::parse(bad).is_err(),
            "{bad:?} should not parse"
        );
    }
}
