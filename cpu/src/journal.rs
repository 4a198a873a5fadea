//! The durable journal: the write-ahead log of the job store.
//!
//! Records are bytes the caller gives (MessagePack in practice), framed as
//! `len: u32 LE | crc: u32 LE | payload`, where `crc` is CRC32C over the length bytes and the
//! payload (so a zero-filled region never passes as a record). Frames go to append-only segment
//! files `NNNNNNNNNNNNNNNNNNNN.seg` that roll at a size limit.
//!
//! **Group commit.** One writer task owns the files. Appends queue on a channel; the writer
//! takes every append waiting (up to a batch size), frames them into one buffer and makes it
//! durable with one write and one fdatasync (linked in one io_uring submission on that backend).
//! An append's future completes only after its record is durable.
//!
//! **Compaction.** [`Journal::compact`] takes a snapshot of the caller's state covering every
//! record appended before it: the writer rolls to a new segment, writes the snapshot to
//! `snapshot.tmp`, syncs it, renames it to `NNN.snap` (covering all segments below `NNN`),
//! syncs the directory, then deletes the older segments and snapshots.
//!
//! **Recovery.** [`Journal::open`] returns the newest snapshot and the records after it, in
//! order. A torn tail in the last segment (a partial frame, a bad last frame, or a zero-filled
//! end) is truncated and reported at warn with segment and offset. A bad frame anywhere else is
//! [`CpuError::Corrupt`] naming segment and offset: never skipped.
//!
//! **Order.** Records are durable in the order their `append` futures first ran (the channel is
//! FIFO), and `compact` is ordered among them the same way.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::engine::{IoBuf, IoEngine, IoFile, OpenMode};
use crate::error::{CpuError, Result};
use crate::metrics as m;

/// Bytes of a frame's header: length and CRC32C.
pub const FRAME_HEADER: usize = 8;

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
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            max_batch_bytes: 4 << 20,
            queue_depth: 65_536,
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

/// A torn tail that recovery cut off.
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
}

/// What [`Journal::open`] found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The newest snapshot, if compaction ever ran.
    pub snapshot: Option<Vec<u8>>,
    /// Every record after the snapshot, in order.
    pub records: Vec<Vec<u8>>,
    /// The torn tail that was truncated, if there was one.
    pub torn_tail: Option<TornTail>,
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
}

/// A handle to an open journal. Cheap to clone; the writer stops when [`Journal::close`] is
/// called or the last handle is dropped, after finishing what was queued.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Cmd>,
    dir: Arc<Path>,
    max_record_bytes: u32,
    stats: Arc<Stats>,
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

/// Counts of what the writer has made durable since the journal was opened.
#[derive(Debug, Default)]
struct Stats {
    appends: AtomicU64,
    commits: AtomicU64,
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
const SEGMENT_MAGIC: &[u8; 8] = b"CADRSEG1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"CADRSNP1";
const SNAPSHOT_PREFIX: usize = 16;

/// The first frame of every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentHeader {
    index: u64,
    first_seq: u64,
}

impl SegmentHeader {
    fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(SEGMENT_MAGIC);
        out[8..16].copy_from_slice(&self.index.to_le_bytes());
        out[16..].copy_from_slice(&self.first_seq.to_le_bytes());
        out
    }

    fn decode(payload: &[u8]) -> Option<SegmentHeader> {
        let (magic, rest) = payload.split_first_chunk::<8>()?;
        let (index, rest) = rest.split_first_chunk::<8>()?;
        let (first_seq, rest) = rest.split_first_chunk::<8>()?;
        (magic == SEGMENT_MAGIC && rest.is_empty()).then(|| SegmentHeader {
            index: u64::from_le_bytes(*index),
            first_seq: u64::from_le_bytes(*first_seq),
        })
    }
}

/// A snapshot's payload: magic, the sequence number of the first record after it, the state.
fn encode_snapshot(next_seq: u64, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_PREFIX + state.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&next_seq.to_le_bytes());
    out.extend_from_slice(state);
    out
}

fn decode_snapshot(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (magic, rest) = payload.split_first_chunk::<8>()?;
    let (seq, state) = rest.split_first_chunk::<8>()?;
    (magic == SNAPSHOT_MAGIC).then(|| (u64::from_le_bytes(*seq), state))
}
const LOCK_FILE: &str = "lock";

/// Frames `payload` onto `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// How the frame at some offset is broken.
#[derive(Debug)]
enum Damage {
    /// Fewer than 8 bytes or a length past the end: a write cut short.
    Partial(String),
    /// A whole frame whose CRC does not match, or an impossible length.
    Bad {
        reason: String,
        frame_end: Option<usize>,
    },
}

