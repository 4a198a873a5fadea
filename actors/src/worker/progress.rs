//! Progress flushes: every task's latest progress sent in one [`ProgressFlush`] per interval,
//! the back-pressure level each acknowledgement sets, and the circuit that opens after repeated
//! failures (and re-resolves the scheduler).

use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use super::{Ctx, Worker};
use crate::error::Error;
use crate::job::JobId;
use crate::metrics as m;
use crate::protocol::{Backpressure, ProgressFlush, ProgressUpdate};

/// How long the progress circuit stays open after repeated flush failures.
pub const CIRCUIT_OPEN: Duration = Duration::from_secs(5);
/// Consecutive flush failures that open the circuit.
pub const CIRCUIT_FAILURES: u32 = 3;

/// The state of the worker's progress flushes and their circuit.
pub(super) struct FlushState {
    seq: u64,
    level: Backpressure,
    next_at: Instant,
    in_flight: bool,
    failures: u32,
    open_until: Option<Instant>,
    /// The circuit's open period ended: the next flush is a trial, and its failure opens the
    /// circuit again at once.
    half_open: bool,
}

impl FlushState {
    /// No flush yet: the first may go at once, at no back-pressure, with the circuit closed.
    pub(super) fn new() -> FlushState {
        FlushState {
            seq: 0,
            level: Backpressure::None,
            next_at: Instant::now(),
            in_flight: false,
            failures: 0,
            open_until: None,
            half_open: false,
        }
    }
}

impl Worker {
    pub(super) fn flush_progress(&mut self, ctx: &mut Ctx) {
        let Some(worker) = self.id else {
            return;
        };
        let now = Instant::now();
        if self.flush.in_flight || now < self.flush.next_at {
            return;
        }
        if let Some(until) = self.flush.open_until {
            if now < until {
                return;
            }
            self.flush.open_until = None;
            self.flush.half_open = true;
            tracing::info!(worker = %worker, target = %self.link.target, "progress circuit half-open: trying a flush");
        }
        let mut updates = Vec::new();
        let mut seqs = Vec::new();
        for (token, task) in &self.tasks {
            if let Some((reporter, seen)) = &task.progress {
                if let Some((seq, progress)) = reporter.newer_than(*seen) {
                    updates.push(ProgressUpdate {
                        job: task.job,
                        token: *token,
                        task: task.task,
                        progress,
                    });
                    seqs.push((*token, seq));
                }
            }
        }
        // Under `Reject` an empty flush is the probe that learns when the pressure is gone.
        if updates.is_empty() && self.flush.level != Backpressure::Reject {
            return;
        }
        self.flush.seq += 1;
        self.flush.in_flight = true;
        let seq = self.flush.seq;
        let jobs: Vec<JobId> = updates.iter().map(|u| u.job).collect();
        let target = self.link.target.clone();
        let progress = self.link.progress.clone();
        let timeout = self.config.progress_every.max(Duration::from_millis(50)) * 20;
        ctx.spawn(
            async move {
                tokio::time::timeout(timeout, progress.send(ProgressFlush { worker, seq, updates })).await
            }
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.flush.in_flight = false;
                let failure = match result {
                    Ok(Ok(Ok(ack))) if ack.seq == seq => {
                        act.flush.failures = 0;
                        act.flush.half_open = false;
                        if ack.level != act.flush.level {
                            tracing::info!(worker = %worker, from = act.flush.level.as_str(),
                                to = ack.level.as_str(), "progress back-pressure level changed");
                            act.flush.level = ack.level;
                        }
                        if ack.level != Backpressure::Reject {
                            for (token, s) in seqs {
                                if let Some((_, seen)) = act.tasks.get_mut(&token).and_then(|t| t.progress.as_mut()) {
                                    *seen = s;
                                }
                            }
                        }
                        act.flush.next_at = Instant::now() + act.config.progress_every * ack.level.interval_factor();
                        return;
                    }
                    Ok(Ok(Ok(ack))) => ("malformed_ack", format!("acknowledgement for flush {} answered flush {seq}", ack.seq)),
                    Ok(Ok(Err(Error::UnknownWorker { .. }))) => {
                        act.forgotten(ctx, worker);
                        return;
                    }
                    Ok(Ok(Err(error))) => ("refused", error.to_string()),
                    Ok(Err(error)) => ("undelivered", error.to_string()),
                    Err(_) => ("timeout", format!("no answer within {} ms", timeout.as_millis())),
                };
                let (reason, error) = failure;
                act.flush.failures += 1;
                tracing::error!(worker = %worker, jobs = ?jobs, %target, seq, reason, %error,
                    failures = act.flush.failures, "progress flush failed");
                metrics::counter!(m::PROGRESS_FLUSH_FAILURES, "reason" => reason).increment(1);
                if act.flush.failures >= CIRCUIT_FAILURES || act.flush.half_open {
                    act.flush.half_open = false;
                    act.flush.failures = 0;
                    act.flush.open_until = Some(Instant::now() + CIRCUIT_OPEN);
                    act.link = (act.config.resolve)();
                    tracing::error!(worker = %worker, %target, open_ms = CIRCUIT_OPEN.as_millis() as u64,
                        "progress circuit open after repeated failures; scheduler re-resolved");
                    metrics::counter!(m::PROGRESS_CIRCUIT_OPENS).increment(1);
                }
            }),
        );
    }
}
