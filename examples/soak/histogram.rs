//! Round-trip percentiles: [`hdrhistogram`] over the whole run (three significant digits, from
//! 1 µs to 2^40 µs, about 12 days; larger values clamp), exact ones over small samples.

/// Counts of values in microseconds, for percentiles over any number of samples.
#[derive(Clone, Debug)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Self(hdrhistogram::Histogram::new_with_bounds(1, 1 << 40, 3).expect("valid bounds"))
    }
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.0.saturating_record(v);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The largest value counted (to three significant digits).
    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// The value below or at which a fraction `q` of the values lie (to three significant
    /// digits); `None` without values.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q))
    }
}

/// The exact percentile of a small sample (sorted in place).
pub fn exact_percentile(samples: &mut [u32], q: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_three_digits() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        for v in 1..=10_000 {
            h.record(v);
        }
        h.record(u64::MAX); // clamps
        assert_eq!(h.count(), 10_001);
        let p50 = h.percentile(0.5).unwrap() as f64;
        assert!((p50 - 5000.0).abs() <= 5.0, "{p50}");
        let p99 = h.percentile(0.99).unwrap() as f64;
        assert!((p99 - 9900.0).abs() <= 10.0, "{p99}");
    }
}
