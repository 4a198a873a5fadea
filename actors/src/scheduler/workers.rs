//! What workers and monitors tell the scheduler: registration, renewals, starts and ends of
//! tasks under their lease tokens, worker deaths, GPU health, progress and stalls.

use super::*;

impl Handler<Register> for Scheduler {
    type Result = Result<WorkerId, Error>;

    fn handle(&mut self, msg: Register, ctx: &mut Ctx) -> Self::Result {
        // The same worker registering again has restarted (its tasks died with the old
        // instance), or lost its registration's answer: the earlier registration goes first, so
        // its capacity (GPUs above all) is never offered twice.
        let earlier: Vec<WorkerId> = self
            .core()?
            .workers
            .iter()
            .filter(|(_, w)| w.identity == msg.identity)
            .map(|(id, _)| *id)
            .collect();
        for old in earlier {
            self.worker_lost(
                ctx,
                old,
                format!(
                    "{} registered again, so its earlier registration is gone",
                    msg.identity
                ),
                true,
            );
        }
        let core = self.core()?;
        // Back: no longer shown as dead.
        core.departed
            .retain(|d| d.node != msg.identity.node || d.name != msg.identity.name);
        let worker = WorkerId(core.next_worker);
        core.next_worker += 1;
        core.placer.add_worker(worker, &msg.capacity)?;
        if core.drained_nodes.contains(&msg.identity.node) {
            // Drained before it registered again: it stays drained.
            core.placer.set_accepting(worker, false)?;
        }
        tracing::info!(worker = %worker, identity = %msg.identity, cpu_millis = msg.capacity.cpu_millis,
            memory_bytes = msg.capacity.memory_bytes, gpus = msg.capacity.gpus.len(), "worker registered");
        core.workers.insert(
            worker,
            WorkerEntry {
                identity: msg.identity,
                datacenter: msg.datacenter,
                labels: msg.labels,
                renewed_at: Instant::now(),
                capacity: msg.capacity,
                link: msg.link,
                registered_ms: now_ms(),
                address: msg.address,
            },
        );
        metrics::gauge!(m::WORKERS).set(core.workers.len() as f64);
        if let Some(health) = self.config.health.get() {
            if let Err(error) = health
                .registered
                .try_send(crate::protocol::Heartbeat { worker })
            {
                tracing::warn!(worker = %worker, %error,
                    "health monitor did not take a registration: the worker is watched from its first heartbeat");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "registered").increment(1);
            }
        }
        let core = self.core()?;
        // A worker is here: the first placement need not wait any longer.
        core.grace_until = None;
        self.schedule(ctx);
        Ok(worker)
    }
}

impl Handler<ResendWatches> for Scheduler {
    type Result = ();

    /// A restarted health monitor has forgotten every watch: send it the watch of every task
    /// of a started attempt whose job has a progress deadline.
    fn handle(&mut self, _: ResendWatches, ctx: &mut Ctx) {
        let (Some(core), Some(health)) = (self.core.as_ref(), self.config.health.get()) else {
            return;
        };
        let Some(store) = core.store.as_ref() else {
            // A waited commit holds the store; ask again once it is back.
            ctx.notify_later(ResendWatches, Duration::from_millis(10));
            return;
        };
        let mut sent = 0usize;
        for (job, active) in core.active.iter().filter(|(_, a)| a.watched && a.started) {
            let Some(secs) = store
                .table()
                .get(*job)
                .and_then(|e| e.spec.progress_deadline_secs)
            else {
                continue;
            };
            for (grant, token) in &active.tasks {
                let watch = WatchJob {
                    job: *job,
                    worker: grant.worker,
                    token: *token,
                    deadline: Duration::from_secs(secs),
                };
                if let Err(error) = health.watch.try_send(watch) {
                    tracing::warn!(job = %job, lease = %token, %error,
                        "health monitor did not take a watch again: this task is not checked for progress");
                    metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "watch").increment(1);
                } else {
                    sent += 1;
                }
            }
        }
        tracing::info!(
            watches = sent,
            path = ctx.path(),
            "watches sent again to the health monitor"
        );
    }
}

impl Handler<Renew> for Scheduler {
    type Result = Result<RenewReply, Error>;

    fn handle(&mut self, msg: Renew, ctx: &mut Ctx) -> Self::Result {
        let core = self.core()?;
        if !core.workers.contains_key(&msg.worker) {
            refuse("renew", "unknown_worker");
            return Err(Error::UnknownWorker { worker: msg.worker });
        }
        if let Some(entry) = core.workers.get_mut(&msg.worker) {
            entry.renewed_at = Instant::now();
        }
        // Overdue leases go first, so a renewal that comes too late does not revive one.
        self.reap_overdue(ctx);
        let core = self.core()?;
        let mut reply = RenewReply::default();
        for outcome in core.leases.renew(msg.worker, &msg.leases, Instant::now()) {
            match outcome {
                RenewOutcome::Renewed { token, .. } => reply.renewed.push(token),
                RenewOutcome::Refused { job, token, .. } => reply.refused.push((job, token)),
            }
        }
        self.arm_expiry(ctx);
        Ok(reply)
    }
}

