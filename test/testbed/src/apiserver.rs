//! A Kubernetes API server for tests: serves `v1 Service`,
//! `discovery.k8s.io/v1 EndpointSlice` and `v1 Node` over plain HTTP with the
//! real REST list and watch protocol, so that kube-rs's real `Client`,
//! `watcher` and reflectors run against it.
//!
//! What it implements, as the real server does:
//! - one global `resourceVersion` counter (as etcd's revision); every write
//!   bumps it; objects get `uid`, `creationTimestamp`, `generation`;
//! - list: `{Kind}List` with `metadata.resourceVersion`, `limit` + `continue`
//!   paging over a consistent snapshot (every page is served at the first
//!   page's resourceVersion, rebuilt from the event history), `labelSelector`,
//!   `fieldSelector` (`metadata.name`, `metadata.namespace`),
//!   `resourceVersion` + `resourceVersionMatch`;
//! - watch: newline-delimited `{"type":..,"object":..}` events after the given
//!   resourceVersion, selector transitions as `ADDED`/`DELETED`, periodic
//!   `BOOKMARK`s when allowed, `sendInitialEvents` (streaming lists), closed
//!   at `timeoutSeconds`;
//! - a bounded event history: a watch from a compacted resourceVersion gets an
//!   `ERROR` event with a `410 Expired` `Status`, a list or continue token
//!   from one gets an HTTP `410`;
//! - bearer-token authentication (`401` otherwise) and the discovery
//!   documents (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`).
//!
//! Knowingly different from a real kube-apiserver:
//! - writes only through the in-process [`ApiServer`] handle (HTTP is
//!   read-only: `GET`); [`ApiServer::apply`] replaces the whole object, with
//!   no optimistic concurrency, admission or validation beyond defaulting;
//! - bookmarks every second by default (the real server: about a minute);
//! - a too-large resourceVersion is answered at once (the real server waits
//!   up to 3 s for its cache first); `limit` is honoured for
//!   `resourceVersion=0` too (older real servers ignore it there);
//! - field selectors: `metadata.name` and `metadata.namespace` only;
//!   Namespace objects are not served (namespaces exist implicitly);
//! - discovery answers in the legacy formats whatever `Accept` asks for (no
//!   aggregated discovery), no `OpenAPI` documents, no protobuf, no gzip.
//!
//! Chaos knobs: [`ApiServer::close_watches`], [`ApiServer::expire_watches`],
//! [`ApiServer::set_watch_close_every`], [`ApiServer::set_response_delay`],
//! [`ApiServer::compact`], [`ApiServer::stop`] / [`ApiServer::restart`] (same
//! port, same data) and [`ApiServer::reset`].
//!

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, VecDeque},
    convert::Infallible,
    fmt,
    hash::{BuildHasher as _, RandomState},
    io,
    net::{Ipv4Addr, SocketAddr},
    ops::Bound,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::{
    ListableResource, NamespaceResourceScope, Resource,
    api::{
        core::v1::{Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{oneshot, watch},
    time::Instant,
};

/// The bearer token the written kubeconfig carries and the server requires.
pub const TOKEN: &str = "lb-agent-test-token";

/// Default number of changes kept for watches to resume from.
pub const DEFAULT_HISTORY: usize = 10_000;

/// What a watch lasts when the client gives no `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_mins(30);

/// The resources every server serves.
fn default_types() -> Vec<ResourceType> {
    vec![
        ResourceType::of::<Service>(),
        ResourceType::of::<EndpointSlice>(),
        ResourceType::of::<Node>(),
    ]
}

/// A k8s-openapi type this server can store and serve.
pub trait Served:
    Resource<Scope: 'static> + ListableResource + Serialize + DeserializeOwned + Clone
{
}

impl<K> Served for K where
    K: Resource<Scope: 'static> + ListableResource + Serialize + DeserializeOwned + Clone
{
}

/// Start-up settings; [`Options::default`] suits most tests.
#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept for watches to resume from; older ones are compacted.
    pub history: usize,
    /// How often open watches that allow it get a `BOOKMARK` (the real
    /// server: about a minute).
    pub bookmark_interval: Duration,
    /// Bearer token required from clients; `None` accepts anyone.
    pub token: Option<String>,
    /// The address to listen on, in the network namespace of the thread
    /// that starts (and restarts) the server.
    pub address: Ipv4Addr,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history: DEFAULT_HISTORY,
            bookmark_interval: Duration::from_secs(1),
            token: Some(TOKEN.to_owned()),
            address: Ipv4Addr::LOCALHOST,
        }
    }
}

/// Counters of what the server served, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// List requests answered (one per page).
    pub lists: u64,
    /// Watch requests answered.
    pub watches: u64,
    /// Single-object `GET`s answered.
    pub gets: u64,
    /// Watches open right now (a watch whose client went away is closed,
    /// and no longer counted, as soon as the server notices).
    pub open_watches: u64,
    /// `410 Expired` answers (watch `ERROR` events and HTTP responses).
    pub expired: u64,
    /// `BOOKMARK` events sent.
    pub bookmarks: u64,
    /// The resourceVersion carried by the latest `BOOKMARK`.
    pub last_bookmark_rv: u64,
    /// Requests turned away with `401 Unauthorized`.
    pub unauthorized: u64,
}

/// What kind of request a [`RequestRecord`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    List,
    Watch,
    Get,
    Discovery,
    Other,
}

/// One request as received (query parameters decoded, in order).
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub verb: Verb,
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The resource's plural name (`services`), for resource requests.
    pub resource: Option<String>,
}

impl RequestRecord {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.query, name)
    }

    /// Whether this is a `verb` request on `resource` (plural: `services`).
    pub fn is(&self, verb: Verb, resource: &str) -> bool {
        self.verb == verb && self.resource.as_deref() == Some(resource)
    }
}

impl fmt::Display for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        for (i, (key, value)) in self.query.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{key}={value}")?;
        }
        Ok(())
    }
}

