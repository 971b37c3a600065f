//! `--services-file`: Kubernetes objects from a file, watched for changes.
//!
//! The file is read whole, parsed, validated and translated; any error
//! rejects the whole file (with the file, object and field named) and the
//! state programmed before stays as it was. Edits are noticed through
//! inotify on the file's directory (so editors that replace the file by a
//! rename are seen too), and SIGHUP forces a reload.
//!
//! The parser of such files, [`parse`] into [`Objects`] or a [`ParseError`],
//! lives here because this source is its only user (the API source gets
//! typed objects from the API server).

mod parse;
#[cfg(test)]
mod tests;

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, ModifyKind},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use xxhash_rust::xxh3::xxh3_128;

use k8s_openapi::api::core::v1::Node;

use super::{Published, Publisher, Update};
use crate::{
    metrics::{Metrics, SourceLabels},
    model::{DesiredState, HealthChecks},
    node_addresses,
    translate::{self, NodeContext, Options, Problem},
};

pub use self::parse::{Objects, ParseError, parse};

/// How long a file that does not parse right after a change is given to
/// finish being written before it is reported as invalid.
const SETTLE: Duration = Duration::from_millis(100);

/// Why a file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not UTF-8 text: {source}", path.display())]
    NotText {
        path: PathBuf,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error(transparent)]
    Parse(#[from] Box<ParseError>),
    #[error("{}", invalid_message(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    #[error(
        "{}: {count} Node objects and no --node-name: name the one this node is (or keep only it)",
        path.display()
    )]
    WhichNode { path: PathBuf, count: usize },
    #[error("failed to watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Whether an event can change what the file holds. Reads (ours
/// included: inotify reports opens and closes for reading too) do not, and
/// must not trigger another read.
fn changes_content(kind: EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => {
            !matches!(kind, EventKind::Modify(ModifyKind::Metadata(_)))
        }
        EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Any => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

fn invalid_message(path: &Path, problems: &[Problem]) -> String {
    let mut s = format!("{}: {} invalid object(s): ", path.display(), problems.len());
    for (i, p) in problems.iter().take(5).enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        let _ = write!(s, "{p}");
    }
    if problems.len() > 5 {
        let _ = write!(s, "; and {} more", problems.len() - 5);
    }
    s
}

/// What the last read of the file gave.
#[derive(PartialEq, Eq)]
enum Seen {
    /// Content, by its 128-bit XXH3 digest: a copy of a file of 100,000
    /// Services would be 180 MiB held for a comparison.
    Content(u128),
    ReadError(std::io::ErrorKind),
}

/// Reads, parses and translates one file.
pub struct FileSource {
    pub path: PathBuf,
    /// `--node-name`: picks this node's Node object among the file's.
    pub node_name: Option<String>,
    pub options: Options,
}

/// What a file says.
#[derive(Debug)]
pub struct Loaded {
    pub state: DesiredState,
    /// The primary addresses of this node's Node object in the file (empty
    /// without one: node ports then answer on the local addresses).
    pub node_ips: Vec<IpAddr>,
    /// The `healthCheckNodePort`s this node answers.
    pub health_checks: HealthChecks,
}

impl FileSource {
    /// Loads the file into a desired state.
    ///
    /// # Errors
    /// When the file cannot be read, does not parse, or holds any object
    /// that cannot be used.
    pub fn load(&self) -> Result<Loaded, Error> {
        let bytes = std::fs::read(&self.path).map_err(|source| Error::Read {
            path: self.path.clone(),
            source,
        })?;
        self.load_bytes(&bytes)
    }

