//! Measurements and their presentation: HDR latency histograms, rates per 100 ms bucket, the
//! progress bar, and the JSON report.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Latencies in microseconds, 1 µs to 10 min, 3 significant digits.
#[derive(Debug)]
pub struct Latency {
    hist: Mutex<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            hist: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }

    pub fn record_us(&self, us: u64) {
        let mut h = self.hist.lock().expect("histogram lock");
        h.saturating_record(us.max(1));
    }

    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    /// Records a batch under one lock: subscribers buffer latencies locally, because taking a
    /// shared lock per delivery at 100k deliveries/s would cost more than the measurement.
    pub fn record_all(&self, us: &[u64]) {
        let mut h = self.hist.lock().expect("histogram lock");
        for &v in us {
            h.saturating_record(v.max(1));
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let h = self.hist.lock().expect("histogram lock");
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    pub fn reset(&self) {
        self.hist.lock().expect("histogram lock").reset();
    }
}

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return write!(f, "n=0");
        }
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// The highest number of events in any 100 ms bucket, scaled to events per second.
pub fn peak_rate_per_s(offsets: &[Duration]) -> f64 {
    let mut buckets = std::collections::HashMap::<u128, u64>::new();
    for d in offsets {
        *buckets.entry(d.as_millis() / 100).or_default() += 1;
    }
    buckets.values().copied().max().unwrap_or(0) as f64 * 10.0
}

/// A spinner-style progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Writes `report` as pretty JSON to `path` (when given).
pub fn write_json(path: Option<&Path>, report: &impl Serialize) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Rounds to 3 decimals for readable JSON.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_peak_rate() {
        let l = Latency::new();
        l.record_all(&(1..=100).map(|i| i * 1000).collect::<Vec<_>>());
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        let offsets: Vec<Duration> = [10, 20, 30, 150, 999]
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect();
        assert_eq!(peak_rate_per_s(&offsets), 30.0);
        assert_eq!(peak_rate_per_s(&[]), 0.0);
    }
}
