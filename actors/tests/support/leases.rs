//! Helpers of the lease-table tests (`lease_*.rs`), which test the pure `LeaseTable` and need
//! none of the actor harness in `mod.rs`: each includes this file with
//! `#[path = "support/leases.rs"] mod leases;` (tokio's `tests/support/` idiom). The test TTL, a
//! subscriber capturing warnings, a local metrics recorder, a counter and a gauge read from it,
//! and the parts of a `StaleToken` refusal.
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_actors::{Error, FencingToken, JobId, WorkerId};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

pub const TTL: Duration = Duration::from_secs(10);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Warning events, each as its fields (`message` included) rendered to strings.
#[derive(Clone, Default)]
pub struct Warnings(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

pub struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == Level::WARN {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

impl Warnings {
    pub fn take(&self) -> Vec<BTreeMap<String, String>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Installs a subscriber for the calling thread. Every test runs under one: tracing caches
/// each callsite's interest process-wide, and a callsite first hit on a thread without a
/// subscriber while another test installs its own can be cached as uninteresting, losing the
/// other test's events.
pub fn subscribed() -> tracing::subscriber::DefaultGuard {
    tracing::subscriber::set_default(tracing_subscriber::registry().with(Warnings::default()))
}

/// Runs `f` with a local metrics recorder and a warning-capturing subscriber.
pub fn observed<T>(f: impl FnOnce(&Warnings) -> T) -> (T, Snapshotter) {
    let warnings = Warnings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let out = metrics::with_local_recorder(&recorder, || f(&warnings));
    (out, snapshotter)
}

/// A counter's value summed over the label sets matching `op` (all when `None`).
pub fn counter(snap: &Snapshotter, name: &str, op: Option<&str>) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == name)
        .filter(|(k, _, _, _)| {
            op.is_none_or(|op| k.key().labels().any(|l| l.key() == "op" && l.value() == op))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

pub fn gauge(snap: &Snapshotter, name: &str) -> Option<f64> {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, _, _, _)| k.key().name() == name)
        .and_then(|(_, _, _, v)| match v {
            DebugValue::Gauge(g) => Some(g.0),
            _ => None,
        })
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
