//! The receiving side's packet-number bookkeeping: the replay window (a packet number is
//! accepted at most once) and the acknowledgements owed for reliable packets (a second bit
//! set beside the window: no heap, no search through a list per packet).

use std::time::{Duration, Instant};

use super::loss::ReceivedLoss;

use crate::wire::AckFields;

/// Packet numbers remembered below the largest accepted one.
pub const WINDOW: u32 = 4096;

/// Per 64 packet numbers of the window, two words side by side (one cache line holds both
/// for 256 packet numbers): which were accepted ([`SEEN`]) and which are owed an
/// acknowledgement ([`OWED`]). Packet number `pn` is bit `pn % 64` of pair `pn % WINDOW / 64`.
#[derive(Debug, Clone)]
struct Window([[u64; 2]; (WINDOW / 64) as usize]);

const SEEN: usize = 0;
const OWED: usize = 1;

impl Window {
    const ZERO: Self = Self([[0; 2]; (WINDOW / 64) as usize]);

    fn get(&self, kind: usize, at: usize) -> bool {
        self.0[at / 64][kind] >> (at % 64) & 1 != 0
    }

    /// Sets bit `at` of `kind` to `value`; returns what it was.
    fn replace(&mut self, kind: usize, at: usize, value: bool) -> bool {
        let word = &mut self.0[at / 64][kind];
        let mask = 1u64 << (at % 64);
        let was = *word & mask != 0;
        if value {
            *word |= mask;
        } else {
            *word &= !mask;
        }
        was
    }

    fn word(&self, kind: usize, w: usize) -> u64 {
        self.0[w][kind]
    }

