//! Sources of the desired state: a file of Kubernetes objects, or the
//! Kubernetes API. Both translate with `crate::translate` and only publish
//! whole desired states; the sync loop does the rest.

pub mod file;
pub mod kube;

use std::{sync::Arc, time::Instant};

use tokio::sync::watch;

use crate::model::DesiredState;

/// A desired state published by a source.
#[derive(Debug)]
pub struct Update {
    pub state: DesiredState,
    /// When the change that produced it was noticed (for latency metrics).
    pub noticed: Instant,
}

/// Where sources publish; the newest state wins (bursts coalesce).
pub type Publisher = watch::Sender<Option<Arc<Update>>>;
