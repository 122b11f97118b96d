//! A less-than-best-effort limiter for the bulk lane (after LEDBAT, RFC 6817): a second
//! window, for the datagrams of less-than-best-effort channels only, driven by the queueing
//! delay the path shows rather than by loss, so that a large transfer keeps the bottleneck's
//! queue short and the game's messages do not wait behind it there.
//!
//! The queueing delay is the current RTT (the smaller of the last two samples, from
//! acknowledgements of any packet, ack delay taken off, and from PONGs: while the lane sends,
//! a PING goes out every RTT, so samples come even when nothing else is acknowledged) less the
//! base RTT (the smallest sample of the last ten seconds, kept as ten one-second minima, so a
//! path that got longer, a new route or address, is learned within ten seconds).
//!
//! The window grows while that delay is below the target: at first by the octets
//! acknowledged times `(target - delay) / target` (slow start, up to doubling per round trip),
//! once the delay reached half the target by about one datagram per round trip times that
//! fraction (RFC 6817's additive increase), except while the window is below the path's
//! bandwidth-delay product (delivery rate × base RTT, see below), where it cannot build a
//! queue and grows as in slow start again (after a halving, say: at 20 Mbit/s and 1% loss
//! regrowing by one datagram per round trip took a third of the link's rate). Above the target it shrinks in proportion: each
//! acknowledged octet takes `0.25 * min(1, (delay - target) / target)` octets off, a quarter
//! of the window per round trip at twice the target. The delay signal arrives a round trip
//! late, so the window is also held below the delivery rate (octets acknowledged over four
//! base RTTs, the largest of the last eight such intervals, a BBR-style bandwidth estimate)
//! times (base RTT + target): however fast it grew, it builds about the target's queue, not
//! more. (With 1.25 times that, the game's p99 at 4 Mbit/s without loss was 94 ms instead of
//! 70; over intervals of one base RTT, acknowledgements arriving in bursts, after a resend,
//! read as a faster link: at 4 Mbit/s and 1% loss the p99 grew by 31 to 88 ms over seeds 1
//! to 5, over four base RTTs by 6 to 26 ms.) Before the first such interval ends, the
//! current one's rate counts once it lasted a base RTT; before any RTT sample, when the base
//! is a guess, there is no ceiling.
//!
//! The lane's datagrams are paced at the window per current RTT (base + queueing delay): a
//! window too large for the link shows as delay and slows the pacing at once. Their octets in
//! flight do not count against the window the game's packets fit in (a bulk part is 250 KB,
//! whole until acknowledged); the loss-based window still bounds the bulk packets (a new one
//! is built while every octet in flight fits it, or less than two of the largest packets of
//! the lane are in flight), and the connection's pacer every datagram.
//!
//! Loss: a loss while the queue held at least half the target halves the window (once per
//! RTT): that is congestion, a queue overflowing or an AQM dropping. A loss while the queue
//! was near empty is taken as random loss (a lossy radio link) and ignored here: halving for
//! it would leave the link idle for nothing. (In `netsim/tests/queue.rs`, 1% loss each way:
//! halving at every loss, as RFC 6817 does, gave 2.91 Mbit/s of a 4 Mbit/s link and
//! 3.29 Mbit/s of 20 Mbit/s; ignoring random loss gives 3.23 and 10.1.)

use std::time::{Duration, Instant};

use super::congestion::MSS;

/// Window decrease per acknowledged octet when the queueing delay is twice the target (or
/// more; proportionally less closer to it): a quarter of the window per round trip.
const DECREASE: f64 = 0.25;
/// Base-delay history: this many one-second minima.
const BASE_BUCKETS: usize = 10;
const BUCKET: Duration = Duration::from_secs(1);
/// Current-delay filter: the smallest of this many latest samples.
const CURRENT_SAMPLES: usize = 2;
/// The smallest window (octets).
const MIN_WINDOW: f64 = 2.0 * MSS as f64;
/// The largest window (octets).
const MAX_WINDOW: f64 = (16 << 20) as f64;
/// The window a transfer starts with (octets).
const INITIAL_WINDOW: f64 = 16.0 * MSS as f64;
/// Delivery-rate history: this many intervals of at least four base RTTs (and 10 ms) each.
const RATE_SAMPLES: usize = 8;
/// The window's ceiling over the delivery rate times (base RTT + target) (1.25 let the queue
/// overshoot the target: see the module).
const RATE_HEADROOM: f64 = 1.0;
/// Pacing bursts: at most this many octets back to back.
const BURST: f64 = 4.0 * MSS as f64;

