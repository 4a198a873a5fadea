//! Shared test helpers: a paused-clock actix system, a capturing tracing layer for failure
//! events, and a global metrics recorder to read counters from.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
    cadre_supervisor::install_panic_hook();
    snapshotter();
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
    pub events: Arc<Mutex<Vec<CapturedEvent>>>,
}

/// An event's level and its fields as text.
pub type CapturedEvent = (Level, Vec<(String, String)>);

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

use actix::prelude::*;
use cadre_supervisor::SupervisedContext;

/// A shared, ordered log of lifecycle and message events.
pub type Log = Arc<Mutex<Vec<String>>>;

pub fn new_log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

pub fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// A test actor that logs its lifecycle, counts messages, and fails on request.
pub struct Probe {
    pub name: &'static str,
    pub log: Log,
    pub count: u64,
    pub veto_stop: bool,
}

impl Probe {
    pub fn factory(name: &'static str, log: &Log) -> impl Fn() -> Probe + Send + 'static {
        let log = log.clone();
        move || Probe {
            name,
            log: log.clone(),
            count: 0,
            veto_stop: false,
        }
    }

    pub fn stubborn(name: &'static str, log: &Log) -> impl Fn() -> Probe + Send + 'static {
        let log = log.clone();
        move || Probe {
            name,
            log: log.clone(),
            count: 0,
            veto_stop: true,
        }
    }

    fn push(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{what}:{}", self.name));
    }
}

impl Actor for Probe {
    type Context = SupervisedContext<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.push("start");
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if self.veto_stop {
            self.push("veto");
            Running::Continue
        } else {
            Running::Stop
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.push("stop");
    }
}

/// Panics in the handler.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Boom;

impl Handler<Boom> for Probe {
    type Result = ();
    fn handle(&mut self, _: Boom, _: &mut Self::Context) {
        panic!("boom in {}", self.name);
    }
}

/// Increments and returns the count (counts since the last restart).
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Inc;

impl Handler<Inc> for Probe {
    type Result = u64;
    fn handle(&mut self, _: Inc, _: &mut Self::Context) -> u64 {
        self.count += 1;
        self.count
    }
}

/// The actor stops itself (a normal exit).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopSelf;

impl Handler<StopSelf> for Probe {
    type Result = ();
    fn handle(&mut self, _: StopSelf, ctx: &mut Self::Context) {
        self.veto_stop = false;
        ctx.stop();
    }
}

/// Blocks the mailbox on a future that never completes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Hang;

impl Handler<Hang> for Probe {
    type Result = ();
    fn handle(&mut self, _: Hang, ctx: &mut Self::Context) {
        ctx.wait(actix::fut::wrap_future(std::future::pending::<()>()));
    }
}
