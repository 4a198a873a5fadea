//! The task that owns a journal's files: group commit, rolling, compaction, and the stall of a
//! write the disk refused (see the journal's module comment for the rules it keeps).

use std::collections::VecDeque;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{encode_frame, encode_frame_v1, encode_snapshot, SegmentHeader};
use super::recover::remove_file;
use super::{
    journal_error, segment_name, snapshot_name, Cmd, JournalHealth, JournalOptions, Lsn, Shared,
    Stall, FRAME_HEADER, SNAPSHOT_TMP,
};
use crate::engine::{IoBuf, IoEngine, IoFile, OpenMode};
use crate::error::{CpuError, Result};
use crate::metrics as m;

/// Most commands taken from the channel at once.
const RECV_MANY: usize = 4096;

type Batch = Vec<(Vec<u8>, oneshot::Sender<Result<Lsn>>)>;

pub(super) struct Writer {
    /// Sequence number of the next record.
    pub(super) seq: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) health: watch::Sender<JournalHealth>,
    pub(super) dir: PathBuf,
    pub(super) dir_file: IoFile,
    pub(super) engine: IoEngine,
    pub(super) options: JournalOptions,
    pub(super) segment: u64,
    pub(super) file: IoFile,
    /// The end of the last durable batch in `segment`.
    pub(super) offset: u64,
    /// Set once the journal gave up on a stalled write (it was closed): nothing more is written.
    pub(super) stopped: Option<String>,
    pub(super) _lock: fs::File,
}

