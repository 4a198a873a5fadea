//! Trees as data, as OTP declares them: a supervisor spec (strategy, intensity, period) and
//! child specs (id, factory, restart, shutdown, kind).
//!
//! | restart type | after a panic or fatal error | after a normal exit (`ctx.stop()`) | when the supervisor restarts siblings |
//! |---|---|---|---|
//! | `Permanent` | restarted | restarted | restarted |
//! | `Transient` | restarted | not restarted | restarted |
//! | `Temporary` | not restarted (removed) | not restarted (removed) | removed |
//!
//! Defaults, and why:
//! - intensity 3 restarts within a 5 s period: OTP's default (1 in 5 s) escalates on the second
//!   crash in five seconds, which turns one flapping dependency into a tree restart; three lets a
//!   child ride out a short burst while a real crash loop still escalates within seconds.
//! - worker shutdown `Timeout(5 s)` and supervisor shutdown `Infinity`: OTP's defaults. A worker
//!   gets time to flush; a supervisor waits for its own children's timeouts.
//! - restart `Permanent`: a service actor that ends is a bug to recover from.
//! - mailbox capacity 16, actix's default: `send` waits when the mailbox holds that many.

use std::sync::Arc;
use std::time::Duration;

use actix::dev::channel::{channel, AddressReceiver};
use actix::{Actor, Addr};
use tokio::sync::{mpsc, watch};

use crate::context::SupervisedContext;
use crate::error::SupervisorError;
use crate::failure::FailureJournal;
use crate::supervisor::{RefInfo, SupMsg, SupervisorRef};

/// How a supervisor reacts when one child has to be restarted (OTP's strategies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Stop all other children (in reverse start order), then restart all of them in order.
    OneForAll,
    /// Stop the children started after the one that exited (in reverse order), then restart it
    /// and them in order.
    RestForOne,
}

/// When a child is restarted (OTP's restart types); see the module table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit (panic, fatal error, unresponsive, ...).
    Transient,
    /// Never restarted; removed from the supervisor when it exits.
    Temporary,
}

/// How a child is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Dropped at once; no `stopping`/`stopped` hooks run.
    Brutal,
    /// Asked to stop; killed (and a `shutdown_timeout` failure logged) if not stopped in time.
    Timeout(Duration),
    /// Asked to stop, and waited for as long as it takes (the default for supervisors).
    Infinity,
}

/// Whether a child is a worker (an actor) or a supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    /// An actor.
    Worker,
    /// A nested supervisor.
    Supervisor,
}

/// Exponential backoff between restarts of the same child, with seeded jitter.
///
/// The n-th consecutive restart of a child (consecutive: each within `period` of the child's
/// previous start) waits `min(max, initial * 2^(n-1))`, scaled by a random factor in
/// `[1 - jitter, 1 + jitter]` drawn from the supervisor's seeded RNG.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// Relative jitter, 0.0 to 1.0.
    pub jitter: f64,
}

/// A per-child restart limit: more than `intensity` restarts within `period` disables the child
/// (it is stopped for good and an error event says so) instead of escalating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildLimit {
    /// Restarts allowed within the period.
    pub intensity: u32,
    /// The sliding window.
    pub period: Duration,
}

/// Options shared by every kind of child spec.
#[derive(Clone, Debug)]
pub(crate) struct ChildOptions {
    pub restart: Restart,
    pub shutdown: Shutdown,
    pub liveness: Option<Duration>,
    pub limit: Option<ChildLimit>,
    pub label: Option<Arc<str>>,
}

/// A child of a supervisor, ready to be started: a worker ([`WorkerSpec`]) or a supervisor
/// ([`SupervisorSpec`]), type-erased.
pub struct ChildSpec {
    pub(crate) id: String,
    pub(crate) options: ChildOptions,
    pub(crate) start: StartSpec,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("kind", &self.kind())
            .field("restart", &self.options.restart)
            .field("shutdown", &self.options.shutdown)
            .finish()
    }
}

pub(crate) enum StartSpec {
    Worker(Box<dyn WorkerParts>),
    Supervisor(Box<SupervisorSpec>),
}

impl ChildSpec {
    /// The child's id, unique under its supervisor.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Worker or supervisor.
    pub fn kind(&self) -> ChildKind {
        match self.start {
            StartSpec::Worker(_) => ChildKind::Worker,
            StartSpec::Supervisor(_) => ChildKind::Supervisor,
        }
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.options.restart = restart;
        self
    }

