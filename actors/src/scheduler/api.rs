//! What the API asks of the scheduler: submit, read, list, cancel, the node's view, drain,
//! readiness, and closing the store at shutdown.

use super::*;

/// API: accept validated specs. Answers with their ids once the submission is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<JobId>, Error>")]
pub struct Submit {
    /// The specs, already validated at the edge.
    pub specs: Vec<JobSpec>,
}

impl Handler<Submit> for Scheduler {
    type Result = ResponseFuture<Result<Vec<JobId>, Error>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Ctx) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let refused = match self.core() {
            Err(e) => Some(e),
            Ok(core) if core.draining => Some(Error::Unavailable {
                reason: "the node is shutting down and accepts no new jobs".to_owned(),
            }),
            Ok(core) => core
                .unwritable
                .clone()
                .or_else(|| core.store.as_ref().and_then(Store::unwritable_reason))
                .map(|reason| Error::StoreUnwritable { reason }),
        };
        if let Some(error) = refused {
            let why = if matches!(error, Error::StoreUnwritable { .. }) {
                "unwritable"
            } else {
                "unavailable"
            };
            refuse("submit", why);
            tracing::debug!(%error, "submission refused");
            return Box::pin(async move { Err(error) });
        }
        let count = msg.specs.len() as u64;
        let shapes: Vec<(i16, crate::job::Resources, u32)> = msg
            .specs
            .iter()
            .map(|s| (s.priority, s.resources, s.gang.max(1)))
            .collect();
        let submitted_ms = now_ms();
        // Ids are numbered when the record reaches the store (see `number`), so submissions
        // that wait for journal room keep consecutive ids in journal order.
        let record = Record::Submitted {
            jobs: msg
                .specs
                .into_iter()
                .map(|spec| Submission::new(JobId(0), spec, submitted_ms))
                .collect(),
        };
        self.commit(ctx, record, move |act, ctx, result| {
            let durable = match result {
                Ok(d) => d,
                Err(error) => {
                    refuse("submit", "store");
                    if tx.send(Err(error)).is_err() {
                        tracing::debug!("submitter left before its refusal");
                    }
                    return;
                }
            };
            let next = act
                .core
                .as_ref()
                .and_then(|c| c.store.as_ref())
                .map_or(0, |s| s.table().next_id().0);
            let first = next.saturating_sub(count);
            let ids: Vec<JobId> = (first..next).map(JobId).collect();
            if let Some(core) = act.core.as_mut() {
                let now = Instant::now();
                for (id, (priority, resources, gang)) in ids.iter().zip(shapes) {
                    core.placer.enqueue(QueuedJob {
                        job: *id,
                        priority,
                        resources,
                        gang,
                        enqueued_at: now,
                    });
                }
            }
            act.after_durable(ctx, durable, move |act, _| {
                metrics::counter!(m::JOBS_SUBMITTED).increment(ids.len() as u64);
                for id in &ids {
                    act.emit(*id, JobState::Queued, 1);
                }
                if tx.send(Ok(ids)).is_err() {
                    tracing::debug!("submitter left before its jobs were durable");
                }
            });
            act.schedule(ctx);
        });
        Box::pin(async move {
            rx.await.map_err(|_| Error::Mailbox {
                actor: "scheduler",
                reason: "the scheduler restarted before the submission was durable; it may or may not have been accepted".to_owned(),
            })?
        })
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Its attempt (1 for the first run).
    pub attempt: u32,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    /// Why it has not started yet, while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// Where its tasks run, while leased or running.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    /// How it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why its last attempt was lost, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_loss: Option<String>,
    /// How its last failed attempt ended, when a failure was retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Outcome>,
    /// Attempts lost so far (each run again per `requeue` and `max_requeues`).
    #[serde(default)]
    pub requeues: u32,
    /// Attempts failed so far and run again (per `max_retries`).
    #[serde(default)]
    pub failures: u32,
    /// When it ended, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// The spec as submitted.
    pub spec: JobSpec,
    /// The node each task of its latest attempt runs or ran on, by task (where its logs
    /// are); empty before it was placed, and for attempts recorded before nodes were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl Scheduler {
    pub(super) fn view(&self, job: JobId) -> Option<JobView> {
        let core = self.core.as_ref()?;
        let entry = core.store.as_ref()?.table().get(job)?;
        Some(JobView {
            id: job,
            name: entry.spec.name.clone(),
            state: entry.status.state,
            attempt: entry.status.attempt,
            submitted_ms: entry.submitted_ms,
            waiting: if entry.status.state == JobState::Queued {
                let placer = match core.delayed_at.get(&job) {
                    Some(_) => Some(Waiting::Retry {
                        not_before_ms: entry.retry_at_ms,
                        failures: entry.failures,
                    }),
                    None => core.placer.waiting(job),
                };
                match (placer, &self.config.gpus_absent) {
                    (Some(Waiting::Unplaceable { reason }), Some(absent))
                        if entry.spec.resources.gpus > 0 =>
                    {
                        Some(Waiting::Unplaceable {
                            reason: format!("{reason}; this node has no GPUs: {absent}"),
                        })
                    }
                    (waiting, _) => waiting,
                }
            } else {
                None
            },
            grants: entry.grants.clone(),
            outcome: entry.outcome.clone(),
            last_loss: entry.last_loss.clone(),
            last_failure: entry.last_failure.as_deref().cloned(),
            requeues: entry.requeues,
            failures: entry.failures,
            ended_ms: (entry.status.state.is_terminal() && entry.ended_ms > 0)
                .then_some(entry.ended_ms),
            spec: entry.spec.clone(),
            nodes: entry.nodes.clone(),
        })
    }

    /// Why a job is not in the table: pruned by retention, or never known.
    fn missing(&self, job: JobId) -> Error {
        let pruned = self
            .core
            .as_ref()
            .and_then(|c| c.store.as_ref())
            .is_some_and(|s| s.table().was_pruned(job));
        if pruned {
            Error::Pruned { job }
        } else {
            Error::UnknownJob { job }
        }
    }
}