/// The bulk lane's delay-based window and its pacer.
#[derive(Debug, Clone)]
pub struct Ledbat {
    target: Duration,
    window: f64,
    /// The least of `base[..base_len]` and of `current[..current_len]` (`Duration::MAX`
    /// before the first sample), kept by `on_rtt`: every ack asks for the queueing delay, and
    /// reading two fields beside the window costs one cache line where the scans cost four.
    base_min: Duration,
    current_min: Duration,
    base: [Duration; BASE_BUCKETS],
    base_len: usize,
    bucket_start: Option<Instant>,
    current: [Duration; CURRENT_SAMPLES],
    current_len: usize,
    current_next: usize,
    last_decrease: Option<Instant>,
    slow_start: bool,
    last_bulk_sent: Option<Instant>,
    tokens: f64,
    last_refill: Option<Instant>,
    rate_start: Option<Instant>,
    rate_octets: f64,
    rates: [f64; RATE_SAMPLES],
    rate_next: usize,
}

/// The least of `samples`, `Duration::MAX` if there is none.
fn least(samples: &[Duration]) -> Duration {
    samples.iter().min().copied().unwrap_or(Duration::MAX)
}

impl Ledbat {
    /// A limiter keeping the queueing delay near `target`.
    pub fn new(target: Duration) -> Self {
        Self {
            target: target.max(Duration::from_millis(1)),
            window: INITIAL_WINDOW,
            base_min: Duration::MAX,
            current_min: Duration::MAX,
            base: [Duration::MAX; BASE_BUCKETS],
            base_len: 0,
            bucket_start: None,
            current: [Duration::MAX; CURRENT_SAMPLES],
            current_len: 0,
            current_next: 0,
            last_decrease: None,
            slow_start: true,
            last_bulk_sent: None,
            tokens: BURST,
            last_refill: None,
            rate_start: None,
            rate_octets: 0.0,
            rates: [0.0; RATE_SAMPLES],
            rate_next: 0,
        }
    }

    /// When a bulk datagram last went out.
    pub fn last_bulk_sent(&self) -> Option<Instant> {
        self.last_bulk_sent
    }

    /// The window in octets.
    pub fn window(&self) -> u64 {
        self.window as u64
    }

    /// The base RTT (the smallest sample of the last ten seconds).
    pub fn base_rtt(&self) -> Option<Duration> {
        debug_assert_eq!(self.base_min, least(&self.base[..self.base_len]));
        (self.base_len > 0).then_some(self.base_min)
    }

    /// The queueing delay the latest samples show (`None` before the first).
    pub fn queueing_delay(&self) -> Option<Duration> {
        let base = self.base_rtt()?;
        debug_assert_eq!(self.current_min, least(&self.current[..self.current_len]));
        let current = (self.current_len > 0).then_some(self.current_min)?;
        Some(current.saturating_sub(base))
    }

    /// One RTT sample (ack delay already taken off) at `now`.
    pub fn on_rtt(&mut self, now: Instant, sample: Duration) {
        match self.bucket_start {
            Some(start) if now.saturating_duration_since(start) < BUCKET && self.base_len > 0 => {
                let last = &mut self.base[self.base_len - 1];
                *last = (*last).min(sample);
                self.base_min = self.base_min.min(sample);
            }
            _ => {
                let shifted = self.base_len == BASE_BUCKETS;
                if shifted {
                    self.base.copy_within(1.., 0);
                    self.base_len -= 1;
                }
                self.base[self.base_len] = sample;
                self.base_len += 1;
                self.base_min = if shifted {
                    // The oldest bucket left (once a bucket, a second): look at them all.
                    least(&self.base[..self.base_len])
                } else {
                    self.base_min.min(sample)
                };
                self.bucket_start = Some(now);
            }
        }
        self.current[self.current_next] = sample;
        self.current_next = (self.current_next + 1) % CURRENT_SAMPLES;
        self.current_len = (self.current_len + 1).min(CURRENT_SAMPLES);
        self.current_min = least(&self.current[..self.current_len]);
    }

