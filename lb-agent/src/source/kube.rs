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
//! - Events are coalesced for a few milliseconds, then the whole state is
//!   translated and published; the sync loop applies only the difference.
//! - While the API server cannot be reached the programmed state stays, the
//!   `lb_source_stale{source="kubernetes"}` gauge is 1 and a log line says
//!   so; the watchers retry with backoff and catch up when it is back.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt as _};
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
use tokio::sync::mpsc;

use super::{Publisher, Update};
use crate::{
    metrics::{Metrics, SourceLabels},
    translate::{self, NodeContext, Options},
};

/// Label of the node's zone, for topology hints.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// How long a burst of events may grow before it is published.
const COALESCE: Duration = Duration::from_millis(5);

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

/// What a watcher (or the recovery probe) reports to the publisher.
enum Signal {
    Changed(Instant),
    Failed(Watch, String),
    /// The API server answers again (a resumed watch may have nothing to
    /// say, so reachability is probed separately).
    Recovered,
}

impl KubeSource {
    /// Runs the reflectors and publishes every change. Returns only if all
    /// watch streams end (they retry forever).
    pub async fn run(self, tx: Publisher, metrics: Arc<Metrics>) {
        let labels = SourceLabels {
            source: "kubernetes".to_owned(),
        };
        let selector = label_selector(self.options.service_proxy_name.as_deref());
        let config = watcher::Config::default().labels(&selector);
        let (signals, mut rx) = mpsc::unbounded_channel();

        let (services, writer) = reflector::store::<Service>();
        let stream =
            watcher(Api::<Service>::all(self.client.clone()), config.clone()).default_backoff();
        tokio::spawn(drive(
            Watch::Services,
            stream.reflect(writer),
            signals.clone(),
        ));

        let (slices, writer) = reflector::store::<EndpointSlice>();
        let stream =
            watcher(Api::<EndpointSlice>::all(self.client.clone()), config).default_backoff();
        tokio::spawn(drive(
            Watch::Slices,
            stream.reflect(writer),
            signals.clone(),
        ));

        let node_store = self.node_name.as_ref().map(|name| {
            let (store, writer) = reflector::store::<Node>();
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let stream = watcher(Api::<Node>::all(self.client.clone()), config).default_backoff();
            tokio::spawn(drive(Watch::Node, stream.reflect(writer), signals.clone()));
            store
        });
        let probe = Prober {
            client: self.client.clone(),
            signals: signals.clone(),
            running: Arc::default(),
        };
        drop(signals);
        let note = |s: &Signal, stale: &mut bool| note(s, stale, &metrics, &labels, &probe);

        // Nothing is published before every store has its first list.
        tracing::info!(selector = %selector, node = ?self.node_name, "waiting for the first list of Services, EndpointSlices and Node");
        let ready = async {
            let _ = services.wait_until_ready().await;
            let _ = slices.wait_until_ready().await;
            if let Some(store) = &node_store {
                let _ = store.wait_until_ready().await;
            }
        };
        tokio::pin!(ready);
        let mut stale = false;
        loop {
            tokio::select! {
                () = &mut ready => break,
                signal = rx.recv() => match signal {
                    Some(s) => note(&s, &mut stale),
                    None => return,
                },
            }
        }
        tracing::info!(
            services = services.len(),
            endpoint_slices = slices.len(),
            "first list complete"
        );

        let mut reported: HashSet<String> = HashSet::new();
        let mut noticed = Instant::now();
        loop {
            // Translating a large cluster takes a while: off the async
            // workers, so the watches and /metrics keep going meanwhile.
            tokio::task::block_in_place(|| {
                self.publish(
                    &services,
                    &slices,
                    node_store.as_ref(),
                    noticed,
                    &tx,
                    &metrics,
                    &labels,
                    &mut reported,
                )
            });
            // Wait for the next change, then let a burst settle briefly.
            let Some(first) = rx.recv().await else { return };
            note(&first, &mut stale);
            noticed = match first {
                Signal::Changed(at) => at,
                Signal::Failed(..) | Signal::Recovered => continue,
            };
            tokio::time::sleep(COALESCE).await;
            while let Ok(s) = rx.try_recv() {
                note(&s, &mut stale);
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; grouping would only rename them"
    )]
    fn publish(
        &self,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        node: Option<&Store<Node>>,
        noticed: Instant,
        tx: &Publisher,
        metrics: &Metrics,
        labels: &SourceLabels,
        reported: &mut HashSet<String>,
    ) {
        let node_ctx = NodeContext {
            node_name: self.node_name.clone(),
            zone: node
                .and_then(|s| s.state().into_iter().next())
                .and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned()),
        };
        let services = services.state();
        let slices = slices.state();
        let t = translate::translate(
            services.iter().map(AsRef::as_ref),
            slices.iter().map(AsRef::as_ref),
            &node_ctx,
            &self.options,
        );
        // Warn once per distinct problem; the rest of the state still goes out.
        let now: HashSet<String> = t.problems.iter().map(ToString::to_string).collect();
        for p in now.difference(reported) {
            tracing::warn!("skipping: {p}");
            metrics.source_errors.get_or_create(labels).inc();
        }
        *reported = now;
        metrics.source_updates.get_or_create(labels).inc();
        tx.send_replace(Some(Arc::new(Update {
            state: t.state,
            noticed,
        })));
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

/// Polls `/version` after a failure until the API server answers.
struct Prober {
    client: Client,
    signals: mpsc::UnboundedSender<Signal>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl Prober {
    fn start(&self) {
        use std::sync::atomic::Ordering;
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (client, signals, running) = (
            self.client.clone(),
            self.signals.clone(),
            Arc::clone(&self.running),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.apiserver_version().await.is_ok() {
                    running.store(false, Ordering::SeqCst);
                    let _ = signals.send(Signal::Recovered);
                    return;
                }
            }
        });
    }
}

/// Consumes one reflected watch stream, turning events into signals.
async fn drive<K, S>(watch: Watch, stream: S, signals: mpsc::UnboundedSender<Signal>)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    tokio::pin!(stream);
    while let Some(event) = stream.next().await {
        let signal = match event {
            Ok(_) => Signal::Changed(Instant::now()),
            Err(e) => Signal::Failed(watch, e.to_string()),
        };
        if signals.send(signal).is_err() {
            return;
        }
    }
}