/// API: one job.
#[derive(Debug, Message)]
#[rtype(result = "Result<JobView, Error>")]
pub struct GetJob(pub JobId);

impl Handler<GetJob> for Scheduler {
    type Result = Result<JobView, Error>;

    fn handle(&mut self, msg: GetJob, _: &mut Ctx) -> Self::Result {
        self.core()?;
        self.view(msg.0).ok_or_else(|| self.missing(msg.0))
    }
}

/// API: a page of jobs in id order, optionally in one state, after `after`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<JobView>, Error>")]
pub struct ListJobs {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs with a larger id.
    pub after: Option<JobId>,
    /// At most this many.
    pub limit: usize,
}

impl Handler<ListJobs> for Scheduler {
    type Result = Result<Vec<JobView>, Error>;

    fn handle(&mut self, msg: ListJobs, _: &mut Ctx) -> Self::Result {
        let core = self.core()?;
        let Some(store) = core.store.as_ref() else {
            return Err(Error::Unavailable {
                reason: "the journal is busy; retry".to_owned(),
            });
        };
        let ids: Vec<JobId> = store
            .table()
            .page(msg.state, msg.after, msg.limit)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        Ok(ids.into_iter().filter_map(|id| self.view(id)).collect())
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled (durably).
    Cancelled,
    /// The job is running; its tasks are being stopped and it ends as cancelled.
    Cancelling,
}

/// API: cancel a job.
#[derive(Debug, Message)]
#[rtype(result = "Result<CancelOutcome, Error>")]
pub struct CancelJob(pub JobId);

impl Handler<CancelJob> for Scheduler {
    type Result = ResponseFuture<Result<CancelOutcome, Error>>;

