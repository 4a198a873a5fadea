//! Failures: their kinds, the one place that reports them (one error event, one counter
//! increment, one journal entry) and the bounded in-memory failure journal.
//!
//! Invariant: every failure anywhere in a tree goes through [`report`] exactly once, at the
//! place that detected it (a cell for panics, fatal errors and unresponsiveness; a supervisor for
//! shutdown timeouts, restart limits, escalations and disabled children; the callback runner for
//! callback errors and overflows).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::metrics::ACTOR_FAILURES_TOTAL;

/// What kind of failure a child had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A handler, hook, spawned future or factory panicked.
    Panic,
    /// The actor declared a fatal error with [`crate::SupervisedContext::fail`].
    Fatal,
    /// The child could not be started (its factory or `started` hook panicked).
    StartFailed,
    /// The child did not stop within its shutdown timeout and was killed.
    ShutdownTimeout,
    /// The child made no progress within its progress deadline and was killed.
    Unresponsive,
    /// A supervisor saw more restarts than its intensity allows within its period.
    RestartLimit,
    /// A child supervisor gave up after its restart limit and escalated to its parent.
    Escalated,
    /// A child went over its own restart limit and was disabled (never restarted again).
    Disabled,
    /// A callback returned an error for an event.
    CallbackError,
    /// A callback's bounded queue was full and an event for it was dropped.
    Overflow,
}

impl FailureKind {
    /// The snake_case name used in logs and as the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Panic => "panic",
            FailureKind::Fatal => "fatal",
            FailureKind::StartFailed => "start_failed",
            FailureKind::ShutdownTimeout => "shutdown_timeout",
            FailureKind::Unresponsive => "unresponsive",
            FailureKind::RestartLimit => "restart_limit",
            FailureKind::Escalated => "escalated",
            FailureKind::Disabled => "disabled",
            FailureKind::CallbackError => "callback_error",
            FailureKind::Overflow => "overflow",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failure, as logged and as kept in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureRecord {
    /// Position in the journal's sequence (starts at 1, never reused).
    pub seq: u64,
    /// Wall-clock time the failure was recorded.
    pub at: SystemTime,
    /// Path of the failing actor in the tree, e.g. `root/scheduler/lease_manager`.
    pub path: String,
    /// The child id used as the `actor` metric label (a pool's children share their pool's id).
    pub actor: String,
    /// What kind of failure.
    pub kind: FailureKind,
    /// The panic message, error text or explanation.
    pub message: String,
    /// How many times this child had been restarted before this failure.
    pub restart_count: u64,
    /// Extra ids of what was being handled (e.g. a callback's event id), if any.
    pub context: Option<String>,
}

/// A failure about to be reported (everything but the journal's sequence number and time).
#[derive(Clone, Debug)]
pub(crate) struct Failure<'a> {
    pub path: &'a str,
    pub actor: &'a str,
    pub kind: FailureKind,
    pub message: &'a str,
    pub restart_count: u64,
    pub context: Option<&'a str>,
}

/// The last failures of a tree, newest last, bounded so memory never grows with the failure rate.
///
/// Cloning gives another handle to the same journal.
#[derive(Clone, Debug)]
pub struct FailureJournal {
    inner: Arc<Mutex<JournalInner>>,
}

#[derive(Debug)]
struct JournalInner {
    capacity: usize,
    next_seq: u64,
    records: VecDeque<FailureRecord>,
}

impl Default for FailureJournal {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl FailureJournal {
    /// Default number of failures kept: enough to show a crash loop and what led to it, small
    /// enough (about 256 KiB at most) to keep forever.
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// A journal keeping the last `capacity` failures (at least one).
    pub fn new(capacity: usize) -> Self {
        FailureJournal {
            inner: Arc::new(Mutex::new(JournalInner {
                capacity: capacity.max(1),
                next_seq: 1,
                records: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JournalInner> {
        // A poisoned lock only means a panic happened while a record was pushed; the deque is
        // still consistent, so keep using it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, failure: &Failure<'_>) -> u64 {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.records.len() >= inner.capacity {
            inner.records.pop_front();
        }
        inner.records.push_back(FailureRecord {
            seq,
            at: SystemTime::now(),
            path: failure.path.to_owned(),
            actor: failure.actor.to_owned(),
            kind: failure.kind,
            message: failure.message.to_owned(),
            restart_count: failure.restart_count,
            context: failure.context.map(str::to_owned),
        });
        seq
    }

    /// The failures kept, oldest first.
    pub fn records(&self) -> Vec<FailureRecord> {
        self.lock().records.iter().cloned().collect()
    }

    /// The failures with a sequence number greater than `seq`, oldest first.
    pub fn since(&self, seq: u64) -> Vec<FailureRecord> {
        self.lock()
            .records
            .iter()
            .filter(|r| r.seq > seq)
            .cloned()
            .collect()
    }

    /// How many failures were ever recorded (also those no longer kept).
    pub fn total(&self) -> u64 {
        self.lock().next_seq - 1
    }
}

/// Reports one failure: one error-level event with structured fields, one increment of
/// `cadre_actor_failures_total{actor,kind}`, one journal entry.
pub(crate) fn report(journal: &FailureJournal, failure: Failure<'_>) {
    let seq = journal.push(&failure);
    tracing::error!(
        actor_path = failure.path,
        actor = failure.actor,
        kind = failure.kind.as_str(),
        reason = failure.message,
        restart_count = failure.restart_count,
        context = failure.context,
        failure_seq = seq,
        "actor failure"
    );
    metrics::counter!(
        ACTOR_FAILURES_TOTAL,
        "actor" => failure.actor.to_owned(),
        "kind" => failure.kind.as_str()
    )
    .increment(1);
}