/// Parses frames from `data`; returns the payload ranges and, if parsing stopped early, where
/// and why.
/// Payload ranges of the good frames, and where parsing stopped and why.
type Parsed = (Vec<(usize, usize)>, Option<(usize, Damage)>);

fn parse_frames(data: &[u8], max_record: u32) -> Parsed {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        match parse_frame(&data[pos..], max_record) {
            Ok(end) => {
                out.push((pos + FRAME_HEADER, pos + end));
                pos += end;
            }
            Err(damage) => {
                let damage = match damage {
                    Damage::Bad { reason, frame_end } => Damage::Bad {
                        reason,
                        frame_end: frame_end.map(|end| pos + end),
                    },
                    partial => partial,
                };
                return (out, Some((pos, damage)));
            }
        }
    }
    (out, None)
}

/// Checks the frame at the start of `rest`; returns where it ends, or how it is broken (a
/// `frame_end` relative to `rest`).
fn parse_frame(rest: &[u8], max_record: u32) -> std::result::Result<usize, Damage> {
    let Some(header) = rest.get(..FRAME_HEADER) else {
        let reason = format!("{} bytes left, a header needs {FRAME_HEADER}", rest.len());
        return Err(Damage::Partial(reason));
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > max_record {
        let reason = format!("length {len} exceeds the {max_record}-byte limit");
        return Err(Damage::Bad {
            reason,
            frame_end: None,
        });
    }
    let end = FRAME_HEADER + len as usize;
    let Some(payload) = rest.get(FRAME_HEADER..end) else {
        let present = rest.len() - FRAME_HEADER;
        return Err(Damage::Partial(format!(
            "record of {len} bytes, only {present} present"
        )));
    };
    let want = crc32c::crc32c_append(crc32c::crc32c(&header[..4]), payload);
    if want != crc {
        let reason = format!("CRC32C {crc:#010x} does not match {want:#010x}");
        return Err(Damage::Bad {
            reason,
            frame_end: Some(end),
        });
    }
    Ok(end)
}

/// The files of a journal directory.
struct Layout {
    segments: Vec<u64>,
    snapshots: Vec<u64>,
    tmp: bool,
}

fn scan_dir(dir: &Path) -> Result<Layout> {
    let mut layout = Layout {
        segments: Vec::new(),
        snapshots: Vec::new(),
        tmp: false,
    };
    let entries = fs::read_dir(dir).map_err(|e| CpuError::io("read dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CpuError::io("read dir", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == SNAPSHOT_TMP {
            layout.tmp = true;
        } else if let Some(stem) = name.strip_suffix(".seg") {
            match stem.parse::<u64>() {
                Ok(i) => layout.segments.push(i),
                Err(e) => unknown_file(dir, name, &e),
            }
        } else if let Some(stem) = name.strip_suffix(".snap") {
            match stem.parse::<u64>() {
                Ok(i) => layout.snapshots.push(i),
                Err(e) => unknown_file(dir, name, &e),
            }
        }
    }
    layout.segments.sort_unstable();
    layout.snapshots.sort_unstable();
    Ok(layout)
}

/// A file that looks like a segment or snapshot but is not named like one: left alone, said once.
fn unknown_file(dir: &Path, name: &str, e: &std::num::ParseIntError) {
    tracing::warn!(dir = %dir.display(), file = name, error = %e,
        "journal: ignoring a file whose name is not a segment or snapshot index");
    metrics::counter!(m::JOURNAL_ERRORS, "kind" => "unknown_file").increment(1);
}

fn journal_error(dir: &Path, kind: &'static str, err: &CpuError) {
    tracing::error!(dir = %dir.display(), kind, error = %err, "journal failure");
    metrics::counter!(m::JOURNAL_ERRORS, "kind" => kind).increment(1);
}

async fn read_all(engine: &IoEngine, path: &Path) -> Result<Vec<u8>> {
    let file = IoFile::open(path, OpenMode::read())?;
    let len = file
        .std()
        .metadata()
        .map_err(|e| CpuError::io("stat", path, e))?
        .len() as usize;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let chunk = (len - out.len()).min(8 << 20);
        let buf = engine.read_at(&file, chunk, out.len() as u64).await?;
        if buf.is_empty() {
            break;
        }
        out.extend_from_slice(buf.as_slice());
    }
    Ok(out)
}

async fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CpuError::io("remove", path, e)),
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, recovers it, and starts its writer on the
    /// current tokio runtime. The directory is locked: a second open fails until this one
    /// closes (or its process dies).
    pub async fn open(
        dir: impl AsRef<Path>,
        engine: IoEngine,
        options: JournalOptions,
    ) -> Result<(Journal, Recovered)> {
        let dir = dir.as_ref();
        options.validate()?;
        let result = Self::open_inner(dir, engine, options).await;
        if let Err(e) = &result {
            journal_error(dir, e.kind(), e);
        }
        result
    }

    async fn open_inner(
        dir: &Path,
        engine: IoEngine,
        options: JournalOptions,
    ) -> Result<(Journal, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| CpuError::io("create dir", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| CpuError::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(CpuError::Invalid {
                    field: "journal.dir",
                    reason: format!("{} is in use by another journal", dir.display()),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(CpuError::io("lock", &lock_path, e)),
        }
        let dir_file = IoFile::open_dir(dir)?;
        let layout = scan_dir(dir)?;
        let mut recovered = Recovered::default();

        // The newest snapshot wins; anything it covers is the leftover of a compaction that
        // stopped after its rename, and is finished now.
        let base = layout.snapshots.last().copied();
        let mut cleaned = false;
        // Sequence number of the next record: all records ever appended before it.
        let mut seq = 0u64;
        if let Some(base) = base {
            let path = dir.join(snapshot_name(base));
            let data = read_all(&engine, &path).await?;
            let (frames, damage) = parse_frames(&data, u32::MAX);
            match (frames.as_slice(), damage) {
                ([(start, end)], None) if *end == data.len() => {
                    let Some((first, state)) = decode_snapshot(&data[*start..*end]) else {
                        return Err(CpuError::Corrupt {
                            segment: path,
                            offset: 0,
                            reason: "not a journal snapshot (bad magic)".into(),
                        });
                    };
                    seq = first;
                    recovered.snapshot = Some(state.to_vec());
                }
                (_, Some((offset, d))) => {
                    let reason = match d {
                        Damage::Partial(r) | Damage::Bad { reason: r, .. } => r,
                    };
                    return Err(CpuError::Corrupt {
                        segment: path,
                        offset: offset as u64,
                        reason: format!("snapshot: {reason}"),
                    });
                }
                _ => {
                    return Err(CpuError::Corrupt {
                        segment: path,
                        offset: 0,
                        reason: "a snapshot holds exactly one frame".into(),
                    })
                }
            }
            for &old in layout.snapshots.iter().filter(|&&s| s < base) {
                remove_file(&dir.join(snapshot_name(old))).await?;
                cleaned = true;
            }
            for &old in layout.segments.iter().filter(|&&s| s < base) {
                remove_file(&dir.join(segment_name(old))).await?;
                cleaned = true;
            }
        }
        if layout.tmp {
            remove_file(&dir.join(SNAPSHOT_TMP)).await?;
            cleaned = true;
        }
        let live: Vec<u64> = layout
            .segments
            .iter()
            .copied()
            .filter(|&s| base.is_none_or(|b| s >= b))
            .collect();
        if let Some(base) = base {
            if live.first().is_some_and(|&first| first != base) {
                return Err(CpuError::Corrupt {
                    segment: dir.join(segment_name(base)),
                    offset: 0,
                    reason: "the segment right after the snapshot is missing".into(),
                });
            }
        }
        for pair in live.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(CpuError::Corrupt {
                    segment: dir.join(segment_name(pair[0] + 1)),
                    offset: 0,
                    reason: "segment missing between its neighbours".into(),
                });
            }
        }

        let mut tail_len = 0u64;
        for (i, &seg) in live.iter().enumerate() {
            let path = dir.join(segment_name(seg));
            let data = read_all(&engine, &path).await?;
            let last = i + 1 == live.len();
            let (frames, damage) = parse_frames(&data, options.max_record_bytes);
            // The first frame is the segment's header: its index and the sequence number of its
            // first record. It is what catches a segment that lost whole records at its end.
            // No frame: an empty segment (its header goes with its first batch) holds no
            // records, wherever it is; had it lost some, the next segment's header would not
            // continue the count. A damaged first frame is handled with the damage below.
            if let Some(&(s, e)) = frames.first() {
                match SegmentHeader::decode(&data[s..e]) {
                    Some(h) if h.index == seg && h.first_seq == seq => {}
                    Some(h) => {
                        return Err(CpuError::Corrupt {
                            segment: path,
                            offset: 0,
                            reason: format!(
                                "header says segment {} starting at record {}, expected segment {seg} starting at record {seq}",
                                h.index, h.first_seq
                            ),
                        })
                    }
                    None => {
                        return Err(CpuError::Corrupt {
                            segment: path,
                            offset: 0,
                            reason: "the first frame is not a segment header".into(),
                        })
                    }
                }
            }
            let records = frames.iter().skip(1).map(|&(s, e)| data[s..e].to_vec());
            let before = recovered.records.len();
            recovered.records.extend(records);
            seq += (recovered.records.len() - before) as u64;
            tail_len = data.len() as u64;
            if let Some((offset, damage)) = damage {
                let torn = last
                    && match &damage {
                        Damage::Partial(_) => true,
                        Damage::Bad { frame_end, .. } => {
                            *frame_end == Some(data.len()) || data[offset..].iter().all(|&b| b == 0)
                        }
                    };
                let reason = match damage {
                    Damage::Partial(r) | Damage::Bad { reason: r, .. } => r,
                };
                if !torn {
                    return Err(CpuError::Corrupt {
                        segment: path,
                        offset: offset as u64,
                        reason,
                    });
                }
                let file = IoFile::open(&path, OpenMode::write())?;
                file.std()
                    .set_len(offset as u64)
                    .map_err(|e| CpuError::io("truncate", &path, e))?;
                engine.sync_all(&file).await?;
                let dropped = data.len() - offset;
                tracing::warn!(segment = %path.display(), offset, dropped_bytes = dropped, reason = %reason,
                    "journal: torn tail truncated");
                metrics::counter!(m::JOURNAL_ERRORS, "kind" => "torn_tail").increment(1);
                recovered.torn_tail = Some(TornTail {
                    segment: path,
                    offset: offset as u64,
                    dropped_bytes: dropped as u64,
                    reason,
                });
                tail_len = offset as u64;
            }
        }
        let (segment, file) = match live.last() {
            Some(&seg) => (
                seg,
                IoFile::open(dir.join(segment_name(seg)), OpenMode::write())?,
            ),
            None => {
                let seg = base.unwrap_or(0);
                let file = IoFile::open(dir.join(segment_name(seg)), OpenMode::write())?;
                cleaned = true;
                (seg, file)
            }
        };
        if cleaned {
            engine.sync_all(&dir_file).await?;
        }
        tracing::info!(dir = %dir.display(), snapshot = recovered.snapshot.is_some(),
            records = recovered.records.len(), segment, offset = tail_len, "journal recovered");

        let (tx, rx) = mpsc::channel(options.queue_depth);
        let stats = Arc::new(Stats::default());
        let writer = Writer {
            seq,
            stats: Arc::clone(&stats),
            dir: dir.into(),
            dir_file,
            engine,
            options: options.clone(),
            segment,
            file,
            offset: tail_len,
            stopped: None,
            _lock: lock,
        };
        tokio::spawn(writer.run(rx));
        Ok((
            Journal {
                tx,
                dir: dir.into(),
                max_record_bytes: options.max_record_bytes,
                stats,
            },
            recovered,
        ))
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records and group commits made durable since open: `appends / commits` is the batching.
    pub fn stats(&self) -> JournalStats {
        JournalStats {
            appends: self.stats.appends.load(Ordering::Relaxed),
            commits: self.stats.commits.load(Ordering::Relaxed),
        }
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

    /// Finishes what was queued, closes the files and releases the directory lock.
    pub async fn close(self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close { reply }).await.is_ok() && rx.await.is_err() {
            tracing::debug!(dir = %self.dir.display(), "journal writer exited before acknowledging close");
        }
    }
}

