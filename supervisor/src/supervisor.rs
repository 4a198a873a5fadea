//! The supervisor: a task per supervisor that starts its children in order, applies the restart
//! strategy and intensity when one exits, stops them in reverse order, and escalates.
//!
//! Invariants:
//! - One task owns a supervisor's state; everything reaches it as a [`SupMsg`] on one channel,
//!   handled one at a time, so decisions never race.
//! - A child's exit notice counts only if it names the child's current generation while the
//!   supervisor believes it running; anything else is stale (the failure itself was already
//!   reported by the cell that saw it).
//! - Children start in order and stop in reverse order; a stop honours the child's shutdown
//!   (brutal, timeout then kill, or infinity).
//! - A restart of a worker keeps its cell, so its `Addr` and queued messages survive.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::cell::{CellEnv, CellShared, Cmd};
use crate::context::ChildInfo;
use crate::error::SupervisorError;
use crate::failure::{report, Failure, FailureJournal, FailureKind};
use crate::intensity::RestartWindow;
use crate::metrics::ACTOR_RESTARTS_TOTAL;
use crate::spec::{
    Backoff, ChildKind, ChildSpec, Restart, Shutdown, StartSpec, Strategy, SupervisorSpec,
};

/// How a child instance ended on its own.
#[derive(Debug)]
pub(crate) enum Exit {
    /// It stopped itself (`ctx.stop()`).
    Normal,
    /// It failed; already reported where it happened, except `Escalated`, which the parent
    /// reports.
    Failed(FailureKind, String),
}

/// Everything a supervisor task handles.
pub(crate) enum SupMsg {
    /// A child's instance ended on its own.
    Exited {
        key: u64,
        generation: u64,
        exit: Exit,
    },
    /// (From the parent, or the root's start) the same commands a cell takes, for all children:
    /// start them in order, stop them in reverse order (then wait to be started again), kill
    /// them at once, or close them and end.
    Control(Cmd),
    /// A backoff delay for a child's restart has passed.
    RestartDue { key: u64, token: u64 },
    /// A request from a [`SupervisorRef`].
    Request(Request),
}

pub(crate) enum Request {
    StartChild {
        spec: ChildSpec,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    TerminateChild {
        id: String,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    RestartChild {
        id: String,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    DeleteChild {
        id: String,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    WhichChildren {
        reply: oneshot::Sender<Vec<ChildStatus>>,
    },
    CountChildren {
        reply: oneshot::Sender<ChildCounts>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
}

/// One child as `which_children` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// The child's id.
    pub id: String,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// Its restart type.
    pub restart: Restart,
    /// Whether an instance runs now.
    pub running: bool,
    /// How many times it was restarted.
    pub restarts: u64,
}

/// Counts as OTP's `count_children` gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildCounts {
    /// All child specs.
    pub specs: usize,
    /// Children with a running instance.
    pub active: usize,
    /// Children that are supervisors.
    pub supervisors: usize,
    /// Children that are workers.
    pub workers: usize,
}

/// What a handle knows once its supervisor runs.
#[derive(Debug)]
pub(crate) struct RefInfo {
    pub path: String,
    pub journal: FailureJournal,
}

/// A handle to a running supervisor: dynamic children, introspection, stop, and waiting for it
/// to end. Cheap to clone; `Send`.
#[derive(Clone, Debug)]
pub struct SupervisorRef {
    pub(crate) tx: mpsc::UnboundedSender<SupMsg>,
    pub(crate) done: watch::Receiver<Option<Result<(), SupervisorError>>>,
    pub(crate) info: Arc<OnceLock<RefInfo>>,
}

impl SupervisorRef {
    fn name(&self) -> String {
        self.info
            .get()
            .map_or_else(|| "<not started>".to_owned(), |i| i.path.clone())
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SupervisorError> {
        let (reply, rx) = oneshot::channel();
        let not_running = || SupervisorError::NotRunning {
            supervisor: self.name(),
        };
        self.tx
            .send(SupMsg::Request(make(reply)))
            .map_err(|_| not_running())?;
        rx.await.map_err(|_| not_running())
    }

    /// Adds a child and starts it (OTP's `start_child`); it is stopped with the others and
    /// restarted per its spec.
    pub async fn start_child(&self, spec: impl Into<ChildSpec>) -> Result<(), SupervisorError> {
        let spec = spec.into();
        self.call(|reply| Request::StartChild { spec, reply })
            .await?
    }

    /// Stops a child per its shutdown; its spec stays (a temporary child is removed).
    pub async fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_owned();
        self.call(|reply| Request::TerminateChild { id, reply })
            .await?
    }

    /// Starts a terminated child again (same address, same mailbox).
    pub async fn restart_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_owned();
        self.call(|reply| Request::RestartChild { id, reply })
            .await?
    }

    /// Removes a terminated child's spec; its mailbox closes and waiting callers get an error.
    pub async fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_owned();
        self.call(|reply| Request::DeleteChild { id, reply })
            .await?
    }

    /// The children in start order.
    pub async fn which_children(&self) -> Result<Vec<ChildStatus>, SupervisorError> {
        self.call(|reply| Request::WhichChildren { reply }).await
    }

    /// Counts of children.
    pub async fn count_children(&self) -> Result<ChildCounts, SupervisorError> {
        self.call(|reply| Request::CountChildren { reply }).await
    }

    /// Stops the whole tree (children in reverse start order, each per its shutdown) and ends
    /// the supervisor. Only for a root; a nested supervisor is stopped through its parent.
    pub async fn stop(&self) -> Result<(), SupervisorError> {
        self.call(|reply| Request::Shutdown { reply }).await?
    }

    /// Waits until the supervisor ends: `Ok` after [`SupervisorRef::stop`], or the error that
    /// ended it (a root that reached its restart limit returns `RestartLimit`).
    pub async fn wait(&self) -> Result<(), SupervisorError> {
        let mut done = self.done.clone();
        let result = match done.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
        };
        result.unwrap_or_else(|| {
            Err(SupervisorError::NotRunning {
                supervisor: self.name(),
            })
        })
    }