/// A running (or stopped) test API server; see the module docs.
///
/// Every method takes `&self`, so the handle can be shared between threads.
/// Dropping it stops the server.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl ApiServer {
    /// Starts a server on `127.0.0.1` with an ephemeral port and default
    /// [`Options`].
    pub fn start() -> io::Result<Self> {
        Self::start_with(Options::default())
    }

    /// Starts a server on `options.address` with an ephemeral port.
    pub fn start_with(options: Options) -> io::Result<Self> {
        let Options {
            history,
            bookmark_interval,
            token,
            address,
        } = options;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(default_types(), history)),
            changed: watch::Sender::new(0),
            control: watch::Sender::new(Control {
                bookmark_interval,
                ..Control::default()
            }),
            token,
            counters: Counters::default(),
            requests: Mutex::new(Vec::new()),
        });
        let (addr, running) = Running::spawn(Arc::clone(&shared), (address, 0).into())?;
        Ok(Self {
            shared,
            addr,
            running: Mutex::new(Some(running)),
        })
    }

    /// `http://ADDRESS:PORT`; stays the same across [`Self::restart`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A kubeconfig naming this server and a token user.
    pub fn kubeconfig(&self) -> String {
        let token = self.shared.token.as_deref().unwrap_or(TOKEN);
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: lb-test\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: lb-test\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: lb-test\n  context:\n    cluster: lb-test\n    user: lb-test\n    namespace: default\n\
             current-context: lb-test\n",
            url = self.url(),
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Serves another k8s-openapi type besides the default three.
    pub fn serve<K: Served>(&self) {
        self.shared
            .store()
            .type_index_or_add(ResourceType::of::<K>());
    }

    /// Creates or replaces an object, as a server-side apply that owns every
    /// field would: server-owned metadata (`resourceVersion`, `uid`,
    /// `creationTimestamp`, `generation`) is set by the server, defaults are
    /// filled in (a Service gets a `clusterIP` if it has none). Writing an
    /// identical object changes nothing, as on the real server. Returns the
    /// object as stored.
    ///
    /// # Panics
    /// If the object has no `metadata.name` or its type is not served.
    pub fn apply<K: Served>(&self, object: &K) -> K {
        let value = serde_json::to_value(object).expect("k8s-openapi objects serialize");
        let Value::Object(map) = value else {
            panic!("apply: {} did not serialize to a JSON object", K::KIND);
        };
        let stored = {
            let mut store = self.shared.store();
            let ty = store.type_index_of::<K>();
            store.put(ty, map)
        };
        self.shared.notify();
        from_stored::<K>(&stored)
    }

    /// Deletes an object; `namespace` is ignored for cluster-scoped types.
    /// Returns the object as it was, or `None` if there was none.
    pub fn delete<K: Served>(&self, namespace: &str, name: &str) -> Option<K> {
        let removed = {
            let mut store = self.shared.store();
            let ty = store.type_index_of::<K>();
            let key = store.key(ty, namespace, name);
            store.remove(ty, &key)
        };
        self.shared.notify();
        removed.map(|object| from_stored::<K>(&object))
    }

    /// An object as stored; `namespace` is ignored for cluster-scoped types.
    pub fn get<K: Served>(&self, namespace: &str, name: &str) -> Option<K> {
        let store = self.shared.store();
        let ty = store.type_index_of::<K>();
        let key = store.key(ty, namespace, name);
        store.objects[ty]
            .get(&key)
            .map(|object| from_stored::<K>(object))
    }

    /// Every stored object of a type, in key order.
    pub fn list<K: Served>(&self) -> Vec<K> {
        let store = self.shared.store();
        let ty = store.type_index_of::<K>();
        store.objects[ty]
            .values()
            .map(|object| from_stored::<K>(object))
            .collect()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    /// Forgets the event history up to now: a watch, list or continue token
    /// from an older resourceVersion gets `410 Expired`. Open watches that
    /// are up to date keep going, as with etcd compaction.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Drops every object, as a fresh etcd would. The resourceVersion counter
    /// keeps counting up and the history is compacted, so that clients'
    /// watches get `410 Expired` and they relist (a counter starting again
    /// from 1 would instead leave kube-rs watching from a "too large"
    /// resourceVersion forever). Open watches are expired too.
    pub fn reset(&self) {
        self.shared.store().reset();
        self.expire_watches();
        self.shared.notify();
    }

    /// Ends every open watch cleanly (as at `timeoutSeconds`): clients resume
    /// from their last resourceVersion.
    pub fn close_watches(&self) {
        self.shared
            .control
            .send_modify(|control| control.close_epoch += 1);
    }

    /// Sends every open watch an `ERROR` event with `410 Expired` and ends
    /// it, as the real server does to a watcher that fell too far behind:
    /// kube-rs's watcher relists.
    pub fn expire_watches(&self) {
        self.shared
            .control
            .send_modify(|control| control.expire_epoch += 1);
    }

    /// Ends every watch once it has been open for `every` (`None`: never).
    /// Applies to open watches too.
    pub fn set_watch_close_every(&self, every: Option<Duration>) {
        self.shared
            .control
            .send_modify(|control| control.close_every = every);
    }

    /// Delays every response (and the start of every watch) by `delay`.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared
            .control
            .send_modify(|control| control.delay = delay);
    }

    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared
            .control
            .send_modify(|control| control.bookmark_interval = interval);
    }

    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Every request received so far (also while unauthorized), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests().clone()
    }

    /// Like [`Self::requests`], and forgets them.
    pub fn take_requests(&self) -> Vec<RequestRecord> {
        std::mem::take(&mut *self.shared.requests())
    }

    /// Stops serving, as a killed process would: the listening socket is
    /// closed (connections are refused) and every connection, open watches
    /// included, is dropped. The data stays. Does nothing if stopped.
    pub fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            running.stop();
        }
    }

    /// Starts serving again on the same port with the same data (stopping
    /// first if running).
    pub fn restart(&self) -> io::Result<()> {
        self.stop();
        let (_, running) = Running::spawn(Arc::clone(&self.shared), self.addr)?;
        *lock(&self.running) = Some(running);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after
/// `timeout`. For plain `#[test]`s.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`wait_until`], for async tests (does not block the runtime).
pub async fn wait_until_async(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Object builders
// ---------------------------------------------------------------------------

/// A `ClusterIP` Service with TCP ports `(name, port, targetPort)`; an empty
/// `cluster_ip` lets the server allocate one, `"None"` makes it headless.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, i32, i32)],
) -> Service {
    Service {
        metadata: meta(Some(namespace), name),
        spec: Some(ServiceSpec {
            cluster_ip: (!cluster_ip.is_empty()).then(|| cluster_ip.to_owned()),
            ports: Some(
                ports
                    .iter()
                    .map(|&(port_name, port, target)| ServicePort {
                        name: Some(port_name.to_owned()),
                        port,
                        target_port: Some(IntOrString::Int(target)),
                        protocol: Some("TCP".to_owned()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            selector: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// An `EndpointSlice` of `service` with ready endpoints at `addresses` and TCP
/// ports `(name, port)`, labelled as the `EndpointSlice` controller does.
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    addresses: &[&str],
    ports: &[(&str, i32)],
) -> EndpointSlice {
    let address_type = if addresses.iter().any(|a| a.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut metadata = meta(Some(namespace), name);
    metadata.labels = Some(BTreeMap::from([
        ("kubernetes.io/service-name".to_owned(), service.to_owned()),
        (
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            "endpointslice-controller.k8s.io".to_owned(),
        ),
    ]));
    EndpointSlice {
        metadata,
        address_type: address_type.to_owned(),
        endpoints: Some(
            addresses
                .iter()
                .map(|address| Endpoint {
                    addresses: vec![(*address).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(
            ports
                .iter()
                .map(|&(port_name, port)| EndpointPort {
                    name: Some(port_name.to_owned()),
                    port: Some(port),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// A Node with `InternalIP` addresses.
pub fn node(name: &str, internal_ips: &[&str]) -> Node {
    Node {
        metadata: meta(None, name),
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(
                internal_ips
                    .iter()
                    .map(|ip| NodeAddress {
                        address: (*ip).to_owned(),
                        type_: "InternalIP".to_owned(),
                    })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
    }
}

/// `object` with `labels` added (replacing same-named ones).
pub fn labeled<K: k8s_openapi::Metadata<Ty = ObjectMeta>>(
    mut object: K,
    labels: &[(&str, &str)],
) -> K {
    let all = object
        .metadata_mut()
        .labels
        .get_or_insert_with(BTreeMap::new);
    for &(key, value) in labels {
        all.insert(key.to_owned(), value.to_owned());
    }
    object
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    }
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion, bumped after every write: wakes watches.
    changed: watch::Sender<u64>,
    control: watch::Sender<Control>,
    token: Option<String>,
    counters: Counters,
    requests: Mutex<Vec<RequestRecord>>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn requests(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        lock(&self.requests)
    }

    fn notify(&self) {
        let rv = self.store().rv;
        self.changed.send_replace(rv);
    }
}

/// A test that panicked while holding a lock must not hide the first panic
/// behind a cascade of poisoned-lock ones.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Debug, Default)]
struct Control {
    close_epoch: u64,
    expire_epoch: u64,
    close_every: Option<Duration>,
    bookmark_interval: Duration,
    delay: Duration,
}

#[derive(Default)]
struct Counters {
    lists: AtomicU64,
    watches: AtomicU64,
    gets: AtomicU64,
    open_watches: AtomicU64,
    expired: AtomicU64,
    bookmarks: AtomicU64,
    last_bookmark_rv: AtomicU64,
    unauthorized: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let Self {
            lists,
            watches,
            gets,
            open_watches,
            expired,
            bookmarks,
            last_bookmark_rv,
            unauthorized,
        } = self;
        let get = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        Stats {
            lists: get(lists),
            watches: get(watches),
            gets: get(gets),
            open_watches: get(open_watches),
            expired: get(expired),
            bookmarks: get(bookmarks),
            last_bookmark_rv: get(last_bookmark_rv),
            unauthorized: get(unauthorized),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// Store: objects, resourceVersions, event history
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct ResourceType {
    group: &'static str,
    version: &'static str,
    api_version: &'static str,
    kind: &'static str,
    list_kind: &'static str,
    plural: &'static str,
    namespaced: bool,
}

impl ResourceType {
    fn of<K: Served>() -> Self {
        Self {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            list_kind: K::LIST_KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: std::any::TypeId::of::<K::Scope>()
                == std::any::TypeId::of::<NamespaceResourceScope>(),
        }
    }
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
/// Ordered as etcd keys are, which is the order lists come in.
type Key = (String, String);

/// A stored object, without `kind` and `apiVersion` (added when sent).
type Object = Arc<Map<String, Value>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    ty: usize,
    key: Key,
    kind: ChangeKind,
    /// The object after the change; for a deletion, the last state with the
    /// deletion's resourceVersion (what the `DELETED` event carries).
    object: Object,
    /// The object before the change (`None` when added).
    prev: Option<Object>,
}

struct Store {
    types: Vec<ResourceType>,
    /// Per type (same index as `types`).
    objects: Vec<BTreeMap<Key, Object>>,
    rv: u64,
    /// Changes up to this resourceVersion are forgotten.
    compacted: u64,
    history: VecDeque<Change>,
    history_limit: usize,
    uid_seed: u64,
    uids: u64,
    next_cluster_ip: u32,
    /// Every `clusterIP` a Service has had: never allocated again.
    cluster_ips_seen: BTreeSet<String>,
}

/// Why a list at a resourceVersion cannot be served.
enum Unservable {
    Expired { rv: u64, oldest: u64 },
    TooLarge { rv: u64, current: u64 },
}

impl Store {
    fn new(types: Vec<ResourceType>, history_limit: usize) -> Self {
        let objects = types.iter().map(|_| BTreeMap::new()).collect();
        Self {
            types,
            objects,
            rv: 1,
            compacted: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            uid_seed: RandomState::new().hash_one("lb-agent apiserver"),
            uids: 0,
            next_cluster_ip: u32::from(Ipv4Addr::new(10, 96, 0, 10)),
            cluster_ips_seen: BTreeSet::new(),
        }
    }

    fn type_index(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.group == group && t.version == version && t.plural == plural)
    }

    fn type_index_or_add(&mut self, ty: ResourceType) -> usize {
        if let Some(index) = self.types.iter().position(|t| *t == ty) {
            return index;
        }
        self.types.push(ty);
        self.objects.push(BTreeMap::new());
        self.types.len() - 1
    }

    fn type_index_of<K: Served>(&self) -> usize {
        let ty = ResourceType::of::<K>();
        self.types.iter().position(|t| *t == ty).unwrap_or_else(|| {
            panic!(
                "{}/{} is not served: call ApiServer::serve::<{}>() first",
                K::API_VERSION,
                K::KIND,
                K::KIND
            )
        })
    }

    fn key(&self, ty: usize, namespace: &str, name: &str) -> Key {
        let namespace = if self.types[ty].namespaced {
            namespace
        } else {
            ""
        };
        (namespace.to_owned(), name.to_owned())
    }

    /// Creates or replaces an object; see [`ApiServer::apply`].
    fn put(&mut self, ty: usize, mut object: Map<String, Value>) -> Object {
        let rt = self.types[ty].clone();
        object.remove("kind");
        object.remove("apiVersion");
        let meta = object
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap_or_else(|| panic!("apply: {} metadata is not an object", rt.kind));
        let name = match meta.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => panic!("apply: {} without metadata.name", rt.kind),
        };
        let namespace = if rt.namespaced {
            let namespace = match meta.get("namespace") {
                Some(Value::String(ns)) if !ns.is_empty() => ns.clone(),
                _ => "default".to_owned(),
            };
            meta.insert("namespace".to_owned(), Value::String(namespace.clone()));
            namespace
        } else {
            meta.remove("namespace");
            String::new()
        };
        for owned in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(owned);
        }
        let key = (namespace, name);
        let existing = self.objects[ty].get(&key).cloned();
        if rt.kind == Service::KIND {
            self.default_service(&mut object, existing.as_deref());
        } else if rt.kind == EndpointSlice::KIND {
            default_endpoint_slice(&mut object);
        }

        let kind = if let Some(old) = &existing {
            let old_meta = &old["metadata"];
            let generation = old_meta["generation"].as_i64().unwrap_or(1);
            let generation = if same_content(&object, old) {
                generation
            } else {
                generation + 1
            };
            let meta = metadata_mut(&mut object);
            for field in ["uid", "creationTimestamp", "resourceVersion"] {
                meta.insert(field.to_owned(), old_meta[field].clone());
            }
            meta.insert("generation".to_owned(), generation.into());
            if object == **old {
                return Arc::clone(old);
            }
            ChangeKind::Modified
        } else {
            let uid = self.new_uid();
            let meta = metadata_mut(&mut object);
            meta.insert("uid".to_owned(), uid.into());
            meta.insert("creationTimestamp".to_owned(), now());
            meta.insert("generation".to_owned(), 1.into());
            ChangeKind::Added
        };
        self.rv += 1;
        metadata_mut(&mut object).insert("resourceVersion".to_owned(), self.rv.to_string().into());
        let object = Arc::new(object);
        self.objects[ty].insert(key.clone(), Arc::clone(&object));
        self.record(Change {
            rv: self.rv,
            ty,
            key,
            kind,
            object: Arc::clone(&object),
            prev: existing,
        });
        object
    }

    fn remove(&mut self, ty: usize, key: &Key) -> Option<Object> {
        let old = self.objects[ty].remove(key)?;
        self.rv += 1;
        self.record(Change {
            rv: self.rv,
            ty,
            key: key.clone(),
            kind: ChangeKind::Deleted,
            object: Arc::new(with_rv(&old, self.rv)),
            prev: Some(Arc::clone(&old)),
        });
        Some(old)
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
    }

    fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    fn reset(&mut self) {
        for objects in &mut self.objects {
            objects.clear();
        }
        // A fresh etcd revision, beyond anything a client has seen.
        self.rv += 1;
        self.compact();
    }

    /// Changes after `rv` (which must not be compacted), oldest first.
    fn changes_after(&self, rv: u64) -> impl DoubleEndedIterator<Item = &Change> {
        let start = self.history.partition_point(|change| change.rv <= rv);
        self.history.range(start..)
    }

    /// The objects of a type as they were at `rv`, rebuilt from the history.
    fn objects_at(&self, ty: usize, rv: u64) -> Result<Cow<'_, BTreeMap<Key, Object>>, Unservable> {
        if rv > self.rv {
            return Err(Unservable::TooLarge {
                rv,
                current: self.rv,
            });
        }
        if rv < self.compacted {
            return Err(Unservable::Expired {
                rv,
                oldest: self.compacted,
            });
        }
        if rv == self.rv {
            return Ok(Cow::Borrowed(&self.objects[ty]));
        }
        let mut objects = self.objects[ty].clone();
        for change in self.changes_after(rv).rev() {
            if change.ty != ty {
                continue;
            }
            match &change.prev {
                Some(prev) => objects.insert(change.key.clone(), Arc::clone(prev)),
                None => objects.remove(&change.key),
            };
        }
        Ok(Cow::Owned(objects))
    }

    fn new_uid(&mut self) -> String {
        self.uids += 1;
        let bits = u128::from(self.uid_seed) << 64 | u128::from(self.uids);
        let hex = format!("{bits:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// The real server's Service defaulting, and a `clusterIP` allocator
    /// (keeping the old one on update, as the real server does).
    fn default_service(
        &mut self,
        object: &mut Map<String, Value>,
        existing: Option<&Map<String, Value>>,
    ) {
        let old_spec = existing.and_then(|old| old.get("spec"));
        let spec = object
            .entry("spec")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a Service spec is an object");
        let service_type = spec
            .entry("type")
            .or_insert_with(|| "ClusterIP".into())
            .as_str()
            .unwrap_or_default()
            .to_owned();
        spec.entry("sessionAffinity")
            .or_insert_with(|| "None".into());
        if service_type != "ExternalName" {
            let cluster_ip = match spec.get("clusterIP").and_then(Value::as_str) {
                Some(ip) if !ip.is_empty() => ip.to_owned(),
                _ => match old_spec
                    .and_then(|s| s.get("clusterIP"))
                    .and_then(Value::as_str)
                {
                    Some(ip) if !ip.is_empty() => ip.to_owned(),
                    _ => self.allocate_cluster_ip(),
                },
            };
            self.cluster_ips_seen.insert(cluster_ip.clone());
            spec.insert("clusterIP".to_owned(), cluster_ip.clone().into());
            spec.entry("clusterIPs")
                .or_insert_with(|| json!([cluster_ip]));
            if cluster_ip != "None" {
                let family = if cluster_ip.contains(':') {
                    "IPv6"
                } else {
                    "IPv4"
                };
                spec.entry("ipFamilies").or_insert_with(|| json!([family]));
            }
            spec.entry("ipFamilyPolicy")
                .or_insert_with(|| "SingleStack".into());
            spec.entry("internalTrafficPolicy")
                .or_insert_with(|| "Cluster".into());
        }
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                port.entry("protocol").or_insert_with(|| "TCP".into());
                if let Some(number) = port.get("port").cloned() {
                    port.entry("targetPort").or_insert(number);
                }
            }
        }
    }

    fn allocate_cluster_ip(&mut self) -> String {
        loop {
            let ip = Ipv4Addr::from(self.next_cluster_ip).to_string();
            self.next_cluster_ip += 1;
            if !self.cluster_ips_seen.contains(&ip) {
                return ip;
            }
        }
    }
}

fn default_endpoint_slice(object: &mut Map<String, Value>) {
    if let Some(Value::Array(ports)) = object.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert_with(|| "TCP".into());
        }
    }
}

fn metadata_mut(object: &mut Map<String, Value>) -> &mut Map<String, Value> {
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("stored objects have metadata")
}

/// Same apart from metadata and status: the generation stays.
fn same_content(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let content = |m: &Map<String, Value>| {
        m.iter()
            .filter(|(key, _)| *key != "metadata" && *key != "status")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect::<Map<String, Value>>()
    };
    content(a) == content(b)
}

fn with_rv(object: &Map<String, Value>, rv: u64) -> Map<String, Value> {
    let mut object = object.clone();
    metadata_mut(&mut object).insert("resourceVersion".to_owned(), rv.to_string().into());
    object
}

fn now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).expect("a Time serializes")
}

fn from_stored<K: Served>(object: &Map<String, Value>) -> K {
    serde_json::to_value(Typed::new_for::<K>(object))
        .and_then(serde_json::from_value)
        .unwrap_or_else(|e| panic!("stored {} does not deserialize: {e}", K::KIND))
}

/// An object with its `kind` and `apiVersion` in front, as sent.
#[derive(Serialize)]
struct Typed<'a> {
    kind: &'a str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    #[serde(flatten)]
    object: &'a Map<String, Value>,
}

impl<'a> Typed<'a> {
    fn new(ty: &'a ResourceType, object: &'a Map<String, Value>) -> Self {
        Self {
            kind: ty.kind,
            api_version: ty.api_version,
            object,
        }
    }

    fn new_for<K: Served>(object: &'a Map<String, Value>) -> Self {
        Self {
            kind: K::KIND,
            api_version: K::API_VERSION,
            object,
        }
    }
}

#[derive(Serialize)]
struct WatchEvent<T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    object: T,
}

fn event_line(kind: &'static str, object: impl Serialize) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&WatchEvent { kind, object }).expect("watch events serialize");
    line.push(b'\n');
    line
}

// ---------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------

/// A parsed `labelSelector`: `key`, `!key`, `key=value`, `key==value`,
/// `key!=value`, `key in (a,b)`, `key notin (a,b)`, comma-separated (all must
/// hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelRequirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelSelector {
    /// # Errors
    /// The real server's `400` message for a selector it cannot parse.
    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self(requirements));
        }
        for term in split_top_level(selector)? {
            requirements.push(parse_label_term(term.trim())?);
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|requirement| {
            let get = |key: &String| labels.get(key);
            match requirement {
                LabelRequirement::Exists(key) => get(key).is_some(),
                LabelRequirement::NotExists(key) => get(key).is_none(),
                LabelRequirement::Equals(key, value) => get(key) == Some(value),
                LabelRequirement::NotEquals(key, value) => get(key) != Some(value),
                LabelRequirement::In(key, values) => get(key).is_some_and(|v| values.contains(v)),
                LabelRequirement::NotIn(key, values) => {
                    get(key).is_none_or(|v| !values.contains(v))
                }
            }
        })
    }

    fn matches_object(&self, object: &Map<String, Value>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels = object["metadata"]["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(selector: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0_u32;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    format!("unable to parse requirement: unbalanced ')' in {selector:?}")
                })?;
            }
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unbalanced '(' in {selector:?}"
        ));
    }
    terms.push(&selector[start..]);
    Ok(terms)
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(label_key(key.trim())?));
    }
    let split = term.find(['=', '!', ' ', '\t', '(']).unwrap_or(term.len());
    let key = label_key(&term[..split])?;
    let rest = term[split..].trim_start();
    let set = |values: &str| -> Result<Vec<String>, String> {
        let inner = values
            .trim()
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("unable to parse requirement: expected a (set) in {term:?}"))?;
        inner.split(',').map(|v| label_value(v.trim())).collect()
    };
    if rest.is_empty() {
        Ok(LabelRequirement::Exists(key))
    } else if let Some(value) = rest.strip_prefix("!=") {
        Ok(LabelRequirement::NotEquals(key, label_value(value.trim())?))
    } else if let Some(value) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        Ok(LabelRequirement::Equals(key, label_value(value.trim())?))
    } else if let Some(values) = rest.strip_prefix("notin") {
        Ok(LabelRequirement::NotIn(key, set(values)?))
    } else if let Some(values) = rest.strip_prefix("in") {
        Ok(LabelRequirement::In(key, set(values)?))
    } else {
        Err(format!("unable to parse requirement: {term:?}"))
    }
}

