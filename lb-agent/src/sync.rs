//! Diffing the desired state against what is programmed, and applying it.
//!
//! Sources publish whole desired states; [`Syncer::sync`] turns the newest
//! one into the smallest set of changes and hands them to the dataplane.
//! Unchanged services are never touched, so a restart over adopted maps, or
//! a reload of an unchanged file, costs nothing and disturbs nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    dataplane::{ApplyReport, Change, Dataplane, RejectReason, Usage, diff, diff_touched},
    model::{DesiredState, Frontend},
};

/// A backend that left a frontend's programmed set (the frontend itself
/// may be gone): sockets the data path sent there for it are stale.
pub type Departure = (Frontend, SocketAddr);

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub report: ApplyReport,
    /// Number of changes handed to the dataplane.
    pub changes: usize,
    pub duration: Duration,
    /// Services that do not fit, now (not only those new in this sync).
    pub rejected_now: usize,
    /// Backends that left a frontend in this sync, as programmed (a change
    /// that was rejected removed nothing).
    pub departed: Vec<Departure>,
}

/// Owns the dataplane and remembers which services it had to reject.
pub struct Syncer<D> {
    dataplane: D,
    rejected: BTreeMap<Frontend, RejectReason>,
}

impl<D: Dataplane> Syncer<D> {
    pub const fn new(dataplane: D) -> Self {
        Self {
            dataplane,
            rejected: BTreeMap::new(),
        }
    }

    #[must_use]
    pub const fn dataplane(&self) -> &D {
        &self.dataplane
    }

    pub const fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// Services currently left out for lack of room, with the reason.
    #[must_use]
    pub const fn rejected(&self) -> &BTreeMap<Frontend, RejectReason> {
        &self.rejected
    }

    /// Brings the dataplane to `desired`, comparing only `touched` frontends
    /// when given (plus the ones rejected earlier, which are retried on
    /// every sync). A service that does not fit is logged once when it
    /// starts not fitting (and once when it fits again).
    ///
    /// # Errors
    /// When the dataplane fails; what was applied stays applied.
    pub fn sync(
        &mut self,
        desired: &DesiredState,
        touched: Option<&BTreeSet<Frontend>>,
    ) -> Result<SyncOutcome, D::Error> {
        let started = Instant::now();
        // Rejected services that cannot fit yet stay rejected without being
        // tried again: with thousands of them, trying each on every change
        // would make every change cost as much.
        let mut kept = BTreeMap::new();
        let changes = match touched {
            None => diff(self.dataplane.applied(), desired),
            Some(touched) => {
                kept = self.rejected.clone();
                let mut retry = take_fitting(&mut kept, &self.dataplane.usage());
                kept.retain(|frontend, _| !touched.contains(frontend));
                retry.extend(touched);
                diff_touched(self.dataplane.applied(), desired, &retry)
            }
        };
        if changes.is_empty() {
            self.rejected = kept;
            return Ok(SyncOutcome {
                duration: started.elapsed(),
                rejected_now: self.rejected.len(),
                ..SyncOutcome::default()
            });
        }
        let mut before = BTreeMap::new();
        self.remember_backends(&changes, &mut before);
        let mut report = self.dataplane.apply(&changes)?;
        let mut applied_changes = changes.len();
        // The room this apply freed may fit services kept aside above.
        let fit = take_fitting(&mut kept, &self.dataplane.usage());
        if !fit.is_empty() {
            let more = diff_touched(self.dataplane.applied(), desired, &fit);
            if !more.is_empty() {
                self.remember_backends(&more, &mut before);
                let second = self.dataplane.apply(&more)?;
                report.upserted += second.upserted;
                report.removed += second.removed;
                report.backends_written += second.backends_written;
                report.rejected.extend(second.rejected);
                applied_changes += more.len();
            }
        }
        let mut rejected_now = kept;
        for r in &report.rejected {
            if !self.rejected.contains_key(&r.frontend) {
                tracing::error!(
                    frontend = %r.frontend,
                    service = %r.name,
                    reason = %r.reason,
                    "service not programmed"
                );
            }
            rejected_now.insert(r.frontend, r.reason.clone());
        }
        for frontend in self.rejected.keys() {
            if !rejected_now.contains_key(frontend)
                && self.dataplane.applied().contains_key(frontend)
            {
                tracing::info!(%frontend, "service programmed after being rejected earlier");
            }
        }
        self.rejected = rejected_now;
        let departed = self.departures(before);
        let outcome = SyncOutcome {
            changes: applied_changes,
            duration: started.elapsed(),
            rejected_now: self.rejected.len(),
            report,
            departed,
        };
        tracing::info!(
            changes = outcome.changes,
            upserted = outcome.report.upserted,
            removed = outcome.report.removed,
            backends_written = outcome.report.backends_written,
            rejected = outcome.rejected_now,
            departed = outcome.departed.len(),
            duration_us = u64::try_from(outcome.duration.as_micros()).unwrap_or(u64::MAX),
            "synced"
        );
        Ok(outcome)
    }
}

