//! A job's life on the node: placement and assignment, and the end of an attempt (lease
//! expiry, lost attempts and worker deaths are in `lost.rs`).

use super::*;

impl Scheduler {
    /// Places what fits, one decision at a time, and sends each placement to its workers once
    /// its lease record is durable.
    pub(super) fn schedule(&mut self, ctx: &mut Ctx) {
        loop {
            let Some(core) = self.core.as_mut() else {
                return;
            };
            if core.store.is_none() || !core.deferred.is_empty() || core.unwritable.is_some() {
                core.reschedule = true;
                return;
            }
            core.reschedule = false;
            if core.draining {
                return;
            }
            let now = Instant::now();
            // Right after start, with no worker yet: wait for one (or the grace) instead of
            // parking every queued job as unplaceable.
            if core.workers.is_empty() && core.grace_until.is_some_and(|until| now < until) {
                return;
            }
            let Some(placement) = core.placer.decide(now) else {
                break;
            };
            let job = placement.job;
            let Some(attempt) = core
                .store
                .as_ref()
                .and_then(|s| s.table().get(job))
                .map(|e| e.status.attempt)
            else {
                tracing::error!(job = %job, "placed a job the table does not hold; released");
                refuse("place", "unknown_job");
                core.placer.release(job);
                continue;
            };
            let mut tasks = Vec::with_capacity(placement.grants.len());
            let mut refused = None;
            for grant in placement.grants {
                match core
                    .leases
                    .grant(job, attempt, grant.task, grant.worker, now)
                {
                    Ok(lease) => tasks.push((grant, lease.token)),
                    Err(error) => {
                        refused = Some(error);
                        break;
                    }
                }
            }
            if let Some(error) = refused {
                // The lease table logged and counted it; the job cannot run, so it fails.
                core.leases.release_job(job);
                core.placer.release(job);
                self.end_unstarted(ctx, job, attempt, error.to_string());
                continue;
            }
            let record = Record::Leased {
                job,
                attempt,
                grants: tasks.iter().map(|(g, _)| g.clone()).collect(),
                tokens: tasks.iter().map(|(_, t)| *t).collect(),
                nodes: {
                    // By task index, whatever order the grants come in.
                    let mut nodes = vec![String::new(); tasks.len()];
                    for (g, _) in &tasks {
                        if let (Some(slot), Some(w)) =
                            (nodes.get_mut(g.task as usize), core.workers.get(&g.worker))
                        {
                            slot.clone_from(&w.identity.node);
                        }
                    }
                    nodes
                },
            };
            core.active.insert(
                job,
                Active {
                    attempt,
                    left: tasks.len(),
                    tasks,
                    started: false,
                    end: None,
                    cancel: false,
                    lost: None,
                    result: None,
                    watched: false,
                    logs: None,
                },
            );
            core.running.set(core.active.len() as f64);
            self.commit(ctx, record, move |act, ctx, result| match result {
                Ok(durable) => {
                    act.after_durable_do(ctx, durable, AfterDurable::Assign { job, attempt })
                }
                Err(error) => {
                    tracing::error!(job = %job, %error, "lease record refused; job released");
                    if let Some(core) = act.core.as_mut() {
                        core.active.remove(&job);
                        core.leases.release_job(job);
                        core.placer.release(job);
                    }
                }
            });
        }
        if let Some(core) = self.core.as_mut() {
            core.placer.report();
        }
        self.arm_expiry(ctx);
    }

    /// A job that was placed but could not get its leases fails with `reason`.
    pub(super) fn end_unstarted(
        &mut self,
        ctx: &mut Ctx,
        job: JobId,
        attempt: u32,
        reason: String,
    ) {
        let outcome = Outcome {
            error: Some(reason),
            ..Outcome::default()
        };
        self.commit(
            ctx,
            Record::Leased {
                job,
                attempt,
                grants: Vec::new(),
                tokens: Vec::new(),
                nodes: Vec::new(),
            },
            move |act, ctx, result| {
                if let Err(error) = result {
                    tracing::error!(job = %job, %error, "could not record a lease refusal");
                    return;
                }
                act.commit(
                    ctx,
                    Record::Ended {
                        job,
                        attempt,
                        state: JobState::Failed,
                        outcome,
                        ended_ms: now_ms(),
                    },
                    move |act, ctx, result| {
                        act.finished_record(ctx, job, attempt, JobState::Failed, result)
                    },
                );
            },
        );
    }

