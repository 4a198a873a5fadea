//! How attempts are lost: lease expiry (its timer and the overdue leases a message finds),
//! a lost attempt requeued or failed, and a worker's death, with the rule that a silent
//! worker's jobs wait for their leases to run out before they are placed again.

use super::*;

impl Scheduler {
    /// Re-arms the lease expiry timer for the earliest deadline.
    pub(super) fn arm_expiry(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(next) = core.leases.next_expiry() else {
            if let Some((_, handle)) = core.expiry.take() {
                ctx.cancel_future(handle);
            }
            return;
        };
        if let Some((at, handle)) = core.expiry {
            if at <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = next.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |act, ctx| {
            if let Some(core) = act.core.as_mut() {
                core.expiry = None;
            }
            act.expire(ctx);
        });
        core.expiry = Some((next, handle));
    }

    /// Expires leases past their deadline now, before a worker's message is checked against
    /// them (the timer may not have fired yet): a message that comes too late is refused.
    pub(super) fn reap_overdue(&mut self, ctx: &mut Ctx) {
        let overdue = self
            .core
            .as_ref()
            .and_then(|c| c.leases.next_expiry())
            .is_some_and(|at| at <= Instant::now());
        if overdue {
            self.expire(ctx);
        }
    }

    pub(super) fn expire(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let expired = core.leases.expire_due(Instant::now());
        let mut jobs: Vec<JobId> = expired.iter().map(|l| l.job).collect();
        jobs.dedup();
        for lease in &expired {
            tracing::warn!(job = %lease.job, worker = %lease.worker, lease = %lease.token,
                attempt = lease.attempt, "lease expired unrenewed: the attempt is lost");
            if let Some(callbacks) = &self.config.callbacks {
                callbacks.emit(NodeEvent::LeaseExpired {
                    job: lease.job,
                    worker: lease.worker,
                    token: lease.token,
                });
            }
        }
        for job in jobs {
            self.lose(ctx, job, "its lease expired unrenewed".to_owned(), None);
        }
        self.arm_expiry(ctx);
    }

    /// The attempt of `job` is lost: its other tasks are told to stop, its leases and
    /// reservation go, and it is queued again or failed (per its retries), durably.
    /// The attempt holding `job`'s leases is lost: recorded, then the job queued again (not
    /// before `not_before`, when given) or failed.
    pub(super) fn lose(
        &mut self,
        ctx: &mut Ctx,
        job: JobId,
        reason: String,
        not_before: Option<Instant>,
    ) {
        self.kill_tasks(job, KillReason::LeaseLost, None);
        let Some(active) = self.take_active(job) else {
            return;
        };
        let attempt = active.attempt;
        let cancel = active.cancel;
        if active.watched {
            self.unwatch(active.tasks.iter().map(|(_, t)| *t));
        }
        if cancel {
            // The user asked for the job to end: it ends cancelled, whatever its retries (its
            // task is gone: the worker confirmed it, fenced itself, or died).
            tracing::warn!(job = %job, attempt, %reason,
                "cancelled job's attempt ended without its worker's confirmation");
            self.commit(
                ctx,
                Record::Ended {
                    job,
                    attempt,
                    state: JobState::Cancelled,
                    outcome: Outcome {
                        error: Some(format!(
                            "cancelled; its task was not confirmed stopped: {reason}"
                        )),
                        ..Outcome::default()
                    },
                    ended_ms: now_ms(),
                },
                move |act, ctx, result| {
                    act.finished_record(ctx, job, attempt, JobState::Cancelled, result);
                    act.schedule(ctx);
                },
            );
            return;
        }
        metrics::counter!(m::JOBS_LOST).increment(1);
        tracing::warn!(job = %job, attempt, %reason, "attempt lost");
        self.commit(
            ctx,
            Record::Lost {
                job,
                attempt,
                reason,
                at_ms: now_ms(),
            },
            move |act, ctx, result| {
                let durable = match result {
                    Ok(d) => d,
                    Err(error) => {
                        tracing::error!(job = %job, attempt, %error, "could not record a lost attempt");
                        return;
                    }
                };
                let state = act
                    .core
                    .as_ref()
                    .and_then(|c| c.store.as_ref())
                    .and_then(|s| s.table().get(job))
                    .map(|e| (e.status.state, e.status.attempt, e.spec.priority, e.spec.resources, e.spec.gang));
                act.after_durable(ctx, durable, move |act, _| {
                    if let Some((state, attempt, ..)) = state {
                        act.emit(job, state, attempt);
                    }
                });
                match state {
                    Some((JobState::Queued, _, priority, resources, gang)) => {
                        let now = Instant::now();
                        let q = QueuedJob {
                            job,
                            priority,
                            resources,
                            gang: gang.max(1),
                            enqueued_at: now,
                        };
                        match not_before.filter(|at| *at > now) {
                            // Its old attempt may still run until then (see `worker_lost`).
                            Some(at) => act.delay(ctx, q, at),
                            None => {
                                if let Some(core) = act.core.as_mut() {
                                    core.placer.enqueue(q);
                                }
                            }
                        }
                        act.schedule(ctx);
                    }
                    Some((JobState::Failed, ..)) => {
                        metrics::counter!(m::JOBS_FINISHED, "state" => "failed").increment(1);
                        act.schedule(ctx);
                    }
                    _ => act.schedule(ctx),
                }
            },
        );
    }

