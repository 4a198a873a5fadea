//! Readers of job logs: [`LogReader`] hands out [`LogChunks`] (a range of the logical stream as
//! it is now: from an offset, or the last bytes) and [`LogFollower`]s (the stream as it grows,
//! until capture is done). Both walk the pieces (head and tail segments) in logical order in
//! chunks of at most [`CAPTURE_CHUNK`] bytes, and yield a [`gap_marker`] where bytes are missing.
//!
//! Invariants: a cursor's offset only moves forward, by the bytes it returned or by the size of
//! the gap a marker names, so nothing is yielded twice or out of order. A piece is opened for
//! each read: one that is gone (rotated out) is dropped from the listing, which is read again,
//! and the cursor goes on from the first piece past its offset.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    blocking, gap_marker, list, log_read_failed, segment_path, LogPiece, CAPTURE_CHUNK,
    FOLLOW_POLL, FOLLOW_RELIST, MIN_SEGMENT_START,
};
use crate::engine::{IoEngine, IoFile, OpenMode};
use crate::error::{CpuError, Result};

/// How many times one step lists the pieces again after the one it was to read disappeared,
/// before it reports that nothing is there for now.
const VANISHED_RETRIES: usize = 8;

/// Reads the log files of command jobs, whole, from an offset or as they grow, through the I/O
/// engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogReader {
    engine: IoEngine,
}

impl LogReader {
    /// A reader on `engine`.
    pub fn new(engine: IoEngine) -> LogReader {
        LogReader { engine }
    }

    /// The pieces of the stream at `path` (head and tail segments) sorted by logical offset,
    /// each with its logical range; empty when the stream does not exist. Lists the log
    /// directory on the blocking pool.
    pub async fn pieces(&self, path: impl AsRef<Path>) -> Result<Vec<LogPiece>> {
        let path = path.as_ref().to_path_buf();
        let target = path.clone();
        blocking("list", &path, move || {
            list(&target, false).map_err(|e| CpuError::io("list", &target, e))
        })
        .await
        .map_err(|e| log_read_failed(e, &path))
    }

    /// The stream at `path` from logical offset `from` to its end as it is now, as chunks.
    /// An `open` [`CpuError::Io`] with `NotFound` when the stream does not exist.
    pub async fn read_from(&self, path: impl AsRef<Path>, from: u64) -> Result<LogChunks> {
        let cursor = Cursor::open(self.engine.clone(), path.as_ref(), from).await?;
        let end = cursor.end();
        Ok(LogChunks { cursor, end })
    }

    /// The last `max_bytes` logical bytes of the stream at `path` (all of it when shorter), as
    /// chunks; a gap inside that range comes as a marker. Errors as [`read_from`](Self::read_from).
    pub async fn tail(&self, path: impl AsRef<Path>, max_bytes: u64) -> Result<LogChunks> {
        let mut cursor = Cursor::open(self.engine.clone(), path.as_ref(), 0).await?;
        let end = cursor.end();
        cursor.pos = end.saturating_sub(max_bytes);
        Ok(LogChunks { cursor, end })
    }

    /// Follows the stream at `path` from logical offset `from_offset` as it grows, across its
    /// pieces, until `done` (from [`crate::launcher::RunningProcess::log_watch`]) says capture
    /// has finished and every byte still there was read. An `open` [`CpuError::Io`] when the
    /// log does not exist.
    pub fn follow(
        &self,
        path: impl AsRef<Path>,
        from_offset: u64,
        done: watch::Receiver<bool>,
    ) -> Result<LogFollower> {
        let path = path.as_ref();
        if let Err(e) = fs::metadata(path) {
            return Err(log_read_failed(CpuError::io("open", path, e), path));
        }
        Ok(LogFollower {
            cursor: Cursor::new(self.engine.clone(), path, from_offset),
            done,
            writer_gone: false,
            finished: false,
            listed: false,
            relist_at: Instant::now(),
            poll: FOLLOW_POLL,
        })
    }
}

/// A range of a log's logical stream, chunk by chunk; see [`LogReader::tail`] and
/// [`LogReader::read_from`].
#[derive(Debug)]
pub struct LogChunks {
    cursor: Cursor,
    end: u64,
}