    /// Sends each task of a durable placement to its worker.
    pub(super) fn assign(&mut self, ctx: &mut Ctx, job: JobId) {
        let ttl = self.config.lease_ttl;
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(active) = core.active.get(&job) else {
            return; // lost before its lease record was durable
        };
        if active.cancel {
            // Cancelled before its lease record was durable: it never starts.
            self.end_attempt(ctx, job);
            return;
        }
        let Some(spec) = core
            .store
            .as_ref()
            .and_then(|s| s.table().get(job))
            .map(|e| e.spec.clone())
        else {
            // The store is busy with a waited commit; this runs again when it is back.
            let attempt = active.attempt;
            ctx.run_later(Duration::from_millis(1), move |act, ctx| {
                if act
                    .core
                    .as_ref()
                    .and_then(|c| c.active.get(&job))
                    .is_some_and(|a| a.attempt == attempt)
                {
                    act.assign(ctx, job);
                }
            });
            return;
        };
        let mut unreachable = Vec::new();
        // One copy of the spec per task; the last task takes the table's copy itself.
        let specs = std::iter::repeat_n(spec, active.tasks.len());
        let now = Instant::now();
        for ((grant, token), spec) in active.tasks.iter().zip(specs) {
            // What the lease has left, not its whole time to live: it was granted before its
            // record became durable, and the worker fences itself by this.
            let left = core
                .leases
                .get(*token)
                .map_or(ttl, |l| l.expires_at.saturating_duration_since(now));
            let msg = Assign {
                job,
                attempt: active.attempt,
                task: grant.task,
                token: *token,
                spec,
                grant: grant.clone(),
                lease_ttl: left,
            };
            match core.workers.get(&grant.worker) {
                Some(w) => {
                    if !deliver(&w.link.assign, msg) {
                        tracing::error!(job = %job, worker = %grant.worker, lease = %token,
                            "assignment not delivered: the worker's mailbox is closed; it is treated as dead");
                        metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "assign").increment(1);
                        unreachable.push(grant.worker);
                    }
                }
                None => unreachable.push(grant.worker),
            }
        }
        for worker in unreachable {
            // A closed mailbox says the link is gone, not that the worker's tasks are: a
            // remote worker's link closes with its connection, its tasks may run on.
            self.worker_lost(
                ctx,
                worker,
                "its mailbox refused an assignment".to_owned(),
                false,
            );
        }
    }

    pub(super) fn kill_tasks(
        &mut self,
        job: JobId,
        reason: KillReason,
        skip: Option<FencingToken>,
    ) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(active) = core.active.get(&job) else {
            return;
        };
        for (grant, token) in &active.tasks {
            if Some(*token) == skip {
                continue;
            }
            if let Some(w) = core.workers.get(&grant.worker) {
                let kill = Kill {
                    job,
                    token: *token,
                    reason,
                };
                if !deliver(&w.link.kill, kill) {
                    tracing::error!(job = %job, worker = %grant.worker, lease = %token,
                        "kill not delivered: the worker's mailbox is closed; the lease runs out instead");
                    metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "kill").increment(1);
                }
            }
        }
    }

    /// After an `Ended` record: count it, tell subscribers once durable, wake drains.
    pub(super) fn finished_record(
        &mut self,
        ctx: &mut Ctx,
        job: JobId,
        attempt: u32,
        state: JobState,
        result: Result<Durable, Error>,
    ) {
        match result {
            Ok(durable) => {
                match self.core.as_ref() {
                    Some(core) if state == JobState::Succeeded => core.succeeded.increment(1),
                    _ => {
                        metrics::counter!(m::JOBS_FINISHED, "state" => state.as_str()).increment(1)
                    }
                }
                self.after_durable_do(
                    ctx,
                    durable,
                    AfterDurable::Emit {
                        job,
                        state,
                        attempt,
                    },
                );
            }
            Err(error) => {
                tracing::error!(job = %job, attempt, state = state.as_str(), %error,
                    "could not record the end of a job");
            }
        }
        self.wake_drained();
    }

    pub(super) fn wake_drained(&mut self) {
        if let Some(core) = self.core.as_mut() {
            if core.draining && core.active.is_empty() {
                for tx in core.drained.drain(..) {
                    if tx.send(()).is_err() {
                        tracing::debug!("drain waiter left before the node drained");
                    }
                }
            }
        }
    }
}

