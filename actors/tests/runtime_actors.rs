//! The runtime actors on a paused clock: back-pressure hysteresis, the phi-accrual detector and
//! the health monitor (worker deaths, job stalls), the worker against a scripted fake scheduler
//! (self-fencing, refused renewals, re-registration, progress back-pressure, the progress
//! circuit, kills, timeouts), and the real scheduler with a journal in a temporary directory
//! driven by fake workers (fencing tokens, lease expiry, worker death, a worker registering
//! again, cancellation, gangs), and GPUs: the scheduler's GPU health (repeated reports, a GPU
//! forgotten by registering again) and release of GPUs on every end, the reason a GPU job
//! waits on a node without GPUs, and the devices a real worker gives a command
//! (`CUDA_VISIBLE_DEVICES`) or a workload (`Run::gpus`).
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::backpressure::Hysteresis;
use cadre_actors::health::{phi, HealthConfig, HealthMonitor};
use cadre_actors::job::{CommandJob, JobKind, JobSpec, JobState, Resources, WorkloadJob};
use cadre_actors::protocol::{
    Assign, Backpressure, Finished, ForgetWorker, GpuDevice, GpuHealth, Heartbeat, JobStalled,
    JobsProgressed, Kill, KillReason, ProgressAck, ProgressFlush, Register, Renew, RenewReply,
    SchedulerLink, Started, TaskEnd, UnwatchJob, WatchJob, WorkerDead, WorkerLink,
};
use cadre_actors::sched::{Grant, PlacerConfig, Waiting, WorkerCapacity};
use cadre_actors::scheduler::{
    CancelJob, CancelOutcome, CloseStore, GetJob, JobView, Nodes, Scheduler, SchedulerConfig,
    Submit,
};
use cadre_actors::store::{Record, Store, StoreOptions, Submission};
use cadre_actors::worker::{Resolver, Worker, WorkerConfig, CIRCUIT_OPEN};
use cadre_actors::workload::{Run, WorkloadError};
use cadre_actors::{Error, FencingToken, JobId, WorkerId};
use cadre_cpu::launcher::Launcher;
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_supervisor::{SupervisedContext, SupervisorRef, SupervisorSpec, WorkerSpec};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

// ---------------------------------------------------------------------------------------------
// Harness: a paused-clock actix System, captured events, a per-test metrics recorder.
// ---------------------------------------------------------------------------------------------

/// One event's fields (`message` included) rendered to strings.
type FieldMap = BTreeMap<String, String>;

/// Every event of a test, as its level and fields.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(Level, FieldMap)>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields));
    }
}

impl Events {
    /// Events at `level` whose message is `message`, as field maps.
    fn with(&self, level: Level, message: &str) -> Vec<FieldMap> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, f)| *l == level && f.get("message").map(String::as_str) == Some(message))
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// What a test can observe besides its actors: events and metrics.
#[derive(Clone)]
struct Obs {
    events: Events,
    metrics: Snapshotter,
}

impl Obs {
    /// The value of counter `name` summed over the label sets that carry `labels`.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut total = 0;
        for (key, _, _, value) in self.metrics.snapshot().into_vec() {
            if key.key().name() != name {
                continue;
            }
            let matches = labels
                .iter()
                .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v));
            if let (true, DebugValue::Counter(c)) = (matches, value) {
                total += c;
            }
        }
        total
    }
}

/// Runs `f` on a fresh actix System whose tokio clock is paused, with this thread's events
/// captured and its metrics going to a recorder of its own (every actor of the test runs on
/// this thread, so parallel tests do not see each other's counters).
fn run<F, Fut>(f: F) -> Obs
where
    F: FnOnce(Obs) -> Fut,
    Fut: Future<Output = ()>,
{
    let events = Events::default();
    let _tracing =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
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
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
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
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
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
    fn path(&self) -> &Path {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn workload_spec(name: &str, params: serde_json::Value) -> JobSpec {
    JobSpec {
        name: name.to_owned(),
        kind: JobKind::Workload(WorkloadJob {
            name: "test".to_owned(),
            params,
        }),
        resources: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 20,
            gpus: 0,
        },
        priority: 0,
        max_retries: 0,
        timeout_secs: None,
        progress_deadline_secs: None,
        gang: 1,
        labels: BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Hysteresis
// ---------------------------------------------------------------------------------------------

const CALM: Duration = Hysteresis::CALM;

#[test]
fn hysteresis_targets_follow_the_load_bounds() {
    assert_eq!(Hysteresis::target(0.0), Backpressure::None);
    assert_eq!(Hysteresis::target(0.249), Backpressure::None);
    assert_eq!(Hysteresis::target(0.25), Backpressure::Throttle);
    assert_eq!(Hysteresis::target(0.5), Backpressure::Batch);
    assert_eq!(Hysteresis::target(0.75), Backpressure::Reject);
    assert_eq!(Hysteresis::target(3.0), Backpressure::Reject);
    assert_eq!(Hysteresis::new().level(), Backpressure::None);
}

#[test]
fn hysteresis_rises_at_once_to_the_target_level() {
    let t0 = Instant::now();
    let mut h = Hysteresis::new();
    assert_eq!(h.update(0.3, t0), Backpressure::Throttle);
    assert_eq!(h.update(0.6, t0), Backpressure::Batch);
    assert_eq!(h.level(), Backpressure::Batch);
    // Straight from none to reject, too.
    let mut h = Hysteresis::new();
    assert_eq!(h.update(0.9, t0), Backpressure::Reject);
    // A rise in the middle of a calm period is immediate as well.
    let mut h = Hysteresis::new();
    h.update(0.3, t0);
    assert_eq!(h.update(0.0, t0 + ms(500)), Backpressure::Throttle);
    assert_eq!(h.update(0.8, t0 + ms(600)), Backpressure::Reject);
}

#[test]
fn hysteresis_falls_one_step_per_calm_period() {
    let t0 = Instant::now();
    let mut h = Hysteresis::new();
    h.update(0.8, t0);
    // Low load starts the calm period; the level holds until it has lasted CALM.
    let calm0 = t0 + ms(10);
    assert_eq!(h.update(0.0, calm0), Backpressure::Reject);
    assert_eq!(
        h.update(0.0, calm0 + CALM - ms(1)),
        Backpressure::Reject,
        "fell before CALM"
    );
    assert_eq!(h.update(0.0, calm0 + CALM), Backpressure::Batch);
    // The next step needs a calm period of its own, counted from the next low sample.
    let calm1 = calm0 + CALM;
    assert_eq!(h.update(0.0, calm1), Backpressure::Batch);
    assert_eq!(h.update(0.0, calm1 + CALM - ms(1)), Backpressure::Batch);
    assert_eq!(h.update(0.0, calm1 + CALM), Backpressure::Throttle);
    let calm2 = calm1 + CALM;
    assert_eq!(h.update(0.0, calm2), Backpressure::Throttle);
    assert_eq!(h.update(0.0, calm2 + CALM), Backpressure::None);
    assert_eq!(h.update(0.0, calm2 + CALM * 5), Backpressure::None);
}

#[test]
fn hysteresis_spike_during_calm_restarts_the_wait() {
    let t0 = Instant::now();
    let mut h = Hysteresis::new();
    h.update(0.6, t0);
    assert_eq!(h.update(0.1, t0 + ms(100)), Backpressure::Batch);
    // A load at (or above) the current level during the calm period resets it.
    assert_eq!(h.update(0.55, t0 + ms(700)), Backpressure::Batch);
    // CALM after the first low sample is not enough any more...
    assert_eq!(h.update(0.1, t0 + ms(1100)), Backpressure::Batch);
    assert_eq!(h.update(0.1, t0 + ms(2099)), Backpressure::Batch);
    // ...CALM after the first low sample following the spike is.
    assert_eq!(h.update(0.1, t0 + ms(2100)), Backpressure::Throttle);
}

#[test]
fn hysteresis_never_jumps_from_reject_to_none() {
    let t0 = Instant::now();
    let mut h = Hysteresis::new();
    h.update(1.0, t0);
    h.update(0.0, t0 + ms(1));
    // However long the calm, one sample lowers the level by one step only.
    assert_eq!(
        h.update(0.0, t0 + Duration::from_secs(3600)),
        Backpressure::Batch
    );
    // A load between the bounds still lowers only as far as one step.
    let mut h = Hysteresis::new();
    h.update(1.0, t0);
    h.update(0.3, t0 + ms(1));
    let t1 = t0 + ms(1) + CALM;
    assert_eq!(h.update(0.3, t1), Backpressure::Batch);
    // The next calm period starts with the next low sample.
    assert_eq!(h.update(0.3, t1), Backpressure::Batch);
    assert_eq!(h.update(0.3, t1 + CALM), Backpressure::Throttle);
    // Throttle is the target for 0.3: it stays there.
    assert_eq!(h.update(0.3, t1 + CALM * 10), Backpressure::Throttle);
}

// ---------------------------------------------------------------------------------------------
// phi
// ---------------------------------------------------------------------------------------------

#[test]
fn phi_is_small_at_the_mean_and_grows_beyond_it() {
    let (mean, std) = (200.0, 25.0);
    let at_mean = phi(mean, mean, std);
    assert!(at_mean < 0.5, "phi at the mean: {at_mean}");
    assert!(phi(100.0, mean, std) < at_mean, "earlier than the mean");
    let mut last = at_mean;
    for elapsed in [210.0, 250.0, 300.0, 350.0, 400.0, 600.0, 1_000.0] {
        let value = phi(elapsed, mean, std);
        assert!(value > last, "phi({elapsed}) = {value} not above {last}");
        last = value;
    }
    // Eight standard deviations late is far beyond a threshold of 8; far later stays finite.
    assert!(phi(mean + 8.0 * std, mean, std) > 8.0);
    let far = phi(1e9, mean, std);
    assert!(far.is_finite() && far > 8.0, "{far}");
    // A wider distribution is more forgiving at the same lateness.
    assert!(phi(300.0, mean, 100.0) < phi(300.0, mean, std));
}

// ---------------------------------------------------------------------------------------------
// Health monitor
// ---------------------------------------------------------------------------------------------

/// Records the verdicts the health monitor sends, with when they came.
#[derive(Clone, Default)]
struct Verdicts {
    dead: Arc<Mutex<Vec<(Instant, WorkerDead)>>>,
    stalled: Arc<Mutex<Vec<(Instant, JobStalled)>>>,
}

impl Actor for Verdicts {
    type Context = SupervisedContext<Self>;
}

impl Handler<WorkerDead> for Verdicts {
    type Result = ();
    fn handle(&mut self, msg: WorkerDead, _: &mut Self::Context) {
        lock(&self.dead).push((Instant::now(), msg));
    }
}

impl Handler<JobStalled> for Verdicts {
    type Result = ();
    fn handle(&mut self, msg: JobStalled, _: &mut Self::Context) {
        lock(&self.stalled).push((Instant::now(), msg));
    }
}

impl Verdicts {
    fn dead(&self) -> Vec<WorkerId> {
        lock(&self.dead).iter().map(|(_, d)| d.worker).collect()
    }
    fn stalled(&self) -> Vec<(JobId, FencingToken)> {
        lock(&self.stalled)
            .iter()
            .map(|(_, s)| (s.job, s.token))
            .collect()
    }
}

const BEAT: Duration = Duration::from_millis(100);

struct HealthRig {
    monitor: Addr<HealthMonitor>,
    verdicts: Verdicts,
    root: SupervisorRef,
}

async fn health_rig() -> HealthRig {
    let verdicts = Verdicts::default();
    let v = verdicts.clone();
    let verdict_spec = WorkerSpec::new("verdicts", move || v.clone()).mailbox_capacity(1024);
    let verdict_addr = verdict_spec.addr();
    // The node's settings for a 100 ms heartbeat.
    let config = HealthConfig {
        dead: verdict_addr.clone().recipient(),
        stalled: verdict_addr.recipient(),
        expected_interval: BEAT,
        check_every: BEAT / 2,
        threshold: 8.0,
        window: 100,
        min_std: BEAT / 4,
        acceptable_pause: BEAT,
    };
    let monitor_spec = WorkerSpec::new("health", move || HealthMonitor::new(config.clone()))
        .mailbox_capacity(1024);
    let monitor = monitor_spec.addr();
    let root = SupervisorSpec::one_for_one()
        .child(verdict_spec)
        .child(monitor_spec)
        .start("health-test")
        .await
        .unwrap();
    HealthRig {
        monitor,
        verdicts,
        root,
    }
}

#[test]
fn health_declares_a_silent_worker_dead_once_and_spares_a_live_one() {
    let obs = run(|_| async {
        let rig = health_rig().await;
        let (silent, live) = (WorkerId(7), WorkerId(8));
        // Both beat every 100 ms for 3 s: neither is suspected.
        for _ in 0..30 {
            rig.monitor.do_send(Heartbeat { worker: silent });
            rig.monitor.do_send(Heartbeat { worker: live });
            sleep(BEAT).await;
        }
        assert!(rig.verdicts.dead().is_empty(), "{:?}", rig.verdicts.dead());
        // `silent` stops; `live` keeps beating for 10 s more.
        let stopped = Instant::now();
        for _ in 0..100 {
            rig.monitor.do_send(Heartbeat { worker: live });
            sleep(BEAT).await;
        }
        assert_eq!(
            rig.verdicts.dead(),
            vec![silent],
            "the silent worker is reported exactly once, the live one never"
        );
        let (at, verdict) = lock(&rig.verdicts.dead)[0].clone();
        // Phi 8 with a 200 ms mean and a 25 ms deviation is about 330 ms of silence.
        assert!(
            at >= stopped + 2 * BEAT && at <= stopped + 10 * BEAT,
            "declared dead {:?} after the last heartbeat",
            at - stopped
        );
        assert!(
            verdict.reason.contains("no heartbeat"),
            "{}",
            verdict.reason
        );
        rig.root.stop().await.unwrap();
    });
    assert_eq!(
        obs.events
            .with(Level::ERROR, "worker declared dead by the failure detector")
            .len(),
        1
    );
}

#[test]
fn health_forgets_a_worker_whose_registration_is_gone() {
    let obs = run(|_| async {
        let rig = health_rig().await;
        let (gone, kept) = (WorkerId(7), WorkerId(8));
        for _ in 0..30 {
            rig.monitor.do_send(Heartbeat { worker: gone });
            rig.monitor.do_send(Heartbeat { worker: kept });
            sleep(BEAT).await;
        }
        // The scheduler dropped `gone` (it registered again under a new id): both fall silent,
        // and only `kept` is declared dead.
        rig.monitor.do_send(ForgetWorker { worker: gone });
        sleep(BEAT * 50).await;
        assert_eq!(rig.verdicts.dead(), vec![kept]);
        rig.root.stop().await.unwrap();
    });
    assert_eq!(
        obs.events
            .with(Level::ERROR, "worker declared dead by the failure detector")
            .len(),
        1
    );
}

#[test]
fn health_judges_a_worker_with_one_heartbeat_against_the_expected_interval() {
    run(|_| async {
        let rig = health_rig().await;
        rig.monitor.do_send(Heartbeat {
            worker: WorkerId(3),
        });
        sleep(BEAT).await;
        assert!(rig.verdicts.dead().is_empty(), "dead after one interval");
        sleep(BEAT * 20).await;
        assert_eq!(rig.verdicts.dead(), vec![WorkerId(3)]);
        rig.root.stop().await.unwrap();
    });
}

fn watch(job: u64, worker: u64, token: u64, deadline: Duration) -> WatchJob {
    WatchJob {
        job: JobId(job),
        worker: WorkerId(worker),
        token: FencingToken(token),
        deadline,
    }
}

#[test]
fn health_stalls_a_task_without_progress_after_one_and_a_half_deadlines() {
    let obs = run(|obs| async move {
        let rig = health_rig().await;
        let t0 = Instant::now();
        rig.monitor
            .send(watch(1, 1, 10, Duration::from_secs(1)))
            .await
            .unwrap();
        sleep_until(t0 + ms(950)).await;
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 0);
        assert!(
            rig.verdicts.stalled().is_empty(),
            "stalled before its deadline"
        );
        // Past the deadline: suspected (warned and counted), not yet stalled.
        sleep_until(t0 + ms(1450)).await;
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 1);
        assert!(
            rig.verdicts.stalled().is_empty(),
            "stalled before deadline * 1.5"
        );
        sleep_until(t0 + ms(1600)).await;
        assert_eq!(rig.verdicts.stalled(), vec![(JobId(1), FencingToken(10))]);
        // Reported once: the watch is gone after the report.
        sleep(Duration::from_secs(5)).await;
        assert_eq!(rig.verdicts.stalled().len(), 1);
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 1);
        rig.root.stop().await.unwrap();
    });
    assert_eq!(
        obs.events
            .with(
                Level::WARN,
                "job suspected: no progress within its deadline"
            )
            .len(),
        1
    );
}

