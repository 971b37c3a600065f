//! The dataplane backed by the BPF maps: where the update protocol of
//! `lb_common::service` is enforced.
//!
//! Invariant (what a concurrent `connect()` relies on): every service value
//! in `lb_services` points at a backend range that is fully written and is
//! not reused until an RCU grace period after the last service pointing at
//! it was changed or removed. [`BpfDataplane::apply`] keeps it by
//! 1. writing new backends into a freshly allocated range,
//! 2. publishing each service value with one map update,
//! 3. removing services and stale affinity members,
//! 4. waiting for running programs ([`Barrier::wait`]) if anything was retired,
//! 5. and only then returning retired ranges and ids to the allocators.
//!
//! Steps 4 and 5 run behind the update, on the [`Reaper`]'s thread: a
//! grace period takes 10-30 ms and nothing a user sees waits for it. Once
//! step 3 is done (when `apply` returns), a connection that starts reads the
//! new values, so it cannot reach a removed backend; the barrier only
//! protects programs that started earlier from memory being reused under
//! them. An allocation that needs retired room waits for the barrier.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::Range,
    sync::Arc,
};

use aya::maps::lpm_trie::Key;
use lb_common::{
    affinity::MemberKey,
    backend::Backend,
    map_names,
    service::{ServiceKey, ServiceName, ServiceValue, SourceRange},
    stats::ServiceStats,
};
use range_alloc::RangeAllocator;

use super::{
    Error,
    batch::{self, Batcher},
    convert::{
        adopt_record, backend, members, range_word, service_key, service_name, service_state,
        source_ranges,
    },
    ids::IdAllocator,
    maps::{Barrier, Maps},
    reaper::Reaper,
};
use crate::{
    dataplane::{ApplyReport, Change, Dataplane, RejectReason, Rejected, Usage},
    model::{DesiredState, Frontend, ServiceEntry},
};

type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a programmed service lives in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    id: u32,
    range: Range<u32>,
}

/// What adoption found in maps pinned by an earlier run.
#[derive(Debug, Default)]
pub struct Adopted {
    pub services: usize,
    pub backends: usize,
    /// Entries that could not be understood; the first sync rewrites them.
    pub discarded: Vec<String>,
}

pub struct BpfDataplane {
    maps: Maps,
    reaper: Reaper,
    applied: DesiredState,
    slots: BTreeMap<Frontend, Slot>,
    ids: IdAllocator,
    ranges: RangeAllocator<u32>,
    backends_used: u32,
    /// Of those, slots in retired ranges (free once the barrier passes).
    backends_retired: u32,
    /// Released by this apply, not yet handed to the reaper.
    retired: Retired,
    /// Handed to the reaper: recycled once its barrier `n` has passed.
    pending: std::collections::VecDeque<(u64, Retired)>,
    /// The last barrier requested.
    generation: u64,
    /// Writes many map elements at once where the kernel can.
    batch: Batcher,
}

enum UpsertError {
    Rejected(RejectReason),
    Fatal(Error),
}

impl From<Error> for UpsertError {
    fn from(e: Error) -> Self {
        Self::Fatal(e)
    }
}

/// What to release once running programs have finished.
#[derive(Default)]
struct Retired {
    ranges: Vec<Range<u32>>,
    ids: Vec<u32>,
}