pub(super) enum TaskResult {
    End(JobState, Outcome),
    Lost(String),
}

pub(super) fn task_result(end: &TaskEnd, cancelled: bool) -> TaskResult {
    if cancelled {
        return TaskResult::End(JobState::Cancelled, Outcome::default());
    }
    match end {
        TaskEnd::Exited { code } => TaskResult::End(
            if *code == 0 {
                JobState::Succeeded
            } else {
                JobState::Failed
            },
            Outcome {
                exit_code: Some(*code),
                ..Outcome::default()
            },
        ),
        TaskEnd::Signalled { signal } => TaskResult::Lost(format!(
            "its process was killed by signal {signal} from outside cadre"
        )),
        TaskEnd::TimedOut => TaskResult::End(
            JobState::TimedOut,
            Outcome {
                error: Some("its timeout ran out".to_owned()),
                ..Outcome::default()
            },
        ),
        TaskEnd::Killed { reason } => {
            TaskResult::Lost(format!("its task was stopped ({})", reason.as_str()))
        }
        TaskEnd::Completed { .. } => TaskResult::End(JobState::Succeeded, Outcome::default()),
        TaskEnd::OutOfMemory { limit_bytes } => TaskResult::End(
            JobState::Failed,
            Outcome {
                signal: Some(9),
                error: Some(format!(
                    "out of memory: the kernel killed it at its limit of {limit_bytes} bytes (resources.memory_bytes)"
                )),
                ..Outcome::default()
            },
        ),
        // The worker lost track of the task, or could not confine it: the node's trouble, not
        // the job's, so the attempt is lost (requeued), not failed.
        TaskEnd::Error { error } => TaskResult::Lost(format!("its worker failed it: {error}")),
        TaskEnd::StartFailed { error } | TaskEnd::WorkloadFailed { error } => TaskResult::End(
            JobState::Failed,
            Outcome {
                error: Some(error.clone()),
                ..Outcome::default()
            },
        ),
    }
}

impl Scheduler {
    /// Ends the attempt's hold on the node: it leaves the active set and gives back its leases
    /// and its reservation. `None` when the job holds no attempt.
    pub(super) fn take_active(&mut self, job: JobId) -> Option<Active> {
        let core = self.core.as_mut()?;
        let active = core.active.remove(&job)?;
        core.running.set(core.active.len() as f64);
        core.leases.release_job(job);
        core.placer.release(job);
        Some(active)
    }

    /// Every task of the attempt has ended: record how the job ended (or that the attempt was
    /// lost), release its reservation, and place what now fits.
    pub(super) fn end_attempt(&mut self, ctx: &mut Ctx, job: JobId) {
        let Some(active) = self.take_active(job) else {
            return;
        };
        if let Some(reason) = active.lost.clone() {
            // Every task has ended already: nothing is left to stop.
            let mut active = active;
            active.tasks.clear();
            if let Some(core) = self.core.as_mut() {
                core.active.insert(job, active);
            }
            self.lose(ctx, job, reason, None);
            self.wake_drained();
            return;
        }
        let attempt = active.attempt;
        let (state, mut outcome) = match active.end {
            Some(end) => end,
            None if active.cancel => (JobState::Cancelled, Outcome::default()),
            None => (
                JobState::Succeeded,
                Outcome {
                    exit_code: active.result.is_none().then_some(0),
                    result: active.result.clone(),
                    ..Outcome::default()
                },
            ),
        };
        outcome.logs = active.logs;
        // A job that never reported its start cannot succeed or time out: it failed to start.
        let state = if !active.started && matches!(state, JobState::Succeeded | JobState::TimedOut)
        {
            JobState::Failed
        } else {
            state
        };
        if matches!(state, JobState::Failed | JobState::TimedOut) && !active.cancel {
            if let Some(backoff) = self.retry_backoff(job) {
                self.retry(ctx, job, attempt, state, outcome, backoff);
                return;
            }
        }
        self.commit(
            ctx,
            Record::Ended {
                job,
                attempt,
                state,
                outcome,
                ended_ms: now_ms(),
            },
            move |act, ctx, result| {
                act.finished_record(ctx, job, attempt, state, result);
                act.schedule(ctx);
            },
        );
    }

