//! The I/O engine: positional reads, writes and `fdatasync` on owned buffers, carried out by
//! io_uring where the kernel allows it and by pread/pwrite on tokio's blocking pool where not.
//!
//! Buffers are moved into the engine with each request and handed back with its completion, so
//! the kernel never writes into memory the caller still holds. `auto` probes io_uring once per
//! process; a refusal (ENOSYS, EPERM, ENOMEM, a missing opcode) selects std and is logged once at
//! warn with its errno. The chosen backend is exported as `cadre_io_backend_info{backend}`.

mod std_backend;
mod uring;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use crate::error::{CpuError, Result};
use crate::metrics as m;

/// Which backend to use: the `io.backend` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendSetting {
    /// io_uring when the probe succeeds, std otherwise (logged once at warn).
    #[default]
    Auto,
    /// io_uring or a typed error.
    Uring,
    /// pread/pwrite/fdatasync on tokio's blocking pool.
    Std,
}

impl FromStr for BackendSetting {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendSetting::Auto),
            "uring" => Ok(BackendSetting::Uring),
            "std" => Ok(BackendSetting::Std),
            other => Err(CpuError::Invalid {
                field: "io.backend",
                reason: format!("{other:?} is not one of auto, uring, std"),
            }),
        }
    }
}

/// The backend an engine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: one ring per engine, driven from the tokio runtime it was created on.
    Uring,
    /// pread/pwrite/fdatasync on tokio's blocking pool.
    Std,
}

impl Backend {
    /// The label value of `cadre_io_backend_info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Std => "std",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Alignment `O_DIRECT` transfers need (buffer address, length and offset).
pub const DIRECT_ALIGN: usize = 4096;

/// An owned buffer: the bytes in `vec[start..start + len]`. Owned so that it can be lent to the
/// kernel for the whole life of a request; [`IoBuf::aligned`] gives `O_DIRECT`-ready ones.
#[derive(Debug, Default)]
pub struct IoBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl IoBuf {
    /// A zeroed buffer of `len` bytes whose first byte sits on an `align` boundary (a power of
    /// two). It allocates `align` spare bytes to find that boundary.
    pub fn aligned(len: usize, align: usize) -> IoBuf {
        let align = align.max(1).next_power_of_two();
        let vec = vec![0u8; len + align];
        let addr = vec.as_ptr() as usize;
        let start = (align - (addr % align)) % align;
        IoBuf { vec, start, len }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.vec
            .get(self.start..self.start + self.len)
            .unwrap_or(&[])
    }

    /// The bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let range = self.start..self.start + self.len;
        self.vec.get_mut(range).unwrap_or(&mut [])
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shortens it to `len` bytes (no-op when already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The bytes as a `Vec` (copies only when the buffer does not start at its allocation).
    pub fn into_vec(mut self) -> Vec<u8> {
        if self.start == 0 {
            self.vec.truncate(self.len);
            self.vec
        } else {
            self.as_slice().to_vec()
        }
    }

    fn addr(&self) -> usize {
        self.as_slice().as_ptr() as usize
    }
}

impl From<Vec<u8>> for IoBuf {
    fn from(vec: Vec<u8>) -> Self {
        let len = vec.len();
        IoBuf { vec, start: 0, len }
    }
}

/// How to open an [`IoFile`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    /// Open for writing too.
    pub write: bool,
    /// Create the file when missing.
    pub create: bool,
    /// Truncate it to empty.
    pub truncate: bool,
    /// Ask for `O_DIRECT`; where the filesystem refuses it (EINVAL) the file opens buffered and
    /// that is logged once.
    pub direct: bool,
}

impl OpenMode {
    /// Read only.
    pub fn read() -> OpenMode {
        OpenMode::default()
    }
    /// Read and write, created when missing, kept when present.
    pub fn write() -> OpenMode {
        OpenMode {
            write: true,
            create: true,
            ..OpenMode::default()
        }
    }
    /// Read and write, created when missing, truncated to empty.
    pub fn create_truncate() -> OpenMode {
        OpenMode {
            write: true,
            create: true,
            truncate: true,
            direct: false,
        }
    }
}

/// An open file the engine can read and write. Cheap to clone; the descriptor stays open while
/// any clone or any request on it is alive.
#[derive(Debug, Clone)]
pub struct IoFile {
    file: Arc<File>,
    path: Arc<Path>,
    direct: bool,
}

impl IoFile {
    /// Opens `path` as `mode` says.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<IoFile> {
        let path = path.as_ref();
        Self::open_with(path, mode, |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true)
                .write(mode.write)
                .create(mode.create)
                .truncate(mode.truncate);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        })
    }

    /// [`IoFile::open`] with the `open(2)` call given (`direct` says whether to ask for
    /// `O_DIRECT`): the fallback logic, testable with a filesystem that refuses it.
    fn open_with(
        path: &Path,
        mode: OpenMode,
        open: impl Fn(bool) -> std::io::Result<File>,
    ) -> Result<IoFile> {
        let (file, direct) = match open(mode.direct) {
            Ok(file) => (file, mode.direct),
            Err(e) if mode.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                static WARNED: OnceLock<()> = OnceLock::new();
                if WARNED.set(()).is_ok() {
                    tracing::warn!(path = %path.display(), errno = libc::EINVAL,
                        "the filesystem refuses O_DIRECT; files open buffered instead");
                }
                (
                    open(false).map_err(|e| CpuError::io("open", path, e))?,
                    false,
                )
            }
            Err(e) => return Err(CpuError::io("open", path, e)),
        };
        Ok(IoFile {
            file: Arc::new(file),
            path: path.into(),
            direct,
        })
    }

    /// Opens a directory, to [`IoEngine::sync_all`] it after creating, renaming or deleting
    /// entries.
    pub fn open_dir(path: impl AsRef<Path>) -> Result<IoFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| CpuError::io("open dir", path, e))?;
        Ok(IoFile {
            file: Arc::new(file),
            path: path.into(),
            direct: false,
        })
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether transfers bypass the page cache (`O_DIRECT` was granted).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The underlying file, for metadata and truncation.
    pub fn std(&self) -> &File {
        &self.file
    }

    fn check_direct(&self, buf: &IoBuf, offset: u64) -> Result<()> {
        if !self.direct {
            return Ok(());
        }
        let align = DIRECT_ALIGN as u64;
        for (what, value) in [
            ("buffer address", buf.addr() as u64),
            ("length", buf.len() as u64),
            ("offset", offset),
        ] {
            if value % align != 0 {
                return Err(CpuError::Misaligned {
                    path: self.path.to_path_buf(),
                    what,
                    value,
                    align,
                });
            }
        }
        Ok(())
    }
}

