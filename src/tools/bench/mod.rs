//! Benchmark commands (`sqs-scheduler bench ...`): run them on a release build; they print their figures.

pub mod http;
pub mod pipeline;
pub mod processes;
pub mod store;

/// Nearest-rank quantile `p` of ascending `sorted` samples, or None when there are too few samples for it to say
/// more than the maximum does: at least 10 samples must lie above it (p99 needs 1,000 samples, p90 100, p50 20).
pub fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 || (n as f64) * (1.0 - p) < 10.0 - 1e-9 {
        return None;
    }
    let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
    Some(sorted[i])
}

/// A quantile for a table cell: `{:.2}`, or `n/a` when the samples do not support it.
pub fn quantile_cell(sorted: &[f64], p: f64) -> String {
    quantile(sorted, p).map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_need_enough_samples() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&hundred, 0.5), Some(50.0));
        assert_eq!(quantile(&hundred, 0.9), Some(90.0));
        // The 99th percentile of 100 samples would be the second-largest value: not printed.
        assert_eq!(quantile(&hundred, 0.99), None);
        let thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&thousand, 0.99), Some(990.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
