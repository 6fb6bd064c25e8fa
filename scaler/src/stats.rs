//! The one percentile: nearest rank, as the reaction latencies everywhere (agent status,
//! `scaler exec`, the benchmark, the load test) are summarized.

/// The nearest-rank percentile `p` (a fraction, 0..=1) of an ascending slice; `None` when it
/// is empty. Nearest rank returns a value that was observed (no interpolation): p99 of 100
/// values is the 99th, p50 of 2 values the first.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sorts `v` (floats by total order) and returns it, for [`percentile`].
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_returns_observed_values() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 0.50), Some(50));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[3.0, 7.0], 0.5), Some(3.0));
        assert_eq!(percentile::<u64>(&[], 0.5), None);
        assert_eq!(sorted(vec![2.0, f64::NAN, 1.0])[0], 1.0);
    }
}