    /// Octets `acked` of any lane were acknowledged at `now`; `srtt` is the smoothed RTT.
    /// Nothing happens before the lane's first datagram.
    pub fn on_ack(&mut self, now: Instant, acked: u64, srtt: Duration) {
        if self.last_bulk_sent.is_none() {
            // The lane never sent: its window stays where it starts, and the delivery rate
            // that bounds it is measured from its own first acknowledgements (a game's
            // traffic before it is far below any rate the ceiling would use), so an endpoint
            // without bulk traffic pays nothing here per acknowledgement.
            return;
        }
        // Before any sample (none from the handshake), no queue is known of.
        let delay = self.queueing_delay().unwrap_or_default();
        let base = self.base_rtt().unwrap_or(srtt);
        self.measure_rate(now, acked, base);
        let off = (self.target.as_secs_f64() - delay.as_secs_f64()) / self.target.as_secs_f64();
        let off = off.clamp(-1.0, 1.0);
        if off > 0.0 {
            // Grow only while the bulk lane uses its window (sent within the last round trip
            // or so): an idle lane's window would otherwise grow without bound.
            let busy = self
                .last_bulk_sent
                .is_some_and(|t| now.saturating_duration_since(t) <= srtt * 2);
            if !busy {
                return;
            }
        }
        if delay >= self.target / 2 {
            self.slow_start = false;
        }
        let acked = acked as f64;
        let rate = self.delivery_rate(now, base);
        // Below the path's bandwidth-delay product (the delivery rate times the base RTT) a
        // window cannot build a queue: it grows as in slow start (after a halving, say).
        let below_bdp = self.window < rate * base.as_secs_f64();
        let change = if off < 0.0 {
            DECREASE * off * acked
        } else if self.slow_start || below_bdp {
            off * acked
        } else {
            off * acked * MSS as f64 / self.window
        };
        // The delay signal comes a round trip late (more, through the filters); the window
        // never exceeds what the rate the path delivered would carry with the target's
        // queue: a transfer that grew too fast (or a path that got slower) does not fill the
        // bottleneck's queue before the delay shows.
        // (Without any RTT sample the base is a guess: the loss-based window alone bounds
        // the lane until one comes.)
        let ceiling = if self.base_len > 0 {
            (RATE_HEADROOM * rate * (base + self.target).as_secs_f64()).max(INITIAL_WINDOW)
        } else {
            MAX_WINDOW
        };
        self.window = (self.window + change)
            .min(ceiling)
            .clamp(MIN_WINDOW, MAX_WINDOW);
    }

    /// The delivery rate: the largest of the last intervals', or before the first one ended,
    /// once a base RTT passed, the current one's.
    fn delivery_rate(&self, now: Instant, base: Duration) -> f64 {
        let done = self.rates.iter().copied().fold(0.0, f64::max);
        match self.rate_start {
            Some(start) if done == 0.0 && now.saturating_duration_since(start) >= base => {
                let elapsed = now.saturating_duration_since(start).as_secs_f64();
                done.max(self.rate_octets / elapsed)
            }
            _ => done,
        }
    }

    /// Measures the delivery rate: octets acknowledged over intervals of at least four times `base`
    /// (and 10 ms).
    fn measure_rate(&mut self, now: Instant, acked: u64, base: Duration) {
        let Some(start) = self.rate_start else {
            self.rate_start = Some(now);
            self.rate_octets = 0.0;
            return;
        };
        self.rate_octets += acked as f64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= (base * 4).max(Duration::from_millis(10)) {
            self.rates[self.rate_next] = self.rate_octets / elapsed.as_secs_f64();
            self.rate_next = (self.rate_next + 1) % RATE_SAMPLES;
            self.rate_octets = 0.0;
            self.rate_start = Some(now);
        }
    }

