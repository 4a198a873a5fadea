//! Placement: which queued job runs next, and where. The pure core of the `Scheduler` actor: no
//! messages, no I/O, time passed in, so every decision can be replayed and tested on its own.
//!
//! A decision walks the queue in order (priority with aging, see [`queue`]) and reserves the
//! first job that fits (see [`capacity`]). Jobs behind one that does not fit may go first
//! (backfill), up to `backfill_depth` jobs per decision, so a large job at the head does not
//! idle the node. So that backfill cannot starve that large job, once the head has waited
//! `reserve_head_after` nothing passes it any more and capacity drains toward it (the head
//! reservation of Slurm's backfill, without runtime estimates). A job that no registered worker
//! could ever hold is parked with its reason (shown by `cadre status`) rather than blocking the
//! queue, and rejoins it, keeping its age, when capacity arrives.

pub mod capacity;
pub mod queue;

use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use capacity::{CapacitySummary, CapacityTable, Grant, WorkerCapacity, WorkerFree};
pub use queue::{JobQueue, QueuedJob};

use crate::error::Error;
use crate::ids::WorkerId;
use crate::job::{JobId, Resources};
use crate::metrics as m;

/// How the scheduler orders and places jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacerConfig {
    /// Waiting this long raises a job's effective priority by one point (`None`: strict
    /// priority). Default 1 s: a priority -1000 job overtakes a newly submitted priority 1000 job
    /// after about 33 minutes.
    pub aging: Option<Duration>,
    /// How many queued jobs one decision examines at most. Default 64.
    pub backfill_depth: usize,
    /// After the head of the queue has waited this long without fitting, no job behind it is
    /// placed before it (`None`: always backfill). Default 60 s.
    pub reserve_head_after: Option<Duration>,
}

impl Default for PlacerConfig {
    fn default() -> PlacerConfig {
        PlacerConfig {
            aging: Some(Duration::from_secs(1)),
            backfill_depth: 64,
            reserve_head_after: Some(Duration::from_secs(60)),
        }
    }
}

/// A decision: the job and its reservation, one grant per task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The job placed.
    pub job: JobId,
    /// Where each task runs and what it holds.
    pub grants: Vec<Grant>,
}

/// Why a job has not started yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Waiting {
    /// In the queue, `position` jobs ahead of it.
    Queued {
        /// Jobs ahead of it.
        position: usize,
    },
    /// No registered worker could ever hold it; it waits for capacity to be added.
    Unplaceable {
        /// What it needs against what there is.
        reason: String,
    },
    /// Its last attempt failed and it runs again once its backoff is over.
    Retry {
        /// The earliest it may be placed, in milliseconds since the Unix epoch.
        not_before_ms: u64,
        /// Attempts failed so far.
        failures: u32,
    },
}

/// The queue, the capacity table and the decision rule over them.
#[derive(Debug)]
pub struct Placer {
    config: PlacerConfig,
    queue: JobQueue,
    capacity: CapacityTable,
    parked: FxHashMap<JobId, (QueuedJob, String)>,
    /// Jobs parked and jobs that rejoined since the last [`Placer::report`], for one log line
    /// per pass instead of one per job.
    parked_since: Tally,
    rejoined_since: Tally,
    /// `cadre_scheduler_queue_depth` and `cadre_scheduler_decision_seconds`, looked up once:
    /// they change on every decision.
    depth: metrics::Gauge,
    decisions: metrics::Histogram,
}

/// A count of jobs with the first few of them, for a log line.
#[derive(Debug, Default)]
struct Tally {
    count: usize,
    first: Vec<JobId>,
    reason: Option<String>,
}

impl Tally {
    const SHOWN: usize = 5;

    fn add(&mut self, job: JobId, reason: Option<&str>) {
        self.count += 1;
        if self.first.len() < Self::SHOWN {
            self.first.push(job);
        }
        if self.reason.is_none() {
            self.reason = reason.map(str::to_owned);
        }
    }

    fn take(&mut self) -> Option<Tally> {
        (self.count > 0).then(|| std::mem::take(self))
    }

