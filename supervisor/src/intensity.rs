//! The restart-intensity window: OTP's "more than `intensity` restarts within `period`".
//!
//! The window slides: each restart is remembered for `period`, so a quiet gap only forgives the
//! restarts that are older than `period`, never the ones still inside it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Restart times within the last `period`.
#[derive(Debug)]
pub(crate) struct RestartWindow {
    intensity: u32,
    period: Duration,
    times: VecDeque<Instant>,
}

impl RestartWindow {
    pub(crate) fn new(intensity: u32, period: Duration) -> Self {
        RestartWindow {
            intensity,
            period,
            times: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; returns false when that makes more than `intensity` restarts
    /// within the last `period` (the limit is reached).
    pub(crate) fn record(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.times.front() {
            if now.duration_since(oldest) >= self.period {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.push_back(now);
        // Only "more than intensity" matters: keep at most intensity + 1 times, so memory stays
        // bounded even with a huge intensity.
        let keep = (self.intensity as usize).saturating_add(1);
        while self.times.len() > keep {
            self.times.pop_front();
        }
        self.times.len() <= self.intensity as usize
    }

    /// The configured intensity.
    pub(crate) fn intensity(&self) -> u32 {
        self.intensity
    }

    /// The configured period.
    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    /// Forgets every recorded restart (a restarted supervisor starts with a fresh window).
    pub(crate) fn clear(&mut self) {
        self.times.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_counts_restarts_inside_the_period_only() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = RestartWindow::new(2, Duration::from_secs(5));
        assert!(w.record(t0));
        assert!(w.record(t0 + 3 * s));
        // t0 has left the window at 6 s: {3, 6}
        assert!(w.record(t0 + 6 * s));
        // {3, 6, 7}: three restarts within 5 s
        assert!(!w.record(t0 + 7 * s));
    }

    #[test]
    fn zero_intensity_refuses_the_first_restart() {
        let mut w = RestartWindow::new(0, Duration::from_secs(5));
        assert!(!w.record(Instant::now()));
    }
}