impl<D: Dataplane> Syncer<D> {
    /// Notes the programmed backends of each frontend `changes` touch, the
    /// first time it is seen in this sync.
    fn remember_backends(
        &self,
        changes: &[Change<'_>],
        before: &mut BTreeMap<Frontend, Vec<SocketAddr>>,
    ) {
        for fe in changes.iter().map(Change::frontend) {
            if let Some(entry) = self.dataplane.applied().get(&fe) {
                before.entry(fe).or_insert_with(|| entry.backends.clone());
            }
        }
    }

    /// The backends in `before` that the frontend no longer has.
    fn departures(&self, before: BTreeMap<Frontend, Vec<SocketAddr>>) -> Vec<Departure> {
        let mut departed = Vec::new();
        for (fe, old) in before {
            let now: BTreeSet<&SocketAddr> = self
                .dataplane
                .applied()
                .get(&fe)
                .map(|e| e.backends.iter().collect())
                .unwrap_or_default();
            departed.extend(
                old.into_iter()
                    .filter(|b| !now.contains(b))
                    .map(|b| (fe, b)),
            );
        }
        departed
    }
}

/// Takes out of `rejected` the services that could fit in `usage`'s room.
fn take_fitting(
    rejected: &mut BTreeMap<Frontend, RejectReason>,
    usage: &Usage,
) -> BTreeSet<Frontend> {
    let fit: BTreeSet<Frontend> = rejected
        .iter()
        .filter(|(_, reason)| may_fit(reason, usage))
        .map(|(frontend, _)| *frontend)
        .collect();
    rejected.retain(|frontend, _| !fit.contains(frontend));
    fit
}

/// Whether a service rejected for `reason` could fit in the room there is
/// now (it may still not: backend slots may be free but not contiguous).
const fn may_fit(reason: &RejectReason, usage: &Usage) -> bool {
    match reason {
        RejectReason::ServicesFull { .. } => usage.services < usage.services_capacity,
        RejectReason::BackendsFull { needed, .. } => {
            usage.backends_capacity.saturating_sub(usage.backends) >= *needed
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

    use super::Syncer;
    use crate::{
        dataplane::{Change, MemoryDataplane, RejectReason, diff},
        model::{Algorithm, DesiredState, Frontend, Protocol, ServiceEntry, ServicePortName},
    };

    fn fe(last: u8, port: u16) -> Frontend {
        Frontend::new(
            format!("10.96.0.{last}").parse().expect("ip"),
            port,
            Protocol::Tcp,
        )
    }

    fn entry(name: &str, backends: &[&str]) -> Arc<ServiceEntry> {
        Arc::new(ServiceEntry {
            name: ServicePortName {
                namespace: "default".into(),
                name: name.into(),
                port: String::new(),
            },
            kind: crate::model::FrontendKind::ClusterIP,
            algorithm: Algorithm::Random,
            affinity_timeout_s: None,
            backends: backends
                .iter()
                .map(|b| b.parse::<SocketAddr>().expect("addr"))
                .collect(),
            source_ranges: Vec::new(),
        })
    }

    fn state(items: &[(Frontend, Arc<ServiceEntry>)]) -> DesiredState {
        items.iter().cloned().collect()
    }

    #[test]
    fn diff_upserts_new_and_changed_removes_gone_and_skips_equal() {
        let applied = state(&[
            (fe(1, 80), entry("same", &["10.0.0.1:80"])),
            (fe(2, 80), entry("changed", &["10.0.0.2:80"])),
            (fe(3, 80), entry("gone", &["10.0.0.3:80"])),
        ]);
        let desired = state(&[
            (fe(1, 80), entry("same", &["10.0.0.1:80"])),
            (fe(2, 80), entry("changed", &["10.0.0.2:80", "10.0.0.4:80"])),
            (fe(4, 80), entry("new", &[])),
        ]);
        let changes = diff(&applied, &desired);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes.contains(&Change::Upsert(fe(2, 80), &desired[&fe(2, 80)])));
        assert!(changes.contains(&Change::Upsert(fe(4, 80), &desired[&fe(4, 80)])));
        assert!(changes.contains(&Change::Remove(fe(3, 80))));
    }

    #[test]
    fn algorithm_or_affinity_change_is_a_change() {
        let mut changed = (*entry("a", &["10.0.0.1:80"])).clone();
        let applied = state(&[(fe(1, 80), Arc::new(changed.clone()))]);
        changed.algorithm = Algorithm::RoundRobin;
        assert_eq!(
            diff(&applied, &state(&[(fe(1, 80), Arc::new(changed.clone()))])).len(),
            1
        );
        changed.algorithm = Algorithm::Random;
        changed.affinity_timeout_s = Some(10);
        assert_eq!(
            diff(&applied, &state(&[(fe(1, 80), Arc::new(changed))])).len(),
            1
        );
    }

    #[test]
    fn second_sync_of_the_same_state_changes_nothing() {
        let mut syncer = Syncer::new(MemoryDataplane::new(10, 10));
        let desired = state(&[(fe(1, 80), entry("a", &["10.0.0.1:80"]))]);
        let first = syncer.sync(&desired, None).expect("sync");
        assert_eq!(first.report.upserted, 1);
        let second = syncer.sync(&desired, None).expect("sync");
        assert_eq!(second.changes, 0);
        assert_eq!(
            syncer.dataplane().applies.len(),
            1,
            "no apply for an unchanged state"
        );
    }

    #[test]
    fn a_touched_sync_compares_only_the_touched_frontends_and_the_rejected_ones() {
        let mut syncer = Syncer::new(MemoryDataplane::new(10, 2));
        let full = state(&[
            (fe(1, 80), entry("a", &["10.0.0.1:80"])),
            (fe(2, 80), entry("b", &["10.0.0.2:80", "10.0.0.3:80"])),
        ]);
        syncer.sync(&full, None).expect("sync");
        assert_eq!(syncer.rejected().len(), 1, "b does not fit");

        // a changes; the set says so. b is retried without being touched.
        let mut desired = full.clone();
        desired.insert(fe(1, 80), entry("a", &[]));
        let out = syncer
            .sync(&desired, Some(&[fe(1, 80)].into()))
            .expect("sync");
        assert_eq!(out.changes, 2, "a, and the rejected b retried");
        assert!(
            syncer.dataplane().state.contains_key(&fe(2, 80)),
            "b fits now that a has no backends"
        );

        // A change outside the touched set is not looked at.
        desired.insert(fe(3, 80), entry("c", &[]));
        let out = syncer.sync(&desired, Some(&BTreeSet::new())).expect("sync");
        assert_eq!(out.changes, 0);
    }

    #[test]
    fn departures_are_the_backends_a_frontend_lost_as_programmed() {
        let mut syncer = Syncer::new(MemoryDataplane::new(10, 4));
        let first = state(&[
            (fe(1, 80), entry("a", &["10.0.0.1:80", "10.0.0.2:80"])),
            (fe(2, 80), entry("b", &["10.0.0.3:80"])),
            (fe(3, 80), entry("c", &["10.0.0.4:80"])),
        ]);
        let out = syncer.sync(&first, None).expect("sync");
        assert!(out.departed.is_empty(), "nothing was programmed before");

        // a loses .2 and gains .5; b is deleted; c would grow beyond the
        // backend table, so it is rejected and keeps what it had.
        let second = state(&[
            (fe(1, 80), entry("a", &["10.0.0.1:80", "10.0.0.5:80"])),
            (
                fe(3, 80),
                entry("c", &["10.0.0.6:80", "10.0.0.7:80", "10.0.0.8:80"]),
            ),
        ]);
        let out = syncer.sync(&second, None).expect("sync");
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            out.departed,
            vec![
                (fe(1, 80), addr("10.0.0.2:80")),
                (fe(2, 80), addr("10.0.0.3:80"))
            ]
        );
        assert_eq!(syncer.rejected().len(), 1);
        assert!(
            syncer
                .sync(&second, None)
                .expect("sync")
                .departed
                .is_empty()
        );
    }

    #[test]
    fn services_that_do_not_fit_are_rejected_and_the_rest_programmed() {
        let mut syncer = Syncer::new(MemoryDataplane::new(2, 3));
        let desired = state(&[
            (fe(1, 80), entry("a", &["10.0.0.1:80", "10.0.0.2:80"])),
            (fe(2, 80), entry("b", &["10.0.0.3:80", "10.0.0.4:80"])),
            (fe(3, 80), entry("c", &[])),
            (fe(4, 80), entry("d", &[])),
        ]);
        let out = syncer.sync(&desired, None).expect("sync");
        assert_eq!(out.report.upserted, 2);
        assert_eq!(out.rejected_now, 2);
        assert!(matches!(
            syncer.rejected()[&fe(2, 80)],
            RejectReason::BackendsFull {
                needed: 2,
                free: 1,
                capacity: 3
            }
        ));
        assert!(matches!(
            syncer.rejected()[&fe(4, 80)],
            RejectReason::ServicesFull { capacity: 2 }
        ));
        assert!(syncer.dataplane().state.contains_key(&fe(1, 80)));
        assert!(syncer.dataplane().state.contains_key(&fe(3, 80)));

        // A change elsewhere while there is no room: the rejected services
        // are not tried again (and stay rejected).
        let mut changed = desired.clone();
        changed.insert(fe(1, 80), entry("a", &["10.0.0.5:80", "10.0.0.6:80"]));
        let touched = BTreeSet::from([fe(1, 80)]);
        let out = syncer.sync(&changed, Some(&touched)).expect("sync");
        assert_eq!((out.changes, out.rejected_now), (1, 2));
        assert_eq!(syncer.rejected().len(), 2);

        // A removal that makes room: the same sync tries them again.
        let mut fewer = changed.clone();
        fewer.remove(&fe(3, 80));
        let touched = BTreeSet::from([fe(3, 80)]);
        let out = syncer.sync(&fewer, Some(&touched)).expect("sync");
        assert_eq!(
            (out.report.removed, out.report.upserted),
            (1, 1),
            "d takes the id c freed"
        );
        assert_eq!(syncer.rejected().keys().collect::<Vec<_>>(), [&fe(2, 80)]);

        // Room appears (a and c go): the rejected ones fit in the same sync.
        let smaller = state(&[
            (fe(2, 80), entry("b", &["10.0.0.3:80", "10.0.0.4:80"])),
            (fe(4, 80), entry("d", &[])),
        ]);
        let out = syncer.sync(&smaller, None).expect("sync");
        assert_eq!(out.rejected_now, 0);
        assert_eq!(syncer.dataplane().state, smaller);
    }
}
