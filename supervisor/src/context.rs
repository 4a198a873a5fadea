//! `SupervisedContext`: the execution context of a supervised actor.
//!
//! An actor opts into supervision by declaring `type Context = SupervisedContext<Self>;` and
//! otherwise keeps actix's API: `Handler<M>`, typed `Message`s, `Addr<A>`, `ctx.spawn`,
//! `ctx.wait`, `ctx.notify`, `run_interval`, `ResponseFuture`, `ResponseActFuture` and
//! `AtomicResponse` all work as with `actix::Context`.
//!
//! What differs: the context does not own the mailbox or the actor. Both live in the cell (see
//! `cell.rs`) that survives restarts, so an `Addr<A>` stays valid across restarts and messages
//! already queued are handled by the next instance. The context also offers
//! [`SupervisedContext::fail`] (declare a fatal error), [`SupervisedContext::progress`] (report
//! progress for a liveness deadline) and [`SupervisedContext::annotate`] (ids that go into the
//! failure record if the current message fails).
//!
//! Replies: a request (`Addr::send`) whose handler answers with `ResponseFuture` or `Response`
//! (which actix runs as a detached task) is answered through a private reply slot, so a reply
//! that never comes (the task panicked) is seen and treated as a failure of the actor; the caller
//! gets `MailboxError::Closed` instead of waiting forever. Every other response type answers
//! inside the cell (synchronously, or from a future the cell polls under `catch_unwind`), so it
//! gets the caller's slot directly and costs nothing extra. The choice is made per handler type
//! at compile time (a `TypeId` comparison).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use actix::dev::MessageResponse;
use actix::dev::{Envelope, EnvelopeProxy, OneshotSender, ToEnvelope};
use actix::fut::ActorFuture;
use actix::{
    Actor, ActorContext, ActorState, Addr, AsyncContext, Handler, Message, SpawnHandle, WeakAddr,
};
use tokio::sync::oneshot;

use crate::failure::FailureKind;

/// A future spawned into an actor's context.
pub(crate) type Item<A> = Pin<Box<dyn ActorFuture<A, Output = ()>>>;

/// What the actor asked of its context since the cell last looked, in order.
pub(crate) enum Pending<A> {
    /// `ctx.spawn`: a future that runs beside the mailbox.
    Spawn(SpawnHandle, Item<A>),
    /// `ctx.wait`: a future that blocks the mailbox until it completes.
    Wait(Item<A>),
    /// `ctx.cancel_future`.
    Cancel(SpawnHandle),
}

/// Identity of a child in its tree, shared by its cell and context.
#[derive(Debug)]
pub(crate) struct ChildInfo {
    /// Full path, e.g. `root/scheduler/lease_manager`.
    pub path: String,
    /// The `actor` metric label (the child id, or its pool's id).
    pub label: Arc<str>,
    /// The tree's failure journal.
    pub journal: crate::failure::FailureJournal,
}

/// A stop the actor asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopRequest {
    /// `ctx.stop()`: run `stopping`, which may veto, then `stopped`.
    Stop,
    /// `ctx.terminate()`: stop without asking `stopping`.
    Terminate,
}

/// The context of an actor supervised by cadre (use as `type Context = SupervisedContext<Self>`).
pub struct SupervisedContext<A: Actor<Context = SupervisedContext<A>>> {
    /// Weak, so that an idle actor costs no sender of its own; it always upgrades while the cell
    /// (which owns the mailbox) lives, and the context lives only inside the cell.
    addr: WeakAddr<A>,
    pub(crate) stop: Option<StopRequest>,
    pub(crate) stopping: bool,
    /// One list for spawns, waits and cancellations (one Vec keeps an idle actor small).
    pub(crate) pending: Vec<Pending<A>>,
    pub(crate) blocked: bool,
    next_handle: SpawnHandle,
    pub(crate) fatal: Option<Box<(FailureKind, String)>>,
    pub(crate) progress: u64,
    pub(crate) restart_count: u64,
    pub(crate) info: Arc<ChildInfo>,
    pub(crate) note: Option<Box<str>>,
}

