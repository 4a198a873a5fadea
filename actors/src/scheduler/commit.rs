//! Commits and durability: a record goes to the store (applied and queued in one step), waits
//! in order when the journal has no room, and its continuation runs once it is durable.

use super::*;

/// What to do once a record is durable. The common ends are plain data, so the hot path
/// allocates no closure per record.
pub(super) enum AfterDurable {
    /// Publish a state change.
    Emit {
        job: JobId,
        state: JobState,
        attempt: u32,
    },
    /// Publish the lease and send the job to its workers.
    Assign { job: JobId, attempt: u32 },
    /// Nothing but the wait: later records' continuations run after it.
    Nothing,
    /// Anything else.
    Run(Continuation),
}

/// A continuation that needs a closure.
type Continuation = Box<dyn FnOnce(&mut Scheduler, &mut Ctx)>;

impl AfterDurable {
    fn run(self, act: &mut Scheduler, ctx: &mut Ctx) {
        match self {
            AfterDurable::Emit {
                job,
                state,
                attempt,
            } => act.emit(job, state, attempt),
            AfterDurable::Assign { job, attempt } => {
                act.emit(job, JobState::Leased, attempt);
                act.assign(ctx, job);
            }
            AfterDurable::Nothing => {}
            AfterDurable::Run(then) => then(act, ctx),
        }
    }
}

/// Awaits the records in `Scheduler::durables` in order, running each one's continuation.
/// The journal makes records durable in the order they were queued, so awaiting the oldest
/// first loses nothing, and one future (polled only for the oldest record) replaces one
/// spawned future per record, which the actor's context would poll all of on every wake.
pub(super) struct DrainDurables;

