//! The job table and the records that change it: every change to a job is a [`Record`], checked
//! against the table and applied in one step, or refused with nothing changed.
//!
//! **Versions.** Journals and snapshots written before lost attempts and failures had budgets
//! of their own (version 0) meant by `max_retries` the number of lost attempts run again. A
//! [`Submission`] and a [`JobTable`] carry the version they were written in; version 0 specs
//! are migrated as they are read ([`JobSpec::migrate_from_v0`]), so replay gives every job the
//! budget it was accepted with.
//!
//! **Retention.** The table keeps an index of ended jobs in the order they ended, from which
//! [`JobTable::prunable`] picks the oldest beyond the retention policy; a
//! [`Record::Pruned`] removes them. Ids are handed out consecutively, so an id below
//! [`JobTable::next_id`] that is not in the table was pruned: no tombstone is kept.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ids::FencingToken;
use crate::job::{JobId, JobSpec, JobState, JobStatus};
use crate::sched::Grant;

/// The version of journal records and snapshots this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// How a finished attempt ended, as far as its worker could tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// A command's exit code.
    pub exit_code: Option<i32>,
    /// The signal that ended a command.
    pub signal: Option<i32>,
    /// What went wrong, for failures, timeouts and cancellations.
    pub error: Option<String>,
    /// A workload's result.
    pub result: Option<serde_json::Value>,
    /// What became of the attempt's output, when not all of it was kept.
    #[serde(default)]
    pub logs: Option<LogsNote>,
}

/// Output of an attempt that was not kept whole: over its cap, or not written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsNote {
    /// Bytes dropped by the per-stream cap (the head and the tail are kept), over all tasks
    /// and streams.
    pub dropped_bytes: u64,
    /// Why some output could not be written (a full disk), when it could not.
    pub write_error: Option<String>,
}

/// One accepted job in a [`Record::Submitted`] batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The id the store gave it.
    pub job: JobId,
    /// The validated spec.
    pub spec: JobSpec,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    /// The format the spec was written in ([`FORMAT_VERSION`]; 0 before versions).
    #[serde(default)]
    pub version: u32,
}

impl Submission {
    /// A submission written by this build.
    pub fn new(job: JobId, spec: JobSpec, submitted_ms: u64) -> Submission {
        Submission {
            job,
            spec,
            submitted_ms,
            version: FORMAT_VERSION,
        }
    }
}

/// A change to the job table, as journaled. New variants and fields go last (see the store's
/// module comment on the positional encoding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// Jobs accepted, in id order.
    Submitted {
        /// The jobs.
        jobs: Vec<Submission>,
    },
    /// An attempt got its reservation and leases (one token per task).
    Leased {
        /// The job.
        job: JobId,
        /// Its current attempt.
        attempt: u32,
        /// What each task holds where.
        grants: Vec<Grant>,
        /// The leases' fencing tokens, each above every token before.
        tokens: Vec<FencingToken>,
        /// The node each task runs on (where its logs are), by task; empty in records
        /// written before it was kept.
        #[serde(default)]
        nodes: Vec<String>,
    },
    /// The attempt started on its worker.
    Started {
        /// The job.
        job: JobId,
        /// Its current attempt.
        attempt: u32,
    },
    /// The job ended for good: succeeded, failed, cancelled or timed out.
    Ended {
        /// The job.
        job: JobId,
        /// Its current attempt.
        attempt: u32,
        /// The terminal state.
        state: JobState,
        /// How it ended.
        outcome: Outcome,
        /// When, in milliseconds since the Unix epoch (0 in records written before it was kept).
        #[serde(default)]
        ended_ms: u64,
    },
    /// The attempt was lost (worker died, lease expired, job stalled, node restarted): the job
    /// is queued for its next attempt, or failed when it may not be requeued.
    Lost {
        /// The job.
        job: JobId,
        /// The attempt that was lost.
        attempt: u32,
        /// Why.
        reason: String,
        /// When, in milliseconds since the Unix epoch (0 in records written before it was kept).
        #[serde(default)]
        at_ms: u64,
    },
    /// The attempt failed on its own (`state` says how) and the job has retries left: it is
    /// queued for its next attempt, not to be placed before `retry_at_ms`.
    Retry {
        /// The job.
        job: JobId,
        /// The attempt that failed.
        attempt: u32,
        /// How it failed: failed or timed out.
        state: JobState,
        /// How it ended.
        outcome: Outcome,
        /// The earliest the next attempt may be placed, in milliseconds since the Unix epoch.
        retry_at_ms: u64,
    },
    /// Ended jobs removed by the retention policy.
    Pruned {
        /// The jobs, each ended.
        jobs: Vec<JobId>,
    },
    /// An operator drained a node (`cadre drain`: its workers take no new work), or undrained
    /// it. Journaled so that a restarted scheduler keeps it drained.
    Drained {
        /// The node's name.
        node: String,
        /// Drained (true) or taking work again (false).
        drain: bool,
    },
}

