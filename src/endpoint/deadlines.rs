//! The server's deadline structure: a binary heap of (deadline, key) with lazy deletion, and
//! the one current deadline of each key. `next` is O(1), `schedule` O(1) when a deadline
//! moves later (the common case: a connection that sent pushes its heartbeat back) and
//! O(log n) when it moves earlier, and `pop_due` hands out only keys whose current deadline
//! has come, so a wake-up costs the same with 10 or 10,000 connections.
//!
//! Each key with a deadline has one live heap entry, at or before its current deadline (a
//! deadline moved later keeps its entry; the entry is moved when it reaches the top). Other
//! entries of the key are stale and dropped when they reach the top. The top is always a live
//! entry at its key's current deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hash;
use std::time::Instant;

use super::idmap::IdMap;

/// A key's deadline and where its live heap entry is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    current: Instant,
    entry: Instant,
}

/// Deadlines keyed by `K`.
#[derive(Debug)]
pub(crate) struct Deadlines<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    slots: IdMap<K, Slot>,
    /// Heap entries looked at by `clean_top` (for tests of the structure's cost).
    #[cfg(test)]
    visited: u64,
}

impl<K: Copy + Eq + Hash + Ord> Deadlines<K> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            slots: IdMap::default(),
            #[cfg(test)]
            visited: 0,
        }
    }

    /// Sets `key`'s deadline (`None`: it has none).
    pub(crate) fn schedule(&mut self, key: K, at: Option<Instant>) {
        match at {
            None => {
                if self.slots.remove(&key).is_none() {
                    return;
                }
            }
            Some(t) => match self.slots.get_mut(&key) {
                Some(s) if s.current == t => return,
                // Later (or back to where its entry is): the entry stays, moved at the top.
                Some(s) if s.entry <= t => s.current = t,
                _ => {
                    self.slots.insert(
                        key,
                        Slot {
                            current: t,
                            entry: t,
                        },
                    );
                    self.heap.push(Reverse((t, key)));
                }
            },
        }
        self.clean_top();
        if self.heap.len() > 4 * self.slots.len() + 64 {
            // Too many stale entries: rebuild from the current deadlines.
            self.heap = self
                .slots
                .iter_mut()
                .map(|(&k, s)| {
                    s.entry = s.current;
                    Reverse((s.current, k))
                })
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
        self.slots.remove(&key);
        self.clean_top();
        Some(key)
    }

    /// Entries in the heap, stale ones included (for tests of the structure's cost).
    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// Heap entries looked at so far (for tests of the structure's cost).
    #[cfg(test)]
    pub(crate) fn visited(&self) -> u64 {
        self.visited
    }

    /// Drops stale entries off the top and moves a live entry whose deadline went later, so
    /// that the top is always a current deadline.
    fn clean_top(&mut self) {
        while let Some(&Reverse((t, key))) = self.heap.peek() {
            #[cfg(test)]
            {
                self.visited += 1;
            }
            match self.slots.get_mut(&key) {
                Some(s) if s.entry == t => {
                    if s.current == t {
                        return;
                    }
                    s.entry = s.current;
                    let later = s.current;
                    self.heap.pop();
                    self.heap.push(Reverse((later, key)));
                }
                _ => {
                    self.heap.pop();
                }
            }
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

    #[test]
    fn later_moves_keep_their_entry_and_earlier_moves_are_exact() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Deadlines::new();
        d.schedule(1u32, Some(ms(10)));
        d.schedule(2, Some(ms(15)));
        // Key 1 moves later again and again (a heartbeat pushed back): no new entries.
        for n in 11..100 {
            d.schedule(1, Some(ms(n)));
        }
        assert!(d.heap_len() <= 3, "{} entries", d.heap_len());
        assert_eq!(d.next(), Some(ms(15)));
        // Key 2 moves earlier: exact at once.
        d.schedule(2, Some(ms(5)));
        assert_eq!(d.next(), Some(ms(5)));
        assert_eq!(d.pop_due(ms(50)), Some(2));
        assert_eq!(d.pop_due(ms(50)), None);
        assert_eq!(d.next(), Some(ms(99)));
        // Back to where its entry was, then earlier than any entry.
        d.schedule(1, Some(ms(20)));
        assert_eq!(d.next(), Some(ms(20)));
        d.schedule(1, Some(ms(1)));
        assert_eq!(d.next(), Some(ms(1)));
        assert_eq!(d.pop_due(ms(1)), Some(1));
        assert_eq!(d.next(), None);
        assert_eq!(d.pop_due(ms(1000)), None);
    }
}