impl LogChunks {
    /// The logical offset the next chunk starts at.
    pub fn offset(&self) -> u64 {
        self.cursor.pos
    }

    /// The logical offset the range ends at.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The next chunk (at most [`CAPTURE_CHUNK`] bytes of the log, or one gap marker); `None`
    /// at the end of the range.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        self.cursor.step(Some(self.end)).await
    }

    /// Every chunk, markers included, collected into one buffer of at most `max_bytes` (the
    /// rest is left unread): for tests and small logs; a server streams chunks instead.
    pub async fn collect(mut self, max_bytes: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < max_bytes {
            let Some(chunk) = self.next_chunk().await? else {
                break;
            };
            let take = chunk.len().min(max_bytes - out.len());
            out.extend_from_slice(&chunk[..take]);
        }
        Ok(out)
    }
}

/// New bytes of a growing log, chunk by chunk, across its pieces; see [`LogReader::follow`].
#[derive(Debug)]
pub struct LogFollower {
    cursor: Cursor,
    done: watch::Receiver<bool>,
    /// The sender of `done` is gone: no capture remains to write anything.
    writer_gone: bool,
    /// Everything was read after capture ended.
    finished: bool,
    /// The pieces were listed once.
    listed: bool,
    /// When an idle follower may list the directory again.
    relist_at: Instant,
    poll: Duration,
}

impl LogFollower {
    /// The logical offset the next chunk starts at (markers take none).
    pub fn offset(&self) -> u64 {
        self.cursor.pos
    }

    /// The next bytes of the log (at most [`CAPTURE_CHUNK`]) or one gap marker, waiting for
    /// them while the process runs; `None` once capture has finished and everything was read.
    /// A piece rotated out before it was read is skipped with a marker, never an error.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.finished {
            return Ok(None);
        }
        // Whether the directory was listed after capture ended, within this call.
        let mut final_listing = false;
        loop {
            // Read the flag before the files: bytes written before `done` turned true are then
            // seen by the reads below.
            let ended = self.writer_gone || *self.done.borrow_and_update();
            if !self.listed {
                self.cursor.relist().await?;
                self.listed = true;
                self.relist_at = Instant::now() + FOLLOW_RELIST;
            }
            if let Some(chunk) = self.cursor.step(None).await? {
                return Ok(Some(chunk));
            }
            let pos = self.cursor.pos;
            // Nothing more at `pos` now. Segments only exist past the smallest head.
            if pos >= MIN_SEGMENT_START {
                // The writer creates the next segment where the full piece ends: found by
                // name, it says the piece is complete, with no directory listing.
                if !self.cursor.knows_segment_at(pos) {
                    let next = segment_path(&self.cursor.path, pos);
                    if is_file(&next) {
                        self.cursor.add(LogPiece {
                            path: next,
                            start: pos,
                            len: 0,
                            head: false,
                        });
                        continue;
                    }
                }
                // Not found by name: the segments past a full head may all have rotated out.
                let due = Instant::now() >= self.relist_at;
                if (ended && !final_listing) || (!ended && due) {
                    self.cursor.relist().await?;
                    final_listing = ended;
                    self.relist_at = Instant::now() + FOLLOW_RELIST;
                    if self.cursor.has_after(pos) {
                        continue;
                    }
                }
            }
            if ended {
                self.finished = true;
                return Ok(None);
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                changed = self.done.changed() => {
                    if changed.is_err() {
                        // Every capture task is gone (the process was dropped): nothing more
                        // will be written.
                        self.writer_gone = true;
                    }
                }
            }
        }
    }
}

/// A position in a stream and the pieces it was last listed with.
#[derive(Debug)]
struct Cursor {
    engine: IoEngine,
    path: PathBuf,
    /// Sorted by logical start; lengths grow as reads find more.
    pieces: Vec<LogPiece>,
    /// The logical offset of the next byte to yield.
    pos: u64,
    /// The head's length, for the markers' text.
    head_len: u64,
}

impl Cursor {
    fn new(engine: IoEngine, path: &Path, pos: u64) -> Cursor {
        Cursor {
            engine,
            path: path.to_path_buf(),
            pieces: Vec::new(),
            pos,
            head_len: 0,
        }
    }

