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

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    ops::Range,
};

use lb_common::{
    affinity::MemberKey,
    backend::Backend,
    map_names,
    service::{BackendRange, FLAG_AFFINITY, ServiceKey, ServiceValue},
    stats::ServiceStats,
};
use range_alloc::RangeAllocator;

use super::{
    Error,
    maps::{Barrier, Maps, ServiceRecord, service_name},
};
use crate::{
    dataplane::{ApplyReport, Change, Dataplane, RejectReason, Rejected, Usage},
    model::{Algorithm, DesiredState, Frontend, Protocol, ServiceEntry, ServicePortName},
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
    barrier: Barrier,
    applied: DesiredState,
    slots: BTreeMap<Frontend, Slot>,
    ids: IdAllocator,
    ranges: RangeAllocator<u32>,
    backends_used: u32,
    /// Released by this apply, recycled after the next barrier.
    retired: Retired,
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
            barrier,
            applied: DesiredState::new(),
            slots: BTreeMap::new(),
            ids: IdAllocator::new(service_capacity),
            ranges: RangeAllocator::new(0..backend_capacity),
            backends_used: 0,
            retired: Retired::default(),
        };
        let mut adopted = Adopted::default();
        let mut used_ranges: Vec<Range<u32>> = Vec::new();
        for record in records {
            match adopt_record(&record, service_capacity) {
                Ok((frontend, entry)) => {
                    let v = record.value;
                    let range = v.backends.first..v.backends.first + v.backends.count;
                    let overlaps = used_ranges
                        .iter()
                        .any(|r| range.start < r.end && r.start < range.end);
                    if overlaps || !dp.ids.mark_used(v.id) {
                        adopted
                            .discarded
                            .push(format!("{frontend}: shares its id or backend range with another entry"));
                        continue;
                    }
                    if !range.is_empty() {
                        used_ranges.push(range.clone());
                    }
                    dp.backends_used += range.len() as u32;
                    adopted.services += 1;
                    adopted.backends += entry.backends.len();
                    dp.slots.insert(frontend, Slot { id: v.id, range });
                    dp.applied.insert(frontend, entry);
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

    /// Removes names and affinity members that belong to no adopted service
    /// (left by a run that stopped between two steps), and adds members an
    /// adopted affinity service lacks.
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
            if entry.affinity_timeout_s.is_some() {
                let id = self.slots[fe].id;
                wanted.extend(entry.backends.iter().map(|b| member_key(id, b)));
            }
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
        Ok(())
    }

    /// The maps, for reading counters.
    #[must_use]
    pub const fn maps(&self) -> &Maps {
        &self.maps
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

    /// Steps 4 and 5: waits out running programs, then recycles what this
    /// apply retired.
    fn flush_retired(&mut self) -> Result<()> {
        if self.retired.ranges.is_empty() && self.retired.ids.is_empty() {
            return Ok(());
        }
        self.barrier.wait()?;
        for range in std::mem::take(&mut self.retired.ranges) {
            self.release_range(range);
        }
        for id in std::mem::take(&mut self.retired.ids) {
            let _ = self.maps.names.remove(&id);
            self.ids.free(id);
        }
        Ok(())
    }

    fn allocate_id(&mut self) -> Result<u32, UpsertError> {
        if let Some(id) = self.ids.allocate() {
            return Ok(id);
        }
        // Ids retired by this apply become usable after a barrier.
        self.flush_retired()?;
        self.ids.allocate().ok_or(UpsertError::Rejected(RejectReason::ServicesFull {
            capacity: self.ids.capacity,
        }))
    }

    fn upsert(
        &mut self,
        frontend: Frontend,
        entry: &ServiceEntry,
        report: &mut ApplyReport,
    ) -> Result<(), UpsertError> {
        let previous = self.slots.get(&frontend).cloned();
        let previous_entry = self.applied.get(&frontend).cloned();
        let previous_entry = previous_entry.as_ref();
        let (id, new_id) = match &previous {
            Some(slot) => (slot.id, false),
            None => (self.allocate_id()?, true),
        };

        // Step 1: a fresh range for changed backends.
        let backends_changed = previous_entry.is_none_or(|p| p.backends != entry.backends);
        let range = match (&previous, backends_changed) {
            (Some(slot), false) => Ok(slot.range.clone()),
            _ => match self.write_new_range(&entry.backends) {
                // Ranges retired by this apply become usable after a barrier.
                Err(_) if !self.retired.ranges.is_empty() => {
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
        if backends_changed {
            report.backends_written += entry.backends.len();
        }

        if new_id {
            self.maps
                .service_stats
                .set(id, ServiceStats::default(), 0)
                .map_err(|source| Error::map("reset", map_names::SERVICE_STATS, source))?;
            self.maps
                .rr
                .set(id, 0, 0)
                .map_err(|source| Error::map("reset", map_names::RR_COUNTERS, source))?;
        }
        if previous_entry.is_none_or(|p| p.name != entry.name) {
            self.maps
                .names
                .insert(id, service_name(&entry.name.to_string()), 0)
                .map_err(|source| Error::map("update", map_names::SERVICE_NAMES, source))?;
        }

        // Affinity members: add the new ones before publishing.
        let old_members = members(id, previous_entry);
        let new_members = members(id, Some(entry));
        for m in new_members.difference(&old_members) {
            self.maps
                .members
                .insert(m, 1, 0)
                .map_err(|source| Error::map("update", map_names::AFFINITY_MEMBERS, source))?;
        }

        // Step 2: publish with one map update.
        let value = ServiceValue {
            backends: BackendRange {
                first: range.start,
                count: range.len() as u32,
            },
            id,
            algorithm: entry.algorithm.to_raw(),
            flags: if entry.affinity_timeout_s.is_some() { FLAG_AFFINITY } else { 0 },
            pad: [0; 2],
            affinity_timeout_s: entry.affinity_timeout_s.unwrap_or(0),
            pad2: [0; 4],
        };
        if let Err(source) = self.maps.services.insert(service_key(&frontend), value, 0) {
            // Roll back what nobody can see yet.
            if backends_changed {
                self.release_range(range);
            }
            if new_id {
                let _ = self.maps.names.remove(&id);
                self.ids.free(id);
            }
            return Err(UpsertError::Fatal(Error::map("update", map_names::SERVICES, source)));
        }

        // Step 3 (for this service): stale members go now, so that once the
        // barrier has passed no affinity entry can lead to a removed backend.
        for m in old_members.difference(&new_members) {
            let _ = self.maps.members.remove(m);
        }
        if backends_changed {
            if let Some(slot) = &previous {
                self.retired.ranges.push(slot.range.clone());
            }
        }
        self.slots.insert(frontend, Slot { id, range });
        self.applied.insert(frontend, entry.clone());
        Ok(())
    }

    fn remove(&mut self, frontend: Frontend) -> Result<bool> {
        let Some(slot) = self.slots.remove(&frontend) else {
            return Ok(false);
        };
        let entry = self.applied.remove(&frontend);
        match self.maps.services.remove(&service_key(&frontend)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => {
                // Still programmed: keep tracking it.
                self.slots.insert(frontend, slot);
                if let Some(entry) = entry {
                    self.applied.insert(frontend, entry);
                }
                return Err(Error::map("delete", map_names::SERVICES, source));
            }
        }
        for m in members(slot.id, entry.as_ref()) {
            let _ = self.maps.members.remove(&m);
        }
        self.retired.ranges.push(slot.range);
        self.retired.ids.push(slot.id);
        Ok(true)
    }

    /// Allocates a range and writes `backends` into it.
    fn write_new_range(&mut self, backends: &[SocketAddr]) -> Result<Range<u32>, RejectReason> {
        let needed = u32::try_from(backends.len()).unwrap_or(u32::MAX);
        if needed == 0 {
            return Ok(0..0);
        }
        let range = self.ranges.allocate_range(needed).map_err(|_| RejectReason::BackendsFull {
            needed,
            free: self.ranges.total_available(),
            capacity: self.maps.backends.capacity(),
        })?;
        let entries: Vec<Backend> = backends.iter().map(backend).collect();
        self.maps.backends.write(range.start, &entries);
        self.backends_used += needed;
        Ok(range)
    }

    fn release_range(&mut self, range: Range<u32>) {
        if !range.is_empty() {
            self.backends_used -= range.len() as u32;
            self.ranges.free_range(range);
        }
    }
}

impl Dataplane for BpfDataplane {
    type Error = Error;

    fn applied(&self) -> &DesiredState {
        &self.applied
    }

    fn apply(&mut self, changes: &[Change<'_>]) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let mut failure = None;
        for change in changes {
            let outcome = match *change {
                Change::Upsert(frontend, entry) => {
                    match self.upsert(frontend, entry, &mut report) {
                        Ok(()) => {
                            report.upserted += 1;
                            Ok(())
                        }
                        Err(UpsertError::Rejected(reason)) => {
                            report.rejected.push(Rejected {
                                frontend,
                                name: entry.name.clone(),
                                reason,
                            });
                            Ok(())
                        }
                        Err(UpsertError::Fatal(e)) => Err(e),
                    }
                }
                Change::Remove(frontend) => self.remove(frontend).map(|removed| {
                    report.removed += usize::from(removed);
                }),
            };
            if let Err(e) = outcome {
                failure = Some(e);
                break;
            }
        }
        // Done even after a failure, so that when this returns no program can
        // reach what was removed.
        self.flush_retired()?;
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            services: u32::try_from(self.slots.len()).unwrap_or(u32::MAX),
            services_capacity: self.ids.capacity,
            backends: self.backends_used,
            backends_capacity: self.maps.backends.capacity(),
        }
    }
}

/// Rebuilds a frontend and entry from one record of the service table.
fn adopt_record(r: &ServiceRecord, service_capacity: u32) -> Result<(Frontend, ServiceEntry), String> {
    let frontend = frontend_of(&r.key).ok_or_else(|| format!("unknown protocol {} in {:?}", r.key.proto, r.key))?;
    if r.value.id >= service_capacity {
        return Err(format!("{frontend}: id {} beyond the table", r.value.id));
    }
    let backends = r
        .backends
        .as_ref()
        .ok_or_else(|| format!("{frontend}: backend range outside the table"))?;
    let algorithm = Algorithm::from_raw(r.value.algorithm)
        .ok_or_else(|| format!("{frontend}: unknown algorithm {}", r.value.algorithm))?;
    let name = r.name.as_deref().map(parse_name).unwrap_or_default();
    Ok((
        frontend,
        ServiceEntry {
            name,
            algorithm,
            affinity_timeout_s: (r.value.flags & FLAG_AFFINITY != 0).then_some(r.value.affinity_timeout_s),
            backends: backends.iter().map(socket_addr).collect(),
        },
    ))
}

/// Parses `namespace/name:port` back (the form `ServicePortName` prints).
fn parse_name(s: &str) -> ServicePortName {
    let (namespace, rest) = s.split_once('/').unwrap_or(("", s));
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    ServicePortName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port: port.to_owned(),
    }
}

fn members(id: u32, entry: Option<&ServiceEntry>) -> BTreeSet<MemberKey> {
    entry
        .filter(|e| e.affinity_timeout_s.is_some())
        .map(|e| e.backends.iter().map(|b| member_key(id, b)).collect())
        .unwrap_or_default()
}

fn member_key(id: u32, b: &SocketAddr) -> MemberKey {
    MemberKey {
        service_id: id,
        port_be: b.port().to_be(),
        pad: [0; 2],
        addr: addr16(b.ip()),
    }
}

/// The 16-byte form of an address (IPv4-mapped for IPv4).
#[must_use]
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr16`].
#[must_use]
pub fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

#[must_use]
pub fn service_key(fe: &Frontend) -> ServiceKey {
    ServiceKey {
        addr: addr16(fe.ip),
        port_be: fe.port.to_be(),
        proto: fe.protocol.number(),
        pad: 0,
    }
}

#[must_use]
pub fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        ip: ip_of(key.addr),
        port: u16::from_be(key.port_be),
        protocol: Protocol::from_number(key.proto)?,
    })
}

fn backend(b: &SocketAddr) -> Backend {
    Backend {
        addr: addr16(b.ip()),
        port_be: b.port().to_be(),
        pad: [0; 6],
    }
}

#[must_use]
pub fn socket_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(ip_of(b.addr), u16::from_be(b.port_be))
}

/// Service ids: the lowest free id first, so the per-service arrays stay
/// dense.
struct IdAllocator {
    capacity: u32,
    free: BTreeSet<u32>,
    next: u32,
    used: HashSet<u32>,
}

impl IdAllocator {
    fn new(capacity: u32) -> Self {
        Self {
            capacity,
            free: BTreeSet::new(),
            next: 0,
            used: HashSet::new(),
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        let id = if let Some(id) = self.free.pop_first() {
            id
        } else if self.next < self.capacity {
            self.next += 1;
            self.next - 1
        } else {
            return None;
        };
        self.used.insert(id);
        Some(id)
    }

    /// Marks an adopted id as used; false if it already was (or is out of range).
    fn mark_used(&mut self, id: u32) -> bool {
        if id >= self.capacity || self.used.contains(&id) {
            return false;
        }
        while self.next <= id {
            self.free.insert(self.next);
            self.next += 1;
        }
        self.free.remove(&id);
        self.used.insert(id);
        true
    }

    fn free(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::{IdAllocator, addr16, frontend_of, ip_of, parse_name, service_key};
    use crate::model::{Frontend, Protocol};

    #[test]
    fn ids_lowest_first_and_reused() {
        let mut ids = IdAllocator::new(3);
        assert_eq!(ids.allocate(), Some(0));
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        assert_eq!(ids.allocate(), None);
        ids.free(1);
        assert_eq!(ids.allocate(), Some(1));
    }

    #[test]
    fn adopted_ids_are_not_handed_out_again() {
        let mut ids = IdAllocator::new(10);
        assert!(ids.mark_used(4));
        assert!(!ids.mark_used(4), "twice");
        assert!(!ids.mark_used(10), "out of range");
        let got: Vec<u32> = (0..9).filter_map(|_| ids.allocate()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn addresses_round_trip_both_families() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        ] {
            assert_eq!(ip_of(addr16(ip)), ip);
            let fe = Frontend { ip, port: 8080, protocol: Protocol::Udp };
            assert_eq!(frontend_of(&service_key(&fe)), Some(fe));
        }
        assert_eq!(&addr16("10.0.0.1".parse().expect("ip"))[..12], &lb_common::addr::V4_MAPPED_PREFIX);
    }

    #[test]
    fn names_parse_back() {
        let n = parse_name("default/web:http");
        assert_eq!((n.namespace.as_str(), n.name.as_str(), n.port.as_str()), ("default", "web", "http"));
        assert_eq!(parse_name("kube-system/dns").to_string(), "kube-system/dns");
    }
}