/// The I/O engine. Cheap to clone: clones share one backend (one ring and its thread, or the
/// blocking pool). Dropping the last clone reaps every submission before the ring is freed.
#[derive(Clone)]
pub struct IoEngine {
    inner: Arc<Inner>,
}

enum Inner {
    Uring(uring::Uring),
    Std,
}

impl fmt::Debug for IoEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoEngine")
            .field("backend", &self.backend())
            .finish()
    }
}

/// Why `auto` could not use io_uring in this process, found once.
fn probe() -> &'static std::result::Result<(), (&'static str, i32)> {
    static PROBE: OnceLock<std::result::Result<(), (&'static str, i32)>> = OnceLock::new();
    PROBE.get_or_init(|| match uring::probe() {
        Ok(()) => Ok(()),
        Err(CpuError::UringUnavailable { step, source }) => {
            Err((step, source.raw_os_error().unwrap_or(0)))
        }
        Err(other) => Err(("probe", other_errno(&other))),
    })
}

fn other_errno(e: &CpuError) -> i32 {
    match e {
        CpuError::Io { source, .. } => source.raw_os_error().unwrap_or(0),
        _ => 0,
    }
}

impl IoEngine {
    /// Starts an engine on the backend `setting` selects. `uring` where io_uring cannot work is
    /// [`CpuError::UringUnavailable`]; `auto` falls back to std and logs why once.
    ///
    /// The io_uring backend reaps completions on the tokio runtime current at this call, so it
    /// needs one (`uring` outside a runtime is [`CpuError::NoRuntime`], `auto` falls back to
    /// std) and the engine should not outlive that runtime.
    pub fn new(setting: BackendSetting) -> Result<IoEngine> {
        let inner = match setting {
            BackendSetting::Std => Inner::Std,
            BackendSetting::Uring => Inner::Uring(uring::Uring::start()?),
            BackendSetting::Auto => match probe() {
                Ok(()) => match uring::Uring::start() {
                    Ok(u) => Inner::Uring(u),
                    Err(e) => {
                        tracing::warn!(error = %e, errno = other_errno(&e),
                            "io_uring passed the probe but a ring could not start; using the std backend");
                        metrics::counter!(m::IO_ERRORS, "op" => "ring_start").increment(1);
                        Inner::Std
                    }
                },
                Err((step, errno)) => {
                    static WARNED: OnceLock<()> = OnceLock::new();
                    if WARNED.set(()).is_ok() {
                        tracing::warn!(step, errno, reason = %std::io::Error::from_raw_os_error(*errno),
                            "io_uring is unavailable; the I/O engine uses the std backend (pread/pwrite/fdatasync)");
                    }
                    Inner::Std
                }
            },
        };
        let engine = IoEngine {
            inner: Arc::new(inner),
        };
        let backend = engine.backend();
        for b in [Backend::Uring, Backend::Std] {
            metrics::gauge!(m::IO_BACKEND_INFO, "backend" => b.as_str()).set(if b == backend {
                1.0
            } else {
                0.0
            });
        }
        tracing::debug!(backend = backend.as_str(), "I/O engine started");
        Ok(engine)
    }

    /// The backend this engine runs on.
    pub fn backend(&self) -> Backend {
        match &*self.inner {
            Inner::Uring(_) => Backend::Uring,
            Inner::Std => Backend::Std,
        }
    }

    /// Writes all of `buf` at `offset`, returning the buffer for reuse.
    pub async fn write_all_at(&self, file: &IoFile, buf: IoBuf, offset: u64) -> Result<IoBuf> {
        self.write_all(file, buf, offset, false).await
    }

    /// Writes all of `buf` at `offset` and then `fdatasync`s the file: when it returns `Ok` the
    /// bytes are durable. On io_uring the write and the sync are linked in one submission.
    pub async fn write_all_sync_at(&self, file: &IoFile, buf: IoBuf, offset: u64) -> Result<IoBuf> {
        self.write_all(file, buf, offset, true).await
    }

    async fn write_all(&self, file: &IoFile, buf: IoBuf, offset: u64, sync: bool) -> Result<IoBuf> {
        file.check_direct(&buf, offset)?;
        let full = buf.len;
        let start = buf.start;
        let mut buf = buf;
        let mut done = 0usize;
        loop {
            let (res, back) = match &*self.inner {
                Inner::Uring(u) => u.write(file, buf, offset + done as u64, sync).await,
                Inner::Std => std_backend::write(file, buf, offset + done as u64, sync).await,
            };
            buf = back;
            let n = res.map_err(|e| self.fail("write", file, e))?;
            if n == 0 && buf.len > 0 {
                let e = std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0");
                return Err(self.fail("write", file, EngineIoError::Os(e)));
            }
            done += n;
            if done >= full {
                // A linked sync that ran after a full write is done; after a short write the
                // remainder went in another round, whose sync covers the whole range.
                buf.start = start;
                buf.len = full;
                return Ok(buf);
            }
            buf.start = start + done;
            buf.len = full - done;
        }
    }

    /// Reads up to `len` bytes at `offset`; fewer at end of file.
    pub async fn read_at(&self, file: &IoFile, len: usize, offset: u64) -> Result<IoBuf> {
        let buf = if file.direct {
            IoBuf::aligned(len, DIRECT_ALIGN)
        } else {
            IoBuf::from(vec![0u8; len])
        };
        file.check_direct(&buf, offset)?;
        let (res, mut buf) = match &*self.inner {
            Inner::Uring(u) => u.read(file, buf, offset).await,
            Inner::Std => std_backend::read(file, buf, offset).await,
        };
        let n = res.map_err(|e| self.fail("read", file, e))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// `fdatasync`s the file: its data, and the metadata needed to read it back.
    pub async fn sync_data(&self, file: &IoFile) -> Result<()> {
        self.sync(file, false).await
    }

    /// `fsync`s the file, all metadata included. On a directory opened with
    /// [`IoFile::open_dir`] this makes renames and new entries in it durable.
    pub async fn sync_all(&self, file: &IoFile) -> Result<()> {
        self.sync(file, true).await
    }

    async fn sync(&self, file: &IoFile, all: bool) -> Result<()> {
        let res = match &*self.inner {
            Inner::Uring(u) => u.sync(file, all).await,
            Inner::Std => std_backend::sync(file, all).await,
        };
        res.map_err(|e| self.fail(if all { "fsync" } else { "fdatasync" }, file, e))
    }

    fn fail(&self, op: &'static str, file: &IoFile, e: EngineIoError) -> CpuError {
        let err = match e {
            EngineIoError::Os(source) => CpuError::io(op, file.path.to_path_buf(), source),
            EngineIoError::Stopped => CpuError::EngineStopped { op },
            EngineIoError::NoRuntime => CpuError::NoRuntime,
        };
        // Counted here, where it is detected; the one log event is the caller's, which knows
        // the job, segment or stream it was for (the journal, the launcher, the log reader).
        tracing::debug!(op, path = %file.path.display(), backend = self.backend().as_str(),
            error = %err, "I/O request failed");
        metrics::counter!(m::IO_ERRORS, "op" => op).increment(1);
        err
    }
}

/// What a backend reports of a failed request, before the engine adds the path.
#[derive(Debug)]
pub(crate) enum EngineIoError {
    Os(std::io::Error),
    Stopped,
    NoRuntime,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_filesystem_refusing_o_direct_gets_a_buffered_file() {
        let path = std::env::temp_dir().join(format!("cadre-odirect-{}", std::process::id()));
        let mode = OpenMode {
            direct: true,
            ..OpenMode::create_truncate()
        };
        let asked = std::cell::RefCell::new(Vec::new());
        let file = IoFile::open_with(&path, mode, |direct| {
            asked.borrow_mut().push(direct);
            if direct {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
        })
        .unwrap();
        assert_eq!(*asked.borrow(), vec![true, false]);
        assert!(!file.is_direct(), "buffered after EINVAL");
        // Misaligned buffers are fine on the buffered file.
        file.check_direct(&IoBuf::from(vec![1, 2, 3]), 7).unwrap();
        // Any other error is the caller's, not a fallback.
        let err = IoFile::open_with(&path, mode, |_| {
            Err(std::io::Error::from_raw_os_error(libc::EACCES))
        })
        .unwrap_err();
        assert!(matches!(err, CpuError::Io { op: "open", .. }), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
