//! The cell: the task that owns one supervised actor's mailbox and drives its instances.
//!
//! A cell lives from the first start of a worker child until the child is deleted (or its
//! supervisor goes away). The actor instance inside is replaced on every restart: a fresh one
//! from the factory, with the same `Addr` and the same mailbox, so messages queued while the
//! previous instance failed are handled by the next one, in order.
//!
//! Invariants:
//! - Every call into user code (factory, hooks, handlers, spawned and waited futures, drops of
//!   the instance) runs under `catch_unwind`; a panic tears the instance down and becomes one
//!   failure report here, then one exit notice to the supervisor.
//! - While no instance runs (between a failure and the supervisor's decision), the mailbox is
//!   not read: messages wait for the next instance.
//! - The cell answers every command (start, stop, kill, close) exactly once.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::dev::channel::AddressReceiver;
use actix::dev::EnvelopeProxy;
use actix::{Actor, Running};
use futures_core::Stream;
use futures_util::task::AtomicWaker;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;

use crate::context::{Item, Pending, StopRequest, SupervisedContext};
use crate::failure::FailureKind;
use crate::panic::{panic_message, InCell};
use crate::supervisor::{Exit, SupMsg};

/// Messages handled in one poll before the cell yields to other tasks on its arbiter.
const BUDGET: u32 = 512;

/// A command from a supervisor to a child: to a cell, or (as `SupMsg::Control`) to a nested
/// supervisor, which applies it to all its children.
pub(crate) enum Cmd {
    /// Start a fresh instance; answers once `started` ran (or failed).
    Start {
        generation: u64,
        restart_count: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop the instance gracefully (`stopping`, which may veto, then `stopped`).
    Stop { reply: oneshot::Sender<()> },
    /// Drop the instance now, running no hooks.
    Kill { reply: oneshot::Sender<()> },
    /// Drop the instance and the mailbox; the cell ends.
    Close,
}

/// The part of a cell the supervisor holds: a command queue and the cell's waker.
#[derive(Default)]
pub(crate) struct CellShared {
    has_cmds: AtomicBool,
    cmds: Mutex<VecDeque<Cmd>>,
    waker: AtomicWaker,
}

impl CellShared {
    pub(crate) fn push(&self, cmd: Cmd) {
        self.cmds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(cmd);
        self.has_cmds.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn pop(&self) -> Option<Cmd> {
        if !self.has_cmds.load(Ordering::Acquire) {
            return None;
        }
        let mut cmds = self.cmds.lock().unwrap_or_else(PoisonError::into_inner);
        let cmd = cmds.pop_front();
        if cmds.is_empty() {
            self.has_cmds.store(false, Ordering::Release);
        }
        cmd
    }
}

/// Where a cell reports to.
pub(crate) struct CellEnv {
    pub key: u64,
    pub events: mpsc::UnboundedSender<SupMsg>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
}

enum Drive {
    Pending,
    Yield,
    Failed(FailureKind, String),
    Exit,
}

struct Liveness {
    deadline: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    progress_at_arm: u64,
}

/// The task that owns one supervised actor's mailbox; see the module docs.
pub(crate) struct Cell<A: Actor<Context = SupervisedContext<A>>> {
    act: Option<A>,
    ctx: SupervisedContext<A>,
    rx: AddressReceiver<A>,
    factory: Box<dyn Fn() -> A + Send>,
    shared: Arc<CellShared>,
    env: CellEnv,
    generation: u64,
    phase: Phase,
    items: Vec<(actix::SpawnHandle, Item<A>)>,
    waits: Vec<Item<A>>,
    stop_reply: Option<oneshot::Sender<()>>,
    liveness: Option<Box<Liveness>>,
}

impl<A: Actor<Context = SupervisedContext<A>>> Cell<A> {
    pub(crate) fn new(
        ctx: SupervisedContext<A>,
        rx: AddressReceiver<A>,
        factory: Box<dyn Fn() -> A + Send>,
        shared: Arc<CellShared>,
        env: CellEnv,
        liveness: Option<Duration>,
    ) -> Self {
        let liveness = liveness.map(|deadline| {
            Box::new(Liveness {
                deadline,
                sleep: Box::pin(tokio::time::sleep(deadline)),
                armed: false,
                progress_at_arm: 0,
            })
        });
        Cell {
            act: None,
            ctx,
            rx,
            factory,
            shared,
            env,
            generation: 0,
            phase: Phase::Idle,
            items: Vec::new(),
            waits: Vec::new(),
            stop_reply: None,
            liveness,
        }
    }