impl BpfDataplane {
    /// Takes over the maps, adopting whatever an earlier run programmed, so
    /// that no programmed service goes missing while the agent restarts.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn adopt(maps: Maps, barrier: Barrier) -> Result<(Self, Adopted)> {
        let service_capacity = maps.service_capacity();
        let backend_capacity = maps.backends.capacity();
        let records = maps.read_services()?;
        let mut dp = Self {
            maps,
            reaper: Reaper::start(barrier),
            applied: DesiredState::new(),
            slots: BTreeMap::new(),
            ids: IdAllocator::new(service_capacity),
            ranges: RangeAllocator::new(0..backend_capacity),
            backends_used: 0,
            backends_retired: 0,
            retired: Retired::default(),
            pending: std::collections::VecDeque::new(),
            generation: 0,
            batch: Batcher::new(),
        };
        let mut adopted = Adopted::default();
        let mut used_ranges: Vec<Range<u32>> = Vec::new();
        for record in records {
            match adopt_record(&record, service_capacity) {
                Ok((frontend, entry, v)) => {
                    let range = v.backends.first..v.backends.first + v.backends.count;
                    let overlaps = used_ranges
                        .iter()
                        .any(|r| range.start < r.end && r.start < range.end);
                    if overlaps || !dp.ids.mark_used(record.id) {
                        adopted.discarded.push(format!(
                            "{frontend}: shares its id or backend range with another entry"
                        ));
                        continue;
                    }
                    if !range.is_empty() {
                        used_ranges.push(range.clone());
                    }
                    dp.backends_used += range.end - range.start;
                    adopted.services += 1;
                    adopted.backends += entry.backends.len();
                    dp.slots.insert(
                        frontend,
                        Slot {
                            id: record.id,
                            range,
                        },
                    );
                    dp.applied.insert(frontend, Arc::new(entry));
                }
                Err(why) => adopted.discarded.push(why),
            }
        }
        // RangeAllocator cannot allocate at an offset: take everything, then
        // give back what no adopted service uses.
        if backend_capacity > 0 {
            let _ = dp.ranges.allocate_range(backend_capacity);
            used_ranges.sort_by_key(|r| r.start);
            let mut cursor = 0;
            for r in used_ranges {
                if r.start > cursor {
                    dp.ranges.free_range(cursor..r.start);
                }
                cursor = r.end;
            }
            if cursor < backend_capacity {
                dp.ranges.free_range(cursor..backend_capacity);
            }
        }
        dp.sweep_orphans()?;
        Ok((dp, adopted))
    }

    /// Removes names and members that belong to no adopted service (left by
    /// a run that stopped between two steps), and adds members an adopted
    /// service lacks (also those of a run before the tc programs, which kept
    /// members for affinity services only).
    fn sweep_orphans(&mut self) -> Result<()> {
        let live_ids: BTreeSet<u32> = self.slots.values().map(|s| s.id).collect();
        let stale_names: Vec<u32> = self
            .maps
            .names
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|id| !live_ids.contains(id))
            .collect();
        for id in stale_names {
            let _ = self.maps.names.remove(&id);
        }
        let mut wanted: BTreeSet<MemberKey> = BTreeSet::new();
        for (fe, entry) in &self.applied {
            wanted.extend(members(self.slots[fe].id, Some(entry)));
        }
        let present: BTreeSet<MemberKey> = self
            .maps
            .members
            .keys()
            .filter_map(std::result::Result::ok)
            .collect();
        for stale in present.difference(&wanted) {
            let _ = self.maps.members.remove(stale);
        }
        for missing in wanted.difference(&present) {
            self.maps
                .members
                .insert(missing, 1, 0)
                .map_err(|source| Error::map("update", map_names::AFFINITY_MEMBERS, source))?;
        }
        // Source ranges are not read back with the services: drop them all
        // but the adopted services' (the first sync rewrites those).
        let present: Vec<(u32, SourceRange)> = self
            .maps
            .ranges
            .keys()
            .filter_map(std::result::Result::ok)
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        for (bits, data) in present {
            if !live_ids.contains(&u32::from_be_bytes(data.service_id_be)) {
                let _ = self.maps.ranges.remove(&Key::new(bits, data));
            }
        }
        Ok(())
    }

    /// Adds and removes `lb_source_ranges` entries (a handful per Service
    /// that has them: one at a time).
    fn write_ranges(
        &mut self,
        add: &[(u32, SourceRange)],
        remove: &[(u32, SourceRange)],
    ) -> Result<()> {
        for &(bits, data) in add {
            self.maps
                .ranges
                .insert(&Key::new(bits, data), 1, 0)
                .map_err(|source| Error::map("update", map_names::SOURCE_RANGES, source))?;
        }
        for &(bits, data) in remove {
            match self.maps.ranges.remove(&Key::new(bits, data)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(Error::map("delete", map_names::SOURCE_RANGES, source)),
            }
        }
        Ok(())
    }

    /// Counts a completed sync in `lb_meta` (shown by `lb-agent list`).
    ///
    /// # Errors
    /// When the map cannot be read or written.
    pub fn record_sync(&mut self, now: std::time::Duration) -> Result<()> {
        let mut meta = self.maps.read_meta()?;
        meta.generation += 1;
        meta.last_sync_unix_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        self.maps.write_meta(&meta)
    }

    /// Step 4, behind the update: asks the reaper for a barrier for what
    /// this apply retired.
    fn seal_retired(&mut self) {
        if self.retired.ranges.is_empty() && self.retired.ids.is_empty() {
            return;
        }
        self.generation += 1;
        self.pending
            .push_back((self.generation, std::mem::take(&mut self.retired)));
        self.reaper.request(self.generation);
    }

    /// Step 5: recycles whatever a completed barrier has made safe.
    fn recycle_settled(&mut self) {
        let done = self.reaper.done();
        while self
            .pending
            .front()
            .is_some_and(|(generation, _)| *generation <= done)
        {
            let Some((_, retired)) = self.pending.pop_front() else {
                break;
            };
            for range in retired.ranges {
                self.backends_retired -= range.end - range.start;
                self.release_range(range);
            }
            for id in retired.ids {
                let _ = self.maps.names.remove(&id);
                self.ids.free(id);
            }
        }
    }

    /// Steps 4 and 5 now, for an allocation that needs the retired room.
    fn flush_retired(&mut self) -> Result<()> {
        self.seal_retired();
        if self.pending.is_empty() {
            return Ok(());
        }
        self.reaper.wait_for(self.generation)?;
        self.recycle_settled();
        Ok(())
    }

    fn allocate_id(&mut self) -> Result<u32, UpsertError> {
        if let Some(id) = self.ids.allocate() {
            return Ok(id);
        }
        // Retired ids become usable after a barrier.
        self.flush_retired()?;
        self.ids
            .allocate()
            .ok_or(UpsertError::Rejected(RejectReason::ServicesFull {
                capacity: self.ids.capacity(),
            }))
    }

    /// What is programmed for `frontend`, if anything.
    fn applied_entry(&self, frontend: &Frontend) -> Option<&ServiceEntry> {
        self.applied.get(frontend).map(Arc::as_ref)
    }

    /// Stages one upsert: allocates its id and range and writes what no
    /// program can see yet (backends into a fresh range, zeroed counters
    /// for a new id). Nothing is published.
    fn stage(
        &mut self,
        frontend: Frontend,
        entry: &Arc<ServiceEntry>,
    ) -> Result<Staged, UpsertError> {
        let previous = self.slots.get(&frontend).cloned();
        let previous_entry = self.applied.get(&frontend);
        let backends_changed = previous_entry.is_none_or(|p| p.backends != entry.backends);
        let renamed = previous_entry.is_none_or(|p| p.name != entry.name);
        let (id, new_id) = match &previous {
            Some(slot) => (slot.id, false),
            None => (self.allocate_id()?, true),
        };
        let range = match (&previous, backends_changed) {
            (Some(slot), false) => Ok(slot.range.clone()),
            _ => match self.write_new_range(&entry.backends) {
                // Retired ranges become usable after a barrier.
                Err(_) if !self.retired.ranges.is_empty() || !self.pending.is_empty() => {
                    self.flush_retired()?;
                    self.write_new_range(&entry.backends)
                }
                other => other,
            },
        };
        let range = match range {
            Ok(r) => r,
            Err(reason) => {
                if new_id {
                    self.ids.free(id);
                }
                return Err(UpsertError::Rejected(reason));
            }
        };
        if new_id {
            self.maps.rr.write(id, &[0]);
            self.maps
                .service_stats
                .write(id, &[ServiceStats::default()]);
        }
        Ok(Staged {
            frontend,
            entry: entry.clone(),
            slot: Slot { id, range },
            previous,
            new_id,
            backends_changed,
            renamed,
        })
    }

    /// Undoes [`Self::stage`] for an upsert that was not published.
    fn unstage(&mut self, staged: &Staged) {
        if staged.backends_changed {
            self.release_range(staged.slot.range.clone());
        }
        if staged.new_id {
            let _ = self.maps.names.remove(&staged.slot.id);
            self.ids.free(staged.slot.id);
        }
    }

    /// Records a published upsert.
    fn commit(&mut self, staged: Staged, report: &mut ApplyReport) {
        if staged.backends_changed {
            report.backends_written += staged.entry.backends.len();
            if let Some(previous) = staged.previous {
                self.retire_range(previous.range);
            }
        }
        report.upserted += 1;
        self.slots.insert(staged.frontend, staged.slot);
        self.applied.insert(staged.frontend, staged.entry);
    }

    /// Publishes the removals: the services go, their stale affinity
    /// members too; ids and ranges are retired for after the barrier.
    fn remove_all(&mut self, frontends: &[Frontend], report: &mut ApplyReport) -> Result<()> {
        let mut keys = Vec::with_capacity(frontends.len());
        let mut members_gone = Vec::new();
        let mut ranges_gone = Vec::new();
        for frontend in frontends {
            if let Some(slot) = self.slots.get(frontend) {
                keys.push(service_key(frontend));
                members_gone.extend(members(slot.id, self.applied_entry(frontend)));
                ranges_gone.extend(source_ranges(slot.id, self.applied_entry(frontend)));
            }
        }
        self.batch
            .delete(&mut self.maps.services, &keys, map_names::SERVICES)?;
        for frontend in frontends {
            if let Some(slot) = self.slots.remove(frontend) {
                self.applied.remove(frontend);
                self.retire_range(slot.range);
                self.retired.ids.push(slot.id);
                report.removed += 1;
            }
        }
        self.write_ranges(&[], &ranges_gone)?;
        self.batch.delete(
            &mut self.maps.members,
            &members_gone,
            map_names::AFFINITY_MEMBERS,
        )
    }

    /// Publishes staged services (step 2): one map update each, batched.
    /// Returns the staged entries that could not be published.
    fn publish(&mut self, staged: Vec<Staged>, report: &mut ApplyReport) -> Result<()> {
        // Services already there change in place: everything but the range
        // first (their old range stays in the record, so no byte of it
        // changes), then the range with one aligned 8-byte store.
        let (existing, new): (Vec<Staged>, Vec<Staged>) =
            staged.into_iter().partition(|s| s.previous.is_some());
        for s in existing {
            let id = s.slot.id;
            let mut state = service_state(&s.frontend, &s.entry, &s.slot.range);
            if let Some(current) = self.maps.state.get(id) {
                state.backends = current.backends;
            }
            self.maps.state.write(id, &[state]);
            self.maps
                .state
                .store_first_word(id, range_word(&s.slot.range));
            self.commit(s, report);
        }

        // New services: their record first (no program can read it yet:
        // an id is reused only after a grace period), then the
        // `lb_services` entry that makes them visible, batched.
        for s in &new {
            self.maps.state.write(
                s.slot.id,
                &[service_state(&s.frontend, &s.entry, &s.slot.range)],
            );
        }
        let keys: Vec<ServiceKey> = new.iter().map(|s| service_key(&s.frontend)).collect();
        let values: Vec<ServiceValue> =
            new.iter().map(|s| ServiceValue { id: s.slot.id }).collect();
        let done =
            match self
                .batch
                .update_prefix(&self.maps.services, &keys, &values, map_names::SERVICES)
            {
                Ok(done) => done,
                Err(e) => {
                    for s in &new {
                        self.unstage(s);
                    }
                    return Err(e);
                }
            };
        let mut failure = None;
        for (i, staged) in new.into_iter().enumerate() {
            if i < done {
                self.commit(staged, report);
                continue;
            }
            if failure.is_some() {
                self.unstage(&staged);
                continue;
            }
            match self.maps.services.insert(keys[i], values[i], 0) {
                Ok(()) => self.commit(staged, report),
                Err(e) if batch::errno(&e) == Some(libc::E2BIG) => {
                    self.unstage(&staged);
                    report.rejected.push(Rejected {
                        frontend: staged.frontend,
                        name: staged.entry.name.clone(),
                        reason: RejectReason::ServicesFull {
                            capacity: self.ids.capacity(),
                        },
                    });
                }
                Err(e) => {
                    self.unstage(&staged);
                    failure = Some(batch::elem_error("update", map_names::SERVICES, e));
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Allocates a range and writes `backends` into it.
    fn write_new_range(&mut self, backends: &[SocketAddr]) -> Result<Range<u32>, RejectReason> {
        let needed = u32::try_from(backends.len()).unwrap_or(u32::MAX);
        if needed == 0 {
            return Ok(0..0);
        }
        let range = self
            .ranges
            .allocate_range(needed)
            .map_err(|_| RejectReason::BackendsFull {
                needed,
                free: self.ranges.total_available(),
                capacity: self.maps.backends.capacity(),
            })?;
        let entries: Vec<Backend> = backends.iter().map(backend).collect();
        self.maps.backends.write(range.start, &entries);
        self.backends_used += needed;
        Ok(range)
    }

    /// Retires a range no program will be pointed at again; it is
    /// released after the next barrier.
    fn retire_range(&mut self, range: Range<u32>) {
        self.backends_retired += range.end - range.start;
        self.retired.ranges.push(range);
    }

    fn release_range(&mut self, range: Range<u32>) {
        if !range.is_empty() {
            self.backends_used -= range.end - range.start;
            self.ranges.free_range(range);
        }
    }

    fn apply_changes(&mut self, changes: &[Change<'_>], report: &mut ApplyReport) -> Result<()> {
        let removals: Vec<Frontend> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Remove(f) => Some(*f),
                Change::Upsert(..) => None,
            })
            .collect();
        self.remove_all(&removals, report)?;

        let mut staged = Vec::new();
        for change in changes {
            let Change::Upsert(frontend, entry) = *change else {
                continue;
            };
            match self.stage(frontend, entry) {
                Ok(s) => staged.push(s),
                Err(UpsertError::Rejected(reason)) => report.rejected.push(Rejected {
                    frontend,
                    name: entry.name.clone(),
                    reason,
                }),
                Err(UpsertError::Fatal(e)) => {
                    for s in &staged {
                        self.unstage(s);
                    }
                    return Err(e);
                }
            }
        }

        // Names and new affinity members go in before the services that use them.
        let (name_ids, names): (Vec<u32>, Vec<ServiceName>) = staged
            .iter()
            .filter(|s| s.renamed)
            .map(|s| (s.slot.id, service_name(&s.entry.name.to_string())))
            .unzip();
        let mut members_new = Vec::new();
        let mut members_gone = Vec::new();
        let mut ranges_new = Vec::new();
        let mut ranges_gone = Vec::new();
        for s in &staged {
            let old = members(s.slot.id, self.applied_entry(&s.frontend));
            let new = members(s.slot.id, Some(&s.entry));
            members_new.extend(new.difference(&old).copied());
            members_gone.extend(old.difference(&new).copied());
            let old = source_ranges(s.slot.id, self.applied_entry(&s.frontend));
            let new = source_ranges(s.slot.id, Some(&s.entry));
            ranges_new.extend(new.difference(&old).copied());
            ranges_gone.extend(old.difference(&new).copied());
        }
        // Names are only for `lb-agent list` and bpftool: a failure to write
        // them is logged, never a reason to leave a Service out.
        if let Err(e) = self.batch.update(
            &mut self.maps.names,
            &name_ids,
            &names,
            map_names::SERVICE_NAMES,
        ) {
            tracing::warn!(error = %e, "service names not recorded (lb-agent list shows them blank)");
        }
        let ones = vec![1u32; members_new.len()];
        let written = self
            .batch
            .update(
                &mut self.maps.members,
                &members_new,
                &ones,
                map_names::AFFINITY_MEMBERS,
            )
            .and_then(|()| self.write_ranges(&ranges_new, &[]));
        if let Err(e) = written {
            for s in &staged {
                self.unstage(s);
            }
            return Err(e);
        }

        self.publish(staged, report)?;
        self.write_ranges(&[], &ranges_gone)?;

        // Stale members go now, so that once the barrier has passed no
        // affinity entry can lead to a removed backend.
        self.batch.delete(
            &mut self.maps.members,
            &members_gone,
            map_names::AFFINITY_MEMBERS,
        )
    }
}

/// An upsert between [`BpfDataplane::stage`] and publication.
struct Staged {
    frontend: Frontend,
    entry: Arc<ServiceEntry>,
    slot: Slot,
    previous: Option<Slot>,
    new_id: bool,
    backends_changed: bool,
    renamed: bool,
}

impl Dataplane for BpfDataplane {
    type Error = Error;

    fn applied(&self) -> &DesiredState {
        &self.applied
    }

    fn apply(&mut self, changes: &[Change<'_>]) -> Result<ApplyReport> {
        self.recycle_settled();
        let mut report = ApplyReport::default();
        let result = self.apply_changes(changes, &mut report);
        // Also after a failure: what was retired is recycled once safe.
        self.seal_retired();
        result.map(|()| report)
    }

    fn usage(&self) -> Usage {
        Usage {
            services: u32::try_from(self.slots.len()).unwrap_or(u32::MAX),
            services_capacity: self.ids.capacity(),
            backends: self.backends_used - self.backends_retired,
            backends_capacity: self.maps.backends.capacity(),
        }
    }
}
