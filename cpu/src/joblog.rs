//! Job output on disk: the capture of a process's stdout and stderr into log files, and the
//! readers of those files (whole, the last bytes, or following them as they grow).
//!
//! Capture holds one buffer of at most [`CAPTURE_CHUNK`] bytes per stream, whatever the child's
//! output rate: the next read of the pipe waits for the write of the last chunk. A failed log
//! write is logged and counted once; the pipe is then still drained (so the child never blocks
//! on a full pipe) but nothing more is written.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::engine::{IoBuf, IoEngine, IoFile, OpenMode};
use crate::error::{CpuError, Result};
use crate::metrics as m;

/// Largest chunk read from a pipe and written to a log in one request, and the size of the one
/// buffer each captured stream holds.
pub const CAPTURE_CHUNK: usize = 64 * 1024;

/// The first read of each stream; a read that fills it grows reads to [`CAPTURE_CHUNK`].
pub const CAPTURE_FIRST_CHUNK: usize = 4096;

/// How often a [`LogFollower`] looks for new bytes while the process runs.
pub const FOLLOW_POLL: Duration = Duration::from_millis(50);

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

/// What one stream's capture achieved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Captured {
    /// Bytes read from the pipe.
    pub(crate) bytes: u64,
    /// All of them reached the log.
    pub(crate) complete: bool,
}

pub(crate) struct Capture<R> {
    pub(crate) pipe: R,
    pub(crate) engine: IoEngine,
    pub(crate) file: IoFile,
    pub(crate) job_id: Arc<str>,
    pub(crate) pid: i32,
    pub(crate) stream: &'static str,
    pub(crate) done: Arc<CaptureDone>,
    pub(crate) bytes: Arc<AtomicU64>,
}

/// Copies a pipe into its log until the pipe closes, through one reused buffer.
pub(crate) async fn capture<R: AsyncRead + Unpin>(c: Capture<R>) -> Captured {
    let Capture {
        mut pipe,
        engine,
        file,
        job_id,
        pid,
        stream,
        done,
        bytes,
    } = c;
    // Small until the stream proves busy: most jobs' stderr (and many stdouts) never fill
    // 4 KiB, and a short job should not pay for zeroing 64 KiB twice.
    let mut chunk = CAPTURE_FIRST_CHUNK;
    let mut buf = Vec::new();
    let mut read_total = 0u64;
    let mut written = 0u64;
    let mut writing = true;
    loop {
        buf.resize(chunk, 0);
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(job_id = %job_id, pid, stream, path = %file.path().display(), error = %e,
                    "reading the process's output pipe failed; capture of this stream stops");
                metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "capture").increment(1);
                writing = false;
                break;
            }
        };
        if n == chunk {
            chunk = CAPTURE_CHUNK;
        }
        read_total += n as u64;
        bytes.store(read_total, Ordering::Release);
        buf.truncate(n);
        if !writing {
            continue;
        }
        match engine
            .write_all_at(&file, IoBuf::from(std::mem::take(&mut buf)), written)
            .await
        {
            Ok(back) => {
                buf = back.into_vec();
                written += n as u64;
            }
            Err(e) => {
                tracing::error!(job_id = %job_id, pid, stream, path = %file.path().display(), error = %e,
                    offset = written, "writing captured output failed; the rest of this stream is drained, not logged");
                metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "capture").increment(1);
                writing = false;
                buf = Vec::with_capacity(CAPTURE_CHUNK);
            }
        }
    }
    done.finish_one();
    Captured {
        bytes: read_total,
        complete: writing && written == read_total,
    }
}

/// Reads the log files of command jobs, whole or as they grow, through the I/O engine.
#[derive(Debug, Clone)]
pub struct LogReader {
    engine: IoEngine,
}

impl LogReader {
    /// A reader on `engine`.
    pub fn new(engine: IoEngine) -> LogReader {
        LogReader { engine }
    }

    /// The last `max_bytes` bytes of the log at `path` (all of it when shorter).
    pub async fn tail(&self, path: impl AsRef<Path>, max_bytes: u64) -> Result<Vec<u8>> {
        let path = path.as_ref();
        let file = open_log(path)?;
        let len = file
            .std()
            .metadata()
            .map_err(|e| log_read_failed(CpuError::io("stat", path, e), path))?
            .len();
        let start = len.saturating_sub(max_bytes);
        let mut out = Vec::new();
        let mut offset = start;
        while offset < len {
            let want = (len - offset).min(CAPTURE_CHUNK as u64) as usize;
            let chunk = self
                .engine
                .read_at(&file, want, offset)
                .await
                .map_err(|e| log_read_failed(e, path))?;
            if chunk.is_empty() {
                break; // truncated under us: what was there is what we return
            }
            offset += chunk.len() as u64;
            out.extend_from_slice(chunk.as_slice());
        }
        Ok(out)
    }

    /// Follows the log at `path` from byte `from_offset` as it grows, until `done` (from
    /// [`crate::launcher::RunningProcess::log_watch`]) says capture has finished and every byte was read.
    pub fn follow(
        &self,
        path: impl AsRef<Path>,
        from_offset: u64,
        done: watch::Receiver<bool>,
    ) -> Result<LogFollower> {
        let path = path.as_ref();
        Ok(LogFollower {
            engine: self.engine.clone(),
            file: open_log(path)?,
            offset: from_offset,
            done,
            finished: false,
            poll: FOLLOW_POLL,
        })
    }
}

/// New bytes of a growing log, chunk by chunk; see [`LogReader::follow`].
#[derive(Debug)]
pub struct LogFollower {
    engine: IoEngine,
    file: IoFile,
    offset: u64,
    done: watch::Receiver<bool>,
    /// No writer remains: what is in the file now is all there will be.
    finished: bool,
    poll: Duration,
}

impl LogFollower {
    /// The offset the next chunk starts at.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next bytes written to the log (at most [`CAPTURE_CHUNK`]), waiting for them while
    /// the process runs; `None` once capture has finished and everything was read.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            // Read the flag before the file: bytes written before `done` turned true are then
            // seen by this read.
            let finished = self.finished || *self.done.borrow_and_update();
            let chunk = self
                .engine
                .read_at(&self.file, CAPTURE_CHUNK, self.offset)
                .await
                .map_err(|e| log_read_failed(e, self.file.path()))?;
            if !chunk.is_empty() {
                self.offset += chunk.len() as u64;
                return Ok(Some(chunk.into_vec()));
            }
            if finished {
                self.finished = true;
                return Ok(None);
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                changed = self.done.changed() => {
                    if changed.is_err() {
                        // Every capture task is gone (the process was dropped): nothing more
                        // will be written.
                        self.finished = true;
                    }
                }
            }
        }
    }
}

fn open_log(path: &Path) -> Result<IoFile> {
    IoFile::open(path, OpenMode::read()).map_err(|e| log_read_failed(e, path))
}

fn log_read_failed(err: CpuError, path: &Path) -> CpuError {
    tracing::warn!(path = %path.display(), error = %err, "reading a command job's log failed");
    metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "log_read").increment(1);
    err
}