impl<A: Actor<Context = SupervisedContext<A>>> SupervisedContext<A> {
    pub(crate) fn new(addr: WeakAddr<A>, info: Arc<ChildInfo>) -> Self {
        SupervisedContext {
            addr,
            stop: None,
            stopping: false,
            pending: Vec::new(),
            blocked: false,
            next_handle: SpawnHandle::default(),
            fatal: None,
            progress: 0,
            restart_count: 0,
            info,
            note: None,
        }
    }

    /// Forgets everything of the previous instance (spawned futures, requests, notes).
    pub(crate) fn reset(&mut self) {
        self.stop = None;
        self.stopping = false;
        self.pending.clear();
        self.blocked = false;
        self.fatal = None;
        self.note = None;
    }

    /// Declares a fatal error: once the current handler returns, the actor is treated as failed
    /// (kind `fatal`), logged, and restarted with fresh state as its child spec says.
    pub fn fail(&mut self, reason: impl Into<String>) {
        if self.fatal.is_none() {
            self.fatal = Some(Box::new((FailureKind::Fatal, reason.into())));
        }
    }

    pub(crate) fn fail_with(&mut self, kind: FailureKind, reason: String) {
        if self.fatal.is_none() {
            self.fatal = Some(Box::new((kind, reason)));
        }
    }

    /// Reports progress for the child's liveness deadline (handled messages and completed futures
    /// count on their own; call this from long waits that are still making progress).
    pub fn progress(&mut self) {
        self.progress = self.progress.wrapping_add(1);
    }

    /// Attaches ids of what is being handled (e.g. `event_id=42`); if the current message fails,
    /// they go into the failure record. Cleared after each message.
    pub fn annotate(&mut self, note: impl Into<String>) {
        self.note = Some(note.into().into_boxed_str());
    }

    /// This actor's path in the supervision tree, e.g. `root/scheduler`.
    pub fn path(&self) -> &str {
        &self.info.path
    }

    /// How many times this child has been restarted (0 for its first instance).
    pub fn restart_count(&self) -> u64 {
        self.restart_count
    }

    /// Reports a failure that does not end the actor (one error event, one counter increment,
    /// one journal entry), with the current annotation as context.
    pub(crate) fn report(&self, kind: FailureKind, message: &str) {
        crate::failure::report(
            &self.info.journal,
            crate::failure::Failure {
                path: &self.info.path,
                actor: &self.info.label,
                kind,
                message,
                restart_count: self.restart_count,
                context: self.note.as_deref(),
            },
        );
    }
}

impl<A: Actor<Context = SupervisedContext<A>>> ActorContext for SupervisedContext<A> {
    fn stop(&mut self) {
        if self.stop.is_none() {
            self.stop = Some(StopRequest::Stop);
        }
    }

    fn terminate(&mut self) {
        self.stop = Some(StopRequest::Terminate);
    }

    fn state(&self) -> ActorState {
        if self.stopping || self.stop.is_some() {
            ActorState::Stopping
        } else {
            ActorState::Running
        }
    }
}

impl<A: Actor<Context = SupervisedContext<A>>> AsyncContext<A> for SupervisedContext<A> {
    fn address(&self) -> Addr<A> {
        match self.addr.upgrade() {
            Some(addr) => addr,
            None => {
                // Unreachable while the cell lives; if it ever happens, hand out the address of a
                // closed mailbox, so sends fail with `Closed` instead of vanishing.
                tracing::error!(actor_path = %self.info.path, "mailbox gone while the actor runs");
                crate::metrics::internal_error("mailbox_gone");
                Addr::new(actix::dev::channel::channel::<A>(1).0)
            }
        }
    }

    fn spawn<F>(&mut self, fut: F) -> SpawnHandle
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.next_handle = self.next_handle.next();
        self.pending
            .push(Pending::Spawn(self.next_handle, Box::pin(fut)));
        self.next_handle
    }

    fn wait<F>(&mut self, fut: F)
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.pending.push(Pending::Wait(Box::pin(fut)));
    }

    fn waiting(&self) -> bool {
        self.blocked
            || self.stop.is_some()
            || self.pending.iter().any(|p| matches!(p, Pending::Wait(_)))
    }

    fn cancel_future(&mut self, handle: SpawnHandle) -> bool {
        self.pending.push(Pending::Cancel(handle));
        true
    }
}

