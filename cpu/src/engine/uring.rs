//! The io_uring backend: one ring owned by one submission thread per engine.
//!
//! Requests arrive on a channel and a wake-up eventfd; the thread keeps a read of that eventfd
//! posted in the ring, so one `submit_and_wait` sleeps on new requests and on completions alike.
//! Every buffer and file of a request sits in the thread's in-flight table from the moment its
//! SQE is pushed until its CQE is reaped, and the thread reaps every submission (also the
//! eventfd read) before it returns and the ring is freed. That is the whole soundness argument
//! for the `unsafe` pushes below.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use tokio::sync::oneshot;

use super::{EngineIoError, IoBuf, IoFile};
use crate::error::{CpuError, Result};
use crate::metrics as m;

const RING_ENTRIES: u32 = 256;
/// The largest single transfer; longer buffers go in several rounds.
const MAX_TRANSFER: usize = 1 << 30;
/// user_data of the eventfd read (requests use ids from 1 up, times two).
const WAKE_TOKEN: u64 = u64::MAX;

/// Sets up a ring and checks the opcodes the engine uses.
pub(super) fn probe() -> Result<()> {
    let ring = IoUring::new(8).map_err(|source| CpuError::UringUnavailable {
        step: "io_uring_setup",
        source,
    })?;
    check_opcodes(&ring)
}

fn check_opcodes(ring: &IoUring) -> Result<()> {
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|source| CpuError::UringUnavailable {
            step: "register_probe",
            source,
        })?;
    for (name, code) in [
        ("IORING_OP_WRITE", opcode::Write::CODE),
        ("IORING_OP_READ", opcode::Read::CODE),
        ("IORING_OP_FSYNC", opcode::Fsync::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(CpuError::UringUnavailable {
                step: name,
                source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
    }
    Ok(())
}

enum Op {
    Write { buf: IoBuf, offset: u64, sync: bool },
    Read { buf: IoBuf, offset: u64 },
    Sync { all: bool },
}

type Reply = oneshot::Sender<(std::result::Result<usize, EngineIoError>, IoBuf)>;

struct Request {
    file: Arc<File>,
    op: Op,
    reply: Reply,
}

/// Handle to the ring thread.
pub(super) struct Uring {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    wake: Arc<OwnedFd>,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Uring {
    pub(super) fn start() -> Result<Uring> {
        let ring = IoUring::new(RING_ENTRIES).map_err(|source| CpuError::UringUnavailable {
            step: "io_uring_setup",
            source,
        })?;
        check_opcodes(&ring)?;
        // Safety: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        #[allow(unsafe_code)]
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(CpuError::UringUnavailable {
                step: "eventfd",
                source: io::Error::last_os_error(),
            });
        }
        // Safety: `raw` is a fresh descriptor owned by nobody else.
        #[allow(unsafe_code)]
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let (tx, rx) = mpsc::channel();
        let closing = Arc::new(AtomicBool::new(false));
        let thread = {
            let wake = Arc::clone(&wake);
            let closing = Arc::clone(&closing);
            std::thread::Builder::new()
                .name("cadre-io-uring".into())
                .spawn(move || RingThread::new(ring, rx, wake, closing).run())
                .map_err(|source| CpuError::UringUnavailable {
                    step: "spawn ring thread",
                    source,
                })?
        };
        Ok(Uring {
            tx: Mutex::new(Some(tx)),
            wake,
            closing,
            thread: Some(thread),
        })
    }

    fn wake(&self) {
        wake(&self.wake);
    }

    async fn submit(
        &self,
        file: &IoFile,
        op: Op,
    ) -> (std::result::Result<usize, EngineIoError>, IoBuf) {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            file: Arc::clone(&file.file),
            op,
            reply,
        };
        let sent = match self.tx.lock() {
            Ok(guard) => match guard.as_ref() {
                Some(tx) => tx.send(req).map_err(|mpsc::SendError(req)| req),
                None => Err(req),
            },
            Err(poisoned) => match poisoned.get_ref().as_ref() {
                Some(tx) => tx.send(req).map_err(|mpsc::SendError(req)| req),
                None => Err(req),
            },
        };
        if let Err(req) = sent {
            return (Err(EngineIoError::Stopped), req.op.into_buf());
        }
        self.wake();
        match rx.await {
            Ok(done) => done,
            // The thread replies to every request it takes, so this means it died.
            Err(_) => (Err(EngineIoError::Stopped), IoBuf::default()),
        }
    }

    pub(super) async fn write(
        &self,
        file: &IoFile,
        buf: IoBuf,
        offset: u64,
        sync: bool,
    ) -> (std::result::Result<usize, EngineIoError>, IoBuf) {
        self.submit(file, Op::Write { buf, offset, sync }).await
    }

    pub(super) async fn read(
        &self,
        file: &IoFile,
        buf: IoBuf,
        offset: u64,
    ) -> (std::result::Result<usize, EngineIoError>, IoBuf) {
        self.submit(file, Op::Read { buf, offset }).await
    }

    pub(super) async fn sync(
        &self,
        file: &IoFile,
        all: bool,
    ) -> std::result::Result<(), EngineIoError> {
        self.submit(file, Op::Sync { all }).await.0.map(|_| ())
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Close the channel, tell the thread, and wait until it has reaped every submission.
        match self.tx.lock() {
            Ok(mut g) => drop(g.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
        self.closing.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the io_uring thread panicked; its ring was leaked, not freed");
                metrics::counter!(m::IO_ERRORS, "op" => "ring_thread").increment(1);
            }
        }
    }
}

fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // Safety: writes 8 bytes from a live local to a descriptor we own.
    #[allow(unsafe_code)]
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if n != 8 {
        // EAGAIN cannot happen below 2^64-1 pending wakes; anything else is worth a line.
        tracing::error!(error = %io::Error::last_os_error(), "waking the io_uring thread failed");
        metrics::counter!(m::IO_ERRORS, "op" => "wake").increment(1);
    }
}