fn label_key(key: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn label_value(value: &str) -> Result<String, String> {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(value.to_owned())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

/// A parsed `fieldSelector`: `metadata.name` and `metadata.namespace` with
/// `=`, `==` or `!=`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FieldSelector(Vec<(FieldPath, String, bool)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldPath {
    Name,
    Namespace,
}

impl FieldSelector {
    fn parse(selector: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((field, value)) = term.split_once("!=") {
                (field, value, false)
            } else if let Some((field, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                (field, value, true)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let path = match field.trim() {
                "metadata.name" => FieldPath::Name,
                "metadata.namespace" => FieldPath::Namespace,
                other => return Err(format!("field label not supported: {other}")),
            };
            requirements.push((path, value.trim().to_owned(), equal));
        }
        Ok(Self(requirements))
    }

    fn matches(&self, key: &Key) -> bool {
        self.0.iter().all(|(path, value, equal)| {
            let actual = match path {
                FieldPath::Name => &key.1,
                FieldPath::Namespace => &key.0,
            };
            (actual == value) == *equal
        })
    }
}

/// What a list or watch selects.
struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, key: &Key, object: &Map<String, Value>) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == key.0)
            && self.fields.matches(key)
            && self.labels.matches_object(object)
    }

    /// What a watch with this filter sees of a change, as the real watch
    /// cache sends it: an object that starts matching is `ADDED`, one that
    /// stops matching is `DELETED` (its old state at the change's
    /// resourceVersion).
    fn event(&self, ty: &ResourceType, change: &Change) -> Option<Vec<u8>> {
        let now = self.matches(&change.key, &change.object);
        match change.kind {
            ChangeKind::Added => now.then(|| event_line("ADDED", Typed::new(ty, &change.object))),
            ChangeKind::Deleted => {
                now.then(|| event_line("DELETED", Typed::new(ty, &change.object)))
            }
            ChangeKind::Modified => {
                let before = change
                    .prev
                    .as_ref()
                    .is_some_and(|prev| self.matches(&change.key, prev));
                match (before, now) {
                    (true, true) => Some(event_line("MODIFIED", Typed::new(ty, &change.object))),
                    (false, true) => Some(event_line("ADDED", Typed::new(ty, &change.object))),
                    (true, false) => {
                        let prev = change.prev.as_ref().map(|prev| with_rv(prev, change.rv))?;
                        Some(event_line("DELETED", Typed::new(ty, &prev)))
                    }
                    (false, false) => None,
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

struct Running {
    stop: oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Running {
    /// Binds `addr` (port 0: an ephemeral one) and serves on a thread of
    /// its own with its own runtime. Returns the bound address.
    fn spawn(shared: Arc<Shared>, addr: SocketAddr) -> io::Result<(SocketAddr, Self)> {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<SocketAddr>>();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let port = addr.port();
        let thread = thread::Builder::new()
            .name(format!("apiserver:{port}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match bind(addr).await {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(listener.local_addr());
                    let router = Router::new().fallback(handle).with_state(shared);
                    tokio::select! {
                        result = axum::serve(listener, router).into_future() => {
                            if let Err(e) = result {
                                eprintln!("test apiserver on port {port} failed: {e}");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task: clients
                // see their connections close, as if the process died.
                drop(runtime);
            })?;
        match ready_rx.recv() {
            Ok(Ok(addr)) => Ok((addr, Self { stop, thread })),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the apiserver thread died while starting"))
            }
        }
    }

    fn stop(self) {
        let Self { stop, thread } = self;
        let _ = stop.send(());
        if let Err(panic) = thread.join()
            && !thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Binds with `SO_REUSEADDR` (so that a restart can take the port back from
/// connections in `TIME_WAIT`), retrying a busy port for a while.
async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attempt = (|| {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)
        })();
        match attempt {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => return result,
        }
    }
}

/// The parts of a request path that name a resource.
enum Route {
    Version,
    Health,
    ApiVersions,
    ApiGroups,
    ResourceList {
        group: String,
        version: String,
    },
    Resource {
        ty: usize,
        namespace: Option<String>,
        name: Option<String>,
    },
    NotFound,
}

fn route(store: &Store, path: &str) -> Route {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Route::Version,
        ["healthz" | "readyz" | "livez"] => return Route::Health,
        ["api"] => return Route::ApiVersions,
        ["apis"] => return Route::ApiGroups,
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::NotFound,
    };
    let (namespace, plural, name) = match rest {
        [] => {
            return Route::ResourceList {
                group: group.to_owned(),
                version: version.to_owned(),
            };
        }
        ["namespaces", namespace, plural, name @ ..] if name.len() <= 1 => {
            (Some(*namespace), *plural, name.first())
        }
        [plural, name @ ..] if name.len() <= 1 => (None, *plural, name.first()),
        _ => return Route::NotFound,
    };
    match store.type_index(group, version, plural) {
        Some(ty) if namespace.is_none() || store.types[ty].namespaced => Route::Resource {
            ty,
            namespace: namespace.map(str::to_owned),
            name: name.map(|n| (*n).to_owned()),
        },
        _ => Route::NotFound,
    }
}

type Params = Vec<(String, String)>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn parse_query(query: &str) -> Params {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let delay = shared.control.borrow().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let method = request.method().clone();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let path = request.uri().path().to_owned();
    let params = parse_query(request.uri().query().unwrap_or_default());
    let route = route(&shared.store(), &path);
    let watching = param(&params, "watch").is_some_and(|w| w == "true" || w == "1");
    let (verb, resource) = match &route {
        Route::Resource { ty, name, .. } => {
            let verb = if watching {
                Verb::Watch
            } else if name.is_some() {
                Verb::Get
            } else {
                Verb::List
            };
            (verb, Some(shared.store().types[*ty].plural.to_owned()))
        }
        Route::NotFound => (Verb::Other, None),
        _ => (Verb::Discovery, None),
    };
    shared.requests().push(RequestRecord {
        verb,
        method: method.to_string(),
        path: path.clone(),
        query: params.clone(),
        resource,
    });

    if !authorized(&shared, request.headers()) {
        bump(&shared.counters.unauthorized);
        return status_response(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            None,
        );
    }
    if method != Method::GET {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the test apiserver is read-only over HTTP: {method} is not supported"),
            None,
        );
    }
    match route {
        Route::Version => json_response(&json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-lb-agent-test",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        Route::Health => (StatusCode::OK, "ok").into_response(),
        Route::ApiVersions => json_response(&json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        })),
        Route::ApiGroups => json_response(&api_groups(&shared.store())),
        Route::ResourceList { group, version } => resource_list(&shared.store(), &group, &version),
        Route::Resource {
            ty,
            namespace,
            name,
        } => serve_resource(&shared, ty, namespace, name, watching, &params),
        Route::NotFound => status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}

/// A list, watch or get of a served resource.
fn serve_resource(
    shared: &Arc<Shared>,
    ty: usize,
    namespace: Option<String>,
    name: Option<String>,
    watching: bool,
    params: &Params,
) -> Response {
    let mut filter = match filter(namespace, params) {
        Ok(filter) => filter,
        Err(message) => {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message, None);
        }
    };
    match (name, watching) {
        (Some(name), true) => {
            // The old single-object watch path: a field selector on the name.
            filter.fields.0.push((FieldPath::Name, name, true));
            watch(shared, ty, filter, params)
        }
        (None, true) => watch(shared, ty, filter, params),
        (Some(name), false) => get(shared, ty, filter.namespace.as_deref(), &name),
        (None, false) => list(shared, ty, &filter, params),
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &shared.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| given == token)
}

fn filter(namespace: Option<String>, params: &Params) -> Result<Filter, String> {
    Ok(Filter {
        namespace,
        labels: LabelSelector::parse(param(params, "labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(param(params, "fieldSelector").unwrap_or_default())?,
    })
}

fn json_response(body: &impl Serialize) -> Response {
    let body = serde_json::to_vec(body).expect("responses serialize");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn status_object(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

fn status_response(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response {
    let body = serde_json::to_vec(&status_object(code, reason, message, details))
        .expect("a Status serializes");
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn expired_message(unservable: &Unservable) -> (StatusCode, &'static str, String, Option<Value>) {
    match unservable {
        Unservable::Expired { rv, oldest } => (
            StatusCode::GONE,
            "Expired",
            format!("too old resource version: {rv} ({oldest})"),
            None,
        ),
        Unservable::TooLarge { rv, current } => (
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {rv}, current: {current}"),
            Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
        ),
    }
}

fn api_groups(store: &Store) -> Value {
    let mut groups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for ty in store.types.iter().filter(|t| !t.group.is_empty()) {
        groups.entry(ty.group).or_default().insert(ty.version);
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Response {
    let resources: Vec<Value> = store
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| {
            json!({
                "name": t.plural,
                "singularName": t.kind.to_lowercase(),
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "list", "watch"],
            })
        })
        .collect();
    if resources.is_empty() {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        );
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json_response(&json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn get(shared: &Shared, ty: usize, namespace: Option<&str>, name: &str) -> Response {
    bump(&shared.counters.gets);
    let store = shared.store();
    let rt = &store.types[ty];
    let key = store.key(ty, namespace.unwrap_or_default(), name);
    if rt.namespaced && namespace.is_none() {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        );
    }
    match store.objects[ty].get(&key) {
        Some(object) => json_response(&Typed::new(rt, object)),
        None => status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} \"{name}\" not found", rt.plural),
            Some(json!({"name": name, "group": rt.group, "kind": rt.plural})),
        ),
    }
}

/// `{rv}/{namespace}/{name}`: the snapshot's resourceVersion and the last key
/// returned. Clients treat it as opaque.
fn continue_token(rv: u64, key: &Key) -> String {
    format!("{rv}/{}/{}", key.0, key.1)
}

fn parse_continue(token: &str) -> Option<(u64, Key)> {
    let (rv, key) = token.split_once('/')?;
    let (namespace, name) = key.split_once('/')?;
    Some((rv.parse().ok()?, (namespace.to_owned(), name.to_owned())))
}

#[derive(Serialize)]
struct ListOut<'a> {
    kind: &'a str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    metadata: Value,
    items: Vec<&'a Map<String, Value>>,
}

fn list(shared: &Shared, ty: usize, filter: &Filter, params: &Params) -> Response {
    bump(&shared.counters.lists);
    let bad_request =
        |message: String| status_response(StatusCode::BAD_REQUEST, "BadRequest", &message, None);
    let limit = match param(params, "limit").map(str::parse::<usize>) {
        None | Some(Ok(0)) => None,
        Some(Ok(limit)) => Some(limit),
        Some(Err(e)) => return bad_request(format!("invalid limit: {e}")),
    };
    let store = shared.store();
    let continued = match param(params, "continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => match parse_continue(token) {
            Some(continued) => Some(continued),
            None => {
                return bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion".into(),
                );
            }
        },
    };
    let requested = match param(params, "resourceVersion").filter(|rv| !rv.is_empty()) {
        None => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return bad_request(format!("invalid resource version {rv:?}")),
        },
    };
    let exact = param(params, "resourceVersionMatch") == Some("Exact");
    // Which state to serve: a continuation's snapshot, an exact version, or
    // the latest (at least as new as any version asked for).
    let (rv, objects) = match (&continued, requested) {
        (Some((rv, _)), _) => (*rv, store.objects_at(ty, *rv)),
        (None, Some(rv)) if exact && rv != 0 => (rv, store.objects_at(ty, rv)),
        (None, Some(rv)) if rv > store.rv => (
            rv,
            Err(Unservable::TooLarge {
                rv,
                current: store.rv,
            }),
        ),
        (None, _) => (store.rv, Ok(Cow::Borrowed(&store.objects[ty]))),
    };
    let objects = match objects {
        Ok(objects) => objects,
        Err(unservable) => {
            let (code, reason, message, details) = expired_message(&unservable);
            let message = if code == StatusCode::GONE && continued.is_some() {
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter."
                    .to_owned()
            } else {
                message
            };
            if code == StatusCode::GONE {
                bump(&shared.counters.expired);
            }
            return status_response(code, reason, &message, details);
        }
    };
    let start = continued.map_or(Bound::Unbounded, |(_, key)| Bound::Excluded(key));
    let rt = &store.types[ty];
    let mut matching = objects
        .range((start, Bound::Unbounded))
        .filter(|(key, object)| filter.matches(key, object));
    let page: Vec<(&Key, &Object)> = matching
        .by_ref()
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    let remaining = matching.count();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if remaining > 0
        && let Some((last, _)) = page.last()
    {
        metadata["continue"] = continue_token(rv, last).into();
        if filter.labels.0.is_empty() && filter.fields.0.is_empty() {
            metadata["remainingItemCount"] = remaining.into();
        }
    }
    let items = page.into_iter().map(|(_, object)| &**object).collect();
    json_response(&ListOut {
        kind: rt.list_kind,
        api_version: rt.api_version,
        metadata,
        items,
    })
}

fn watch(shared: &Arc<Shared>, ty: usize, filter: Filter, params: &Params) -> Response {
    bump(&shared.counters.watches);
    let timeout = match param(params, "timeoutSeconds").map(str::parse::<u64>) {
        None | Some(Ok(0)) => DEFAULT_WATCH_TIMEOUT,
        Some(Ok(seconds)) => Duration::from_secs(seconds),
        Some(Err(e)) => {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("invalid timeoutSeconds: {e}"),
                None,
            );
        }
    };
    let bookmarks = param(params, "allowWatchBookmarks") == Some("true");
    let initial_events = param(params, "sendInitialEvents") == Some("true");
    let requested = param(params, "resourceVersion").filter(|rv| !rv.is_empty() && *rv != "0");
    let requested = match requested.map(str::parse::<u64>) {
        None => None,
        Some(Ok(rv)) => Some(rv),
        Some(Err(_)) => {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "invalid resource version",
                None,
            );
        }
    };

    let control = shared.control.subscribe();
    let changed = shared.changed.subscribe();
    let (first, cursor, done) = watch_start(shared, ty, &filter, requested, initial_events);
    let rt = shared.store().types[ty].clone();

    let (close_epoch, expire_epoch) = {
        let control = control.borrow();
        (control.close_epoch, control.expire_epoch)
    };
    let now = Instant::now();
    bump(&shared.counters.open_watches);
    let stream = WatchStream {
        _open: OpenWatch(Arc::clone(shared)),
        shared: Arc::clone(shared),
        ty,
        rt,
        filter,
        cursor,
        bookmarks,
        started: now,
        deadline: now + timeout,
        last_bookmark: now,
        close_epoch,
        expire_epoch,
        changed,
        control,
        pending: (!first.is_empty()).then(|| Bytes::from(first)),
        done,
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), stream))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// What a new watch sends first, the resourceVersion it goes on from, and
/// whether it ends after that (with an `ERROR` event).
fn watch_start(
    shared: &Shared,
    ty: usize,
    filter: &Filter,
    requested: Option<u64>,
    initial_events: bool,
) -> (Vec<u8>, u64, bool) {
    let store = shared.store();
    let rt = &store.types[ty];
    match requested {
        Some(rv) if rv < store.compacted => {
            bump(&shared.counters.expired);
            let oldest = store.compacted;
            let (code, reason, message, details) =
                expired_message(&Unservable::Expired { rv, oldest });
            let error = event_line("ERROR", status_object(code, reason, &message, details));
            (error, rv, true)
        }
        Some(rv) if rv > store.rv => {
            let current = store.rv;
            let (code, reason, message, details) =
                expired_message(&Unservable::TooLarge { rv, current });
            let error = event_line("ERROR", status_object(code, reason, &message, details));
            (error, rv, true)
        }
        Some(rv) if !initial_events => (Vec::new(), rv, false),
        // No (or "0") resourceVersion, or a streaming list: the current
        // state as synthetic ADDED events first.
        _ => {
            let mut first = Vec::new();
            for (key, object) in &store.objects[ty] {
                if filter.matches(key, object) {
                    first.extend(event_line("ADDED", Typed::new(rt, object)));
                }
            }
            if initial_events {
                first.extend(bookmark_line(rt, store.rv, true));
                bump(&shared.counters.bookmarks);
            }
            (first, store.rv, false)
        }
    }
}

fn bookmark_line(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Vec<u8> {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        json!({"kind": rt.kind, "apiVersion": rt.api_version, "metadata": metadata}),
    )
}

/// Counts a watch as open while its body exists.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.counters.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

struct WatchStream {
    _open: OpenWatch,
    shared: Arc<Shared>,
    ty: usize,
    rt: ResourceType,
    filter: Filter,
    /// Every change up to here has been considered.
    cursor: u64,
    bookmarks: bool,
    started: Instant,
    deadline: Instant,
    last_bookmark: Instant,
    close_epoch: u64,
    expire_epoch: u64,
    changed: watch::Receiver<u64>,
    control: watch::Receiver<Control>,
    pending: Option<Bytes>,
    done: bool,
}

impl WatchStream {
    /// The next chunk of newline-delimited events; `None` ends the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.take() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            let control = self.control.borrow_and_update().clone();
            if control.expire_epoch != self.expire_epoch {
                self.done = true;
                bump(&self.shared.counters.expired);
                let status = status_object(
                    StatusCode::GONE,
                    "Expired",
                    &format!(
                        "too old resource version: {} (expired by the test)",
                        self.cursor
                    ),
                    None,
                );
                return Some(event_line("ERROR", status).into());
            }
            let deadline = control.close_every.map_or(self.deadline, |every| {
                self.deadline.min(self.started + every)
            });
            if control.close_epoch != self.close_epoch || Instant::now() >= deadline {
                return None;
            }

            let mut chunk = Vec::new();
            self.changed.borrow_and_update();
            {
                let store = self.shared.store();
                if self.cursor < store.compacted {
                    // Fell behind the history (it is bounded): as the real
                    // server, expire the watch.
                    self.done = true;
                    bump(&self.shared.counters.expired);
                    let (code, reason, message, details) = expired_message(&Unservable::Expired {
                        rv: self.cursor,
                        oldest: store.compacted,
                    });
                    return Some(
                        event_line("ERROR", status_object(code, reason, &message, details)).into(),
                    );
                }
                for change in store.changes_after(self.cursor).filter(|c| c.ty == self.ty) {
                    if let Some(line) = self.filter.event(&self.rt, change) {
                        chunk.extend(line);
                    }
                }
                self.cursor = store.rv;
            }
            let next_bookmark = self.last_bookmark + control.bookmark_interval;
            if self.bookmarks && Instant::now() >= next_bookmark {
                chunk.extend(bookmark_line(&self.rt, self.cursor, false));
                self.last_bookmark = Instant::now();
                bump(&self.shared.counters.bookmarks);
                self.shared
                    .counters
                    .last_bookmark_rv
                    .fetch_max(self.cursor, Ordering::SeqCst);
            }
            if !chunk.is_empty() {
                return Some(chunk.into());
            }

            let bookmark_wait = if self.bookmarks {
                next_bookmark
            } else {
                deadline
            };
            tokio::select! {
                _ = self.changed.changed() => {}
                _ = self.control.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = tokio::time::sleep_until(bookmark_wait) => {}
            }
        }
    }
}
