//! What one run of a workload on one path measured: a latency histogram, bytes moved,
//! and errors, summarised for the table, the JSON file and the plot.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, 1 µs to 100 s, three significant digits.
#[derive(Debug, Clone)]
pub struct Stats {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub bytes: u64,
    /// First error message seen, to say what went wrong.
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"),
            errors: 0,
            bytes: 0,
            first_error: None,
        }
    }
}

impl Stats {
    /// Records one latency in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record((ns / 1000).max(1));
    }

    /// Counts `n` errors, keeping the first message.
    pub fn error(&mut self, n: u64, what: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.errors += n;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    /// Adds another run's measurements.
    pub fn merge(&mut self, other: &Stats) {
        self.hist.add(&other.hist).expect("histograms share bounds");
        self.errors += other.errors;
        self.bytes += other.bytes;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// The summary over `secs` of wall time.
    pub fn summary(&self, secs: f64) -> Summary {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let n = self.hist.len();
        Summary {
            count: n,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.hist.max() as f64 / 1000.0,
            per_sec: n as f64 / secs.max(1e-9),
            mib_per_sec: self.bytes as f64 / (1 << 20) as f64 / secs.max(1e-9),
            errors: self.errors,
            first_error: self.first_error.clone(),
            curve: curve(&self.hist),
        }
    }
}

/// Percentiles, rates and errors of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Measured operations (frames, keystrokes, requests, downloads) per second.
    pub per_sec: f64,
    /// Payload bytes per second, MiB.
    pub mib_per_sec: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// (percentile, ms) points for the plot: 0 to 99.99.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

/// Points of the percentile curve, denser towards the tail.
fn curve(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    if hist.is_empty() {
        return Vec::new();
    }
    (0..=40)
        .map(|i| {
            // 1 - 10^(-i/10): 0%, 20.6%, ... 90%, ... 99%, ... 99.99%.
            let q = 1.0 - 10f64.powf(-(i as f64) / 10.0);
            (q * 100.0, hist.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}
