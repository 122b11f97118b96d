//! The receiving side's packet-number bookkeeping: the replay window (a packet number is
//! accepted at most once) and the acknowledgements owed for reliable packets.

use bitvec::prelude::*;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::loss::ReceivedLoss;

use crate::wire::AckFields;

/// Packet numbers remembered below the largest accepted one.
pub const WINDOW: u32 = 4096;
/// Reliable packet numbers that may wait for an acknowledgement at once.
const MAX_PENDING_ACKS: usize = 1024;

/// What the replay window says of a packet number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not accepted yet.
    New,
    /// Accepted before.
    Duplicate,
    /// Below the window: it cannot be told apart from a replay, so it is dropped.
    TooOld,
}

/// Replay window and acknowledgement state.
#[derive(Debug)]
pub struct Receiver {
    largest: Option<u32>,
    bits: BitArray<[u64; (WINDOW / 64) as usize], Lsb0>,
    pending: VecDeque<u32>,
    pending_since: Option<Instant>,
    /// Fraction of the peer's packets that did not arrive (see [`ReceivedLoss`]).
    loss: ReceivedLoss,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// Nothing received yet.
    pub fn new() -> Self {
        Self {
            largest: None,
            bits: BitArray::ZERO,
            pending: VecDeque::new(),
            pending_since: None,
            loss: ReceivedLoss::default(),
        }
    }

    /// Fraction of the peer's packets that did not arrive, over about the last 1,000 (0.0 to
    /// 1.0): a packet number skipped counts as lost unless it arrives within the reordering
    /// allowance given to [`Receiver::accept`]; a resend or a redundant copy that repairs it
    /// later takes nothing back.
    pub fn loss(&self) -> f64 {
        self.loss.fraction()
    }

    /// The largest packet number accepted.
    pub fn largest(&self) -> Option<u32> {
        self.largest
    }

    /// Whether `pn` would be accepted.
    pub fn check(&self, pn: u32) -> Seen {
        match self.largest {
            None => Seen::New,
            Some(l) if pn > l => Seen::New,
            Some(l) if l - pn >= WINDOW => Seen::TooOld,
            Some(_) => {
                if self.bits[(pn % WINDOW) as usize] {
                    Seen::Duplicate
                } else {
                    Seen::New
                }
            }
        }
    }

    /// Marks `pn` accepted (after it opened) at `now`. A packet number that arrives within
    /// `reorder` of the packet that showed it missing counts as reordered, not lost.
    pub fn accept(&mut self, now: Instant, pn: u32, reorder: Duration) {
        let bits = &self.bits;
        let largest = self.largest;
        let held = |p: u32| match largest {
            Some(l) if p <= l && l - p < WINDOW => bits[(p % WINDOW) as usize],
            _ => false,
        };
        self.loss.on_arrival(now, pn, largest, reorder, held);
        match self.largest {
            Some(l) if pn <= l => {}
            Some(l) => {
                if pn - l >= WINDOW {
                    self.bits.fill(false);
                } else {
                    for p in l + 1..pn {
                        self.bits.set((p % WINDOW) as usize, false);
                    }
                }
                self.largest = Some(pn);
            }
            None => {
                self.bits.fill(false);
                self.largest = Some(pn);
            }
        }
        self.bits.set((pn % WINDOW) as usize, true);
    }

    /// Records that the reliable packet `pn` (accepted now or before) must be acknowledged.
    pub fn ack_later(&mut self, now: Instant, pn: u32) {
        if self.pending.contains(&pn) {
            return;
        }
        if self.pending.len() >= MAX_PENDING_ACKS {
            self.pending.pop_front();
        }
        self.pending.push_back(pn);
        self.pending_since.get_or_insert(now);
    }

    /// Octets held on the heap (the window itself is inline).
    pub fn memory_bytes(&self) -> usize {
        self.pending.capacity() * std::mem::size_of::<u32>()
    }

    /// Gives back the owed-acknowledgement queue's spare room.
    pub fn trim(&mut self) {
        self.pending.shrink_to(0);
    }

