//! Shared test helpers: a paused-clock actix system, a capturing tracing layer for failure
//! events, and a global metrics recorder to read counters from.

#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Runs `fut` on a fresh actix System whose tokio clock is paused (time advances only when
/// every task is idle), with a capturing subscriber installed for this thread.
pub fn run<F, Fut>(f: F) -> Captured
where
    F: FnOnce(Captured) -> Fut,
    Fut: Future<Output = ()>,
{
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    });
    let fut = f(captured.clone());
    system.block_on(fut);
    captured
}

/// One captured event: its level and fields as text.
#[derive(Clone, Debug)]
pub struct Captured {
    pub events: Arc<Mutex<Vec<(Level, Vec<(String, String)>)>>>,
}

impl Default for Captured {
    fn default() -> Self {
        Captured {
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl Captured {
    /// Error-level events whose message is "actor failure", as field maps.
    pub fn failures(&self) -> Vec<std::collections::HashMap<String, String>> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, f)| {
                *l == Level::ERROR
                    && f.iter()
                        .any(|(k, v)| k == "message" && v == "actor failure")
            })
            .map(|(_, f)| f.iter().cloned().collect())
            .collect()
    }

    /// Failure events of `kind` at `path`.
    pub fn failures_of(&self, path: &str, kind: &str) -> usize {
        self.failures()
            .iter()
            .filter(|f| {
                f.get("actor_path").map(String::as_str) == Some(path)
                    && f.get("kind").map(String::as_str) == Some(kind)
            })
            .count()
    }

    /// All error-level events.
    pub fn errors(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l == Level::ERROR)
            .count()
    }
}

struct FieldVisitor<'a>(&'a mut Vec<(String, String)>);

impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name().to_owned(), value.to_string()));
    }
}

impl<S: Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut FieldVisitor(&mut fields));
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields));
    }
}

/// The process-wide metrics snapshotter (installed once; tests use distinct actor ids).
pub fn snapshotter() -> &'static Snapshotter {
    static SNAP: OnceLock<Snapshotter> = OnceLock::new();
    SNAP.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

/// The value of counter `name` with exactly the given labels (0 if absent).
pub fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let snapshot = snapshotter().snapshot().into_vec();
    let mut total = 0;
    for (key, _, _, value) in snapshot {
        if key.key().name() != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v));
        if matches {
            if let DebugValue::Counter(c) = value {
                total += c;
            }
        }
    }
    total
}

/// Lets every ready task run (the paused clock does not move).
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}
