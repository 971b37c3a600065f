//! The Kubernetes API source: reflectors on Services, EndpointSlices and
//! this node's Node, translated with kube-proxy's rules.
//!
//! - The label selector is kube-proxy's: services (and their slices)
//!   labelled `service.kubernetes.io/headless` or with a
//!   `service.kubernetes.io/service-proxy-name` are not ours, unless
//!   `--service-proxy-name` names them.
//! - Nothing is published until Services, EndpointSlices (and the Node, when
//!   a node name is known) have completed their first list: an empty cache
//!   must never wipe what pinned maps hold at start-up.
//! - A relist (after `410 Gone` or a reconnect) replaces a store whole, so
//!   what disappeared meanwhile is deleted.
//! - Events that arrive together (or while the previous change is being
//!   published) are coalesced into one publish; the sync loop applies only
//!   the difference.
//! - While the API server cannot be reached the programmed state stays, the
//!   `lb_source_stale{source="kubernetes"}` gauge is 1 and a log line says
//!   so; the watchers retry with backoff, and all of them resume at once
//!   when the probe sees the server answer again.
//! - Objects are stripped to what translation reads before they are stored;
//!   slices are kept in the compact form [`Slice`].

mod node;
mod resume;
mod strip;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::{mpsc, watch};

use self::node::NodeReport;
use super::{Published, Publisher, Update};
use crate::{
    metrics::{Metrics, SourceLabels},
    model::{DesiredState, Frontend, HealthChecks, ServiceName, StateDelta},
    translate::{self, Kind, NodeContext, Options, Slice},
};

/// How often everything is translated again whatever the events said.
const FULL_RESYNC: Duration = Duration::from_mins(1);

/// How often the probe asks the API server for its version while the
/// source is stale: the watchers resume at most this long after the
/// server's return (the target is 2 s to programmed).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration: not in a cluster, and no KUBECONFIG or ~/.kube/config ({source}); pass --kubeconfig PATH or --services-file PATH"
    )]
    Infer {
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("failed to build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// How to reach the API server.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// `--kubeconfig`; otherwise `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

/// Makes a client from `--kubeconfig` or the usual places.
///
/// # Errors
/// When no configuration can be found or read.
pub async fn client(conn: &Connection) -> Result<Client, Error> {
    let config = match &conn.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::infer()
            .await
            .map_err(|source| Error::Infer { source })?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// kube-proxy's selector: not headless, and either no proxy name or ours.
#[must_use]
pub fn label_selector(service_proxy_name: Option<&str>) -> String {
    let proxy = match service_proxy_name {
        Some(name) => format!("{}={name}", translate::LABEL_SERVICE_PROXY_NAME),
        None => format!("!{}", translate::LABEL_SERVICE_PROXY_NAME),
    };
    format!("{proxy},!{}", translate::LABEL_HEADLESS)
}

/// Watches the API and publishes the translated state until cancelled.
pub struct KubeSource {
    pub client: Client,
    pub node_name: Option<String>,
    pub options: Options,
}

/// Which watch produced an event (for staleness tracking).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Watch {
    Services,
    Slices,
    Node,
}

/// What an event may have changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    /// Anything (a relist completed, the Node changed): translate everything.
    All,
    /// One Service, through itself or one of its slices (then named here:
    /// a new slice is not in the index yet).
    Service {
        namespace: String,
        name: String,
        slice: Option<String>,
    },
}

/// A resource the source lists and watches (with get): its API group and
/// plural name, as RBAC rules name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    pub group: &'static str,
    pub resource: &'static str,
}

impl Watched {
    const fn of<K: k8s_openapi::Resource>() -> Self {
        Self {
            group: K::GROUP,
            resource: K::URL_PATH_SEGMENT,
        }
    }
}

/// Everything the source watches: what the agent's `ClusterRole` must grant
/// get, list and watch on, and nothing more.
pub const WATCHED: [Watched; 3] = [
    Watched::of::<Service>(),
    Watched::of::<EndpointSlice>(),
    Watched::of::<Node>(),
];