    fn handle(&mut self, msg: CancelJob, ctx: &mut Ctx) -> Self::Result {
        let job = msg.0;
        let state = match self.core() {
            Err(e) => return Box::pin(async move { Err(e) }),
            Ok(core) => core
                .store
                .as_ref()
                .and_then(|s| s.table().get(job))
                .map(|e| (e.status.state, e.status.attempt)),
        };
        let unwritable = self.core.as_ref().and_then(|c| c.unwritable.clone());
        let result = match (state, unwritable) {
            (None, _) => Err(self.missing(job)),
            (Some((state, _)), _) if state.is_terminal() => Err(Error::Conflict {
                job,
                reason: format!("it has already ended ({state})"),
            }),
            // Nothing could record the cancel: refused now rather than held until the disk
            // takes writes again.
            (Some((JobState::Queued, _)), Some(reason)) => {
                refuse("cancel", "unwritable");
                Err(Error::StoreUnwritable { reason })
            }
            (Some((JobState::Queued, attempt)), None) => {
                let (tx, rx) = oneshot::channel();
                if let Some(core) = self.core.as_mut() {
                    core.placer.cancel(job);
                }
                self.undelay(job);
                self.commit(
                    ctx,
                    Record::Ended {
                        job,
                        attempt,
                        state: JobState::Cancelled,
                        outcome: Outcome::default(),
                        ended_ms: now_ms(),
                    },
                    move |act, ctx, result| {
                        let reply = match &result {
                            Ok(_) => Ok(()),
                            Err(e) => Err(e.to_string()),
                        };
                        if let Ok(durable) = result {
                            metrics::counter!(m::JOBS_FINISHED, "state" => "cancelled").increment(1);
                            act.after_durable(ctx, durable, move |act, _| {
                                act.emit(job, JobState::Cancelled, attempt);
                                if tx.send(Ok(CancelOutcome::Cancelled)).is_err() {
                                    tracing::debug!(job = %job, "canceller left before the cancel was durable");
                                }
                            });
                        } else if let Err(reason) = reply {
                            tracing::error!(job = %job, %reason, "could not record a cancel");
                            if tx.send(Err(Error::Rejected { reason })).is_err() {
                                tracing::debug!(job = %job, "canceller left");
                            }
                        }
                    },
                );
                return Box::pin(async move {
                    rx.await.map_err(|_| Error::Mailbox {
                        actor: "scheduler",
                        reason: "the scheduler restarted before the cancel was durable".to_owned(),
                    })?
                });
            }
            (Some(_), _) => {
                if let Some(active) = self.core.as_mut().and_then(|c| c.active.get_mut(&job)) {
                    active.cancel = true;
                }
                tracing::info!(job = %job, "cancelling a running job: its tasks are being stopped");
                self.kill_tasks(job, KillReason::Cancelled, None);
                Ok(CancelOutcome::Cancelling)
            }
        };
        Box::pin(async move { result })
    }
}

/// A registered worker as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The worker's id.
    pub worker: WorkerId,
    /// Its node's name.
    pub node: String,
    /// Its name on that node.
    pub name: String,
    /// Its node's datacenter.
    #[serde(default)]
    pub datacenter: String,
    /// Its node's labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// What it has free.
    #[serde(default)]
    pub free: crate::sched::WorkerFree,
    /// When it last renewed its leases (its heartbeat to the scheduler), in milliseconds since
    /// the Unix epoch.
    #[serde(default)]
    pub renewed_ms: u64,
    /// `alive`, `suspect` (no renewal for half a lease: it may be dead or cut off, which the
    /// health monitor decides) or `draining`.
    #[serde(default)]
    pub state: String,
    /// What it offers.
    pub capacity: WorkerCapacity,
    /// When it registered, in milliseconds since the Unix epoch.
    pub registered_ms: u64,
    /// Leases it holds.
    pub leases: usize,
    /// Whether an operator drained its node: it takes no new work.
    #[serde(default)]
    pub draining: bool,
    /// Where it connects from (an agent's address); `None` for the scheduler's own worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A worker that died, as `cadre nodes` shows it until it registers again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DepartedView {
    /// The id it had.
    pub worker: WorkerId,
    /// Its node's name.
    pub node: String,
    /// Its name on that node.
    pub name: String,
    /// Its node's datacenter.
    pub datacenter: String,
    /// Where it connected from; `None` for the scheduler's own worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// When it had registered, in milliseconds since the Unix epoch.
    pub registered_ms: u64,
    /// When it was declared dead, in milliseconds since the Unix epoch.
    pub died_ms: u64,
    /// Why.
    pub reason: String,
}