impl Record {
    /// The jobs it is about, for log lines: a submission's ids are consecutive, so first and
    /// last name them all without collecting them on the hot path.
    pub(crate) fn jobs(&self) -> JobSpan {
        match self {
            Record::Submitted { jobs } => JobSpan {
                first: jobs.first().map(|s| s.job),
                last: jobs.last().map(|s| s.job),
            },
            Record::Pruned { jobs } => JobSpan {
                first: jobs.first().copied(),
                last: jobs.last().copied(),
            },
            Record::Drained { .. } => JobSpan {
                first: None,
                last: None,
            },
            Record::Leased { job, .. }
            | Record::Started { job, .. }
            | Record::Ended { job, .. }
            | Record::Lost { job, .. }
            | Record::Retry { job, .. } => JobSpan {
                first: Some(*job),
                last: Some(*job),
            },
        }
    }

    pub(crate) fn op(&self) -> &'static str {
        match self {
            Record::Submitted { .. } => "submitted",
            Record::Leased { .. } => "leased",
            Record::Started { .. } => "started",
            Record::Ended { .. } => "ended",
            Record::Lost { .. } => "lost",
            Record::Retry { .. } => "retry",
            Record::Pruned { .. } => "pruned",
            Record::Drained { .. } => "drained",
        }
    }
}

/// The jobs a record is about (`7`, `7..=1006`, or `none`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobSpan {
    first: Option<JobId>,
    last: Option<JobId>,
}

impl std::fmt::Display for JobSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.first, self.last) {
            (Some(a), Some(b)) if a == b => write!(f, "{a}"),
            (Some(a), Some(b)) => write!(f, "{a}..{b}"),
            _ => f.write_str("none"),
        }
    }
}

/// A job as the store keeps it. Fields added later go last with defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEntry {
    /// The spec as accepted.
    pub spec: JobSpec,
    /// State and attempt.
    pub status: JobStatus,
    /// When it was accepted (ms since the Unix epoch).
    pub submitted_ms: u64,
    /// What the current attempt holds, while leased or running.
    pub grants: Vec<Grant>,
    /// The current attempt's lease tokens, while leased or running.
    pub tokens: Vec<FencingToken>,
    /// How it ended, once it has.
    pub outcome: Option<Outcome>,
    /// Why its last attempt was lost, if one was.
    pub last_loss: Option<String>,
    /// When it ended (ms since the Unix epoch), once it has; 0 if that was not recorded.
    #[serde(default)]
    pub ended_ms: u64,
    /// Attempts lost so far.
    #[serde(default)]
    pub requeues: u32,
    /// Attempts that failed on their own so far (each retried).
    #[serde(default)]
    pub failures: u32,
    /// While queued for a retry after a failure: the earliest it may be placed (ms since the
    /// Unix epoch); 0 otherwise.
    #[serde(default)]
    pub retry_at_ms: u64,
    /// How its last failed (and retried) attempt ended.
    #[serde(default)]
    pub last_failure: Option<Box<Outcome>>,
    /// The node each task of its latest attempt ran on, by task: where its logs are. Kept
    /// after the attempt ends; empty when not recorded (then the logs are the local node's).
    #[serde(default)]
    pub nodes: Vec<String>,
}

impl JobEntry {
    /// The instant its end counts from for retention: when it ended, or (for jobs ended before
    /// that was recorded) when it was accepted.
    fn end_key(&self) -> u64 {
        if self.ended_ms > 0 {
            self.ended_ms
        } else {
            self.submitted_ms
        }
    }
}