    /// Applies one command; returns false when the cell must end.
    fn apply(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Start {
                generation,
                restart_count,
                reply,
            } => {
                let result = self.start(generation, restart_count);
                if reply.send(result).is_err() {
                    tracing::warn!(actor_path = %self.ctx.info.path, "start reply not delivered: the supervisor stopped waiting");
                    crate::metrics::internal_error("start_reply_lost");
                }
                true
            }
            Cmd::Stop { reply } => {
                if self.phase == Phase::Running {
                    actix::ActorContext::stop(&mut self.ctx);
                    self.stop_reply = Some(reply);
                } else {
                    answer(reply);
                }
                true
            }
            Cmd::Kill { reply } => {
                if self.phase == Phase::Running {
                    if let Some(extra) = self.teardown() {
                        self.report(
                            FailureKind::Panic,
                            format!("dropping the killed instance panicked: {extra}"),
                        );
                    }
                }
                if let Some(pending) = self.stop_reply.take() {
                    answer(pending);
                }
                answer(reply);
                true
            }
            Cmd::Close => {
                if self.phase == Phase::Running {
                    if let Some(extra) = self.teardown() {
                        self.report(
                            FailureKind::Panic,
                            format!("dropping the closed instance panicked: {extra}"),
                        );
                    }
                }
                if let Some(pending) = self.stop_reply.take() {
                    answer(pending);
                }
                false
            }
        }
    }

    fn start(&mut self, generation: u64, restart_count: u64) -> Result<(), String> {
        if self.phase == Phase::Running {
            return Ok(());
        }
        self.generation = generation;
        self.ctx.reset();
        self.ctx.restart_count = restart_count;
        let factory = &self.factory;
        let act = match catch_unwind(AssertUnwindSafe(factory)) {
            Ok(act) => act,
            Err(payload) => {
                let message = format!("factory panicked: {}", panic_message(&*payload));
                self.report(FailureKind::StartFailed, message.clone());
                return Err(message);
            }
        };
        let act = self.act.insert(act);
        let ctx = &mut self.ctx;
        self.phase = Phase::Running;
        let started = catch_unwind(AssertUnwindSafe(|| Actor::started(act, ctx)));
        self.merge();
        let failure = match started {
            Err(payload) => Some(format!(
                "started hook panicked: {}",
                panic_message(&*payload)
            )),
            Ok(()) => self.ctx.fatal.take().map(|fatal| fatal.1),
        };
        if let Some(message) = failure {
            let extra = self.teardown();
            let message = with_extra(message, extra);
            self.report(FailureKind::StartFailed, message.clone());
            return Err(message);
        }
        Ok(())
    }

    /// Moves futures spawned through the context into the cell; returns whether any moved.
    fn merge(&mut self) -> bool {
        let ctx = &mut self.ctx;
        if ctx.pending.is_empty() {
            ctx.blocked = !self.waits.is_empty();
            return false;
        }
        let mut moved = false;
        for pending in ctx.pending.drain(..) {
            match pending {
                Pending::Spawn(handle, item) => {
                    self.items.push((handle, item));
                    moved = true;
                }
                Pending::Wait(item) => {
                    self.waits.push(item);
                    moved = true;
                }
                Pending::Cancel(handle) => self.items.retain(|(h, _)| *h != handle),
            }
        }
        ctx.blocked = !self.waits.is_empty();
        moved
    }

    /// Drops the instance and everything it spawned; returns the message of a panic in a drop.
    fn teardown(&mut self) -> Option<String> {
        self.phase = Phase::Idle;
        let act = self.act.take();
        let items = std::mem::take(&mut self.items);
        let waits = std::mem::take(&mut self.waits);
        let dropped = catch_unwind(AssertUnwindSafe(move || {
            drop(items);
            drop(waits);
            drop(act);
        }));
        self.ctx.reset();
        if let Some(l) = self.liveness.as_mut() {
            l.armed = false;
        }
        dropped.err().map(|payload| panic_message(&*payload))
    }