    /// The supervisor's path in its tree, once it runs.
    pub fn path(&self) -> Option<&str> {
        self.info.get().map(|i| i.path.as_str())
    }

    /// The tree's failure journal, once the supervisor runs.
    pub fn journal(&self) -> Option<FailureJournal> {
        self.info.get().map(|i| i.journal.clone())
    }
}

impl SupervisorSpec {
    /// Starts this supervisor as the root of a tree named `name`: children start in order, and
    /// this returns once all have started (or the first failed, after stopping the others).
    /// Must run on an actix arbiter (inside `actix::System`).
    pub async fn start(self, name: &str) -> Result<SupervisorRef, SupervisorError> {
        if name.is_empty() || name.contains('/') {
            return Err(SupervisorError::InvalidSpec {
                field: "name".to_owned(),
                reason: "must be non-empty and contain no '/'".to_owned(),
            });
        }
        self.validate(name)?;
        if actix_rt::Arbiter::try_current().is_none() {
            return Err(SupervisorError::NoArbiter);
        }
        crate::metrics::describe();
        let handle = self.handle();
        let journal = match self.journal.clone() {
            Some(journal) => journal,
            None => FailureJournal::new(FailureJournal::DEFAULT_CAPACITY),
        };
        let sup = Supervisor::build(self, name.to_owned(), name.to_owned(), journal, None);
        let tx = sup.tx.clone();
        actix_rt::spawn(sup.run());
        let (reply, rx) = oneshot::channel();
        let not_running = || SupervisorError::NotRunning {
            supervisor: name.to_owned(),
        };
        tx.send(SupMsg::Control(Cmd::Start {
            generation: 1,
            restart_count: 0,
            reply,
        }))
        .map_err(|_| not_running())?;
        match rx.await {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(reason)) => Err(SupervisorError::StartFailed {
                path: name.to_owned(),
                reason,
            }),
            Err(_) => Err(not_running()),
        }
    }
}

/// How the supervisor reaches a child.
enum Runtime {
    Worker(Arc<CellShared>),
    Supervisor(mpsc::UnboundedSender<SupMsg>),
}

impl Runtime {
    /// Hands `cmd` to the child; false when its task is gone.
    fn send(&self, cmd: Cmd) -> bool {
        match self {
            Runtime::Worker(cell) => {
                cell.push(cmd);
                true
            }
            Runtime::Supervisor(tx) => tx.send(SupMsg::Control(cmd)).is_ok(),
        }
    }

