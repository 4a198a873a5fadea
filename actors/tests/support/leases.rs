//! Helpers of the lease-table tests (`lease_*.rs`), which test the pure `LeaseTable` and need
//! none of the actor harness in `mod.rs`: each includes this file with
//! `#[path = "support/leases.rs"] mod leases;` (tokio's `tests/support/` idiom). The test TTL, a
//! subscriber capturing warnings (`subscribed`, from `capture.rs`, which this file includes), a
//! local metrics recorder with one (`observed`), a counter and a gauge read from it, and the
//! parts of a `StaleToken` refusal.
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cadre_actors::{Error, FencingToken, JobId, WorkerId};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use tracing::Level;

#[path = "capture.rs"]
mod capture;
#[path = "counters.rs"]
mod counters;

pub use capture::subscribed;
// Not every test binary that includes this file uses it.
use capture::Events;
#[allow(unused_imports)]
pub use counters::{counter, gauge};

pub const TTL: Duration = Duration::from_secs(10);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Runs `f` with a local metrics recorder and a subscriber capturing events at WARN and above
/// (`warnings.take(Level::WARN)` drains the warnings).
pub fn observed<T>(f: impl FnOnce(&Events) -> T) -> (T, Snapshotter) {
    let warnings = Events::at_least(Level::WARN);
    let _guard = warnings.install();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let out = metrics::with_local_recorder(&recorder, || f(&warnings));
    (out, snapshotter)
}

pub fn stale(err: &Error) -> (JobId, WorkerId, FencingToken, Option<FencingToken>) {
    match err {
        Error::StaleToken {
            job,
            worker,
            presented,
            current,
        } => (*job, *worker, *presented, *current),
        other => panic!("expected StaleToken, got {other:?}"),
    }
}
