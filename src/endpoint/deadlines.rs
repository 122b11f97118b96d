//! The server's deadline structure: a binary heap of (deadline, key) with lazy deletion, and
//! the one current deadline of each key. `next` is O(1), `schedule` O(log n), and
//! `pop_due` hands out only keys whose current deadline has come, so a wake-up costs the
//! same with 10 or 10,000 connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hash;
use std::time::Instant;

use super::idmap::IdMap;

/// Deadlines keyed by `K`.
#[derive(Debug)]
pub(crate) struct Deadlines<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    current: IdMap<K, Instant>,
}

impl<K: Copy + Eq + Hash + Ord> Deadlines<K> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            current: IdMap::default(),
        }
    }

    /// Sets `key`'s deadline (`None`: it has none).
    pub(crate) fn schedule(&mut self, key: K, at: Option<Instant>) {
        match at {
            None => {
                if self.current.remove(&key).is_none() {
                    return;
                }
            }
            Some(t) => {
                if self.current.insert(key, t) == Some(t) {
                    return;
                }
                self.heap.push(Reverse((t, key)));
            }
        }
        self.clean_top();
        if self.heap.len() > 4 * self.current.len() + 64 {
            // Too many stale entries: rebuild from the current deadlines.
            self.heap = self
                .current
                .iter()
                .map(|(&k, &t)| Reverse((t, k)))
                .collect();
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes a key whose deadline is at or before `now` (its deadline is cleared: schedule it
    /// again after running it).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let &Reverse((t, key)) = self.heap.peek()?;
        if t > now {
            return None;
        }
        self.heap.pop();
        self.current.remove(&key);
        self.clean_top();
        Some(key)
    }

    /// Entries in the heap, stale ones included (for tests of the structure's cost).
    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// Pops stale entries off the top, so that the top is always a current deadline.
    fn clean_top(&mut self) {
        while let Some(&Reverse((t, key))) = self.heap.peek() {
            if self.current.get(&key) == Some(&t) {
                return;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_current_deadline_and_only_due_keys() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Deadlines::new();
        d.schedule(1u32, Some(ms(30)));
        d.schedule(2, Some(ms(10)));
        d.schedule(3, Some(ms(20)));
        assert_eq!(d.next(), Some(ms(10)));
        // Moving key 2 later leaves its old entry stale: it is never handed out.
        d.schedule(2, Some(ms(40)));
        assert_eq!(d.next(), Some(ms(20)));
        d.schedule(3, None);
        assert_eq!(d.next(), Some(ms(30)));
        assert_eq!(d.pop_due(ms(25)), None);
        assert_eq!(d.pop_due(ms(35)), Some(1));
        assert_eq!(d.pop_due(ms(35)), None);
        assert_eq!(d.pop_due(ms(45)), Some(2));
        assert_eq!(d.next(), None);
    }

    #[test]
    fn stale_entries_stay_bounded() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        for round in 0..1000u64 {
            for k in 0..100u32 {
                d.schedule(
                    k,
                    Some(t0 + Duration::from_millis(round * 7 + u64::from(k))),
                );
            }
        }
        assert!(d.heap_len() <= 4 * 100 + 64 + 100);
    }
}