    fn clear(&mut self, kind: usize) {
        for pair in &mut self.0 {
            pair[kind] = 0;
        }
    }
}

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
    /// Accepted packet numbers, and those owed an acknowledgement (only accepted ones, inside
    /// the window, are owed).
    bits: Window,
    /// How many [`OWED`] bits of `bits` are set.
    owed_count: u32,
    /// No owed packet number is below this one (where the search for the oldest starts).
    owed_from: u32,
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
            bits: Window::ZERO,
            owed_count: 0,
            owed_from: 0,
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
                if self.bits.get(SEEN, (pn % WINDOW) as usize) {
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
            Some(l) if p <= l && l - p < WINDOW => bits.get(SEEN, (p % WINDOW) as usize),
            _ => false,
        };
        self.loss.on_arrival(now, pn, largest, reorder, held);
        match self.largest {
            Some(l) if pn <= l => {}
            Some(l) => {
                if pn - l >= WINDOW {
                    self.bits.clear(SEEN);
                    self.forget_owed();
                } else {
                    // The places of `l + 1 ..= pn` held packet numbers a window older, which
                    // leave it (owed ones too: too old to be named by an ACK now).
                    for p in l + 1..=pn {
                        let at = (p % WINDOW) as usize;
                        self.bits.replace(SEEN, at, false);
                        if self.bits.replace(OWED, at, false) {
                            self.owed_count -= 1;
                        }
                    }
                    if self.owed_count == 0 {
                        self.pending_since = None;
                    }
                }
                self.largest = Some(pn);
            }
            None => {
                self.bits.clear(SEEN);
                self.forget_owed();
                self.largest = Some(pn);
            }
        }
        self.bits.replace(SEEN, (pn % WINDOW) as usize, true);
    }

    fn forget_owed(&mut self) {
        self.bits.clear(OWED);
        self.owed_count = 0;
        self.pending_since = None;
    }

    /// Records that the reliable packet `pn` (accepted now or before, so inside the window)
    /// must be acknowledged.
    pub fn ack_later(&mut self, now: Instant, pn: u32) {
        if self.check(pn) != Seen::Duplicate {
            debug_assert!(false, "ack_later({pn}) of a packet number not accepted");
            return;
        }
        if self.bits.replace(OWED, (pn % WINDOW) as usize, true) {
            return;
        }
        if self.owed_count == 0 || pn < self.owed_from {
            self.owed_from = pn;
        }
        self.owed_count += 1;
        self.pending_since.get_or_insert(now);
    }

    /// Whether acknowledgements are owed.
    pub fn has_pending_acks(&self) -> bool {
        self.owed_count > 0
    }

    /// Since when the oldest owed acknowledgement waits.
    pub fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    /// Owed acknowledgements.
    pub fn pending_count(&self) -> usize {
        self.owed_count as usize
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
                let words = (WINDOW / 64) as usize;
                let at = (e % WINDOW) as usize;
                let (w, b) = (at / 64, at % 64);
                // The word below, only when the 16 bits reach into it (another cache line
                // one time in four).
                let below = if b < 15 {
                    self.bits.word(SEEN, (w + words - 1) % words)
                } else {
                    0
                };
                // Bit 64 + b of `pair` is `e`'s; the 16 at and below it, MSB first, are the
                // field.
                let pair = (u128::from(self.bits.word(SEEN, w)) << 64) | u128::from(below);
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
        if self.owed_count == 0 {
            return None;
        }
        let largest = self.largest?;
        // Oldest first, so that the sender sees acknowledgements in the order it sent: an ACK
        // of a newer packet ahead of an older one's would make the older look lost.
        let bottom = largest.saturating_sub(WINDOW - 1);
        let oldest = self.next_owed(self.owed_from.max(bottom), largest)?;
        let top = oldest.saturating_add(16).min(largest);
        let newest = (oldest..=top)
            .rev()
            .find(|&p| self.bits.get(OWED, (p % WINDOW) as usize))
            .expect("oldest itself is owed");
        let fields = self.fields_for(newest);
        for p in oldest..=newest {
            if self.bits.replace(OWED, (p % WINDOW) as usize, false) {
                self.owed_count -= 1;
            }
        }
        self.owed_from = newest.saturating_add(1);
        if self.owed_count == 0 {
            self.pending_since = None;
        }
        Some(fields)
    }

    /// The lowest owed packet number in `from ..= to` (a stretch of at most the window), read
    /// a word at a time.
    fn next_owed(&self, from: u32, to: u32) -> Option<u32> {
        let mut p = from;
        while p <= to {
            let at = (p % WINDOW) as usize;
            let (w, b) = (at / 64, at % 64);
            let word = self.bits.word(OWED, w) >> b;
            if word != 0 {
                let found = p + word.trailing_zeros();
                return (found <= to).then_some(found);
            }
            // On to the start of the next word.
            p = p.checked_add(64 - b as u32)?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded xorshift64 generator.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    fn ack_bits_read_from_words_match_one_by_one() {
        let now = Instant::now();
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15_u64);
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

    /// The owed acknowledgements as a bit set give what a plain list gave: oldest first, the
    /// newest owed within 16 of it named, those covered no longer owed; packet numbers that
    /// leave the window are no longer owed. Seeded, with duplicates, jumps and gaps.
    #[test]
    fn owed_acks_match_a_list() {
        let now = Instant::now();
        let mut next = xorshift(0x2545_F491_4F6C_DD1D_u64);
        for round in 0..100 {
            let mut r = Receiver::new();
            let mut list: Vec<u32> = Vec::new();
            let mut pn = (next() % 100) as u32;
            for step in 0..2_000 {
                match next() % 10 {
                    // A new packet number, now and then far ahead (past the window).
                    0..=5 => {
                        pn += match next() % 50 {
                            0 => 5_000,
                            1 => 3_000,
                            k => (k % 4) as u32,
                        };
                        let fresh = r.check(pn) == Seen::New;
                        if fresh {
                            r.accept(now, pn, Duration::ZERO);
                            let l = r.largest().unwrap();
                            list.retain(|&p| l - p < WINDOW);
                        }
                        if r.check(pn) == Seen::Duplicate && next() % 4 != 0 {
                            r.ack_later(now, pn);
                            if !list.contains(&pn) {
                                list.push(pn);
                            }
                        }
                    }
                    // A duplicate of an older accepted one, owed again.
                    6 => {
                        let back = (next() % 40) as u32;
                        let p = pn.saturating_sub(back);
                        if r.check(p) == Seen::Duplicate {
                            r.ack_later(now, p);
                            if !list.contains(&p) {
                                list.push(p);
                            }
                        }
                    }
                    _ => {
                        let want = list.iter().min().copied().map(|oldest| {
                            let newest = list
                                .iter()
                                .copied()
                                .filter(|&p| p - oldest <= 16)
                                .max()
                                .unwrap();
                            list.retain(|&p| p > newest || newest - p > 16);
                            r.fields_for(newest)
                        });
                        assert_eq!(r.take_ack(), want, "round {round}, step {step}");
                    }
                }
                assert_eq!(r.pending_count(), list.len(), "round {round}, step {step}");
                assert_eq!(r.has_pending_acks(), !list.is_empty());
                assert_eq!(r.pending_since().is_some(), !list.is_empty());
            }
        }
    }
}
