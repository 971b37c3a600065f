//! Two Services, one frontend: the smaller name keeps it, on every node.

use std::collections::HashMap;

use super::{Kind, ObjectRef, problem::Problems};
use crate::model::{DesiredState, Frontend, ServiceEntry};

/// The desired state being built, and which port of which Service each
/// frontend came from (to name the loser of a conflict).
#[derive(Default)]
pub(super) struct State {
    pub(super) entries: DesiredState,
    origins: HashMap<Frontend, usize>,
}

/// Adds a frontend. Two Services cannot share one: the one with the smaller
/// name keeps it, whatever the input order (every node decides alike), and
/// the other's port is a problem.
pub(super) fn insert(
    state: &mut State,
    frontend: Frontend,
    entry: ServiceEntry,
    port_index: usize,
    problems: &mut Problems,
) {
    let loser = match state.entries.get(&frontend) {
        None => None,
        Some(existing) if existing.name <= entry.name => {
            Some((entry.name.clone(), port_index, existing.name.clone()))
        }
        Some(existing) => {
            let existing_index = state.origins.get(&frontend).copied().unwrap_or_default();
            Some((existing.name.clone(), existing_index, entry.name.clone()))
        }
    };
    if let Some((loser, loser_index, winner)) = &loser {
        let object = ObjectRef {
            kind: Kind::Service,
            namespace: loser.namespace.clone(),
            name: loser.name.clone(),
        };
        problems.push_ref(
            object,
            format!("spec.ports[{loser_index}]"),
            format!("{frontend} is also a frontend of {winner}, which keeps it"),
        );
        if *loser == entry.name {
            return;
        }
    }
    state.origins.insert(frontend, port_index);
    state.entries.insert(frontend, entry);
}
