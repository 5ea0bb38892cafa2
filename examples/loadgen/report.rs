//! What a run records and prints: send times, latency histograms, figures.

use std::{
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;

/// Wall-clock time in ns, as carried in payloads.
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Latencies in microseconds, sharded so thousands of tasks can record at once.
pub(crate) struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    pub(crate) fn new() -> Self {
        let shards = (0..64)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()))
            .collect();
        Self { shards }
    }

    pub(crate) fn record(&self, shard: usize, micros: u64) {
        let mut h = self.shards[shard % self.shards.len()].lock().unwrap();
        h.saturating_record(micros.max(1));
    }

    pub(crate) fn take(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 120_000_000, 3).unwrap();
        for s in &self.shards {
            let mut h = s.lock().unwrap();
            all.add(&*h).unwrap();
            h.reset();
        }
        all
    }
}

/// Percentiles of a histogram of microseconds, in milliseconds.
pub(crate) fn summary(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

/// RSS in KiB, shown in MiB.
pub(crate) fn kib(v: Option<u64>) -> String {
    v.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}
