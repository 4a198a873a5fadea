//! Supervised callbacks: many callbacks per event type, each isolated in its own supervised
//! actor, fed in order through its own bounded queue.
//!
//! Guarantees:
//! - Isolation: each callback is a child actor with its own mailbox; one that panics, errors or
//!   is slow never stops the others or the event stream ([`CallbackRunner::emit`] never waits).
//! - Order: a callback sees events in the order they were emitted (one mailbox, one handler at a
//!   time; a restarted instance continues with the next queued event).
//! - Nothing swallowed: an error returned by a callback is a `callback_error` failure; a panic is
//!   a `panic` failure and the callback restarts with fresh state from its factory; more than its
//!   limit of restarts in its period disables it with a `disabled` failure (error level). Each
//!   failure carries the callback's name (`actor`) and the event's id (`context`).
//!
//! Overflow policy: each callback's queue holds about `queue` events (actix's bounded mailbox:
//! at most `queue + 1` from the runner). When it is full, the new event is dropped for that
//! callback only, logged as an `overflow` failure with the event's id and counted in
//! `cadre_callback_events_dropped_total{callback,reason="full"}`. Events for a disabled callback
//! are counted with `reason="disabled"` (the disabling itself was the loud event).
//!
//! Callbacks run on the runner's arbiter: they must not block the thread (send blocking work to
//! a blocking pool), or they delay the other callbacks (never reorder or lose their events).

use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;

use crate::context::SupervisedContext;
use crate::error::SupervisorError;
use crate::failure::FailureKind;
use crate::metrics::{CALLBACK_EVENTS_DROPPED_TOTAL, CALLBACK_EVENTS_TOTAL};
use crate::spec::{Restart, SupervisorSpec, WorkerSpec};
use crate::supervisor::SupervisorRef;

/// An event that callbacks receive.
pub trait CallbackEvent: Send + Sync + 'static {
    /// The id that failure records carry (e.g. the job id and its new state).
    fn event_id(&self) -> String;
}

/// The error a callback returns.
pub type CallbackError = Box<dyn StdError + Send + Sync>;

/// A callback for events of type `E`.
pub trait Callback<E: CallbackEvent>: 'static {
    /// Handles one event; an error is logged and counted, and the next event still comes.
    fn on_event(&mut self, event: &E) -> Result<(), CallbackError>;
}

/// A callback to register: its name, factory, queue size and restart limit.
pub struct CallbackSpec<E: CallbackEvent> {
    name: String,
    factory: Box<dyn Fn() -> Box<dyn Callback<E>> + Send>,
    queue: usize,
    intensity: u32,
    period: Duration,
}

impl<E: CallbackEvent> CallbackSpec<E> {
    /// Default queue size per callback.
    pub const DEFAULT_QUEUE: usize = 1024;
    /// Default restart limit: 10 restarts within 60 s disables the callback (a callback that
    /// fails on most events is disabled within seconds; a rare failure never is).
    pub const DEFAULT_LIMIT: (u32, Duration) = (10, Duration::from_secs(60));

    /// A callback named `name` (unique within the runner), made by `factory` on every (re)start.
    pub fn new<C: Callback<E>>(
        name: impl Into<String>,
        factory: impl Fn() -> C + Send + 'static,
    ) -> Self {
        CallbackSpec {
            name: name.into(),
            factory: Box::new(move || Box::new(factory())),
            queue: Self::DEFAULT_QUEUE,
            intensity: Self::DEFAULT_LIMIT.0,
            period: Self::DEFAULT_LIMIT.1,
        }
    }

    /// Sets the queue size (at least 1).
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue.max(1);
        self
    }

    /// Disables the callback after more than `intensity` restarts within `period`.
    pub fn limit(mut self, intensity: u32, period: Duration) -> Self {
        self.intensity = intensity;
        self.period = period;
        self
    }
}

/// One event, shared by every callback's queue.
struct Deliver<E>(Arc<E>);

impl<E: CallbackEvent> Message for Deliver<E> {
    type Result = ();
}

struct CallbackActor<E: CallbackEvent> {
    callback: Box<dyn Callback<E>>,
}

impl<E: CallbackEvent> Actor for CallbackActor<E> {
    type Context = SupervisedContext<Self>;
}

impl<E: CallbackEvent> Handler<Deliver<E>> for CallbackActor<E> {
    type Result = ();

    fn handle(&mut self, msg: Deliver<E>, ctx: &mut Self::Context) {
        ctx.annotate(format!("event_id={}", msg.0.event_id()));
        if let Err(error) = self.callback.on_event(&msg.0) {
            ctx.report(FailureKind::CallbackError, &error.to_string());
        }
    }
}

