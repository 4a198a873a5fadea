//! The durable journal: the write-ahead log of the job store.
//!
//! Records are bytes the caller gives (MessagePack in practice) in CRC32C-checked frames (see
//! [`frame`]: a length with a checksum of its own, then the payload's checksum) in append-only
//! segment files `NNNNNNNNNNNNNNNNNNNN.seg` that roll at a size limit.
//!
//! **Group commit.** One writer task owns the files. Appends queue on a channel; the writer
//! takes every append waiting (up to a batch size), frames them into one buffer and makes it
//! durable with one write and one fdatasync (linked in one io_uring submission on that backend).
//! An append's future completes only after its record is durable.
//!
//! **A disk that refuses writes** (full, `EIO`, read-only) stalls the journal instead of
//! stopping it: the writer keeps the failed batch in memory, says so once (one error event, and
//! [`Journal::health`] turns [`JournalHealth::Stalled`] with the reason and the free space),
//! then retries with backoff: it reopens the segment, truncates it back to the end of the last
//! durable batch (so a partial write leaves nothing behind), and rewrites the batch from memory
//! before it fsyncs again (never trusting a retried fsync alone, as PostgreSQL learned). Once a
//! retry succeeds it says so once and carries on with everything that queued meanwhile, in
//! order. Nothing waiting is acknowledged before it is durable, and nothing is lost unless the
//! journal is closed while stalled, in which case every waiting record gets
//! [`CpuError::JournalStopped`].
//!
//! **Compaction.** A snapshot replaces the records before it. A large one is written a chunk at
//! a time (the `snapshot` module: a cut among the appends, then chunks, then an install), so its writer
//! never holds its whole state at once; [`Journal::compact`] takes a small one whole. Either
//! way the snapshot covers every record appended before it: the writer rolls to a new segment, writes the snapshot to
//! `snapshot.tmp`, syncs it, renames it to `NNN.snap` (covering all segments below `NNN`),
//! syncs the directory, then deletes the older segments and snapshots. A compaction that fails
//! (a full disk) changes nothing the journal relies on: its temporary file is removed and the
//! records stay in their segments.
//!
//! **Recovery.** [`Journal::open`] returns the newest snapshot and the records after it, in
//! order. A torn tail of the last segment (its last write, cut short) is moved aside into a
//! file of its own (`<segment>.torn-<offset>`, kept as evidence) and cut off, reported at warn
//! with segment and offset. Any other damage is [`CpuError::Corrupt`] naming segment and
//! offset, with nothing changed on disk: never skipped, never truncated.
//!
//! **Order.** Records are durable in the order their `append` futures first ran (the channel is
//! FIFO), and `compact` is ordered among them the same way.

pub mod frame;
mod recover;
mod snapshot;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::error::{CpuError, Result};
use crate::metrics as m;

pub use frame::{encode_frame, encode_frame_v1, legacy_segment, FRAME_HEADER, FRAME_HEADER_V1};
pub use snapshot::{Cut, PendingCut, SnapshotFile};

/// Tuning of a journal. The defaults suit the job store: records of a few hundred bytes,
/// thousands per second.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// A segment rolls once it holds this many bytes (default 64 MiB: few files, cheap rolls).
    pub segment_bytes: u64,
    /// The largest record accepted (default 16 MiB); recovery treats a longer length as damage.
    pub max_record_bytes: u32,
    /// The most bytes one group commit writes (default 4 MiB); more waits for the next one.
    pub max_batch_bytes: usize,
    /// Appends that may wait for the writer (default 65,536); beyond that `append` waits.
    pub queue_depth: usize,
    /// The first pause before a stalled write is tried again (default 100 ms); it doubles up
    /// to [`JournalOptions::retry_max`].
    pub retry_first: std::time::Duration,
    /// The longest pause between tries of a stalled write (default 5 s).
    pub retry_max: std::time::Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            max_batch_bytes: 4 << 20,
            queue_depth: 65_536,
            retry_first: std::time::Duration::from_millis(100),
            retry_max: std::time::Duration::from_secs(5),
        }
    }
}