    /// The first ids, `1, 2, 3` (with `...` when there are more).
    fn ids(&self) -> String {
        let mut text = self
            .first
            .iter()
            .map(JobId::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if self.count > self.first.len() {
            text.push_str(", ...");
        }
        text
    }
}

/// Whether `a` needs at least as much as `b` in every dimension (then `a` cannot fit where `b`
/// did not).
fn dominates(a: &Resources, b: &Resources) -> bool {
    a.cpu_millis >= b.cpu_millis && a.memory_bytes >= b.memory_bytes && a.gpus >= b.gpus
}

impl Placer {
    /// An empty placer; `epoch` anchors the queue's aging (see [`JobQueue::new`]).
    pub fn new(config: PlacerConfig, epoch: Instant) -> Placer {
        Placer {
            config,
            queue: JobQueue::new(config.aging, epoch),
            capacity: CapacityTable::new(),
            parked: FxHashMap::default(),
            parked_since: Tally::default(),
            rejoined_since: Tally::default(),
            depth: metrics::gauge!(m::QUEUE_DEPTH),
            decisions: metrics::histogram!(m::DECISION_SECONDS),
        }
    }

    /// The capacity table, read-only.
    pub fn capacity(&self) -> &CapacityTable {
        &self.capacity
    }

    /// The queue, read-only.
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// Registers a worker; parked jobs it could hold rejoin the queue.
    pub fn add_worker(&mut self, worker: WorkerId, capacity: &WorkerCapacity) -> Result<(), Error> {
        self.capacity.add_worker(worker, capacity)?;
        self.unpark();
        Ok(())
    }

    /// Removes a worker; returns the jobs that held resources on it (now released), for the
    /// caller to mark lost.
    pub fn remove_worker(&mut self, worker: WorkerId) -> Result<Vec<JobId>, Error> {
        self.capacity.remove_worker(worker)
    }

    /// Drains a worker (no new work) or opens it again.
    pub fn set_accepting(&mut self, worker: WorkerId, accepting: bool) -> Result<(), Error> {
        self.capacity.set_accepting(worker, accepting)?;
        if accepting {
            self.unpark();
        }
        Ok(())
    }

    /// Whether a GPU is marked healthy.
    pub fn gpu_healthy(&self, worker: WorkerId, index: u32) -> Result<bool, Error> {
        self.capacity.gpu_healthy(worker, index)
    }

    /// Marks a GPU healthy or not; returns the job holding it, if any.
    pub fn set_gpu_health(
        &mut self,
        worker: WorkerId,
        index: u32,
        healthy: bool,
    ) -> Result<Option<JobId>, Error> {
        let holder = self.capacity.set_gpu_health(worker, index, healthy)?;
        if healthy {
            self.unpark();
        }
        Ok(holder)
    }

    fn unpark(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let mut ready: Vec<JobId> = self
            .parked
            .iter()
            .filter(|(_, (q, _))| self.capacity.never_fits(&q.resources, q.gang).is_none())
            .map(|(job, _)| *job)
            .collect();
        // Id order, so jobs that rejoin together keep a deterministic order among equals.
        ready.sort_unstable();
        for job in ready {
            if let Some((q, _)) = self.parked.remove(&job) {
                self.rejoined_since.add(job, None);
                self.queue.push(q);
            }
        }
        self.update_depth();
    }

    /// Adds a job to the queue. `false` if it is already queued or parked, or still holds a
    /// reservation (a job is queued again only after its last attempt released everything; the
    /// refusal is an error event, since it means a caller skipped a release).
    pub fn enqueue(&mut self, job: QueuedJob) -> bool {
        if self.parked.contains_key(&job.job) {
            return false;
        }
        if self.capacity.reservation(job.job).is_some() {
            tracing::error!(job = %job.job, "job queued while it still holds a reservation: refused");
            metrics::counter!(m::CAPACITY_REFUSALS, "reason" => "queued_while_reserved")
                .increment(1);
            return false;
        }
        let added = self.queue.push(job);
        self.update_depth();
        added
    }