#[test]
fn health_progress_in_time_prevents_and_clears_suspicion() {
    run(|obs| async move {
        let rig = health_rig().await;
        let deadline = Duration::from_secs(1);
        rig.monitor.send(watch(1, 1, 10, deadline)).await.unwrap();
        // Progress every 600 ms for 6 s: never suspected, never stalled.
        for _ in 0..10 {
            sleep(ms(600)).await;
            rig.monitor
                .send(JobsProgressed {
                    tokens: vec![FencingToken(10), FencingToken(99)],
                })
                .await
                .unwrap();
        }
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 0);
        assert!(rig.verdicts.stalled().is_empty());
        // Now silent until suspected, then one report of progress: the suspicion clears, and
        // a stall needs a whole deadline and a half counted from that progress.
        sleep(ms(1200)).await;
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 1);
        let progressed = Instant::now();
        rig.monitor
            .send(JobsProgressed {
                tokens: vec![FencingToken(10)],
            })
            .await
            .unwrap();
        sleep_until(progressed + ms(1450)).await;
        assert!(
            rig.verdicts.stalled().is_empty(),
            "a cleared suspicion still led to a stall"
        );
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 2);
        sleep_until(progressed + ms(1600)).await;
        assert_eq!(rig.verdicts.stalled(), vec![(JobId(1), FencingToken(10))]);
        rig.root.stop().await.unwrap();
    });
}

#[test]
fn health_unwatch_prevents_a_stall() {
    run(|obs| async move {
        let rig = health_rig().await;
        rig.monitor
            .send(watch(1, 1, 10, Duration::from_secs(1)))
            .await
            .unwrap();
        rig.monitor
            .send(watch(2, 1, 11, Duration::from_secs(1)))
            .await
            .unwrap();
        sleep(ms(500)).await;
        rig.monitor
            .send(UnwatchJob {
                token: FencingToken(10),
            })
            .await
            .unwrap();
        sleep(Duration::from_secs(5)).await;
        // Only the task still watched is reported.
        assert_eq!(rig.verdicts.stalled(), vec![(JobId(2), FencingToken(11))]);
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 1);
        rig.root.stop().await.unwrap();
    });
}

#[test]
fn health_worker_death_clears_its_tasks_watches() {
    run(|_| async {
        let rig = health_rig().await;
        let (dying, live) = (WorkerId(1), WorkerId(2));
        for _ in 0..10 {
            rig.monitor.do_send(Heartbeat { worker: dying });
            rig.monitor.do_send(Heartbeat { worker: live });
            sleep(BEAT).await;
        }
        // A task on each worker, deadline 2 s; the first worker then goes silent.
        rig.monitor
            .send(watch(1, dying.0, 10, Duration::from_secs(2)))
            .await
            .unwrap();
        rig.monitor
            .send(watch(2, live.0, 20, Duration::from_secs(2)))
            .await
            .unwrap();
        for _ in 0..60 {
            rig.monitor.do_send(Heartbeat { worker: live });
            sleep(BEAT).await;
        }
        assert_eq!(rig.verdicts.dead(), vec![dying]);
        let (dead_at, _) = lock(&rig.verdicts.dead)[0].clone();
        // The dying worker's task is not reported stalled after its death; the live worker's
        // task (no progress either) is.
        assert_eq!(
            rig.verdicts.stalled(),
            vec![(JobId(2), FencingToken(20))],
            "a dead worker's task was reported stalled"
        );
        let (stalled_at, _) = lock(&rig.verdicts.stalled)[0].clone();
        assert!(dead_at < stalled_at);
        rig.root.stop().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Worker against a fake scheduler
// ---------------------------------------------------------------------------------------------

const TTL: Duration = Duration::from_secs(1);
const RENEW_EVERY: Duration = Duration::from_millis(100);
const PROGRESS_EVERY: Duration = Duration::from_millis(50);
const FENCE_MARGIN: Duration = Duration::from_millis(200);
const TERM_GRACE: Duration = Duration::from_millis(500);

/// How the fake scheduler answers renewals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RenewMode {
    /// At once: renewed, except the tokens in `Script::refuse`.
    Answer,
    /// Never.
    Silent,
    /// After this delay.
    Late(Duration),
    /// Once with `Error::UnknownWorker`, then as `Answer`.
    ForgetOnce,
}

/// How the fake scheduler acknowledges progress flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Level(Backpressure),
    /// With the flush's sequence number plus one.
    Malformed,
}

struct Script {
    renew: RenewMode,
    refuse: BTreeSet<FencingToken>,
    ack: AckMode,
    refuse_started: bool,
}

/// What the fake scheduler received.
#[derive(Default)]
struct Received {
    registers: Vec<String>,
    renews: Vec<Renew>,
    /// When each renewal arrived and how it was to be answered.
    renew_log: Vec<(Instant, RenewMode)>,
    started: Vec<Started>,
    finished: Vec<Finished>,
    finished_at: Vec<Instant>,
    flushes: Vec<ProgressFlush>,
}

/// A scheduler stand-in that records what a worker sends and answers per its script.
#[derive(Clone)]
struct FakeScheduler {
    script: Arc<Mutex<Script>>,
    got: Arc<Mutex<Received>>,
}

impl FakeScheduler {
    fn new() -> FakeScheduler {
        FakeScheduler {
            script: Arc::new(Mutex::new(Script {
                renew: RenewMode::Answer,
                refuse: BTreeSet::new(),
                ack: AckMode::Level(Backpressure::None),
                refuse_started: false,
            })),
            got: Arc::new(Mutex::new(Received::default())),
        }
    }
    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }
    fn got(&self) -> MutexGuard<'_, Received> {
        lock(&self.got)
    }
    fn finished(&self) -> Vec<(FencingToken, TaskEnd)> {
        self.got()
            .finished
            .iter()
            .map(|f| (f.token, f.end.clone()))
            .collect()
    }
    fn flushes(&self) -> usize {
        self.got().flushes.len()
    }
}

impl Actor for FakeScheduler {
    type Context = SupervisedContext<Self>;
}

impl Handler<Register> for FakeScheduler {
    type Result = Result<WorkerId, Error>;
    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> Self::Result {
        let mut got = self.got();
        got.registers.push(msg.name);
        Ok(WorkerId(got.registers.len() as u64))
    }
}

impl Handler<Renew> for FakeScheduler {
    type Result = ResponseFuture<Result<RenewReply, Error>>;
    fn handle(&mut self, msg: Renew, _: &mut Self::Context) -> Self::Result {
        let (mode, refuse) = {
            let mut script = self.script();
            let mode = script.renew;
            if mode == RenewMode::ForgetOnce {
                script.renew = RenewMode::Answer;
            }
            (mode, script.refuse.clone())
        };
        let mut got = self.got();
        got.renews.push(msg.clone());
        got.renew_log.push((Instant::now(), mode));
        drop(got);
        let mut reply = RenewReply::default();
        for (job, token) in &msg.leases {
            if refuse.contains(token) {
                reply.refused.push((*job, *token));
            } else {
                reply.renewed.push(*token);
            }
        }
        Box::pin(async move {
            match mode {
                RenewMode::Answer => Ok(reply),
                RenewMode::Silent => std::future::pending().await,
                RenewMode::Late(delay) => {
                    sleep(delay).await;
                    Ok(reply)
                }
                RenewMode::ForgetOnce => Err(Error::UnknownWorker { worker: msg.worker }),
            }
        })
    }
}

