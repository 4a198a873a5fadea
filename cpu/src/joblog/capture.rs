//! The capture of one output stream into its log: [`LogSink`] places bytes in the head and the
//! tail segments (the layout is in the parent module's comment), [`capture`] copies a pipe into
//! it through one reused buffer.
//!
//! Invariants: the sink writes strictly in logical order; a segment is created only once the
//! piece before it is full, and only after the oldest segments were deleted down to
//! [`LOG_SEGMENTS`]` - 1`, so a reader that finds the segment starting where its piece ends
//! knows that piece is complete, and a segment it is reading disappears before any later one.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use super::{
    blocking, remove_pieces, segment_path, LogLayout, CAPTURE_CHUNK, CAPTURE_FIRST_CHUNK,
    LOG_SEGMENTS, MIN_SEGMENT_START,
};
use crate::engine::{IoBuf, IoEngine, IoFile, OpenMode};
use crate::error::{CpuError, Result};
use crate::metrics as m;

/// Signals "capture finished" once both streams' tasks have ended.
#[derive(Debug)]
pub(crate) struct CaptureDone {
    pub(crate) remaining: AtomicUsize,
    pub(crate) tx: watch::Sender<bool>,
}

impl CaptureDone {
    pub(crate) fn finish_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tx.send_replace(true);
        }
    }
}

/// One stream's progress so far, kept by its capture task (read when capture is abandoned).
#[derive(Debug, Default)]
pub(crate) struct StreamProgress {
    /// Bytes read from the pipe.
    pub(crate) read: AtomicU64,
    /// Bytes the cap dropped (segments deleted).
    pub(crate) dropped: AtomicU64,
}

/// What one stream's capture achieved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Captured {
    /// Bytes read from the pipe.
    pub(crate) bytes: u64,
    /// Bytes the cap dropped: written, then deleted with their segment.
    pub(crate) dropped: u64,
    /// Every byte read reached the log (dropped ones included, before their segment went).
    pub(crate) complete: bool,
}

/// Where one stream's bytes go: the head and, when capped, the tail segments.
#[derive(Debug)]
pub(crate) struct LogSink {
    path: PathBuf,
    head: IoFile,
    layout: Option<LogLayout>,
    /// The newest segment, being written; its start is the back of `kept`.
    segment: Option<IoFile>,
    /// The segments on disk, oldest first: (logical start, bytes written).
    kept: VecDeque<(u64, u64)>,
    dropped: u64,
}

impl LogSink {
    /// Creates (or empties) the head at `path`, after removing the tail segments a previous run
    /// left beside it: a head never goes without its segments. Blocking: where the head it
    /// finds is long enough to have segments, it lists the log directory. The head is opened
    /// first and its length read from the open file: the common case (no head yet) costs no
    /// path walk besides the open.
    pub(crate) fn create(path: &Path, cap: Option<u64>) -> Result<LogSink> {
        let head = IoFile::open(path, OpenMode::write())?;
        let found = head
            .std()
            .metadata()
            .map_err(|e| CpuError::io("stat", path, e))?
            .len();
        if found > 0 {
            if found >= MIN_SEGMENT_START {
                remove_pieces(path, false)?;
            }
            head.std()
                .set_len(0)
                .map_err(|e| CpuError::io("truncate", path, e))?;
        }
        Ok(LogSink {
            path: path.to_path_buf(),
            head,
            layout: cap.map(LogLayout::for_cap),
            segment: None,
            kept: VecDeque::new(),
            dropped: 0,
        })
    }

    /// The log path (the head).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes dropped by the cap so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The most bytes the next write at logical offset `pos` may hold (to the piece's end).
    fn room(&self, pos: u64) -> u64 {
        self.layout.map_or(u64::MAX, |l| l.room(pos))
    }