    /// Takes a job out of the queue (cancelled before it was placed). `false` if it was
    /// neither queued nor parked.
    pub fn cancel(&mut self, job: JobId) -> bool {
        let removed = self.queue.remove(job).is_some() || self.parked.remove(&job).is_some();
        self.update_depth();
        removed
    }

    /// Gives back what a job holds (it ended, one way or another). `None` if it holds nothing.
    pub fn release(&mut self, job: JobId) -> Option<Vec<Grant>> {
        self.capacity.release(job)
    }

    /// Why a job waits, if it does.
    pub fn waiting(&self, job: JobId) -> Option<Waiting> {
        if let Some((_, reason)) = self.parked.get(&job) {
            return Some(Waiting::Unplaceable {
                reason: reason.clone(),
            });
        }
        self.queue
            .position(job)
            .map(|position| Waiting::Queued { position })
    }

    /// Logs, in one line each, the jobs parked and the jobs that rejoined the queue since the
    /// last call (the scheduler calls it once per pass): a count and the first few ids, never
    /// a line per job (a node starting with a million queued jobs would write two million).
    pub fn report(&mut self) {
        if let Some(t) = self.parked_since.take() {
            tracing::warn!(jobs = t.count, first = %t.ids(), reason = t.reason.as_deref().unwrap_or(""),
                total_parked = self.parked.len(), "jobs parked: no registered worker can hold them");
        }
        if let Some(t) = self.rejoined_since.take() {
            tracing::info!(jobs = t.count, first = %t.ids(), "capacity arrived: parked jobs rejoin the queue");
        }
    }

    /// Jobs waiting, parked ones included.
    pub fn waiting_len(&self) -> usize {
        self.queue.len() + self.parked.len()
    }

    fn update_depth(&self) {
        self.depth
            .set((self.queue.len() + self.parked.len()) as f64);
    }

    /// One scheduling decision (see the module comment): the job to start next with its
    /// reservation, already booked and out of the queue, or `None` when nothing that may go now
    /// fits. Records the decision's duration in `cadre_scheduler_decision_seconds`.
    pub fn decide(&mut self, now: Instant) -> Option<Placement> {
        let started = Instant::now();
        let placement = self.decide_inner(now);
        self.decisions.record(started.elapsed().as_secs_f64());
        placement
    }

    fn decide_inner(&mut self, now: Instant) -> Option<Placement> {
        let mut failed: Vec<Resources> = Vec::new();
        let mut to_park: Vec<(JobId, String)> = Vec::new();
        let mut examined = 0usize;
        let mut head_seen = false;
        let mut chosen: Option<Placement> = None;
        for q in self.queue.iter() {
            if examined >= self.config.backfill_depth {
                break;
            }
            examined += 1;
            let is_head = !head_seen;
            if q.gang <= 1 && failed.iter().any(|f| dominates(&q.resources, f)) {
                head_seen = true;
                continue;
            }
            match self.capacity.reserve(q.job, &q.resources, q.gang) {
                Ok(Some(grants)) => {
                    chosen = Some(Placement { job: q.job, grants });
                    break;
                }
                Ok(None) => {
                    if let Some(reason) = self.capacity.never_fits(&q.resources, q.gang) {
                        to_park.push((q.job, reason));
                        examined -= 1;
                        continue;
                    }
                    head_seen = true;
                    if is_head {
                        if let Some(limit) = self.config.reserve_head_after {
                            if now.saturating_duration_since(q.enqueued_at) >= limit {
                                break;
                            }
                        }
                    }
                    if q.gang <= 1 {
                        failed.push(q.resources);
                    }
                }
                Err(err) => {
                    // Reported (error event, counter) once, by the capacity table: a queued job
                    // holding a reservation (which `enqueue` refuses, so a bookkeeping bug) is
                    // skipped, never booked twice.
                    tracing::debug!(job = %q.job, error = %err, "queued job skipped");
                    head_seen = true;
                }
            }
        }
        for (job, reason) in to_park {
            if let Some(q) = self.queue.remove(job) {
                self.parked_since.add(job, Some(&reason));
                self.parked.insert(job, (q, reason));
            }
        }
        if let Some(p) = &chosen {
            self.queue.remove(p.job);
        }
        self.update_depth();
        chosen
    }
}
