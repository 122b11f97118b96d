//! Round-trip time estimation (RFC 6298) and the resend timeout it drives.
//!
//! The ACK fields carry no ack delay, so the estimator corrects for the peer's configured
//! delay the way QUIC does for its reported one (RFC 9002 §5.3), bounded below by the
//! smallest sample seen (`min_rtt`, which the handshake and PONGs give without delay): a
//! sample is taken as `max(min_rtt, sample - ack_delay)`. The resend timeout adds the ack
//! delay back, so a delayed acknowledgement does not trigger a resend.

use std::time::Duration;

/// Smoothed RTT and its variation, per RFC 6298.
#[derive(Debug, Clone, Copy)]
pub struct RttEstimator {
    srtt: Duration,
    rttvar: Duration,
    latest: Duration,
    min_rtt: Duration,
    ack_delay: Duration,
    has_sample: bool,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    /// An estimator that assumes `initial` until the first sample; `ack_delay` is how long
    /// the peer may hold an acknowledgement.
    pub fn new(
        initial: Duration,
        min_rto: Duration,
        max_rto: Duration,
        ack_delay: Duration,
    ) -> Self {
        Self {
            srtt: initial,
            rttvar: initial / 2,
            latest: initial,
            min_rtt: Duration::MAX,
            ack_delay,
            has_sample: false,
            min_rto,
            max_rto,
        }
    }

    /// Takes one sample that the peer answered at once (the handshake, a PONG).
    pub fn update(&mut self, sample: Duration) {
        self.take(sample, sample);
    }

    /// Takes one sample from an acknowledgement, which the peer may have held for up to its
    /// ack delay: the delay is subtracted, never below the smallest sample seen.
    pub fn update_acked(&mut self, sample: Duration) {
        let min = self.min_rtt.min(sample);
        let adjusted = sample.saturating_sub(self.ack_delay).max(min);
        self.take(sample, adjusted);
    }

    fn take(&mut self, raw: Duration, sample: Duration) {
        self.latest = raw;
        self.min_rtt = self.min_rtt.min(raw);
        if !self.has_sample {
            self.has_sample = true;
            self.srtt = sample;
            self.rttvar = sample / 2;
            return;
        }
        // RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R'|; SRTT = 7/8 SRTT + 1/8 R'.
        let delta = self.srtt.abs_diff(sample);
        self.rttvar = (self.rttvar * 3 + delta) / 4;
        self.srtt = (self.srtt * 7 + sample) / 8;
    }

    /// Smoothed RTT.
    pub fn srtt(&self) -> Duration {
        self.srtt
    }

    /// RTT variation.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The latest sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// The smallest sample seen (`None` before the first).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.has_sample.then_some(self.min_rtt)
    }

    /// Whether any sample was taken.
    pub fn has_sample(&self) -> bool {
        self.has_sample
    }

    /// SRTT + max(4 RTTVAR, SRTT / 4, 2 ms) + the peer's ack delay, clamped to the configured
    /// bounds.
    ///
    /// RFC 6298's clock-granularity term is SRTT / 4 here (at least 2 ms): on a steady path
    /// RTTVAR decays towards zero, and a timer at exactly SRTT would fire for every ack that
    /// waited for the peer's next tick.
    pub fn rto(&self) -> Duration {
        let spread = (self.rttvar * 4)
            .max(self.srtt / 4)
            .max(Duration::from_millis(2));
        (self.srtt + spread + self.ack_delay).clamp(self.min_rto, self.max_rto)
    }

    /// The resend timeout after `resends` resends (doubling, capped at the maximum).
    pub fn backoff_rto(&self, resends: u32) -> Duration {
        let base = self.rto();
        base.checked_mul(1 << resends.min(16))
            .unwrap_or(self.max_rto)
            .min(self.max_rto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_rfc6298() {
        let ms = Duration::from_millis;
        let mut r = RttEstimator::new(ms(100), ms(10), ms(2000), Duration::ZERO);
        assert_eq!(r.rto(), ms(300));
        r.update(ms(40));
        assert_eq!((r.srtt(), r.rttvar()), (ms(40), ms(20)));
        assert_eq!(r.rto(), ms(120));
        r.update(ms(80));
        assert_eq!(r.rttvar(), ms(25));
        assert_eq!(r.srtt(), ms(45));
        assert_eq!(r.backoff_rto(1), ms(290));
        assert_eq!(r.backoff_rto(10), ms(2000));
    }

    #[test]
    fn subtracts_the_ack_delay_but_never_below_the_smallest_sample() {
        let ms = Duration::from_millis;
        let mut r = RttEstimator::new(ms(100), ms(10), ms(2000), ms(20));
        r.update(ms(5)); // the handshake: answered at once
        assert_eq!(r.min_rtt(), Some(ms(5)));
        // Acks held 20 ms: each sample reads 25 ms, the path's RTT is 5 ms.
        for _ in 0..50 {
            r.update_acked(ms(25));
        }
        assert_eq!(r.srtt(), ms(5));
        assert_eq!(r.latest(), ms(25));
        // Held less than the full delay: the correction stops at min_rtt.
        r.update_acked(ms(12));
        assert_eq!(r.srtt(), ms(5));
        // The resend timeout allows for the delay.
        assert!(r.rto() >= ms(25), "{:?}", r.rto());
        // A path that got slower still shows.
        for _ in 0..50 {
            r.update_acked(ms(60));
        }
        assert!(r.srtt() > ms(39) && r.srtt() <= ms(40), "{:?}", r.srtt());
    }
}
