//! Congestion control: a window of octets in flight (reliable and unreliable alike: a flood of
//! unreliable data overflows a bottleneck queue, or a receiver's socket buffer, as surely as a
//! reliable one) that grows while acknowledgements come and shrinks on loss (slow start, then additive increase, multiplicative decrease, as in
//! NewReno), and a pacing rate derived from it.
//!
//! Reactions to loss happen at most once per round trip (the window shrinks to 70%, as in
//! CUBIC), and the window never falls below 32 datagrams, a floor that keeps a game's traffic
//! moving on a lossy link.

use std::time::{Duration, Instant};

/// The pacing rate's multiple of window per RTT.
const PACING_GAIN: u64 = 4;

/// The largest datagram, the unit the window grows by.
pub const MSS: u64 = 1002;

/// NewReno-style window and pacing.
#[derive(Debug, Clone)]
pub struct Congestion {
    window: u64,
    ssthresh: u64,
    min_window: u64,
    max_window: u64,
    recovery_start: Option<Instant>,
    acked_since_growth: u64,
    tokens: f64,
    last_refill: Option<Instant>,
}

impl Default for Congestion {
    fn default() -> Self {
        Self::new()
    }
}

impl Congestion {
    /// A window of 32 datagrams, floor 32, ceiling 16 MiB.
    pub fn new() -> Self {
        Self {
            window: 32 * MSS,
            ssthresh: u64::MAX,
            min_window: 32 * MSS,
            max_window: 16 << 20,
            recovery_start: None,
            acked_since_growth: 0,
            tokens: 64.0 * MSS as f64,
            last_refill: None,
        }
    }

    /// The window in octets.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Whether no loss was seen yet: the window doubles every round trip, so what the path
    /// carries is not known yet (the window is a lower bound).
    pub fn in_slow_start(&self) -> bool {
        self.ssthresh == u64::MAX
    }

    /// Octets `acked` were acknowledged for a packet sent at `sent`.
    pub fn on_ack(&mut self, acked: u64, sent: Instant) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        if self.window < self.ssthresh {
            self.window = (self.window + acked).min(self.max_window);
        } else {
            self.acked_since_growth += acked;
            if self.acked_since_growth >= self.window {
                self.acked_since_growth -= self.window;
                self.window = (self.window + MSS).min(self.max_window);
            }
        }
    }

    /// A packet sent at `sent` was declared lost at `now`.
    pub fn on_loss(&mut self, now: Instant, sent: Instant) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        // A gentler decrease than Reno's half: on a game's path most loss is random, not
        // congestion, and halving at every loss event starves a large transfer.
        self.window = (self.window * 7 / 10).max(self.min_window);
        self.ssthresh = self.window;
        self.acked_since_growth = 0;
    }

    /// The pacing rate in octets per second: four times the window per smoothed RTT (pacing
    /// spreads bursts, such as the fragments of a large message, without being what limits a
    /// transfer), at least 64 KiB/s.
    pub fn pacing_rate(&self, srtt: Duration) -> u64 {
        let secs = srtt.as_secs_f64().max(0.001);
        ((PACING_GAIN * self.window) as f64 / secs).max(65536.0) as u64
    }

    /// Whether a datagram may go out now under pacing (some tokens are left). What it costs is
    /// charged afterwards with [`Congestion::on_sent`], at its real size.
    pub fn try_pace(&mut self, now: Instant, srtt: Duration) -> bool {
        let rate = self.pacing_rate(srtt) as f64;
        let burst = (self.window as f64).max(16.0 * MSS as f64);
        if let Some(last) = self.last_refill {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * rate).min(burst);
        }
        self.last_refill = Some(now);
        self.tokens > 0.0
    }

    /// A datagram of `len` octets went out.
    pub fn on_sent(&mut self, len: usize) {
        self.tokens -= len as f64;
    }

    /// When tokens will be there again, from the last refill.
    pub fn pace_deadline(&self, srtt: Duration) -> Option<Instant> {
        let last = self.last_refill?;
        if self.tokens > 0.0 {
            return Some(last);
        }
        let rate = self.pacing_rate(srtt) as f64;
        Some(last + Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

impl Congestion {
    /// The pacer's tokens at `now` (octets that may go out back to back), as
    /// [`Congestion::try_pace`] would refill them, without changing anything.
    pub fn tokens_at(&self, now: Instant, srtt: Duration) -> f64 {
        let rate = self.pacing_rate(srtt) as f64;
        let burst = (self.window as f64).max(16.0 * MSS as f64);
        match self.last_refill {
            Some(last) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                (self.tokens + dt * rate).min(burst)
            }
            None => self.tokens,
        }
    }
}
