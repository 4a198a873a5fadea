//! A real worker against fake schedulers: the test settings (`TTL`, `RENEW_EVERY`,
//! `PROGRESS_EVERY`, `FENCE_MARGIN`, `TERM_GRACE`), a worker's config and child spec
//! (`worker_config`, `worker_spec`), and `WorkerRig`, a tree of two fake schedulers, the test
//! workload and a worker, with assignments sent in.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::job::JobSpec;
use cadre_actors::protocol::{Assign, GpuDevice};
use cadre_actors::sched::{Grant, WorkerCapacity};
use cadre_actors::worker::{Resolver, Worker, WorkerConfig};
use cadre_actors::workload::Run;
use cadre_actors::{FencingToken, JobId, WorkerId, WorkerIdentity};
use cadre_cpu::launcher::Launcher;
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_supervisor::{SupervisorRef, SupervisorSpec, WorkerSpec};
use tokio::time::sleep;

use super::fake_scheduler::{fake_link, FakeScheduler};
use super::harness::{lock, ms, until, Scratch};
use super::specs::workload_spec;
use super::test_workload::{TestWorkload, WorkloadSeen};

pub const TTL: Duration = Duration::from_secs(1);
pub const RENEW_EVERY: Duration = Duration::from_millis(100);
pub const PROGRESS_EVERY: Duration = Duration::from_millis(50);
pub const FENCE_MARGIN: Duration = Duration::from_millis(200);
pub const TERM_GRACE: Duration = Duration::from_millis(500);

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
        identity: WorkerIdentity::new("test-node", "worker"),
        datacenter: "dc1".to_owned(),
        labels: Default::default(),
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
