//! Job output on disk: the capture of a process's stdout and stderr into log files, an optional
//! cap per stream, and the readers of those files (from an offset, the last bytes, or following
//! them as they grow), all of it in bounded chunks.
//!
//! # On-disk layout
//!
//! An uncapped stream whose log path is `P` (say `logs/7.0.out`) is the one file `P`, every byte
//! at its own offset.
//!
//! A stream capped at `cap` bytes ([`LogLayout::for_cap`]) keeps its head and its tail:
//! - the HEAD is the file `P` and holds the stream's first `cap/4` bytes;
//! - past them, output goes to TAIL SEGMENTS named `P.<logical start offset, 20 digits>`
//!   (`7.0.out.00000000000016777216`), each at most `cap/8` bytes, back to back. Before a new
//!   segment is created the oldest ones are deleted so that at most [`LOG_SEGMENTS`] (6) remain:
//!   head and segments never hold more than `cap` bytes on disk.
//!
//! A piece's name says where its bytes sit in the stream, so any reader rebuilds the logical
//! stream, with its gaps, from the file names alone: no side file, nothing to recover after a
//! node restart, whatever cap the writer had. Logical offsets count every byte the process wrote,
//! dropped or not. Where bytes were dropped, readers yield one [`gap_marker`] line instead; the
//! marker is not part of the logical offsets.
//!
//! # Guarantees
//!
//! - Capture holds one buffer of at most [`CAPTURE_CHUNK`] bytes per stream, whatever the
//!   child's output rate: the next read of the pipe waits for the write of the last chunk, and a
//!   read never crosses a piece boundary, so a chunk goes to exactly one file.
//! - A failed log write (a segment that could not be created on a full disk included) is logged
//!   and counted once; the pipe is then still drained (so the child never blocks on a full pipe)
//!   but nothing more is written. Bytes dropped by the cap are counted, and are not a failure.
//! - Readers never hold a whole log in memory: every read is at most [`CAPTURE_CHUNK`] bytes.
//!   A follower whose piece was rotated out under it skips to the oldest piece still present,
//!   with a marker: it never errors out for that and never yields a byte twice or out of order.
//!
//! # Costs
//!
//! Capture: one engine write per chunk, and per segment one unlink and one create on tokio's
//! blocking pool. Readers open the piece they read for each chunk (an idle follower holds no
//! descriptor, and never pins a deleted segment), list the log directory once per call of
//! [`LogReader::tail`] or [`LogReader::read_from`] (skipped while the head is shorter than any
//! head can be), and a follower idle at the end of what is there stats the name of the next
//! segment each [`FOLLOW_POLL`] and lists the directory at most once per [`FOLLOW_RELIST`].
//! [`remove_stream`] and spawning a capture list the directory only for a stream long enough
//! to have tail segments; otherwise they stat the head and nothing more. [`remove_streams`]
//! lists each directory at most once for all the streams it removes.

mod capture;
mod read;
mod remove;

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use capture::{capture, Capture, CaptureDone, Captured, LogSink, StreamProgress};
pub use read::{LogChunks, LogFollower, LogReader};
pub(crate) use remove::remove_pieces;
pub use remove::{remove_stream, remove_streams};

use crate::error::{CpuError, Result};
use crate::metrics as m;

/// Largest chunk read from a pipe and written to a log in one request, the size of the one
/// buffer each captured stream holds, and the largest read a log reader makes.
pub const CAPTURE_CHUNK: usize = 64 * 1024;

/// The first read of each stream; a read that fills it grows reads to [`CAPTURE_CHUNK`].
pub const CAPTURE_FIRST_CHUNK: usize = 4096;

/// How often a [`LogFollower`] looks for new bytes while the process runs.
pub const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// How often, at most, an idle [`LogFollower`] lists the log directory for pieces it cannot
/// find by name (the first segment after the head was rotated out before it got there).
pub const FOLLOW_RELIST: Duration = Duration::from_secs(1);

/// The smallest cap a stream may have (`CommandSpec::log_cap`): 64 KiB.
pub const MIN_LOG_CAP: u64 = 64 * 1024;

/// The most tail segments a capped stream keeps on disk.
pub const LOG_SEGMENTS: usize = 6;

/// No segment starts before this logical offset: the smallest head there can be.
const MIN_SEGMENT_START: u64 = MIN_LOG_CAP / 4;

/// Where a capped stream's bytes go: the head's size and each tail segment's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLayout {
    /// Bytes the head (the file `P`) holds: a quarter of the cap.
    pub head: u64,
    /// The most bytes one tail segment holds: an eighth of the cap.
    pub segment: u64,
}

