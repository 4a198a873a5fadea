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
//! queued again for their next attempt, or failed when they may not be requeued. Those records
//! are committed before [`Store::open`] returns and their durability is handed to the caller
//! ([`Recovery::pending`]), so a node on a full disk still opens and serves reads while they
//! wait.
//!
//! A disk that refuses writes stalls the journal (see `cadre_cpu::journal`); the store then
//! says so through [`Store::health`] and its caller stops committing (the scheduler refuses
//! submissions and holds other records back) until it is writable again. A record too large
//! for the journal is refused before it changes the table.
//!
//! **Encoding.** Records and snapshots are MessagePack with struct fields by position: a field
//! added to a journaled type goes last with `#[serde(default)]`, and none is skipped when
//! serializing (a `#[serde(skip)]` in-memory index is the one exception, never written).

mod table;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::Poll;

use cadre_cpu::journal::{
    Journal, JournalHealth, JournalOptions, JournalSlot, PendingRecord, TornTail,
};
use cadre_cpu::IoEngine;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::job::{JobId, JobSpec, JobState};
use crate::metrics as m;
use table::JobSpan;
pub use table::{JobEntry, JobTable, LogsNote, Outcome, Record, Submission, FORMAT_VERSION};

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
    /// The torn end of the journal that was set aside, if there was one.
    pub torn_tail: Option<TornTail>,
    /// The records that made interrupted jobs lost, committed but not yet durable: nothing may
    /// be said about those jobs before they are (the scheduler awaits them in order).
    pub pending: Vec<Durable>,
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
                let mut table = decode::<JobTable>(bytes, "snapshot")
                    .inspect_err(|e| store_error("recover", e))?;
                table.after_load();
                table
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
        let at_ms = crate::clock::now_ms();
        for (job, attempt, state) in interrupted {
            let durable = store
                .commit(Record::Lost {
                    job,
                    attempt,
                    reason: format!("the node stopped while the job was {state}"),
                    at_ms,
                })
                .await?;
            recovery.pending.push(durable);
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
        recovery.jobs = store.table.len();
        Ok((store, recovery))
    }

    /// The table, as of every commit so far (durable or about to be).
    pub fn table(&self) -> &JobTable {
        &self.table
    }

    /// Whether the journal takes writes, as a watch that changes when that does.
    pub fn health(&self) -> watch::Receiver<JournalHealth> {
        self.journal.health()
    }

    /// Whether the journal takes writes right now.
    pub fn writable(&self) -> bool {
        self.journal.health().borrow().is_writable()
    }

    /// Why the journal takes no writes right now, if it does not.
    pub fn unwritable_reason(&self) -> Option<String> {
        match &*self.journal.health().borrow() {
            JournalHealth::Writable => None,
            JournalHealth::Stalled(stall) => Some(stall.to_string()),
        }
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
            .map(|(i, spec)| Submission::new(JobId(first + i as u64), spec, submitted_ms))
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
        let limit = self.options.journal.max_record_bytes as usize;
        if payload.len() > limit {
            // Refused before the table changes: the store carries on.
            let err = Error::Rejected {
                reason: format!(
                    "{op} record of {} bytes exceeds the journal's {limit}-byte record limit",
                    payload.len()
                ),
            };
            tracing::warn!(op, job = %jobs, error = %err, "job store refused a record");
            metrics::counter!(m::STORE_ERRORS, "op" => "too_large").increment(1);
            return Err(err);
        }
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
            // The journal is still whole (its records stay in their segments): try again
            // after half the interval, not at every record.
            self.since_snapshot = self.options.snapshot_every / 2;
            let err = Error::Store {
                op: "compact",
                source,
            };
            metrics::counter!(m::STORE_ERRORS, "op" => "compact").increment(1);
            err
        })
    }

    /// Starts a snapshot written a chunk at a time: takes the table's view as of now and queues
    /// the journal's cut in the same step (see `cadre_cpu::journal::SnapshotFile`). The
    /// returned future resolves with the cut once the journal has rolled; `Ok(None)` when the
    /// journal's queue is full right now (try again later).
    pub fn begin_snapshot(&mut self) -> Result<Option<cadre_cpu::journal::PendingCut>, Error> {
        if let Some(reason) = &self.failed {
            return Err(Error::StoreFailed {
                reason: reason.clone(),
            });
        }
        let slot = match self.journal.try_slot() {
            Ok(Some(slot)) => slot,
            Ok(None) => return Ok(None),
            Err(source) => {
                let err = Error::Store {
                    op: "snapshot",
                    source,
                };
                self.fail(&err);
                return Err(err);
            }
        };
        self.table.begin_cut();
        self.since_snapshot = 0;
        Ok(Some(slot.cut()))
    }

    /// The next chunk of the snapshot in progress: at most `max_entries` entries, and whether
    /// it is the last.
    pub fn snapshot_chunk(&mut self, max_entries: usize) -> Result<(Vec<u8>, bool), Error> {
        let mut out = Vec::with_capacity(max_entries * 256);
        let done = self
            .table
            .encode_cut(&mut out, max_entries)
            .inspect_err(|e| store_error("snapshot", e))?;
        Ok((out, done))
    }

    /// Ends the snapshot in progress (written, or given up after a failure, which is tried
    /// again after half the interval).
    pub fn end_snapshot(&mut self, written: bool) {
        self.table.end_cut();
        if !written {
            self.since_snapshot = self.options.snapshot_every / 2;
        }
    }

    /// The journal, for the snapshot's file.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Finishes what is queued and closes the journal (its directory lock is released).
    pub async fn close(self) {
        self.journal.close().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::BTreeMap;

    use super::*;
    use crate::ids::{FencingToken, WorkerId};
    use crate::sched::Grant;

    fn spec() -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "name": "a", "priority": 5, "max_retries": 2, "labels": {"team": "x"},
            "resources": {"cpu_millis": 500, "memory_bytes": 1024, "gpus": 1},
            "kind": {"workload": {"name": "checksum", "params": {"path": "/etc/hostname", "n": [1, 2.5, null]}}}
        }))
        .unwrap()
    }

    fn every_record() -> Vec<Record> {
        let grant = Grant {
            worker: WorkerId(3),
            task: 0,
            cpu_millis: 500,
            memory_bytes: 1024,
            gpus: vec![1],
        };
        let leased = |attempt, token| Record::Leased {
            job: JobId(1),
            attempt,
            grants: vec![grant.clone()],
            tokens: vec![FencingToken(token)],
            nodes: vec!["n1".to_owned()],
        };
        vec![
            Record::Submitted {
                jobs: vec![
                    Submission::new(JobId(1), spec(), 1_700_000_000_000),
                    Submission::new(JobId(2), spec(), 1_700_000_000_001),
                ],
            },
            leased(1, 9),
            Record::Started {
                job: JobId(1),
                attempt: 1,
            },
            Record::Retry {
                job: JobId(1),
                attempt: 1,
                state: JobState::Failed,
                outcome: Outcome {
                    exit_code: Some(3),
                    ..Outcome::default()
                },
                retry_at_ms: 1_700_000_010_000,
            },
            leased(2, 10),
            Record::Started {
                job: JobId(1),
                attempt: 2,
            },
            Record::Ended {
                job: JobId(1),
                attempt: 2,
                state: JobState::Succeeded,
                outcome: Outcome {
                    exit_code: Some(0),
                    signal: None,
                    error: None,
                    result: Some(serde_json::json!({"crc32c": 12345, "ok": true})),
                    logs: Some(LogsNote {
                        dropped_bytes: 7,
                        write_error: Some("disk full".into()),
                    }),
                },
                ended_ms: 1_700_000_020_000,
            },
            Record::Pruned {
                jobs: vec![JobId(1)],
            },
            Record::Lost {
                job: JobId(2),
                attempt: 3,
                reason: "worker 3 died".to_owned(),
                at_ms: 1_700_000_030_000,
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
        assert!(table.was_pruned(JobId(1)) && !table.was_pruned(JobId(2)));
        assert!(!table.was_pruned(JobId(3)), "never given out");
        let compact = encode(&table, "snapshot").unwrap();
        let named = rmp_serde::to_vec_named(&table).unwrap();
        for bytes in [compact, named] {
            let mut read = decode::<JobTable>(&bytes, "snapshot").unwrap();
            read.after_load();
            assert_eq!(read, table);
        }
    }

    /// A snapshot written in chunks is byte for byte the table at its cut, whatever changes
    /// (and prunings) come between the chunks.
    #[test]
    fn a_chunked_snapshot_is_the_table_at_its_cut() {
        let mut table = JobTable::default();
        let jobs = (1..=50)
            .map(|i| Submission::new(JobId(i), spec(), i))
            .collect();
        table.apply_owned(Record::Submitted { jobs }).unwrap();
        for i in 1..=20 {
            for record in [
                Record::Leased {
                    job: JobId(i),
                    attempt: 1,
                    grants: Vec::new(),
                    tokens: vec![FencingToken(i)],
                    nodes: Vec::new(),
                },
                Record::Started {
                    job: JobId(i),
                    attempt: 1,
                },
                Record::Ended {
                    job: JobId(i),
                    attempt: 1,
                    state: JobState::Succeeded,
                    outcome: Outcome::default(),
                    ended_ms: i,
                },
            ] {
                table.apply_owned(record).unwrap();
            }
        }
        let at_cut = table.clone();
        let whole = encode(&at_cut, "snapshot").unwrap();
        table.begin_cut();
        let mut streamed = Vec::new();
        let mut changes = 21u64;
        let mut prune = 1u64;
        loop {
            let done = table.encode_cut(&mut streamed, 7).unwrap();
            // Between chunks: entries not written yet change, some are pruned, new ones come.
            if changes <= 45 {
                table
                    .apply_owned(Record::Leased {
                        job: JobId(changes),
                        attempt: 1,
                        grants: Vec::new(),
                        tokens: vec![FencingToken(100 + changes)],
                        nodes: Vec::new(),
                    })
                    .unwrap();
                changes += 3;
            }
            if prune <= 20 {
                table
                    .apply_owned(Record::Pruned {
                        jobs: vec![JobId(prune)],
                    })
                    .unwrap();
                prune += 2;
            }
            let next = table.next_id().0;
            table
                .apply_owned(Record::Submitted {
                    jobs: vec![Submission::new(JobId(next), spec(), 9)],
                })
                .unwrap();
            if done {
                break;
            }
        }
        table.end_cut();
        assert_eq!(streamed, whole, "the chunks are the table as of the cut");
        let mut read = decode::<JobTable>(&streamed, "snapshot").unwrap();
        read.after_load();
        let mut want = at_cut;
        want.after_load();
        assert_eq!(read, want);
    }

    /// The spec as the first versions wrote it: nine fields, `max_retries` counting lost
    /// attempts run again.
    #[derive(Serialize)]
    struct SpecV0 {
        name: String,
        kind: crate::job::JobKind,
        resources: crate::job::Resources,
        priority: i16,
        max_retries: u32,
        timeout_secs: Option<u64>,
        progress_deadline_secs: Option<u64>,
        gang: u32,
        labels: BTreeMap<String, String>,
    }

    #[derive(Serialize)]
    struct SubmissionV0 {
        job: JobId,
        spec: SpecV0,
        submitted_ms: u64,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum RecordV0 {
        Submitted { jobs: Vec<SubmissionV0> },
    }

    #[derive(Serialize)]
    struct EntryV0 {
        spec: SpecV0,
        status: crate::job::JobStatus,
        submitted_ms: u64,
        grants: Vec<Grant>,
        tokens: Vec<FencingToken>,
        outcome: Option<Outcome>,
        last_loss: Option<String>,
    }

    #[derive(Serialize)]
    struct TableV0 {
        jobs: BTreeMap<JobId, EntryV0>,
        next_id: u64,
        token_high_water: u64,
    }

    fn spec_v0() -> SpecV0 {
        let s = spec();
        SpecV0 {
            name: s.name,
            kind: s.kind,
            resources: s.resources,
            priority: s.priority,
            max_retries: 2,
            timeout_secs: None,
            progress_deadline_secs: None,
            gang: 1,
            labels: s.labels,
        }
    }

    /// A journal of the first versions: its `max_retries: 2` meant two lost attempts run
    /// again, and nothing else; replayed today, the job keeps exactly that budget.
    #[test]
    fn journals_written_before_retry_budgets_keep_their_meaning() {
        let old = RecordV0::Submitted {
            jobs: vec![SubmissionV0 {
                job: JobId(1),
                spec: spec_v0(),
                submitted_ms: 5,
            }],
        };
        for bytes in [
            rmp_serde::to_vec(&old).unwrap(),
            rmp_serde::to_vec_named(&old).unwrap(),
        ] {
            let record: Record = decode(&bytes, "old").unwrap();
            let mut table = JobTable::default();
            table.apply_owned(record).unwrap();
            let spec = &table.get(JobId(1)).unwrap().spec;
            assert_eq!(
                (spec.requeue, spec.max_requeues, spec.max_retries),
                (true, 2, 0)
            );
        }
        let mut jobs = BTreeMap::new();
        let mut status = crate::job::JobStatus::queued(JobId(1));
        status.attempt = 3;
        jobs.insert(
            JobId(1),
            EntryV0 {
                spec: spec_v0(),
                status,
                submitted_ms: 5,
                grants: Vec::new(),
                tokens: Vec::new(),
                outcome: None,
                last_loss: Some("lost twice".into()),
            },
        );
        let old = TableV0 {
            jobs,
            next_id: 2,
            token_high_water: 7,
        };
        let mut table: JobTable = decode(&rmp_serde::to_vec(&old).unwrap(), "old").unwrap();
        table.after_load();
        let entry = table.get(JobId(1)).unwrap();
        assert_eq!((entry.spec.max_requeues, entry.spec.max_retries), (2, 0));
        assert_eq!(entry.requeues, 2, "two attempts were lost before");
    }
}
