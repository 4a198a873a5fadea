//! The job store: every change to a job is a [`Record`] that goes to the journal before anyone
//! is told about it, and the [`JobTable`] rebuilt from snapshot plus journal is the truth after a
//! restart.
//!
//! **Invariant:** the table and the journal change in the same order. [`Store::commit`] first
//! holds room in the journal's queue, then checks the record against the table, applies it and
//! queues it in one synchronous step; the returned [`Durable`] completes once the record is on
//! disk, and only then may the change be acknowledged (to a client, a worker, a callback). Many
//! records are in flight at once and share fdatasyncs through the journal's group commit.
//!
//! **Invariant:** a record that does not fit the table (an illegal transition, an old attempt,
//! a fencing token that does not grow) is refused before anything changes, and nothing is
//! journaled for it; so replaying the journal always succeeds, and a replay that does not is
//! reported as corruption, never skipped.
//!
//! After a failed journal write the on-disk state is unknown: the store refuses every further
//! change ([`Error::StoreFailed`]) until the node restarts and recovers.
//!
//! At start-up, jobs that were leased or running when the node stopped are lost: they are
//! queued again for their next attempt, or failed when their retries are spent, and those
//! records are durable before [`Store::open`] returns.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::Poll;

use cadre_cpu::journal::{Journal, JournalOptions, JournalSlot, PendingRecord, TornTail};
use cadre_cpu::IoEngine;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::Error;
use crate::ids::FencingToken;
use crate::job::{JobId, JobSpec, JobState, JobStatus};
use crate::metrics as m;
use crate::sched::Grant;

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
}

/// One accepted job in a [`Record::Submitted`] batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The id the store gave it.
    pub job: JobId,
    /// The validated spec.
    pub spec: JobSpec,
    /// When it was accepted, in milliseconds since the Unix epoch (for display only).
    pub submitted_ms: u64,
}

/// A change to the job table, as journaled.
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
    },
    /// The attempt's lease was lost (worker died, lease expired, job stalled, node restarted):
    /// the job is queued for its next attempt, or failed when its retries are spent.
    Lost {
        /// The job.
        job: JobId,
        /// The attempt that was lost.
        attempt: u32,
        /// Why.
        reason: String,
    },
}

impl Record {
    /// The jobs it is about, for log lines: a submission's ids are consecutive, so first and
    /// last name them all without collecting them on the hot path.
    fn jobs(&self) -> JobSpan {
        match self {
            Record::Submitted { jobs } => JobSpan {
                first: jobs.first().map(|s| s.job),
                last: jobs.last().map(|s| s.job),
            },
            Record::Leased { job, .. }
            | Record::Started { job, .. }
            | Record::Ended { job, .. }
            | Record::Lost { job, .. } => JobSpan {
                first: Some(*job),
                last: Some(*job),
            },
        }
    }

    fn op(&self) -> &'static str {
        match self {
            Record::Submitted { .. } => "submitted",
            Record::Leased { .. } => "leased",
            Record::Started { .. } => "started",
            Record::Ended { .. } => "ended",
            Record::Lost { .. } => "lost",
        }
    }
}

/// The consecutive job ids a record is about (`7`, `7..=1006`, or `none`).
#[derive(Debug, Clone, Copy)]
struct JobSpan {
    first: Option<JobId>,
    last: Option<JobId>,
}

impl std::fmt::Display for JobSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.first, self.last) {
            (Some(a), Some(b)) if a == b => write!(f, "{a}"),
            (Some(a), Some(b)) => write!(f, "{a}..={b}"),
            _ => f.write_str("none"),
        }
    }
}

/// A job as the store keeps it.
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
}

/// Every job the node has accepted, with the highest id and fencing token given so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobTable {
    /// Boxed: B-tree nodes hold 11 slots and are half full after in-order inserts, so an inline
    /// entry would cost twice its size.
    jobs: BTreeMap<JobId, Box<JobEntry>>,
    next_id: u64,
    token_high_water: u64,
}

