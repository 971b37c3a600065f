//! Two Services, one frontend: the smaller name keeps it, on every node.

use std::{collections::HashMap, sync::Arc};

use super::{Kind, ObjectRef, problem::Problems};
use crate::model::{DesiredState, Frontend, FrontendScope, HealthChecks, ServiceEntry};

/// The desired state being built, and which field of which Service each
/// frontend came from (to name the loser of a conflict). Health check
/// ports are not frontends: two Services with one are not a conflict
/// here (the API server allocates them; the second cannot listen).
#[derive(Default)]
pub(super) struct State {
    pub(super) entries: DesiredState,
    pub(super) health_checks: HealthChecks,
    origins: HashMap<Frontend, String>,
    /// Entries for clients from other hosts under `externalTrafficPolicy:
    /// Local`, keyed by the every-client frontend they go with.
    scoped: Vec<(Frontend, ServiceEntry)>,
}

impl State {
    /// Adds the entry `frontend` has for clients from other hosts, kept
    /// only if the Service owning `frontend` after every conflict is the
    /// same (one owner per address for every client, whichever the hook).
    pub(super) fn scoped(&mut self, frontend: Frontend, entry: ServiceEntry) {
        self.scoped.push((frontend, entry));
    }

    pub(super) fn finish(mut self) -> DesiredState {
        for (frontend, entry) in self.scoped {
            if self
                .entries
                .get(&frontend)
                .is_some_and(|e| e.name == entry.name)
            {
                let scoped = Frontend {
                    scope: FrontendScope::External,
                    ..frontend
                };
                self.entries.insert(scoped, Arc::new(entry));
            }
        }
        self.entries
    }
}

/// Adds a frontend. Two Services cannot share one: the one with the smaller
/// name keeps it, whatever the input order (every node decides alike), and
/// the other's port is a problem.
pub(super) fn insert(
    state: &mut State,
    frontend: Frontend,
    entry: ServiceEntry,
    field: String,
    problems: &mut Problems,
) {
    let loser = match state.entries.get(&frontend) {
        None => None,
        // One Service port twice (an external IP that is also its load
        // balancer's): the first kind found keeps it, in the order
        // ClusterIP, node port, external IP, load balancer.
        Some(existing) if existing.name == entry.name => return,
        Some(existing) if existing.name <= entry.name => {
            Some((entry.name.clone(), field.clone(), existing.name.clone()))
        }
        Some(existing) => {
            let existing_field = state.origins.get(&frontend).cloned().unwrap_or_default();
            Some((existing.name.clone(), existing_field, entry.name.clone()))
        }
    };
    if let Some((loser, loser_field, winner)) = &loser {
        let object = ObjectRef {
            kind: Kind::Service,
            namespace: loser.namespace.clone(),
            name: loser.name.clone(),
        };
        problems.push_ref(
            object,
            loser_field.clone(),
            format!("{frontend} is also a frontend of {winner}, which keeps it"),
        );
        if *loser == entry.name {
            return;
        }
    }
    state.origins.insert(frontend, field);
    state.entries.insert(frontend, Arc::new(entry));
}
