//! The public handle to a running supervisor ([`SupervisorRef`]: dynamic children,
//! introspection, stop, waiting for the end), what it reports about children, and the start of a
//! root supervisor ([`SupervisorSpec::start`]).

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot, watch};

use super::{Request, SupMsg, Supervisor};
use crate::cell::Cmd;
use crate::error::SupervisorError;
use crate::failure::FailureJournal;
use crate::spec::{ChildKind, ChildSpec, Restart, SupervisorSpec};

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