/// What a watcher (or the recovery probe) reports to the publisher.
enum Signal {
    /// An event arrived; `None`: nothing to publish yet (a relist in
    /// progress), but the watch is alive.
    Changed(Instant, Option<Scope>),
    Failed(Watch, String),
    /// The API server answers again (a resumed watch may have nothing to
    /// say, so reachability is probed separately).
    Recovered,
}

/// The reflector caches.
struct Stores {
    services: Store<Service>,
    slices: Store<Slice>,
    node: Option<Store<Node>>,
}

/// Staleness tracking and the metrics it feeds.
struct Health {
    metrics: Arc<Metrics>,
    labels: SourceLabels,
    probe: Prober,
    stale: bool,
}

impl Health {
    fn note(&mut self, signal: &Signal) {
        note(
            signal,
            &mut self.stale,
            &self.metrics,
            &self.labels,
            &self.probe,
        );
    }
}

impl KubeSource {
    /// Runs the reflectors and publishes every change. Returns only if all
    /// watch streams end (they retry forever).
    pub async fn run(self, tx: Publisher, metrics: Arc<Metrics>) {
        let selector = label_selector(self.options.service_proxy_name.as_deref());
        let (signals, mut rx) = mpsc::unbounded_channel();
        let (resume, resumed) = watch::channel(());
        let stores = self.start_watches(&selector, &signals, &resumed);
        drop(resumed);
        let mut health = Health {
            metrics,
            labels: SourceLabels {
                source: "kubernetes".to_owned(),
            },
            probe: Prober {
                client: self.client.clone(),
                signals: signals.clone(),
                resume: Arc::new(resume),
                running: Arc::default(),
            },
            stale: false,
        };
        drop(signals);
        tracing::info!(selector = %selector, node = ?self.node_name, "waiting for the first list of Services, EndpointSlices and Node");
        if !wait_first_list(&stores, &mut rx, &mut health).await {
            return;
        }
        tracing::info!(
            services = stores.services.len(),
            endpoint_slices = stores.slices.len(),
            "first list complete"
        );
        let translator = Translator::new(self.options.clone(), self.node_name.clone());
        publish_changes(translator, &stores, &mut rx, &tx, &mut health).await;
    }

    /// The API of a resource the source watches; it must be in [`WATCHED`],
    /// which the `ClusterRole` in `deploy/rbac.yaml` is checked against (a
    /// debug build, what the end-to-end tests run, panics otherwise).
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource + k8s_openapi::Resource,
        <K as kube::Resource>::DynamicType: Default,
    {
        debug_assert!(
            WATCHED.contains(&Watched::of::<K>()),
            "{} is watched but missing from WATCHED (and so from the ClusterRole check)",
            K::URL_PATH_SEGMENT
        );
        Api::all(self.client.clone())
    }

    /// Starts the three reflectors; their events arrive on `signals`, and
    /// they end a back-off when `resume` changes.
    fn start_watches(
        &self,
        selector: &str,
        signals: &mpsc::UnboundedSender<Signal>,
        resume: &watch::Receiver<()>,
    ) -> Stores {
        let config = watcher::Config::default().labels(selector);
        let (services, writer) = reflector::store::<Service>();
        let stream = watcher(self.api::<Service>(), config.clone()).modify(strip::service);
        let stream = resume::backoff(stream, resume.clone());
        tokio::spawn(drive(
            Watch::Services,
            stream.reflect(writer),
            signals.clone(),
            service_scope,
        ));

        let (slices, writer) = reflector::store::<Slice>();
        let stream = watcher(self.api::<EndpointSlice>(), config).map_ok(compact);
        let stream = resume::backoff(stream, resume.clone());
        tokio::spawn(drive(
            Watch::Slices,
            stream.reflect(writer),
            signals.clone(),
            slice_scope,
        ));

        let node = self.node_name.as_ref().map(|name| {
            let (store, writer) = reflector::store::<Node>();
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let stream = watcher(self.api::<Node>(), config).modify(strip::node);
            let stream = resume::backoff(stream, resume.clone());
            tokio::spawn(drive(
                Watch::Node,
                stream.reflect(writer),
                signals.clone(),
                node_scope,
            ));
            store
        });
        Stores {
            services,
            slices,
            node,
        }
    }
}