impl LogLayout {
    /// The layout for a cap of `cap` bytes per stream; a cap below [`MIN_LOG_CAP`] (which
    /// validation refuses) is taken as [`MIN_LOG_CAP`].
    pub fn for_cap(cap: u64) -> LogLayout {
        let cap = cap.max(MIN_LOG_CAP);
        LogLayout {
            head: cap / 4,
            segment: cap / 8,
        }
    }

    /// Bytes from logical offset `pos` to the end of the piece holding it.
    pub(crate) fn room(self, pos: u64) -> u64 {
        if pos < self.head {
            self.head - pos
        } else {
            self.segment - (pos - self.head) % self.segment
        }
    }

    /// The logical start of the segment holding `pos` (at or past the head).
    pub(crate) fn segment_start(self, pos: u64) -> u64 {
        pos - (pos - self.head) % self.segment
    }
}

/// One file of a stream on disk: the head or a tail segment, and the logical bytes it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPiece {
    /// The file.
    pub path: PathBuf,
    /// The logical offset of its first byte (0 for the head).
    pub start: u64,
    /// Its length when listed.
    pub len: u64,
    /// Whether it is the head (the log path itself) rather than a tail segment.
    pub head: bool,
}

impl LogPiece {
    /// The logical offset just past its last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// The file of the tail segment of the stream at `path` that starts at logical offset `start`.
pub fn segment_path(path: &Path, start: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{start:020}"));
    PathBuf::from(name)
}

/// The line readers yield where `dropped` bytes of the stream are missing (rotated out), for a
/// stream whose head holds `head` bytes.
pub fn gap_marker(dropped: u64, head: u64) -> Vec<u8> {
    format!(
        "\n[cadre: {dropped} bytes of output dropped here: the stream passed its cap; \
         the first {head} and the last bytes are kept]\n"
    )
    .into_bytes()
}

/// The pieces of the stream whose log path is `path` (head and tail segments) sorted by logical
/// offset; empty when none exists. Blocking: it lists the log directory (use
/// [`LogReader::pieces`] from async code).
pub fn list_pieces(path: impl AsRef<Path>) -> Result<Vec<LogPiece>> {
    let path = path.as_ref();
    list(path, false).map_err(|e| log_read_failed(CpuError::io("list", path, e), path))
}

/// Lists the pieces of the stream at `path`. With `quick`, the directory is not listed when no
/// segment can exist: there is no head (segments are only written after their head, and
/// removed before it), or the head is shorter than any head can be.
fn list(path: &Path, quick: bool) -> io::Result<Vec<LogPiece>> {
    let mut out = Vec::new();
    match fs::metadata(path) {
        Ok(meta) => {
            out.push(LogPiece {
                path: path.to_path_buf(),
                start: 0,
                len: meta.len(),
                head: true,
            });
            if quick && meta.len() < MIN_SEGMENT_START {
                return Ok(out);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && quick => return Ok(out),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?
        .as_bytes();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(start) = parse_segment(name, entry.file_name().as_bytes()) else {
            continue;
        };
        out.extend(segment_piece(&entry, start)?);
    }
    out.sort_by_key(|p| (p.start, !p.head));
    Ok(out)
}

/// The tail segment a listed directory entry is, starting at logical offset `start`: `None`
/// where it is not a file, or was rotated out between the listing and the stat.
fn segment_piece(entry: &fs::DirEntry, start: u64) -> io::Result<Option<LogPiece>> {
    match entry.metadata() {
        Ok(meta) if meta.is_file() => Ok(Some(LogPiece {
            path: entry.path(),
            start,
            len: meta.len(),
            head: false,
        })),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The start offset a segment file name `entry` of the head named `head` encodes.
fn parse_segment(head: &[u8], entry: &[u8]) -> Option<u64> {
    split_segment(entry)
        .filter(|(of, _)| *of == head)
        .map(|(_, start)| start)
}

/// A tail segment's file name (see [`segment_path`]) split into its head's file name and the
/// logical offset it starts at; `None` for any other name.
pub fn split_segment(name: &[u8]) -> Option<(&[u8], u64)> {
    let cut = name.len().checked_sub(21)?;
    let (head, suffix) = name.split_at(cut);
    if head.is_empty() {
        return None;
    }
    let digits = suffix.strip_prefix(b".")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((head, std::str::from_utf8(digits).ok()?.parse().ok()?))
}

/// Runs blocking file work `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| CpuError::NoRuntime)?;
    runtime.spawn_blocking(f).await.map_err(|join| {
        CpuError::io(
            op,
            path,
            io::Error::other(format!("the blocking task failed: {join}")),
        )
    })?
}

fn log_read_failed(err: CpuError, path: &Path) -> CpuError {
    tracing::warn!(path = %path.display(), error = %err, "reading a command job's log failed");
    metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "log_read").increment(1);
    err
}