impl JournalOptions {
    fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(CpuError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if self.segment_bytes < 4096 {
            return bad("journal.segment_bytes", "must be at least 4096");
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > (1 << 30) {
            return bad("journal.max_record_bytes", "must be between 1 and 1 GiB");
        }
        if self.max_batch_bytes == 0 {
            return bad(
                "journal.max_batch_bytes",
                "must be at least 1 (a record larger than it is committed alone)",
            );
        }
        if self.queue_depth == 0 {
            return bad("journal.queue_depth", "must be at least 1");
        }
        if self.retry_first.is_zero() || self.retry_max < self.retry_first {
            return bad(
                "journal.retry_first",
                "must be above 0 and at most journal.retry_max",
            );
        }
        Ok(())
    }
}

/// Where a record lies: ordered like the records themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn {
    /// The segment's index.
    pub segment: u64,
    /// The frame's byte offset in it.
    pub offset: u64,
}

/// A torn tail that recovery set aside and cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment it was in (always the last one).
    pub segment: PathBuf,
    /// Where the first bad frame began: the segment's new length.
    pub offset: u64,
    /// How many bytes were cut.
    pub dropped_bytes: u64,
    /// What was wrong with the frame.
    pub reason: String,
    /// The file the cut bytes were moved to.
    pub moved_to: PathBuf,
}

/// What [`Journal::open`] found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The newest snapshot, if compaction ever ran.
    pub snapshot: Option<Vec<u8>>,
    /// Every record after the snapshot, in order.
    pub records: Vec<Vec<u8>>,
    /// The torn tail that was set aside, if there was one.
    pub torn_tail: Option<TornTail>,
}

/// Why writes do not go through right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// `no_space` (`ENOSPC`, `EDQUOT`) or `io` (anything else the disk answered).
    pub kind: &'static str,
    /// The journal's directory.
    pub dir: PathBuf,
    /// The error of the last try.
    pub error: String,
    /// The space of the journal's filesystem at the last try, when it could be read.
    pub space: Option<crate::disk::DiskSpace>,
    /// Tries so far.
    pub tries: u64,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.kind == "no_space" {
            "the disk is full"
        } else {
            "the disk refuses writes"
        };
        write!(f, "{what} under {}: {}", self.dir.display(), self.error)?;
        if let Some(space) = self.space {
            write!(f, " ({space})")?;
        }
        Ok(())
    }
}

/// Whether the journal is taking writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalHealth {
    /// Writes are going through.
    Writable,
    /// A write failed; the writer retries with backoff and nothing after it is durable yet.
    Stalled(Stall),
}

impl JournalHealth {
    /// Whether writes are going through.
    pub fn is_writable(&self) -> bool {
        matches!(self, JournalHealth::Writable)
    }
}