    /// Sets how the child is stopped.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.options.shutdown = shutdown;
        self
    }

    /// Disables the child after more than `intensity` restarts within `period`.
    pub fn limit(mut self, intensity: u32, period: Duration) -> Self {
        self.options.limit = Some(ChildLimit { intensity, period });
        self
    }

    /// Sets the `actor` metric label (default: the id). Pools set it to the pool's id so that
    /// per-instance ids never become label values.
    pub fn metric_label(mut self, label: impl Into<Arc<str>>) -> Self {
        self.options.label = Some(label.into());
        self
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), SupervisorError> {
        let invalid = |name: &str, reason: &str| SupervisorError::InvalidSpec {
            field: format!("{field}.{name}"),
            reason: reason.to_owned(),
        };
        if self.id.is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        if self.id.len() > 128 {
            return Err(invalid("id", "must be at most 128 bytes"));
        }
        if self.id.contains('/') || self.id.chars().any(char::is_control) {
            return Err(invalid("id", "must not contain '/' or control characters"));
        }
        if let Shutdown::Timeout(d) = self.options.shutdown {
            if d.is_zero() {
                return Err(invalid(
                    "shutdown",
                    "a timeout must be greater than zero (use Brutal to kill at once)",
                ));
            }
        }
        if let Some(d) = self.options.liveness {
            if d.is_zero() {
                return Err(invalid("progress_deadline", "must be greater than zero"));
            }
        }
        if let Some(limit) = self.options.limit {
            if limit.period.is_zero() {
                return Err(invalid("limit.period", "must be greater than zero"));
            }
        }
        if let StartSpec::Supervisor(spec) = &self.start {
            spec.validate(field)?;
        }
        Ok(())
    }
}

/// The typed half of a worker spec, erased so the supervisor can spawn its cell.
pub(crate) trait WorkerParts: Send {
    /// Spawns the cell on the current arbiter; returns the handle the supervisor keeps.
    fn spawn(
        self: Box<Self>,
        info: Arc<crate::context::ChildInfo>,
        env: crate::cell::CellEnv,
        liveness: Option<Duration>,
    ) -> Arc<crate::cell::CellShared>;
}

struct Worker<A: Actor<Context = SupervisedContext<A>>> {
    rx: AddressReceiver<A>,
    addr: Addr<A>,
    factory: Box<dyn Fn() -> A + Send>,
}

impl<A: Actor<Context = SupervisedContext<A>>> WorkerParts for Worker<A> {
    fn spawn(
        self: Box<Self>,
        info: Arc<crate::context::ChildInfo>,
        env: crate::cell::CellEnv,
        liveness: Option<Duration>,
    ) -> Arc<crate::cell::CellShared> {
        let shared = Arc::new(crate::cell::CellShared::default());
        // The cell keeps only a weak address: the spec's strong one is dropped here, so an idle
        // actor holds no sender of its own.
        let ctx = SupervisedContext::new(self.addr.downgrade(), info);
        let cell = crate::cell::Cell::new(
            ctx,
            self.rx,
            self.factory,
            Arc::clone(&shared),
            env,
            liveness,
        );
        actix_rt::spawn(cell);
        shared
    }
}

/// A worker child: an actor with `type Context = SupervisedContext<Self>` and its factory.
///
/// The mailbox exists from the moment the spec is built, so [`WorkerSpec::addr`] can be handed
/// to other actors before the tree starts; messages sent early wait for the first instance.
pub struct WorkerSpec<A: Actor<Context = SupervisedContext<A>>> {
    id: String,
    options: ChildOptions,
    worker: Worker<A>,
}

impl<A: Actor<Context = SupervisedContext<A>>> WorkerSpec<A> {
    /// Default mailbox capacity (actix's).
    pub const DEFAULT_MAILBOX: usize = 16;

    /// A worker child named `id`, whose instances `factory` makes (on the supervisor's arbiter).
    pub fn new(id: impl Into<String>, factory: impl Fn() -> A + Send + 'static) -> Self {
        let (tx, rx) = channel::<A>(Self::DEFAULT_MAILBOX);
        WorkerSpec {
            id: id.into(),
            options: ChildOptions {
                restart: Restart::Permanent,
                shutdown: Shutdown::Timeout(Duration::from_secs(5)),
                liveness: None,
                limit: None,
                label: None,
            },
            worker: Worker {
                rx,
                addr: Addr::new(tx),
                factory: Box::new(factory),
            },
        }
    }

    /// The actor's address: stable across restarts.
    pub fn addr(&self) -> Addr<A> {
        self.worker.addr.clone()
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.options.restart = restart;
        self
    }

    /// Sets how the child is stopped.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.options.shutdown = shutdown;
        self
    }

    /// Declares a progress deadline: while a waited future (`ctx.wait`, `AtomicResponse`) blocks
    /// the mailbox, the actor must make progress (finish a future, or call
    /// [`SupervisedContext::progress`]) within `deadline`, else it is killed and restarted as a
    /// failure of kind `unresponsive`.
    pub fn progress_deadline(mut self, deadline: Duration) -> Self {
        self.options.liveness = Some(deadline);
        self
    }

    /// Disables the child after more than `intensity` restarts within `period`.
    pub fn limit(mut self, intensity: u32, period: Duration) -> Self {
        self.options.limit = Some(ChildLimit { intensity, period });
        self
    }

    /// Sets the mailbox capacity (at least 1): `send` waits, `try_send` fails, when it is full.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.worker.rx.set_capacity(capacity.max(1));
        self
    }

    /// Sets the `actor` metric label (default: the id).
    pub fn metric_label(mut self, label: impl Into<Arc<str>>) -> Self {
        self.options.label = Some(label.into());
        self
    }
}

