//! The io_uring backend: one ring per engine, driven from the caller's tokio runtime.
//!
//! A request is submitted by the task that makes it (lock the ring, push its SQEs,
//! `io_uring_enter` without waiting), so a buffered write runs inline on that thread. Completions
//! are announced on an eventfd registered with the ring; a reaper task waits on it through
//! tokio's reactor and answers each request's oneshot. Submitters also reap what is already
//! complete when they leave the lock, so inline completions need no wake-up at all.
//!
//! Soundness: every buffer and file a request hands the kernel sits in the ring's in-flight
//! table from before its SQE is pushed until its CQE is reaped. The table lives in the same
//! struct as the ring, whose `Drop` reaps every outstanding submission before the ring is
//! freed (or, if the kernel stops answering, leaks the buffers rather than free them under it).
//! That is the whole argument for the `unsafe` push below.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::{opcode, squeue, types, IoUring, Probe};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{EngineIoError, IoBuf, IoFile};
use crate::error::{CpuError, Result};
use crate::metrics as m;

const RING_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = 4096;
/// The largest single transfer; longer buffers go in several rounds.
const MAX_TRANSFER: usize = 1 << 30;

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

type Done = (std::result::Result<usize, EngineIoError>, IoBuf);
type Reply = oneshot::Sender<Done>;

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

/// The ring and what it has been lent. Dropping it reaps everything first.
struct RingState {
    ring: IoUring,
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
    /// Set when `io_uring_enter` failed in a way retrying cannot fix: new requests are refused.
    broken: Option<String>,
}

struct Shared {
    state: Mutex<RingState>,
    /// Registered with the ring: the kernel bumps it for every completion.
    eventfd: AsyncFd<OwnedFd>,
    closing: AtomicBool,
}

/// Handle to a ring and its reaper task.
pub(super) struct Uring {
    shared: Arc<Shared>,
    reaper: JoinHandle<()>,
}

impl Uring {
    /// Sets up a ring and its reaper on the current tokio runtime.
    pub(super) fn start() -> Result<Uring> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| CpuError::NoRuntime)?;
        // A completion queue well above the submission queue: fsyncs finish in bursts on the
        // io-wq threads, and the reaper should find them in the queue, not the overflow list.
        let ring = match IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(RING_ENTRIES)
        {
            Ok(ring) => ring,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(RING_ENTRIES)
                .map_err(|source| CpuError::UringUnavailable {
                    step: "io_uring_setup",
                    source,
                })?,
            Err(source) => {
                return Err(CpuError::UringUnavailable {
                    step: "io_uring_setup",
                    source,
                })
            }
        };
        check_opcodes(&ring)?;
        // Safety: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        #[allow(unsafe_code)]
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(CpuError::UringUnavailable {
                step: "eventfd",
                source: io::Error::last_os_error(),
            });
        }
        // Safety: `raw` is a fresh descriptor owned by nobody else.
        #[allow(unsafe_code)]
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter()
            .register_eventfd(efd.as_raw_fd())
            .map_err(|source| CpuError::UringUnavailable {
                step: "register_eventfd",
                source,
            })?;
        let _enter = handle.enter();
        // Safety: an OwnedFd is open until dropped and always answers the same descriptor.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE) };
        let eventfd = registered.map_err(|e| CpuError::UringUnavailable {
            step: "register eventfd with the reactor",
            source: e.into(),
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(RingState {
                ring,
                in_flight: HashMap::new(),
                next_id: 1,
                broken: None,
            }),
            eventfd,
            closing: AtomicBool::new(false),
        });
        let reaper = handle.spawn(reap_loop(Arc::clone(&shared)));
        Ok(Uring { shared, reaper })
    }

    async fn submit(&self, file: &IoFile, op: Op) -> Done {
        let (reply, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.broken.is_some() || self.shared.closing.load(Ordering::Acquire) {
                return (Err(EngineIoError::Stopped), op.into_buf());
            }
            st.start(Arc::clone(&file.file), op, reply);
            st.enter();
            st.reap();
        }
        match rx.await {
            Ok(done) => done,
            // Every taken request is answered, unless the ring was dropped under it.
            Err(_) => (Err(EngineIoError::Stopped), IoBuf::default()),
        }
    }

    pub(super) async fn write(&self, file: &IoFile, buf: IoBuf, offset: u64, sync: bool) -> Done {
        self.submit(file, Op::Write { buf, offset, sync }).await
    }

    pub(super) async fn read(&self, file: &IoFile, buf: IoBuf, offset: u64) -> Done {
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
        // The reaper holds the other reference; once it is gone, `RingState::drop` reaps what
        // is still in flight before the ring is freed.
        self.shared.closing.store(true, Ordering::Release);
        self.reaper.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RingState> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent table.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits for completion notices and answers the requests they complete.
async fn reap_loop(shared: Arc<Shared>) {
    loop {
        let mut ready = match shared.eventfd.readable().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "io_uring: waiting on the completion eventfd failed; the ring is reaped only by submitters now");
                metrics::counter!(m::IO_ERRORS, "op" => "eventfd").increment(1);
                return;
            }
        };
        // Reset the counter before reaping: a completion after the reap bumps it again.
        let mut count = [0u8; 8];
        // Safety: reads at most 8 bytes into a live local buffer from a descriptor we own.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::read(
                ready.get_inner().as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                ready.clear_ready();
            } else {
                tracing::error!(error = %e, "io_uring: reading the completion eventfd failed");
                metrics::counter!(m::IO_ERRORS, "op" => "eventfd").increment(1);
            }
        }
        shared.lock().reap();
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