/// Waits until every store has its first list (nothing may be published
/// before); false if the watches are gone.
async fn wait_first_list(
    stores: &Stores,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
    health: &mut Health,
) -> bool {
    let ready = async {
        let _ = stores.services.wait_until_ready().await;
        let _ = stores.slices.wait_until_ready().await;
        if let Some(store) = &stores.node {
            let _ = store.wait_until_ready().await;
        }
    };
    tokio::pin!(ready);
    loop {
        tokio::select! {
            () = &mut ready => return true,
            signal = rx.recv() => match signal {
                Some(s) => health.note(&s),
                None => return false,
            },
        }
    }
}

/// Publishes the whole state, then every change: a delta when a few
/// Services changed, the whole state otherwise.
async fn publish_changes(
    mut translator: Translator,
    stores: &Stores,
    rx: &mut mpsc::UnboundedReceiver<Signal>,
    tx: &Publisher,
    health: &mut Health,
) {
    let (services, slices) = (&stores.services, &stores.slices);
    let node_objects = stores.node.as_ref();
    // A whole translation now and then, as a safety net: every event names
    // what it changes, but anything missed would otherwise stay wrong until
    // the next relist.
    let mut resync = tokio::time::interval(FULL_RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut all = true;
    let mut dirty = Dirty::new();
    let mut noticed = Instant::now();
    let mut node_report = NodeReport::default();
    let mut health_checks: Option<HealthChecks> = None;
    loop {
        let node = node_objects.and_then(|s| s.state().into_iter().next());
        for change in node_report.changes(node.as_deref()) {
            if tx.send(Update { change, noticed }).is_err() {
                return;
            }
        }
        if all || !dirty.is_empty() {
            // Translating takes a while for a large cluster: off the
            // async workers, so the watches and /metrics keep going.
            let (change, new_problems) = tokio::task::block_in_place(|| {
                let partial = (!all && dirty.len() <= translator.partial_limit())
                    .then(|| translator.partial(&dirty, services, slices, node_objects))
                    .flatten();
                if let Some((delta, n)) = partial {
                    (Published::Delta(delta), n)
                } else {
                    let (whole, n) = translator.full(services, slices, node_objects);
                    (Published::Full(whole), n)
                }
            });
            health
                .metrics
                .source_errors
                .get_or_create(&health.labels)
                .inc_by(new_problems);
            let empty = matches!(&change, Published::Delta(d) if d.is_empty());
            if !empty {
                health
                    .metrics
                    .source_updates
                    .get_or_create(&health.labels)
                    .inc();
                if tx.send(Update { change, noticed }).is_err() {
                    return; // The agent is shutting down.
                }
            }
            if health_checks.as_ref() != Some(&translator.health_checks) {
                health_checks = Some(translator.health_checks.clone());
                let change = Published::HealthChecks(translator.health_checks.clone());
                if tx.send(Update { change, noticed }).is_err() {
                    return;
                }
            }
            all = false;
            dirty.clear();
        }
        tokio::select! {
            signal = rx.recv() => {
                let Some(signal) = signal else { return };
                health.note(&signal);
                let Signal::Changed(at, _) = &signal else { continue };
                noticed = *at;
                add(&signal, &mut all, &mut dirty);
            }
            _ = resync.tick() => {
                noticed = Instant::now();
                all = true;
            }
        }
        // Whatever queued up meanwhile (a burst, or events that arrived
        // during the last publish) goes into the same publish.
        tokio::task::yield_now().await;
        while let Ok(signal) = rx.try_recv() {
            health.note(&signal);
            add(&signal, &mut all, &mut dirty);
        }
    }
}

/// Records what a signal says needs translating.
fn add(signal: &Signal, all: &mut bool, dirty: &mut Dirty) {
    if let Signal::Changed(_, Some(scope)) = signal {
        match scope {
            Scope::All => *all = true,
            Scope::Service {
                namespace,
                name,
                slice,
            } => {
                let slices = dirty.entry((namespace.clone(), name.clone())).or_default();
                slices.extend(slice.iter().cloned());
            }
        }
    }
}

/// Tracks staleness from watcher signals.
fn note(
    signal: &Signal,
    stale: &mut bool,
    metrics: &Metrics,
    labels: &SourceLabels,
    probe: &Prober,
) {
    match signal {
        Signal::Failed(watch, error) => {
            if !*stale {
                tracing::warn!(
                    ?watch,
                    error = %error,
                    "Kubernetes API unreachable or failing: keeping the programmed state, retrying with backoff"
                );
            }
            *stale = true;
            probe.start();
        }
        Signal::Changed(..) | Signal::Recovered => {
            if *stale {
                tracing::info!("Kubernetes API reachable again: catching up");
            }
            *stale = false;
        }
    }
    metrics
        .source_stale
        .get_or_create(labels)
        .set(i64::from(*stale));
}

/// Polls `/version` after a failure until the API server answers; if it
/// did not answer at first (it was down, not only failing a watch), the
/// watchers are told to stop backing off.
struct Prober {
    client: Client,
    signals: mpsc::UnboundedSender<Signal>,
    resume: Arc<watch::Sender<()>>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl Prober {
    fn start(&self) {
        use std::sync::atomic::Ordering;
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (client, signals, resume, running) = (
            self.client.clone(),
            self.signals.clone(),
            Arc::clone(&self.resume),
            Arc::clone(&self.running),
        );
        tokio::spawn(async move {
            // A server that answers but fails the watches (a 403, a 500)
            // is left to the back-off: waking the watchers would hammer it.
            let mut was_down = false;
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if client.apiserver_version().await.is_ok() {
                    if was_down {
                        resume.send_replace(());
                    }
                    running.store(false, Ordering::SeqCst);
                    let _ = signals.send(Signal::Recovered);
                    return;
                }
                was_down = true;
            }
        });
    }
}

/// Consumes one reflected watch stream, turning events into signals.
async fn drive<K, S>(
    watch: Watch,
    stream: S,
    signals: mpsc::UnboundedSender<Signal>,
    scope: fn(&watcher::Event<K>) -> Option<Scope>,
) where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    tokio::pin!(stream);
    while let Some(event) = stream.next().await {
        let signal = match event {
            Ok(event) => Signal::Changed(Instant::now(), scope(&event)),
            Err(e) => Signal::Failed(watch, e.to_string()),
        };
        if signals.send(signal).is_err() {
            return;
        }
    }
}