impl<A: Actor<Context = SupervisedContext<A>>> From<WorkerSpec<A>> for ChildSpec {
    fn from(spec: WorkerSpec<A>) -> Self {
        ChildSpec {
            id: spec.id,
            options: spec.options,
            start: StartSpec::Worker(Box::new(spec.worker)),
        }
    }
}

/// A supervisor: its strategy, restart intensity and children, in start order.
///
/// Its handle ([`SupervisorSpec::handle`]) exists before it starts, so a nested supervisor
/// (for example a pool) can be reached once the tree is up.
pub struct SupervisorSpec {
    pub(crate) strategy: Strategy,
    pub(crate) intensity: u32,
    pub(crate) period: Duration,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) seed: u64,
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) journal: Option<FailureJournal>,
    pub(crate) tx: mpsc::UnboundedSender<SupMsg>,
    pub(crate) rx: mpsc::UnboundedReceiver<SupMsg>,
    pub(crate) done: watch::Sender<Option<Result<(), SupervisorError>>>,
    pub(crate) info: Arc<std::sync::OnceLock<RefInfo>>,
}

impl std::fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("strategy", &self.strategy)
            .field("intensity", &self.intensity)
            .field("period", &self.period)
            .field("children", &self.children)
            .finish()
    }
}

impl SupervisorSpec {
    /// Default restart intensity (see the module docs for why).
    pub const DEFAULT_INTENSITY: u32 = 3;
    /// Default intensity period.
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);

    /// An empty supervisor with `strategy` and the default intensity.
    pub fn new(strategy: Strategy) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done, _) = watch::channel(None);
        SupervisorSpec {
            strategy,
            intensity: Self::DEFAULT_INTENSITY,
            period: Self::DEFAULT_PERIOD,
            backoff: None,
            seed: 0,
            children: Vec::new(),
            journal: None,
            tx,
            rx,
            done,
            info: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// `new(Strategy::OneForOne)`.
    pub fn one_for_one() -> Self {
        Self::new(Strategy::OneForOne)
    }

    /// `new(Strategy::OneForAll)`.
    pub fn one_for_all() -> Self {
        Self::new(Strategy::OneForAll)
    }

    /// `new(Strategy::RestForOne)`.
    pub fn rest_for_one() -> Self {
        Self::new(Strategy::RestForOne)
    }

    /// More than `intensity` restarts within `period` makes this supervisor give up: it stops all
    /// its children and escalates to its parent.
    pub fn intensity(mut self, intensity: u32, period: Duration) -> Self {
        self.intensity = intensity;
        self.period = period;
        self
    }

    /// Waits between restarts of the same child (exponential, with seeded jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Seeds the jitter RNG (default 0), so a run can be replayed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Uses `journal` for this tree's failures (default: a new journal of the default size; a
    /// nested supervisor always shares its parent's).
    pub fn journal(mut self, journal: FailureJournal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Appends a child; children start in the order they are added.
    pub fn child(mut self, child: impl Into<ChildSpec>) -> Self {
        self.children.push(child.into());
        self
    }

    /// A handle to this supervisor, usable once it runs (requests made earlier wait for it).
    pub fn handle(&self) -> SupervisorRef {
        SupervisorRef {
            tx: self.tx.clone(),
            done: self.done.subscribe(),
            info: Arc::clone(&self.info),
        }
    }

    /// This supervisor as a child of another one (shutdown `Infinity`, restart `Permanent`).
    pub fn into_child(self, id: impl Into<String>) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            options: ChildOptions {
                restart: Restart::Permanent,
                shutdown: Shutdown::Infinity,
                liveness: None,
                limit: None,
                label: None,
            },
            start: StartSpec::Supervisor(Box::new(self)),
        }
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), SupervisorError> {
        if self.period.is_zero() {
            return Err(SupervisorError::InvalidSpec {
                field: format!("{field}.period"),
                reason: "must be greater than zero".to_owned(),
            });
        }
        if let Some(b) = self.backoff {
            if !(0.0..=1.0).contains(&b.jitter) {
                return Err(SupervisorError::InvalidSpec {
                    field: format!("{field}.backoff.jitter"),
                    reason: "must be between 0.0 and 1.0".to_owned(),
                });
            }
            if b.initial > b.max {
                return Err(SupervisorError::InvalidSpec {
                    field: format!("{field}.backoff.initial"),
                    reason: "must not exceed backoff.max".to_owned(),
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, child) in self.children.iter().enumerate() {
            let child_field = format!("{field}.children[{i}]");
            child.validate(&child_field)?;
            if !seen.insert(child.id.as_str()) {
                return Err(SupervisorError::InvalidSpec {
                    field: format!("{child_field}.id"),
                    reason: format!("duplicate id {:?}", child.id),
                });
            }
        }
        Ok(())
    }
}
