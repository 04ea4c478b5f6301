//! The table handles kept between writes, bounded by count and by an estimate of their size: past either bound the
//! least recently used handle that no write holds is dropped (the next write to its table reads the log again).

use std::collections::HashMap;
use std::sync::Arc;

/// A bounded map from table URI to a shared slot.
pub struct Handles<S> {
    slots: HashMap<String, Entry<S>>,
    clock: u64,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

struct Entry<S> {
    slot: Arc<S>,
    used: u64,
    bytes: usize,
}

impl<S: Default> Handles<S> {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Handles { slots: HashMap::new(), clock: 0, bytes: 0, max_count: max_count.max(1), max_bytes }
    }

    /// The slot of a table, made when there is none; makes room for it first.
    pub fn get(&mut self, uri: &str) -> Arc<S> {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.slots.get_mut(uri) {
            e.used = clock;
            return e.slot.clone();
        }
        let slot = Arc::new(S::default());
        self.slots.insert(uri.to_string(), Entry { slot: slot.clone(), used: clock, bytes: 0 });
        self.evict();
        slot
    }

    /// Records about how many bytes a table's handle holds now.
    pub fn sized(&mut self, uri: &str, bytes: usize) {
        if let Some(e) = self.slots.get_mut(uri) {
            self.bytes = self.bytes - e.bytes + bytes;
            e.bytes = bytes;
        }
        self.evict();
    }

    /// Drops the least recently used handles nobody holds until both bounds are met (or every handle is in use).
    fn evict(&mut self) {
        while self.slots.len() > self.max_count || self.bytes > self.max_bytes {
            let idle = self
                .slots
                .iter()
                .filter(|(_, e)| Arc::strong_count(&e.slot) == 1)
                .min_by_key(|(_, e)| e.used)
                .map(|(uri, _)| uri.clone());
            let Some(uri) = idle else { return };
            if let Some(e) = self.slots.remove(&uri) {
                self.bytes -= e.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_idle_handles_go_first() {
        let mut h: Handles<u8> = Handles::new(2, 1000);
        let a = h.get("a");
        drop(h.get("b"));
        drop(h.get("c"));
        // `a` is held by a write, so `b` (the least recently used idle one) went.
        assert_eq!(h.slots.len(), 2);
        assert!(h.slots.contains_key("a") && h.slots.contains_key("c"));
        drop(a);
        drop(h.get("c"));
        drop(h.get("d"));
        assert!(h.slots.contains_key("c") && h.slots.contains_key("d"), "a was least recently used");
    }

    #[test]
    fn the_size_bound_drops_handles_too() {
        let mut h: Handles<u8> = Handles::new(100, 1000);
        for t in ["a", "b", "c"] {
            drop(h.get(t));
            h.sized(t, 400);
        }
        assert_eq!(h.slots.len(), 2);
        assert_eq!(h.bytes, 800);
        assert!(!h.slots.contains_key("a"));
        h.sized("b", 100);
        assert_eq!(h.bytes, 500);
    }
}