enum Kind {
    Write { offset: u64, sync: bool },
    Read { offset: u64 },
    Sync { all: bool },
}

impl RingState {
    /// Takes a request into the in-flight table and pushes its SQEs (not yet entered).
    fn start(&mut self, file: Arc<File>, op: Op, reply: Reply) {
        let id = self.next_id;
        self.next_id += 1;
        let fd = types::Fd(file.as_raw_fd());
        let (buf, kind) = match op {
            Op::Write { buf, offset, sync } => (buf, Kind::Write { offset, sync }),
            Op::Read { buf, offset } => (buf, Kind::Read { offset }),
            Op::Sync { all } => (IoBuf::default(), Kind::Sync { all }),
        };
        let waiting = if matches!(kind, Kind::Write { sync: true, .. }) {
            2
        } else {
            1
        };
        let mut entry = InFlight {
            _file: file,
            buf,
            reply,
            waiting,
            result: Ok(0),
        };
        let len = entry.buf.len().min(MAX_TRANSFER) as u32;
        let datasync = |all: bool| {
            if all {
                types::FsyncFlags::empty()
            } else {
                types::FsyncFlags::DATASYNC
            }
        };
        // The SQEs point into the buffer's heap memory, which does not move when `entry`
        // moves into the table below.
        let sqes: Vec<squeue::Entry> = match kind {
            Kind::Write { offset, sync } => {
                let w = opcode::Write::new(fd, entry.buf.as_slice().as_ptr(), len)
                    .offset(offset)
                    .build()
                    .user_data(id << 1);
                if sync {
                    let s = opcode::Fsync::new(fd)
                        .flags(datasync(false))
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
            Kind::Sync { all } => vec![opcode::Fsync::new(fd)
                .flags(datasync(all))
                .build()
                .user_data((id << 1) | 1)],
        };
        self.in_flight.insert(id, entry);
        self.push_all(&sqes);
    }

    /// Pushes SQEs as one group (a linked pair is never split across two submissions),
    /// entering the kernel first when there is no room for all of them.
    fn push_all(&mut self, sqes: &[squeue::Entry]) {
        loop {
            let room = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if room >= sqes.len() || self.broken.is_some() {
                break;
            }
            self.enter();
            self.reap();
        }
        // Safety: every pointer in these SQEs points into memory owned by an `InFlight` entry
        // of `self.in_flight` (its buffer's heap allocation), inserted before this call, which
        // stays alive and unmoved until the matching CQE is reaped in `reap` or, failing that,
        // is leaked by `Drop`; the entry's `Arc<File>` keeps the descriptor open as long.
        #[allow(unsafe_code)]
        let pushed = unsafe { self.ring.submission().push_multiple(sqes) };
        if pushed.is_err() {
            // Only when the ring is broken (no room could be made): answer now.
            let err = "submission queue full and the ring cannot be entered";
            tracing::error!(count = sqes.len(), "io_uring: {err}");
            metrics::counter!(m::IO_ERRORS, "op" => "sq_full").increment(1);
            if let Some(id) = sqes.first().map(|s| s.get_user_data() >> 1) {
                if let Some(entry) = self.in_flight.remove(&id) {
                    let done = (Err(EngineIoError::Stopped), entry.buf);
                    if entry.reply.send(done).is_err() {
                        tracing::debug!(id, "refused request's caller has gone");
                    }
                }
            }
        }
    }

    /// Hands queued SQEs to the kernel without waiting.
    fn enter(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The completion queue is full: reap, then try again.
                    Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                        if self.reap() == 0 {
                            std::thread::yield_now();
                        }
                    }
                    _ => {
                        let reason = format!("io_uring_enter: {e}");
                        tracing::error!(error = %e, in_flight = self.in_flight.len(),
                            "io_uring_enter failed; the engine refuses new requests");
                        metrics::counter!(m::IO_ERRORS, "op" => "io_uring_enter").increment(1);
                        self.broken = Some(reason);
                        return;
                    }
                },
            }
        }
    }

    /// Answers every completed request; returns how many CQEs were reaped.
    ///
    /// Completions that found the completion queue full wait in the kernel's overflow list,
    /// which only an `io_uring_enter` moves into the queue (and no eventfd signal announces
    /// them again): while the ring says it overflowed, enter and reap once more.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        loop {
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result()))
                .collect();
            n += done.len();
            for (token, res) in done {
                self.complete(token, res);
            }
            if !self.ring.submission().cq_overflow() || self.broken.is_some() {
                return n;
            }
            // `submit` asks for events when the overflow flag is up, which flushes the list.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!(error = %e, "io_uring: flushing overflowed completions failed");
                    metrics::counter!(m::IO_ERRORS, "op" => "cq_overflow").increment(1);
                    return n;
                }
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
}

impl Drop for RingState {
    fn drop(&mut self) {
        while !self.in_flight.is_empty() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    // The kernel may still write into these buffers: leak them, never free.
                    tracing::error!(error = %e, in_flight = self.in_flight.len(),
                        "io_uring: cannot reap on drop; leaking the in-flight buffers");
                    metrics::counter!(m::IO_ERRORS, "op" => "drop_reap").increment(1);
                    std::mem::forget(std::mem::take(&mut self.in_flight));
                    return;
                }
            }
            self.reap();
        }
    }
}