enum Cmd {
    Append {
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Lsn>>,
    },
    Compact {
        snapshot: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
    /// Roll to a fresh segment and say where: a streamed snapshot's cut.
    Cut {
        reply: oneshot::Sender<Result<Cut>>,
    },
    /// Install `snapshot.tmp` as the snapshot of everything before `segment`.
    Install {
        segment: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// What the handles and the writer share.
#[derive(Debug)]
struct Shared {
    appends: AtomicU64,
    commits: AtomicU64,
    /// Set by [`Journal::close`]: a stalled writer gives up instead of retrying forever.
    closing: AtomicBool,
    wake: Notify,
}

/// A handle to an open journal. Cheap to clone; the writer stops when [`Journal::close`] is
/// called or the last handle is dropped, after finishing what was queued.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Cmd>,
    dir: Arc<Path>,
    max_record_bytes: u32,
    shared: Arc<Shared>,
    health: watch::Receiver<JournalHealth>,
}

/// Room held in a journal's queue for one record or one compaction (see [`Journal::slot`]).
#[derive(Debug)]
pub struct JournalSlot {
    permit: mpsc::OwnedPermit<Cmd>,
    dir: Arc<Path>,
    max_record_bytes: u32,
}

/// A compaction queued through a [`JournalSlot`]: resolves once it is done.
pub type PendingCompact = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

impl JournalSlot {
    /// Queues `payload` now, behind everything queued before; the returned [`PendingRecord`]
    /// (a plain future over the writer's answer, no allocation of its own) completes once the
    /// record is durable. An oversized record is refused here, before it is queued.
    pub fn queue(self, payload: Vec<u8>) -> Result<PendingRecord> {
        check_record_size(&self.dir, self.max_record_bytes, payload.len())?;
        let (reply, rx) = oneshot::channel();
        self.permit.send(Cmd::Append { payload, reply });
        Ok(PendingRecord { rx, dir: self.dir })
    }

    /// Queues a compaction to `snapshot` now: it replaces every record queued before it.
    pub fn compact(self, snapshot: Vec<u8>) -> PendingCompact {
        let (reply, rx) = oneshot::channel();
        self.permit.send(Cmd::Compact { snapshot, reply });
        let dir = self.dir;
        Box::pin(async move { writer_answer(&dir, rx).await })
    }
}

/// A record queued with [`JournalSlot::queue`]: resolves with its position once it is durable,
/// or with [`CpuError::JournalStopped`] (logged and counted) if the writer exits first.
#[derive(Debug)]
pub struct PendingRecord {
    rx: oneshot::Receiver<Result<Lsn>>,
    dir: Arc<Path>,
}

impl std::future::Future for PendingRecord {
    type Output = Result<Lsn>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Lsn>> {
        match std::pin::Pin::new(&mut self.rx).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Ok(res)) => std::task::Poll::Ready(res),
            std::task::Poll::Ready(Err(_)) => {
                let err = CpuError::JournalStopped {
                    dir: self.dir.to_path_buf(),
                    reason: "its writer has exited".into(),
                };
                journal_error(&self.dir, "stopped", &err);
                std::task::Poll::Ready(Err(err))
            }
        }
    }
}

/// Refuses (logged and counted) a record longer than the journal accepts, before it is queued.
fn check_record_size(dir: &Path, max_record_bytes: u32, len: usize) -> Result<()> {
    if len > max_record_bytes as usize {
        let err = CpuError::Invalid {
            field: "record",
            reason: format!(
                "{len} bytes exceed the journal's {max_record_bytes}-byte record limit"
            ),
        };
        journal_error(dir, "invalid", &err);
        return Err(err);
    }
    Ok(())
}

/// The writer's answer to a queued command; a writer gone before answering is
/// [`CpuError::JournalStopped`], logged and counted.
async fn writer_answer<T>(dir: &Path, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    match rx.await {
        Ok(res) => res,
        Err(_) => {
            let err = CpuError::JournalStopped {
                dir: dir.to_path_buf(),
                reason: "its writer has exited".into(),
            };
            journal_error(dir, "stopped", &err);
            Err(err)
        }
    }
}

/// A copy of a journal's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    /// Records made durable since open.
    pub appends: u64,
    /// Group commits (one write and one fdatasync each) since open.
    pub commits: u64,
}

fn segment_name(index: u64) -> String {
    format!("{index:020}.seg")
}

fn snapshot_name(index: u64) -> String {
    format!("{index:020}.snap")
}

const SNAPSHOT_TMP: &str = "snapshot.tmp";
const LOCK_FILE: &str = "lock";

