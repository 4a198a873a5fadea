//! The one wall clock of the crate: milliseconds since the Unix epoch, for what is shown to
//! people and journaled (when a job was accepted, ended, may be retried). Durations and
//! deadlines go through `tokio::time` instead, which tests pause and advance; every wall-clock
//! read goes through here, so a simulation can stand in for it in one place.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch now; 0 on a clock set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