    /// Starts a fresh instance. A start failure is reported by the child that saw it; a child
    /// whose task is gone cannot, so that case is logged and counted here.
    async fn start(&self, path: &str, generation: u64, restart_count: u64) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Cmd::Start {
            generation,
            restart_count,
            reply,
        });
        let lost = if !sent {
            "child task is gone"
        } else {
            match rx.await {
                Ok(result) => return result,
                Err(_) => "child task ended without answering a start",
            }
        };
        tracing::error!(actor_path = path, reason = lost, "child cannot start");
        crate::metrics::internal_error("start_lost");
        Err(lost.to_owned())
    }

    /// Sends a stop or kill and waits for the child to answer.
    async fn ask(
        &self,
        path: &str,
        what: &'static str,
        make: impl FnOnce(oneshot::Sender<()>) -> Cmd,
    ) {
        let (reply, rx) = oneshot::channel();
        if !self.send(make(reply)) {
            tracing::warn!(
                actor_path = path,
                command = what,
                "command not delivered: the child task is gone"
            );
            crate::metrics::internal_error("command_lost");
            return;
        }
        if rx.await.is_err() {
            tracing::warn!(
                actor_path = path,
                command = what,
                "child task ended without answering"
            );
            crate::metrics::internal_error("no_answer");
        }
    }

    async fn stop(&self, path: &str) {
        self.ask(path, "stop", |reply| Cmd::Stop { reply }).await;
    }

    async fn kill(&self, path: &str) {
        self.ask(path, "kill", |reply| Cmd::Kill { reply }).await;
    }

    fn close(&self, path: &str) {
        if !self.send(Cmd::Close) {
            tracing::debug!(
                actor_path = path,
                "close not delivered: the child task already ended"
            );
        }
    }
}

struct Child {
    id: Arc<str>,
    info: Arc<ChildInfo>,
    kind: ChildKind,
    restart: Restart,
    shutdown: Shutdown,
    runtime: Runtime,
    running: bool,
    generation: u64,
    restarts: u64,
    limit: Option<Box<RestartWindow>>,
    started_at: Instant,
    streak: u32,
    /// The token of a restart waiting for its backoff delay (0: none; tokens start at 1).
    pending: u64,
}

struct Parent {
    events: mpsc::UnboundedSender<SupMsg>,
    key: u64,
}

/// The state of one supervisor, owned by its task.
pub(crate) struct Supervisor {
    path: String,
    label: String,
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    backoff: Option<Backoff>,
    rng: SmallRng,
    window: RestartWindow,
    children: BTreeMap<u64, Child>,
    ids: HashMap<Arc<str>, u64>,
    next_key: u64,
    rx: mpsc::UnboundedReceiver<SupMsg>,
    pub(crate) tx: mpsc::UnboundedSender<SupMsg>,
    journal: FailureJournal,
    parent: Option<Parent>,
    generation: u64,
    restart_count: u64,
    running: bool,
    closed: bool,
    next_token: u64,
    done: watch::Sender<Option<Result<(), SupervisorError>>>,
}

