//! Service ids: the lowest free id first, so the per-service arrays stay
//! dense.

use std::collections::{BTreeSet, HashSet};

pub(super) struct IdAllocator {
    capacity: u32,
    free: BTreeSet<u32>,
    next: u32,
    used: HashSet<u32>,
}

impl IdAllocator {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            capacity,
            free: BTreeSet::new(),
            next: 0,
            used: HashSet::new(),
        }
    }

    /// Ids `0..capacity` exist.
    pub(super) const fn capacity(&self) -> u32 {
        self.capacity
    }

    pub(super) fn allocate(&mut self) -> Option<u32> {
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
    pub(super) fn mark_used(&mut self, id: u32) -> bool {
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

    pub(super) fn free(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdAllocator;

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
}