/// The scheduler's view of the node: workers, totals and counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// Registered workers.
    pub workers: Vec<NodeView>,
    /// Capacity over all workers.
    pub capacity: CapacitySummary,
    /// Jobs waiting to be placed.
    pub queued: usize,
    /// Jobs leased or running.
    pub running: usize,
    /// Jobs in the table.
    pub jobs: usize,
    /// Whether the node is draining (shutting down).
    pub draining: bool,
    /// Why this node has no GPUs, when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_absent: Option<String>,
    /// Why the job store takes no writes, while it does not (a full disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_unwritable: Option<String>,
    /// Ended jobs kept (bounded by the retention policy).
    #[serde(default)]
    pub ended: usize,
    /// The latest workers that died (at most 64, newest last), until they register again.
    #[serde(default)]
    pub departed: Vec<DepartedView>,
}

/// API: the node's workers and totals.
#[derive(Debug, Message)]
#[rtype(result = "Result<ClusterView, Error>")]
pub struct Nodes;

impl Handler<Nodes> for Scheduler {
    type Result = Result<ClusterView, Error>;

    fn handle(&mut self, _: Nodes, _: &mut Ctx) -> Self::Result {
        let core = self.core.as_ref().ok_or_else(|| Error::Unavailable {
            reason: "the scheduler is still opening its journal".to_owned(),
        })?;
        let (now, wall_ms) = (Instant::now(), now_ms());
        let suspect_after = self.config.lease_ttl / 2;
        Ok(ClusterView {
            workers: core
                .workers
                .iter()
                .map(|(id, w)| NodeView {
                    worker: *id,
                    node: w.identity.node.clone(),
                    name: w.identity.name.clone(),
                    datacenter: w.datacenter.clone(),
                    labels: w.labels.clone(),
                    free: core
                        .placer
                        .capacity()
                        .free(*id)
                        .unwrap_or_else(crate::sched::WorkerFree::default),
                    renewed_ms: wall_ms.saturating_sub(
                        now.saturating_duration_since(w.renewed_at).as_millis() as u64,
                    ),
                    state: if core.drained_nodes.contains(&w.identity.node) {
                        "draining"
                    } else if now.saturating_duration_since(w.renewed_at) > suspect_after {
                        "suspect"
                    } else {
                        "alive"
                    }
                    .to_owned(),
                    capacity: w.capacity.clone(),
                    registered_ms: w.registered_ms,
                    leases: core.leases.leases_of_worker(*id).len(),
                    draining: core.drained_nodes.contains(&w.identity.node),
                    address: w.address.clone(),
                })
                .collect(),
            capacity: core.placer.capacity().summary(),
            queued: core.placer.waiting_len(),
            running: core.active.len(),
            jobs: core.store.as_ref().map_or(0, |s| s.table().len()),
            draining: core.draining,
            gpus_absent: self.config.gpus_absent.clone(),
            store_unwritable: core.unwritable.clone(),
            ended: core.store.as_ref().map_or(0, |s| s.table().ended_len()),
            departed: core.departed.iter().cloned().collect(),
        })
    }
}

/// An operator drains a node (`cadre drain NODE`, Nomad's `node drain`, Slurm's `DRAIN`):
/// its workers take no new work and their running jobs finish; or undrains it. The answer is
/// the node's workers; `UnknownNode` when none is registered (draining nothing is a mistake an
/// operator wants to hear about).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<WorkerId>, Error>")]
pub struct DrainNode {
    /// The node's name.
    pub node: String,
    /// Drain (`true`) or take work again (`false`).
    pub drain: bool,
}

impl Handler<DrainNode> for Scheduler {
    type Result = ResponseFuture<Result<Vec<WorkerId>, Error>>;

