//! Latency summaries: every sample is kept and sorted once (exact
//! percentiles by nearest rank, as an HDR histogram would give them at
//! full precision), so p99.9 of a few thousand samples is a real sample.

use std::time::Duration;

/// Percentiles of one set of samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Sorts `samples` and summarises them; `None` when there are none.
pub fn summarize(samples: &mut [Duration]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    let count = samples.len();
    let mean = total / u32::try_from(count).unwrap_or(u32::MAX);
    Some(Summary {
        count,
        p50: rank(samples, 0.50),
        p99: rank(samples, 0.99),
        p999: rank(samples, 0.999),
        max: samples.last().copied().unwrap_or_default(),
        mean,
    })
}

/// Nearest-rank percentile of sorted, non-empty `sorted`.
fn rank(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    let r = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(r - 1).copied().unwrap_or_default()
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let s = summarize(&mut v).expect("samples");
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, Duration::from_micros(500));
        assert_eq!(s.p99, Duration::from_micros(990));
        assert_eq!(s.p999, Duration::from_micros(999));
        assert_eq!(s.max, Duration::from_micros(1000));
        assert!(summarize(&mut []).is_none());
        let mut one = [Duration::from_millis(3)];
        let s = summarize(&mut one).expect("one sample");
        assert_eq!(
            (s.p50, s.p999),
            (Duration::from_millis(3), Duration::from_millis(3))
        );
    }
}
