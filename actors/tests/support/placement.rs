//! Helpers of the placement tests (`sched_*.rs`), which test the pure scheduling core and need
//! none of the actor harness in `mod.rs`: each includes this file with
//! `#[path = "support/placement.rs"] mod placement;` (tokio's `tests/support/` idiom). Resources,
//! capacities and queued jobs in one call, a queue's order, a subscriber capturing events at WARN
//! and above, a counter summed over label sets, a seeded pick, and a placer over given workers.
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_actors::sched::{JobQueue, Placement, Placer, PlacerConfig, QueuedJob, WorkerCapacity};
use cadre_actors::{JobId, Resources, WorkerId};
use metrics_util::debugging::{DebugValue, Snapshotter};
use rand::rngs::SmallRng;
use rand::Rng;
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

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

/// One event: its level and its fields (`message` included) rendered to strings.
pub type Captured = (Level, BTreeMap<String, String>);

/// Events at WARN and above.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Captured>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level <= Level::WARN {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push((level, fields));
        }
    }
}

impl Events {
    pub fn at(&self, level: Level) -> Vec<BTreeMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// Installs an event-capturing subscriber for the calling thread. Every test runs under one:
/// tracing caches each callsite's interest process-wide, and a callsite first hit on a thread
/// without a subscriber can be cached as uninteresting, losing another test's events.
pub fn subscribed() -> (Events, tracing::subscriber::DefaultGuard) {
    let events = Events::default();
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    (events, guard)
}

/// A counter's value summed over the label sets carrying `label` (all when `None`).
pub fn counter(snap: &Snapshotter, name: &str, label: Option<(&str, &str)>) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == name)
        .filter(|(k, _, _, _)| {
            label.is_none_or(|(lk, lv)| k.key().labels().any(|l| l.key() == lk && l.value() == lv))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
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