/// The scope of an event on an object: the object itself (`key`) when it
/// is added, changed or deleted; everything when a relist completes;
/// nothing while a relist is in progress (the store swaps at its end).
fn event_scope<K>(event: &watcher::Event<K>, key: impl Fn(&K) -> Option<Scope>) -> Option<Scope> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => Some(key(o).unwrap_or(Scope::All)),
        watcher::Event::InitDone => Some(Scope::All),
        watcher::Event::Init | watcher::Event::InitApply(_) => None,
    }
}

fn service_scope(event: &watcher::Event<Service>) -> Option<Scope> {
    event_scope(event, |s| {
        Some(Scope::Service {
            namespace: s.metadata.namespace.clone()?,
            name: s.metadata.name.clone()?,
            slice: None,
        })
    })
}

fn slice_scope(event: &watcher::Event<Slice>) -> Option<Scope> {
    event_scope(event, |s| {
        let service = service_of(s)?;
        Some(Scope::Service {
            namespace: s.metadata.namespace.clone()?,
            name: service.clone(),
            slice: Some(s.metadata.name.clone()?),
        })
    })
}

/// The `EndpointSlices` of each Service, by name, kept up to date from the
/// events that name them.
#[derive(Default)]
struct ServiceSlices {
    by_service: HashMap<ServiceId, BTreeSet<String>>,
    /// (namespace, slice name) -> the Service it was last seen with.
    owner: HashMap<(String, String), String>,
}

