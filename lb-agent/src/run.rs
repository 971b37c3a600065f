//! `lb-agent run`: load and attach the data path, adopt what an earlier run
//! programmed, then keep the maps equal to what the source says.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use lb_common::meta::FEATURE_SOCK_DESTROY;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

/// How long after a failed sync it is tried again.
const SYNC_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

use crate::{
    bpf::{
        conntrack,
        dataplane::BpfDataplane,
        loader::{self, Capacity, PinLayout},
        tc::{AttachMode, Devices},
    },
    dataplane::{Dataplane as _, Usage},
    health::Health,
    metrics::{self, Metrics},
    model::Algorithm,
    node_addresses::{self, NodeAddresses, NodePortAddresses},
    sockets::{CloseSockets, Closer},
    source::{
        Desired, Publisher, Update,
        file::FileSource,
        kube::{self as kube_source, Connection, KubeSource},
    },
    sync::Syncer,
    system,
    translate::Options,
};

/// Everything `run` needs, from the command line.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Read objects from this file; without it, from the Kubernetes API.
    pub services_file: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
    pub bpffs: PathBuf,
    pub algorithm: Algorithm,
    pub metrics_addr: SocketAddr,
    /// kube-proxy's `/healthz` and `/livez`; `None`: not served.
    pub healthz_addr: Option<SocketAddr>,
    pub capacity: Capacity,
    pub node_name: Option<String>,
    pub service_proxy_name: Option<String>,
    /// Which node addresses answer on node ports.
    pub nodeport_addresses: NodePortAddresses,
    /// Which sockets to close when their backend leaves the service.
    pub close_sockets: CloseSockets,
    /// Directories of pinned network namespaces to search for them.
    pub netns_dirs: Vec<PathBuf>,
    /// Devices for the tc programs.
    pub devices: Devices,
    /// How to attach them.
    pub tc_attach: AttachMode,
}

impl RunConfig {
    /// Process-wide settings for this source that must precede any thread
    /// (call before the runtime is built): the Kubernetes source allocates
    /// from one malloc arena (see `memory::one_arena`).
    pub fn before_threads(&self) {
        if self.services_file.is_none() {
            crate::memory::one_arena();
        }
    }
}

/// Runs until SIGTERM or SIGINT. The data path stays attached afterwards.
///
/// # Errors
/// When the data path cannot be loaded or the metrics address bound.
pub async fn run(cfg: RunConfig) -> Result<()> {
    let cgroup = match &cfg.cgroup {
        Some(p) => p.clone(),
        None => system::cgroup2_root()?,
    };
    let loaded = loader::load(&loader::Config {
        bpffs: cfg.bpffs.clone(),
        cgroup: cgroup.clone(),
        capacity: cfg.capacity,
        default_algorithm: cfg.algorithm,
        devices: cfg.devices.resolve()?,
        tc_attach: cfg.tc_attach,
    })?;
    let (active, adopted_pins, mut ebpf) = (loaded.active, loaded.adopted, loaded.ebpf);
    let can_close = loaded.features.has(FEATURE_SOCK_DESTROY);
    forward_program_logs(&mut ebpf);
    let (dataplane, adopted) = BpfDataplane::adopt(loaded.maps, loaded.barrier)?;
    tracing::info!(
        cgroup = %cgroup.display(),
        bpffs = %cfg.bpffs.display(),
        adopted_services = adopted.services,
        adopted_backends = adopted.backends,
        devices = %cfg.devices,
        "data path attached{}",
        if adopted_pins { " (adopted pinned maps from an earlier run)" } else { "" }
    );
    for why in &adopted.discarded {
        tracing::warn!("discarded pinned entry: {why}; the next sync rewrites it");
    }

    conntrack::start_collector(&PinLayout::new(&cfg.bpffs), conntrack::Timeouts::default())?;

    let metrics = start_metrics(&cfg, active, &dataplane.usage()).await?;

    let health = Health::start(cfg.healthz_addr)?;
    let closer = start_closer(&cfg, can_close, &metrics)?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let mut desired = start_desired(&cfg, &tx).await?;
    let source = start_source(&cfg, tx, Arc::clone(&metrics)).await?;

    let mut syncer = Syncer::new(dataplane);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // After a failed sync: when to try again (with everything compared).
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            update = rx.recv() => {
                let Some(update) = update else { break };
                health.proxier.queued();
                desired.merge(update);
                // Merge whatever else queued up: one sync for a burst.
                while let Ok(more) = rx.try_recv() {
                    desired.merge(more);
                }
                health.observe(&desired);
            }
            () = retry => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        if desired.complete {
            let failed = sync_once(&mut syncer, &mut desired, &metrics, closer.as_ref());
            retry_at = failed.then(|| tokio::time::Instant::now() + SYNC_RETRY);
            if !failed {
                health.proxier.updated();
            }
        }
        if source.is_finished() {
            break;
        }
    }
    if source.is_finished() {
        match source.await {
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e.into()),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!(
        "exiting; the data path stays attached and keeps translating (`lb-agent cleanup` removes it)"
    );
    drop(ebpf);
    Ok(())
}