    /// A cursor at `pos` with the stream's pieces listed.
    async fn open(engine: IoEngine, path: &Path, pos: u64) -> Result<Cursor> {
        let mut cursor = Cursor::new(engine, path, pos);
        cursor.relist().await?;
        Ok(cursor)
    }

    /// Lists the pieces again (on the blocking pool). No piece at all is an `open` error with
    /// `NotFound`: the stream does not exist, or was removed.
    async fn relist(&mut self) -> Result<()> {
        let target = self.path.clone();
        let pieces = blocking("list", &self.path, move || {
            list(&target, true).map_err(|e| CpuError::io("list", &target, e))
        })
        .await
        .map_err(|e| log_read_failed(e, &self.path))?;
        if pieces.is_empty() {
            let e = io::Error::new(
                io::ErrorKind::NotFound,
                "the log has no head and no segment",
            );
            return Err(log_read_failed(
                CpuError::io("open", &self.path, e),
                &self.path,
            ));
        }
        if let Some(head) = pieces.iter().find(|p| p.head) {
            self.head_len = head.len;
        }
        self.pieces = pieces;
        Ok(())
    }

    /// The logical end of the stream as listed.
    fn end(&self) -> u64 {
        self.pieces.iter().map(LogPiece::end).max().unwrap_or(0)
    }

    /// Whether a listed piece holds bytes past `pos`, or starts past it.
    fn has_after(&self, pos: u64) -> bool {
        self.pieces.iter().any(|p| p.end() > pos || p.start > pos)
    }

    fn knows_segment_at(&self, pos: u64) -> bool {
        self.pieces.iter().any(|p| !p.head && p.start == pos)
    }

    fn add(&mut self, piece: LogPiece) {
        let at = self.pieces.partition_point(|p| p.start <= piece.start);
        self.pieces.insert(at, piece);
    }

    /// The next chunk at the cursor, below `end` when given: bytes of the piece holding the
    /// offset, or a marker for the gap up to the next piece (or up to `end`, when the rest of a
    /// bounded range is gone). `None` when nothing more is there now.
    async fn step(&mut self, end: Option<u64>) -> Result<Option<Vec<u8>>> {
        let limit = end.unwrap_or(u64::MAX);
        for _ in 0..VANISHED_RETRIES {
            if self.pos >= limit {
                return Ok(None);
            }
            // The last piece starting at or before the offset: the one holding it, or the one
            // it is at the end of (which may have grown since it was listed).
            if let Some(i) = self.pieces.iter().rposition(|p| p.start <= self.pos) {
                let (path, start) = (self.pieces[i].path.clone(), self.pieces[i].start);
                let file = match IoFile::open(&path, OpenMode::read()) {
                    Ok(file) => file,
                    Err(e) if is_not_found(&e) => {
                        // Rotated out before (or while) we got to it.
                        self.relist().await?;
                        continue;
                    }
                    Err(e) => return Err(log_read_failed(e, &path)),
                };
                let want = (limit - self.pos).min(CAPTURE_CHUNK as u64) as usize;
                let chunk = self
                    .engine
                    .read_at(&file, want, self.pos - start)
                    .await
                    .map_err(|e| log_read_failed(e, &path))?;
                if !chunk.is_empty() {
                    self.pos += chunk.len() as u64;
                    let piece = &mut self.pieces[i];
                    piece.len = piece.len.max(self.pos - piece.start);
                    if piece.head {
                        self.head_len = piece.len;
                    }
                    return Ok(Some(chunk.into_vec()));
                }
            }
            // Nothing at the offset: a piece after it means the bytes between were dropped.
            let next = self.pieces.iter().find(|p| p.start > self.pos);
            let to = match (next, end) {
                (Some(next), _) => next.start.min(limit),
                (None, Some(end)) => end,
                (None, None) => return Ok(None),
            };
            let dropped = to - self.pos;
            self.pos = to;
            return Ok(Some(gap_marker(dropped, self.head_len)));
        }
        Ok(None)
    }
}

fn is_not_found(err: &CpuError) -> bool {
    matches!(err, CpuError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

/// Whether `path` is a regular file now. Any error reads as "not there": the caller's periodic
/// listing reports errors that persist.
fn is_file(path: &Path) -> bool {
    match fs::metadata(path) {
        Ok(meta) => meta.is_file(),
        Err(_) => false,
    }
}