impl Handler<Started> for Scheduler {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: Started, ctx: &mut Ctx) -> Self::Result {
        self.reap_overdue(ctx);
        let core = self.core()?;
        core.leases
            .check(msg.job, msg.worker, msg.token, "started")?;
        let deadline = core
            .store
            .as_ref()
            .and_then(|s| s.table().get(msg.job))
            .and_then(|e| e.spec.progress_deadline_secs);
        if let (Some(secs), Some(health)) = (deadline, self.config.health.get()) {
            if let Err(error) = health.watch.try_send(WatchJob {
                job: msg.job,
                worker: msg.worker,
                token: msg.token,
                deadline: Duration::from_secs(secs),
            }) {
                tracing::warn!(job = %msg.job, lease = %msg.token, %error,
                    "health monitor did not take a watch: this task is not checked for progress");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "watch").increment(1);
            }
        }
        let core = self.core()?;
        let Some(active) = core.active.get_mut(&msg.job) else {
            return Err(Error::StaleToken {
                job: msg.job,
                worker: msg.worker,
                presented: msg.token,
                current: None,
            });
        };
        active.watched |= deadline.is_some();
        if active.started {
            return Ok(());
        }
        active.started = true;
        let (job, attempt) = (msg.job, active.attempt);
        self.commit(
            ctx,
            Record::Started { job, attempt },
            move |act, ctx, result| match result {
                Ok(durable) => act.after_durable_do(
                    ctx,
                    durable,
                    AfterDurable::Emit {
                        job,
                        state: JobState::Running,
                        attempt,
                    },
                ),
                Err(error) => {
                    tracing::error!(job = %job, attempt, %error, "could not record a start")
                }
            },
        );
        Ok(())
    }
}

impl Handler<Finished> for Scheduler {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: Finished, ctx: &mut Ctx) -> Self::Result {
        self.reap_overdue(ctx);
        let core = self.core()?;
        core.leases
            .release(msg.job, msg.worker, msg.token, "finished")?;
        if core.active.get(&msg.job).is_some_and(|a| a.watched) {
            self.unwatch([msg.token]);
        }
        let core = self.core()?;
        let Some(active) = core.active.get_mut(&msg.job) else {
            return Ok(());
        };
        active.left = active.left.saturating_sub(1);
        if let Some(note) = msg.output {
            let logs = active.logs.get_or_insert_with(Default::default);
            logs.dropped_bytes += note.dropped_bytes;
            if logs.write_error.is_none() {
                logs.write_error = note.write_error;
            }
        }
        if let TaskEnd::Completed { result } = &msg.end {
            if active.result.is_none() {
                active.result = Some(result.clone());
            }
        }
        let job = msg.job;
        let failed_first = if !msg.end.success() && active.end.is_none() && active.lost.is_none() {
            match task_result(&msg.end, active.cancel) {
                TaskResult::End(state, outcome) => {
                    active.end = Some((state, outcome));
                    true
                }
                TaskResult::Lost(reason) => {
                    active.lost = Some(reason);
                    true
                }
            }
        } else {
            false
        };
        let done = active.left == 0;
        if failed_first && !done {
            // One task of a gang failed: the others stop now.
            self.kill_tasks(job, KillReason::LeaseLost, Some(msg.token));
        }
        if done {
            self.end_attempt(ctx, job);
        }
        Ok(())
    }
}

impl Handler<WorkerDead> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: WorkerDead, ctx: &mut Ctx) {
        self.worker_lost(ctx, msg.worker, msg.reason, msg.exited);
    }
}

