//! A real scheduler on a real journal, driven by fake workers: `SchedRig` (with `RigOptions`:
//! no GPUs, a health monitor, retention, a janitor) registers them, submits jobs, reports starts
//! and ends, waits for states and assignments, and can add a real worker; `fake_worker`
//! and `LONG_TTL`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::health::{HealthConfig, HealthMonitor};
use cadre_actors::job::{JobSpec, JobState};
use cadre_actors::protocol::{Assign, Finished, GpuHealth, Register, Started, TaskEnd, WorkerLink};
use cadre_actors::sched::{PlacerConfig, WorkerCapacity};
use cadre_actors::scheduler::{
    CloseStore, GetJob, HealthLink, Janitor, JobView, Retention, Scheduler, SchedulerConfig, Submit,
};
use cadre_actors::store::StoreOptions;
use cadre_actors::worker::Resolver;
use cadre_actors::{Error, FencingToken, JobId, WorkerId, WorkerIdentity};
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_supervisor::{SupervisorRef, SupervisorSpec, WorkerSpec};
use tokio::time::{sleep, Instant};

use super::fake_worker::FakeWorker;
use super::harness::{ms, until, Scratch};
use super::test_workload::{TestWorkload, WorkloadSeen};
use super::worker_rig::worker_spec;

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
                forget: health.clone().recipient(),
                registered: health.recipient(),
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
        self.register_as(i, fake_worker(i), cpu_millis, gpus).await
    }

    /// Registers fake worker `i` under `identity`.
    pub async fn register_as(
        &self,
        i: usize,
        identity: WorkerIdentity,
        cpu_millis: u64,
        gpus: Vec<u32>,
    ) -> WorkerId {
        let addr = &self.workers[i].1;
        self.sched
            .send(Register {
                identity,
                datacenter: "dc1".to_owned(),
                labels: Default::default(),
                capacity: WorkerCapacity {
                    cpu_millis,
                    memory_bytes: 1 << 30,
                    gpus,
                },
                link: WorkerLink {
                    assign: addr.clone().recipient(),
                    kill: addr.clone().recipient(),
                },
                address: None,
            })
            .await
            .unwrap()
            .unwrap()
    }

    /// Tells the scheduler that GPU `index` of the worker registered as `worker` is healthy or
    /// not, as the GPU monitor does.
    pub async fn gpu_health(
        &self,
        worker: &WorkerIdentity,
        index: u32,
        healthy: bool,
    ) -> Result<(), Error> {
        self.sched
            .send(GpuHealth {
                worker: worker.clone(),
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

/// The identity fake worker `i` registers under.
pub fn fake_worker(i: usize) -> WorkerIdentity {
    WorkerIdentity::new("test", format!("fake-worker-{i}"))
}

pub const LONG_TTL: Duration = Duration::from_secs(60);
