//! A latency histogram of bounded size: exact below 128 µs, then 64 buckets per power of two
//! (each bucket at most 1/64 = 1.6 % wide), up to 2^40 µs (12 days; larger values clamp).

/// Values below this are counted exactly.
const LINEAR: u64 = 128;
/// Buckets per power of two above [`LINEAR`].
const SUB: u64 = 64;
/// The largest value counted as itself.
const CLAMP: u64 = 1 << 40;
/// Buckets in all: the linear ones, then 64 for each power of two from 2^7 to 2^40.
const BUCKETS: usize = (LINEAR + (40 - 7 + 1) * SUB) as usize;

/// Counts of values in microseconds, for percentiles over any number of samples.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    let v = v.min(CLAMP);
    if v < LINEAR {
        return v as usize;
    }
    let e = u64::from(63 - v.leading_zeros()); // 7..=40
    let m = v >> (e - 6); // 64..128
    (LINEAR + (e - 7) * SUB + (m - SUB)) as usize
}

/// The lowest value and one past the highest value of bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, i + 1);
    }
    let k = i - LINEAR;
    let e = k / SUB + 7;
    let m = k % SUB + SUB;
    let shift = e - 6;
    (m << shift, (m + 1) << shift)
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value counted (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value below or at which a fraction `q` of the values lie (the middle of its
    /// bucket, never above the maximum); `None` without values.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                let mid = if hi - lo == 1 { lo } else { lo + (hi - lo) / 2 };
                return Some(mid.min(self.max));
            }
        }
        Some(self.max)
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
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000).chain([1 << 20, (1 << 40) - 1, 1 << 40]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS);
            let (lo, hi) = bounds(i);
            assert!(lo <= v && v < hi, "{v} not in bucket {i} = {lo}..{hi}");
            last = i;
        }
    }
}