/// The task that owns the journal's files.
struct Writer {
    /// Sequence number of the next record.
    seq: u64,
    stats: Arc<Stats>,
    dir: PathBuf,
    dir_file: IoFile,
    engine: IoEngine,
    options: JournalOptions,
    segment: u64,
    file: IoFile,
    offset: u64,
    /// Set after a write or sync failed: what is on disk is unknown, so nothing more is written
    /// until the journal is reopened (and recovered).
    stopped: Option<String>,
    _lock: fs::File,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
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
        let mut batch: Vec<(Vec<u8>, oneshot::Sender<Result<Lsn>>)> = Vec::new();
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
                    buf = self.commit(&mut batch, buf).await;
                }
                Cmd::Compact { snapshot, reply } => {
                    let res = self.compact(snapshot).await;
                    if reply.send(res).is_err() {
                        tracing::debug!(dir = %self.dir.display(), "compaction finished after its caller left");
                    }
                }
                Cmd::Close { reply } => return Some(reply),
            }
        }
    }

    fn refuse(&self) -> Option<CpuError> {
        self.stopped
            .as_ref()
            .map(|reason| CpuError::JournalStopped {
                dir: self.dir.clone(),
                reason: reason.clone(),
            })
    }

    /// Answers every append of the batch with the error that stopped the writer.
    fn fail_batch(&self, batch: &mut Vec<(Vec<u8>, oneshot::Sender<Result<Lsn>>)>) {
        for (_, reply) in batch.drain(..) {
            let err = CpuError::JournalStopped {
                dir: self.dir.clone(),
                reason: self.stopped.clone().unwrap_or_else(|| "stopped".into()),
            };
            answer(reply, Err(err));
        }
    }

    fn stop(&mut self, err: &CpuError) {
        journal_error(&self.dir, err.kind(), err);
        self.stopped = Some(err.to_string());
    }

    /// Makes the batch durable with one write and one sync, then answers every append in it.
    async fn commit(
        &mut self,
        batch: &mut Vec<(Vec<u8>, oneshot::Sender<Result<Lsn>>)>,
        mut buf: Vec<u8>,
    ) -> Vec<u8> {
        if self.stopped.is_some() {
            self.fail_batch(batch);
            return buf;
        }
        if self.offset >= self.options.segment_bytes {
            if let Err(e) = self.roll().await {
                self.stop(&e);
                self.fail_batch(batch);
                return buf;
            }
        }
        buf.clear();
        if self.offset == 0 {
            let header = SegmentHeader {
                index: self.segment,
                first_seq: self.seq,
            };
            encode_frame(&header.encode(), &mut buf);
        }
        let mut lsns = Vec::with_capacity(batch.len());
        for (payload, _) in batch.iter() {
            lsns.push(Lsn {
                segment: self.segment,
                offset: self.offset + buf.len() as u64,
            });
            encode_frame(payload, &mut buf);
        }
        let len = buf.len() as u64;
        match self
            .engine
            .write_all_sync_at(&self.file, IoBuf::from(buf), self.offset)
            .await
        {
            Ok(back) => {
                self.offset += len;
                self.seq += batch.len() as u64;
                metrics::counter!(m::JOURNAL_APPENDS).increment(batch.len() as u64);
                metrics::counter!(m::JOURNAL_COMMITS).increment(1);
                self.stats
                    .appends
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                for ((_, reply), lsn) in batch.drain(..).zip(lsns) {
                    answer(reply, Ok(lsn));
                }
                back.into_vec()
            }
            Err(e) => {
                self.stop(&e);
                self.fail_batch(batch);
                Vec::new()
            }
        }
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

    async fn compact(&mut self, snapshot: Vec<u8>) -> Result<()> {
        if let Some(err) = self.refuse() {
            return Err(err);
        }
        let res = self.compact_inner(snapshot).await;
        if let Err(e) = &res {
            self.stop(e);
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
        let mut framed = Vec::with_capacity(FRAME_HEADER + SNAPSHOT_PREFIX + snapshot.len());
        encode_frame(&encode_snapshot(self.seq, &snapshot), &mut framed);
        self.engine
            .write_all_sync_at(&file, IoBuf::from(framed), 0)
            .await?;
        drop(file);
        let dest = self.dir.join(snapshot_name(base));
        fs::rename(&tmp, &dest).map_err(|e| CpuError::io("rename", &tmp, e))?;
        self.engine.sync_all(&self.dir_file).await?;
        let layout = scan_dir(&self.dir)?;
        for old in layout.segments.into_iter().filter(|&s| s < base) {
            remove_file(&self.dir.join(segment_name(old))).await?;
        }
        for old in layout.snapshots.into_iter().filter(|&s| s < base) {
            remove_file(&self.dir.join(snapshot_name(old))).await?;
        }
        self.engine.sync_all(&self.dir_file).await?;
        tracing::info!(dir = %self.dir.display(), snapshot = %dest.display(), "journal compacted");
        Ok(())
    }
}

/// Most commands taken from the channel at once.
const RECV_MANY: usize = 4096;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn frames_round_trip_and_zeros_never_parse() {
        let mut buf = Vec::new();
        encode_frame(b"hello", &mut buf);
        encode_frame(b"", &mut buf);
        let (frames, damage) = parse_frames(&buf, 1024);
        assert!(damage.is_none());
        assert_eq!(frames.len(), 2);
        assert_eq!(&buf[frames[0].0..frames[0].1], b"hello");
        let zeros = [0u8; 64];
        let (frames, damage) = parse_frames(&zeros, 1024);
        assert!(frames.is_empty());
        assert!(matches!(damage, Some((0, Damage::Bad { .. }))));
    }
}
