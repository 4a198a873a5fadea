//! The scheduler's queue: highest priority first, FIFO within a priority, with linear aging so a
//! low-priority job never starves.
//!
//! Aging raises a waiting job's effective priority by one point per `aging` period. Because
//! every job ages at the same rate, the order between two jobs never changes while both wait,
//! so the effective priority needs no periodic rescoring: it is the static rank
//! `priority * aging - enqueued_at`, fixed when the job is pushed. A `BTreeMap` keyed by
//! `(rank, sequence)` then gives the next job in O(log n) and a cancel in O(log n), with no
//! timer and no full scan, at any queue length.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::time::Instant;

use crate::job::{JobId, Resources};

/// A job waiting for resources, as the scheduler sees it: what it needs, not what it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedJob {
    /// The job.
    pub job: JobId,
    /// Its priority, -1000 ..= 1000.
    pub priority: i16,
    /// What each of its tasks needs.
    pub resources: Resources,
    /// How many tasks must start together.
    pub gang: u32,
    /// When it joined the queue (its age is counted from here).
    pub enqueued_at: Instant,
}

/// Where a job sits in the queue: larger rank first, then earlier `enqueued_at` (so a job that
/// leaves and rejoins, as a parked one does, keeps its place among equals even without aging),
/// then lower sequence (earlier push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    rank: Reverse<i64>,
    enqueued_at: Instant,
    seq: u64,
}

/// The priority queue with aging. See the module comment for why the order is static.
#[derive(Debug)]
pub struct JobQueue {
    order: BTreeMap<Slot, QueuedJob>,
    index: FxHashMap<JobId, Slot>,
    next_seq: u64,
    epoch: Instant,
    aging_ms: Option<i64>,
}

/// Milliseconds of waiting worth one priority point at most: beyond ~11.5 days per point aging
/// is off in all but name, and the bound keeps `priority * aging` far from overflow.
const MAX_AGING_MS: i64 = 1_000_000_000;

impl JobQueue {
    /// An empty queue. `aging`: how long a job waits to gain one priority point (`None`: strict
    /// priority, FIFO within it; a low-priority job then waits as long as higher ones keep
    /// coming). `epoch`: the instant ranks are measured from (any instant at or before the first
    /// push; earlier pushes are still ordered correctly).
    pub fn new(aging: Option<Duration>, epoch: Instant) -> JobQueue {
        let aging_ms = aging.map(|d| (d.as_millis().min(MAX_AGING_MS as u128) as i64).max(1));
        JobQueue {
            order: BTreeMap::new(),
            index: FxHashMap::default(),
            next_seq: 0,
            epoch,
            aging_ms,
        }
    }

    fn rank(&self, priority: i16, enqueued_at: Instant) -> i64 {
        match self.aging_ms {
            None => i64::from(priority),
            Some(aging_ms) => {
                let waited_ms = if enqueued_at >= self.epoch {
                    -(enqueued_at
                        .duration_since(self.epoch)
                        .as_millis()
                        .min(i64::MAX as u128 / 4) as i64)
                } else {
                    self.epoch
                        .duration_since(enqueued_at)
                        .as_millis()
                        .min(i64::MAX as u128 / 4) as i64
                };
                (i64::from(priority) * aging_ms).saturating_add(waited_ms)
            }
        }
    }

    /// Adds a job. Returns `false` (and changes nothing) if the job is already queued.
    pub fn push(&mut self, job: QueuedJob) -> bool {
        if self.index.contains_key(&job.job) {
            return false;
        }
        let slot = Slot {
            rank: Reverse(self.rank(job.priority, job.enqueued_at)),
            enqueued_at: job.enqueued_at,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.index.insert(job.job, slot);
        self.order.insert(slot, job);
        true
    }

    /// Removes a job (placed or cancelled); `None` if it was not queued.
    pub fn remove(&mut self, job: JobId) -> Option<QueuedJob> {
        let slot = self.index.remove(&job)?;
        self.order.remove(&slot)
    }

    /// The job that goes next.
    pub fn peek(&self) -> Option<&QueuedJob> {
        self.order.values().next()
    }

    /// The queue in order, first to go first.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedJob> {
        self.order.values()
    }

    /// Whether the job is queued.
    pub fn contains(&self, job: JobId) -> bool {
        self.index.contains_key(&job)
    }

    /// The queued job, if it is.
    pub fn get(&self, job: JobId) -> Option<&QueuedJob> {
        self.index.get(&job).and_then(|slot| self.order.get(slot))
    }

    /// How many jobs wait.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The job's position (0 = next), by walking the queue: for status display, not hot paths.
    pub fn position(&self, job: JobId) -> Option<usize> {
        let slot = self.index.get(&job)?;
        Some(self.order.range(..*slot).count())
    }
}