/// Every job the node keeps, with the highest id and fencing token given so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTable {
    /// Boxed: B-tree nodes hold 11 slots and are half full after in-order inserts, so an inline
    /// entry would cost twice its size.
    jobs: BTreeMap<JobId, Box<JobEntry>>,
    next_id: u64,
    token_high_water: u64,
    /// The format its entries were written in (0 before versions).
    #[serde(default)]
    version: u32,
    /// The nodes an operator drained (absent from snapshots written before it was kept).
    #[serde(default)]
    drained: BTreeSet<String>,
    /// Ended jobs by the instant their end counts from: retention's order. Rebuilt after
    /// loading ([`JobTable::after_load`]), never serialized.
    #[serde(skip)]
    ended: BTreeSet<(u64, JobId)>,
    /// A snapshot being written a chunk at a time, if one is (never serialized).
    #[serde(skip)]
    cut: Option<Cut>,
}

/// The table as of a snapshot's cut, kept entry by entry while the snapshot is written in
/// chunks: an entry about to change (or to be pruned) before the snapshot has written it is
/// copied first, so the snapshot is exactly the table at its cut however long it takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Cut {
    /// Ids below it were given out before the cut; the rest came after and are not in it.
    next_id: u64,
    token_high_water: u64,
    version: u32,
    /// The drained nodes at the cut.
    drained: BTreeSet<String>,
    /// Entries in the table at the cut.
    count: usize,
    /// Whether the header (array and map lengths) is written.
    started: bool,
    /// The last id written: entries up to it are done.
    done_to: Option<JobId>,
    /// Entries written so far.
    written: usize,
    /// Entries as they were at the cut, for those changed or pruned since and not yet written.
    saved: BTreeMap<JobId, Box<JobEntry>>,
}

impl Default for JobTable {
    fn default() -> Self {
        JobTable {
            jobs: BTreeMap::new(),
            next_id: 0,
            token_high_water: 0,
            version: FORMAT_VERSION,
            drained: BTreeSet::new(),
            ended: BTreeSet::new(),
            cut: None,
        }
    }
}

impl JobTable {
    /// Completes a table read from a snapshot: migrates entries of an older version and builds
    /// the retention index.
    pub fn after_load(&mut self) {
        if self.version == 0 {
            for entry in self.jobs.values_mut() {
                entry.spec.migrate_from_v0();
                entry.requeues = entry.status.attempt.saturating_sub(1);
            }
            self.version = FORMAT_VERSION;
        }
        self.ended = self
            .jobs
            .iter()
            .filter(|(_, e)| e.status.state.is_terminal())
            .map(|(id, e)| (e.end_key(), *id))
            .collect();
    }

    /// The job, if known.
    pub fn get(&self, job: JobId) -> Option<&JobEntry> {
        self.jobs.get(&job).map(|e| &**e)
    }

    /// Whether `job` was accepted once and has since been pruned by retention.
    pub fn was_pruned(&self, job: JobId) -> bool {
        job.0 >= 1 && job.0 < self.next_id && !self.jobs.contains_key(&job)
    }