impl actix::fut::ActorFuture<Scheduler> for DrainDurables {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        act: &mut Scheduler,
        ctx: &mut Ctx,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        loop {
            let Some((front, _)) = act.durables.front_mut() else {
                act.draining_durables = false;
                return Poll::Ready(());
            };
            let result = match std::future::Future::poll(std::pin::Pin::new(front), task) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result,
            };
            let Some((_, then)) = act.durables.pop_front() else {
                continue;
            };
            match result {
                Ok(()) => then.run(act, ctx),
                Err(error) if act.core.as_ref().is_some_and(|c| c.closing) => {
                    // The store was closed on a disk that refused writes: nothing of this was
                    // acknowledged, and the next start finds the jobs as the journal has them.
                    tracing::warn!(%error, path = ctx.path(), pending = act.durables.len() + 1,
                        "records still waiting for the disk at shutdown were not made durable");
                    act.durables.clear();
                    act.draining_durables = false;
                    return Poll::Ready(());
                }
                Err(error) => {
                    tracing::error!(%error, path = ctx.path(),
                        "a job record did not become durable; the scheduler restarts to recover");
                    ctx.fail(format!("journal write failed: {error}"));
                    act.durables.clear();
                    act.draining_durables = false;
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl Scheduler {
    /// Commits `record` and hands the result to `then`: at once when the journal has room, in
    /// order after the records before it otherwise.
    pub(super) fn commit<F>(&mut self, ctx: &mut Ctx, record: Record, then: F)
    where
        F: FnOnce(&mut Scheduler, &mut Ctx, Result<Durable, Error>) + 'static,
    {
        let Some(core) = self.core.as_mut() else {
            then(
                self,
                ctx,
                Err(Error::Unavailable {
                    reason: "the scheduler is not ready".to_owned(),
                }),
            );
            return;
        };
        // Behind records already waiting, and while the disk refuses writes: in order, later.
        if !core.deferred.is_empty() || core.unwritable.is_some() {
            core.deferred.push_back((record, Box::new(then)));
            return;
        }
        let Some(store) = core.store.as_mut() else {
            core.deferred.push_back((record, Box::new(then)));
            return;
        };
        let mut record = record;
        number(store, &mut record);
        match store.try_commit(record) {
            Ok(result) => {
                let failed = result.is_err();
                then(self, ctx, result);
                if failed {
                    self.check_store(ctx);
                } else {
                    self.maybe_compact(ctx);
                }
            }
            Err(record) => {
                // A full queue: waiting blocks the mailbox, which is right for a busy disk
                // but not for one that refuses writes (its watch may not have told us yet).
                let stalled = store.unwritable_reason();
                core.deferred.push_back((record, Box::new(then)));
                match stalled {
                    Some(reason) => self.set_unwritable(ctx, Some(reason)),
                    None => self.wait_for_journal(ctx),
                }
            }
        }
    }

    /// Follows the journal's health: the store turns read-only while its disk refuses writes,
    /// and carries on with what waited once it takes them again.
    pub(super) fn watch_journal(
        &mut self,
        ctx: &mut Ctx,
        mut health: tokio::sync::watch::Receiver<cadre_cpu::journal::JournalHealth>,
    ) {
        ctx.spawn(
            async move {
                let changed = health.changed().await.is_ok();
                (health, changed)
            }
            .into_actor(self)
            .map(|(health, changed), act, ctx| {
                if !changed {
                    // The journal is gone (closed or its writer exited): the store says so on
                    // the next commit.
                    return;
                }
                let reason = match &*health.borrow() {
                    cadre_cpu::journal::JournalHealth::Writable => None,
                    cadre_cpu::journal::JournalHealth::Stalled(stall) => Some(stall.to_string()),
                };
                act.set_unwritable(ctx, reason);
                act.watch_journal(ctx, health);
            }),
        );
    }

    /// The store turns read-only (`Some(why)`) or writable again (`None`). Said once per
    /// change (the journal logged the failure itself, once), and the gauge follows.
    pub(super) fn set_unwritable(&mut self, ctx: &mut Ctx, reason: Option<String>) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let was = core.unwritable.is_some();
        match (&reason, was) {
            (Some(why), false) => {
                tracing::warn!(reason = %why, path = ctx.path(), waiting = core.deferred.len(),
                    "job store read-only: submissions are refused and changes wait until its disk takes writes again");
                metrics::gauge!(m::STORE_WRITABLE).set(0.0);
            }
            (None, true) => {
                tracing::info!(
                    path = ctx.path(),
                    waiting = core.deferred.len(),
                    "job store writable again: the changes that waited are being recorded"
                );
                metrics::gauge!(m::STORE_WRITABLE).set(1.0);
            }
            _ => {}
        }
        core.unwritable = reason;
        if core.unwritable.is_none() && was {
            self.drain_deferred(ctx);
            self.schedule(ctx);
        }
    }

    /// Blocks the mailbox until the journal takes the first deferred record, then commits the
    /// rest in order (waiting again if it fills up).
    pub(super) fn wait_for_journal(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let (Some(mut store), Some((record, then))) =
            (core.store.take(), core.deferred.pop_front())
        else {
            return;
        };
        tracing::debug!(
            path = ctx.path(),
            "journal queue full: the scheduler waits for room"
        );
        let mut record = record;
        ctx.wait(
            async move {
                number(&store, &mut record);
                let result = store.commit(record).await;
                (store, result)
            }
            .into_actor(self)
            .map(|(store, result), act, ctx| {
                if let Some(core) = act.core.as_mut() {
                    core.store = Some(store);
                }
                then(act, ctx, result);
                act.drain_deferred(ctx);
            }),
        );
    }

    pub(super) fn drain_deferred(&mut self, ctx: &mut Ctx) {
        loop {
            let Some(core) = self.core.as_mut() else {
                return;
            };
            if core.unwritable.is_some() {
                return;
            }
            let Some(store) = core.store.as_mut() else {
                return;
            };
            let Some((mut record, then)) = core.deferred.pop_front() else {
                break;
            };
            number(store, &mut record);
            match store.try_commit(record) {
                Ok(result) => then(self, ctx, result),
                Err(record) => {
                    core.deferred.push_front((record, then));
                    self.wait_for_journal(ctx);
                    return;
                }
            }
        }
        self.check_store(ctx);
        self.maybe_compact(ctx);
        if self.core.as_ref().is_some_and(|c| c.reschedule) {
            self.schedule(ctx);
        }
    }

    /// Starts a snapshot once enough records have accumulated since the last one, so start-up
    /// reads the snapshot and a bounded tail of records. It is written a chunk at a time
    /// between messages (see `snapshot.rs`): the mailbox never waits for it.
    pub(super) fn maybe_compact(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let due = core.deferred.is_empty()
            && core.unwritable.is_none()
            && core.snapshot.is_none()
            && core.store.as_ref().is_some_and(Store::compaction_due);
        if due {
            self.start_snapshot(ctx, None);
        }
    }

    /// A store that has failed accepts nothing more: the actor fails, and its restart reopens
    /// the journal and recovers from what is on disk.
    pub(super) fn check_store(&mut self, ctx: &mut Ctx) {
        let failed = self
            .core
            .as_ref()
            .and_then(|c| c.store.as_ref())
            .is_some_and(Store::has_failed);
        if failed {
            ctx.fail("the job store failed; restarting to recover from the journal");
        }
    }

    /// Runs `then` once `durable` resolves; a record that did not become durable fails the
    /// actor (see [`Scheduler::check_store`]).
    pub(super) fn after_durable(
        &mut self,
        ctx: &mut Ctx,
        durable: Durable,
        then: impl FnOnce(&mut Scheduler, &mut Ctx) + 'static,
    ) {
        self.after_durable_do(ctx, durable, AfterDurable::Run(Box::new(then)));
    }

    /// [`Scheduler::after_durable`] for the common ends, which need no closure.
    pub(super) fn after_durable_do(&mut self, ctx: &mut Ctx, durable: Durable, then: AfterDurable) {
        self.durables.push_back((durable, then));
        if !self.draining_durables {
            self.draining_durables = true;
            ctx.spawn(DrainDurables);
        }
    }
}