    /// Whether acknowledgements are owed.
    pub fn has_pending_acks(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Since when the oldest owed acknowledgement waits.
    pub fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    /// Owed acknowledgements.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// ACK fields naming the largest accepted packet and the 16 before it.
    pub fn latest_ack(&self) -> Option<AckFields> {
        self.largest.map(|l| self.fields_for(l))
    }

    /// The ACK fields naming `ack` (at most the largest accepted): bit *i* (MSB first) says
    /// whether `ack - 1 - i` was accepted. Read from the window's words at once: the 16 bits
    /// end at `ack - 1` and span at most two words.
    fn fields_for(&self, ack: u32) -> AckFields {
        let ack_bits = match (self.largest, ack.checked_sub(1)) {
            (Some(l), Some(e)) if ack <= l => {
                let words = self.bits.as_raw_slice();
                let at = (e % WINDOW) as usize;
                let (w, b) = (at / 64, at % 64);
                // The word below, only when the 16 bits reach into it (another cache line
                // one time in eight).
                let below = if b < 15 {
                    words[(w + words.len() - 1) % words.len()]
                } else {
                    0
                };
                // Bit 64 + b of `pair` is `e`'s; the 16 at and below it, MSB first, are the
                // field.
                let pair = (u128::from(words[w]) << 64) | u128::from(below);
                let x = (pair >> (64 + b - 15)) as u16;
                // Valid: packet numbers not below 0 (`i <= e`) and inside the window below the
                // largest (`l - (e - i) < WINDOW`); a stale bit past either is masked off.
                let valid = 16
                    .min(e as u64 + 1)
                    .min(u64::from(WINDOW.saturating_sub(l - e)));
                let mask = (0xFFFF_u32 << (16 - valid)) as u16;
                x & mask
            }
            _ => self.fields_one_by_one(ack),
        };
        AckFields {
            ack_id: ack as u16,
            ack_bits,
        }
    }

    /// The ACK bits as the wire defines them, one packet number at a time.
    fn fields_one_by_one(&self, ack: u32) -> u16 {
        let mut bits = 0u16;
        for i in 0..16u32 {
            let Some(p) = ack.checked_sub(1 + i) else {
                break;
            };
            if self.check(p) == Seen::Duplicate {
                bits |= 0x8000 >> i;
            }
        }
        bits
    }

    /// ACK fields that acknowledge the oldest owed packet number and every owed one among the
    /// 16 after it (the ACK ID is the newest of those), which are then no longer owed. `None`
    /// when nothing is owed.
    pub fn take_ack(&mut self) -> Option<AckFields> {
        // Oldest first, so that the sender sees acknowledgements in the order it sent: an ACK
        // of a newer packet ahead of an older one's would make the older look lost.
        let oldest = *self.pending.iter().min()?;
        let newest = self
            .pending
            .iter()
            .copied()
            .filter(|&p| p - oldest <= 16)
            .max()
            .expect("oldest itself qualifies");
        let fields = self.fields_for(newest);
        self.pending.retain(|&p| p > newest || newest - p > 16);
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        Some(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_bits_read_from_words_match_one_by_one() {
        let now = Instant::now();
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let mut r = Receiver::new();
            let mut pn = (next() % 40) as u32;
            for _ in 0..300 {
                // Mostly forward, with gaps, reordering, and now and then a jump past the
                // window (stale bits below it must not show).
                pn = match next() % 20 {
                    0 => pn + WINDOW + (next() % 100) as u32,
                    1..=4 => pn.saturating_sub((next() % 20) as u32),
                    _ => pn + 1 + (next() % 3) as u32,
                };
                if r.check(pn) == Seen::New {
                    r.accept(now, pn, Duration::ZERO);
                }
                let l = r.largest().unwrap();
                let near_edge = l.saturating_sub(WINDOW - (next() % 40) as u32);
                for ack in [
                    l,
                    l.saturating_sub((next() % 40) as u32),
                    pn.min(l),
                    l + 1,
                    near_edge,
                ] {
                    assert_eq!(
                        r.fields_for(ack).ack_bits,
                        r.fields_one_by_one(ack),
                        "round {round}, largest {l}, ack {ack}"
                    );
                }
            }
        }
    }

    #[test]
    fn replay_window() {
        let now = Instant::now();
        let mut r = Receiver::new();
        assert_eq!(r.check(5), Seen::New);
        r.accept(now, 5, Duration::ZERO);
        assert_eq!(r.check(5), Seen::Duplicate);
        assert_eq!(r.check(4), Seen::New);
        r.accept(now, 5000, Duration::ZERO);
        assert_eq!(r.check(5), Seen::TooOld);
        assert_eq!(r.check(4999), Seen::New);
        assert_eq!(r.check(5000), Seen::Duplicate);
        r.accept(now, 4999, Duration::ZERO);
        assert_eq!(r.check(4999), Seen::Duplicate);
        r.accept(now, 5000 + WINDOW - 1, Duration::ZERO);
        assert_eq!(r.check(4999), Seen::TooOld);
        assert_eq!(r.check(5000), Seen::Duplicate);
    }

    #[test]
    fn acks_cover_owed_packets() {
        let now = Instant::now();
        let mut r = Receiver::new();
        for pn in [1u32, 2, 3, 40, 41] {
            r.accept(now, pn, Duration::ZERO);
            r.ack_later(now, pn);
        }
        let a = r.take_ack().unwrap();
        assert_eq!(a.ack_id, 3);
        assert!(a.acknowledges(1) && a.acknowledges(2));
        let b = r.take_ack().unwrap();
        assert_eq!(b.ack_id, 41);
        assert!(b.acknowledges(40));
        assert!(r.take_ack().is_none());
    }
}
