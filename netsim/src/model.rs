//! The impairment model: one direction of a network path, sans-IO.
//!
//! A [`Link`] takes datagrams with [`Link::send`] and gives them back with
//! [`Link::poll_deliver`] when they are due. It reads no clock and owns no socket: time is an
//! input, so the simulator can run an hour of bad network in a second and the UDP proxy can
//! drive the same model from a real clock. Every random choice comes from a ChaCha8 generator
//! seeded by [`Link::new`], so the same seed and the same calls give exactly the same
//! deliveries.
//!
//! # What happens to a datagram
//!
//! [`Link::send`] applies, in this order:
//!
//! 1. **MTU**: a datagram longer than [`LinkConfig::mtu`] bytes is dropped (`dropped_mtu`).
//! 2. **Loss**: dropped with probability [`LinkConfig::loss`]; in addition, if
//!    [`LinkConfig::burst`] is set, a two-state Gilbert-Elliott chain steps once per datagram and
//!    drops it with the loss probability of its state (`dropped_loss` counts both).
//! 3. **Rate limit**: with [`LinkConfig::rate`] set, the link serializes datagrams one after the
//!    other: a datagram starts at `max(now, link free)` and occupies the link for
//!    `len * 8 / rate` seconds. A datagram that finds the link idle goes at once; one that has
//!    to wait is dropped if the bytes already waiting plus its own would exceed
//!    [`LinkConfig::queue_bytes`] (tail drop, `dropped_queue`). The size is the payload's:
//!    no IP or UDP header is added.
//! 4. **Corruption**: with probability [`LinkConfig::corrupt`] one uniformly chosen bit of the
//!    payload is flipped (never for an empty payload).
//! 5. **Latency**: the datagram is due [`LinkConfig::delay`] after it has left the rate
//!    limiter, plus a uniform offset in `[-jitter, +jitter]` (the total never below zero).
//!    Jitter alone never reorders: a datagram's due time is clamped to be no earlier than
//!    that of the datagram sent before it, so [`LinkConfig::reorder`] is the only knob that
//!    reorders.
//! 6. **Reordering** (netem's way): with probability [`LinkConfig::reorder`] the datagram skips
//!    the latency: it is due as soon as it has left the rate limiter, so it overtakes every
//!    datagram still in flight. With no latency nothing is in flight and nothing is overtaken;
//!    `reordered` counts only the datagrams that really overtook another.
//! 7. **Duplication**: with probability [`LinkConfig::duplicate`] an identical copy (corruption
//!    included) is delivered right after the original, at the same time. The copy takes no
//!    room in the queue and no time on the rate limiter.
//!
//! Due datagrams come out earliest first, ties in the order they were sent. Every call to
//! [`Link::send`] draws the same amount of randomness whatever becomes of the datagram, so
//! changing one knob does not reshuffle the choices of the others.
//!
//! ```
//! use netsim::model::{Datagram, Link, LinkConfig};
//! use std::time::{Duration, Instant};
//!
//! let mut link = Link::new(LinkConfig::perfect().with_delay(Duration::from_millis(20)), 7);
//! let start = Instant::now();
//! let (from, to) = ("127.0.0.1:1000".parse().unwrap(), "127.0.0.1:2000".parse().unwrap());
//! link.send(start, Datagram { from, to, data: b"hello".to_vec() });
//! assert!(link.poll_deliver(start).is_none());
//! let due = link.next_deadline().unwrap();
//! assert_eq!(due, start + Duration::from_millis(20));
//! assert_eq!(link.poll_deliver(due).unwrap().data, b"hello");
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::ops::AddAssign;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The default bound on bytes waiting for a rate-limited link: 64 KiB.
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024;

/// One UDP datagram travelling over a [`Link`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's address.
    pub from: SocketAddr,
    /// The receiver's address.
    pub to: SocketAddr,
    /// The UDP payload.
    pub data: Vec<u8>,
}