impl Handler<Started> for FakeScheduler {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: Started, _: &mut Self::Context) -> Self::Result {
        self.got().started.push(msg.clone());
        if self.script().refuse_started {
            return Err(Error::StaleToken {
                job: msg.job,
                worker: msg.worker,
                presented: msg.token,
                current: None,
            });
        }
        Ok(())
    }
}

impl Handler<Finished> for FakeScheduler {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: Finished, _: &mut Self::Context) -> Self::Result {
        let mut got = self.got();
        got.finished.push(msg);
        got.finished_at.push(Instant::now());
        Ok(())
    }
}

impl Handler<ProgressFlush> for FakeScheduler {
    type Result = Result<ProgressAck, Error>;
    fn handle(&mut self, msg: ProgressFlush, _: &mut Self::Context) -> Self::Result {
        let seq = msg.seq;
        self.got().flushes.push(msg);
        Ok(match self.script().ack {
            AckMode::Level(level) => ProgressAck {
                seq,
                level,
                refused: Vec::new(),
            },
            AckMode::Malformed => ProgressAck {
                seq: seq + 1,
                level: Backpressure::None,
                refused: Vec::new(),
            },
        })
    }
}

fn fake_link(addr: &Addr<FakeScheduler>, target: &str) -> SchedulerLink {
    SchedulerLink {
        target: target.to_owned(),
        register: addr.clone().recipient(),
        renew: addr.clone().recipient(),
        started: addr.clone().recipient(),
        finished: addr.clone().recipient(),
        progress: addr.clone().recipient(),
    }
}

/// What the test workload saw.
#[derive(Default)]
struct WorkloadSeen {
    runs: Vec<JobId>,
    cancelled: Vec<JobId>,
    /// The GPUs each run was given (`Run::gpus`), in run order.
    gpus: Vec<(JobId, Vec<GpuDevice>)>,
}

/// A workload that reports progress every `params.every_ms` (10 by default) and returns
/// `{"steps": n}` after `params.steps` reports, or runs until its cancel signal is raised.
#[derive(Clone, Default)]
struct TestWorkload {
    seen: Arc<Mutex<WorkloadSeen>>,
}

impl Actor for TestWorkload {
    type Context = SupervisedContext<Self>;
}

impl Handler<Run> for TestWorkload {
    type Result = ResponseFuture<Result<serde_json::Value, WorkloadError>>;
    fn handle(&mut self, run: Run, _: &mut Self::Context) -> Self::Result {
        let seen = Arc::clone(&self.seen);
        {
            let mut s = lock(&seen);
            s.runs.push(run.job);
            s.gpus.push((run.job, run.gpus.clone()));
        }
        let every = ms(run.params["every_ms"].as_u64().unwrap_or(10));
        let steps = run.params["steps"].as_u64();
        Box::pin(async move {
            let Run {
                job,
                progress,
                mut cancel,
                ..
            } = run;
            let mut done = 0u64;
            loop {
                if steps.is_some_and(|n| done >= n) {
                    return Ok(json!({ "steps": done }));
                }
                tokio::select! {
                    () = cancel.cancelled() => {
                        lock(&seen).cancelled.push(job);
                        return Err(WorkloadError::new("cancelled"));
                    }
                    () = sleep(every) => {
                        done += 1;
                        progress.report(done as f64 / 1e6, Some(format!("step {done}")));
                    }
                }
            }
        })
    }
}

/// A worker child with the test settings, offering the test workload as `test`.
fn worker_spec(resolve: Resolver, workload: Recipient<Run>, log_dir: &Path) -> WorkerSpec<Worker> {
    let config = worker_config(resolve, workload, log_dir, Vec::new());
    WorkerSpec::new("worker", move || Worker::new(Arc::clone(&config))).mailbox_capacity(1024)
}

/// The test worker's settings, owning `gpus` (its capacity offers their indices).
fn worker_config(
    resolve: Resolver,
    workload: Recipient<Run>,
    log_dir: &Path,
    gpus: Vec<GpuDevice>,
) -> Arc<WorkerConfig> {
    Arc::new(WorkerConfig {
        capacity: WorkerCapacity {
            cpu_millis: 4000,
            memory_bytes: 1 << 30,
            gpus: gpus.iter().map(|g| g.index).collect(),
        },
        launcher: Launcher::new(IoEngine::new(BackendSetting::Std).unwrap()),
        log_dir: log_dir.to_owned(),
        resolve,
        health: None,
        workloads: BTreeMap::from([("test".to_owned(), workload)]),
        gpus,
        renew_every: RENEW_EVERY,
        progress_every: PROGRESS_EVERY,
        fence_margin: FENCE_MARGIN,
        term_grace: TERM_GRACE,
        ledger: None,
    })
}

struct WorkerRig {
    worker: Addr<Worker>,
    /// The scheduler the resolver returns first.
    fake: FakeScheduler,
    /// The scheduler the resolver returns from its second call on, when asked to switch.
    alt: FakeScheduler,
    workload: Arc<Mutex<WorkloadSeen>>,
    resolves: Arc<AtomicUsize>,
    root: SupervisorRef,
    /// The worker's settings (where its logs go).
    config: Arc<WorkerConfig>,
    _logs: Scratch,
}

impl WorkerRig {
    /// Starts a tree with the fake schedulers, the test workload and a worker, and waits until
    /// the worker has registered.
    async fn start(switch_on_resolve: bool) -> WorkerRig {
        WorkerRig::start_with(switch_on_resolve, Vec::new()).await
    }

    /// As [`WorkerRig::start`], with a worker that owns `gpus`.
    async fn start_with(switch_on_resolve: bool, gpus: Vec<GpuDevice>) -> WorkerRig {
        let (fake, alt) = (FakeScheduler::new(), FakeScheduler::new());
        let f = fake.clone();
        let fake_spec = WorkerSpec::new("scheduler", move || f.clone()).mailbox_capacity(1024);
        let a = alt.clone();
        let alt_spec = WorkerSpec::new("alt-scheduler", move || a.clone()).mailbox_capacity(1024);
        let (fake_addr, alt_addr) = (fake_spec.addr(), alt_spec.addr());
        let workload = TestWorkload::default();
        let seen = Arc::clone(&workload.seen);
        let workload_spec = WorkerSpec::new("workload", move || workload.clone());
        let workload_addr = workload_spec.addr();
        let resolves = Arc::new(AtomicUsize::new(0));
        let calls = Arc::clone(&resolves);
        let resolve: Resolver = Arc::new(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if switch_on_resolve && n > 1 {
                fake_link(&alt_addr, "test/alt-scheduler")
            } else {
                fake_link(&fake_addr, "test/scheduler")
            }
        });
        let logs = Scratch::new("worker-logs");
        let config = worker_config(resolve, workload_addr.recipient(), logs.path(), gpus);
        let c = Arc::clone(&config);
        let worker_spec =
            WorkerSpec::new("worker", move || Worker::new(Arc::clone(&c))).mailbox_capacity(1024);
        let worker = worker_spec.addr();
        let root = SupervisorSpec::one_for_one()
            .child(fake_spec)
            .child(alt_spec)
            .child(workload_spec)
            .child(worker_spec)
            .start("test")
            .await
            .unwrap();
        until("the worker registers", Duration::from_secs(1), || {
            !fake.got().registers.is_empty()
        })
        .await;
        // Let the registration's answer reach the worker.
        sleep(ms(1)).await;
        WorkerRig {
            worker,
            fake,
            alt,
            workload: seen,
            resolves,
            root,
            config,
            _logs: logs,
        }
    }

    /// Assigns task 0 of `job` under `token`, for a workload with `params`.
    async fn assign(&self, job: u64, token: u64, params: serde_json::Value) {
        self.assign_spec(job, token, workload_spec("job", params))
            .await;
    }

    async fn assign_spec(&self, job: u64, token: u64, spec: JobSpec) {
        self.assign_gpus(job, token, spec, Vec::new()).await;
    }

    /// Assigns task 0 of `job` under `token`, its grant naming the GPU indices `gpus`.
    async fn assign_gpus(&self, job: u64, token: u64, spec: JobSpec, gpus: Vec<u32>) {
        self.worker
            .send(Assign {
                job: JobId(job),
                attempt: 1,
                task: 0,
                token: FencingToken(token),
                spec,
                grant: Grant {
                    worker: WorkerId(1),
                    task: 0,
                    cpu_millis: 1000,
                    memory_bytes: 1 << 20,
                    gpus,
                },
                lease_ttl: TTL,
            })
            .await
            .unwrap();
    }

    fn cancelled(&self) -> Vec<JobId> {
        lock(&self.workload).cancelled.clone()
    }

    async fn stop(self) {
        self.root.stop().await.unwrap();
    }
}

fn forever() -> serde_json::Value {
    json!({ "every_ms": 10 })
}

const LEASE_LOST: TaskEnd = TaskEnd::Killed {
    reason: KillReason::LeaseLost,
};

#[test]
fn worker_runs_a_workload_reports_its_start_then_its_result() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.assign(1, 10, json!({ "steps": 5, "every_ms": 10 }))
            .await;
        until("the task finishes", Duration::from_secs(2), || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake.finished(),
            vec![(
                FencingToken(10),
                TaskEnd::Completed {
                    result: json!({ "steps": 5 })
                }
            )]
        );
        {
            let got = rig.fake.got();
            assert_eq!(got.started.len(), 1);
            let (s, f) = (&got.started[0], &got.finished[0]);
            assert_eq!(
                (s.worker, s.job, s.token),
                (WorkerId(1), JobId(1), FencingToken(10))
            );
            assert_eq!((f.worker, f.job), (WorkerId(1), JobId(1)));
        }
        assert_eq!(lock(&rig.workload).runs, vec![JobId(1)]);
        rig.stop().await;
    });
}

#[test]
fn worker_keeps_a_task_whose_renewals_are_answered_in_time() {
    for mode in [RenewMode::Answer, RenewMode::Late(ms(100))] {
        let obs =
            run(|_| async move {
                let rig = WorkerRig::start(false).await;
                rig.fake.script().renew = mode;
                rig.assign(1, 10, forever()).await;
                // Three lease lifetimes: renewals carry it.
                sleep(TTL * 3).await;
                assert!(
                    rig.fake.finished().is_empty(),
                    "{mode:?}: {:?}",
                    rig.fake.finished()
                );
                let renews = rig.fake.got().renews.clone();
                assert!(renews.len() >= 10, "{mode:?}: {} renewals", renews.len());
                assert!(renews
                    .iter()
                    .all(|r| r.worker == WorkerId(1)
                        && r.leases == vec![(JobId(1), FencingToken(10))]));
                rig.stop().await;
            });
        assert_eq!(
            obs.counter("cadre_worker_self_fences_total", &[]),
            0,
            "{mode:?}"
        );
    }
}

/// The fake renews nothing in time (`mode`): the worker kills the task by its kill-by instant.
fn self_fence_case(mode: RenewMode) {
    let obs = run(|obs| async move {
        let rig = WorkerRig::start(false).await;
        rig.fake.script().renew = mode;
        let t0 = Instant::now();
        rig.assign(1, 10, forever()).await;
        // The kill-by instant is TTL - FENCE_MARGIN after the assignment: not killed before.
        sleep_until(t0 + TTL - FENCE_MARGIN - ms(50)).await;
        assert!(rig.fake.finished().is_empty(), "{mode:?}: killed early");
        assert_eq!(obs.counter("cadre_worker_self_fences_total", &[]), 0);
        // Killed after it, before the lease itself would lapse at the scheduler.
        sleep_until(t0 + TTL).await;
        assert_eq!(
            rig.fake.finished(),
            vec![(FencingToken(10), LEASE_LOST)],
            "{mode:?}"
        );
        assert_eq!(
            rig.cancelled(),
            vec![JobId(1)],
            "the workload saw its cancel signal"
        );
        assert!(!rig.fake.got().renews.is_empty(), "renewals were tried");
        // Once: the task is gone, nothing more is fenced.
        sleep(TTL * 3).await;
        assert_eq!(rig.fake.finished().len(), 1);
        rig.stop().await;
    });
    assert_eq!(
        obs.counter("cadre_worker_self_fences_total", &[]),
        1,
        "{mode:?}"
    );
    assert!(obs.counter("cadre_worker_renew_failures_total", &[]) >= 1);
    let fenced = obs.events.with(
        Level::ERROR,
        "lease not renewed in time: the worker kills the task itself",
    );
    assert_eq!(fenced.len(), 1);
    assert_eq!(fenced[0].get("lease").map(String::as_str), Some("10"));
}