    /// All jobs in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&JobId, &JobEntry)> {
        self.jobs.iter().map(|(id, e)| (id, &**e))
    }

    /// Jobs with an id above `after`, in id order, optionally only in one state: one page of a
    /// listing.
    pub fn page(
        &self,
        state: Option<JobState>,
        after: Option<JobId>,
        limit: usize,
    ) -> Vec<(JobId, &JobEntry)> {
        let start = match after {
            Some(JobId(id)) => std::ops::Bound::Excluded(JobId(id)),
            None => std::ops::Bound::Unbounded,
        };
        self.jobs
            .range((start, std::ops::Bound::Unbounded))
            .filter(|(_, e)| state.is_none_or(|s| e.status.state == s))
            .take(limit)
            .map(|(id, e)| (*id, &**e))
            .collect()
    }

    /// How many jobs are kept.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// How many of them have ended.
    pub fn ended_len(&self) -> usize {
        self.ended.len()
    }

    /// The id the next accepted job gets.
    pub fn next_id(&self) -> JobId {
        JobId(self.next_id.max(1))
    }

    /// The highest fencing token ever recorded: a lease table restarted from this table starts
    /// above it.
    pub fn token_high_water(&self) -> FencingToken {
        FencingToken(self.token_high_water)
    }

    /// Ended jobs the retention policy removes now, oldest end first, at most `limit`: those
    /// that ended `max_age_ms` or longer before `now_ms`, and the oldest beyond the newest
    /// `max_jobs` ended ones.
    pub fn prunable(
        &self,
        now_ms: u64,
        max_age_ms: u64,
        max_jobs: usize,
        limit: usize,
    ) -> Vec<JobId> {
        let mut out = Vec::new();
        let mut left = self.ended.len();
        for &(ended, job) in &self.ended {
            if out.len() >= limit {
                break;
            }
            let old = ended.saturating_add(max_age_ms) <= now_ms;
            if !old && left <= max_jobs {
                break;
            }
            out.push(job);
            left -= 1;
        }
        out
    }

    /// Starts a snapshot of the table as it is now (see [`Cut`]); [`JobTable::encode_cut`]
    /// writes it out, a chunk at a time.
    pub(crate) fn begin_cut(&mut self) {
        self.cut = Some(Cut {
            next_id: self.next_id.max(1),
            token_high_water: self.token_high_water,
            version: self.version,
            drained: self.drained.clone(),
            count: self.jobs.len(),
            ..Cut::default()
        });
    }

    /// Drops the snapshot in progress, written or abandoned.
    pub(crate) fn end_cut(&mut self) {
        self.cut = None;
    }

    /// Entries kept for the snapshot in progress (changed since its cut, not yet written).
    pub fn cut_saved(&self) -> usize {
        self.cut.as_ref().map_or(0, |c| c.saved.len())
    }

    /// Appends the next at most `max` entries of the snapshot in progress to `out`, encoded
    /// exactly as [`super::encode`] encodes the whole table; `Ok(true)` once all of it is.
    pub(crate) fn encode_cut(&mut self, out: &mut Vec<u8>, max: usize) -> Result<bool, Error> {
        let JobTable { jobs, cut, .. } = self;
        let Some(cut) = cut.as_mut() else {
            return Err(Error::Rejected {
                reason: "no snapshot is being written".to_owned(),
            });
        };
        let codec = |e: std::fmt::Arguments<'_>| Error::Codec {
            what: "snapshot".to_owned(),
            reason: e.to_string(),
        };
        if !cut.started {
            // The table's fields by position: jobs, next_id, token_high_water, version, drained.
            rmp::encode::write_array_len(out, 5).map_err(|e| codec(format_args!("{e}")))?;
            rmp::encode::write_map_len(out, cut.count as u32)
                .map_err(|e| codec(format_args!("{e}")))?;
            cut.started = true;
        }
        let from = match cut.done_to {
            Some(j) => std::ops::Bound::Excluded(j),
            None => std::ops::Bound::Unbounded,
        };
        let until = std::ops::Bound::Excluded(JobId(cut.next_id));
        let mut live = jobs.range((from, until)).peekable();
        let mut saved = cut.saved.range((from, until)).peekable();
        let mut n = 0;
        let mut last = None;
        while n < max {
            // In id order over both; an entry kept at the cut wins over its live successor.
            let next = match (live.peek(), saved.peek()) {
                (None, None) => break,
                (Some((a, _)), Some((b, _))) if b <= a => {
                    if a == b {
                        live.next();
                    }
                    saved.next()
                }
                (Some(_), _) => live.next(),
                (None, Some(_)) => saved.next(),
            };
            let Some((id, entry)) = next else { break };
            rmp_serde::encode::write(out, id).map_err(|e| codec(format_args!("{e}")))?;
            rmp_serde::encode::write(out, &**entry).map_err(|e| codec(format_args!("{e}")))?;
            last = Some(*id);
            n += 1;
        }
        let done = live.peek().is_none() && saved.peek().is_none();
        cut.written += n;
        if let Some(last) = last {
            cut.done_to = Some(last);
            cut.saved = cut.saved.split_off(&JobId(last.0 + 1));
        }
        if !done {
            return Ok(false);
        }
        if cut.written != cut.count {
            return Err(codec(format_args!(
                "{} entries written for the {} the table held at the cut",
                cut.written, cut.count
            )));
        }
        rmp_serde::encode::write(out, &cut.next_id).map_err(|e| codec(format_args!("{e}")))?;
        rmp_serde::encode::write(out, &cut.token_high_water)
            .map_err(|e| codec(format_args!("{e}")))?;
        rmp_serde::encode::write(out, &cut.version).map_err(|e| codec(format_args!("{e}")))?;
        rmp_serde::encode::write(out, &cut.drained).map_err(|e| codec(format_args!("{e}")))?;
        Ok(true)
    }

    /// Keeps the entry of `job` as it is now for the snapshot in progress, if the snapshot has
    /// it and has not written it yet (and it was not kept already).
    fn preserve(cut: &mut Option<Cut>, jobs: &BTreeMap<JobId, Box<JobEntry>>, job: JobId) {
        let Some(cut) = cut.as_mut() else {
            return;
        };
        if job.0 >= cut.next_id || cut.done_to.is_some_and(|d| job <= d) {
            return;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = cut.saved.entry(job) {
            if let Some(entry) = jobs.get(&job) {
                slot.insert(entry.clone());
            }
        }
    }

    /// The job's entry, if `attempt` is its current attempt: one lookup, shared by the checks
    /// and the change of a record.
    fn entry_mut(
        jobs: &mut BTreeMap<JobId, Box<JobEntry>>,
        job: JobId,
        attempt: u32,
    ) -> Result<&mut JobEntry, Error> {
        let entry = jobs.get_mut(&job).ok_or(Error::UnknownJob { job })?;
        if entry.status.attempt != attempt {
            return Err(Error::StaleAttempt {
                job,
                attempt,
                current: entry.status.attempt,
            });
        }
        Ok(entry)
    }

    /// [`JobTable::apply`], taking the record: its parts (a submission's specs, grants,
    /// tokens, outcomes) move into the table instead of being copied.
    pub fn apply_owned(&mut self, record: Record) -> Result<(), Error> {
        match record {
            Record::Submitted { jobs } => {
                let next = self.check_submitted(&jobs)?;
                for s in jobs {
                    let mut spec = s.spec;
                    if s.version == 0 {
                        spec.migrate_from_v0();
                    }
                    self.insert_submitted(s.job, spec, s.submitted_ms);
                }
                self.next_id = next;
            }
            Record::Leased {
                job,
                attempt,
                grants,
                tokens,
                nodes,
            } => {
                Self::preserve(&mut self.cut, &self.jobs, job);
                let entry = Self::entry_mut(&mut self.jobs, job, attempt)?;
                // Checked on a copy first: a refused record changes nothing.
                let mut status = entry.status;
                status.transition(JobState::Leased)?;
                let mut high = self.token_high_water;
                for t in &tokens {
                    if t.0 <= high {
                        return Err(Error::Rejected {
                            reason: format!(
                                "job {job}: fencing token {t} does not grow (highest so far {high})"
                            ),
                        });
                    }
                    high = t.0;
                }
                self.token_high_water = high;
                entry.status = status;
                entry.grants = grants;
                entry.tokens = tokens;
                entry.retry_at_ms = 0;
                // A refused lease (no grants, no nodes) leaves where the last attempt ran,
                // whose logs are still there.
                if !nodes.is_empty() {
                    entry.nodes = nodes;
                }
            }
            Record::Started { job, attempt } => {
                Self::preserve(&mut self.cut, &self.jobs, job);
                let entry = Self::entry_mut(&mut self.jobs, job, attempt)?;
                entry.status.transition(JobState::Running)?;
            }
            Record::Ended {
                job,
                attempt,
                state,
                outcome,
                ended_ms,
            } => {
                Self::preserve(&mut self.cut, &self.jobs, job);
                if !state.is_terminal() {
                    return Err(Error::Rejected {
                        reason: format!("job {job}: {state} is not an end state"),
                    });
                }
                let entry = Self::entry_mut(&mut self.jobs, job, attempt)?;
                entry.status.transition(state)?;
                entry.grants.clear();
                entry.tokens.clear();
                entry.outcome = Some(outcome);
                entry.ended_ms = ended_ms;
                entry.retry_at_ms = 0;
                self.ended.insert((entry.end_key(), job));
            }
            Record::Lost {
                job,
                attempt,
                reason,
                at_ms,
            } => {
                Self::preserve(&mut self.cut, &self.jobs, job);
                let entry = Self::entry_mut(&mut self.jobs, job, attempt)?;
                let mut status = entry.status;
                status.transition(JobState::Lost)?;
                let next = status.after_loss(
                    entry.spec.requeue,
                    entry.spec.max_requeues,
                    entry.requeues,
                )?;
                entry.status = status;
                entry.grants.clear();
                entry.tokens.clear();
                entry.requeues += 1;
                if next == JobState::Failed {
                    let why = if entry.spec.requeue {
                        format!(
                            "with no requeues left ({} allowed)",
                            entry.spec.max_requeues
                        )
                    } else {
                        "and the job may not run twice (requeue: false)".to_owned()
                    };
                    entry.outcome = Some(Outcome {
                        error: Some(format!("lost on attempt {attempt} {why}: {reason}")),
                        ..Outcome::default()
                    });
                    entry.ended_ms = at_ms;
                    self.ended.insert((entry.end_key(), job));
                }
                entry.last_loss = Some(reason);
            }
            Record::Retry {
                job,
                attempt,
                state,
                outcome,
                retry_at_ms,
            } => {
                Self::preserve(&mut self.cut, &self.jobs, job);
                if !matches!(state, JobState::Failed | JobState::TimedOut) {
                    return Err(Error::Rejected {
                        reason: format!("job {job}: a retry follows a failure, not {state}"),
                    });
                }
                let entry = Self::entry_mut(&mut self.jobs, job, attempt)?;
                if entry.failures >= entry.spec.max_retries {
                    return Err(Error::Rejected {
                        reason: format!(
                            "job {job}: no retries left ({} allowed)",
                            entry.spec.max_retries
                        ),
                    });
                }
                entry.status.transition(JobState::Queued)?;
                entry.grants.clear();
                entry.tokens.clear();
                entry.failures += 1;
                entry.retry_at_ms = retry_at_ms;
                entry.last_failure = Some(Box::new(outcome));
            }
            Record::Drained { node, drain } => {
                if node.is_empty() {
                    return Err(Error::Rejected {
                        reason: "a drain names no node".to_owned(),
                    });
                }
                if drain {
                    self.drained.insert(node);
                } else {
                    self.drained.remove(&node);
                }
            }
            Record::Pruned { jobs } => {
                for job in &jobs {
                    match self.jobs.get(job) {
                        Some(e) if e.status.state.is_terminal() => {}
                        Some(e) => {
                            return Err(Error::Rejected {
                                reason: format!(
                                    "job {job}: only ended jobs are pruned, it is {}",
                                    e.status.state
                                ),
                            })
                        }
                        None => return Err(Error::UnknownJob { job: *job }),
                    }
                }
                for job in jobs {
                    Self::preserve(&mut self.cut, &self.jobs, job);
                    if let Some(entry) = self.jobs.remove(&job) {
                        self.ended.remove(&(entry.end_key(), job));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks a submission's ids; returns the next id after them.
    fn check_submitted(&self, jobs: &[Submission]) -> Result<u64, Error> {
        let mut next = self.next_id.max(1);
        for s in jobs {
            if s.job.0 < next {
                return Err(Error::Rejected {
                    reason: format!(
                        "job id {} is not above the last one given ({})",
                        s.job,
                        next - 1
                    ),
                });
            }
            next = s.job.0 + 1;
        }
        Ok(next)
    }

    fn insert_submitted(&mut self, job: JobId, spec: JobSpec, submitted_ms: u64) {
        self.jobs.insert(
            job,
            Box::new(JobEntry {
                spec,
                status: JobStatus::queued(job),
                submitted_ms,
                grants: Vec::new(),
                tokens: Vec::new(),
                outcome: None,
                last_loss: None,
                ended_ms: 0,
                requeues: 0,
                failures: 0,
                retry_at_ms: 0,
                last_failure: None,
                nodes: Vec::new(),
            }),
        );
    }

    /// The ids the table keeps, as inclusive ranges (ascending, disjoint): every other id
    /// below [`JobTable::next_id`] was pruned. One pass over the table.
    pub fn kept_ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for id in self.jobs.keys() {
            match ranges.last_mut() {
                Some((_, end)) if id.0 == end.saturating_add(1) => *end = id.0,
                _ => ranges.push((id.0, id.0)),
            }
        }
        ranges
    }

    /// The nodes an operator drained, as journaled.
    pub fn drained(&self) -> &BTreeSet<String> {
        &self.drained
    }

    /// Checks `record` against the table and applies it, or refuses it with nothing changed.
    pub fn apply(&mut self, record: &Record) -> Result<(), Error> {
        self.apply_owned(record.clone())
    }
}
