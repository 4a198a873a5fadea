//! The harness: `run` on a fresh paused-clock actix System with this thread's events captured
//! (at every level, by `capture.rs`'s `Events`) and a metrics recorder of its own (`Obs`),
//! `until` (waiting in virtual time), a self-removing temporary directory (`Scratch`), `lock`
//! and `ms`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use tokio::time::{sleep, Instant};

use super::capture::Events;

/// What a test can observe besides its actors: events and metrics.
#[derive(Clone)]
pub struct Obs {
    pub events: Events,
    pub metrics: Snapshotter,
}

impl Obs {
    /// The value of counter `name` summed over the label sets that carry `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        super::counters::counter(&self.metrics, name, labels)
    }
}

/// Runs `f` on a fresh actix System whose tokio clock is paused, with this thread's events
/// captured and its metrics going to a recorder of its own (every actor of the test runs on
/// this thread, so parallel tests do not see each other's counters).
pub fn run<F, Fut>(f: F) -> Obs
where
    F: FnOnce(Obs) -> Fut,
    Fut: Future<Output = ()>,
{
    let events = Events::default();
    let _tracing = events.install();
    let recorder = DebuggingRecorder::new();
    let obs = Obs {
        events,
        metrics: recorder.snapshotter(),
    };
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    });
    system.block_on(f(obs.clone()));
    obs
}

/// Waits (in virtual time, polling every 5 ms) until `cond` holds; fails after `limit`.
pub async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "not within {limit:?} (virtual): {what}"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

/// A temporary directory removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "cadre-runtime-actors-{name}-{}-{n}",
            std::process::id()
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("leaving {}: {e}", self.0.display());
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