impl JobTable {
    /// The job, if known.
    pub fn get(&self, job: JobId) -> Option<&JobEntry> {
        self.jobs.get(&job).map(|e| &**e)
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

    /// How many jobs are known.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
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
                    self.insert_submitted(s.job, s.spec, s.submitted_ms);
                }
                self.next_id = next;
            }
            Record::Leased {
                job,
                attempt,
                grants,
                tokens,
            } => {
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
            }
            Record::Started { job, attempt } => {
                let entry = Self::entry_mut(&mut self.jobs, job, attempt)?;
                entry.status.transition(JobState::Running)?;
            }
            Record::Ended {
                job,
                attempt,
                state,
                outcome,
            } => {
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
            }
            Record::Lost {
                job,
                attempt,
                reason,
            } => {
                let entry = Self::entry_mut(&mut self.jobs, job, attempt)?;
                let mut status = entry.status;
                status.transition(JobState::Lost)?;
                let next = status.after_loss(entry.spec.max_retries)?;
                entry.status = status;
                entry.grants.clear();
                entry.tokens.clear();
                if next == JobState::Failed {
                    entry.outcome = Some(Outcome {
                        error: Some(format!(
                            "lost on attempt {attempt} with no retries left: {reason}"
                        )),
                        ..Outcome::default()
                    });
                }
                entry.last_loss = Some(reason);
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
            }),
        );
    }

    /// Checks `record` against the table and applies it, or refuses it with nothing changed.
    pub fn apply(&mut self, record: &Record) -> Result<(), Error> {
        self.apply_owned(record.clone())
    }
}

/// How the store journals and snapshots.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The journal's tuning.
    pub journal: JournalOptions,
    /// After this many records since the last snapshot, [`Store::compaction_due`] says so
    /// (default 1,000,000: start-up replays at most that many records after the snapshot, about
    /// 0.5 s on the development machine; see the `store_replay` bench case).
    pub snapshot_every: u64,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            journal: JournalOptions::default(),
            snapshot_every: 1_000_000,
        }
    }
}

/// What start-up found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Jobs in the table.
    pub jobs: usize,
    /// Records replayed after the snapshot.
    pub records: usize,
    /// Whether a snapshot was loaded.
    pub snapshot: bool,
    /// Jobs that were leased or running and are queued again.
    pub requeued: Vec<JobId>,
    /// Jobs that were leased or running and failed, their retries spent.
    pub failed: Vec<JobId>,
    /// The torn end of the journal that was cut off, if there was one.
    pub torn_tail: Option<TornTail>,
}

/// Completes once a committed record is durable; only then may the change be acknowledged. A
/// record that never becomes durable is logged and counted here, with its jobs. A plain
/// future (no allocation of its own): the scheduler holds one per record in flight.
#[derive(Debug)]
pub struct Durable {
    pending: PendingRecord,
    op: &'static str,
    jobs: JobSpan,
    queued_at: Instant,
    seconds: metrics::Histogram,
}

impl Future for Durable {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.pending).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(_)) => {
                self.seconds.record(self.queued_at.elapsed().as_secs_f64());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(source)) => {
                let err = Error::Store {
                    op: "append",
                    source,
                };
                tracing::error!(op = self.op, job = %self.jobs, error = %err,
                    "job store record not durable; its change must not be acknowledged");
                metrics::counter!(m::STORE_ERRORS, "op" => "append").increment(1);
                Poll::Ready(Err(err))
            }
        }
    }
}

/// The job table and the journal under it. Owned by one actor (the scheduler), which commits
/// one record at a time and awaits durability concurrently.
#[derive(Debug)]
pub struct Store {
    journal: Journal,
    table: JobTable,
    options: StoreOptions,
    since_snapshot: u64,
    failed: Option<String>,
    /// `cadre_store_append_bytes_total` and `cadre_store_append_seconds`, looked up once: they
    /// change on every record.
    append_bytes: metrics::Counter,
    append_seconds: metrics::Histogram,
}