    /// Journals the drain (a restarted scheduler keeps it), then applies it and answers.
    fn handle(&mut self, msg: DrainNode, ctx: &mut Ctx) -> Self::Result {
        let known = match self.core() {
            Ok(core) => core.workers.values().any(|w| w.identity.node == msg.node),
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        if !known {
            refuse("drain", "unknown_node");
            return Box::pin(async move { Err(Error::UnknownNode { node: msg.node }) });
        }
        let (tx, rx) = oneshot::channel();
        let record = Record::Drained {
            node: msg.node.clone(),
            drain: msg.drain,
        };
        self.commit(ctx, record, move |act, ctx, result| match result {
            Ok(durable) => act.after_durable(ctx, durable, move |act, ctx| {
                let applied = act.apply_drain(ctx, &msg.node, msg.drain);
                if tx.send(applied).is_err() {
                    tracing::debug!(node = %msg.node, "the drain's asker left before its answer");
                }
            }),
            Err(error) => {
                tracing::error!(node = %msg.node, drain = msg.drain, %error,
                    "the drain could not be recorded; nothing changed");
                refuse("drain", "journal");
                if tx.send(Err(error)).is_err() {
                    tracing::debug!(node = %msg.node, "the drain's asker left before its answer");
                }
            }
        });
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Error::Unavailable {
                    reason: "the scheduler stopped before the drain was recorded".to_owned(),
                })
            })
        })
    }
}

impl Scheduler {
    /// Applies a journaled drain to the node's workers (those registered now; one that
    /// registers later finds its node in the set).
    fn apply_drain(
        &mut self,
        ctx: &mut Ctx,
        node: &str,
        drain: bool,
    ) -> Result<Vec<WorkerId>, Error> {
        let core = self.core()?;
        let workers: Vec<WorkerId> = core
            .workers
            .iter()
            .filter(|(_, w)| w.identity.node == node)
            .map(|(id, _)| *id)
            .collect();
        for worker in &workers {
            core.placer.set_accepting(*worker, !drain)?;
        }
        let running: usize = workers
            .iter()
            .map(|w| core.leases.leases_of_worker(*w).len())
            .sum();
        if drain {
            core.drained_nodes.insert(node.to_owned());
            tracing::info!(
                node,
                workers = workers.len(),
                running,
                "node drained: no new work; its running jobs finish"
            );
        } else {
            core.drained_nodes.remove(node);
            tracing::info!(node, workers = workers.len(), "node takes work again");
            self.schedule(ctx);
        }
        Ok(workers)
    }
}

/// Shutdown: accept and place nothing new; answers once no job holds a lease (the caller
/// bounds the wait with its grace period).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Drain;

impl Handler<Drain> for Scheduler {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: Drain, _: &mut Ctx) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        match self.core() {
            Err(e) => return Box::pin(async move { Err(e) }),
            Ok(core) => {
                core.draining = true;
                core.drained.push(tx);
                tracing::info!(
                    running = core.active.len(),
                    queued = core.placer.waiting_len(),
                    "draining: no new jobs are accepted or started"
                );
            }
        }
        self.wake_drained();
        Box::pin(async move {
            rx.await.map_err(|_| Error::Mailbox {
                actor: "scheduler",
                reason: "the scheduler restarted while draining".to_owned(),
            })
        })
    }
}

/// Readiness: whether the node can run what it accepts now: its journal is open and takes
/// writes, it is not draining, and a worker is registered. `Err` says why not.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct Ready;

impl Handler<Ready> for Scheduler {
    type Result = Result<(), String>;

    fn handle(&mut self, _: Ready, _: &mut Ctx) -> Self::Result {
        let Some(core) = self.core.as_ref() else {
            return Err("the scheduler is opening its journal".to_owned());
        };
        if core.draining {
            return Err("the node is draining (shutting down)".to_owned());
        }
        if let Some(why) = &core.unwritable {
            return Err(format!("the job store is read-only: {why}"));
        }
        if core.workers.is_empty() {
            return Err("no worker is registered: jobs would wait".to_owned());
        }
        Ok(())
    }
}

/// Closes the store (flushing the journal) once the node has drained; the tree stops after.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseStore;

impl Handler<CloseStore> for Scheduler {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: CloseStore, _: &mut Ctx) -> Self::Result {
        let store = self.core.as_mut().and_then(|c| {
            c.closing = true;
            c.store.take()
        });
        Box::pin(async move {
            if let Some(store) = store {
                store.close().await;
            }
        })
    }
}
