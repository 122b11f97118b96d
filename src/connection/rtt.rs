//! Round-trip time estimation (RFC 6298) and the resend timeout it drives.

use std::time::Duration;

/// Smoothed RTT and its variation, per RFC 6298.
#[derive(Debug, Clone, Copy)]
pub struct RttEstimator {
    srtt: Duration,
    rttvar: Duration,
    latest: Duration,
    has_sample: bool,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    /// An estimator that assumes `initial` until the first sample.
    pub fn new(initial: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        Self {
            srtt: initial,
            rttvar: initial / 2,
            latest: initial,
            has_sample: false,
            min_rto,
            max_rto,
        }
    }

    /// Takes one sample.
    pub fn update(&mut self, sample: Duration) {
        self.latest = sample;
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

    /// Whether any sample was taken.
    pub fn has_sample(&self) -> bool {
        self.has_sample
    }

    /// SRTT + max(4 RTTVAR, SRTT / 4, 2 ms), clamped to the configured bounds.
    ///
    /// RFC 6298's clock-granularity term is SRTT / 4 here (at least 2 ms): on a steady path
    /// RTTVAR decays towards zero, and a timer at exactly SRTT would fire for every ack that
    /// waited for the peer's next tick.
    pub fn rto(&self) -> Duration {
        let spread = (self.rttvar * 4)
            .max(self.srtt / 4)
            .max(Duration::from_millis(2));
        (self.srtt + spread).clamp(self.min_rto, self.max_rto)
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
        let mut r = RttEstimator::new(ms(100), ms(10), ms(2000));
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
}
