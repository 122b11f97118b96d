//! Loss estimates a game can show: the fraction of this side's datagrams that did not reach
//! the peer (from acknowledgements) and of the peer's that did not arrive here (from
//! packet-number gaps).
//!
//! Both count first transmissions over a window of recent samples, so that the figure tells
//! what the path loses, not what is left after resends and redundant copies repaired it:
//! - A gap in the peer's packet numbers is judged once a short reordering allowance has
//!   passed; a packet number that arrives later than that is a resend or a second copy and
//!   takes nothing back.
//! - On the sending side, a transmission counts as lost only when an ACK describes it missing
//!   after packets sent later arrived (never from a timer alone: its ACK may be what was
//!   lost), and as received when acknowledged, once per transmission. A small reliable packet
//!   sent twice while loss lasts is lost only when both copies are, so it is not counted;
//!   when nothing else was counted for 32 such packets, one goes once to keep the estimate
//!   fed.

use std::time::{Duration, Instant};

/// Samples per bucket.
const BUCKET: u16 = 64;
/// Buckets kept: the window is the last 15 full buckets and the one filling (about
/// 1,000 samples, so a 10% loss reads within about 1 point).
const BUCKETS: usize = 16;

/// Lost and total samples over the last `BUCKETS` buckets of `BUCKET` samples.
#[derive(Debug, Clone, Default)]
pub(crate) struct LossWindow {
    lost: [u16; BUCKETS],
    total: [u16; BUCKETS],
    /// The bucket filling now.
    at: usize,
}

impl LossWindow {
    /// Records one sample.
    pub(crate) fn record(&mut self, lost: bool) {
        if self.total[self.at] >= BUCKET {
            self.at = (self.at + 1) % BUCKETS;
            self.lost[self.at] = 0;
            self.total[self.at] = 0;
        }
        self.total[self.at] += 1;
        self.lost[self.at] += u16::from(lost);
    }

    /// (lost, total) over the window.
    pub(crate) fn counts(&self) -> (u32, u32) {
        let lost = self.lost.iter().map(|&n| u32::from(n)).sum();
        let total = self.total.iter().map(|&n| u32::from(n)).sum();
        (lost, total)
    }

    /// The lost fraction (0.0 with no samples).
    pub(crate) fn fraction(&self) -> f64 {
        let (lost, total) = self.counts();
        if total == 0 {
            0.0
        } else {
            f64::from(lost) / f64::from(total)
        }
    }
}

/// Gaps in the peer's packet numbers waiting to be judged.
const GAPS: usize = 8;
/// Packet numbers one arrival may count as skipped (a jump further counts this many).
const MAX_SKIP: u32 = 64;

/// A run of packet numbers skipped, and when the packet after them showed the gap.
#[derive(Debug, Clone, Copy)]
struct Gap {
    first: u32,
    end: u32,
    since: Instant,
}

/// The receiving side's estimate, fed by each packet number accepted.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReceivedLoss {
    window: LossWindow,
    /// How many of `gaps` are set: without loss there are none, and an arrival then reads
    /// neither them nor their cache lines.
    open_gaps: u8,
    gaps: [Option<Gap>; GAPS],
}

impl ReceivedLoss {
    /// `pn` arrived at `now` (accepted once). `largest` is the largest accepted before it;
    /// `allowance` is how late a packet may arrive and still count as reordered rather than
    /// resent. `held(p)` tells whether packet number `p` has been accepted.
    pub(crate) fn on_arrival(
        &mut self,
        now: Instant,
        pn: u32,
        largest: Option<u32>,
        allowance: Duration,
        held: impl Fn(u32) -> bool,
    ) {
        debug_assert_eq!(
            usize::from(self.open_gaps),
            self.gaps.iter().flatten().count(),
            "open_gaps out of step with the gaps"
        );
        self.judge(now, allowance, &held);
        match largest {
            Some(l) if pn <= l => {
                // Late: inside the allowance it is a reordered packet, counted as received;
                // later, a resend or a copy of one already counted lost.
                let pending = self.open_gaps > 0
                    && self
                        .gaps
                        .iter()
                        .flatten()
                        .any(|g| (g.first..g.end).contains(&pn));
                if pending {
                    self.window.record(false);
                }
            }
            Some(l) => {
                if pn > l + 1 {
                    let first = l + 1;
                    let end = pn.min(first.saturating_add(MAX_SKIP));
                    let since = now;
                    let slot = match self.gaps.iter().position(Option::is_none) {
                        Some(i) => i,
                        None => {
                            // Full: judge the oldest at once.
                            let i = self.oldest().unwrap_or(0);
                            if let Some(g) = self.gaps[i].take() {
                                self.open_gaps -= 1;
                                self.count(g, &held);
                            }
                            i
                        }
                    };
                    self.gaps[slot] = Some(Gap { first, end, since });
                    self.open_gaps += 1;
                }
                self.window.record(false);
            }
            None => self.window.record(false),
        }
    }

    /// Counts the gaps whose allowance has passed.
    fn judge(&mut self, now: Instant, allowance: Duration, held: &impl Fn(u32) -> bool) {
        if self.open_gaps == 0 {
            return;
        }
        for i in 0..GAPS {
            if let Some(g) = self.gaps[i] {
                if now.saturating_duration_since(g.since) > allowance {
                    self.gaps[i] = None;
                    self.open_gaps -= 1;
                    self.count(g, held);
                }
            }
        }
    }

    fn oldest(&self) -> Option<usize> {
        (0..GAPS)
            .filter(|&i| self.gaps[i].is_some())
            .min_by_key(|&i| self.gaps[i].map(|g| g.since))
    }

    /// Each packet number of `g` still missing is one loss.
    fn count(&mut self, g: Gap, held: &impl Fn(u32) -> bool) {
        for p in g.first..g.end {
            if !held(p) {
                self.window.record(true);
            }
        }
    }

    /// Fraction of the peer's packets that did not arrive (0.0 to 1.0).
    pub(crate) fn fraction(&self) -> f64 {
        self.window.fraction()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_old_buckets() {
        let mut w = LossWindow::default();
        for _ in 0..(BUCKET as usize * BUCKETS) {
            w.record(true);
        }
        assert_eq!(w.fraction(), 1.0);
        for _ in 0..(BUCKET as usize * BUCKETS) {
            w.record(false);
        }
        assert!(w.fraction() < 0.13, "{}", w.fraction());
    }

    #[test]
    fn a_late_copy_takes_nothing_back_a_reordered_packet_does() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = ReceivedLoss::default();
        let mut held = [false; 16];
        let mut arrive = |at: u64, pn: u32| {
            let largest = (0..16u32).rev().find(|&p| held[p as usize]);
            let h = held;
            r.on_arrival(t0 + ms(at), pn, largest, ms(5), |p| h[p as usize]);
            held[pn as usize] = true;
        };
        arrive(0, 0);
        arrive(10, 2); // pn 1 missing...
        arrive(12, 1); // ...reordered: 2 ms after the gap showed
        arrive(20, 4); // pn 3 missing...
        arrive(40, 3); // ...a resend, 20 ms later: lost
        arrive(60, 5);
        // Five packet numbers received once each (the resend of 3 takes nothing back), 3 lost.
        assert_eq!(r.window.counts(), (1, 6));
        assert!((r.fraction() - 1.0 / 6.0).abs() < 1e-9);
    }
}