    fn report(&self, kind: FailureKind, message: String) {
        self.ctx.report(kind, &message);
    }

    /// The instance failed: report it once, drop it, tell the supervisor.
    fn fail(&mut self, kind: FailureKind, message: String) {
        self.report(kind, message.clone());
        if let Some(extra) = self.teardown() {
            self.report(
                FailureKind::Panic,
                format!("dropping the failed instance panicked: {extra}"),
            );
        }
        match self.stop_reply.take() {
            // A stop was in progress: the instance is gone, which is what was asked.
            Some(reply) => answer(reply),
            None => self.notify(Exit::Failed(kind, message)),
        }
    }

    /// The instance stopped itself (or finished a requested stop): run `stopped`, drop it.
    fn finish(&mut self) {
        let panicked = match (self.act.as_mut(), &mut self.ctx) {
            (Some(act), ctx) => {
                ctx.stopping = true;
                catch_unwind(AssertUnwindSafe(|| Actor::stopped(act, ctx)))
                    .err()
                    .map(|payload| panic_message(&*payload))
            }
            (None, _) => None,
        };
        if let Some(message) = panicked {
            self.fail(
                FailureKind::Panic,
                format!("stopped hook panicked: {message}"),
            );
            return;
        }
        if let Some(extra) = self.teardown() {
            self.report(
                FailureKind::Panic,
                format!("dropping the stopped instance panicked: {extra}"),
            );
        }
        match self.stop_reply.take() {
            Some(reply) => answer(reply),
            None => self.notify(Exit::Normal),
        }
    }

    fn notify(&mut self, exit: Exit) {
        let msg = SupMsg::Exited {
            key: self.env.key,
            generation: self.generation,
            exit,
        };
        if self.env.events.send(msg).is_err() {
            tracing::error!(actor_path = %self.ctx.info.path, "exit notice not delivered: the supervisor is gone");
            crate::metrics::internal_error("exit_notice_lost");
        }
    }

    /// Runs the instance until it has nothing to do, fails, or exits.
    fn drive(&mut self, task: &mut TaskContext<'_>) -> Drive {
        let mut handled = 0u32;
        loop {
            let mut again = false;
            if let Some(drive) = self.check(task) {
                return drive;
            }
            // Futures the actor waits on block its mailbox; the newest first, as in actix.
            while let Some(item) = self.waits.last_mut() {
                let (Some(act), ctx) = (self.act.as_mut(), &mut self.ctx) else {
                    return Drive::Pending;
                };
                match catch_unwind(AssertUnwindSafe(|| item.as_mut().poll(act, ctx, task))) {
                    Ok(Poll::Ready(())) => {
                        self.waits.pop();
                        self.ctx.progress();
                        self.merge();
                        if let Some(drive) = self.check(task) {
                            return drive;
                        }
                    }
                    Ok(Poll::Pending) => break,
                    Err(payload) => {
                        return Drive::Failed(
                            FailureKind::Panic,
                            format!("waited future panicked: {}", panic_message(&*payload)),
                        )
                    }
                }
            }
            // The mailbox, unless a waited future blocks it.
            while self.waits.is_empty() {
                if handled == BUDGET {
                    return Drive::Yield;
                }
                let mut env = match Pin::new(&mut self.rx).poll_next(task) {
                    Poll::Ready(Some(env)) => env,
                    Poll::Ready(None) | Poll::Pending => break,
                };
                handled += 1;
                let (Some(act), ctx) = (self.act.as_mut(), &mut self.ctx) else {
                    return Drive::Pending;
                };
                let result = catch_unwind(AssertUnwindSafe(|| env.handle(act, ctx)));
                ctx.progress = ctx.progress.wrapping_add(1);
                if let Err(payload) = result {
                    let message = format!("handler panicked: {}", panic_message(&*payload));
                    // Dropping the envelope drops the caller's reply slot: it gets an error.
                    drop(env);
                    return Drive::Failed(FailureKind::Panic, message);
                }
                self.ctx.note = None;
                if self.merge() {
                    again = true;
                }
                if self.ctx.stop.is_some() || self.ctx.fatal.is_some() {
                    again = true;
                    break;
                }
            }
            // Spawned futures (including asynchronous replies).
            let mut i = 0;
            while i < self.items.len() {
                let (Some(act), ctx) = (self.act.as_mut(), &mut self.ctx) else {
                    return Drive::Pending;
                };
                let item = &mut self.items[i].1;
                match catch_unwind(AssertUnwindSafe(|| item.as_mut().poll(act, ctx, task))) {
                    Ok(Poll::Ready(())) => {
                        // Order among spawned futures carries no meaning (as in actix).
                        drop(self.items.swap_remove(i));
                        self.ctx.progress();
                    }
                    Ok(Poll::Pending) => i += 1,
                    Err(payload) => {
                        return Drive::Failed(
                            FailureKind::Panic,
                            format!("spawned future panicked: {}", panic_message(&*payload)),
                        )
                    }
                }
                if self.merge() {
                    again = true;
                }
                if self.ctx.stop.is_some() || self.ctx.fatal.is_some() {
                    again = true;
                    break;
                }
            }
            if !again {
                return Drive::Pending;
            }
        }
    }

