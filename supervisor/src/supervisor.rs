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
//!
//! The roles are split by file: this one holds the messages, the state and the loop that handles
//! them; `handle.rs` the public handle ([`SupervisorRef`]) and the root's start; `runtime.rs` how
//! the supervisor reaches a child (a worker's cell or a nested supervisor's task);
//! `lifecycle.rs` the ordered start and reverse-ordered stop; `restart.rs` exits, restart
//! strategies, intensity, backoff and escalation; `requests.rs` dynamic children and
//! introspection.

mod handle;
mod lifecycle;
mod requests;
mod restart;
mod runtime;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::cell::{CellEnv, Cmd};
use crate::context::ChildInfo;
use crate::error::SupervisorError;
use crate::failure::{FailureJournal, FailureKind};
use crate::intensity::RestartWindow;
use crate::spec::{
    Backoff, ChildKind, ChildSpec, Restart, Shutdown, StartSpec, Strategy, SupervisorSpec,
};

pub(crate) use handle::RefInfo;
pub use handle::{ChildCounts, ChildStatus, SupervisorRef};
pub(crate) use requests::Request;
use runtime::Runtime;

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
}

fn answer(reply: oneshot::Sender<()>, path: &str) {
    if reply.send(()).is_err() {
        tracing::debug!(
            actor_path = path,
            "reply not delivered: the parent stopped waiting"
        );
    }
}