impl Writer {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let closer = self.serve(&mut rx).await;
        // Files and the directory lock are released before `close` returns, so the directory
        // can be opened again at once.
        let dir = self.dir.clone();
        drop(self);
        if let Some(reply) = closer {
            if reply.send(()).is_err() {
                tracing::debug!(dir = %dir.display(), "journal closed after its caller left");
            }
        }
    }

    /// Serves commands until the channel closes or `close` asks; returns the closer's reply.
    async fn serve(&mut self, rx: &mut mpsc::Receiver<Cmd>) -> Option<oneshot::Sender<()>> {
        let mut batch: Batch = Vec::new();
        let mut pending: VecDeque<Cmd> = VecDeque::new();
        let mut incoming: Vec<Cmd> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if pending.is_empty() {
                // Everything waiting, in one go (at least one: this is where the writer sleeps).
                if rx.recv_many(&mut incoming, RECV_MANY).await == 0 {
                    return None;
                }
                pending.extend(incoming.drain(..));
            }
            let Some(cmd) = pending.pop_front() else {
                continue;
            };
            match cmd {
                Cmd::Append { payload, reply } => {
                    let mut bytes = FRAME_HEADER + payload.len();
                    batch.push((payload, reply));
                    loop {
                        while bytes < self.options.max_batch_bytes
                            && matches!(pending.front(), Some(Cmd::Append { .. }))
                        {
                            if let Some(Cmd::Append { payload, reply }) = pending.pop_front() {
                                bytes += FRAME_HEADER + payload.len();
                                batch.push((payload, reply));
                            }
                        }
                        // Top up with whatever arrived meanwhile, without waiting.
                        if bytes >= self.options.max_batch_bytes
                            || !pending.is_empty()
                            || try_recv_many(rx, &mut incoming) == 0
                        {
                            break;
                        }
                        pending.extend(incoming.drain(..));
                    }
                    buf = self.commit(&mut batch, buf, rx).await;
                }
                Cmd::Compact { snapshot, reply } => {
                    let res = self.compact(snapshot).await;
                    if reply.send(res).is_err() {
                        tracing::debug!(dir = %self.dir.display(), "compaction finished after its caller left");
                    }
                }
                Cmd::Close { reply } => return Some(reply),
                Cmd::Cut { reply } => {
                    let res = self.cut().await;
                    if reply.send(res).is_err() {
                        tracing::debug!(dir = %self.dir.display(), "snapshot cut answered after its caller left");
                    }
                }
                Cmd::Install { segment, reply } => {
                    let res =
                        super::snapshot::install(&self.dir, &self.engine, &self.dir_file, segment)
                            .await;
                    if let Err(e) = &res {
                        journal_error(&self.dir, "snapshot", e);
                    }
                    if reply.send(res).is_err() {
                        tracing::debug!(dir = %self.dir.display(), "snapshot install answered after its caller left");
                    }
                }
            }
        }
    }

    /// Answers every append of the batch with the error that stopped the writer.
    fn fail_batch(&self, batch: &mut Batch) {
        for (_, reply) in batch.drain(..) {
            let err = CpuError::JournalStopped {
                dir: self.dir.clone(),
                reason: self.stopped.clone().unwrap_or_else(|| "stopped".into()),
            };
            answer(reply, Err(err));
        }
    }

    /// Makes the batch durable with one write and one sync, then answers every append in it.
    /// A write the disk refuses stalls here, retried with backoff, until it goes through or the
    /// journal is closed (see the module comment of the journal).
    async fn commit(
        &mut self,
        batch: &mut Batch,
        buf: Vec<u8>,
        rx: &mpsc::Receiver<Cmd>,
    ) -> Vec<u8> {
        if self.stopped.is_some() {
            self.fail_batch(batch);
            return buf;
        }
        let mut buf = buf;
        let mut pause = self.options.retry_first;
        let mut stall: Option<Stall> = None;
        loop {
            let error = match self.write_batch(batch, buf).await {
                Ok(back) => {
                    if let Some(stall) = stall {
                        tracing::info!(dir = %self.dir.display(), tries = stall.tries,
                            records = batch.len(), "journal writable again: the stalled batch is durable");
                        self.health.send_replace(JournalHealth::Writable);
                    }
                    self.answer_batch(batch);
                    return back;
                }
                Err(error) => error,
            };
            buf = Vec::new();
            stall = Some(self.stalled(stall, &error));
            if self.shared.closing.load(Ordering::Acquire) || rx.is_closed() {
                self.stopped = Some(format!(
                    "closed while the disk refused writes, with {} records not durable: {error}",
                    batch.len()
                ));
                tracing::error!(dir = %self.dir.display(), records = batch.len(), %error,
                    "journal closed while stalled: its waiting records are not durable and are refused");
                metrics::counter!(m::JOURNAL_ERRORS, "kind" => "closed_stalled").increment(1);
                self.fail_batch(batch);
                return buf;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.shared.wake.notified() => {}
            }
            pause = (pause * 2).min(self.options.retry_max);
            // Nothing of a failed write may stay behind it: back to the end of the last durable
            // batch, through a fresh descriptor.
            if let Err(error) = self.reset_tail().await {
                tracing::debug!(dir = %self.dir.display(), %error, "journal: resetting the tail failed; retrying");
            }
        }
    }

    /// One try of a batch: roll if due, frame, write, sync.
    async fn write_batch(&mut self, batch: &Batch, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        if self.offset >= self.options.segment_bytes {
            self.roll().await?;
        }
        buf.clear();
        if self.offset == 0 {
            let header = SegmentHeader {
                index: self.segment,
                first_seq: self.seq,
            };
            encode_frame(&header.encode(), &mut buf);
        }
        for (payload, _) in batch {
            encode_frame(payload, &mut buf);
        }
        let back = self
            .engine
            .write_all_sync_at(&self.file, IoBuf::from(buf), self.offset)
            .await?;
        Ok(back.into_vec())
    }

    /// Answers a durable batch, in order, with each record's position.
    fn answer_batch(&mut self, batch: &mut Batch) {
        let mut at = self.offset;
        if at == 0 {
            at = (FRAME_HEADER + 24) as u64;
        }
        let count = batch.len() as u64;
        for (payload, reply) in batch.drain(..) {
            let lsn = Lsn {
                segment: self.segment,
                offset: at,
            };
            at += (FRAME_HEADER + payload.len()) as u64;
            answer(reply, Ok(lsn));
        }
        self.offset = at;
        self.seq += count;
        metrics::counter!(m::JOURNAL_APPENDS).increment(count);
        metrics::counter!(m::JOURNAL_COMMITS).increment(1);
        self.shared.appends.fetch_add(count, Ordering::Relaxed);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a failed try: the first of a stall is one error event and one count; later ones
    /// only refresh the health (free space, tries).
    fn stalled(&self, previous: Option<Stall>, error: &CpuError) -> Stall {
        let kind = match error {
            CpuError::Io { source, .. } if crate::disk::is_out_of_space(source) => "no_space",
            _ => "io",
        };
        let space = match crate::disk::space(&self.dir) {
            Ok(space) => Some(space),
            Err(e) => {
                // Only the message loses its free space; the stall itself is reported below.
                tracing::debug!(dir = %self.dir.display(), error = %e, "free space of the journal's disk unknown");
                None
            }
        };
        let stall = Stall {
            kind,
            dir: self.dir.clone(),
            error: error.to_string(),
            space,
            tries: previous.as_ref().map_or(1, |s| s.tries + 1),
        };
        if previous.is_none() {
            tracing::error!(dir = %self.dir.display(), kind, error = %error,
                free_bytes = space.map(|s| s.free_bytes), segment = self.segment, offset = self.offset,
                "journal write failed: the journal stalls and retries with backoff; nothing after it is durable until it goes through");
            metrics::counter!(m::JOURNAL_ERRORS, "kind" => kind).increment(1);
        }
        self.health
            .send_replace(JournalHealth::Stalled(stall.clone()));
        stall
    }

    /// Reopens the current segment and cuts it back to the end of the last durable batch.
    async fn reset_tail(&mut self) -> Result<()> {
        let path = self.dir.join(segment_name(self.segment));
        let file = IoFile::open(&path, OpenMode::write())?;
        file.std()
            .set_len(self.offset)
            .map_err(|e| CpuError::io("truncate", &path, e))?;
        self.engine.sync_all(&file).await?;
        self.file = file;
        Ok(())
    }

    /// Starts the next segment and makes its directory entry durable.
    async fn roll(&mut self) -> Result<()> {
        let next = self.segment + 1;
        let file = IoFile::open(
            self.dir.join(segment_name(next)),
            OpenMode::create_truncate(),
        )?;
        self.engine.sync_all(&self.dir_file).await?;
        self.segment = next;
        self.file = file;
        self.offset = 0;
        Ok(())
    }

    /// A streamed snapshot's cut: everything written so far stays in older segments.
    async fn cut(&mut self) -> Result<super::Cut> {
        if let Some(reason) = &self.stopped {
            return Err(CpuError::JournalStopped {
                dir: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        if self.offset > 0 {
            self.roll().await?;
        }
        Ok(super::Cut {
            segment: self.segment,
            next_seq: self.seq,
        })
    }

    async fn compact(&mut self, snapshot: Vec<u8>) -> Result<()> {
        if let Some(reason) = &self.stopped {
            return Err(CpuError::JournalStopped {
                dir: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        let res = self.compact_inner(snapshot).await;
        if let Err(e) = &res {
            // The journal is still sound: the records stay in their segments. Only the
            // temporary file of a snapshot that did not make it goes.
            journal_error(&self.dir, "compact", e);
            if let Err(error) = remove_file(&self.dir.join(SNAPSHOT_TMP)).await {
                tracing::warn!(dir = %self.dir.display(), %error, "journal: could not remove a failed snapshot's temporary file");
            }
        }
        res
    }

    async fn compact_inner(&mut self, snapshot: Vec<u8>) -> Result<()> {
        // The snapshot covers every segment below `base`; an empty current segment can be the
        // base itself.
        if self.offset > 0 {
            self.roll().await?;
        }
        let base = self.segment;
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let file = IoFile::open(&tmp, OpenMode::create_truncate())?;
        let mut framed = Vec::with_capacity(16 + 16 + snapshot.len());
        encode_frame_v1(&encode_snapshot(self.seq, &snapshot), &mut framed);
        drop(snapshot);
        self.engine
            .write_all_sync_at(&file, IoBuf::from(framed), 0)
            .await?;
        drop(file);
        let dest = self.dir.join(snapshot_name(base));
        fs::rename(&tmp, &dest).map_err(|e| CpuError::io("rename", &tmp, e))?;
        self.engine.sync_all(&self.dir_file).await?;
        remove_before(&self.dir, base).await?;
        self.engine.sync_all(&self.dir_file).await?;
        tracing::info!(dir = %self.dir.display(), snapshot = %dest.display(), "journal compacted");
        Ok(())
    }
}

/// Takes what is in the channel now, without waiting; returns how many.
fn try_recv_many(rx: &mut mpsc::Receiver<Cmd>, out: &mut Vec<Cmd>) -> usize {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match rx.poll_recv_many(&mut cx, out, RECV_MANY) {
        std::task::Poll::Ready(n) => n,
        std::task::Poll::Pending => 0,
    }
}

fn answer(reply: oneshot::Sender<Result<Lsn>>, res: Result<Lsn>) {
    if reply.send(res).is_err() {
        // The caller stopped waiting; the record's fate is already decided on disk.
        tracing::debug!("journal append answered after its caller left");
    }
}

/// Deletes the segments and snapshots below `base` (a snapshot at `base` replaces them), on
/// tokio's blocking pool: unlinking a large segment frees its extents, which takes milliseconds
/// the writer's thread (shared with its caller's actor) should not spend.
pub(super) async fn remove_before(dir: &std::path::Path, base: u64) -> Result<()> {
    let dir = dir.to_path_buf();
    let d = dir.clone();
    tokio::task::spawn_blocking(move || {
        let entries = fs::read_dir(&d).map_err(|e| CpuError::io("read dir", &d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| CpuError::io("read dir", &d, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let old = name
                .strip_suffix(".seg")
                .or_else(|| name.strip_suffix(".snap"))
                .and_then(|stem| stem.parse::<u64>().ok());
            if old.is_some_and(|i| i < base) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(CpuError::io("remove", entry.path(), e)),
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| CpuError::io("remove", &dir, std::io::Error::other(e.to_string())))?
}