struct Registered<E: CallbackEvent> {
    name: Arc<str>,
    addr: Addr<CallbackActor<E>>,
}

/// How one [`CallbackRunner::emit`] went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmitReport {
    /// Callbacks whose queue took the event.
    pub queued: usize,
    /// Callbacks whose queue was full (each logged and counted).
    pub dropped_full: usize,
    /// Disabled callbacks (counted).
    pub skipped_disabled: usize,
}

/// Delivers events to registered callbacks; cheap to clone.
pub struct CallbackRunner<E: CallbackEvent> {
    sup: SupervisorRef,
    callbacks: Arc<Mutex<Vec<Registered<E>>>>,
}

impl<E: CallbackEvent> Clone for CallbackRunner<E> {
    fn clone(&self) -> Self {
        CallbackRunner {
            sup: self.sup.clone(),
            callbacks: Arc::clone(&self.callbacks),
        }
    }
}

impl<E: CallbackEvent> CallbackRunner<E> {
    /// A runner and its supervisor spec (one_for_one; start it as a root or put it in a tree with
    /// `into_child`). Its own intensity is unlimited on purpose: each callback has its own limit,
    /// so restarts of one callback never count against another.
    pub fn new() -> (Self, SupervisorSpec) {
        let spec = SupervisorSpec::one_for_one().intensity(u32::MAX, Duration::from_secs(1));
        let runner = CallbackRunner {
            sup: spec.handle(),
            callbacks: Arc::new(Mutex::new(Vec::new())),
        };
        (runner, spec)
    }

    /// Registers and starts a callback; it receives the events emitted from now on.
    pub async fn register(&self, spec: CallbackSpec<E>) -> Result<(), SupervisorError> {
        let CallbackSpec {
            name,
            factory,
            queue,
            intensity,
            period,
        } = spec;
        let worker = WorkerSpec::new(name.clone(), move || CallbackActor {
            callback: factory(),
        })
        .restart(Restart::Permanent)
        .mailbox_capacity(queue)
        .limit(intensity, period);
        let addr = worker.addr();
        self.sup.start_child(worker).await?;
        self.lock().push(Registered {
            name: Arc::from(name.as_str()),
            addr,
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Registered<E>>> {
        self.callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `event` for every callback without waiting; see the module docs for overflow.
    pub fn emit(&self, event: E) -> EmitReport {
        let event = Arc::new(event);
        let mut report = EmitReport::default();
        let callbacks = self.lock();
        for cb in callbacks.iter() {
            match cb.addr.try_send(Deliver(Arc::clone(&event))) {
                Ok(()) => {
                    report.queued += 1;
                    metrics::counter!(CALLBACK_EVENTS_TOTAL, "callback" => cb.name.to_string())
                        .increment(1);
                }
                Err(SendError::Full(_)) => {
                    report.dropped_full += 1;
                    self.overflow(&cb.name, &event.event_id());
                }
                Err(SendError::Closed(_)) => {
                    report.skipped_disabled += 1;
                    metrics::counter!(
                        CALLBACK_EVENTS_DROPPED_TOTAL,
                        "callback" => cb.name.to_string(),
                        "reason" => "disabled"
                    )
                    .increment(1);
                }
            }
        }
        report
    }

    fn overflow(&self, name: &str, event_id: &str) {
        let path = match self.sup.path() {
            Some(p) => format!("{p}/{name}"),
            None => name.to_owned(),
        };
        // A callback exists only once the runner's supervisor runs (registering waits for it),
        // so the tree's journal is there; the fallback only keeps the type total.
        let journal = match self.sup.journal() {
            Some(journal) => journal,
            None => crate::failure::FailureJournal::new(
                crate::failure::FailureJournal::DEFAULT_CAPACITY,
            ),
        };
        crate::failure::report(
            &journal,
            crate::failure::Failure {
                path: &path,
                actor: name,
                kind: FailureKind::Overflow,
                message: "callback queue full; event dropped for this callback",
                restart_count: 0,
                context: Some(&format!("event_id={event_id}")),
            },
        );
        metrics::counter!(
            CALLBACK_EVENTS_DROPPED_TOTAL,
            "callback" => name.to_owned(),
            "reason" => "full"
        )
        .increment(1);
    }

    /// The runner's supervisor (for `which_children`, or to stop a root runner).
    pub fn supervisor(&self) -> &SupervisorRef {
        &self.sup
    }
}
