//! Sources of the desired state: a file of Kubernetes objects, or the
//! Kubernetes API. Both translate with `crate::translate` and publish
//! [`Update`]s: a whole state, or (the API source, for changes to a few
//! Services) only the frontends that changed. The sync loop keeps the
//! desired state, merges what queued up, and applies the difference.

pub mod file;
pub mod kube;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use tokio::sync::mpsc;

use crate::model::{DesiredState, Frontend, ServiceEntry};

/// What a source publishes.
#[derive(Debug)]
pub enum Published {
    /// Everything: frontends not in it are to be removed.
    Full(DesiredState),
    /// These frontends only: `None` removes one.
    Delta(BTreeMap<Frontend, Option<ServiceEntry>>),
}

/// A change and when its cause was noticed (for latency metrics).
#[derive(Debug)]
pub struct Update {
    pub change: Published,
    pub noticed: Instant,
}

/// Where sources publish.
pub type Publisher = mpsc::UnboundedSender<Update>;

/// The desired state as the sources have described it so far, and what
/// changed since the last sync.
#[derive(Debug, Default)]
pub struct Desired {
    pub state: DesiredState,
    /// Whether a whole state has arrived yet (nothing is synced before).
    pub complete: bool,
    /// Frontends changed since the last sync; `None`: compare everything.
    pub touched: Option<BTreeSet<Frontend>>,
    /// The earliest cause among the merged updates.
    pub noticed: Option<Instant>,
}

impl Desired {
    /// Merges one update.
    pub fn merge(&mut self, update: Update) {
        self.noticed = Some(
            self.noticed
                .map_or(update.noticed, |n| n.min(update.noticed)),
        );
        match update.change {
            Published::Full(state) => {
                self.state = state;
                self.complete = true;
                self.touched = None;
            }
            Published::Delta(delta) => {
                for (frontend, entry) in delta {
                    match entry {
                        Some(entry) => self.state.insert(frontend, entry),
                        None => self.state.remove(&frontend),
                    };
                    if let Some(touched) = &mut self.touched {
                        touched.insert(frontend);
                    }
                }
            }
        }
    }

    /// Takes what changed since the last sync (and resets it).
    pub fn take_touched(&mut self) -> (Option<BTreeSet<Frontend>>, Option<Instant>) {
        (self.touched.replace(BTreeSet::new()), self.noticed.take())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        time::Instant,
    };

    use super::{Desired, Published, Update};
    use crate::model::{Algorithm, DesiredState, Frontend, Protocol, ServiceEntry};

    fn fe(port: u16) -> Frontend {
        Frontend {
            ip: "10.96.0.1".parse().expect("ip"),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn entry() -> ServiceEntry {
        ServiceEntry {
            name: crate::model::ServicePortName::default(),
            algorithm: Algorithm::Random,
            affinity_timeout_s: None,
            backends: vec![],
        }
    }

    #[test]
    fn deltas_merge_into_the_last_full_state_and_are_tracked() {
        let mut d = Desired::default();
        let full: DesiredState = [(fe(1), entry()), (fe(2), entry())].into();
        d.merge(Update {
            change: Published::Full(full),
            noticed: Instant::now(),
        });
        assert!(d.complete);
        let (touched, noticed) = d.take_touched();
        assert_eq!(touched, None, "after a full state everything is compared");
        assert!(noticed.is_some());

        d.merge(Update {
            change: Published::Delta(BTreeMap::from([(fe(1), None), (fe(3), Some(entry()))])),
            noticed: Instant::now(),
        });
        let (touched, _) = d.take_touched();
        assert_eq!(touched, Some([fe(1), fe(3)].into()));
        assert_eq!(
            d.state.keys().copied().collect::<Vec<_>>(),
            vec![fe(2), fe(3)]
        );
        assert_eq!(
            d.take_touched().0,
            Some(BTreeSet::default()),
            "reset after taking"
        );
    }

    #[test]
    fn a_full_state_after_deltas_compares_everything() {
        let mut d = Desired::default();
        d.merge(Update {
            change: Published::Delta(BTreeMap::from([(fe(1), Some(entry()))])),
            noticed: Instant::now(),
        });
        assert!(!d.complete, "deltas alone are not a complete state");
        d.merge(Update {
            change: Published::Full(DesiredState::new()),
            noticed: Instant::now(),
        });
        assert_eq!(d.take_touched().0, None);
    }
}