#[test]
fn worker_fences_itself_when_renewals_go_unanswered() {
    self_fence_case(RenewMode::Silent);
}

#[test]
fn worker_fences_itself_when_renewals_answer_after_the_margin() {
    self_fence_case(RenewMode::Late(FENCE_MARGIN + ms(100)));
}

#[test]
fn worker_fences_by_the_send_time_of_its_last_answered_renewal() {
    // Slow answers within the margin still renew; the kill-by instant counts from when the
    // renewal was sent, since the scheduler may have renewed the lease as early as that.
    let delay = FENCE_MARGIN - ms(50);
    run(|_| async move {
        let rig = WorkerRig::start(false).await;
        rig.fake.script().renew = RenewMode::Late(delay);
        rig.assign(1, 10, forever()).await;
        sleep(TTL * 3).await;
        assert!(
            rig.fake.finished().is_empty(),
            "slow but timely renewals keep the task"
        );
        rig.fake.script().renew = RenewMode::Silent;
        until("the task is fenced", TTL * 2, || {
            !rig.fake.finished().is_empty()
        })
        .await;
        {
            let got = rig.fake.got();
            assert_eq!(got.finished[0].end, LEASE_LOST);
            let fenced_at = got.finished_at[0];
            let (renewed_at, _) = *got
                .renew_log
                .iter()
                .rfind(|(_, mode)| *mode == RenewMode::Late(delay))
                .unwrap();
            // The scheduler renewed the lease when that renewal arrived: it lapses TTL after.
            assert!(
                fenced_at < renewed_at + TTL,
                "task fenced {:?} after its last renewal was sent: past the lease",
                fenced_at - renewed_at
            );
            assert!(fenced_at >= renewed_at + TTL - FENCE_MARGIN, "fenced early");
        }
        rig.stop().await;
    });
}

#[test]
fn worker_kills_only_the_task_whose_renewal_is_refused() {
    let obs = run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.fake.script().refuse.insert(FencingToken(10));
        rig.assign(1, 10, forever()).await;
        rig.assign(2, 11, forever()).await;
        until("the refused task ends", RENEW_EVERY * 3, || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(rig.fake.finished(), vec![(FencingToken(10), LEASE_LOST)]);
        assert_eq!(rig.cancelled(), vec![JobId(1)]);
        // The other task lives on through three lifetimes of its lease.
        sleep(TTL * 3).await;
        assert_eq!(rig.fake.finished().len(), 1, "{:?}", rig.fake.finished());
        let last = rig.fake.got().renews.last().cloned().unwrap();
        assert_eq!(last.leases, vec![(JobId(2), FencingToken(11))]);
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_worker_self_fences_total", &[]), 0);
    assert_eq!(
        obs.events
            .with(Level::WARN, "lease renewal refused: the task stops")
            .len(),
        1
    );
}

#[test]
fn worker_registers_again_when_the_scheduler_forgets_it() {
    let obs =
        run(|_| async {
            let rig = WorkerRig::start(false).await;
            rig.fake.script().renew = RenewMode::ForgetOnce;
            rig.assign(1, 10, forever()).await;
            until("a second registration", Duration::from_secs(1), || {
                rig.fake.got().registers.len() == 2
            })
            .await;
            // Its leases went with the scheduler's memory of it: the task stops.
            until("the task ends", Duration::from_secs(1), || {
                !rig.fake.finished().is_empty()
            })
            .await;
            assert_eq!(rig.fake.finished(), vec![(FencingToken(10), LEASE_LOST)]);
            assert_eq!(rig.cancelled(), vec![JobId(1)]);
            // It works under its new id.
            sleep(ms(10)).await;
            rig.assign(2, 20, forever()).await;
            until("a renewal under the new id", Duration::from_secs(1), || {
                rig.fake.got().renews.iter().any(|r| {
                    r.worker == WorkerId(2) && r.leases == vec![(JobId(2), FencingToken(20))]
                })
            })
            .await;
            let last_start = rig.fake.got().started.last().unwrap().worker;
            assert_eq!(last_start, WorkerId(2));
            sleep(TTL * 2).await;
            assert_eq!(rig.fake.finished().len(), 1, "the new task keeps running");
            assert_eq!(rig.fake.got().registers.len(), 2);
            rig.stop().await;
        });
    assert_eq!(
        obs.events
            .with(
                Level::WARN,
                "scheduler no longer knows this worker: its tasks stop and it registers again"
            )
            .len(),
        1
    );
}

#[test]
fn worker_obeys_progress_backpressure_and_returns_to_the_base_rate() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.assign(1, 10, json!({ "every_ms": 5 })).await;
        let window = Duration::from_secs(4);
        // Counts the flushes over `window` after letting a new level take hold.
        let count = |level: Backpressure| {
            let fake = rig.fake.clone();
            async move {
                fake.script().ack = AckMode::Level(level);
                // One flush at the old level's interval (at most 100x base) to learn the new
                // level, then the window.
                sleep(PROGRESS_EVERY * 100 + ms(100)).await;
                let before = fake.flushes();
                sleep(window).await;
                fake.flushes() - before
            }
        };
        let none = count(Backpressure::None).await;
        let batch = count(Backpressure::Batch).await;
        let back = count(Backpressure::None).await;
        let reject = count(Backpressure::Reject).await;
        let again = count(Backpressure::None).await;
        assert!(none >= 20, "base rate: {none} flushes in {window:?}");
        assert!(batch >= 1, "batch still flushes");
        assert!(none >= 10 * batch, "none {none} vs batch {batch}");
        assert!(back * 4 >= none * 3, "back to base: {back} vs {none}");
        assert!(reject <= batch, "reject {reject} vs batch {batch}");
        assert!(
            again * 4 >= none * 3,
            "back to base after reject: {again} vs {none}"
        );
        // Every flush carried the task's latest progress (a probe under reject included).
        {
            let got = rig.fake.got();
            assert!(got.flushes.iter().all(|f| f.worker == WorkerId(1)
                && f.updates.len() == 1
                && f.updates[0].token == FencingToken(10)));
            let seqs: Vec<u64> = got.flushes.iter().map(|f| f.seq).collect();
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs: {seqs:?}");
        }
        assert!(rig.fake.finished().is_empty());
        rig.stop().await;
    });
}

#[test]
fn worker_opens_the_progress_circuit_after_three_malformed_acks_and_re_resolves() {
    let obs = run(|obs| async move {
        let rig = WorkerRig::start(true).await;
        assert_eq!(rig.resolves.load(Ordering::SeqCst), 1);
        rig.fake.script().ack = AckMode::Malformed;
        rig.assign(1, 10, forever()).await;
        until("the circuit opens", Duration::from_secs(2), || {
            obs.counter("cadre_progress_circuit_opens_total", &[]) == 1
        })
        .await;
        let opened = Instant::now();
        assert_eq!(
            obs.counter(
                "cadre_progress_flush_failures_total",
                &[("reason", "malformed_ack")]
            ),
            3
        );
        assert_eq!(rig.fake.flushes(), 3);
        assert_eq!(rig.resolves.load(Ordering::SeqCst), 2, "re-resolved once");
        // Open: nothing is flushed anywhere.
        sleep_until(opened + CIRCUIT_OPEN - ms(100)).await;
        assert_eq!(rig.fake.flushes(), 3);
        assert_eq!(rig.alt.flushes(), 0);
        // Afterwards flushes go to the re-resolved scheduler, which answers properly.
        sleep_until(opened + CIRCUIT_OPEN + ms(500)).await;
        assert_eq!(rig.fake.flushes(), 3);
        assert!(rig.alt.flushes() >= 5, "{}", rig.alt.flushes());
        assert!(
            !rig.alt.got().renews.is_empty(),
            "renewals follow the new link"
        );
        assert_eq!(obs.counter("cadre_progress_circuit_opens_total", &[]), 1);
        assert!(rig.fake.finished().is_empty(), "the task is not affected");
        rig.stop().await;
    });
    let failed = obs.events.with(Level::ERROR, "progress flush failed");
    assert_eq!(failed.len(), 3);
    assert!(failed
        .iter()
        .all(|e| e.get("reason").map(String::as_str) == Some("malformed_ack")));
    assert!(failed[0].get("jobs").is_some_and(|j| j.contains('1')));
    assert_eq!(
        obs.events
            .with(
                Level::ERROR,
                "progress circuit open after repeated failures; scheduler re-resolved"
            )
            .len(),
        1
    );
}

#[test]
fn worker_reopens_the_circuit_at_once_when_its_trial_flush_fails() {
    let obs = run(|obs| async move {
        let rig = WorkerRig::start(true).await;
        rig.fake.script().ack = AckMode::Malformed;
        rig.alt.script().ack = AckMode::Malformed;
        rig.assign(1, 10, forever()).await;
        until("the circuit opens", Duration::from_secs(2), || {
            obs.counter("cadre_progress_circuit_opens_total", &[]) == 1
        })
        .await;
        let opened = Instant::now();
        // After the open period, one trial flush to the re-resolved scheduler fails: the
        // circuit opens again at once, without waiting for three failures.
        sleep_until(opened + CIRCUIT_OPEN + ms(500)).await;
        assert_eq!(rig.alt.flushes(), 1, "one trial flush");
        assert_eq!(obs.counter("cadre_progress_circuit_opens_total", &[]), 2);
        assert_eq!(
            obs.counter(
                "cadre_progress_flush_failures_total",
                &[("reason", "malformed_ack")]
            ),
            4
        );
        rig.stop().await;
    });
    assert_eq!(
        obs.events
            .with(
                Level::ERROR,
                "progress circuit open after repeated failures; scheduler re-resolved"
            )
            .len(),
        2
    );
}

#[test]
fn worker_cancel_kill_stops_the_workload_through_its_cancel_signal() {
    let obs = run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.assign(1, 10, forever()).await;
        sleep(ms(200)).await;
        // A kill for a task it does not run changes nothing.
        rig.worker
            .send(Kill {
                job: JobId(1),
                token: FencingToken(99),
                reason: KillReason::Cancelled,
            })
            .await
            .unwrap();
        sleep(ms(200)).await;
        assert!(rig.fake.finished().is_empty());
        rig.worker
            .send(Kill {
                job: JobId(1),
                token: FencingToken(10),
                reason: KillReason::Cancelled,
            })
            .await
            .unwrap();
        until("the task ends", TERM_GRACE, || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake.finished(),
            vec![(
                FencingToken(10),
                TaskEnd::Killed {
                    reason: KillReason::Cancelled
                }
            )]
        );
        assert_eq!(rig.cancelled(), vec![JobId(1)]);
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_worker_self_fences_total", &[]), 0);
}

#[test]
fn worker_stops_a_task_whose_start_is_refused_without_running_it() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.fake.script().refuse_started = true;
        rig.assign(1, 10, forever()).await;
        until("the task ends", Duration::from_secs(1), || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(rig.fake.finished(), vec![(FencingToken(10), LEASE_LOST)]);
        assert!(lock(&rig.workload).runs.is_empty(), "the workload ran");
        rig.stop().await;
    });
}

#[test]
fn worker_times_out_a_workload_past_its_timeout() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        let mut spec = workload_spec("slow", forever());
        spec.timeout_secs = Some(2);
        let t0 = Instant::now();
        rig.assign_spec(1, 10, spec).await;
        sleep_until(t0 + Duration::from_secs(2) - ms(50)).await;
        assert!(rig.fake.finished().is_empty(), "ended before its timeout");
        until("the task times out", Duration::from_secs(1), || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake.finished(),
            vec![(FencingToken(10), TaskEnd::TimedOut)]
        );
        assert_eq!(rig.cancelled(), vec![JobId(1)]);
        rig.stop().await;
    });
}

