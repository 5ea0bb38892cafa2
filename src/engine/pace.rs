//! [`Pace`]: whether the hub writes to idle sockets itself, or queues every frame
//! for the sockets' own tasks.
//!
//! Writing from the hub costs no task wake-up, but it is one task's work, on one
//! core. Queuing spreads the writes over every core and lets a socket coalesce the
//! frames that wait. So the hub writes itself while those writes would take under
//! three quarters of one core: the deliveries of the last window, times what a write
//! cost when the hub last made them (wall time, so a hub starved of its core reads
//! as busier).

use std::time::{Duration, Instant};

/// How often the choice is made again.
const WINDOW: Duration = Duration::from_millis(250);
/// The share of one core the hub's own writes may take. At half, 10,000 sockets ×
/// 5 NOTIFY/s sat on the line (a write measured 8–10 µs on a busy 2-core machine)
/// and went to the dearer queued path in half the runs.
const BUSY: f64 = 0.75;
/// A write's cost until one is measured: a small frame to a local socket.
const FIRST_COST: Duration = Duration::from_micros(5);

/// The hub's choice between writing and queuing, made every [`WINDOW`].
#[derive(Debug)]
pub(crate) struct Pace {
    started: Instant,
    /// Frames offered since `started`.
    offered: u64,
    /// What one offer cost while writing, averaged.
    cost: Duration,
    write: bool,
    /// Never chooses again (tests and benchmarks).
    fixed: bool,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            offered: 0,
            cost: FIRST_COST,
            write: true,
            fixed: false,
        }
    }
}

impl Pace {
    /// Whether the hub writes to idle sockets itself.
    pub(crate) fn writes(&self) -> bool {
        self.write
    }

    /// Counts a dispatch of `offered` frames that took `took` (what a write costs is
    /// learnt from those made while writing); chooses again once a window is over.
    pub(crate) fn record(&mut self, offered: usize, took: Duration, now: Instant) {
        if offered == 0 || self.fixed {
            return;
        }
        self.offered += offered as u64;
        if self.write {
            let each = took / offered as u32;
            // A moving average, so one slow pass (a page fault, a preemption) only
            // moves it a little.
            self.cost = (self.cost * 7 + each) / 8;
        }
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= WINDOW {
            let busy = self.cost.as_secs_f64() * self.offered as f64 / elapsed.as_secs_f64();
            self.write = busy < BUSY;
            self.started = now;
            self.offered = 0;
        }
    }

    /// Writes (or queues) always, whatever the load: for tests, and for benchmarks,
    /// whose back-to-back dispatches would otherwise read as a busy hub.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn fixed(write: bool) -> Self {
        Self {
            write,
            fixed: true,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per_second` frames a second, each costing `cost`, for two seconds.
    fn run(pace: &mut Pace, per_second: u32, cost: Duration) -> bool {
        let start = pace.started;
        // One dispatch every 10 ms.
        let each = (per_second / 100) as usize;
        for tick in 1..=200 {
            pace.record(
                each,
                cost * each as u32,
                start + Duration::from_millis(tick * 10),
            );
        }
        pace.writes()
    }

    #[test]
    fn the_hub_writes_while_its_writes_take_under_three_quarters_of_a_core() {
        let mut pace = Pace::default();
        // 50,000 frames/s at 5 µs: a quarter of a core; at 12 µs, 0.6.
        assert!(run(&mut pace, 50_000, Duration::from_micros(5)));
        assert!(run(&mut Pace::default(), 50_000, Duration::from_micros(12)));
        // 200,000 frames/s: a whole core. Queue.
        assert!(!run(&mut pace, 200_000, Duration::from_micros(5)));
        // Queuing is cheaper per offer, but the cost learnt while writing stands:
        // the same load keeps queuing rather than swinging back.
        assert!(!run(&mut pace, 200_000, Duration::from_nanos(100)));
        // The load falls: write again.
        assert!(run(&mut pace, 20_000, Duration::from_nanos(100)));
    }

    #[test]
    fn dearer_writes_turn_queuing_on_at_a_lower_rate() {
        let mut pace = Pace::default();
        // 50,000 frames/s at 20 µs (TLS, say): a whole core.
        assert!(!run(&mut pace, 50_000, Duration::from_micros(20)));
    }
}
