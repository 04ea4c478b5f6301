//! Remembers which rows this process committed recently, so a repeated request is acknowledged without
//! writing its rows again.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use hashbrown::HashTable;
use siphasher::sip128::{Hasher128, SipHasher13};

/// A 128-bit keyed fingerprint of a row's identity (schema, table, row id, ...).
pub type RowKey = u128;

/// Makes row fingerprints: SipHash-1-3 with a 128-bit output, in one pass, under keys drawn for the process, so
/// that no sender can make two rows collide.
pub struct Fingerprints {
    keys: (u64, u64),
}

impl Default for Fingerprints {
    fn default() -> Self {
        let random = RandomState::new();
        Fingerprints { keys: (random.hash_one(0u8), random.hash_one(1u8)) }
    }
}

impl Fingerprints {
    pub fn key(&self, parts: impl Hash) -> RowKey {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        parts.hash(&mut h);
        h.finish128().into()
    }
}

/// Hashes a set of row keys by their low half: they are already keyed hashes no sender can choose.
#[derive(Default, Clone, Copy)]
pub struct ByKey(u64);

impl Hasher for ByKey {
    fn write(&mut self, _: &[u8]) {
        unreachable!("only row keys, which are hashed whole, are hashed by their low half");
    }

    fn write_u128(&mut self, k: u128) {
        self.0 = slot(k);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A set of row keys.
pub type KeySet = std::collections::HashSet<RowKey, std::hash::BuildHasherDefault<ByKey>>;

/// A bounded set: the oldest keys are forgotten first. Each key is held once, in a ring in the order it was
/// remembered, and found through a table of positions in that ring (a million keys take about 26 MiB).
pub struct Recent {
    ring: Vec<RowKey>,
    /// Where the next key goes once the ring is full: the oldest key's place.
    next: usize,
    index: HashTable<u32>,
    capacity: usize,
}

/// Where a key is looked up: keys are already keyed hashes no sender can choose, so their low half is the hash.
fn slot(k: RowKey) -> u64 {
    k as u64
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        // Positions are 32-bit.
        let capacity = capacity.min(u32::MAX as usize);
        Recent { ring: Vec::new(), next: 0, index: HashTable::new(), capacity }
    }

    pub fn contains(&self, k: &RowKey) -> bool {
        self.index.find(slot(*k), |&p| self.ring[p as usize] == *k).is_some()
    }

    pub fn insert(&mut self, k: RowKey) {
        if self.capacity == 0 || self.contains(&k) {
            return;
        }
        let Recent { ring, next, index, capacity } = self;
        let at = if ring.len() < *capacity {
            ring.push(k);
            ring.len() - 1
        } else {
            let at = *next;
            if let Ok(oldest) = index.find_entry(slot(ring[at]), |&p| p as usize == at) {
                oldest.remove();
            }
            ring[at] = k;
            *next = (at + 1) % *capacity;
            at
        };
        index.insert_unique(slot(k), at as u32, |&p| slot(ring[p as usize]));
    }

    pub fn extend(&mut self, keys: impl IntoIterator<Item = RowKey>) {
        for k in keys {
            self.insert(k);
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_tells_where_each_part_ends_and_its_keys_are_drawn_not_fixed() {
        let f = Fingerprints::default();
        assert_ne!(f.key(("s", "ab", "c")), f.key(("s", "a", "bc")));
        assert_ne!(f.key(("s", "t", "1")), f.key(("s", "t", "1 ")));
        assert_eq!(f.key(("s", "t", "1")), f.key(("s", "t", "1")));
        assert_ne!(f.key(("s", "t", "1")), Fingerprints::default().key(("s", "t", "1")), "each draws its own keys");
        // The set of keys hashes them by their low half.
        let mut keys = KeySet::default();
        assert!(keys.insert(f.key(("s", "t", "1"))));
        assert!(!keys.insert(f.key(("s", "t", "1"))));
        assert!(keys.insert(f.key(("s", "t", "2"))));
    }

    #[test]
    fn forgets_oldest_first() {
        let f = Fingerprints::default();
        let mut r = Recent::new(2);
        let (a, b, c) = (f.key(("s", "t", "1")), f.key(("s", "t", "2")), f.key(("s", "t", "3")));
        assert_ne!(a, b);
        assert_eq!(a, f.key(("s", "t", "1")));
        r.insert(a);
        r.insert(b);
        r.insert(b);
        assert!(r.contains(&a) && r.contains(&b));
        r.insert(c);
        assert!(!r.contains(&a) && r.contains(&b) && r.contains(&c));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn holds_exactly_the_last_keys_through_many_turns_of_the_ring() {
        let f = Fingerprints::default();
        let mut r = Recent::new(1000);
        for i in 0..25_000u32 {
            r.insert(f.key(i));
            // A repeat of a key still held changes nothing.
            r.insert(f.key(i.saturating_sub(500)));
        }
        assert_eq!(r.len(), 1000);
        assert!((24_000..25_000u32).all(|i| r.contains(&f.key(i))));
        assert!((0..24_000u32).all(|i| !r.contains(&f.key(i))));
        assert!(Recent::new(0).is_empty());
        let mut none = Recent::new(0);
        none.insert(f.key(1));
        assert!(!none.contains(&f.key(1)));
    }
}