    /// The pause before the next attempt of a job whose attempt failed on its own, if it has
    /// retries left (`max_retries`).
    fn retry_backoff(&self, job: JobId) -> Option<Duration> {
        let entry = self.core.as_ref()?.store.as_ref()?.table().get(job)?;
        (entry.failures < entry.spec.max_retries)
            .then(|| entry.spec.retry_backoff(entry.failures + 1))
    }

    /// Queues a failed job again for its next attempt, placed once `backoff` has passed.
    fn retry(
        &mut self,
        ctx: &mut Ctx,
        job: JobId,
        attempt: u32,
        state: JobState,
        outcome: Outcome,
        backoff: Duration,
    ) {
        let retry_at_ms = now_ms().saturating_add(backoff.as_millis() as u64);
        let why = outcome
            .error
            .clone()
            .or_else(|| outcome.exit_code.map(|c| format!("exit code {c}")))
            .unwrap_or_else(|| state.as_str().to_owned());
        self.commit(
            ctx,
            Record::Retry {
                job,
                attempt,
                state,
                outcome,
                retry_at_ms,
            },
            move |act, ctx, result| {
                let durable = match result {
                    Ok(d) => d,
                    Err(error) => {
                        tracing::error!(job = %job, attempt, %error, "could not record a retry");
                        return;
                    }
                };
                metrics::counter!(m::JOBS_RETRIED, "state" => state.as_str()).increment(1);
                let queued = act.queued_job(job);
                let failures = act
                    .core
                    .as_ref()
                    .and_then(|c| c.store.as_ref())
                    .and_then(|s| s.table().get(job))
                    .map_or(0, |e| e.failures);
                tracing::info!(job = %job, attempt, state = state.as_str(), reason = %why, failures,
                    backoff_ms = backoff.as_millis() as u64, "attempt failed: the job runs again after its backoff");
                act.after_durable(ctx, durable, move |act, _| {
                    act.emit(job, JobState::Queued, attempt + 1);
                });
                if let Some(q) = queued {
                    act.delay(ctx, q, Instant::now() + backoff);
                }
                act.schedule(ctx);
            },
        );
    }

    /// The queue entry of a queued job, from its spec.
    pub(super) fn queued_job(&self, job: JobId) -> Option<QueuedJob> {
        let entry = self.core.as_ref()?.store.as_ref()?.table().get(job)?;
        Some(QueuedJob {
            job,
            priority: entry.spec.priority,
            resources: entry.spec.resources,
            gang: entry.spec.gang.max(1),
            enqueued_at: Instant::now(),
        })
    }

    /// Holds a queued job back until `at` (a retry's backoff), then queues it.
    pub(super) fn delay(&mut self, ctx: &mut Ctx, q: QueuedJob, at: Instant) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        if let Some(old) = core.delayed_at.insert(q.job, at) {
            core.delayed.remove(&(old, q.job));
        }
        core.delayed.insert((at, q.job), q);
        self.arm_delayed(ctx);
    }

    /// Takes a job out of the backoff queue (it was cancelled); whether it was there.
    pub(super) fn undelay(&mut self, job: JobId) -> bool {
        let Some(core) = self.core.as_mut() else {
            return false;
        };
        match core.delayed_at.remove(&job) {
            Some(at) => core.delayed.remove(&(at, job)).is_some(),
            None => false,
        }
    }

    fn arm_delayed(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(&(next, _)) = core.delayed.keys().next() else {
            if let Some((_, handle)) = core.delay_timer.take() {
                ctx.cancel_future(handle);
            }
            return;
        };
        if let Some((at, handle)) = core.delay_timer {
            if at <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let pause = next.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(pause, |act, ctx| {
            if let Some(core) = act.core.as_mut() {
                core.delay_timer = None;
            }
            act.release_delayed(ctx);
        });
        core.delay_timer = Some((next, handle));
    }

    /// Queues every delayed job whose backoff is over.
    fn release_delayed(&mut self, ctx: &mut Ctx) {
        let now = Instant::now();
        if let Some(core) = self.core.as_mut() {
            while let Some(entry) = core.delayed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let q = entry.remove();
                core.delayed_at.remove(&q.job);
                core.placer.enqueue(QueuedJob {
                    enqueued_at: now,
                    ..q
                });
            }
        }
        self.arm_delayed(ctx);
        self.schedule(ctx);
    }
}
