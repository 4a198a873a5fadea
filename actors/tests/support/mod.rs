//! Helpers shared by the runtime-actor tests (`backpressure.rs`, `health_*.rs`, `worker_*.rs`,
//! `scheduler_*.rs`), each of which declares `mod support;`: the harness (`run` on a paused-clock
//! actix System with captured events and a per-test metrics recorder, `Obs`, `until`, `Scratch`,
//! `lock`, `ms`), the worker rig (`WorkerRig` with a scripted `FakeScheduler` and `TestWorkload`,
//! its settings and constants) and the scheduler rig (`SchedRig` on a real journal with
//! `FakeWorker`s), and the spec builders (`workload_spec`, `sched_job`, `gpu_job`, `forever`).
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::health::{HealthConfig, HealthMonitor};
use cadre_actors::job::{JobKind, JobSpec, JobState, Resources, WorkloadJob};
use cadre_actors::protocol::{
    Assign, Backpressure, Finished, GpuDevice, GpuHealth, Kill, KillReason, ProgressAck,
    ProgressFlush, Register, Renew, RenewReply, SchedulerLink, Started, TaskEnd, WorkerLink,
};
use cadre_actors::sched::{Grant, PlacerConfig, WorkerCapacity};
use cadre_actors::scheduler::{
    CloseStore, GetJob, HealthLink, Janitor, JobView, Retention, Scheduler, SchedulerConfig, Submit,
};
use cadre_actors::store::StoreOptions;
use cadre_actors::worker::{Resolver, Worker, WorkerConfig};
use cadre_actors::workload::{Run, WorkloadError};
use cadre_actors::{Error, FencingToken, JobId, WorkerId};
use cadre_cpu::launcher::Launcher;
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_supervisor::{SupervisedContext, SupervisorRef, SupervisorSpec, WorkerSpec};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;
use tokio::time::{sleep, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

// ---------------------------------------------------------------------------------------------
// Harness: a paused-clock actix System, captured events, a per-test metrics recorder.
// ---------------------------------------------------------------------------------------------

/// One event's fields (`message` included) rendered to strings.
pub type FieldMap = BTreeMap<String, String>;

/// Every event of a test, as its level and fields.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<(Level, FieldMap)>>>);

pub struct Fields<'a>(&'a mut BTreeMap<String, String>);

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
    pub fn with(&self, level: Level, message: &str) -> Vec<FieldMap> {
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
pub struct Obs {
    pub events: Events,
    pub metrics: Snapshotter,
}

impl Obs {
    /// The value of counter `name` summed over the label sets that carry `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
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
pub fn run<F, Fut>(f: F) -> Obs
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

pub fn workload_spec(name: &str, params: serde_json::Value) -> JobSpec {
    let mut spec = JobSpec::new(
        name,
        JobKind::Workload(WorkloadJob {
            name: "test".to_owned(),
            params,
        }),
    );
    spec.resources = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 20,
        gpus: 0,
    };
    spec
}

// ---------------------------------------------------------------------------------------------
// Worker against a fake scheduler
// ---------------------------------------------------------------------------------------------

pub const TTL: Duration = Duration::from_secs(1);
pub const RENEW_EVERY: Duration = Duration::from_millis(100);
pub const PROGRESS_EVERY: Duration = Duration::from_millis(50);
pub const FENCE_MARGIN: Duration = Duration::from_millis(200);
pub const TERM_GRACE: Duration = Duration::from_millis(500);

/// How the fake scheduler answers renewals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewMode {
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
pub enum AckMode {
    Level(Backpressure),
    /// With the flush's sequence number plus one.
    Malformed,
}

pub struct Script {
    pub renew: RenewMode,
    pub refuse: BTreeSet<FencingToken>,
    pub ack: AckMode,
    pub refuse_started: bool,
}

/// What the fake scheduler received.
#[derive(Default)]
pub struct Received {
    pub registers: Vec<String>,
    pub renews: Vec<Renew>,
    /// When each renewal arrived and how it was to be answered.
    pub renew_log: Vec<(Instant, RenewMode)>,
    pub started: Vec<Started>,
    pub finished: Vec<Finished>,
    pub finished_at: Vec<Instant>,
    pub flushes: Vec<ProgressFlush>,
}

/// A scheduler stand-in that records what a worker sends and answers per its script.
#[derive(Clone)]
pub struct FakeScheduler {
    pub script: Arc<Mutex<Script>>,
    pub got: Arc<Mutex<Received>>,
}

impl FakeScheduler {
    pub fn new() -> FakeScheduler {
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
    pub fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }
    pub fn got(&self) -> MutexGuard<'_, Received> {
        lock(&self.got)
    }
    pub fn finished(&self) -> Vec<(FencingToken, TaskEnd)> {
        self.got()
            .finished
            .iter()
            .map(|f| (f.token, f.end.clone()))
            .collect()
    }
    pub fn flushes(&self) -> usize {
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

pub fn fake_link(addr: &Addr<FakeScheduler>, target: &str) -> SchedulerLink {
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
pub struct WorkloadSeen {
    pub runs: Vec<JobId>,
    pub cancelled: Vec<JobId>,
    /// The GPUs each run was given (`Run::gpus`), in run order.
    pub gpus: Vec<(JobId, Vec<GpuDevice>)>,
}

/// A workload that reports progress every `params.every_ms` (10 by default) and returns
/// `{"steps": n}` after `params.steps` reports, or runs until its cancel signal is raised.
#[derive(Clone, Default)]
pub struct TestWorkload {
    pub seen: Arc<Mutex<WorkloadSeen>>,
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
pub fn worker_spec(
    resolve: Resolver,
    workload: Recipient<Run>,
    log_dir: &Path,
) -> WorkerSpec<Worker> {
    let config = worker_config(resolve, workload, log_dir, Vec::new());
    WorkerSpec::new("worker", move || Worker::new(Arc::clone(&config))).mailbox_capacity(1024)
}

/// The test worker's settings, owning `gpus` (its capacity offers their indices).
pub fn worker_config(
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
        cgroups: None,
        max_pids: None,
        scratch_dir: log_dir.join("scratch"),
        base_env: vec![(
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned()),
        )],
        log_cap: None,
    })
}

pub struct WorkerRig {
    pub worker: Addr<Worker>,
    /// The scheduler the resolver returns first.
    pub fake: FakeScheduler,
    /// The scheduler the resolver returns from its second call on, when asked to switch.
    pub alt: FakeScheduler,
    pub workload: Arc<Mutex<WorkloadSeen>>,
    pub resolves: Arc<AtomicUsize>,
    pub root: SupervisorRef,
    /// The worker's settings (where its logs go).
    pub config: Arc<WorkerConfig>,
    pub _logs: Scratch,
}

impl WorkerRig {
    /// Starts a tree with the fake schedulers, the test workload and a worker, and waits until
    /// the worker has registered.
    pub async fn start(switch_on_resolve: bool) -> WorkerRig {
        WorkerRig::start_with(switch_on_resolve, Vec::new()).await
    }

    /// As [`WorkerRig::start`], with a worker that owns `gpus`.
    pub async fn start_with(switch_on_resolve: bool, gpus: Vec<GpuDevice>) -> WorkerRig {
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
    pub async fn assign(&self, job: u64, token: u64, params: serde_json::Value) {
        self.assign_spec(job, token, workload_spec("job", params))
            .await;
    }

    pub async fn assign_spec(&self, job: u64, token: u64, spec: JobSpec) {
        self.assign_gpus(job, token, spec, Vec::new()).await;
    }

    /// Assigns task 0 of `job` under `token`, its grant naming the GPU indices `gpus`.
    pub async fn assign_gpus(&self, job: u64, token: u64, spec: JobSpec, gpus: Vec<u32>) {
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

    pub fn cancelled(&self) -> Vec<JobId> {
        lock(&self.workload).cancelled.clone()
    }

    pub async fn stop(self) {
        self.root.stop().await.unwrap();
    }
}

pub fn forever() -> serde_json::Value {
    json!({ "every_ms": 10 })
}

pub const LEASE_LOST: TaskEnd = TaskEnd::Killed {
    reason: KillReason::LeaseLost,
};

// ---------------------------------------------------------------------------------------------
// Scheduler with a real journal, driven by fake workers
// ---------------------------------------------------------------------------------------------

/// What a fake worker received.
#[derive(Default)]
pub struct WorkerGot {
    pub assigns: Vec<Assign>,
    pub kills: Vec<Kill>,
    /// Both, in the order they came: `assign <token>`, `kill <token>`.
    pub order: Vec<String>,
}

/// A worker stand-in that records assignments and kills.
#[derive(Clone, Default)]
pub struct FakeWorker {
    pub got: Arc<Mutex<WorkerGot>>,
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
    pub fn assigns(&self) -> Vec<Assign> {
        lock(&self.got).assigns.clone()
    }
    pub fn kills(&self) -> Vec<(JobId, FencingToken, KillReason)> {
        lock(&self.got)
            .kills
            .iter()
            .map(|k| (k.job, k.token, k.reason))
            .collect()
    }
}

/// How a [`SchedRig`] differs from the default node.
#[derive(Default)]
pub struct RigOptions {
    /// Why the node has no GPUs, if it has none.
    pub gpus_absent: Option<String>,
    /// With a health monitor child named `health`.
    pub with_health: bool,
    /// The retention policy.
    pub retention: Retention,
    /// Who cleans up after pruned jobs.
    pub janitor: Option<Janitor>,
}

pub struct SchedRig {
    pub sched: Addr<Scheduler>,
    pub workers: Vec<(FakeWorker, Addr<FakeWorker>)>,
    pub root: SupervisorRef,
    pub _journal: Scratch,
}

impl SchedRig {
    pub async fn start(ttl: Duration, fakes: usize) -> SchedRig {
        SchedRig::start_with(ttl, fakes, None).await
    }

    /// As [`SchedRig::start`], on a node that has no GPUs for the reason `gpus_absent`.
    pub async fn start_with(ttl: Duration, fakes: usize, gpus_absent: Option<String>) -> SchedRig {
        SchedRig::start_in(Scratch::new("journal"), ttl, fakes, gpus_absent).await
    }

    /// As [`SchedRig::start_with`], on the journal already in `journal`.
    pub async fn start_in(
        journal: Scratch,
        ttl: Duration,
        fakes: usize,
        gpus_absent: Option<String>,
    ) -> SchedRig {
        let options = RigOptions {
            gpus_absent,
            ..RigOptions::default()
        };
        SchedRig::start_full(journal, ttl, fakes, options).await
    }

    /// As [`SchedRig::start`], with a health monitor child named `health` (heartbeats every
    /// 100 ms), linked both ways as on a node.
    pub async fn start_with_health(ttl: Duration) -> SchedRig {
        let options = RigOptions {
            with_health: true,
            ..RigOptions::default()
        };
        SchedRig::start_full(Scratch::new("journal"), ttl, 0, options).await
    }

    /// As [`SchedRig::start_in`], with `options`.
    pub async fn start_full(
        journal: Scratch,
        ttl: Duration,
        fakes: usize,
        options: RigOptions,
    ) -> SchedRig {
        let RigOptions {
            gpus_absent,
            with_health,
            retention,
            janitor,
        } = options;
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
            retention,
            janitor,
            registration_grace: Duration::ZERO,
        });
        let sc = Arc::clone(&config);
        let sched_spec = WorkerSpec::new("scheduler", move || Scheduler::new(Arc::clone(&sc)))
            .mailbox_capacity(1024);
        let sched = sched_spec.addr();
        let mut tree = SupervisorSpec::one_for_one().child(sched_spec);
        if with_health {
            let beat = ms(100);
            let health_config = HealthConfig {
                dead: sched.clone().recipient(),
                stalled: sched.clone().recipient(),
                expected_interval: beat,
                check_every: beat / 2,
                threshold: 8.0,
                window: 100,
                min_std: beat / 4,
                acceptable_pause: beat,
                resend: Some(sched.clone().recipient()),
            };
            let health_spec =
                WorkerSpec::new("health", move || HealthMonitor::new(health_config.clone()))
                    .mailbox_capacity(1024);
            let health = health_spec.addr();
            let link = HealthLink {
                watch: health.clone().recipient(),
                unwatch: health.clone().recipient(),
                progressed: health.clone().recipient(),
                forget: health.recipient(),
            };
            assert!(config.health.set(link).is_ok());
            tree = tree.child(health_spec);
        }
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

    pub fn fake(&self, i: usize) -> &FakeWorker {
        &self.workers[i].0
    }

    /// Registers fake worker `i` with `cpu_millis` of CPU.
    pub async fn register(&self, i: usize, cpu_millis: u64) -> WorkerId {
        self.register_gpus(i, cpu_millis, Vec::new()).await
    }

    /// Registers fake worker `i` with `cpu_millis` of CPU and the GPU indices `gpus`.
    pub async fn register_gpus(&self, i: usize, cpu_millis: u64, gpus: Vec<u32>) -> WorkerId {
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
    pub async fn gpu_health(
        &self,
        worker_path: &str,
        index: u32,
        healthy: bool,
    ) -> Result<(), Error> {
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

    pub async fn submit(&self, specs: Vec<JobSpec>) -> Vec<JobId> {
        self.sched.send(Submit { specs }).await.unwrap().unwrap()
    }

    pub async fn view(&self, job: JobId) -> JobView {
        self.sched.send(GetJob(job)).await.unwrap().unwrap()
    }

    pub async fn until_state(&self, job: JobId, state: JobState) -> JobView {
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

    pub async fn until_assigns(&self, i: usize, n: usize) -> Vec<Assign> {
        let fake = self.fake(i).clone();
        until(
            &format!("{n} assignments to fake worker {i}"),
            Duration::from_secs(5),
            || fake.assigns().len() >= n,
        )
        .await;
        fake.assigns()
    }

    pub async fn started(&self, worker: WorkerId, a: &Assign) -> Result<(), Error> {
        self.sched
            .send(Started {
                worker,
                job: a.job,
                token: a.token,
            })
            .await
            .unwrap()
    }

    pub async fn finished(
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
                output: None,
            })
            .await
            .unwrap()
    }

    /// Starts the test workload and a real worker linked to this scheduler; returns what the
    /// workload sees and the worker's log directory.
    pub async fn add_real_worker(&self) -> (Arc<Mutex<WorkloadSeen>>, Scratch) {
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

    pub async fn stop(self) {
        self.sched.send(CloseStore).await.unwrap();
        self.root.stop().await.unwrap();
    }
}

/// The name fake worker `i` registers under (its actor path).
pub fn fake_worker_path(i: usize) -> String {
    format!("test/fake-worker-{i}")
}

/// A job of one task that needs `gpus` whole GPUs, no retries.
pub fn gpu_job(name: &str, gpus: u32) -> JobSpec {
    let mut spec = sched_job(name, 0);
    spec.resources.gpus = gpus;
    spec
}

/// A job whose lost attempts are run again `requeues` times.
pub fn sched_job(name: &str, requeues: u32) -> JobSpec {
    let mut spec = workload_spec(name, json!({}));
    spec.max_requeues = requeues;
    spec
}

pub const LONG_TTL: Duration = Duration::from_secs(60);