impl ServiceSlices {
    fn insert(&mut self, slice: &Slice) {
        let meta = &slice.metadata;
        if let (Some(namespace), Some(name), Some(service)) =
            (&meta.namespace, &meta.name, service_of(slice))
        {
            self.by_service
                .entry((namespace.clone(), service.clone()))
                .or_default()
                .insert(name.clone());
            self.owner
                .insert((namespace.clone(), name.clone()), service.clone());
        }
    }

    /// Whether an event named a slice under a Service other than the one
    /// it was indexed under, and that one is not being translated too.
    fn moved_from_outside(&self, dirty: &Dirty) -> bool {
        dirty.iter().any(|((namespace, service), named)| {
            named.iter().any(|name| {
                self.owner
                    .get(&(namespace.clone(), name.clone()))
                    .is_some_and(|old| {
                        old != service && !dirty.contains_key(&(namespace.clone(), old.clone()))
                    })
            })
        })
    }

    /// The slices of Service `id` now: those indexed and those `named` by
    /// events, as the store has them, keeping only those still labelled
    /// for it; the index is updated to match.
    fn refresh(
        &mut self,
        id: &ServiceId,
        named: &BTreeSet<String>,
        store: &Store<Slice>,
    ) -> Vec<Arc<Slice>> {
        let (namespace, service) = id;
        let known = self.by_service.remove(id).unwrap_or_default();
        let mut current = BTreeSet::new();
        let mut found = Vec::new();
        for name in known.into_iter().chain(named.iter().cloned()) {
            if current.contains(&name) {
                continue;
            }
            let key = (namespace.clone(), name);
            let slice = store.get(&reflector::ObjectRef::new(&key.1).within(namespace));
            match slice.filter(|s| service_of(s) == Some(service)) {
                Some(slice) => {
                    found.push(slice);
                    current.insert(key.1.clone());
                    self.owner.insert(key, service.clone());
                }
                None => {
                    if self.owner.get(&key) == Some(service) {
                        self.owner.remove(&key);
                    }
                }
            }
        }
        if !current.is_empty() {
            self.by_service.insert(id.clone(), current);
        }
        found
    }
}

/// The Service an `EndpointSlice` belongs to, by its label.
fn service_of(slice: &Slice) -> Option<&String> {
    slice.service.as_ref()
}