fn journal_error(dir: &Path, kind: &'static str, err: &CpuError) {
    tracing::error!(dir = %dir.display(), kind, error = %err, "journal failure");
    metrics::counter!(m::JOURNAL_ERRORS, "kind" => kind).increment(1);
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, recovers it, and starts its writer on the
    /// current tokio runtime. The directory is locked: a second open fails until this one
    /// closes (or its process dies).
    pub async fn open(
        dir: impl AsRef<Path>,
        engine: crate::engine::IoEngine,
        options: JournalOptions,
    ) -> Result<(Journal, Recovered)> {
        let dir = dir.as_ref();
        options.validate()?;
        let result = recover::open(dir, engine, options).await;
        if let Err(e) = &result {
            journal_error(dir, e.kind(), e);
        }
        result
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records and group commits made durable since open: `appends / commits` is the batching.
    pub fn stats(&self) -> JournalStats {
        JournalStats {
            appends: self.shared.appends.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
        }
    }

    /// Whether writes go through now, as a watch that changes when that does (and with each
    /// failed retry while stalled, so its free space stays current).
    pub fn health(&self) -> watch::Receiver<JournalHealth> {
        self.health.clone()
    }

    fn stopped(&self) -> CpuError {
        CpuError::JournalStopped {
            dir: self.dir.to_path_buf(),
            reason: "its writer has exited".into(),
        }
    }

    /// Appends a record; completes once it is durable (written and fdatasynced).
    pub async fn append(&self, payload: Vec<u8>) -> Result<Lsn> {
        check_record_size(&self.dir, self.max_record_bytes, payload.len())?;
        self.request(|reply| Cmd::Append { payload, reply }).await
    }

    /// Sends a command to the writer and waits for its answer; a writer that has exited is
    /// [`CpuError::JournalStopped`], logged and counted here.
    async fn request<T>(&self, cmd: impl FnOnce(oneshot::Sender<Result<T>>) -> Cmd) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(cmd(reply)).await.is_err() {
            let err = self.stopped();
            journal_error(&self.dir, "stopped", &err);
            return Err(err);
        }
        writer_answer(&self.dir, rx).await
    }

    /// Waits for room in the writer's queue and holds it. The slot then queues one record or
    /// one compaction synchronously ([`JournalSlot::queue`], [`JournalSlot::compact`]), so a
    /// caller that changes its own state and queues the matching record in one step (no await
    /// between) keeps the journal in exactly its order, while the durability of many records is
    /// awaited concurrently and group-committed.
    pub async fn slot(&self) -> Result<JournalSlot> {
        match self.tx.clone().reserve_owned().await {
            Ok(permit) => Ok(JournalSlot {
                permit,
                dir: Arc::clone(&self.dir),
                max_record_bytes: self.max_record_bytes,
            }),
            Err(_) => {
                let err = self.stopped();
                journal_error(&self.dir, "stopped", &err);
                Err(err)
            }
        }
    }

    /// [`Journal::slot`] without waiting: `Ok(None)` when the writer's queue is full right now
    /// (the caller decides whether to wait or to push back), `Err` when the journal stopped.
    pub fn try_slot(&self) -> Result<Option<JournalSlot>> {
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(Some(JournalSlot {
                permit,
                dir: Arc::clone(&self.dir),
                max_record_bytes: self.max_record_bytes,
            })),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                let err = self.stopped();
                journal_error(&self.dir, "stopped", &err);
                Err(err)
            }
        }
    }

    /// Replaces everything appended before this call by `snapshot` (which must reflect all of
    /// it), then deletes the segments it covers.
    pub async fn compact(&self, snapshot: Vec<u8>) -> Result<()> {
        self.request(|reply| Cmd::Compact { snapshot, reply }).await
    }

    /// Finishes what was queued, closes the files and releases the directory lock. A writer
    /// stalled on a disk that refuses writes gives up at once: what it still holds is answered
    /// with [`CpuError::JournalStopped`] (none of it was acknowledged).
    pub async fn close(self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close { reply }).await.is_ok() && rx.await.is_err() {
            tracing::debug!(dir = %self.dir.display(), "journal writer exited before acknowledging close");
        }
    }
}
