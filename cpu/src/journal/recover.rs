//! Opening a journal: lock the directory, load the newest snapshot, read the segments after
//! it in order, check that they chain (each segment header continues the record count), judge
//! damage in the last segment (see [`super::frame`]), set a torn tail aside and cut it off,
//! finish an interrupted compaction, and start the writer.
//!
//! Nothing is changed on disk before the whole journal has been read and judged sound: a
//! journal refused as corrupt is left byte for byte as it was found.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};

use super::frame::{self, Format, SegmentHeader, Verdict};
use super::writer::Writer;
use super::{
    segment_name, snapshot_name, Journal, JournalHealth, JournalOptions, Recovered, Shared,
    TornTail, LOCK_FILE, SNAPSHOT_TMP,
};
use crate::engine::{IoBuf, IoEngine, IoFile, OpenMode};
use crate::error::{CpuError, Result};
use crate::metrics as m;

/// The largest segment or snapshot file recovery reads into memory: frames have 32-bit
/// lengths and segments roll long before this, so a larger file is damage, refused before
/// anything is allocated for it.
const MAX_FILE_BYTES: u64 = 4 << 30;

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

async fn read_all(engine: &IoEngine, path: &Path) -> Result<Vec<u8>> {
    let file = IoFile::open(path, OpenMode::read())?;
    let len = file
        .std()
        .metadata()
        .map_err(|e| CpuError::io("stat", path, e))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(CpuError::Corrupt {
            segment: path.to_path_buf(),
            offset: 0,
            reason: format!("{len} bytes: larger than any journal file the writer writes"),
        });
    }
    let len = len as usize;
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

pub(super) async fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CpuError::io("remove", path, e)),
    }
}

