//! What a worker needs ([`WorkerConfig`], shared by every instance the supervisor creates), the
//! paths it derives for a task (logs, scratch), and its process-ledger updates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use cadre_cpu::cgroup::Cgroups;
use cadre_cpu::launcher::Launcher;
use cadre_cpu::ledger::{ProcessLedger, StartWindow};

use super::Resolver;
use crate::job::JobId;
use crate::metrics as m;
use crate::protocol::{GpuDevice, Heartbeat};
use crate::sched::WorkerCapacity;
use crate::workload::Run;

/// What a worker needs; shared by every instance the supervisor creates.
pub struct WorkerConfig {
    /// Who the worker is (its node's name and its own): what it registers under, so a restarted
    /// worker replaces its earlier registration and a worker of another node does not.
    pub identity: crate::ids::WorkerIdentity,
    /// Its node's datacenter, for the scheduler's view of the nodes.
    pub datacenter: String,
    /// Its node's labels.
    pub labels: BTreeMap<String, String>,
    /// What it offers the scheduler. Its `gpus` are the indices of [`WorkerConfig::gpus`].
    pub capacity: WorkerCapacity,
    /// The GPUs it owns, whole devices (empty on a machine without any).
    pub gpus: Vec<GpuDevice>,
    /// Spawns command jobs.
    pub launcher: Launcher,
    /// Where job output goes: `<job>.<task>.out` and `.err`.
    pub log_dir: PathBuf,
    /// Finds the scheduler.
    pub resolve: Resolver,
    /// The health monitor, if heartbeats go to one.
    pub health: Option<Recipient<Heartbeat>>,
    /// The workload kinds extensions registered, by name.
    pub workloads: BTreeMap<String, Recipient<Run>>,
    /// How often leases are renewed and heartbeats sent.
    pub renew_every: Duration,
    /// The base interval of progress flushes.
    pub progress_every: Duration,
    /// How long before its lease would lapse a task is killed when renewals fail.
    pub fence_margin: Duration,
    /// Grace between `SIGTERM` and `SIGKILL` when a task is stopped (and for a workload to
    /// notice its cancel signal).
    pub term_grace: Duration,
    /// The record of running process groups, swept when the node starts (see
    /// [`cadre_cpu::ledger`]); `None` runs without one.
    pub ledger: Option<Mutex<ProcessLedger>>,
    /// The node's cgroup parent: each command task runs in a group of its own below it, with
    /// its CPU and memory as limits. `None` where cgroups are unavailable (the node said why
    /// once): tasks then run in process groups only.
    pub cgroups: Option<Cgroups>,
    /// The most processes (and threads) one command task may have, through its cgroup.
    pub max_pids: Option<u64>,
    /// Where a command task without a `workdir` runs: `<scratch_dir>/<job>.<task>`, created
    /// when it starts, removed when the job is pruned.
    pub scratch_dir: PathBuf,
    /// The environment every command job starts from (`PATH`, `HOME`, `LANG`), unless it asks
    /// to inherit the node's (`inherit_env`).
    pub base_env: Vec<(String, String)>,
    /// The most bytes kept of each output stream of a command task (head and tail; the middle
    /// is dropped with a marker); `None` keeps everything.
    pub log_cap: Option<u64>,
}

/// The stdout and stderr log paths of task `task` of `job` in `log_dir`.
pub fn task_log_paths(log_dir: &std::path::Path, job: JobId, task: u32) -> (PathBuf, PathBuf) {
    (
        log_dir.join(format!("{job}.{task}.out")),
        log_dir.join(format!("{job}.{task}.err")),
    )
}

/// A change to the process ledger (see [`WorkerConfig::ledger`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum LedgerChange {
    /// A group was spawned; its leader started within the window, where the launcher read one
    /// (else its start time is read from `/proc`).
    Spawned(Option<StartWindow>),
    /// The group was reaped.
    Reaped,
}

impl WorkerConfig {
    /// Records a spawned group in the process ledger, or forgets a reaped one; a failure is
    /// logged and counted.
    pub(super) fn ledger(&self, job: JobId, pgid: i32, change: LedgerChange) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let mut ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match change {
            LedgerChange::Spawned(Some(window)) => ledger.record_window(pgid, window),
            LedgerChange::Spawned(None) => ledger.record(pgid),
            LedgerChange::Reaped => ledger.forget(pgid),
        };
        if let Err(error) = result {
            tracing::error!(job = %job, pgid, %error,
                "process ledger not updated: a node crash may leave this group running");
            metrics::counter!(m::WORKER_ERRORS, "kind" => "ledger").increment(1);
        }
    }

    /// The stdout and stderr log paths of a task.
    pub fn log_paths(&self, job: JobId, task: u32) -> (PathBuf, PathBuf) {
        task_log_paths(&self.log_dir, job, task)
    }

    /// The scratch directory of a task (its working directory unless its spec names one).
    pub fn scratch_path(&self, job: JobId, task: u32) -> PathBuf {
        self.scratch_dir.join(format!("{job}.{task}"))
    }
}