#[test]
fn worker_fails_to_start_an_unregistered_workload() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        let mut spec = workload_spec("nope", json!({}));
        spec.kind = JobKind::Workload(WorkloadJob {
            name: "missing".to_owned(),
            params: json!({}),
        });
        rig.assign_spec(1, 10, spec).await;
        until("the task ends", Duration::from_secs(1), || {
            !rig.fake.finished().is_empty()
        })
        .await;
        let finished = rig.fake.finished();
        assert!(
            matches!(&finished[0].1, TaskEnd::StartFailed { error } if error.contains("not registered")),
            "{finished:?}"
        );
        assert!(rig.fake.got().started.is_empty());
        rig.stop().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Scheduler with a real journal, driven by fake workers
// ---------------------------------------------------------------------------------------------

/// What a fake worker received.
#[derive(Default)]
struct WorkerGot {
    assigns: Vec<Assign>,
    kills: Vec<Kill>,
    /// Both, in the order they came: `assign <token>`, `kill <token>`.
    order: Vec<String>,
}

/// A worker stand-in that records assignments and kills.
#[derive(Clone, Default)]
struct FakeWorker {
    got: Arc<Mutex<WorkerGot>>,
}

impl Actor for FakeWorker {
    type Context = SupervisedContext<Self>;
}

impl Handler<Assign> for FakeWorker {
    type Result = ();
    fn handle(&mut self, msg: Assign, _: &mut Self::Context) {
        let mut got = lock(&self.got);
        got.order.push(format!("assign {}", msg.token));
        got.assigns.push(msg);
    }
}

impl Handler<Kill> for FakeWorker {
    type Result = ();
    fn handle(&mut self, msg: Kill, _: &mut Self::Context) {
        let mut got = lock(&self.got);
        got.order.push(format!("kill {}", msg.token));
        got.kills.push(msg);
    }
}

impl FakeWorker {
    fn assigns(&self) -> Vec<Assign> {
        lock(&self.got).assigns.clone()
    }
    fn kills(&self) -> Vec<(JobId, FencingToken, KillReason)> {
        lock(&self.got)
            .kills
            .iter()
            .map(|k| (k.job, k.token, k.reason))
            .collect()
    }
}

struct SchedRig {
    sched: Addr<Scheduler>,
    workers: Vec<(FakeWorker, Addr<FakeWorker>)>,
    root: SupervisorRef,
    _journal: Scratch,
}

impl SchedRig {
    async fn start(ttl: Duration, fakes: usize) -> SchedRig {
        SchedRig::start_with(ttl, fakes, None).await
    }

    /// As [`SchedRig::start`], on a node that has no GPUs for the reason `gpus_absent`.
    async fn start_with(ttl: Duration, fakes: usize, gpus_absent: Option<String>) -> SchedRig {
        SchedRig::start_in(Scratch::new("journal"), ttl, fakes, gpus_absent).await
    }

    /// As [`SchedRig::start_with`], on the journal already in `journal`.
    async fn start_in(
        journal: Scratch,
        ttl: Duration,
        fakes: usize,
        gpus_absent: Option<String>,
    ) -> SchedRig {
        let config = Arc::new(SchedulerConfig {
            journal_dir: journal.path().to_owned(),
            engine: IoEngine::new(BackendSetting::Std).unwrap(),
            store: StoreOptions::default(),
            placer: PlacerConfig::default(),
            lease_ttl: ttl,
            events: tokio::sync::broadcast::channel(64).0,
            handoff: Mutex::new(None),
            callbacks: None,
            health: OnceLock::new(),
            gpus_absent,
        });
        let sched_spec = WorkerSpec::new("scheduler", move || Scheduler::new(Arc::clone(&config)))
            .mailbox_capacity(1024);
        let sched = sched_spec.addr();
        let mut tree = SupervisorSpec::one_for_one().child(sched_spec);
        let mut workers = Vec::new();
        for i in 0..fakes {
            let fake = FakeWorker::default();
            let f = fake.clone();
            let spec = WorkerSpec::new(format!("fake-worker-{i}"), move || f.clone())
                .mailbox_capacity(1024);
            workers.push((fake, spec.addr()));
            tree = tree.child(spec);
        }
        let root = tree.start("test").await.unwrap();
        SchedRig {
            sched,
            workers,
            root,
            _journal: journal,
        }
    }

    fn fake(&self, i: usize) -> &FakeWorker {
        &self.workers[i].0
    }

    /// Registers fake worker `i` with `cpu_millis` of CPU.
    async fn register(&self, i: usize, cpu_millis: u64) -> WorkerId {
        self.register_gpus(i, cpu_millis, Vec::new()).await
    }

    /// Registers fake worker `i` with `cpu_millis` of CPU and the GPU indices `gpus`.
    async fn register_gpus(&self, i: usize, cpu_millis: u64, gpus: Vec<u32>) -> WorkerId {
        let addr = &self.workers[i].1;
        self.sched
            .send(Register {
                name: fake_worker_path(i),
                capacity: WorkerCapacity {
                    cpu_millis,
                    memory_bytes: 1 << 30,
                    gpus,
                },
                link: WorkerLink {
                    assign: addr.clone().recipient(),
                    kill: addr.clone().recipient(),
                },
            })
            .await
            .unwrap()
            .unwrap()
    }

    /// Tells the scheduler that GPU `index` of the worker registered as `worker_path` is
    /// healthy or not, as the GPU monitor does.
    async fn gpu_health(&self, worker_path: &str, index: u32, healthy: bool) -> Result<(), Error> {
        self.sched
            .send(GpuHealth {
                worker_path: worker_path.to_owned(),
                index,
                healthy,
                reason: "test".to_owned(),
            })
            .await
            .unwrap()
    }

    async fn submit(&self, specs: Vec<JobSpec>) -> Vec<JobId> {
        self.sched.send(Submit { specs }).await.unwrap().unwrap()
    }

    async fn view(&self, job: JobId) -> JobView {
        self.sched.send(GetJob(job)).await.unwrap().unwrap()
    }

    async fn until_state(&self, job: JobId, state: JobState) -> JobView {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let view = self.view(job).await;
            if view.state == state {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} still {} (attempt {}), expected {state}",
                view.state,
                view.attempt
            );
            sleep(ms(5)).await;
        }
    }

    async fn until_assigns(&self, i: usize, n: usize) -> Vec<Assign> {
        let fake = self.fake(i).clone();
        until(
            &format!("{n} assignments to fake worker {i}"),
            Duration::from_secs(5),
            || fake.assigns().len() >= n,
        )
        .await;
        fake.assigns()
    }

    async fn started(&self, worker: WorkerId, a: &Assign) -> Result<(), Error> {
        self.sched
            .send(Started {
                worker,
                job: a.job,
                token: a.token,
            })
            .await
            .unwrap()
    }

    async fn finished(
        &self,
        worker: WorkerId,
        job: JobId,
        token: FencingToken,
        end: TaskEnd,
    ) -> Result<(), Error> {
        self.sched
            .send(Finished {
                worker,
                job,
                token,
                end,
            })
            .await
            .unwrap()
    }

    /// Starts the test workload and a real worker linked to this scheduler; returns what the
    /// workload sees and the worker's log directory.
    async fn add_real_worker(&self) -> (Arc<Mutex<WorkloadSeen>>, Scratch) {
        let workload = TestWorkload::default();
        let seen = Arc::clone(&workload.seen);
        let workload_spec = WorkerSpec::new("workload", move || workload.clone());
        let workload_addr = workload_spec.addr();
        self.root.start_child(workload_spec).await.unwrap();
        let logs = Scratch::new("worker-logs");
        let sched = self.sched.clone();
        let resolve: Resolver = Arc::new(move || Scheduler::link(&sched, "test/scheduler"));
        self.root
            .start_child(worker_spec(resolve, workload_addr.recipient(), logs.path()))
            .await
            .unwrap();
        (seen, logs)
    }

    async fn stop(self) {
        self.sched.send(CloseStore).await.unwrap();
        self.root.stop().await.unwrap();
    }
}

/// The name fake worker `i` registers under (its actor path).
fn fake_worker_path(i: usize) -> String {
    format!("test/fake-worker-{i}")
}

/// A job of one task that needs `gpus` whole GPUs, no retries.
fn gpu_job(name: &str, gpus: u32) -> JobSpec {
    let mut spec = sched_job(name, 0);
    spec.resources.gpus = gpus;
    spec
}

fn sched_job(name: &str, retries: u32) -> JobSpec {
    let mut spec = workload_spec(name, json!({}));
    spec.max_retries = retries;
    spec
}

const LONG_TTL: Duration = Duration::from_secs(60);

#[test]
fn scheduler_refuses_stale_finishes_and_ends_the_job_with_the_live_token() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register(0, 4000).await;
        let [job] = rig.submit(vec![sched_job("a", 0)]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!((a.job, a.attempt, a.task), (job, 1, 0));
        assert_eq!(a.grant.worker, w);
        assert_eq!(a.lease_ttl, LONG_TTL);
        assert_eq!(rig.view(job).await.state, JobState::Leased);
        // A start under another token is refused and changes nothing.
        let mut zombie = a.clone();
        zombie.token = FencingToken(a.token.0 + 1);
        let err = rig.started(w, &zombie).await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        assert_eq!(rig.view(job).await.state, JobState::Leased);
        rig.started(w, &a).await.unwrap();
        rig.until_state(job, JobState::Running).await;

        let done = TaskEnd::Completed {
            result: json!({ "answer": 42 }),
        };
        // Another token of the same job, and the right token from another worker: refused.
        let other = FencingToken(a.token.0 + 1);
        let err = rig.finished(w, job, other, done.clone()).await;
        assert!(
            matches!(err, Err(Error::StaleToken { presented, current: Some(c), .. }) if presented == other && c == a.token),
            "{err:?}"
        );
        let err = rig
            .finished(WorkerId(w.0 + 7), job, a.token, done.clone())
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        // ...and they changed nothing.
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Running, 1));
        assert!(view.outcome.is_none());

        rig.finished(w, job, a.token, done).await.unwrap();
        let view = rig.until_state(job, JobState::Succeeded).await;
        let outcome = view.outcome.unwrap();
        assert_eq!(outcome.result, Some(json!({ "answer": 42 })));
        assert_eq!(outcome.error, None);
        // The lease is gone: a repeat is refused too.
        let err = rig
            .finished(w, job, a.token, TaskEnd::Exited { code: 1 })
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        assert_eq!(rig.view(job).await.state, JobState::Succeeded);
        assert!(rig.fake(0).kills().is_empty());
        rig.stop().await;
    });
    assert_eq!(
        obs.counter(
            "cadre_lease_stale_token_rejections_total",
            &[("op", "finished")]
        ),
        3
    );
}

#[test]
fn scheduler_renewed_lease_lives_and_an_expired_one_is_requeued_with_a_larger_token() {
    let ttl = Duration::from_secs(1);
    run(|_| async move {
        let rig = SchedRig::start(ttl, 1).await;
        let w = rig.register(0, 4000).await;
        let [job] = rig.submit(vec![sched_job("a", 1)]).await[..] else {
            panic!("one id");
        };
        let first = rig.until_assigns(0, 1).await.remove(0);
        rig.started(w, &first).await.unwrap();
        // Renewed every 300 ms for 3 s: the lease lives.
        for _ in 0..10 {
            sleep(ms(300)).await;
            let reply = rig
                .sched
                .send(Renew {
                    worker: w,
                    leases: vec![(job, first.token)],
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(reply.renewed, vec![first.token]);
            assert!(reply.refused.is_empty());
        }
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Running, 1));
        // Silence: not lost before the time to live has run out since the last renewal...
        let silent = Instant::now();
        sleep_until(silent + ttl - ms(100)).await;
        assert_eq!(rig.fake(0).assigns().len(), 1);
        assert_eq!(rig.view(job).await.state, JobState::Running);
        // ...but after it: the old task is told to stop, and the job runs again as attempt 2
        // under a larger token.
        let second = rig.until_assigns(0, 2).await.remove(1);
        assert!(Instant::now() >= silent + ttl);
        assert_eq!((second.job, second.attempt), (job, 2));
        assert!(
            second.token > first.token,
            "{} !> {}",
            second.token,
            first.token
        );
        assert_eq!(
            rig.fake(0).kills(),
            vec![(job, first.token, KillReason::LeaseLost)]
        );
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Leased, 2));
        assert!(
            view.last_loss
                .as_deref()
                .is_some_and(|l| l.contains("expired")),
            "{:?}",
            view.last_loss
        );
        // The zombie's word is refused, and changes nothing.
        let err = rig
            .finished(w, job, first.token, TaskEnd::Completed { result: json!(1) })
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        let reply = rig
            .sched
            .send(Renew {
                worker: w,
                leases: vec![(job, first.token)],
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.refused, vec![(job, first.token)]);
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Leased, 2));
        // Attempt 2 is the last (one retry): its expiry fails the job.
        let view = rig.until_state(job, JobState::Failed).await;
        assert_eq!(view.attempt, 2);
        assert!(view
            .outcome
            .and_then(|o| o.error)
            .is_some_and(|e| e.contains("no retries left")),);
        sleep(ttl * 3).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            2,
            "a failed job is not placed again"
        );
        rig.stop().await;
    });
}

