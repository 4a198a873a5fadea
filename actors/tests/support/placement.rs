//! Helpers of the placement tests (`sched_*.rs`), which test the pure scheduling core and need
//! none of the actor harness in `mod.rs`: each includes this file with
//! `#[path = "support/placement.rs"] mod placement;` (tokio's `tests/support/` idiom). Resources,
//! capacities and queued jobs in one call, a queue's order, a subscriber capturing events at WARN
//! and above (`subscribed`, from `capture.rs`, which this file includes), a counter summed over
//! label sets, a seeded pick, and a placer over given workers.
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cadre_actors::sched::{JobQueue, Placement, Placer, PlacerConfig, QueuedJob, WorkerCapacity};
use cadre_actors::{JobId, Resources, WorkerId};
use rand::rngs::SmallRng;
use rand::Rng;
use tokio::time::Instant;

#[path = "capture.rs"]
mod capture;
#[path = "counters.rs"]
mod counters;

pub use capture::subscribed;
// Not every test binary that includes this file uses it.
#[allow(unused_imports)]
pub use counters::{counter, gauge};

pub const GIB: u64 = 1 << 30;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn res(cpu_millis: u32, memory_bytes: u64, gpus: u32) -> Resources {
    Resources {
        cpu_millis,
        memory_bytes,
        gpus,
    }
}

pub fn cap(cpu_millis: u64, memory_bytes: u64, gpus: &[u32]) -> WorkerCapacity {
    WorkerCapacity {
        cpu_millis,
        memory_bytes,
        gpus: gpus.to_vec(),
    }
}

pub fn qj(id: u64, priority: i16, resources: Resources, gang: u32, at: Instant) -> QueuedJob {
    QueuedJob {
        job: JobId(id),
        priority,
        resources,
        gang,
        enqueued_at: at,
    }
}

/// A job of priority `priority` needing 1 core, enqueued at `at`.
pub fn small(id: u64, priority: i16, at: Instant) -> QueuedJob {
    qj(id, priority, res(1000, GIB, 0), 1, at)
}

pub fn order(q: &JobQueue) -> Vec<u64> {
    q.iter().map(|j| j.job.0).collect()
}

pub fn pick<T: Copy>(rng: &mut SmallRng, items: &[T]) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[rng.random_range(0..items.len())])
    }
}

pub fn placer(config: PlacerConfig, t0: Instant, workers: &[(u64, WorkerCapacity)]) -> Placer {
    let mut p = Placer::new(config, t0);
    for (id, c) in workers {
        p.add_worker(WorkerId(*id), c).unwrap();
    }
    p
}

pub fn placed(p: Option<Placement>) -> u64 {
    p.expect("a placement").job.0
}
