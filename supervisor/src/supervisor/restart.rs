//! What happens when a child ends on its own: its restart type decides whether it restarts, its
//! own limit may disable it, the supervisor's intensity may escalate, backoff may delay it, and
//! the strategy (one_for_one, one_for_all, rest_for_one) decides which siblings restart with it.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::{Exit, SupMsg, Supervisor};
use crate::error::SupervisorError;
use crate::failure::{report, Failure, FailureKind};
use crate::spec::{Backoff, Restart, Strategy};

impl Supervisor {
    pub(super) async fn on_exit(&mut self, key: u64, generation: u64, exit: Exit) {
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

    pub(super) async fn on_restart_due(&mut self, key: u64, token: u64) {
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
}