    /// A worker is gone: every lease it held is revoked at once, leased and running alike. A
    /// worker whose process is known to have `exited` has its jobs requeued at once; one that
    /// only went silent may be cut off and still running them until it fences itself (before
    /// its leases would run out), so each job waits for the last of its revoked leases to run
    /// out before it is placed again: the old attempt is dead before the new one starts.
    pub(super) fn worker_lost(
        &mut self,
        ctx: &mut Ctx,
        worker: WorkerId,
        reason: String,
        exited: bool,
    ) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(entry) = core.workers.remove(&worker) else {
            return;
        };
        if core.departed.len() >= super::DEPARTED_KEPT {
            core.departed.pop_front();
        }
        core.departed.push_back(super::api::DepartedView {
            worker,
            node: entry.identity.node,
            name: entry.identity.name,
            datacenter: entry.datacenter,
            address: entry.address,
            registered_ms: entry.registered_ms,
            died_ms: now_ms(),
            reason: reason.clone(),
        });
        metrics::counter!(m::WORKER_DEATHS).increment(1);
        metrics::gauge!(m::WORKERS).set(core.workers.len() as f64);
        if let Some(health) = self.config.health.get() {
            if let Err(error) = health.forget.try_send(ForgetWorker { worker }) {
                tracing::warn!(worker = %worker, %error,
                    "health monitor did not take a forget: it may declare this worker dead again");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "forget").increment(1);
            }
        }
        let revoked = core.leases.revoke_worker(worker);
        let mut jobs: Vec<JobId> = revoked.iter().map(|l| l.job).collect();
        match core.placer.remove_worker(worker) {
            Ok(held) => jobs.extend(held),
            Err(error) => {
                tracing::error!(worker = %worker, %error, "worker missing from the capacity table");
            }
        }
        jobs.sort_unstable();
        jobs.dedup();
        tracing::error!(worker = %worker, %reason, leases = revoked.len(), jobs = jobs.len(),
            "worker dead: its leases are revoked and its jobs lost");
        if let Some(callbacks) = &self.config.callbacks {
            callbacks.emit(NodeEvent::WorkerDied {
                worker,
                reason: reason.clone(),
            });
        }
        for job in jobs {
            let not_before = (!exited)
                .then(|| {
                    revoked
                        .iter()
                        .filter(|l| l.job == job)
                        .map(|l| l.expires_at)
                        .max()
                })
                .flatten();
            self.lose(
                ctx,
                job,
                format!("worker {worker} died: {reason}"),
                not_before,
            );
        }
        self.schedule(ctx);
    }
}