fn path_seed(path: &str) -> u64 {
    // FNV-1a: a fixed, platform-independent hash so the jitter sequence replays.
    path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Supervisor {
    fn build(
        spec: SupervisorSpec,
        path: String,
        label: String,
        journal: FailureJournal,
        parent: Option<Parent>,
    ) -> Self {
        let SupervisorSpec {
            strategy,
            intensity,
            period,
            backoff,
            seed,
            children,
            journal: _,
            tx,
            rx,
            done,
            info,
        } = spec;
        if info
            .set(RefInfo {
                path: path.clone(),
                journal: journal.clone(),
            })
            .is_err()
        {
            tracing::warn!(actor_path = %path, "supervisor handle already described another run");
            crate::metrics::internal_error("handle_reused");
        }
        let mut sup = Supervisor {
            rng: SmallRng::seed_from_u64(seed ^ path_seed(&path)),
            path,
            label,
            strategy,
            intensity,
            period,
            backoff,
            window: RestartWindow::new(intensity, period),
            children: BTreeMap::new(),
            ids: HashMap::new(),
            next_key: 0,
            rx,
            tx,
            journal,
            parent,
            generation: 0,
            restart_count: 0,
            running: false,
            closed: false,
            next_token: 1,
            done,
        };
        for child in children {
            sup.add_child(child);
        }
        sup
    }

    fn add_child(&mut self, spec: ChildSpec) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        let id: Arc<str> = Arc::from(spec.id.as_str());
        // The label is the id itself (one allocation) unless the spec shares another one (a
        // pool's id, shared by all its children).
        let label = match &spec.options.label {
            Some(label) => Arc::clone(label),
            None => Arc::clone(&id),
        };
        let path = format!("{}/{}", self.path, spec.id);
        let kind = spec.kind();
        let info = Arc::new(ChildInfo {
            path,
            label,
            journal: self.journal.clone(),
        });
        let runtime = match spec.start {
            StartSpec::Worker(parts) => Runtime::Worker(parts.spawn(
                Arc::clone(&info),
                CellEnv {
                    key,
                    events: self.tx.clone(),
                },
                spec.options.liveness,
            )),
            StartSpec::Supervisor(sub) => {
                let tx = sub.tx.clone();
                let nested = Supervisor::build(
                    *sub,
                    info.path.clone(),
                    info.label.to_string(),
                    self.journal.clone(),
                    Some(Parent {
                        events: self.tx.clone(),
                        key,
                    }),
                );
                actix_rt::spawn(nested.run());
                Runtime::Supervisor(tx)
            }
        };
        let limit = spec
            .options
            .limit
            .map(|l| Box::new(RestartWindow::new(l.intensity, l.period)));
        self.ids.insert(Arc::clone(&id), key);
        self.children.insert(
            key,
            Child {
                id,
                info,
                kind,
                restart: spec.options.restart,
                shutdown: spec.options.shutdown,
                runtime,
                running: false,
                generation: 0,
                restarts: 0,
                limit,
                started_at: Instant::now(),
                streak: 0,
                pending: 0,
            },
        );
        key
    }

    fn remove(&mut self, key: u64) {
        if let Some(child) = self.children.remove(&key) {
            self.ids.remove(&child.id);
            child.runtime.close(&child.info.path);
        }
    }

    fn finish(&mut self, result: Result<(), SupervisorError>) {
        self.closed = true;
        self.done.send_replace(Some(result));
    }

    pub(crate) async fn run(mut self) {
        while let Some(msg) = self.rx.recv().await {
            match msg {
                SupMsg::Exited {
                    key,
                    generation,
                    exit,
                } => self.on_exit(key, generation, exit).await,
                SupMsg::Control(Cmd::Start {
                    generation,
                    restart_count,
                    reply,
                }) => {
                    let result = self.start_all(generation, restart_count).await;
                    let failed = result.as_ref().err().cloned();
                    if reply.send(result).is_err() {
                        tracing::warn!(actor_path = %self.path, "start reply not delivered: the parent stopped waiting");
                        crate::metrics::internal_error("start_reply_lost");
                    }
                    if let (Some(reason), None) = (failed, &self.parent) {
                        self.close_all();
                        self.finish(Err(SupervisorError::StartFailed {
                            path: self.path.clone(),
                            reason,
                        }));
                    }
                }
                SupMsg::Control(Cmd::Stop { reply }) => {
                    self.stop_all().await;
                    answer(reply, &self.path);
                }
                SupMsg::Control(Cmd::Kill { reply }) => {
                    self.kill_all().await;
                    answer(reply, &self.path);
                }
                SupMsg::Control(Cmd::Close) => {
                    self.close_all();
                    self.finish(Ok(()));
                }
                SupMsg::RestartDue { key, token } => self.on_restart_due(key, token).await,
                SupMsg::Request(request) => self.on_request(request).await,
            }
            if self.closed {
                return;
            }
        }
    }

    async fn start_all(&mut self, generation: u64, restart_count: u64) -> Result<(), String> {
        self.generation = generation;
        self.restart_count = restart_count;
        self.window.clear();
        let keys: Vec<u64> = self.children.keys().copied().collect();
        let is_restart = restart_count > 0;
        for key in keys {
            if let Err(reason) = self.start_instance(key, is_restart).await {
                let id = self
                    .children
                    .get(&key)
                    .map_or_else(String::new, |c| c.id.to_string());
                self.stop_all().await;
                return Err(format!("child {id:?} failed to start: {reason}"));
            }
        }
        self.running = true;
        Ok(())
    }

    async fn start_instance(&mut self, key: u64, is_restart: bool) -> Result<(), String> {
        let Some(child) = self.children.get_mut(&key) else {
            return Ok(());
        };
        if child.running {
            return Ok(());
        }
        child.pending = 0;
        child.generation += 1;
        if is_restart {
            child.restarts += 1;
            metrics::counter!(ACTOR_RESTARTS_TOTAL, "actor" => child.info.label.to_string())
                .increment(1);
            tracing::info!(actor_path = %child.info.path, restart_count = child.restarts, "restarting child");
        }
        let result = child
            .runtime
            .start(&child.info.path, child.generation, child.restarts)
            .await;
        if result.is_ok() {
            child.running = true;
            child.started_at = Instant::now();
        }
        result
    }

    async fn shutdown_child(&mut self, key: u64) {
        let Some(child) = self.children.get_mut(&key) else {
            return;
        };
        child.pending = 0;
        if !child.running {
            return;
        }
        child.running = false;
        let path = child.info.path.as_str();
        match child.shutdown {
            Shutdown::Brutal => child.runtime.kill(path).await,
            Shutdown::Infinity => child.runtime.stop(path).await,
            Shutdown::Timeout(limit) => {
                if tokio::time::timeout(limit, child.runtime.stop(path))
                    .await
                    .is_err()
                {
                    report(
                        &self.journal,
                        Failure {
                            path,
                            actor: &child.info.label,
                            kind: FailureKind::ShutdownTimeout,
                            message: &format!("did not stop within {limit:?}; killed"),
                            restart_count: child.restarts,
                            context: None,
                        },
                    );
                    child.runtime.kill(path).await;
                }
            }
        }
    }

    /// Stops `keys` in the given order and removes the temporary ones.
    async fn stop_keys(&mut self, keys: Vec<u64>) {
        for key in keys {
            self.shutdown_child(key).await;
            if self
                .children
                .get(&key)
                .is_some_and(|c| c.restart == Restart::Temporary)
            {
                self.remove(key);
            }
        }
    }

    async fn stop_all(&mut self) {
        let keys: Vec<u64> = self.children.keys().rev().copied().collect();
        self.stop_keys(keys).await;
        self.running = false;
    }

    async fn kill_all(&mut self) {
        let keys: Vec<u64> = self.children.keys().rev().copied().collect();
        for key in keys {
            if let Some(child) = self.children.get_mut(&key) {
                child.pending = 0;
                if child.running {
                    child.running = false;
                    child.runtime.kill(&child.info.path).await;
                }
            }
        }
        self.running = false;
    }

    fn close_all(&mut self) {
        for (_, child) in std::mem::take(&mut self.children).into_iter().rev() {
            child.runtime.close(&child.info.path);
        }
        self.ids.clear();
        self.running = false;
    }

    async fn on_exit(&mut self, key: u64, generation: u64, exit: Exit) {
        let Some(child) = self.children.get_mut(&key) else {
            return;
        };
        if !child.running || child.generation != generation {
            tracing::debug!(actor_path = %child.info.path, "stale exit notice ignored");
            return;
        }
        child.running = false;
        let abnormal = matches!(exit, Exit::Failed(..));
        match &exit {
            Exit::Failed(FailureKind::Escalated, message) => report(
                &self.journal,
                Failure {
                    path: &child.info.path,
                    actor: &child.info.label,
                    kind: FailureKind::Escalated,
                    message,
                    restart_count: child.restarts,
                    context: None,
                },
            ),
            Exit::Failed(..) => {}
            Exit::Normal => {
                tracing::info!(actor_path = %child.info.path, "child exited normally");
            }
        }
        let restart = match child.restart {
            Restart::Permanent => true,
            Restart::Transient => abnormal,
            Restart::Temporary => false,
        };
        if !restart {
            if child.restart == Restart::Temporary {
                self.remove(key);
            }
            return;
        }
        self.restart_from(key).await;
    }

    async fn restart_from(&mut self, first: u64) {
        let mut key = first;
        loop {
            let now = Instant::now();
            let Some(child) = self.children.get_mut(&key) else {
                return;
            };
            if let Some(limit) = child.limit.as_mut() {
                if !limit.record(now) {
                    let message = format!(
                        "more than {} restarts in {:?}; disabled",
                        limit.intensity(),
                        limit.period()
                    );
                    report(
                        &self.journal,
                        Failure {
                            path: &child.info.path,
                            actor: &child.info.label,
                            kind: FailureKind::Disabled,
                            message: &message,
                            restart_count: child.restarts,
                            context: None,
                        },
                    );
                    self.remove(key);
                    return;
                }
            }
            if now.duration_since(child.started_at) > self.period {
                child.streak = 0;
            }
            child.streak = child.streak.saturating_add(1);
            let streak = child.streak;
            if !self.window.record(now) {
                self.escalate().await;
                return;
            }
            if let Some(backoff) = self.backoff {
                let delay = self.backoff_delay(backoff, streak);
                if !delay.is_zero() {
                    self.delay_restart(key, delay);
                    return;
                }
            }
            match self.restart_by_strategy(key).await {
                None => return,
                Some(failed_key) => key = failed_key,
            }
        }
    }

    /// Schedules the restart of `key` after `delay`, keeping the supervisor responsive meanwhile.
    fn delay_restart(&mut self, key: u64, delay: Duration) {
        let token = self.next_token;
        self.next_token += 1;
        let Some(child) = self.children.get_mut(&key) else {
            return;
        };
        child.pending = token;
        tracing::info!(actor_path = %child.info.path, delay_ms = delay.as_millis() as u64, "restart delayed by backoff");
        let tx = self.tx.clone();
        let path = child.info.path.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(delay).await;
            if tx.send(SupMsg::RestartDue { key, token }).is_err() {
                tracing::debug!(actor_path = %path, "delayed restart dropped: the supervisor ended");
            }
        });
    }

    async fn on_restart_due(&mut self, key: u64, token: u64) {
        let due = self
            .children
            .get(&key)
            .is_some_and(|c| c.pending == token && !c.running);
        if !due {
            return;
        }
        if let Some(failed_key) = self.restart_by_strategy(key).await {
            Box::pin(self.restart_from(failed_key)).await;
        }
    }

    /// Restarts `key` (and siblings, per the strategy); returns a child that failed to start.
    async fn restart_by_strategy(&mut self, key: u64) -> Option<u64> {
        match self.strategy {
            Strategy::OneForOne => self.start_instance(key, true).await.err().map(|_| key),
            Strategy::OneForAll => {
                let others: Vec<u64> = self
                    .children
                    .keys()
                    .rev()
                    .copied()
                    .filter(|k| *k != key)
                    .collect();
                self.stop_keys(others).await;
                let all: Vec<u64> = self.children.keys().copied().collect();
                self.start_keys(all).await
            }
            Strategy::RestForOne => {
                let after: Vec<u64> = self
                    .children
                    .range(key + 1..)
                    .rev()
                    .map(|(k, _)| *k)
                    .collect();
                self.stop_keys(after).await;
                let from: Vec<u64> = self.children.range(key..).map(|(k, _)| *k).collect();
                self.start_keys(from).await
            }
        }
    }

    /// Restarts the stopped children among `keys`, in order; returns the first that failed.
    async fn start_keys(&mut self, keys: Vec<u64>) -> Option<u64> {
        for key in keys {
            if self.start_instance(key, true).await.is_err() {
                return Some(key);
            }
        }
        None
    }

    fn backoff_delay(&mut self, backoff: Backoff, streak: u32) -> Duration {
        let exp = streak.saturating_sub(1).min(30);
        let base = backoff.initial.saturating_mul(1u32 << exp).min(backoff.max);
        if backoff.jitter <= 0.0 {
            return base;
        }
        let factor = 1.0 + backoff.jitter * (self.rng.random::<f64>() * 2.0 - 1.0);
        base.mul_f64(factor.max(0.0))
    }

    async fn escalate(&mut self) {
        let message = format!(
            "more than {} restarts in {:?}; stopping all children",
            self.intensity, self.period
        );
        report(
            &self.journal,
            Failure {
                path: &self.path,
                actor: &self.label,
                kind: FailureKind::RestartLimit,
                message: &message,
                restart_count: self.restart_count,
                context: None,
            },
        );
        self.stop_all().await;
        match &self.parent {
            Some(parent) => {
                let notice = SupMsg::Exited {
                    key: parent.key,
                    generation: self.generation,
                    exit: Exit::Failed(
                        FailureKind::Escalated,
                        format!("{} reached its restart limit: {message}", self.path),
                    ),
                };
                if parent.events.send(notice).is_err() {
                    tracing::error!(actor_path = %self.path, "escalation not delivered: the parent supervisor is gone");
                    crate::metrics::internal_error("escalation_lost");
                }
            }
            None => {
                self.close_all();
                self.finish(Err(SupervisorError::RestartLimit {
                    supervisor: self.path.clone(),
                    intensity: self.intensity,
                    period: self.period,
                }));
            }
        }
    }

    fn lookup(&self, id: &str) -> Result<u64, SupervisorError> {
        self.ids
            .get(id)
            .copied()
            .ok_or_else(|| SupervisorError::NoSuchChild {
                supervisor: self.path.clone(),
                id: id.to_owned(),
            })
    }

    async fn on_request(&mut self, request: Request) {
        match request {
            Request::StartChild { spec, reply } => {
                let result = self.start_child(spec).await;
                reply_to(reply, result, &self.path);
            }
            Request::TerminateChild { id, reply } => {
                let result = match self.lookup(&id) {
                    Ok(key) => {
                        self.stop_keys(vec![key]).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                reply_to(reply, result, &self.path);
            }
            Request::RestartChild { id, reply } => {
                let result = match self.lookup(&id) {
                    Ok(key) if self.children.get(&key).is_some_and(|c| c.running) => {
                        Err(SupervisorError::AlreadyRunning {
                            supervisor: self.path.clone(),
                            id,
                        })
                    }
                    Ok(key) => self.start_instance(key, true).await.map_err(|reason| {
                        SupervisorError::StartFailed {
                            path: format!("{}/{id}", self.path),
                            reason,
                        }
                    }),
                    Err(e) => Err(e),
                };
                reply_to(reply, result, &self.path);
            }
            Request::DeleteChild { id, reply } => {
                let result = match self.lookup(&id) {
                    Ok(key) if self.children.get(&key).is_some_and(|c| c.running) => {
                        Err(SupervisorError::ChildRunning {
                            supervisor: self.path.clone(),
                            id,
                        })
                    }
                    Ok(key) => {
                        self.remove(key);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                reply_to(reply, result, &self.path);
            }
            Request::WhichChildren { reply } => {
                let list = self
                    .children
                    .values()
                    .map(|c| ChildStatus {
                        id: c.id.to_string(),
                        kind: c.kind,
                        restart: c.restart,
                        running: c.running,
                        restarts: c.restarts,
                    })
                    .collect();
                reply_to(reply, list, &self.path);
            }
            Request::CountChildren { reply } => {
                let mut counts = ChildCounts::default();
                for c in self.children.values() {
                    counts.specs += 1;
                    counts.active += usize::from(c.running);
                    match c.kind {
                        ChildKind::Worker => counts.workers += 1,
                        ChildKind::Supervisor => counts.supervisors += 1,
                    }
                }
                reply_to(reply, counts, &self.path);
            }
            Request::Shutdown { reply } => {
                if self.parent.is_some() {
                    let err = SupervisorError::NotRoot {
                        supervisor: self.path.clone(),
                    };
                    reply_to(reply, Err(err), &self.path);
                    return;
                }
                self.stop_all().await;
                self.close_all();
                self.finish(Ok(()));
                reply_to(reply, Ok(()), &self.path);
            }
        }
    }

    async fn start_child(&mut self, spec: ChildSpec) -> Result<(), SupervisorError> {
        spec.validate("child")?;
        if self.ids.contains_key(spec.id.as_str()) {
            return Err(SupervisorError::DuplicateChild {
                supervisor: self.path.clone(),
                id: spec.id,
            });
        }
        let id = spec.id.clone();
        let key = self.add_child(spec);
        if !self.running {
            return Ok(());
        }
        match self.start_instance(key, false).await {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.remove(key);
                Err(SupervisorError::StartFailed {
                    path: format!("{}/{id}", self.path),
                    reason,
                })
            }
        }
    }
}

fn answer(reply: oneshot::Sender<()>, path: &str) {
    if reply.send(()).is_err() {
        tracing::debug!(
            actor_path = path,
            "reply not delivered: the parent stopped waiting"
        );
    }
}

fn reply_to<T>(reply: oneshot::Sender<T>, value: T, path: &str) {
    if reply.send(value).is_err() {
        tracing::debug!(
            actor_path = path,
            "reply not delivered: the caller stopped waiting"
        );
    }
}