/// A two-state Gilbert-Elliott model of bursty loss.
///
/// The chain starts in the good state and steps once per datagram: each datagram is lost
/// with the loss probability of the current state, then the state changes with the transition
/// probability. Bursts in the bad state last `1 / p_bad_to_good` datagrams on average. The
/// field order of [`GilbertElliott::from_netem`] is netem's `gemodel p r 1-h 1-k`.
#[derive(Clone, Debug, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state, per datagram.
    pub p_good_to_bad: f64,
    /// Probability of moving from the bad to the good state, per datagram.
    pub p_bad_to_good: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model: nothing lost in the good state, everything in the bad one.
    pub fn simple(p_good_to_bad: f64, p_bad_to_good: f64) -> Self {
        Self {
            p_good_to_bad,
            p_bad_to_good,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// netem's `gemodel p r 1-h 1-k`: transitions, then the loss in bad and good states.
    pub fn from_netem(p: f64, r: f64, loss_bad: f64, loss_good: f64) -> Self {
        Self {
            p_good_to_bad: p,
            p_bad_to_good: r,
            loss_good,
            loss_bad,
        }
    }

    /// The long-run fraction of datagrams this model loses.
    pub fn average_loss(&self) -> f64 {
        let total = self.p_good_to_bad + self.p_bad_to_good;
        if total <= 0.0 {
            return self.loss_good;
        }
        let bad = self.p_good_to_bad / total;
        (1.0 - bad) * self.loss_good + bad * self.loss_bad
    }

    /// The average number of datagrams the chain stays in the bad state.
    pub fn mean_bad_run(&self) -> f64 {
        1.0 / self.p_bad_to_good
    }
}

/// The impairments of one direction of a path.
///
/// Probabilities are fractions in `0..=1` (values outside are effectively clamped, and
/// [`LinkConfig::validate`] reports them). Build one from a preset and the `with_*` methods:
///
/// ```
/// use netsim::model::LinkConfig;
/// use std::time::Duration;
///
/// let link = LinkConfig::perfect()
///     .with_loss(0.05)
///     .with_delay(Duration::from_millis(20))
///     .with_jitter(Duration::from_millis(5))
///     .with_rate(1_000_000);
/// assert!(link.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// Random loss probability.
    pub loss: f64,
    /// Bursty loss, applied in addition to `loss`.
    pub burst: Option<GilbertElliott>,
    /// One-way latency.
    pub delay: Duration,
    /// Uniform `+-` jitter on the latency (never reorders on its own).
    pub jitter: Duration,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram skips the latency and overtakes those in flight.
    pub reorder: f64,
    /// Bits per second of the rate limiter; `None` is unlimited. `Some(0)` drops everything.
    pub rate: Option<u64>,
    /// Bytes that may wait for the rate limiter before tail drop (unused without `rate`).
    pub queue_bytes: usize,
    /// Probability that one random bit of the payload is flipped.
    pub corrupt: f64,
    /// Datagrams with a payload larger than this are dropped.
    pub mtu: Option<usize>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self::perfect()
    }
}