    /// Writes `buf` at logical offset `pos`; it must fit in [`room`](Self::room). Returns the
    /// buffer for reuse.
    async fn write(&mut self, engine: &IoEngine, buf: Vec<u8>, pos: u64) -> Result<Vec<u8>> {
        let n = buf.len() as u64;
        let layout = match self.layout {
            Some(layout) if pos >= layout.head => layout,
            _ => {
                let back = engine
                    .write_all_at(&self.head, IoBuf::from(buf), pos)
                    .await?;
                return Ok(back.into_vec());
            }
        };
        let start = layout.segment_start(pos);
        let file = match (&self.segment, self.kept.back()) {
            (Some(file), Some(&(s, _))) if s == start => file.clone(),
            _ => self.rotate(start).await?,
        };
        let back = engine
            .write_all_at(&file, IoBuf::from(buf), pos - start)
            .await?;
        if let Some(newest) = self.kept.back_mut() {
            newest.1 += n;
        }
        Ok(back.into_vec())
    }

    /// Deletes the oldest segments down to one less than [`LOG_SEGMENTS`], then creates the
    /// segment starting at `start`, on the blocking pool.
    async fn rotate(&mut self, start: u64) -> Result<IoFile> {
        self.segment = None;
        let mut doomed = Vec::new();
        while self.kept.len() >= LOG_SEGMENTS {
            let Some((old, len)) = self.kept.pop_front() else {
                break;
            };
            doomed.push(segment_path(&self.path, old));
            self.dropped += len;
        }
        let path = segment_path(&self.path, start);
        let target = path.clone();
        let file = blocking("create", &path, move || {
            for old in &doomed {
                match fs::remove_file(old) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(CpuError::io("remove", old, e)),
                }
            }
            IoFile::open(&target, OpenMode::create_truncate())
        })
        .await?;
        self.kept.push_back((start, 0));
        self.segment = Some(file.clone());
        Ok(file)
    }
}

pub(crate) struct Capture<R> {
    pub(crate) pipe: R,
    pub(crate) engine: IoEngine,
    pub(crate) sink: LogSink,
    pub(crate) job_id: Arc<str>,
    pub(crate) pid: i32,
    pub(crate) stream: &'static str,
    pub(crate) done: Arc<CaptureDone>,
    pub(crate) progress: Arc<StreamProgress>,
}

/// Copies a pipe into its log until the pipe closes, through one reused buffer.
pub(crate) async fn capture<R: AsyncRead + Unpin>(c: Capture<R>) -> Captured {
    let Capture {
        mut pipe,
        engine,
        mut sink,
        job_id,
        pid,
        stream,
        done,
        progress,
    } = c;
    // Small until the stream proves busy: most jobs' stderr (and many stdouts) never fill
    // 4 KiB, and a short job should not pay for zeroing 64 KiB twice.
    let mut chunk = CAPTURE_FIRST_CHUNK;
    let mut buf = Vec::new();
    let mut read_total = 0u64;
    let mut written = 0u64;
    let mut writing = true;
    loop {
        // A read never crosses the end of a piece, so each chunk goes to one file.
        let want = if writing {
            sink.room(read_total).min(chunk as u64) as usize
        } else {
            chunk
        };
        buf.resize(want, 0);
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(job_id = %job_id, pid, stream, path = %sink.path().display(), error = %e,
                    "reading the process's output pipe failed; capture of this stream stops");
                metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "capture").increment(1);
                writing = false;
                break;
            }
        };
        if n == chunk {
            chunk = CAPTURE_CHUNK;
        }
        let pos = read_total;
        read_total += n as u64;
        progress.read.store(read_total, Ordering::Release);
        buf.truncate(n);
        if !writing {
            continue;
        }
        let dropped_before = sink.dropped();
        match sink.write(&engine, std::mem::take(&mut buf), pos).await {
            Ok(back) => {
                buf = back;
                written += n as u64;
            }
            Err(e) => {
                tracing::error!(job_id = %job_id, pid, stream, path = %sink.path().display(), error = %e,
                    offset = pos, "writing captured output failed; the rest of this stream is drained, not logged");
                metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "capture").increment(1);
                writing = false;
                buf = Vec::with_capacity(CAPTURE_CHUNK);
            }
        }
        if dropped_before == 0 && sink.dropped() > 0 {
            tracing::info!(job_id = %job_id, pid, stream, path = %sink.path().display(), offset = pos,
                "the job's output passed its log cap; its oldest tail bytes are dropped from here on");
        }
        progress.dropped.store(sink.dropped(), Ordering::Release);
    }
    done.finish_one();
    Captured {
        bytes: read_total,
        dropped: sink.dropped(),
        complete: writing && written == read_total,
    }
}
