//! Rate-limited logging for what an operator should see: refusals and drops that tell of an
//! overloaded server, a slow application or a misbehaving peer. A flood of them gives one line
//! per interval, with the count of those left out, never one line per datagram.

use std::time::{Duration, Instant};

/// One line per [`LogLimit::INTERVAL`] at most; the rest are counted.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// At most one line per this interval.
    pub(crate) const INTERVAL: Duration = Duration::from_secs(5);

    /// `Some(n)` if a line may be written now (`n` lines were left out since the last one);
    /// `None` if this one is left out (and counted).
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < Self::INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_count_of_the_rest() {
        let t = Instant::now();
        let mut l = LogLimit::default();
        assert_eq!(l.allow(t), Some(0));
        for i in 1..100 {
            assert_eq!(l.allow(t + Duration::from_millis(i)), None);
        }
        assert_eq!(l.allow(t + LogLimit::INTERVAL), Some(99));
        assert_eq!(l.allow(t + LogLimit::INTERVAL), None);
    }
}
