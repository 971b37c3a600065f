//! The seam between the sync loop and whatever holds the programmed state:
//! the BPF maps (`crate::bpf::dataplane::BpfDataplane`) or, in unit tests,
//! memory ([`MemoryDataplane`]).

use std::{fmt, sync::Arc};

use crate::model::{DesiredState, Frontend, ServiceEntry, ServicePortName};

/// One change for the dataplane to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// Program this frontend as `entry` (new, or different from before).
    Upsert(Frontend, &'a Arc<ServiceEntry>),
    /// Stop translating this frontend.
    Remove(Frontend),
}

impl Change<'_> {
    /// The frontend this change is about.
    #[must_use]
    pub const fn frontend(&self) -> Frontend {
        match *self {
            Self::Upsert(fe, _) | Self::Remove(fe) => fe,
        }
    }
}

/// Why a service could not be programmed. The rest still is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Every service id is in use (`--max-services`).
    ServicesFull { capacity: u32 },
    /// No free run of backend slots long enough (`--max-backends`).
    BackendsFull {
        needed: u32,
        free: u32,
        capacity: u32,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServicesFull { capacity } => write!(
                f,
                "the service table is full ({capacity} service ports); raise --max-services"
            ),
            Self::BackendsFull {
                needed,
                free,
                capacity,
            } => write!(
                f,
                "the backend table has no room for {needed} backends ({free} of {capacity} slots free); raise --max-backends"
            ),
        }
    }
}

/// A service left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub frontend: Frontend,
    pub name: ServicePortName,
    pub reason: RejectReason,
}

/// What one [`Dataplane::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub upserted: usize,
    pub removed: usize,
    pub backends_written: usize,
    pub rejected: Vec<Rejected>,
}

/// How full the tables are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub services: u32,
    pub services_capacity: u32,
    /// Backend slots of the programmed services (slots waiting to be
    /// recycled count as free: an allocation that needs them waits for them).
    pub backends: u32,
    pub backends_capacity: u32,
}

/// Holds the programmed state and changes it safely.
pub trait Dataplane {
    /// The error of a failed apply (the kernel refused an operation).
    type Error: std::error::Error + Send + Sync + 'static;

    /// What is programmed now.
    fn applied(&self) -> &DesiredState;

    /// Applies `changes`. A change that does not fit is rejected (reported,
    /// the previous state of that frontend kept) and the others still apply.
    /// When this returns, no new connection can reach a backend that the
    /// changes removed.
    ///
    /// # Errors
    /// When the kernel refuses an operation; what was applied before the
    /// failure stays applied and consistent.
    fn apply(&mut self, changes: &[Change<'_>]) -> Result<ApplyReport, Self::Error>;

    /// Table usage, for metrics.
    fn usage(&self) -> Usage;
}

/// The desired state as the dataplane will hold it: a service's backends
/// beyond the dataplane's capacity are its problem, not the diff's.
/// The changes that turn `applied` into `desired`: removals first (so the
/// room they free can serve the upserts), then new and changed services.
#[must_use]
pub fn diff<'a>(applied: &DesiredState, desired: &'a DesiredState) -> Vec<Change<'a>> {
    let mut changes: Vec<Change<'a>> = applied
        .keys()
        .filter(|fe| !desired.contains_key(fe))
        .map(|fe| Change::Remove(*fe))
        .collect();
    changes.extend(
        desired
            .iter()
            .filter(|(fe, entry)| applied.get(fe) != Some(entry))
            .map(|(fe, entry)| Change::Upsert(*fe, entry)),
    );
    changes
}

/// Like [`diff`], but only for the frontends in `touched` (everything else is
/// known to be unchanged): the cost of a change to a few Services does not
/// grow with the number of Services.
#[must_use]
pub fn diff_touched<'a>(
    applied: &DesiredState,
    desired: &'a DesiredState,
    touched: &std::collections::BTreeSet<Frontend>,
) -> Vec<Change<'a>> {
    let mut changes: Vec<Change<'a>> = touched
        .iter()
        .filter(|fe| applied.contains_key(fe) && !desired.contains_key(fe))
        .map(|fe| Change::Remove(*fe))
        .collect();
    changes.extend(touched.iter().filter_map(|fe| {
        let entry = desired.get(fe)?;
        (applied.get(fe) != Some(entry)).then_some(Change::Upsert(*fe, entry))
    }));
    changes
}

/// An in-memory dataplane with capacities, for testing the sync logic.
#[derive(Debug, Default)]
pub struct MemoryDataplane {
    pub state: DesiredState,
    pub services_capacity: u32,
    pub backends_capacity: u32,
    /// Every apply call, for assertions.
    pub applies: Vec<ApplyReport>,
}

/// [`MemoryDataplane`] never fails.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub enum Never {}

impl MemoryDataplane {
    #[must_use]
    pub fn new(services_capacity: u32, backends_capacity: u32) -> Self {
        Self {
            services_capacity,
            backends_capacity,
            ..Self::default()
        }
    }

    fn backends_used(&self) -> u32 {
        let n: usize = self.state.values().map(|e| e.backends.len()).sum();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl Dataplane for MemoryDataplane {
    type Error = Never;

    fn applied(&self) -> &DesiredState {
        &self.state
    }

    fn apply(&mut self, changes: &[Change<'_>]) -> Result<ApplyReport, Never> {
        let mut report = ApplyReport::default();
        for change in changes {
            match *change {
                Change::Upsert(fe, entry) => {
                    let old = self.state.get(&fe).map_or(0, |e| e.backends.len());
                    let is_new = !self.state.contains_key(&fe);
                    let needed = u32::try_from(entry.backends.len()).unwrap_or(u32::MAX);
                    let used = self.backends_used() - u32::try_from(old).unwrap_or(0);
                    if is_new
                        && u32::try_from(self.state.len()).unwrap_or(u32::MAX)
                            >= self.services_capacity
                    {
                        report.rejected.push(Rejected {
                            frontend: fe,
                            name: entry.name.clone(),
                            reason: RejectReason::ServicesFull {
                                capacity: self.services_capacity,
                            },
                        });
                        continue;
                    }
                    if used + needed > self.backends_capacity {
                        report.rejected.push(Rejected {
                            frontend: fe,
                            name: entry.name.clone(),
                            reason: RejectReason::BackendsFull {
                                needed,
                                free: self.backends_capacity - used,
                                capacity: self.backends_capacity,
                            },
                        });
                        continue;
                    }
                    report.backends_written += entry.backends.len();
                    self.state.insert(fe, entry.clone());
                    report.upserted += 1;
                }
                Change::Remove(fe) => {
                    if self.state.remove(&fe).is_some() {
                        report.removed += 1;
                    }
                }
            }
        }
        self.applies.push(report.clone());
        Ok(report)
    }

    fn usage(&self) -> Usage {
        Usage {
            services: u32::try_from(self.state.len()).unwrap_or(u32::MAX),
            services_capacity: self.services_capacity,
            backends: self.backends_used(),
            backends_capacity: self.backends_capacity,
        }
    }
}