/// Compact MessagePack: struct fields by position, not by name (about half the bytes and
/// encoding time). So a field added to a journaled type goes last, with `#[serde(default)]`,
/// and no journaled field may be skipped when serializing. [`decode`] also reads the older
/// form with field names.
fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, Error> {
    rmp_serde::to_vec(value).map_err(|e| Error::Codec {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Codec {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

fn store_error(op: &'static str, err: &Error) {
    tracing::error!(op, error = %err, "job store failure");
    metrics::counter!(m::STORE_ERRORS, "op" => op).increment(1);
}

impl Store {
    /// Opens the journal in `dir`, rebuilds the table from snapshot plus records, and turns
    /// jobs that were leased or running into lost ones (requeued or failed, durably).
    pub async fn open(
        dir: &Path,
        engine: IoEngine,
        options: StoreOptions,
    ) -> Result<(Store, Recovery), Error> {
        let (journal, recovered) = Journal::open(dir, engine, options.journal.clone())
            .await
            .map_err(|source| Error::Store { op: "open", source })?;
        let mut recovery = Recovery {
            torn_tail: recovered.torn_tail,
            records: recovered.records.len(),
            ..Recovery::default()
        };
        let mut table = match &recovered.snapshot {
            Some(bytes) => {
                recovery.snapshot = true;
                decode::<JobTable>(bytes, "snapshot").inspect_err(|e| store_error("recover", e))?
            }
            None => JobTable::default(),
        };
        for (i, bytes) in recovered.records.iter().enumerate() {
            let what = format!("record {} after the snapshot", i + 1);
            let record: Record = decode(bytes, &what).inspect_err(|e| store_error("recover", e))?;
            table.apply_owned(record).map_err(|e| {
                let err = Error::Codec {
                    what,
                    reason: format!("does not replay onto the table: {e}"),
                };
                store_error("recover", &err);
                err
            })?;
        }
        let mut store = Store {
            journal,
            table,
            options,
            since_snapshot: recovered.records.len() as u64,
            failed: None,
            append_bytes: metrics::counter!(m::STORE_APPEND_BYTES),
            append_seconds: metrics::histogram!(m::STORE_APPEND_SECONDS),
        };
        let interrupted: Vec<(JobId, u32, JobState)> = store
            .table
            .iter()
            .filter(|(_, e)| matches!(e.status.state, JobState::Leased | JobState::Running))
            .map(|(id, e)| (*id, e.status.attempt, e.status.state))
            .collect();
        let mut pending = Vec::with_capacity(interrupted.len());
        for (job, attempt, state) in interrupted {
            let durable = store
                .commit(Record::Lost {
                    job,
                    attempt,
                    reason: format!("the node stopped while the job was {state}"),
                })
                .await?;
            pending.push(durable);
            let now = store.table.get(job).map(|e| e.status.state);
            if now == Some(JobState::Queued) {
                recovery.requeued.push(job);
                metrics::counter!(m::STORE_RECOVERED_INTERRUPTED, "outcome" => "requeued")
                    .increment(1);
            } else {
                recovery.failed.push(job);
                metrics::counter!(m::STORE_RECOVERED_INTERRUPTED, "outcome" => "failed")
                    .increment(1);
            }
            tracing::warn!(job = %job, attempt, was = state.as_str(),
                now = now.map_or("unknown", JobState::as_str),
                "job interrupted by a node stop: lost");
        }
        for durable in pending {
            durable.await?;
        }
        recovery.jobs = store.table.len();
        Ok((store, recovery))
    }

    /// The table, as of every commit so far (durable or about to be).
    pub fn table(&self) -> &JobTable {
        &self.table
    }

    /// Accepts validated specs: gives them ids and commits one [`Record::Submitted`].
    pub async fn submit(
        &mut self,
        specs: Vec<JobSpec>,
        submitted_ms: u64,
    ) -> Result<(Vec<JobId>, Durable), Error> {
        let first = self.table.next_id().0;
        let jobs: Vec<Submission> = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Submission {
                job: JobId(first + i as u64),
                spec,
                submitted_ms,
            })
            .collect();
        let ids = jobs.iter().map(|s| s.job).collect();
        let durable = self.commit(Record::Submitted { jobs }).await?;
        Ok((ids, durable))
    }

    /// Checks `record`, applies it to the table and queues it to the journal, in that order and
    /// with no await in between (see the module comment). The returned future completes once
    /// the record is durable. A refused record changes nothing.
    pub async fn commit(&mut self, record: Record) -> Result<Durable, Error> {
        if let Some(reason) = &self.failed {
            return Err(Error::StoreFailed {
                reason: reason.clone(),
            });
        }
        let slot = self.journal.slot().await.map_err(|source| {
            let err = Error::Store {
                op: "commit",
                source,
            };
            self.fail(&err);
            err
        })?;
        self.commit_in(slot, record)
    }

    /// [`Store::commit`] without waiting for room in the journal's queue: `Err(record)` gives
    /// the record back untouched when the queue is full right now, so the caller can wait
    /// ([`Store::commit`]) or push back on its client.
    #[allow(
        clippy::result_large_err,
        reason = "the refused record is handed back by value so nothing is lost or copied"
    )]
    pub fn try_commit(&mut self, record: Record) -> Result<Result<Durable, Error>, Record> {
        if let Some(reason) = &self.failed {
            return Ok(Err(Error::StoreFailed {
                reason: reason.clone(),
            }));
        }
        match self.journal.try_slot() {
            Ok(Some(slot)) => Ok(self.commit_in(slot, record)),
            Ok(None) => Err(record),
            Err(source) => {
                let err = Error::Store {
                    op: "commit",
                    source,
                };
                self.fail(&err);
                Ok(Err(err))
            }
        }
    }

    fn commit_in(&mut self, slot: JournalSlot, record: Record) -> Result<Durable, Error> {
        let op = record.op();
        let jobs = record.jobs();
        let payload = encode(&record, op).inspect_err(|e| store_error("encode", e))?;
        if let Err(e) = self.table.apply_owned(record) {
            // An illegal transition was already logged and counted by `JobStatus::transition`;
            // every other refusal is reported here, once.
            if !matches!(e, Error::IllegalTransition(_)) {
                tracing::error!(op, job = %jobs, error = %e, "job store refused a record");
                metrics::counter!(m::STORE_ERRORS, "op" => "refused").increment(1);
            }
            return Err(e);
        }
        let bytes = payload.len() as u64;
        let pending = match slot.queue(payload) {
            Ok(p) => p,
            Err(source) => {
                // The table already holds the change; the journal will not: the store stops.
                let err = Error::Store {
                    op: "append",
                    source,
                };
                self.fail(&err);
                return Err(err);
            }
        };
        self.since_snapshot += 1;
        self.append_bytes.increment(bytes);
        Ok(Durable {
            pending,
            op,
            jobs,
            queued_at: Instant::now(),
            seconds: self.append_seconds.clone(),
        })
    }

    /// The journal refused or lost a change: the store stops accepting any. The journal has
    /// logged the cause (one event, where it was detected); the store counts it.
    fn fail(&mut self, err: &Error) {
        metrics::counter!(m::STORE_ERRORS, "op" => "journal").increment(1);
        if self.failed.is_none() {
            self.failed = Some(err.to_string());
        }
    }

    /// Whether the store has failed and refuses every change until it is reopened.
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Whether enough records have accumulated since the last snapshot to write a new one.
    pub fn compaction_due(&self) -> bool {
        self.since_snapshot >= self.options.snapshot_every
    }

    /// Writes the table as a snapshot that replaces every record before it, and waits until it
    /// is done. Start-up then reads the snapshot and only the records after it.
    pub async fn compact(&mut self) -> Result<(), Error> {
        if let Some(reason) = &self.failed {
            return Err(Error::StoreFailed {
                reason: reason.clone(),
            });
        }
        let slot = self.journal.slot().await.map_err(|source| {
            let err = Error::Store {
                op: "compact",
                source,
            };
            self.fail(&err);
            err
        })?;
        let snapshot = encode(&self.table, "snapshot").inspect_err(|e| store_error("encode", e))?;
        let pending = slot.compact(snapshot);
        self.since_snapshot = 0;
        pending.await.map_err(|source| {
            let err = Error::Store {
                op: "compact",
                source,
            };
            self.fail(&err);
            err
        })
    }

    /// Finishes what is queued and closes the journal (its directory lock is released).
    pub async fn close(self) {
        self.journal.close().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::ids::WorkerId;

    fn every_record() -> Vec<Record> {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "a", "priority": 5, "max_retries": 2, "labels": {"team": "x"},
            "resources": {"cpu_millis": 500, "memory_bytes": 1024, "gpus": 1},
            "kind": {"workload": {"name": "checksum", "params": {"path": "/etc/hostname", "n": [1, 2.5, null]}}}
        }))
        .unwrap();
        let grant = Grant {
            worker: WorkerId(3),
            task: 0,
            cpu_millis: 500,
            memory_bytes: 1024,
            gpus: vec![1],
        };
        vec![
            Record::Submitted {
                jobs: vec![Submission {
                    job: JobId(1),
                    spec,
                    submitted_ms: 1_700_000_000_000,
                }],
            },
            Record::Leased {
                job: JobId(1),
                attempt: 1,
                grants: vec![grant],
                tokens: vec![FencingToken(9)],
            },
            Record::Started {
                job: JobId(1),
                attempt: 1,
            },
            Record::Ended {
                job: JobId(1),
                attempt: 1,
                state: JobState::Succeeded,
                outcome: Outcome {
                    exit_code: Some(0),
                    signal: None,
                    error: None,
                    result: Some(serde_json::json!({"crc32c": 12345, "ok": true})),
                },
            },
            Record::Lost {
                job: JobId(2),
                attempt: 3,
                reason: "worker 3 died".to_owned(),
            },
        ]
    }

    /// Records and snapshots are written compactly (struct fields by position); journals
    /// written before, with field names, must still be read.
    #[test]
    fn records_and_snapshots_read_back_in_both_encodings() {
        let mut table = JobTable::default();
        for record in every_record() {
            let compact = encode(&record, "test").unwrap();
            let named = rmp_serde::to_vec_named(&record).unwrap();
            assert!(compact.len() < named.len(), "{record:?}");
            assert_eq!(decode::<Record>(&compact, "test").unwrap(), record);
            assert_eq!(decode::<Record>(&named, "test").unwrap(), record);
            if !matches!(record, Record::Lost { .. }) {
                table.apply(&record).unwrap();
            }
        }
        let compact = encode(&table, "snapshot").unwrap();
        let named = rmp_serde::to_vec_named(&table).unwrap();
        assert_eq!(decode::<JobTable>(&compact, "snapshot").unwrap(), table);
        assert_eq!(decode::<JobTable>(&named, "snapshot").unwrap(), table);
    }
}
