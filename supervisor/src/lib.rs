//! cadre-supervisor: Erlang/OTP supervision trees for actix actors.
//!
//! actix alone lets a panicking handler kill its actor silently (the mailbox closes and callers
//! see "mailbox closed"), restarts only actors that stop themselves, and has neither strategies
//! nor restart limits. This crate keeps actix's `Actor`, `Handler`, typed `Message` and `Addr` as
//! the API and adds:
//!
//! - **Panic capture at the handler boundary** for sync handlers and async ones
//!   (`ResponseFuture`, `ResponseActFuture`, `AtomicResponse`), hooks and spawned futures. A
//!   panic, or an error declared fatal with [`SupervisedContext::fail`], fails the child: it
//!   restarts with fresh state from its factory and keeps its `Addr` and mailbox, so queued
//!   messages are handled by the new instance. The sender of the failing message gets an error
//!   (`MailboxError::Closed`), never a hang.
//! - **Trees as data** ([`SupervisorSpec`], [`WorkerSpec`], [`ChildSpec`]): strategies
//!   one_for_one, one_for_all, rest_for_one; restart types permanent, transient, temporary;
//!   shutdown brutal, timeout, infinity; dynamic children ([`SupervisorRef`]) and a dynamic pool
//!   ([`Pool`], OTP's simple_one_for_one).
//! - **Restart intensity** over a sliding period, then escalation to the parent; optional
//!   exponential backoff with seeded jitter.
//! - **Ordered start, reverse ordered stop** with shutdown timeouts.
//! - **Nothing swallowed**: every failure is exactly one error event with the child's path, kind,
//!   message and restart count, one increment of `cadre_actor_failures_total{actor,kind}`, and one
//!   entry in the tree's [`FailureJournal`].
//! - **Supervised callbacks** ([`CallbackRunner`]): isolated, ordered, bounded, disabled loudly.
//! - **Liveness**: a child with a progress deadline that stops progressing is killed and
//!   restarted as `unresponsive`.
//!
//! ```no_run
//! use actix::prelude::*;
//! use cadre_supervisor::{SupervisedContext, SupervisorSpec, WorkerSpec};
//!
//! #[derive(Default)]
//! struct Counter(u64);
//! impl Actor for Counter {
//!     type Context = SupervisedContext<Self>;
//! }
//!
//! #[derive(Message)]
//! #[rtype(result = "u64")]
//! struct Add(u64);
//! impl Handler<Add> for Counter {
//!     type Result = u64;
//!     fn handle(&mut self, msg: Add, _: &mut Self::Context) -> u64 {
//!         self.0 += msg.0;
//!         self.0
//!     }
//! }
//!
//! # fn main() {
//! actix::System::new().block_on(async {
//!     let counter = WorkerSpec::new("counter", Counter::default);
//!     let addr = counter.addr();
//!     let root = SupervisorSpec::one_for_one().child(counter).start("root").await?;
//!     assert_eq!(addr.send(Add(2)).await.ok(), Some(2));
//!     root.stop().await
//! }).expect("the example tree starts and stops");
//! # }
//! ```
//!
//! Costs: a supervised actor is an actix mailbox plus one task (its cell); a request (`send`)
//! pays one extra oneshot channel for its reply slot; a message pays one `catch_unwind` frame.
//! Limits: the cells of a supervisor run on the arbiter that started it; a handler that blocks
//! its thread cannot be preempted (blocking work belongs on a blocking pool), so liveness
//! deadlines catch actors stuck on futures, not threads stuck in a loop.

mod callback;
mod cell;
mod context;
mod error;
mod failure;
mod intensity;
pub mod metrics;
mod panic;
mod pool;
mod spec;
mod supervisor;

pub use callback::{
    Callback, CallbackError, CallbackEvent, CallbackRunner, CallbackSpec, EmitReport,
};
pub use context::SupervisedContext;
pub use error::SupervisorError;
pub use failure::{FailureJournal, FailureKind, FailureRecord};
pub use panic::install_panic_hook;
pub use pool::Pool;
pub use spec::{
    Backoff, ChildKind, ChildLimit, ChildSpec, Restart, Shutdown, Strategy, SupervisorSpec,
    WorkerSpec,
};
pub use supervisor::{ChildCounts, ChildStatus, SupervisorRef};