impl LinkConfig {
    /// No impairment at all: no loss, no latency, unlimited rate.
    pub fn perfect() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            duplicate: 0.0,
            reorder: 0.0,
            rate: None,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            corrupt: 0.0,
            mtu: None,
        }
    }

    /// A good home Wi-Fi path: 0.5% loss, 10 ms ± 3 ms, 0.1% reordering, 50 Mbit/s with a
    /// 256 KiB queue, 1472-byte MTU (Ethernet's 1500 less IP and UDP headers).
    pub fn good_wifi() -> Self {
        Self {
            loss: 0.005,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(3),
            reorder: 0.001,
            rate: Some(50_000_000),
            queue_bytes: 256 * 1024,
            mtu: Some(1472),
            ..Self::perfect()
        }
    }

    /// A congested mobile path: 1% loss plus bursts (Gilbert-Elliott 1% in, 25% out, half of
    /// a burst lost, about 2% more on average), 60 ms ± 20 ms, 0.1% duplication, 0.5%
    /// reordering, 2 Mbit/s with a 32 KiB queue, 1372-byte MTU.
    pub fn congested_mobile() -> Self {
        Self {
            loss: 0.01,
            burst: Some(GilbertElliott::from_netem(0.01, 0.25, 0.5, 0.0)),
            delay: Duration::from_millis(60),
            jitter: Duration::from_millis(20),
            duplicate: 0.001,
            reorder: 0.005,
            rate: Some(2_000_000),
            queue_bytes: 32 * 1024,
            mtu: Some(1372),
            ..Self::perfect()
        }
    }

    /// A bad path to stress recovery: 10% loss plus bursts (Gilbert 2% in, 30% out, about 6%
    /// more on average), 30 ms ± 10 ms, 1% duplication, 2% reordering, 0.1% corruption, no
    /// rate limit.
    pub fn lossy() -> Self {
        Self {
            loss: 0.1,
            burst: Some(GilbertElliott::simple(0.02, 0.3)),
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(10),
            duplicate: 0.01,
            reorder: 0.02,
            corrupt: 0.001,
            ..Self::perfect()
        }
    }

    /// With random loss probability `loss`.
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    /// With bursty loss in addition to the random loss.
    pub fn with_burst(mut self, burst: GilbertElliott) -> Self {
        self.burst = Some(burst);
        self
    }

    /// With one-way latency `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// With uniform `+-jitter` on the latency.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// With duplication probability `duplicate`.
    pub fn with_duplicate(mut self, duplicate: f64) -> Self {
        self.duplicate = duplicate;
        self
    }

    /// With reordering probability `reorder`.
    pub fn with_reorder(mut self, reorder: f64) -> Self {
        self.reorder = reorder;
        self
    }

    /// With a rate limit of `bits_per_second`.
    pub fn with_rate(mut self, bits_per_second: u64) -> Self {
        self.rate = Some(bits_per_second);
        self
    }

    /// With at most `queue_bytes` waiting for the rate limiter.
    pub fn with_queue_bytes(mut self, queue_bytes: usize) -> Self {
        self.queue_bytes = queue_bytes;
        self
    }

    /// With bit-flip probability `corrupt`.
    pub fn with_corrupt(mut self, corrupt: f64) -> Self {
        self.corrupt = corrupt;
        self
    }

    /// With payloads larger than `mtu` bytes dropped.
    pub fn with_mtu(mut self, mtu: usize) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Checks that every probability is in `0..=1` and a rate, if any, is not zero.
    ///
    /// A [`Link`] accepts any configuration (a probability out of range acts clamped, a zero
    /// rate drops everything); this is for front ends that take settings from a user.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), LinkConfigError> {
        let mut probabilities = vec![
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ];
        if let Some(ge) = &self.burst {
            probabilities.extend([
                ("burst p_good_to_bad", ge.p_good_to_bad),
                ("burst p_bad_to_good", ge.p_bad_to_good),
                ("burst loss_good", ge.loss_good),
                ("burst loss_bad", ge.loss_bad),
            ]);
        }
        for (name, value) in probabilities {
            if !(0.0..=1.0).contains(&value) {
                return Err(LinkConfigError::Probability { name, value });
            }
        }
        if self.rate == Some(0) {
            return Err(LinkConfigError::ZeroRate);
        }
        Ok(())
    }
}

/// A [`LinkConfig`] setting out of range.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkConfigError {
    /// A probability outside `0..=1` (or NaN).
    Probability {
        /// Which setting.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A rate limit of zero bits per second.
    ZeroRate,
}

impl fmt::Display for LinkConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Probability { name, value } => {
                write!(
                    f,
                    "{name} must be between 0% and 100%, not {}%",
                    value * 100.0
                )
            }
            Self::ZeroRate => f.write_str("the rate limit must be above zero"),
        }
    }
}

impl std::error::Error for LinkConfigError {}

/// What a [`Link`] did, counted since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams given to [`Link::send`].
    pub sent: u64,
    /// Datagrams returned by [`Link::poll_deliver`], duplicates included.
    pub delivered: u64,
    /// Dropped by random or bursty loss.
    pub dropped_loss: u64,
    /// Dropped because the rate limiter's queue was full (or the rate was zero).
    pub dropped_queue: u64,
    /// Dropped for being larger than the MTU.
    pub dropped_mtu: u64,
    /// Extra copies scheduled.
    pub duplicated: u64,
    /// Datagrams that overtook at least one sent before them.
    pub reordered: u64,
    /// Datagrams with a bit flipped.
    pub corrupted: u64,
    /// Datagrams in flight now (copies included).
    pub queued: u64,
}

impl LinkStats {
    /// Every datagram dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_queue + self.dropped_mtu
    }
}

impl AddAssign for LinkStats {
    fn add_assign(&mut self, other: Self) {
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.dropped_loss += other.dropped_loss;
        self.dropped_queue += other.dropped_queue;
        self.dropped_mtu += other.dropped_mtu;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.corrupted += other.corrupted;
        self.queued += other.queued;
    }
}