#[test]
fn scheduler_worker_death_revokes_leased_and_running_jobs() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 2).await;
        let w = rig.register(0, 4000).await;
        let ids = rig
            .submit(vec![
                sched_job("running", 1),
                sched_job("leased", 1),
                sched_job("leased-no-retry", 0),
            ])
            .await;
        let assigns = rig.until_assigns(0, 3).await;
        let by_job = |job: JobId| assigns.iter().find(|a| a.job == job).unwrap().clone();
        let (running, leased) = (by_job(ids[0]), by_job(ids[1]));
        rig.started(w, &running).await.unwrap();
        rig.until_state(ids[0], JobState::Running).await;
        assert_eq!(rig.view(ids[1]).await.state, JobState::Leased);

        rig.sched
            .send(WorkerDead {
                worker: w,
                reason: "test".to_owned(),
            })
            .await
            .unwrap();
        for id in &ids[..2] {
            let view = rig.until_state(*id, JobState::Queued).await;
            assert_eq!(view.attempt, 2, "job {id}");
            assert!(view
                .last_loss
                .as_deref()
                .is_some_and(|l| l.contains("died")));
        }
        rig.until_state(ids[2], JobState::Failed).await;
        // The dead worker is unknown now, and its tokens are void.
        let err = rig
            .sched
            .send(Renew {
                worker: w,
                leases: vec![(ids[0], running.token)],
            })
            .await
            .unwrap();
        assert!(
            matches!(err, Err(Error::UnknownWorker { worker }) if worker == w),
            "{err:?}"
        );
        let err = rig
            .finished(w, ids[0], running.token, TaskEnd::Exited { code: 0 })
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");

        // A new worker gets both requeued jobs, under new tokens; the failed one stays failed.
        let w2 = rig.register(1, 4000).await;
        let again = rig.until_assigns(1, 2).await;
        sleep(ms(100)).await;
        assert_eq!(rig.fake(1).assigns().len(), 2);
        let mut jobs: Vec<JobId> = again.iter().map(|a| a.job).collect();
        jobs.sort();
        assert_eq!(jobs, vec![ids[0], ids[1]]);
        assert!(again.iter().all(|a| a.attempt == 2
            && a.grant.worker == w2
            && a.token > running.token.max(leased.token)));
        assert_eq!(rig.view(ids[2]).await.state, JobState::Failed);
        rig.stop().await;
    });
}

#[test]
fn scheduler_cancels_queued_jobs_at_once_and_running_ones_through_their_worker() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        // No worker yet: the job waits, and a cancel ends it durably at once.
        let [queued] = rig.submit(vec![sched_job("queued", 0)]).await[..] else {
            panic!("one id");
        };
        assert_eq!(rig.view(queued).await.state, JobState::Queued);
        let outcome = rig.sched.send(CancelJob(queued)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelled);
        assert_eq!(rig.view(queued).await.state, JobState::Cancelled);
        let again = rig.sched.send(CancelJob(queued)).await.unwrap();
        assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
        let unknown = rig.sched.send(CancelJob(JobId(999))).await.unwrap();
        assert!(
            matches!(unknown, Err(Error::UnknownJob { .. })),
            "{unknown:?}"
        );

        let w = rig.register(0, 4000).await;
        let [job] = rig.submit(vec![sched_job("running", 3)]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(a.job, job, "the cancelled job is never placed");
        rig.started(w, &a).await.unwrap();
        rig.until_state(job, JobState::Running).await;
        let outcome = rig.sched.send(CancelJob(job)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelling);
        until("the kill", Duration::from_secs(1), || {
            !rig.fake(0).kills().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake(0).kills(),
            vec![(job, a.token, KillReason::Cancelled)]
        );
        // Still running until its worker confirms.
        assert_eq!(rig.view(job).await.state, JobState::Running);
        rig.finished(
            w,
            job,
            a.token,
            TaskEnd::Killed {
                reason: KillReason::Cancelled,
            },
        )
        .await
        .unwrap();
        let view = rig.until_state(job, JobState::Cancelled).await;
        assert_eq!(view.attempt, 1, "a cancelled job is not retried");
        sleep(ms(500)).await;
        assert_eq!(rig.fake(0).assigns().len(), 1);
        rig.stop().await;
    });
}

#[test]
fn scheduler_gang_task_failure_stops_the_other_task_and_fails_the_job() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 2).await;
        // Each worker has room for one task only.
        let w0 = rig.register(0, 1000).await;
        let w1 = rig.register(1, 1000).await;
        let mut spec = sched_job("gang", 0);
        spec.gang = 2;
        let [job] = rig.submit(vec![spec]).await[..] else {
            panic!("one id");
        };
        let a0 = rig.until_assigns(0, 1).await.remove(0);
        let a1 = rig.until_assigns(1, 1).await.remove(0);
        assert_eq!((a0.job, a1.job), (job, job));
        assert_ne!(a0.token, a1.token);
        assert_eq!((a0.grant.worker, a1.grant.worker), (w0, w1));
        let mut tasks = [a0.task, a1.task];
        tasks.sort_unstable();
        assert_eq!(tasks, [0, 1]);
        rig.started(w0, &a0).await.unwrap();
        rig.started(w1, &a1).await.unwrap();
        rig.until_state(job, JobState::Running).await;

        rig.finished(w0, job, a0.token, TaskEnd::Exited { code: 1 })
            .await
            .unwrap();
        until("the other task's kill", Duration::from_secs(1), || {
            !rig.fake(1).kills().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake(1).kills(),
            vec![(job, a1.token, KillReason::LeaseLost)]
        );
        assert!(
            rig.fake(0).kills().is_empty(),
            "the failed task was not killed"
        );
        // The job ends only once both tasks have.
        sleep(ms(100)).await;
        assert_eq!(rig.view(job).await.state, JobState::Running);
        rig.finished(w1, job, a1.token, LEASE_LOST).await.unwrap();
        let view = rig.until_state(job, JobState::Failed).await;
        assert_eq!(view.outcome.unwrap().exit_code, Some(1));
        rig.stop().await;
    });
}

#[test]
fn scheduler_and_a_real_worker_run_renew_and_cancel_jobs() {
    let obs = run(|obs| async move {
        let rig = SchedRig::start(TTL, 0).await;
        let (seen, _logs) = rig.add_real_worker().await;
        let [done] = rig
            .submit(vec![workload_spec(
                "counts",
                json!({ "steps": 20, "every_ms": 10 }),
            )])
            .await[..]
        else {
            panic!("one id");
        };
        let view = rig.until_state(done, JobState::Succeeded).await;
        assert_eq!(view.outcome.unwrap().result, Some(json!({ "steps": 20 })));
        // A job that runs until cancelled lives through three lease lifetimes on renewals.
        let [job] = rig.submit(vec![workload_spec("forever", forever())]).await[..] else {
            panic!("one id");
        };
        rig.until_state(job, JobState::Running).await;
        sleep(TTL * 3).await;
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Running, 1));
        assert!(obs.counter("cadre_progress_flushes_total", &[]) > 0);
        let outcome = rig.sched.send(CancelJob(job)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelling);
        rig.until_state(job, JobState::Cancelled).await;
        assert_eq!(lock(&seen).cancelled, vec![job]);
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_worker_self_fences_total", &[]), 0);
    assert_eq!(obs.counter("cadre_lease_expirations_total", &[]), 0);
}

/// BUG (see the report): a running job the user cancelled, whose worker never confirms the
/// kill, ends `failed` instead of `cancelled` when its lease then runs out and it has no
/// retries left (`Scheduler::lose` only turns a cancel into `cancelled` when the loss
/// requeued the job).
#[test]
fn scheduler_cancelled_job_whose_lease_runs_out_ends_cancelled() {
    let ttl = Duration::from_secs(1);
    run(|_| async move {
        let rig = SchedRig::start(ttl, 1).await;
        let w = rig.register(0, 4000).await;
        let [job] = rig.submit(vec![sched_job("a", 0)]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        rig.started(w, &a).await.unwrap();
        let outcome = rig.sched.send(CancelJob(job)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelling);
        // The worker never answers; the lease runs out.
        sleep(ttl * 3).await;
        let view = rig.view(job).await;
        assert_eq!(view.state, JobState::Cancelled, "{view:?}");
        rig.stop().await;
    });
}

/// A cancel that arrives while a placement's lease record is still on its way to disk: the
/// kill goes out before the assignment, so a worker would ignore it (it does not know the token
/// yet) and then run the task; the scheduler must not assign a cancelled placement. (This
/// failed before 8aa8a43: the job stayed `running` and the workload never saw a cancel.)
#[test]
fn scheduler_cancel_of_a_placement_not_yet_durable_still_stops_the_task() {
    run(|_| async {
        let rig = SchedRig::start(Duration::from_secs(2), 0).await;
        let [job] = rig.submit(vec![sched_job("a", 0)]).await[..] else {
            panic!("one id");
        };
        // A real worker joins now; its registration places the job at once.
        let (seen, _logs) = rig.add_real_worker().await;
        // Cancel as soon as the job is leased.
        while rig.view(job).await.state != JobState::Leased {
            tokio::task::yield_now().await;
        }
        let outcome = rig.sched.send(CancelJob(job)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelling);
        sleep(Duration::from_secs(10)).await;
        let view = rig.view(job).await;
        assert_eq!(
            view.state,
            JobState::Cancelled,
            "still {} 10 s after the cancel; the workload saw its cancel: {}",
            view.state,
            !lock(&seen).cancelled.is_empty()
        );
        // If the task ran at all, it was stopped.
        let (runs, cancelled) = {
            let seen = lock(&seen);
            (seen.runs.clone(), seen.cancelled.clone())
        };
        assert_eq!(runs, cancelled);
        rig.stop().await;
    });
}

// ---------------------------------------------------------------------------------------------
// GPUs: health reports, release on every end, a node without GPUs, devices a task is given
// ---------------------------------------------------------------------------------------------

#[test]
fn scheduler_places_no_new_work_on_an_unhealthy_gpu_until_it_is_healthy_again() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register_gpus(0, 4000, vec![0, 1]).await;
        let path = fake_worker_path(0);
        rig.gpu_health(&path, 0, false).await.unwrap();
        let [two, one] = rig
            .submit(vec![gpu_job("two-gpus", 2), gpu_job("one-gpu", 1)])
            .await[..]
        else {
            panic!("two ids");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(a.job, one);
        assert_eq!(a.grant.gpus, vec![1], "placed on the healthy GPU only");
        sleep(ms(200)).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            1,
            "the 2-GPU job was placed with GPU 0 unhealthy"
        );
        let view = rig.view(two).await;
        assert_eq!(view.state, JobState::Queued);
        assert!(
            matches!(&view.waiting, Some(Waiting::Unplaceable { .. })),
            "{:?}",
            view.waiting
        );
        rig.started(w, &a).await.unwrap();
        rig.until_state(one, JobState::Running).await;

        // Healthy again: the 2-GPU job rejoins the queue but waits for GPU 1.
        rig.gpu_health(&path, 0, true).await.unwrap();
        sleep(ms(200)).await;
        assert_eq!(rig.fake(0).assigns().len(), 1, "placed on a held GPU");
        let view = rig.view(two).await;
        assert_eq!(view.state, JobState::Queued);
        assert!(
            matches!(&view.waiting, Some(Waiting::Queued { .. })),
            "still unplaceable once every GPU is healthy: {:?}",
            view.waiting
        );

        rig.finished(w, one, a.token, TaskEnd::Completed { result: json!(1) })
            .await
            .unwrap();
        rig.until_state(one, JobState::Succeeded).await;
        let b = rig.until_assigns(0, 2).await.remove(1);
        assert_eq!(b.job, two);
        let mut gpus = b.grant.gpus.clone();
        gpus.sort_unstable();
        assert_eq!(gpus, vec![0, 1]);
        assert!(rig.fake(0).kills().is_empty());
        rig.stop().await;
    });
}