    /// This node's Node object among the file's: the one named
    /// `--node-name`, or without that name the only one.
    fn this_node<'a>(&self, nodes: &'a [Node]) -> Result<Option<&'a Node>, Error> {
        match &self.node_name {
            Some(name) => Ok(nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(name))),
            None if nodes.len() > 1 => Err(Error::WhichNode {
                path: self.path.clone(),
                count: nodes.len(),
            }),
            None => Ok(nodes.first()),
        }
    }

    fn load_bytes(&self, bytes: &[u8]) -> Result<Loaded, Error> {
        let text = std::str::from_utf8(bytes).map_err(|source| Error::NotText {
            path: self.path.clone(),
            source,
        })?;
        let started = Instant::now();
        let objects = parse(text, &self.path).map_err(Box::new)?;
        let parsed = started.elapsed();
        let node = self.this_node(&objects.nodes)?;
        // Without --node-name, the file's only Node names this node.
        let node_name = self
            .node_name
            .clone()
            .or_else(|| node.and_then(|n| n.metadata.name.clone()));
        let node_ips = node.map(node_addresses::primary_ips).unwrap_or_default();
        let t = translate::translate(
            &objects.services,
            &objects.endpoint_slices,
            &NodeContext::of(node_name, node),
            &self.options,
        );
        let (services, endpoint_slices) = (objects.services.len(), objects.endpoint_slices.len());
        // Freeing 100,000s of objects takes tens of milliseconds: not on
        // the way to the maps.
        std::thread::spawn(move || {
            drop(objects);
            crate::memory::release_free_memory();
        });
        tracing::debug!(
            parse_ms = parsed.as_secs_f64() * 1e3,
            translate_ms = started.elapsed().saturating_sub(parsed).as_secs_f64() * 1e3,
            services,
            endpoint_slices,
            "parsed and translated services file"
        );
        if t.problems.is_empty() {
            Ok(Loaded {
                state: t.state,
                node_ips,
                health_checks: t.health_checks,
            })
        } else {
            Err(Error::Invalid {
                path: self.path.clone(),
                problems: t.problems,
            })
        }
    }

    /// Watches the file's directory (editors replace the file by a rename):
    /// the receiver gets the time of each event that can change the file.
    fn watch(&self) -> Result<(RecommendedWatcher, mpsc::UnboundedReceiver<Instant>), Error> {
        let (events_tx, events) = mpsc::unbounded_channel::<Instant>();
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        let name = self.path.file_name().map(ToOwned::to_owned);
        let watch_error = |source| Error::Watch {
            path: dir.clone(),
            source,
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res
                && changes_content(event.kind)
                && event.paths.iter().any(|p| p.file_name() == name.as_deref())
            {
                let _ = events_tx.send(Instant::now());
            }
        })
        .map_err(watch_error)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        Ok((watcher, events))
    }

    /// Publishes the file's state now and after every change, forever.
    ///
    /// # Errors
    /// When the file's directory cannot be watched.
    pub async fn run(self, tx: Publisher, metrics: Arc<Metrics>) -> Result<(), Error> {
        let labels = SourceLabels {
            source: "file".to_owned(),
        };
        let (_watcher, mut events) = self.watch()?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::Watch {
            path: self.path.clone(),
            source: notify::Error::io(e),
        })?;

        let mut last: Option<Seen> = None;
        // Content that failed before its grace period (its digest), with
        // its error: read the same again, it is not parsed again.
        let mut failed: Option<(u128, Error)> = None;
        let mut noticed = Instant::now();
        let mut force = true;
        // Whether the current content already had its grace period.
        let mut settled = false;
        loop {
            match std::fs::read(&self.path).map(|bytes| {
                let digest = xxh3_128(&bytes);
                (bytes, digest)
            }) {
                Ok((_, digest)) if !force && last == Some(Seen::Content(digest)) => {}
                Ok((bytes, digest)) => {
                    let result = match failed.take() {
                        Some((before, error)) if before == digest => Err(error),
                        // Parsing a large file takes a while: off the async
                        // workers, so /metrics and /readyz keep answering.
                        _ => tokio::task::block_in_place(|| self.load_bytes(&bytes)),
                    };
                    match result {
                        Ok(Loaded {
                            state,
                            node_ips,
                            health_checks,
                        }) => {
                            tracing::info!(path = %self.path.display(), services = state.len(), "loaded services file");
                            metrics.source_updates.get_or_create(&labels).inc();
                            metrics.source_stale.get_or_create(&labels).set(0);
                            // The node's addresses first: the node ports
                            // of the state answer on them.
                            let updates = [
                                Published::NodeIps(node_ips),
                                Published::HealthChecks(health_checks),
                                Published::Full(state),
                            ];
                            for change in updates {
                                if tx.send(Update { change, noticed }).is_err() {
                                    return Ok(()); // The agent is shutting down.
                                }
                            }
                        }
                        // Read at once after a change, the file may be half
                        // written (an editor or a copy that is not a rename):
                        // give the writer a moment and read again before
                        // calling it invalid.
                        Err(e) if !settled => {
                            settled = true;
                            failed = Some((digest, e));
                            tokio::time::sleep(SETTLE).await;
                            while events.try_recv().is_ok() {}
                            force = true;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!("{e}; keeping the state programmed before");
                            metrics.source_errors.get_or_create(&labels).inc();
                        }
                    }
                    last = Some(Seen::Content(digest));
                }
                // The same failure again (the file is still missing): said once.
                Err(source)
                    if !force
                        && matches!(&last, Some(Seen::ReadError(kind)) if *kind == source.kind()) =>
                    {}
                Err(source) => {
                    last = Some(Seen::ReadError(source.kind()));
                    let e = Error::Read {
                        path: self.path.clone(),
                        source,
                    };
                    tracing::error!("{e}; keeping the state programmed before");
                    metrics.source_errors.get_or_create(&labels).inc();
                    metrics.source_stale.get_or_create(&labels).set(1);
                }
            }
            force = false;
            settled = false;
            tokio::select! {
                Some(at) = events.recv() => {
                    noticed = at;
                    // Read at once: an atomic replace (write and rename, as
                    // kubectl, config management and most editors do) is
                    // complete when it is seen.
                    while events.try_recv().is_ok() {}
                }
                _ = hup.recv() => {
                    tracing::info!(path = %self.path.display(), "SIGHUP: reloading");
                    noticed = Instant::now();
                    force = true;
                }
            }
        }
    }
}
