//! Back-pressure with hysteresis for progress flushes: the receiver maps its load to a level
//! (none, throttle, batch, reject) that rises at once and falls one step at a time, only after
//! the load has stayed low for a while, so a level does not flap at a boundary.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::Backpressure;

/// Back-pressure on progress flushes, with hysteresis: the level rises at once with the load
/// and falls one step only after the load has stayed under the current level's bound for
/// [`Hysteresis::CALM`].
pub struct Hysteresis {
    level: Backpressure,
    calm_since: Option<Instant>,
}

impl Hysteresis {
    /// How long the load must stay low before the level falls one step.
    pub const CALM: Duration = Duration::from_secs(1);

    /// The level a load (0.0 ..= 1.0 and beyond) calls for.
    pub fn target(load: f64) -> Backpressure {
        if load >= 0.75 {
            Backpressure::Reject
        } else if load >= 0.5 {
            Backpressure::Batch
        } else if load >= 0.25 {
            Backpressure::Throttle
        } else {
            Backpressure::None
        }
    }

    /// Starts at [`Backpressure::None`].
    pub fn new() -> Hysteresis {
        Hysteresis {
            level: Backpressure::None,
            calm_since: None,
        }
    }

    /// The current level.
    pub fn level(&self) -> Backpressure {
        self.level
    }

    /// Feeds one load sample taken at `now` and returns the level to answer with.
    pub fn update(&mut self, load: f64, now: Instant) -> Backpressure {
        let target = Self::target(load);
        if target >= self.level {
            self.level = target;
            self.calm_since = None;
        } else {
            let since = *self.calm_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= Self::CALM {
                self.level = match self.level {
                    Backpressure::Reject => Backpressure::Batch,
                    Backpressure::Batch => Backpressure::Throttle,
                    _ => Backpressure::None,
                };
                self.calm_since = None;
            }
        }
        self.level
    }
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis::new()
    }
}