/// The agent's metrics, served on `--metrics-addr` from now on.
async fn start_metrics(cfg: &RunConfig, active: u32, usage: &Usage) -> Result<Arc<Metrics>> {
    let mut metrics = Metrics::new();
    metrics.set_features(active);
    metrics
        .add_datapath(&PinLayout::new(&cfg.bpffs))
        .context("cannot export the data-path counters")?;
    let metrics = Arc::new(metrics);
    metrics
        .services_capacity
        .set(i64::from(usage.services_capacity));
    metrics
        .backends_capacity
        .set(i64::from(usage.backends_capacity));
    metrics.services.set(i64::from(usage.services));
    metrics.backends.set(i64::from(usage.backends));
    metrics::serve(cfg.metrics_addr, Arc::clone(&metrics))
        .await
        .with_context(|| {
            format!(
                "cannot serve metrics on {}; pass another --metrics-addr",
                cfg.metrics_addr
            )
        })?;
    Ok(metrics)
}

/// The desired state, empty, with the node's addresses listed and followed
/// from now on (changes arrive on `tx`).
async fn start_desired(cfg: &RunConfig, tx: &Publisher) -> Result<Desired> {
    let local = node_addresses::follow(tx.clone())
        .await
        .context("cannot list or follow the node's addresses (rtnetlink)")?;
    let desired = Desired::new(NodeAddresses {
        mode: cfg.nodeport_addresses.clone(),
        node_ips: None,
        local,
    });
    tracing::info!(
        addresses = ?desired.node_port_addresses(),
        mode = %cfg.nodeport_addresses,
        "node ports answer on these addresses (until a Node object says otherwise)"
    );
    Ok(desired)
}

/// Starts closing the sockets of departed backends, unless the kernel
/// cannot or the user said not to.
fn start_closer(
    cfg: &RunConfig,
    can_close: bool,
    metrics: &Arc<Metrics>,
) -> Result<Option<Closer>> {
    if !can_close || cfg.close_sockets == CloseSockets::None {
        return Ok(None);
    }
    let pin = PinLayout::new(&cfg.bpffs).map(lb_common::map_names::REVNAT);
    Ok(Some(Closer::start(
        &pin,
        cfg.close_sockets,
        cfg.netns_dirs.clone(),
        Arc::clone(metrics),
    )?))
}

/// Forwards what the programs log (aya-log's ring buffer; only events that
/// should never happen) into the agent's log, while the agent runs.
fn forward_program_logs(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!(error = %e, "program logs unavailable");
            return;
        }
    };
    // SAFETY: the logger owns the ring buffer's descriptor and the AsyncFd
    // owns the logger, so the descriptor stays open while registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        return;
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Starts the configured source on its own task.
async fn start_source(
    cfg: &RunConfig,
    tx: Publisher,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let options = Options {
        default_algorithm: cfg.algorithm,
        service_proxy_name: cfg.service_proxy_name.clone(),
    };
    if let Some(path) = &cfg.services_file {
        let source = FileSource {
            path: path.clone(),
            node_name: cfg.node_name.clone(),
            options,
        };
        return Ok(tokio::spawn(async move {
            source.run(tx, metrics).await.map_err(anyhow::Error::from)
        }));
    }
    let client = kube_source::client(&Connection {
        kubeconfig: cfg.kubeconfig.clone(),
    })
    .await?;
    if cfg.node_name.is_none() {
        tracing::warn!(
            "no --node-name (or NODE_NAME): internalTrafficPolicy: Local services refuse connections and topology hints are ignored"
        );
    }
    let source = KubeSource {
        client,
        node_name: cfg.node_name.clone(),
        options,
    };
    Ok(tokio::spawn(async move {
        source.run(tx, metrics).await;
        Ok(())
    }))
}

/// Syncs what changed; returns whether it failed (and must be retried).
fn sync_once(
    syncer: &mut Syncer<BpfDataplane>,
    desired: &mut Desired,
    metrics: &Metrics,
    closer: Option<&Closer>,
) -> bool {
    let (touched, noticed) = desired.take_touched();
    let result = tokio::task::block_in_place(|| syncer.sync(&desired.state, touched.as_ref()));
    match result {
        Ok(outcome) => {
            // A whole state replaced the one before: that one, and what
            // the source parsed on the way, are free now.
            if touched.is_none() {
                tokio::task::spawn_blocking(crate::memory::release_free_memory);
            }
            if let Some(closer) = closer {
                closer.submit(&outcome.departed);
            }
            metrics.syncs.inc();
            metrics
                .sync_duration
                .observe(outcome.duration.as_secs_f64());
            if let Some(noticed) = noticed.filter(|_| outcome.changes > 0) {
                metrics
                    .update_latency
                    .observe(noticed.elapsed().as_secs_f64());
            }
            let rejected_new = outcome.report.rejected.len() as u64;
            metrics.rejections.inc_by(rejected_new);
            metrics
                .rejected
                .set(i64::try_from(outcome.rejected_now).unwrap_or(i64::MAX));
            let usage = syncer.dataplane().usage();
            metrics.services.set(i64::from(usage.services));
            metrics.backends.set(i64::from(usage.backends));
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            metrics.last_sync.set(now.as_secs_f64());
            if let Err(e) = syncer.dataplane_mut().record_sync(now) {
                tracing::warn!(error = %e, "failed to record the sync in lb_meta");
            }
            if !metrics.ready.swap(true, Ordering::Relaxed) {
                tracing::info!("first full state programmed: ready");
            }
            false
        }
        Err(e) => {
            metrics.sync_errors.inc();
            tracing::error!(error = %e, "sync failed; retrying in {SYNC_RETRY:?}");
            // Compare everything next time: what failed may be anywhere.
            desired.touched = None;
            true
        }
    }
}