impl<A, M> ToEnvelope<A, M> for SupervisedContext<A>
where
    A: Actor<Context = SupervisedContext<A>> + Handler<M>,
    <A as Handler<M>>::Result: 'static,
    M: Message + Send + 'static,
    M::Result: Send,
{
    fn pack(msg: M, tx: Option<OneshotSender<M::Result>>) -> Envelope<A> {
        Envelope::with_proxy(Box::new(SupervisedEnvelope { msg: Some(msg), tx }))
    }
}

/// A message on its way to a supervised actor, with the caller's reply slot if it waits.
struct SupervisedEnvelope<M: Message> {
    msg: Option<M>,
    tx: Option<OneshotSender<M::Result>>,
}

/// Whether a handler's response type runs as a task of its own (actix spawns `ResponseFuture`
/// and `Response` futures detached), so its reply must be watched.
fn replies_from_detached_task<R: 'static, T: 'static>() -> bool {
    use std::any::TypeId;
    let r = TypeId::of::<R>();
    r == TypeId::of::<actix::ResponseFuture<T>>() || r == TypeId::of::<actix::Response<T>>()
}

impl<A, M> EnvelopeProxy<A> for SupervisedEnvelope<M>
where
    A: Actor<Context = SupervisedContext<A>> + Handler<M>,
    <A as Handler<M>>::Result: 'static,
    M: Message + Send + 'static,
    M::Result: Send,
{
    fn handle(&mut self, act: &mut A, ctx: &mut SupervisedContext<A>) {
        let Some(msg) = self.msg.take() else {
            return;
        };
        match self.tx.take() {
            None => <A as Handler<M>>::handle(act, msg, ctx).handle(ctx, None),
            Some(tx) => {
                if tx.is_closed() {
                    // The caller stopped waiting before the message was handled (as in actix,
                    // the message is not handled).
                    return;
                }
                if !replies_from_detached_task::<<A as Handler<M>>::Result, M::Result>() {
                    <A as Handler<M>>::handle(act, msg, ctx).handle(ctx, Some(tx));
                    return;
                }
                let (reply_tx, mut reply_rx) = oneshot::channel();
                <A as Handler<M>>::handle(act, msg, ctx).handle(ctx, Some(reply_tx));
                match reply_rx.try_recv() {
                    Ok(value) => send_reply(tx, value),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        ctx.spawn(ForwardReply {
                            rx: reply_rx,
                            tx: Some(tx),
                        });
                    }
                    Err(oneshot::error::TryRecvError::Closed) => ctx.fail_with(
                        FailureKind::Fatal,
                        format!(
                            "handler of {} dropped its reply without answering",
                            std::any::type_name::<M>()
                        ),
                    ),
                }
            }
        }
    }
}

fn send_reply<T>(tx: OneshotSender<T>, value: T) {
    if tx.send(value).is_err() {
        // The caller dropped its request future: nobody is waiting, nothing failed.
        tracing::trace!("reply not delivered: the caller stopped waiting");
    }
}

/// Waits for an asynchronous reply and forwards it to the caller; a reply that never comes is a
/// failure of the actor (the handler's future panicked or was dropped).
struct ForwardReply<T> {
    rx: oneshot::Receiver<T>,
    tx: Option<OneshotSender<T>>,
}

impl<A, T> ActorFuture<A> for ForwardReply<T>
where
    A: Actor<Context = SupervisedContext<A>>,
    T: 'static,
{
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        _act: &mut A,
        ctx: &mut SupervisedContext<A>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        match Pin::new(&mut this.rx).poll(task) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(value)) => {
                if let Some(tx) = this.tx.take() {
                    send_reply(tx, value);
                }
                Poll::Ready(())
            }
            Poll::Ready(Err(_closed)) => {
                let reason = crate::panic::take_last_panic().map_or_else(
                    || "asynchronous handler ended without a reply (its future panicked or was dropped)".to_owned(),
                    |p| format!("asynchronous handler panicked: {p}"),
                );
                ctx.fail_with(FailureKind::Panic, reason);
                Poll::Ready(())
            }
        }
    }
}