    /// Acts on what the last call into the actor asked for: a fatal error or a stop.
    fn check(&mut self, _task: &mut TaskContext<'_>) -> Option<Drive> {
        if let Some(fatal) = self.ctx.fatal.take() {
            let (kind, reason) = *fatal;
            return Some(Drive::Failed(kind, reason));
        }
        match self.ctx.stop.take() {
            None => None,
            Some(StopRequest::Terminate) => Some(Drive::Exit),
            Some(StopRequest::Stop) => {
                let (Some(act), ctx) = (self.act.as_mut(), &mut self.ctx) else {
                    return Some(Drive::Exit);
                };
                ctx.stopping = true;
                match catch_unwind(AssertUnwindSafe(|| Actor::stopping(act, ctx))) {
                    Ok(Running::Stop) => Some(Drive::Exit),
                    Ok(Running::Continue) => {
                        ctx.stopping = false;
                        self.merge();
                        None
                    }
                    Err(payload) => Some(Drive::Failed(
                        FailureKind::Panic,
                        format!("stopping hook panicked: {}", panic_message(&*payload)),
                    )),
                }
            }
        }
    }

    /// Checks the progress deadline while a waited future blocks the mailbox; returns the
    /// failure to apply when the actor is unresponsive.
    fn check_liveness(&mut self, task: &mut TaskContext<'_>) -> Option<String> {
        let blocked = !self.waits.is_empty();
        let progress = self.ctx.progress;
        let l = self.liveness.as_mut()?;
        if !blocked {
            l.armed = false;
            return None;
        }
        loop {
            if !l.armed || l.progress_at_arm != progress {
                l.armed = true;
                l.progress_at_arm = progress;
                let deadline = tokio::time::Instant::now() + l.deadline;
                l.sleep.as_mut().reset(deadline);
            }
            match l.sleep.as_mut().poll(task) {
                Poll::Pending => return None,
                Poll::Ready(()) if l.progress_at_arm == progress => {
                    return Some(format!(
                        "no progress within its {:?} progress deadline while blocked on a waited future",
                        l.deadline
                    ));
                }
                Poll::Ready(()) => l.armed = false,
            }
        }
    }
}

fn answer(reply: oneshot::Sender<()>) {
    if reply.send(()).is_err() {
        tracing::debug!("stop reply not delivered: the supervisor stopped waiting");
    }
}

fn with_extra(message: String, extra: Option<String>) -> String {
    match extra {
        Some(extra) => format!("{message}; dropping the instance also panicked: {extra}"),
        None => message,
    }
}

impl<A: Actor<Context = SupervisedContext<A>>> Future for Cell<A> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        let _in_cell = InCell::enter();
        this.shared.waker.register(task.waker());
        loop {
            while let Some(cmd) = this.shared.pop() {
                if !this.apply(cmd) {
                    return Poll::Ready(());
                }
            }
            if this.phase != Phase::Running {
                return Poll::Pending;
            }
            match this.drive(task) {
                Drive::Pending => match this.check_liveness(task) {
                    None => return Poll::Pending,
                    Some(message) => this.fail(FailureKind::Unresponsive, message),
                },
                Drive::Yield => {
                    task.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Drive::Failed(kind, message) => this.fail(kind, message),
                Drive::Exit => this.finish(),
            }
        }
    }
}
