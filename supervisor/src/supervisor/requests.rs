//! Requests from a [`SupervisorRef`](super::SupervisorRef): adding, terminating, restarting and
//! deleting children at run time, which_children and count_children, and a root's shutdown.

use tokio::sync::oneshot;

use super::{ChildCounts, ChildStatus, Supervisor};
use crate::error::SupervisorError;
use crate::spec::{ChildKind, ChildSpec};

/// A request from a [`SupervisorRef`](super::SupervisorRef), answered on its `reply`.
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

impl Supervisor {
    fn lookup(&self, id: &str) -> Result<u64, SupervisorError> {
        self.ids
            .get(id)
            .copied()
            .ok_or_else(|| SupervisorError::NoSuchChild {
                supervisor: self.path.clone(),
                id: id.to_owned(),
            })
    }

    pub(super) async fn on_request(&mut self, request: Request) {
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

fn reply_to<T>(reply: oneshot::Sender<T>, value: T, path: &str) {
    if reply.send(value).is_err() {
        tracing::debug!(
            actor_path = path,
            "reply not delivered: the caller stopped waiting"
        );
    }
}