fn corrupt(segment: &Path, offset: u64, reason: impl Into<String>) -> CpuError {
    CpuError::Corrupt {
        segment: segment.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// The newest snapshot's state and the sequence number of the first record after it.
async fn load_snapshot(engine: &IoEngine, path: &Path) -> Result<(u64, Vec<u8>)> {
    let data = read_all(engine, path).await?;
    let (frames, damage) = frame::parse_frames(&data, Format::V1, u32::MAX);
    match (frames.as_slice(), damage) {
        ([(start, end)], None) if *end == data.len() => {
            let Some((first, state)) = frame::decode_snapshot(&data[*start..*end]) else {
                return Err(corrupt(path, 0, "not a journal snapshot (bad magic)"));
            };
            Ok((first, state.to_vec()))
        }
        (_, Some((offset, d))) => Err(corrupt(
            path,
            offset as u64,
            format!("snapshot: {}", d.describe(u32::MAX)),
        )),
        _ => Err(corrupt(path, 0, "a snapshot holds exactly one frame")),
    }
}

/// A torn tail found in the last segment, to be set aside once the whole journal is judged.
struct Tear {
    path: PathBuf,
    offset: usize,
    reason: String,
    bytes: Vec<u8>,
}

/// Where a torn tail cut from `segment` at `offset` is kept.
fn torn_path(segment: &Path, offset: usize) -> PathBuf {
    let name = segment
        .file_name()
        .map_or_else(|| "segment".into(), |n| n.to_string_lossy().into_owned());
    segment.with_file_name(format!("{name}.torn-{offset}"))
}

/// Writes the torn bytes to a file of their own (synced), then cuts them off the segment.
async fn set_aside(engine: &IoEngine, dir_file: &IoFile, tear: Tear) -> Result<TornTail> {
    let kept = torn_path(&tear.path, tear.offset);
    let dropped = tear.bytes.len() as u64;
    let file = IoFile::open(&kept, OpenMode::create_truncate())?;
    engine
        .write_all_sync_at(&file, IoBuf::from(tear.bytes), 0)
        .await?;
    drop(file);
    engine.sync_all(dir_file).await?;
    let seg = IoFile::open(&tear.path, OpenMode::write())?;
    seg.std()
        .set_len(tear.offset as u64)
        .map_err(|e| CpuError::io("truncate", &tear.path, e))?;
    engine.sync_all(&seg).await?;
    tracing::warn!(segment = %tear.path.display(), offset = tear.offset, dropped_bytes = dropped,
        kept = %kept.display(), reason = %tear.reason,
        "journal: torn tail (the last write, cut short) set aside and cut off");
    metrics::counter!(m::JOURNAL_ERRORS, "kind" => "torn_tail").increment(1);
    Ok(TornTail {
        segment: tear.path,
        offset: tear.offset as u64,
        dropped_bytes: dropped,
        reason: tear.reason,
        moved_to: kept,
    })
}

pub(super) async fn open(
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
    // stopped after its rename, and is finished once everything is read.
    let base = layout.snapshots.last().copied();
    // Sequence number of the next record: all records ever appended before it.
    let mut seq = 0u64;
    if let Some(base) = base {
        let (first, state) = load_snapshot(&engine, &dir.join(snapshot_name(base))).await?;
        seq = first;
        recovered.snapshot = Some(state);
    }
    let live: Vec<u64> = layout
        .segments
        .iter()
        .copied()
        .filter(|&s| base.is_none_or(|b| s >= b))
        .collect();
    if let Some(base) = base {
        if live.first().is_some_and(|&first| first != base) {
            return Err(corrupt(
                &dir.join(segment_name(base)),
                0,
                "the segment right after the snapshot is missing",
            ));
        }
    }
    for pair in live.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(corrupt(
                &dir.join(segment_name(pair[0] + 1)),
                0,
                "segment missing between its neighbours",
            ));
        }
    }

    let mut tail_len = 0u64;
    let mut tail_format = Format::V2;
    let mut tear = None;
    for (i, &seg) in live.iter().enumerate() {
        let path = dir.join(segment_name(seg));
        let data = read_all(&engine, &path).await?;
        let last = i + 1 == live.len();
        let format = Format::detect(&data);
        let fmt = format.unwrap_or(Format::V2);
        let (frames, damage) = frame::parse_frames(&data, fmt, options.max_record_bytes);
        // The first frame is the segment's header: its index and the sequence number of its
        // first record. It is what catches a segment that lost whole records at its end.
        // No frame: an empty segment (its header goes with its first batch) holds no
        // records, wherever it is; had it lost some, the next segment's header would not
        // continue the count. A damaged first frame is handled with the damage below.
        if let Some(&(s, e)) = frames.first() {
            match SegmentHeader::decode(&data[s..e]) {
                Some(h) if h.index == seg && h.first_seq == seq => {}
                Some(h) => {
                    return Err(corrupt(
                        &path,
                        0,
                        format!(
                            "header says segment {} starting at record {}, expected segment {seg} starting at record {seq}",
                            h.index, h.first_seq
                        ),
                    ))
                }
                None => return Err(corrupt(&path, 0, "the first frame is not a segment header")),
            }
        }
        let before = recovered.records.len();
        recovered
            .records
            .extend(frames.iter().skip(1).map(|&(s, e)| data[s..e].to_vec()));
        seq += (recovered.records.len() - before) as u64;
        tail_len = data.len() as u64;
        tail_format = fmt;
        if let Some((offset, damage)) = damage {
            let verdict = if last {
                frame::judge_tail(&data, format, offset, &damage, options.max_record_bytes)
            } else {
                Verdict::Corrupt(damage.describe(options.max_record_bytes))
            };
            match verdict {
                Verdict::Corrupt(reason) => return Err(corrupt(&path, offset as u64, reason)),
                Verdict::Torn(reason) => {
                    tail_len = offset as u64;
                    tear = Some(Tear {
                        path,
                        offset,
                        reason,
                        bytes: data[offset..].to_vec(),
                    });
                }
            }
        }
    }

    // Read and judged sound: from here on the directory may change.
    let mut cleaned = false;
    if let Some(base) = base {
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
    if let Some(tear) = tear {
        recovered.torn_tail = Some(set_aside(&engine, &dir_file, tear).await?);
    }
    // Appends go to the last segment, unless it was written in the older format: then a new
    // segment in this version's format starts (an empty one is simply reused).
    let (segment, file, offset) = match live.last() {
        Some(&seg) if tail_format == Format::V1 && tail_len > 0 => {
            let next = seg + 1;
            let file = IoFile::open(dir.join(segment_name(next)), OpenMode::create_truncate())?;
            cleaned = true;
            tracing::info!(dir = %dir.display(), segment = next,
                "journal: the last segment is in the older frame format; appends go to a new one");
            (next, file, 0)
        }
        Some(&seg) => (
            seg,
            IoFile::open(dir.join(segment_name(seg)), OpenMode::write())?,
            tail_len,
        ),
        None => {
            let seg = base.unwrap_or(0);
            let file = IoFile::open(dir.join(segment_name(seg)), OpenMode::write())?;
            cleaned = true;
            (seg, file, 0)
        }
    };
    if cleaned {
        engine.sync_all(&dir_file).await?;
    }
    tracing::info!(dir = %dir.display(), snapshot = recovered.snapshot.is_some(),
        records = recovered.records.len(), segment, offset, "journal recovered");

    let (tx, rx) = mpsc::channel(options.queue_depth);
    let shared = Arc::new(Shared {
        appends: AtomicU64::new(0),
        commits: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        wake: Notify::new(),
    });
    let (health_tx, health) = watch::channel(JournalHealth::Writable);
    let writer = Writer {
        seq,
        shared: Arc::clone(&shared),
        health: health_tx,
        dir: dir.into(),
        dir_file,
        engine,
        options: options.clone(),
        segment,
        file,
        offset,
        stopped: None,
        _lock: lock,
    };
    tokio::spawn(writer.run(rx));
    Ok((
        Journal {
            tx,
            dir: dir.into(),
            max_record_bytes: options.max_record_bytes,
            shared,
            health,
        },
        recovered,
    ))
}