impl Handler<GpuHealth> for Scheduler {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: GpuHealth, ctx: &mut Ctx) -> Self::Result {
        let core = self.core.as_mut().ok_or_else(|| Error::Unavailable {
            reason: "the scheduler is not ready".to_owned(),
        })?;
        let Some(worker) = core
            .workers
            .iter()
            .find(|(_, w)| w.identity == msg.worker)
            .map(|(id, _)| *id)
        else {
            tracing::warn!(identity = %msg.worker, gpu = msg.index,
                "GPU health for a worker that is not registered (yet); ignored");
            metrics::counter!(m::GPU_HEALTH_CHANGES, "state" => "unknown_worker").increment(1);
            return Err(Error::Unavailable {
                reason: format!("no registered worker {}", msg.worker),
            });
        };
        let refused = |error: &Error| {
            tracing::error!(worker = %worker, gpu = msg.index, %error, "GPU health not applied");
            metrics::counter!(m::GPU_HEALTH_CHANGES, "state" => "refused").increment(1);
        };
        let was = core
            .placer
            .gpu_healthy(worker, msg.index)
            .inspect_err(refused)?;
        if was == msg.healthy {
            // The monitor repeats an unhealthy device's state on every sample, so a scheduler
            // that restarted (and registered every GPU healthy) learns it again at once.
            return Ok(());
        }
        let holder = core
            .placer
            .set_gpu_health(worker, msg.index, msg.healthy)
            .inspect_err(refused)?;
        if msg.healthy {
            tracing::info!(worker = %worker, gpu = msg.index, reason = %msg.reason,
                "GPU healthy again: it takes work");
            metrics::counter!(m::GPU_HEALTH_CHANGES, "state" => "healthy").increment(1);
            self.schedule(ctx);
        } else {
            // A job already on it runs on: whether its results stand is its owner's call, and
            // the log line names it.
            tracing::warn!(worker = %worker, gpu = msg.index, reason = %msg.reason,
                job = ?holder, "GPU unhealthy: no new work is placed on it");
            metrics::counter!(m::GPU_HEALTH_CHANGES, "state" => "unhealthy").increment(1);
        }
        Ok(())
    }
}

impl Scheduler {
    /// How loaded the receiving side of progress is, 0.0 ..= 1.0 and beyond: the event stream's
    /// backlog for its slowest subscriber, or full when the journal makes the scheduler wait.
    pub(super) fn progress_load(&self) -> f64 {
        let journal_busy = self
            .core
            .as_ref()
            .is_some_and(|c| c.store.is_none() || !c.deferred.is_empty());
        if journal_busy {
            return 1.0;
        }
        self.config.events.len() as f64 / EVENT_CAPACITY as f64
    }
}

/// The event stream's capacity (the node creates it with this many slots).
pub const EVENT_CAPACITY: usize = 4096;

impl Handler<ProgressFlush> for Scheduler {
    type Result = Result<ProgressAck, Error>;

    fn handle(&mut self, msg: ProgressFlush, _: &mut Ctx) -> Self::Result {
        let load = self.progress_load();
        let core = self.core()?;
        if !core.workers.contains_key(&msg.worker) {
            refuse("progress", "unknown_worker");
            return Err(Error::UnknownWorker { worker: msg.worker });
        }
        let level = core.pressure.update(load, Instant::now());
        metrics::gauge!(m::PROGRESS_BACKPRESSURE).set(f64::from(level.level()));
        metrics::counter!(m::PROGRESS_FLUSHES).increment(1);
        let mut refused = Vec::new();
        if level == Backpressure::Reject {
            metrics::counter!(m::PROGRESS_REJECTED).increment(msg.updates.len() as u64);
            return Ok(ProgressAck {
                seq: msg.seq,
                level,
                refused,
            });
        }
        let mut progressed = Vec::with_capacity(msg.updates.len());
        let mut events = Vec::with_capacity(msg.updates.len());
        for update in msg.updates {
            match core
                .leases
                .check(update.job, msg.worker, update.token, "progress")
            {
                Ok(lease) => {
                    progressed.push(update.token);
                    events.push(JobEvent {
                        job: update.job,
                        state: JobState::Running,
                        attempt: lease.attempt,
                        at_ms: now_ms(),
                        progress: Some(TaskProgress {
                            task: update.task,
                            progress: update.progress,
                        }),
                    });
                }
                Err(_) => refused.push(update.token),
            }
        }
        for event in events {
            self.publish(event);
        }
        if let Some(health) = self.config.health.get() {
            if !progressed.is_empty() {
                if let Err(error) = health
                    .progressed
                    .try_send(JobsProgressed { tokens: progressed })
                {
                    tracing::warn!(worker = %msg.worker, %error, "health monitor did not take progress");
                    metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "progressed").increment(1);
                }
            }
        }
        Ok(ProgressAck {
            seq: msg.seq,
            level,
            refused,
        })
    }
}

impl Handler<JobStalled> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: JobStalled, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let live = core.leases.get(msg.token).is_some_and(|l| l.job == msg.job);
        if !live {
            tracing::debug!(job = %msg.job, lease = %msg.token, "stall report for a lease that is gone");
            return;
        }
        tracing::error!(job = %msg.job, lease = %msg.token, reason = %msg.reason,
            "job stalled: its tasks are stopped and the attempt is lost");
        metrics::counter!(m::JOBS_STALLED).increment(1);
        self.lose(ctx, msg.job, msg.reason, None);
    }
}