/// One direction of a path: datagrams in, impaired datagrams out when due.
#[derive(Clone, Debug)]
pub struct Link {
    config: LinkConfig,
    rng: ChaCha8Rng,
    /// Datagrams in flight, earliest due first, ties in send order.
    in_flight: BinaryHeap<Reverse<InFlight>>,
    /// The order of the next datagram scheduled.
    next_sequence: u64,
    /// The due time of the last datagram scheduled in order (not a reordered one).
    last_due: Option<Instant>,
    /// When the rate limiter has finished serializing everything it accepted.
    link_free_at: Option<Instant>,
    /// Datagrams accepted by the rate limiter that have not started yet: (start, bytes).
    waiting: VecDeque<(Instant, usize)>,
    /// The sum of `waiting`'s bytes.
    waiting_bytes: usize,
    /// The Gilbert-Elliott chain is in the bad state.
    is_burst_bad: bool,
    stats: LinkStats,
}

impl Link {
    /// A link with `config`, all of whose random choices derive from `seed`.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_flight: BinaryHeap::new(),
            next_sequence: 0,
            last_due: None,
            link_free_at: None,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            is_burst_bad: false,
            stats: LinkStats::default(),
        }
    }

    /// Takes `datagram` at `now`: applies the impairments and schedules its delivery.
    pub fn send(&mut self, now: Instant, mut datagram: Datagram) {
        let draws = Draws::new(&mut self.rng);
        self.stats.sent += 1;
        let len = datagram.data.len();

        if self.config.mtu.is_some_and(|mtu| len > mtu) {
            self.stats.dropped_mtu += 1;
            return;
        }

        let mut lost = draws.loss < self.config.loss;
        if let Some(ge) = &self.config.burst {
            let loss = if self.is_burst_bad {
                ge.loss_bad
            } else {
                ge.loss_good
            };
            lost |= draws.burst_loss < loss;
            let flip = if self.is_burst_bad {
                ge.p_bad_to_good
            } else {
                ge.p_good_to_bad
            };
            if draws.burst_state < flip {
                self.is_burst_bad = !self.is_burst_bad;
            }
        }
        if lost {
            self.stats.dropped_loss += 1;
            return;
        }

        let Some(left_at) = self.rate_limit(now, len) else {
            self.stats.dropped_queue += 1;
            return;
        };

        if draws.corrupt < self.config.corrupt && len > 0 {
            let bit = draws.bit % (len as u64 * 8);
            datagram.data[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.corrupted += 1;
        }

        let due = if draws.reorder < self.config.reorder {
            if self.last_due.is_some_and(|last| last > left_at) {
                self.stats.reordered += 1;
            }
            left_at
        } else {
            let latency = jittered(self.config.delay, self.config.jitter, draws.jitter);
            let due = self
                .last_due
                .map_or(left_at + latency, |last| (left_at + latency).max(last));
            self.last_due = Some(due);
            due
        };

        if draws.duplicate < self.config.duplicate {
            self.stats.duplicated += 1;
            self.schedule(due, datagram.clone());
        }
        self.schedule(due, datagram);
    }

    /// The next datagram due at or before `now`: earliest first, ties in send order.
    pub fn poll_deliver(&mut self, now: Instant) -> Option<Datagram> {
        if self.in_flight.peek()?.0.due > now {
            return None;
        }
        let Reverse(entry) = self.in_flight.pop().expect("peeked just above");
        self.stats.delivered += 1;
        Some(entry.datagram)
    }

    /// When the next datagram is due, if any is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.peek().map(|entry| entry.0.due)
    }

    /// The counters so far, and the datagrams in flight now.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            queued: self.in_flight.len() as u64,
            ..self.stats
        }
    }

    /// The impairments in force.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Changes the impairments for datagrams sent from now on; those in flight keep their
    /// schedule, and jitter still never reorders across the change.
    pub fn set_config(&mut self, config: LinkConfig) {
        if config.burst.is_none() {
            self.is_burst_bad = false;
        }
        self.config = config;
    }

    /// Passes `len` bytes through the rate limiter at `now`: when they have left the link, or
    /// `None` if they are tail-dropped.
    fn rate_limit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let Some(rate) = self.config.rate else {
            return Some(now);
        };
        if rate == 0 {
            return None;
        }
        while let Some(&(start, bytes)) = self.waiting.front() {
            if start > now {
                break;
            }
            self.waiting.pop_front();
            self.waiting_bytes -= bytes;
        }
        let start = self.link_free_at.map_or(now, |free| free.max(now));
        if start > now {
            // Each waiting datagram takes at least one byte, so `waiting` stays bounded by
            // `queue_bytes` even for empty payloads.
            let bytes = len.max(1);
            if self.waiting_bytes.saturating_add(bytes) > self.config.queue_bytes {
                return None;
            }
            self.waiting.push_back((start, bytes));
            self.waiting_bytes += bytes;
        }
        let nanos = (len as u128 * 8 * 1_000_000_000).div_ceil(u128::from(rate));
        let left_at = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.link_free_at = Some(left_at);
        Some(left_at)
    }

    fn schedule(&mut self, due: Instant, datagram: Datagram) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.in_flight.push(Reverse(InFlight {
            due,
            sequence,
            datagram,
        }));
    }
}

