//! Remembers which rows this process committed recently, so a repeated request is acknowledged without
//! writing its rows again.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};

/// A 128-bit keyed fingerprint of a row's identity (schema, table, row id, ...).
pub type RowKey = u128;

pub struct Fingerprints {
    a: RandomState,
    b: RandomState,
}

impl Default for Fingerprints {
    fn default() -> Self {
        Fingerprints { a: RandomState::new(), b: RandomState::new() }
    }
}

impl Fingerprints {
    pub fn key(&self, parts: impl Hash + Copy) -> RowKey {
        ((self.a.hash_one(parts) as u128) << 64) | self.b.hash_one(parts) as u128
    }
}

/// A bounded set: the oldest keys are forgotten first.
pub struct Recent {
    set: HashSet<RowKey>,
    order: VecDeque<RowKey>,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Recent { set: HashSet::new(), order: VecDeque::new(), capacity }
    }

    pub fn contains(&self, k: &RowKey) -> bool {
        self.set.contains(k)
    }

    pub fn insert(&mut self, k: RowKey) {
        if self.capacity == 0 || !self.set.insert(k) {
            return;
        }
        self.order.push_back(k);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub fn extend(&mut self, keys: impl IntoIterator<Item = RowKey>) {
        for k in keys {
            self.insert(k);
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