#[test]
fn scheduler_gpu_health_places_at_once_when_healthy_and_refuses_unknown_workers_and_devices() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let path = fake_worker_path(0);
        // Before the worker registers, its path is unknown.
        let err = rig.gpu_health(&path, 0, false).await;
        assert!(err.is_err(), "{err:?}");
        let w = rig.register_gpus(0, 4000, vec![0, 1]).await;
        let err = rig.gpu_health("test/no-such-worker", 0, false).await;
        assert!(err.is_err(), "{err:?}");
        let err = rig.gpu_health(&path, 5, false).await;
        assert!(
            matches!(err, Err(Error::UnknownDevice { worker, index: 5 }) if worker == w),
            "{err:?}"
        );

        rig.gpu_health(&path, 1, false).await.unwrap();
        // A device already unhealthy may be reported again (the monitor does so on every
        // sample): taken, and counted as no change.
        rig.gpu_health(&path, 1, false).await.unwrap();
        let [job] = rig.submit(vec![gpu_job("two-gpus", 2)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        assert!(rig.fake(0).assigns().is_empty());
        assert_eq!(rig.view(job).await.state, JobState::Queued);
        // Nothing else happens: the healthy report alone places the job.
        rig.gpu_health(&path, 1, true).await.unwrap();
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(a.job, job);
        let mut gpus = a.grant.gpus.clone();
        gpus.sort_unstable();
        assert_eq!(gpus, vec![0, 1]);
        rig.stop().await;
    });
    let count = |state| obs.counter("cadre_gpu_health_changes_total", &[("state", state)]);
    assert_eq!(count("unknown_worker"), 2);
    assert_eq!(count("refused"), 1);
    assert_eq!(count("unhealthy"), 1);
    assert_eq!(count("healthy"), 1);
}