impl Op {
    fn into_buf(self) -> IoBuf {
        match self {
            Op::Write { buf, .. } | Op::Read { buf, .. } => buf,
            Op::Sync { .. } => IoBuf::default(),
        }
    }
}

/// A request whose SQEs are in the ring: it owns what the kernel may touch.
struct InFlight {
    _file: Arc<File>,
    buf: IoBuf,
    reply: Reply,
    /// CQEs still to come (2 for a linked write + sync).
    waiting: u8,
    /// The transfer's byte count, or the first error.
    result: std::result::Result<usize, i32>,
}

struct RingThread {
    ring: IoUring,
    rx: mpsc::Receiver<Request>,
    wake: Arc<OwnedFd>,
    closing: Arc<AtomicBool>,
    /// The eventfd read's target: boxed so its address is stable while the read is posted.
    wake_buf: Box<[u8; 8]>,
    wake_posted: bool,
    wake_fired: bool,
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
}

impl RingThread {
    fn new(
        ring: IoUring,
        rx: mpsc::Receiver<Request>,
        wake: Arc<OwnedFd>,
        closing: Arc<AtomicBool>,
    ) -> Self {
        RingThread {
            ring,
            rx,
            wake,
            closing,
            wake_buf: Box::new([0u8; 8]),
            wake_posted: false,
            wake_fired: false,
            in_flight: HashMap::new(),
            next_id: 1,
        }
    }

