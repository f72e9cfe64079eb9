//! A cumulative Prometheus histogram over fixed buckets, as `prometheus_client` keeps one.

/// A cumulative Prometheus histogram over fixed buckets.
#[derive(Clone, Debug)]
pub struct Histogram {
    pub(super) bounds: Vec<f64>,
    pub(super) counts: Vec<u64>,
    pub(super) sum: f64,
    pub(super) count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending; `+Inf` is implicit).
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// vLLM's 1-2-5 buckets up to `max` (`build_1_2_5_buckets`).
    pub fn one_two_five(max: u32) -> Self {
        let mut bounds = Vec::new();
        let mut scale = 1u64;
        'outer: loop {
            for m in [1u64, 2, 5] {
                let v = m * scale;
                if v > max as u64 {
                    break 'outer;
                }
                bounds.push(v as f64);
            }
            scale *= 10;
        }
        Self::new(&bounds)
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_buckets_and_observations() {
        let mut h = Histogram::one_two_five(1000);
        assert_eq!(
            h.bounds,
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        h.observe(3.0);
        h.observe(5000.0);
        assert_eq!(
            (h.count(), h.counts[2], h.counts.iter().sum::<u64>()),
            (2, 1, 1)
        );
    }
}