/// A datagram in flight, ordered by (due, sequence).
#[derive(Clone, Debug)]
struct InFlight {
    due: Instant,
    sequence: u64,
    datagram: Datagram,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.sequence).cmp(&(other.due, other.sequence))
    }
}

/// The random numbers one [`Link::send`] uses, drawn all at once whatever happens.
struct Draws {
    loss: f64,
    burst_loss: f64,
    burst_state: f64,
    jitter: f64,
    reorder: f64,
    corrupt: f64,
    bit: u64,
    duplicate: f64,
}

impl Draws {
    fn new(rng: &mut ChaCha8Rng) -> Self {
        Self {
            loss: rng.gen(),
            burst_loss: rng.gen(),
            burst_state: rng.gen(),
            jitter: rng.gen(),
            reorder: rng.gen(),
            corrupt: rng.gen(),
            bit: rng.gen(),
            duplicate: rng.gen(),
        }
    }
}

/// `delay` plus a uniform offset in `[-jitter, +jitter]` chosen by `u` in `[0, 1)`, never
/// below zero.
fn jittered(delay: Duration, jitter: Duration, u: f64) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let offset = (u * 2.0 - 1.0) * jitter.as_nanos() as f64;
    let nanos = delay.as_nanos() as f64 + offset;
    Duration::from_nanos(nanos.clamp(0.0, u64::MAX as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn datagram(n: u32, len: usize) -> Datagram {
        let mut data = vec![0u8; len.max(4)];
        data[..4].copy_from_slice(&n.to_be_bytes());
        for (i, b) in data.iter_mut().enumerate().skip(4) {
            *b = (i as u32 ^ n) as u8;
        }
        Datagram {
            from: addr(1000),
            to: addr(2000),
            data,
        }
    }

    fn number(d: &Datagram) -> u32 {
        u32::from_be_bytes(d.data[..4].try_into().unwrap())
    }

    /// Sends `count` datagrams of `len` bytes, one every `gap`, delivering as time passes and
    /// then draining; returns (delivery time since the start, datagram) in delivery order.
    fn run(link: &mut Link, count: u32, len: usize, gap: Duration) -> Vec<(Duration, Datagram)> {
        let start = Instant::now();
        let mut out = Vec::new();
        for n in 0..count {
            let now = start + gap * n;
            while let Some(d) = link.poll_deliver(now) {
                out.push((now - start, d));
            }
            link.send(now, datagram(n, len));
        }
        // Each round delivers at least one datagram.
        for _ in 0..=link.stats().queued {
            let Some(due) = link.next_deadline() else {
                break;
            };
            while let Some(d) = link.poll_deliver(due) {
                out.push((due - start, d));
            }
        }
        assert_eq!(link.next_deadline(), None, "drained");
        out
    }

    #[test]
    fn perfect_link_delivers_at_once_in_order() {
        let mut link = Link::new(LinkConfig::perfect(), 1);
        let now = Instant::now();
        for n in 0..10 {
            link.send(now, datagram(n, 8));
        }
        assert_eq!(link.next_deadline(), Some(now));
        let got: Vec<u32> = std::iter::from_fn(|| link.poll_deliver(now))
            .map(|d| number(&d))
            .collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        let stats = link.stats();
        assert_eq!((stats.sent, stats.delivered, stats.queued), (10, 10, 0));
    }

    #[test]
    fn nothing_before_due() {
        let mut link = Link::new(LinkConfig::perfect().with_delay(20 * MS), 1);
        let now = Instant::now();
        link.send(now, datagram(0, 8));
        assert!(link.poll_deliver(now + 19 * MS).is_none());
        assert_eq!(link.stats().queued, 1);
        assert_eq!(link.next_deadline(), Some(now + 20 * MS));
        assert_eq!(number(&link.poll_deliver(now + 20 * MS).unwrap()), 0);
        assert_eq!(link.next_deadline(), None);
    }

    #[test]
    fn same_seed_same_outputs() {
        let config = LinkConfig::lossy()
            .with_rate(2_000_000)
            .with_queue_bytes(8000);
        let a = run(&mut Link::new(config.clone(), 42), 5000, 300, MS / 2);
        let b = run(&mut Link::new(config.clone(), 42), 5000, 300, MS / 2);
        assert!(a == b, "same seed, same deliveries at the same times");
        let c = run(&mut Link::new(config, 43), 5000, 300, MS / 2);
        assert!(a != c, "another seed, other choices");
    }

    #[test]
    fn changing_one_knob_keeps_the_other_choices() {
        let lossy = LinkConfig::perfect().with_loss(0.3);
        let a = run(&mut Link::new(lossy.clone(), 9), 2000, 8, MS);
        let b = run(
            &mut Link::new(lossy.with_delay(30 * MS).with_jitter(10 * MS), 9),
            2000,
            8,
            MS,
        );
        let numbers =
            |v: &[(Duration, Datagram)]| v.iter().map(|(_, d)| number(d)).collect::<Vec<_>>();
        assert_eq!(numbers(&a), numbers(&b));
    }

    #[test]
    fn loss_rate_within_tolerance() {
        for loss in [0.01, 0.1, 0.5] {
            let mut link = Link::new(LinkConfig::perfect().with_loss(loss), 7);
            let now = Instant::now();
            for n in 0..100_000 {
                link.send(now, datagram(n, 4));
                while link.poll_deliver(now).is_some() {}
            }
            let stats = link.stats();
            let rate = stats.dropped_loss as f64 / 100_000.0;
            assert!((rate - loss).abs() < 0.01, "loss {loss}: measured {rate}");
            assert_eq!(stats.delivered + stats.dropped_loss, 100_000);
        }
    }

    /// Mean length of the runs of consecutive lost datagrams.
    fn mean_burst(config: LinkConfig) -> (f64, f64) {
        let mut link = Link::new(config, 11);
        let now = Instant::now();
        let (mut bursts, mut lost_total, mut run_len) = (0u64, 0u64, 0u64);
        for n in 0..100_000 {
            link.send(now, datagram(n, 4));
            if link.poll_deliver(now).is_some() {
                if run_len > 0 {
                    bursts += 1;
                }
                run_len = 0;
            } else {
                run_len += 1;
                lost_total += 1;
            }
        }
        if run_len > 0 {
            bursts += 1;
        }
        (
            lost_total as f64 / bursts as f64,
            lost_total as f64 / 100_000.0,
        )
    }

    #[test]
    fn gilbert_elliott_makes_bursts() {
        let ge = GilbertElliott::simple(0.02, 0.25);
        let (burst, rate) = mean_burst(LinkConfig::perfect().with_burst(ge.clone()));
        assert!(burst > 3.0, "mean burst {burst}");
        assert!(
            (burst - ge.mean_bad_run()).abs() < 0.5,
            "mean burst {burst}"
        );
        assert!((rate - ge.average_loss()).abs() < 0.01, "loss {rate}");
        // Random loss at the same rate barely makes bursts.
        let (random_burst, _) = mean_burst(LinkConfig::perfect().with_loss(ge.average_loss()));
        assert!(random_burst < 1.2, "random mean burst {random_burst}");
    }

    #[test]
    fn rate_limit_serializes() {
        // 1 Mbit/s, 1000-byte datagrams: 8 ms each.
        let config = LinkConfig::perfect()
            .with_rate(1_000_000)
            .with_queue_bytes(usize::MAX)
            .with_delay(5 * MS);
        let mut link = Link::new(config, 3);
        let start = Instant::now();
        for n in 0..1000 {
            link.send(start, datagram(n, 1000));
        }
        // Datagram i leaves at (i + 1) * 8 ms and arrives 5 ms later.
        let mut at_4s = 0;
        while link
            .poll_deliver(start + Duration::from_secs(4) + 5 * MS)
            .is_some()
        {
            at_4s += 1;
        }
        assert_eq!(at_4s, 500);
        assert_eq!(
            link.next_deadline(),
            Some(start + 501 * 8 * MS + 5 * MS),
            "the next one arrives a serialization time later"
        );
        let mut last = None;
        while let Some(due) = link.next_deadline() {
            last = Some(due);
            while link.poll_deliver(due).is_some() {}
        }
        assert_eq!(last, Some(start + Duration::from_secs(8) + 5 * MS));
        assert_eq!(link.stats().delivered, 1000);
    }

    #[test]
    fn rate_limit_tail_drops_and_recovers() {
        let config = LinkConfig::perfect()
            .with_rate(1_000_000)
            .with_queue_bytes(10_000);
        let mut link = Link::new(config, 3);
        let start = Instant::now();
        for n in 0..100 {
            link.send(start, datagram(n, 1000));
        }
        // One goes at once, ten wait.
        let stats = link.stats();
        assert_eq!((stats.queued, stats.dropped_queue), (11, 89));
        // After the first two have left, two more fit.
        let later = start + 16 * MS;
        for n in 100..110 {
            link.send(later, datagram(n, 1000));
        }
        assert_eq!(link.stats().queued, 13);
        let got: Vec<u32> = run(&mut link, 0, 0, MS)
            .iter()
            .map(|(_, d)| number(d))
            .collect();
        assert_eq!(got, [(0..11).collect::<Vec<_>>(), vec![100, 101]].concat());
    }

    #[test]
    fn queue_of_zero_still_passes_when_idle() {
        let config = LinkConfig::perfect().with_rate(8_000).with_queue_bytes(0);
        let mut link = Link::new(config, 3);
        let start = Instant::now();
        link.send(start, datagram(0, 100)); // 100 ms on the link
        link.send(start, datagram(1, 100));
        link.send(start + 100 * MS, datagram(2, 100));
        assert_eq!(link.stats().dropped_queue, 1);
        assert_eq!(link.stats().queued, 2);
    }

    #[test]
    fn zero_rate_drops_everything() {
        let mut link = Link::new(LinkConfig::perfect().with_rate(0), 3);
        link.send(Instant::now(), datagram(0, 10));
        assert_eq!(link.stats().dropped_queue, 1);
        assert_eq!(
            LinkConfig::perfect().with_rate(0).validate(),
            Err(LinkConfigError::ZeroRate)
        );
    }

    #[test]
    fn jitter_never_reorders() {
        let config = LinkConfig::perfect()
            .with_delay(20 * MS)
            .with_jitter(15 * MS)
            .with_duplicate(0.05);
        let mut link = Link::new(config, 5);
        let out = run(&mut link, 20_000, 8, MS);
        let numbers: Vec<u32> = out.iter().map(|(_, d)| number(d)).collect();
        assert!(numbers.windows(2).all(|w| w[0] <= w[1]), "in order");
        let stats = link.stats();
        assert_eq!(stats.reordered, 0);
        assert_eq!(numbers.len() as u64, 20_000 + stats.duplicated);
        // The jitter did vary the latency (delivery is observed on a 1 ms grid).
        let latencies: Vec<Duration> = out.iter().map(|(at, d)| *at - MS * number(d)).collect();
        let (min, max) = (
            latencies.iter().min().unwrap(),
            latencies.iter().max().unwrap(),
        );
        assert!(*max - *min > 10 * MS, "latency from {min:?} to {max:?}");
        assert!(*min >= 5 * MS);
    }

    #[test]
    fn jitter_larger_than_delay_stays_non_negative() {
        let config = LinkConfig::perfect().with_delay(MS).with_jitter(50 * MS);
        let mut link = Link::new(config, 5);
        let start = Instant::now();
        for n in 0..1000 {
            link.send(start, datagram(n, 8));
            assert!(link.next_deadline().unwrap() >= start);
        }
    }

    #[test]
    fn reorder_reorders() {
        let config = LinkConfig::perfect().with_delay(20 * MS).with_reorder(0.05);
        let mut link = Link::new(config, 5);
        let out = run(&mut link, 10_000, 8, MS);
        let numbers: Vec<u32> = out.iter().map(|(_, d)| number(d)).collect();
        let inversions = numbers.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(inversions > 300, "{inversions} inversions");
        let stats = link.stats();
        assert!((stats.reordered as f64 / 10_000.0 - 0.05).abs() < 0.01);
        assert_eq!(numbers.len(), 10_000, "nothing lost");
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn reorder_without_latency_overtakes_nothing() {
        let mut link = Link::new(LinkConfig::perfect().with_reorder(0.5), 5);
        let numbers: Vec<u32> = run(&mut link, 1000, 8, MS)
            .iter()
            .map(|(_, d)| number(d))
            .collect();
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>());
        assert_eq!(link.stats().reordered, 0);
    }

    #[test]
    fn duplication() {
        let config = LinkConfig::perfect().with_duplicate(0.1).with_delay(MS);
        let mut link = Link::new(config, 8);
        let numbers: Vec<u32> = run(&mut link, 10_000, 8, MS)
            .iter()
            .map(|(_, d)| number(d))
            .collect();
        let stats = link.stats();
        assert!((stats.duplicated as f64 / 10_000.0 - 0.1).abs() < 0.01);
        assert_eq!(numbers.len() as u64, 10_000 + stats.duplicated);
        assert_eq!(stats.delivered, numbers.len() as u64);
        let twice = numbers.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        assert_eq!(
            twice, stats.duplicated,
            "copies come right after the original"
        );
    }

    #[test]
    fn corruption_flips_exactly_one_bit() {
        let mut link = Link::new(LinkConfig::perfect().with_corrupt(1.0), 13);
        let now = Instant::now();
        let mut bits_seen = std::collections::HashSet::new();
        for n in 0..2000 {
            let original = datagram(n, 64);
            link.send(now, original.clone());
            let got = link.poll_deliver(now).unwrap();
            assert_eq!(got.data.len(), original.data.len());
            let flipped: u32 = got
                .data
                .iter()
                .zip(&original.data)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            assert_eq!(flipped, 1);
            let byte = got
                .data
                .iter()
                .zip(&original.data)
                .position(|(a, b)| a != b);
            bits_seen.insert(byte.unwrap());
        }
        assert_eq!(bits_seen.len(), 64, "every byte gets hit sometime");
        assert_eq!(link.stats().corrupted, 2000);
        // An empty payload has nothing to flip.
        link.send(
            now,
            Datagram {
                data: Vec::new(),
                ..datagram(0, 0)
            },
        );
        assert_eq!(link.poll_deliver(now).unwrap().data, Vec::<u8>::new());
        assert_eq!(link.stats().corrupted, 2000);
    }

    #[test]
    fn corruption_rate() {
        let mut link = Link::new(LinkConfig::perfect().with_corrupt(0.2), 13);
        run(&mut link, 10_000, 32, MS);
        assert!((link.stats().corrupted as f64 / 10_000.0 - 0.2).abs() < 0.02);
    }

    #[test]
    fn mtu_drops_larger_datagrams() {
        let mut link = Link::new(LinkConfig::perfect().with_mtu(100), 1);
        let now = Instant::now();
        link.send(now, datagram(0, 100));
        link.send(now, datagram(1, 101));
        link.send(now, datagram(2, 1500));
        let got: Vec<u32> = std::iter::from_fn(|| link.poll_deliver(now))
            .map(|d| number(&d))
            .collect();
        assert_eq!(got, [0]);
        assert_eq!(link.stats().dropped_mtu, 2);
        assert_eq!(link.stats().dropped(), 2);
    }

    #[test]
    fn set_config_keeps_order_across_a_change() {
        let mut link = Link::new(LinkConfig::perfect().with_delay(100 * MS), 1);
        let now = Instant::now();
        link.send(now, datagram(0, 8));
        link.set_config(LinkConfig::perfect());
        assert_eq!(link.config(), &LinkConfig::perfect());
        link.send(now + MS, datagram(1, 8));
        let numbers: Vec<u32> = run(&mut link, 0, 0, MS)
            .iter()
            .map(|(_, d)| number(d))
            .collect();
        assert_eq!(numbers, [0, 1]);
    }

    #[test]
    fn validate_rejects_out_of_range() {
        assert!(LinkConfig::lossy().validate().is_ok());
        assert!(LinkConfig::good_wifi().validate().is_ok());
        assert!(LinkConfig::congested_mobile().validate().is_ok());
        let err = LinkConfig::perfect().with_loss(1.5).validate().unwrap_err();
        assert_eq!(
            err,
            LinkConfigError::Probability {
                name: "loss",
                value: 1.5
            }
        );
        assert!(LinkConfig::perfect()
            .with_reorder(f64::NAN)
            .validate()
            .is_err());
        let bad_burst = GilbertElliott::simple(-0.1, 0.5);
        assert!(LinkConfig::perfect()
            .with_burst(bad_burst)
            .validate()
            .is_err());
    }

    #[test]
    fn presets_behave_roughly_as_documented() {
        for (config, low, high) in [
            (LinkConfig::good_wifi(), 0.0, 0.02),
            (LinkConfig::congested_mobile(), 0.01, 0.06),
            (LinkConfig::lossy(), 0.1, 0.25),
        ] {
            let mut link = Link::new(config.clone(), 21);
            run(&mut link, 20_000, 200, Duration::from_millis(2));
            let stats = link.stats();
            let loss = stats.dropped() as f64 / stats.sent as f64;
            assert!((low..high).contains(&loss), "{config:?}: loss {loss}");
        }
    }
}