#[test]
fn scheduler_takes_a_repeated_gpu_health_report_as_no_change() {
    let obs = run(|obs| async move {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register_gpus(0, 4000, vec![0, 1]).await;
        let path = fake_worker_path(0);
        let count = |state| obs.counter("cadre_gpu_health_changes_total", &[("state", state)]);
        rig.gpu_health(&path, 0, false).await.unwrap();
        assert_eq!(count("unhealthy"), 1);
        let [two] = rig.submit(vec![gpu_job("two-gpus", 2)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        // Again, twice: taken, not counted, and GPU 0 stays unhealthy.
        rig.gpu_health(&path, 0, false).await.unwrap();
        rig.gpu_health(&path, 0, false).await.unwrap();
        assert_eq!(count("unhealthy"), 1);
        sleep(ms(200)).await;
        assert!(
            rig.fake(0).assigns().is_empty(),
            "placed on the unhealthy GPU"
        );
        let view = rig.view(two).await;
        assert_eq!(view.state, JobState::Queued);
        assert!(
            matches!(&view.waiting, Some(Waiting::Unplaceable { .. })),
            "{:?}",
            view.waiting
        );
        // Healthy: the job is placed on both; a repeat of that is no change either.
        rig.gpu_health(&path, 0, true).await.unwrap();
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!((a.job, a.grant.worker), (two, w));
        rig.gpu_health(&path, 0, true).await.unwrap();
        rig.gpu_health(&path, 1, true).await.unwrap();
        assert_eq!(count("healthy"), 1);
        rig.stop().await;
    });
    // Logged once each, on the change.
    assert_eq!(
        obs.events
            .with(Level::WARN, "GPU unhealthy: no new work is placed on it")
            .len(),
        1
    );
    assert_eq!(
        obs.events
            .with(Level::INFO, "GPU healthy again: it takes work")
            .len(),
        1
    );
    let count = |state| obs.counter("cadre_gpu_health_changes_total", &[("state", state)]);
    assert_eq!((count("unhealthy"), count("healthy")), (1, 1));
    assert_eq!(count("refused") + count("unknown_worker"), 0);
}

#[test]
fn scheduler_takes_the_gpu_of_a_worker_that_registered_again_as_healthy_until_it_is_reported() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let first = rig.register_gpus(0, 4000, vec![0]).await;
        let path = fake_worker_path(0);
        rig.gpu_health(&path, 0, false).await.unwrap();
        let [a_job] = rig.submit(vec![gpu_job("a", 1)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        assert!(
            rig.fake(0).assigns().is_empty(),
            "placed on the unhealthy GPU"
        );

        // The worker registers again (it restarted): its GPU is healthy to the scheduler, and
        // with no report since, the waiting job is placed on it.
        let second = rig.register_gpus(0, 4000, vec![0]).await;
        assert_ne!(second, first);
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(
            (a.job, a.grant.worker, a.grant.gpus.clone()),
            (a_job, second, vec![0])
        );
        rig.started(second, &a).await.unwrap();
        rig.until_state(a_job, JobState::Running).await;

        // The monitor's next sample reports it unhealthy again: a change for the new
        // registration, so it marks the GPU, and the next job stays off it once it is free.
        rig.gpu_health(&path, 0, false).await.unwrap();
        let [b_job] = rig.submit(vec![gpu_job("b", 1)]).await[..] else {
            panic!("one id");
        };
        rig.finished(second, a_job, a.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(a_job, JobState::Succeeded).await;
        sleep(ms(200)).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            1,
            "placed on the GPU reported unhealthy"
        );
        let view = rig.view(b_job).await;
        assert_eq!(view.state, JobState::Queued);
        assert!(
            matches!(&view.waiting, Some(Waiting::Unplaceable { .. })),
            "{:?}",
            view.waiting
        );
        rig.gpu_health(&path, 0, true).await.unwrap();
        let b = rig.until_assigns(0, 2).await.remove(1);
        assert_eq!(
            (b.job, b.grant.worker, b.grant.gpus),
            (b_job, second, vec![0])
        );
        rig.stop().await;
    });
    let count = |state| obs.counter("cadre_gpu_health_changes_total", &[("state", state)]);
    assert_eq!((count("unhealthy"), count("healthy")), (2, 1));
}

#[test]
fn scheduler_drops_the_earlier_registration_of_a_worker_that_registers_again() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let first = rig.register_gpus(0, 4000, vec![0]).await;
        let mut gpu = gpu_job("gpu", 1);
        gpu.max_retries = 1;
        let [gpu, cpu] = rig.submit(vec![gpu, sched_job("cpu-no-retry", 0)]).await[..] else {
            panic!("two ids");
        };
        let assigns = rig.until_assigns(0, 2).await;
        let by_job = |job: JobId| assigns.iter().find(|a| a.job == job).unwrap().clone();
        let (old, leased) = (by_job(gpu), by_job(cpu));
        assert_eq!((old.grant.worker, old.grant.gpus.clone()), (first, vec![0]));
        rig.started(first, &old).await.unwrap();
        rig.until_state(gpu, JobState::Running).await;
        assert_eq!(rig.view(cpu).await.state, JobState::Leased);

        // It restarted: the earlier registration goes, with its leases and GPU.
        let second = rig.register_gpus(0, 4000, vec![0]).await;
        assert_ne!(second, first);
        // The running GPU job is lost and runs again, as attempt 2 under a larger token, on the
        // one GPU 0 there is; the leased one without retries fails.
        let again = rig.until_assigns(0, 3).await.remove(2);
        assert_eq!(
            (
                again.job,
                again.attempt,
                again.grant.worker,
                again.grant.gpus.clone()
            ),
            (gpu, 2, second, vec![0])
        );
        assert!(again.token > old.token, "{} !> {}", again.token, old.token);
        let view = rig.view(gpu).await;
        assert!(
            view.last_loss
                .as_deref()
                .is_some_and(|l| l.contains("registered again")),
            "{:?}",
            view.last_loss
        );
        let view = rig.until_state(cpu, JobState::Failed).await;
        assert_eq!(view.attempt, 1);
        rig.started(second, &again).await.unwrap();
        rig.until_state(gpu, JobState::Running).await;

        // A second 1-GPU job waits: GPU 0 is not offered twice.
        let [next] = rig.submit(vec![gpu_job("next", 1)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        assert_eq!(rig.fake(0).assigns().len(), 3, "GPU 0 booked twice");
        assert_eq!(rig.view(next).await.state, JobState::Queued);

        // One worker by that name, the new one, holding the one lease.
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        let named: Vec<(WorkerId, usize)> = nodes
            .workers
            .iter()
            .filter(|n| n.name == fake_worker_path(0))
            .map(|n| (n.worker, n.leases))
            .collect();
        assert_eq!(named, vec![(second, 1)]);
        assert_eq!(nodes.workers.len(), 1);
        assert_eq!(nodes.capacity.gpus_total, 1);

        // The earlier registration is unknown, and its tokens are void.
        let err = rig
            .sched
            .send(Renew {
                worker: first,
                leases: vec![(gpu, old.token)],
            })
            .await
            .unwrap();
        assert!(
            matches!(err, Err(Error::UnknownWorker { worker }) if worker == first),
            "{err:?}"
        );
        let err = rig
            .finished(first, cpu, leased.token, TaskEnd::Exited { code: 0 })
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        assert_eq!(rig.view(cpu).await.state, JobState::Failed);

        // Once attempt 2 ends, the waiting job gets GPU 0.
        rig.finished(second, gpu, again.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(gpu, JobState::Succeeded).await;
        let b = rig.until_assigns(0, 4).await.remove(3);
        assert_eq!(
            (b.job, b.grant.worker, b.grant.gpus),
            (next, second, vec![0])
        );
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_worker_deaths_total", &[]), 1);
}

#[test]
fn scheduler_leaves_a_job_on_a_gpu_that_turns_unhealthy_and_gives_that_gpu_to_no_one_else() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register_gpus(0, 4000, vec![0]).await;
        let path = fake_worker_path(0);
        let [first] = rig.submit(vec![gpu_job("first", 1)]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!((a.job, a.grant.gpus.clone()), (first, vec![0]));
        rig.started(w, &a).await.unwrap();
        rig.until_state(first, JobState::Running).await;
        rig.gpu_health(&path, 0, false).await.unwrap();
        let [second] = rig.submit(vec![gpu_job("second", 1)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        // The job on it runs on: no kill.
        assert!(rig.fake(0).kills().is_empty(), "{:?}", rig.fake(0).kills());
        assert_eq!(rig.view(first).await.state, JobState::Running);
        // Released, the unhealthy GPU is not given to the waiting job.
        rig.finished(w, first, a.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(first, JobState::Succeeded).await;
        sleep(ms(200)).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            1,
            "placed on the unhealthy GPU"
        );
        assert_eq!(rig.view(second).await.state, JobState::Queued);
        rig.gpu_health(&path, 0, true).await.unwrap();
        let b = rig.until_assigns(0, 2).await.remove(1);
        assert_eq!((b.job, b.grant.gpus.clone()), (second, vec![0]));
        rig.stop().await;
    });
}

/// How a GPU job's attempt ends, for the release test.
enum GpuEnd {
    /// The worker reports this end after the start; the job ends in the state.
    Report(TaskEnd, JobState),
    /// The worker reports `StartFailed` without a start.
    StartFailed,
    /// The user cancels it; the worker confirms the kill.
    Cancel,
    /// The health monitor reports it stalled.
    Stall,
    /// Its lease runs out (no renewals).
    Expire,
}

#[test]
fn scheduler_releases_the_gpu_on_every_way_a_job_ends() {
    let ttl = Duration::from_secs(1);
    run(|_| async move {
        let rig = SchedRig::start(ttl, 1).await;
        let w = rig.register_gpus(0, 4000, vec![0]).await;
        let ends = [
            (
                "succeeded",
                GpuEnd::Report(TaskEnd::Exited { code: 0 }, JobState::Succeeded),
            ),
            (
                "completed",
                GpuEnd::Report(TaskEnd::Completed { result: json!(1) }, JobState::Succeeded),
            ),
            (
                "exited nonzero",
                GpuEnd::Report(TaskEnd::Exited { code: 3 }, JobState::Failed),
            ),
            (
                "workload failed",
                GpuEnd::Report(
                    TaskEnd::WorkloadFailed {
                        error: "boom".to_owned(),
                    },
                    JobState::Failed,
                ),
            ),
            (
                "timed out",
                GpuEnd::Report(TaskEnd::TimedOut, JobState::TimedOut),
            ),
            (
                "signalled",
                GpuEnd::Report(TaskEnd::Signalled { signal: 9 }, JobState::Failed),
            ),
            ("start failed", GpuEnd::StartFailed),
            ("cancelled", GpuEnd::Cancel),
            ("stalled", GpuEnd::Stall),
            ("lease expired", GpuEnd::Expire),
        ];
        let [mut current] = rig.submit(vec![gpu_job("gpu-0", 1)]).await[..] else {
            panic!("one id");
        };
        let mut a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!((a.job, a.grant.gpus.clone()), (current, vec![0]));
        for (i, (name, end)) in ends.into_iter().enumerate() {
            if !matches!(end, GpuEnd::StartFailed) {
                rig.started(w, &a).await.unwrap();
                rig.until_state(current, JobState::Running).await;
            }
            // The next job waits while the only GPU is held.
            let [next] = rig
                .submit(vec![gpu_job(&format!("gpu-{}", i + 1), 1)])
                .await[..]
            else {
                panic!("one id");
            };
            sleep(ms(50)).await;
            assert_eq!(
                rig.fake(0).assigns().len(),
                i + 1,
                "{name}: placed on a held GPU"
            );
            assert_eq!(rig.view(next).await.state, JobState::Queued, "{name}");
            let state = match end {
                GpuEnd::Report(end, state) => {
                    rig.finished(w, current, a.token, end).await.unwrap();
                    state
                }
                GpuEnd::StartFailed => {
                    let end = TaskEnd::StartFailed {
                        error: "no such program".to_owned(),
                    };
                    rig.finished(w, current, a.token, end).await.unwrap();
                    JobState::Failed
                }
                GpuEnd::Cancel => {
                    let outcome = rig.sched.send(CancelJob(current)).await.unwrap().unwrap();
                    assert_eq!(outcome, CancelOutcome::Cancelling);
                    until("the kill", Duration::from_secs(1), || {
                        rig.fake(0).kills().iter().any(|k| k.1 == a.token)
                    })
                    .await;
                    let end = TaskEnd::Killed {
                        reason: KillReason::Cancelled,
                    };
                    rig.finished(w, current, a.token, end).await.unwrap();
                    JobState::Cancelled
                }
                GpuEnd::Stall => {
                    rig.sched.do_send(JobStalled {
                        job: current,
                        token: a.token,
                        reason: "no progress".to_owned(),
                    });
                    JobState::Failed
                }
                // Nobody renews: the lease runs out.
                GpuEnd::Expire => JobState::Failed,
            };
            rig.until_state(current, state).await;
            let b = rig.until_assigns(0, i + 2).await.remove(i + 1);
            assert_eq!(
                (b.job, b.grant.gpus.clone()),
                (next, vec![0]),
                "{name}: the next job did not get GPU 0"
            );
            current = next;
            a = b;
        }
        rig.started(w, &a).await.unwrap();
        rig.finished(w, current, a.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(current, JobState::Succeeded).await;
        rig.stop().await;
    });
}

#[test]
fn scheduler_on_a_node_without_gpus_says_why_a_gpu_job_waits() {
    run(|_| async {
        let rig = SchedRig::start_with(LONG_TTL, 1, Some("no CUDA driver: test".to_owned())).await;
        rig.register(0, 4000).await;
        let mut big = sched_job("too-big", 0);
        big.resources.cpu_millis = 8000;
        let [gpu, cpu] = rig.submit(vec![gpu_job("gpu", 1), big]).await[..] else {
            panic!("two ids");
        };
        let reason = |view: JobView| match view.waiting {
            Some(Waiting::Unplaceable { reason }) => Some(reason),
            _ => None,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let (gpu_reason, cpu_reason) = loop {
            if let (Some(g), Some(c)) = (reason(rig.view(gpu).await), reason(rig.view(cpu).await)) {
                break (g, c);
            }
            assert!(Instant::now() < deadline, "not both unplaceable");
            sleep(ms(5)).await;
        };
        assert!(
            gpu_reason.contains("; this node has no GPUs: no CUDA driver: test"),
            "{gpu_reason}"
        );
        assert!(
            !cpu_reason.contains("no GPUs") && !cpu_reason.contains("no CUDA driver"),
            "{cpu_reason}"
        );
        assert_eq!(rig.view(gpu).await.state, JobState::Queued);
        assert!(rig.fake(0).assigns().is_empty());
        rig.stop().await;
    });
}

const GPU_A: &str = "GPU-00000000-0000-0000-0000-00000000000a";
const GPU_B: &str = "GPU-00000000-0000-0000-0000-00000000000b";

fn two_gpus() -> Vec<GpuDevice> {
    vec![
        GpuDevice {
            index: 0,
            uuid: GPU_A.to_owned(),
            ordinal: 0,
        },
        GpuDevice {
            index: 1,
            uuid: GPU_B.to_owned(),
            ordinal: 1,
        },
    ]
}

/// A command job printing its `CUDA_VISIBLE_DEVICES`, with its own env setting it to `all`.
fn print_visible_devices() -> JobSpec {
    let mut spec = workload_spec("print-devices", json!({}));
    spec.kind = JobKind::Command(CommandJob {
        program: "/bin/sh".to_owned(),
        args: vec![
            "-c".to_owned(),
            "printf %s \"$CUDA_VISIBLE_DEVICES\"".to_owned(),
        ],
        env: BTreeMap::from([("CUDA_VISIBLE_DEVICES".to_owned(), "all".to_owned())]),
        workdir: None,
    });
    spec
}

/// Runs `print_visible_devices` as job `job` with a grant of `gpus`; returns its stdout.
async fn visible_devices(rig: &WorkerRig, job: u64, gpus: Vec<u32>) -> String {
    let token = FencingToken(job * 10);
    rig.assign_gpus(job, token.0, print_visible_devices(), gpus)
        .await;
    // A real process: virtual time runs on while it does, so the limit is generous.
    until("the command ends", Duration::from_secs(600), || {
        rig.fake.finished().iter().any(|(t, _)| *t == token)
    })
    .await;
    let end = rig
        .fake
        .finished()
        .into_iter()
        .find(|(t, _)| *t == token)
        .unwrap()
        .1;
    assert_eq!(end, TaskEnd::Exited { code: 0 }, "job {job}");
    let (out, _) = rig.config.log_paths(JobId(job), 0);
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn worker_sets_cuda_visible_devices_to_exactly_the_granted_gpus() {
    run(|_| async {
        let rig = WorkerRig::start_with(false, two_gpus()).await;
        assert_eq!(visible_devices(&rig, 1, vec![1]).await, GPU_B);
        assert_eq!(visible_devices(&rig, 2, Vec::new()).await, "");
        let both = visible_devices(&rig, 3, vec![0, 1]).await;
        assert_eq!(both, format!("{GPU_A},{GPU_B}"));
        rig.stop().await;
    });
}

#[test]
fn worker_fails_to_start_a_task_granted_a_gpu_it_does_not_own() {
    run(|_| async {
        let rig = WorkerRig::start_with(false, two_gpus()).await;
        rig.assign_gpus(1, 10, print_visible_devices(), vec![7])
            .await;
        rig.assign_gpus(2, 20, workload_spec("w", json!({ "steps": 1 })), vec![0, 7])
            .await;
        until("both tasks end", Duration::from_secs(5), || {
            rig.fake.finished().len() == 2
        })
        .await;
        for (token, end) in rig.fake.finished() {
            assert!(
                matches!(&end, TaskEnd::StartFailed { error } if error.contains("GPU 7")),
                "{token}: {end:?}"
            );
        }
        assert!(rig.fake.got().started.is_empty(), "a task was started");
        assert!(lock(&rig.workload).runs.is_empty(), "the workload ran");
        let (out, _) = rig.config.log_paths(JobId(1), 0);
        assert!(!out.exists(), "the command ran");
        rig.stop().await;
    });
}

#[test]
fn worker_gives_a_workload_exactly_its_granted_gpus() {
    run(|_| async {
        let rig = WorkerRig::start_with(false, two_gpus()).await;
        rig.assign_gpus(1, 10, workload_spec("w", json!({ "steps": 1 })), vec![0])
            .await;
        rig.assign_gpus(2, 20, workload_spec("w", json!({ "steps": 1 })), Vec::new())
            .await;
        until("both tasks end", Duration::from_secs(5), || {
            rig.fake.finished().len() == 2
        })
        .await;
        let mut seen = lock(&rig.workload).gpus.clone();
        seen.sort_by_key(|(job, _)| *job);
        assert_eq!(
            seen,
            vec![
                (JobId(1), vec![two_gpus()[0].clone()]),
                (JobId(2), Vec::new())
            ]
        );
        rig.stop().await;
    });
}

/// Writes a journal in `journal` holding a priority-0 job accepted two minutes ago (leased
/// when the node stopped, if `old_was_leased`; else still queued) and a priority-50 job
/// accepted now.
async fn journal_with_an_old_and_a_new_job(journal: &Scratch, old_was_leased: bool) {
    let engine = IoEngine::new(BackendSetting::Std).unwrap();
    let (mut store, _) = Store::open(journal.path(), engine, StoreOptions::default())
        .await
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut new = sched_job("new", 0);
    new.priority = 50;
    let jobs = vec![
        Submission {
            job: JobId(1),
            spec: sched_job("old", 1),
            submitted_ms: now_ms - 120_000,
        },
        Submission {
            job: JobId(2),
            spec: new,
            submitted_ms: now_ms,
        },
    ];
    store
        .commit(Record::Submitted { jobs })
        .await
        .unwrap()
        .await
        .unwrap();
    if old_was_leased {
        let leased = Record::Leased {
            job: JobId(1),
            attempt: 1,
            grants: vec![Grant {
                worker: WorkerId(1),
                task: 0,
                cpu_millis: 1000,
                memory_bytes: 1 << 20,
                gpus: Vec::new(),
            }],
            tokens: vec![FencingToken(1)],
        };
        store.commit(leased).await.unwrap().await.unwrap();
    }
    store.close().await;
}

#[test]
fn scheduler_restart_requeues_an_interrupted_job_afresh_not_with_its_age() {
    run(|_| async {
        let journal = Scratch::new("journal");
        journal_with_an_old_and_a_new_job(&journal, true).await;
        let rig = SchedRig::start_in(journal, LONG_TTL, 1, None).await;
        // The old job was running when the node stopped: the restart queues it again as its
        // second attempt, afresh, as a retry while the node runs would be. The new job's 50
        // points put it first; counting the old one's two minutes since submission (run time
        // of its first attempt included) would have put the old one first.
        rig.register(0, 1000).await;
        let first = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(first.job, JobId(2));
        assert_eq!(rig.view(JobId(1)).await.attempt, 2);
        rig.stop().await;
    });
}

#[test]
fn scheduler_restart_keeps_the_age_a_queued_job_earned() {
    run(|_| async {
        let journal = Scratch::new("journal");
        // Before the restart: a job of priority 0 accepted two minutes ago, and one of priority
        // 50 accepted just now, both still queued.
        journal_with_an_old_and_a_new_job(&journal, false).await;
        let rig = SchedRig::start_in(journal, LONG_TTL, 1, None).await;
        // Room for one job at a time. At the default aging (a point per second waited) the old
        // job's 120 s outweigh the new one's 50 points: it goes first, as it would have without
        // the restart. A restart that forgot the wait would place the new one first.
        rig.register(0, 1000).await;
        let first = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(first.job, JobId(1));
        rig.stop().await;
    });
}