    /// A packet was declared lost at `now`: halve the window if the queue was filling (at
    /// most once per `srtt`), otherwise take it as random loss.
    pub fn on_loss(&mut self, now: Instant, srtt: Duration) {
        let Some(delay) = self.queueing_delay() else {
            return;
        };
        if delay < self.target / 2 {
            return;
        }
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < srtt)
        {
            return;
        }
        self.last_decrease = Some(now);
        self.slow_start = false;
        self.window = (self.window / 2.0).max(MIN_WINDOW);
    }

    /// The bulk pacing rate in octets per second: the window per current RTT (the base RTT
    /// plus the queueing delay; `srtt` before a sample).
    pub fn pacing_rate(&self, srtt: Duration) -> f64 {
        let rtt = match (self.base_rtt(), self.queueing_delay()) {
            (Some(base), Some(q)) => base + q,
            _ => srtt,
        };
        let secs = rtt.as_secs_f64().max(0.001);
        (self.window / secs).max(MSS as f64 * 10.0)
    }

    fn refilled(&self, now: Instant, srtt: Duration) -> f64 {
        match self.last_refill {
            Some(last) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                (self.tokens + dt * self.pacing_rate(srtt)).min(BURST)
            }
            None => self.tokens,
        }
    }

    /// Whether a bulk datagram may go out now (tokens are left); charged afterwards with
    /// [`Ledbat::on_sent`].
    pub fn try_pace(&mut self, now: Instant, srtt: Duration) -> bool {
        self.tokens = self.refilled(now, srtt);
        self.last_refill = Some(now);
        self.tokens > 0.0
    }

    /// A bulk datagram of `len` octets went out at `now`.
    pub fn on_sent(&mut self, now: Instant, len: usize) {
        self.tokens -= len as f64;
        self.last_bulk_sent = Some(now);
    }

    /// When tokens will be there again, from the last refill.
    pub fn pace_deadline(&self, srtt: Duration) -> Option<Instant> {
        let last = self.last_refill?;
        if self.tokens > 0.0 {
            return Some(last);
        }
        let rate = self.pacing_rate(srtt);
        Some(last + Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_below_the_target_and_shrinks_above() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut l = Ledbat::new(ms(25));
        l.on_rtt(t0, ms(40));
        let w0 = l.window();
        // The path delivers 1 MB/s (a 1000-octet ack each millisecond): the window grows,
        // up to 1 MB/s x (40 + 25) ms.
        for k in 0..200 {
            l.on_sent(t0 + ms(k), 1000);
            l.on_ack(t0 + ms(k), 1000, ms(40));
        }
        assert!(l.window() > w0);
        assert!(l.window() <= 65_000, "{}", l.window());
        let t0 = t0 + ms(200);
        // 60 ms of queue: above twice the target, it shrinks by a quarter octet per octet acked.
        for _ in 0..4 {
            l.on_rtt(t0, ms(100));
        }
        assert_eq!(l.queueing_delay(), Some(ms(60)));
        let w1 = l.window();
        l.on_ack(t0, 1000, ms(100));
        assert_eq!(l.window(), w1 - 250);
        // An idle lane's window does not grow.
        for _ in 0..4 {
            l.on_rtt(t0, ms(41));
        }
        l.on_ack(t0 + ms(500), 1000, ms(40));
        assert_eq!(l.window(), w1 - 250);
        for _ in 0..4 {
            l.on_rtt(t0, ms(100));
        }
        // A loss with the queue full halves it; with the queue empty, nothing.
        l.on_loss(t0, ms(100));
        assert_eq!(l.window(), (w1 - 250) / 2);
        for _ in 0..4 {
            l.on_rtt(t0, ms(41));
        }
        let w2 = l.window();
        l.on_loss(t0 + ms(200), ms(100));
        assert_eq!(l.window(), w2);
    }

    #[test]
    fn the_base_delay_is_forgotten_after_ten_seconds() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut l = Ledbat::new(ms(25));
        l.on_rtt(t0, ms(20));
        for s in 1..=10 {
            l.on_rtt(t0 + Duration::from_secs(s), ms(80));
        }
        assert_eq!(l.base_rtt(), Some(ms(80)));
    }
}
