//! Snapshots written a chunk at a time, so the caller never holds its whole state (or its
//! actor) while one is written.
//!
//! 1. [`JournalSlot::cut`] queues a cut among the appends: the writer rolls to a fresh segment
//!    and answers its index and the sequence number of the first record after the cut. Every
//!    record queued before the cut is in an older segment, every one after in that one or
//!    later, so the caller must take its own view of its state in the same synchronous step as
//!    it queues the cut (as it does for records).
//! 2. [`Journal::snapshot_file`] opens `snapshot.tmp`; [`SnapshotFile::write`] appends chunks
//!    (written on tokio's blocking pool, off the caller's thread, synced every 32 MiB).
//! 3. [`SnapshotFile::install`] writes the frame header (length, and a CRC32C combined from the
//!    chunks' CRCs), syncs the file, and has the writer rename it to `NNN.snap`, sync the
//!    directory and delete the segments and snapshots it replaces.
//!
//! The result is the same single-frame snapshot [`super::Journal::compact`] writes, so
//! recovery reads either. A snapshot file dropped before it was installed is removed; one left
//! by a crash is removed at the next open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::frame::{FRAME_HEADER_V1, SNAPSHOT_MAGIC};
use super::{writer_answer, Cmd, Journal, JournalSlot, SNAPSHOT_TMP};
use crate::engine::{IoEngine, IoFile};
use crate::error::{CpuError, Result};

/// Where a cut put the journal: records before it are in segments below `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The first segment after the cut: the snapshot's name.
    pub segment: u64,
    /// The sequence number of the first record after the cut.
    pub next_seq: u64,
}

/// A cut queued through a [`JournalSlot`]: resolves once the writer has rolled.
pub type PendingCut = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Cut>> + Send>>;

impl JournalSlot {
    /// Queues a cut now, behind everything queued before (see the module comment).
    pub fn cut(self) -> PendingCut {
        let (reply, rx) = oneshot::channel();
        self.permit.send(Cmd::Cut { reply });
        let dir = self.dir;
        Box::pin(async move { writer_answer(&dir, rx).await })
    }
}

/// A snapshot being written (see the module comment). Its writes go through tokio's blocking
/// pool (plain `pwrite`), never the caller's thread: a few hundred MB written at once meet the
/// kernel's dirty-page throttling, which would stall whichever thread submitted them. Every
/// `SYNC_EVERY` (32 MiB) bytes it syncs what it wrote, so the data goes to disk as it comes instead of
/// all at once at the end.
#[derive(Debug)]
pub struct SnapshotFile {
    journal: Journal,
    file: Option<Arc<std::fs::File>>,
    path: PathBuf,
    cut: Cut,
    /// Bytes of the frame's payload written so far.
    len: u64,
    /// Bytes written since the last sync.
    unsynced: u64,
    /// CRC32C of the payload so far.
    crc: u32,
    installed: bool,
}

/// How many bytes a snapshot writes between two syncs.
pub const SYNC_EVERY: u64 = 32 << 20;

impl Journal {
    /// Opens `snapshot.tmp` for the snapshot of state as of `cut` (see the module comment).
    pub async fn snapshot_file(&self, cut: Cut) -> Result<SnapshotFile> {
        let path = self.dir.join(SNAPSHOT_TMP);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| CpuError::io("open", &path, e))?;
        let mut snapshot = SnapshotFile {
            journal: self.clone(),
            file: Some(Arc::new(file)),
            path,
            cut,
            len: 0,
            unsynced: 0,
            crc: 0,
            installed: false,
        };
        let mut prefix = Vec::with_capacity(16);
        prefix.extend_from_slice(SNAPSHOT_MAGIC);
        prefix.extend_from_slice(&cut.next_seq.to_le_bytes());
        snapshot.write(prefix).await?;
        Ok(snapshot)
    }
}

/// `pwrite`s `bytes` at `at` (and syncs after, when `sync`) on tokio's blocking pool.
async fn write_at(
    file: Arc<std::fs::File>,
    path: &Path,
    bytes: Vec<u8>,
    at: u64,
    sync: bool,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let written = tokio::task::spawn_blocking(move || {
        file.write_all_at(&bytes, at)?;
        if sync {
            file.sync_data()?;
        }
        Ok::<(), std::io::Error>(())
    })
    .await
    .map_err(|e| CpuError::io("write", path, std::io::Error::other(e.to_string())))?;
    written.map_err(|e| CpuError::io("write", path, e))
}

impl SnapshotFile {
    fn file(&self) -> Result<Arc<std::fs::File>> {
        self.file.clone().ok_or_else(|| CpuError::JournalStopped {
            dir: self.journal.dir.to_path_buf(),
            reason: "the snapshot file was already closed".into(),
        })
    }

    /// Appends `chunk` to the snapshot's state.
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        let n = chunk.len() as u64;
        let crc = crc32c::crc32c(&chunk);
        let at = FRAME_HEADER_V1 as u64 + self.len;
        self.unsynced += n;
        let sync = self.unsynced >= SYNC_EVERY;
        write_at(self.file()?, &self.path, chunk, at, sync).await?;
        if sync {
            self.unsynced = 0;
        }
        self.crc = crc32c::crc32c_combine(self.crc, crc, n as usize);
        self.len += n;
        Ok(())
    }

    /// Bytes of state written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written yet (never, after a successful open).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the frame header, syncs, and installs the snapshot in place of every segment and
    /// snapshot before its cut.
    pub async fn install(mut self) -> Result<()> {
        let len = u32::try_from(self.len).map_err(|_| CpuError::Invalid {
            field: "snapshot",
            reason: format!("{} bytes exceed a frame's 4 GiB", self.len),
        })?;
        let len_bytes = len.to_le_bytes();
        let crc = crc32c::crc32c_combine(crc32c::crc32c(&len_bytes), self.crc, self.len as usize);
        let mut header = Vec::with_capacity(FRAME_HEADER_V1);
        header.extend_from_slice(&len_bytes);
        header.extend_from_slice(&crc.to_le_bytes());
        write_at(self.file()?, &self.path, header, 0, true).await?;
        self.file = None;
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Install {
            segment: self.cut.segment,
            reply,
        };
        if self.journal.tx.send(cmd).await.is_err() {
            return Err(self.journal.stopped());
        }
        writer_answer(&self.journal.dir, rx).await?;
        self.installed = true;
        Ok(())
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.installed {
            return;
        }
        self.file = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // The next open removes it anyway.
            Err(e) => tracing::debug!(path = %self.path.display(), error = %e,
                "an abandoned snapshot's file was not removed"),
        }
    }
}

/// What the writer does for [`SnapshotFile::install`].
pub(super) async fn install(
    dir: &Path,
    engine: &IoEngine,
    dir_file: &IoFile,
    segment: u64,
) -> Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let dest = dir.join(super::snapshot_name(segment));
    // Replacing an older snapshot of that name unlinks it: off the writer's thread.
    let (from, to) = (tmp.clone(), dest.clone());
    tokio::task::spawn_blocking(move || std::fs::rename(&from, &to))
        .await
        .map_err(|e| CpuError::io("rename", &tmp, std::io::Error::other(e.to_string())))?
        .map_err(|e| CpuError::io("rename", &tmp, e))?;
    engine.sync_all(dir_file).await?;
    super::writer::remove_before(dir, segment).await?;
    engine.sync_all(dir_file).await?;
    tracing::info!(dir = %dir.display(), snapshot = %dest.display(), "journal snapshot installed");
    Ok(())
}
