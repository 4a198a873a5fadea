//! The worker's round, every `renew_every`: a heartbeat to the health monitor, self-fencing of
//! the tasks past their kill-by instant, and one batched renewal of every lease (also with none,
//! so an idle worker learns that the scheduler forgot it and registers again).

use actix::prelude::*;
use tokio::time::Instant;

use super::{Ctx, Worker};
use crate::error::Error;
use crate::ids::{FencingToken, WorkerId};
use crate::job::JobId;
use crate::lease::self_fence_deadline;
use crate::metrics as m;
use crate::protocol::{Heartbeat, KillReason, Renew};

impl Worker {
    pub(super) fn tick(&mut self, ctx: &mut Ctx) {
        let Some(worker) = self.id else {
            self.register(ctx);
            return;
        };
        if let Some(health) = &self.config.health {
            if let Err(error) = health.try_send(Heartbeat { worker }) {
                tracing::warn!(worker = %worker, %error, "heartbeat not delivered");
                metrics::counter!(m::WORKER_ERRORS, "kind" => "heartbeat").increment(1);
            }
        }
        // Self-fencing first: a task past its kill-by instant stops now.
        let now = Instant::now();
        let overdue: Vec<(FencingToken, JobId)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.fence_at <= now && t.kill.is_some())
            .map(|(token, t)| (*token, t.job))
            .collect();
        for (token, job) in overdue {
            tracing::error!(worker = %worker, job = %job, lease = %token,
                "lease not renewed in time: the worker kills the task itself");
            metrics::counter!(m::SELF_FENCES).increment(1);
            self.kill(token, KillReason::LeaseLost);
        }
        // Also with nothing to renew: an empty renewal is how an idle worker learns that the
        // scheduler no longer knows it (it restarted) and registers again.
        if self.renewing {
            return;
        }
        self.renewing = true;
        let leases: Vec<(JobId, FencingToken)> = self
            .tasks
            .iter()
            .map(|(token, t)| (t.job, *token))
            .collect();
        let renew = self.link.renew.clone();
        let sent_at = Instant::now();
        let margin = self.config.fence_margin;
        ctx.spawn(
            async move { tokio::time::timeout(margin, renew.send(Renew { worker, leases })).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.renewing = false;
                    match result {
                        Ok(Ok(Ok(reply))) => {
                            for token in reply.renewed {
                                if let Some(task) = act.tasks.get_mut(&token) {
                                    task.fence_at = self_fence_deadline(sent_at, task.ttl, margin);
                                }
                            }
                            for (job, token) in reply.refused {
                                tracing::warn!(worker = %worker, job = %job, lease = %token,
                                    "lease renewal refused: the task stops");
                                act.kill(token, KillReason::LeaseLost);
                            }
                        }
                        Ok(Ok(Err(Error::UnknownWorker { .. }))) => act.forgotten(ctx, worker),
                        Ok(Ok(Err(error))) => {
                            tracing::error!(worker = %worker, %error, "lease renewal refused as a whole");
                            metrics::counter!(m::RENEW_FAILURES).increment(1);
                        }
                        Ok(Err(error)) => {
                            tracing::error!(worker = %worker, %error, "lease renewal not delivered");
                            metrics::counter!(m::RENEW_FAILURES).increment(1);
                        }
                        Err(_) => {
                            tracing::error!(worker = %worker, timeout_ms = margin.as_millis() as u64,
                                "lease renewal unanswered in time");
                            metrics::counter!(m::RENEW_FAILURES).increment(1);
                        }
                    }
                }),
        );
    }

    /// The scheduler restarted (or declared this worker dead) and lost every lease with it:
    /// the tasks stop and the worker joins again under a new id.
    pub(super) fn forgotten(&mut self, ctx: &mut Ctx, worker: WorkerId) {
        if self.id != Some(worker) {
            return;
        }
        tracing::warn!(worker = %worker, path = ctx.path(),
            "scheduler no longer knows this worker: its tasks stop and it registers again");
        let tokens: Vec<FencingToken> = self.tasks.keys().copied().collect();
        for token in tokens {
            self.kill(token, KillReason::LeaseLost);
        }
        self.id = None;
        self.register(ctx);
    }
}