    fn run(mut self) {
        self.post_wake_read();
        loop {
            if self.closing.load(Ordering::SeqCst) && !self.wake_posted {
                // Requests still queued (sent before the channel closed) get an answer too.
                self.take_requests();
                if self.in_flight.is_empty() {
                    return;
                }
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
                    _ => {
                        tracing::error!(error = %e, in_flight = self.in_flight.len(),
                            "io_uring_enter failed; retrying after reaping");
                        metrics::counter!(m::IO_ERRORS, "op" => "io_uring_enter").increment(1);
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
            self.reap();
            if self.wake_fired {
                self.wake_fired = false;
                // Post the next read before draining: a request sent after the drain finds it.
                self.post_wake_read();
                self.take_requests();
            }
        }
    }

    fn post_wake_read(&mut self) {
        if self.closing.load(Ordering::SeqCst) || self.wake_posted {
            return;
        }
        let sqe = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(WAKE_TOKEN);
        self.push_all(&[sqe]);
        self.wake_posted = true;
    }

    /// Pushes SQEs as one group (a linked pair is never split across two submissions),
    /// flushing the queue to the kernel first when there is no room for all of them.
    fn push_all(&mut self, sqes: &[squeue::Entry]) {
        loop {
            let room = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if room >= sqes.len() {
                break;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "flushing a full submission queue failed");
                metrics::counter!(m::IO_ERRORS, "op" => "io_uring_enter").increment(1);
            }
            self.reap();
        }
        // Safety: every pointer in these SQEs points into memory owned by `self` (the boxed
        // wake buffer, or an `InFlight` entry's buffer inserted before this call) that stays
        // alive and unmoved until the matching CQE is reaped in `reap`; the file descriptors
        // are kept open by the `InFlight` entry's `Arc<File>` (or `self.wake`) just as long.
        #[allow(unsafe_code)]
        let pushed = unsafe { self.ring.submission().push_multiple(sqes) };
        if pushed.is_err() {
            // Unreachable after the room check above; failing loudly beats a lost request.
            tracing::error!(
                count = sqes.len(),
                "submission queue full after making room"
            );
            metrics::counter!(m::IO_ERRORS, "op" => "sq_full").increment(1);
        }
    }

    /// Reaps all completions; a fired wake is remembered in `wake_fired`.
    fn reap(&mut self) {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (token, res) in done {
            if token == WAKE_TOKEN {
                self.wake_posted = false;
                self.wake_fired = true;
                if res < 0 {
                    tracing::error!(errno = -res, "reading the io_uring wake eventfd failed");
                    metrics::counter!(m::IO_ERRORS, "op" => "wake").increment(1);
                }
            } else {
                self.complete(token, res);
            }
        }
    }

    fn complete(&mut self, token: u64, res: i32) {
        let id = token >> 1;
        let is_sync_half = token & 1 == 1;
        let Some(entry) = self.in_flight.get_mut(&id) else {
            tracing::error!(token, "io_uring completion for an unknown request");
            metrics::counter!(m::IO_ERRORS, "op" => "unknown_completion").increment(1);
            return;
        };
        entry.waiting = entry.waiting.saturating_sub(1);
        if res < 0 {
            // A linked sync cancelled after a short write is not an error: the engine writes
            // the rest and syncs again.
            let cancelled_after_short =
                is_sync_half && res == -libc::ECANCELED && entry.result.is_ok();
            if !cancelled_after_short && entry.result.is_ok() {
                entry.result = Err(-res);
            }
        } else if !is_sync_half {
            entry.result = Ok(res as usize);
        }
        if entry.waiting == 0 {
            if let Some(done) = self.in_flight.remove(&id) {
                let result = match done.result {
                    Ok(n) => Ok(n),
                    Err(errno) => Err(EngineIoError::Os(io::Error::from_raw_os_error(errno))),
                };
                // The requester may have gone (its future dropped): the buffer is freed here.
                if done.reply.send((result, done.buf)).is_err() {
                    tracing::debug!(id, "I/O completion for a request whose caller has gone");
                }
            }
        }
    }

    fn take_requests(&mut self) {
        while let Ok(req) = self.rx.try_recv() {
            self.start(req);
        }
    }

    fn start(&mut self, req: Request) {
        let id = self.next_id;
        self.next_id += 1;
        let fd = types::Fd(req.file.as_raw_fd());
        let (buf, sqes_kind) = match req.op {
            Op::Write { buf, offset, sync } => (buf, Kind::Write { offset, sync }),
            Op::Read { buf, offset } => (buf, Kind::Read { offset }),
            Op::Sync { all } => (IoBuf::default(), Kind::Sync { all }),
        };
        let sync_linked = matches!(sqes_kind, Kind::Write { sync: true, .. });
        let waiting = if sync_linked { 2 } else { 1 };
        // Insert first, then build SQEs from the buffer's final address in the table.
        self.in_flight.insert(
            id,
            InFlight {
                _file: req.file,
                buf,
                reply: req.reply,
                waiting,
                result: Ok(0),
            },
        );
        let Some(entry) = self.in_flight.get_mut(&id) else {
            return;
        };
        let len = entry.buf.len().min(MAX_TRANSFER) as u32;
        let sqes: Vec<squeue::Entry> = match sqes_kind {
            Kind::Write { offset, sync } => {
                let w = opcode::Write::new(fd, entry.buf.as_slice().as_ptr(), len)
                    .offset(offset)
                    .build()
                    .user_data(id << 1);
                if sync {
                    let s = opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data((id << 1) | 1);
                    vec![w.flags(squeue::Flags::IO_LINK), s]
                } else {
                    vec![w]
                }
            }
            Kind::Read { offset } => {
                vec![
                    opcode::Read::new(fd, entry.buf.as_mut_slice().as_mut_ptr(), len)
                        .offset(offset)
                        .build()
                        .user_data(id << 1),
                ]
            }
            Kind::Sync { all } => {
                let flags = if all {
                    types::FsyncFlags::empty()
                } else {
                    types::FsyncFlags::DATASYNC
                };
                vec![opcode::Fsync::new(fd)
                    .flags(flags)
                    .build()
                    .user_data((id << 1) | 1)]
            }
        };
        self.push_all(&sqes);
    }
}

enum Kind {
    Write { offset: u64, sync: bool },
    Read { offset: u64 },
    Sync { all: bool },
}