/// A slice event with the slice in the form the store keeps.
fn compact(event: watcher::Event<EndpointSlice>) -> watcher::Event<Slice> {
    match event {
        watcher::Event::Apply(s) => watcher::Event::Apply(s.into()),
        watcher::Event::Delete(s) => watcher::Event::Delete(s.into()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(s) => watcher::Event::InitApply(s.into()),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn node_scope(event: &watcher::Event<Node>) -> Option<Scope> {
    event_scope(event, |_| Some(Scope::All))
}

/// A Service's identity: (namespace, name).
type ServiceId = (String, String);

/// Services to translate again, each with the names of the slices whose
/// events named it.
type Dirty = HashMap<ServiceId, BTreeSet<String>>;

/// Translates the cluster, whole or a few Services at a time.
///
/// A change to a few Services is translated alone and published as a delta
/// (its cost does not grow with the cluster). That is only right when no
/// other Service is involved, so it falls back to a whole translation when
/// a Service would take a frontend another one holds, or gives one up while
/// any other Service had problems (it may have lost that frontend in a
/// conflict and now be owed it).
struct Translator {
    options: Options,
    node_name: Option<String>,
    state: DesiredState,
    health_checks: HealthChecks,
    /// The frontends of each Service, as last translated.
    by_service: HashMap<ServiceId, Vec<Frontend>>,
    /// Services whose last translation reported a problem.
    troubled: HashSet<ServiceId>,
    /// Which slices belong to which Service, so that a change to one
    /// Service does not scan every slice.
    slices: ServiceSlices,
    /// Problems already logged (each is logged once).
    reported: HashSet<String>,
}

/// A burst that changes more Services than this, and more than an eighth
/// of those translated, is translated whole: past that a whole translation
/// costs less than one per Service. (With a fixed limit, the catch-up after
/// an outage at 100,000 Services was a series of whole translations of 3 s
/// each, for bursts of a few hundred changes.)
const MAX_PARTIAL: usize = 256;

impl Translator {
    /// A translator that has translated nothing yet.
    fn new(options: Options, node_name: Option<String>) -> Self {
        Self {
            options,
            node_name,
            state: DesiredState::new(),
            health_checks: HealthChecks::new(),
            by_service: HashMap::new(),
            troubled: HashSet::new(),
            slices: ServiceSlices::default(),
            reported: HashSet::new(),
        }
    }

    /// The largest burst translated Service by Service.
    fn partial_limit(&self) -> usize {
        MAX_PARTIAL.max(self.by_service.len() / 8)
    }

    fn node(&self, node: Option<&Store<Node>>) -> NodeContext {
        let node = node.and_then(|s| s.state().into_iter().next());
        NodeContext::of(self.node_name.clone(), node.as_deref())
    }

    /// Logs problems not logged before; returns how many were new.
    fn report(&mut self, problems: &[translate::Problem]) -> u64 {
        let mut new = 0;
        for p in problems {
            if self.reported.insert(p.to_string()) {
                tracing::warn!("skipping: {p}");
                new += 1;
            }
        }
        new
    }

    /// Translates everything; returns the whole state and new problems.
    fn full(
        &mut self,
        services: &Store<Service>,
        slices: &Store<Slice>,
        node: Option<&Store<Node>>,
    ) -> (DesiredState, u64) {
        let ctx = self.node(node);
        let services = services.state();
        let slices = slices.state();
        let t = translate::translate(
            services.iter().map(AsRef::as_ref),
            slices.iter().map(AsRef::as_ref),
            &ctx,
            &self.options,
        );
        // Forget fixed problems, so they are logged again if they come back.
        self.reported
            .retain(|r| t.problems.iter().any(|p| p.to_string() == *r));
        let new = self.report(&t.problems);
        self.troubled = t
            .problems
            .iter()
            .filter(|p| p.object.kind == Kind::Service)
            .map(|p| (p.object.namespace.clone(), p.object.name.clone()))
            .collect();
        self.slices = ServiceSlices::default();
        for slice in &slices {
            self.slices.insert(slice);
        }
        self.by_service.clear();
        for (frontend, entry) in &t.state {
            self.by_service
                .entry((entry.name.namespace.clone(), entry.name.name.clone()))
                .or_default()
                .push(*frontend);
        }
        self.state = t.state;
        self.health_checks = t.health_checks;
        (self.state.clone(), new)
    }

    /// Translates only `dirty` Services; `None` when a whole translation
    /// is needed instead.
    fn partial(
        &mut self,
        dirty: &Dirty,
        services: &Store<Service>,
        slices: &Store<Slice>,
        node: Option<&Store<Node>>,
    ) -> Option<(StateDelta, u64)> {
        // A slice that moved here from a Service not in this burst changes
        // that one too: only a whole translation sees both.
        if self.slices.moved_from_outside(dirty) {
            return None;
        }
        let ctx = self.node(node);
        let their_slices: HashMap<&ServiceId, Vec<Arc<Slice>>> = dirty
            .iter()
            .map(|(id, named)| (id, self.slices.refresh(id, named, slices)))
            .collect();
        let mut delta = BTreeMap::new();
        let mut frees_frontends = false;
        let mut translated = Vec::with_capacity(dirty.len());
        let mut claimed: HashMap<Frontend, &ServiceId> = HashMap::new();
        let mut new_problems = 0;
        for id in dirty.keys() {
            let service = services.get(&reflector::ObjectRef::new(&id.1).within(&id.0));
            let slices = their_slices.get(id).map(Vec::as_slice).unwrap_or_default();
            let t = translate::translate(
                service.iter().map(AsRef::as_ref),
                slices.iter().map(AsRef::as_ref),
                &ctx,
                &self.options,
            );
            new_problems += self.report(&t.problems);
            // Held by another Service, or claimed by another one in this
            // burst: only a whole translation decides who gets it.
            let taken = t.state.iter().any(|(frontend, _)| {
                let held = self
                    .state
                    .get(frontend)
                    .is_some_and(|held| held.name.namespace != id.0 || held.name.name != id.1);
                held || claimed
                    .insert(*frontend, id)
                    .is_some_and(|other| other != id)
            });
            if taken {
                return None;
            }
            for frontend in self.by_service.get(id).into_iter().flatten() {
                if !t.state.contains_key(frontend) {
                    delta.insert(*frontend, None);
                    frees_frontends = true;
                }
            }
            translated.push((id.clone(), t));
        }
        if frees_frontends && self.troubled.iter().any(|t| !dirty.contains_key(t)) {
            return None;
        }
        for (id, t) in translated {
            if t.problems.iter().any(|p| p.object.kind == Kind::Service) {
                self.troubled.insert(id.clone());
            } else {
                self.troubled.remove(&id);
            }
            self.health_checks.remove(&ServiceName {
                namespace: id.0.clone(),
                name: id.1.clone(),
            });
            self.health_checks.extend(t.health_checks);
            let frontends: Vec<Frontend> = t.state.keys().copied().collect();
            for (frontend, entry) in t.state {
                if self.state.get(&frontend) != Some(&entry) {
                    delta.insert(frontend, Some(entry));
                }
            }
            if frontends.is_empty() {
                self.by_service.remove(&id);
            } else {
                self.by_service.insert(id, frontends);
            }
        }
        for (frontend, entry) in &delta {
            match entry {
                Some(entry) => self.state.insert(*frontend, entry.clone()),
                None => self.state.remove(frontend),
            };
        }
        Some((delta, new_problems))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use kube::runtime::{reflector, watcher};

    use super::{Dirty, Translator, service_of};
    use crate::translate::{
        self, NodeContext, Options, Slice,
        testing::{PortFields as _, endpoint, port, slice_port},
    };

    /// A Service; `health_check` makes it a LoadBalancer with
    /// `externalTrafficPolicy: Local` and that health check port.
    fn service(name: &str, ip: &str, number: u16, health_check: Option<i32>) -> Service {
        let http = port(number.into())
            .name("http")
            .target(8080)
            .protocol("TCP");
        let mut s = translate::testing::service(name)
            .cluster_ip(ip)
            .cluster_ips(&[ip])
            .port(http);
        if let Some(port) = health_check {
            s = s
                .type_("LoadBalancer")
                .external_traffic_policy("Local")
                .health_check_node_port(port);
        }
        s.build()
    }

    /// A slice whose endpoints are on this node (`node-1`) or another.
    fn slice(name: &str, service: &str, ips: &[String]) -> Slice {
        let on = |i: usize| {
            if i.is_multiple_of(2) {
                "node-1"
            } else {
                "node-2"
            }
        };
        translate::testing::slice(name, service)
            .port(slice_port(8080).name("http").protocol("TCP"))
            .endpoints(
                ips.iter()
                    .enumerate()
                    .map(|(i, ip)| endpoint(ip).node(on(i))),
            )
            .build()
    }

    /// Random changes (new, changed and deleted Services and slices, with
    /// ClusterIPs drawn from a small pool so that Services fight over
    /// frontends) go through the incremental translator; after each, its
    /// state must equal a whole translation from scratch.
    #[test]
    fn incremental_translation_equals_whole_translation() {
        for seed in 1..=6 {
            incremental_equals_whole(seed);
        }
    }

    fn incremental_equals_whole(seed: u64) {
        let (services, mut services_w) = reflector::store::<Service>();
        let (slices, mut slices_w) = reflector::store::<Slice>();
        services_w.apply_watcher_event(&watcher::Event::InitDone);
        slices_w.apply_watcher_event(&watcher::Event::InitDone);
        let node = NodeContext {
            node_name: Some("node-1".to_owned()),
            zone: None,
        };
        let mut t = Translator::new(Options::default(), node.node_name.clone());
        t.full(&services, &slices, None);
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut partial, mut fallbacks) = (0, 0);
        for step in 0..2_000 {
            let mut dirty = Dirty::new();
            for _ in 0..rng.usize(1..4) {
                let name = format!("s{}", rng.u8(0..12));
                // Each Service has its own slice; a few shared names move
                // between Services (relabelled), as a slice may.
                let slice_name = if rng.u8(0..4) == 0 {
                    format!("moving-{}", rng.u8(0..3))
                } else {
                    format!("{name}-a")
                };
                let mut named = None;
                match rng.u8(0..5) {
                    0 | 1 => {
                        let ip = format!("10.96.0.{}", rng.u8(1..8));
                        let health_check = rng.bool().then(|| 32_000 + i32::from(rng.u8(0..3)));
                        services_w.apply_watcher_event(&watcher::Event::Apply(service(
                            &name,
                            &ip,
                            80 + u16::from(rng.u8(0..2)),
                            health_check,
                        )));
                    }
                    2 => services_w.apply_watcher_event(&watcher::Event::Delete(service(
                        &name,
                        "10.96.0.1",
                        80,
                        None,
                    ))),
                    3 => {
                        let ips: Vec<String> = (0..rng.u8(0..4))
                            .map(|i| format!("10.200.{}.{i}", rng.u8(0..3)))
                            .collect();
                        slices_w.apply_watcher_event(&watcher::Event::Apply(slice(
                            &slice_name,
                            &name,
                            &ips,
                        )));
                        named = Some(slice_name);
                    }
                    _ => {
                        // A delete event carries the object as last seen.
                        let gone = slices
                            .get(&reflector::ObjectRef::new(&slice_name).within("default"))
                            .filter(|s| service_of(s) == Some(&name));
                        if let Some(gone) = gone {
                            slices_w.apply_watcher_event(&watcher::Event::Delete((*gone).clone()));
                            named = Some(slice_name);
                        }
                    }
                }
                dirty
                    .entry(("default".to_owned(), name))
                    .or_default()
                    .extend(named);
            }
            if t.partial(&dirty, &services, &slices, None).is_some() {
                partial += 1;
            } else {
                fallbacks += 1;
                t.full(&services, &slices, None);
            }
            let all_services = services.state();
            let all_slices = slices.state();
            let whole = translate::translate(
                all_services.iter().map(AsRef::as_ref),
                all_slices.iter().map(AsRef::as_ref),
                &node,
                &Options::default(),
            );
            assert_eq!(t.state, whole.state, "seed {seed}: diverged at step {step}");
            assert_eq!(
                t.health_checks, whole.health_checks,
                "seed {seed}: health checks diverged at step {step}"
            );
        }
        assert!(
            partial > 500 && fallbacks > 20,
            "both paths exercised: {partial} partial, {fallbacks} whole"
        );
    }
}
