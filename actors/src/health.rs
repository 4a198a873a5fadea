//! The health monitor: worker heartbeats into a phi-accrual failure detector (Hayashibara et
//! al., as in Akka and Cassandra), and the verdict "dead" sent to the scheduler, which revokes
//! every lease of that worker at once.
//!
//! Phi is `-log10(P(a heartbeat comes later than now))` under a normal distribution fitted to
//! the worker's recent inter-arrival times (mean plus an acceptable pause, standard deviation
//! at least a floor). Phi 8 means the detector is wrong about one time in 10^8 under that model.
//! A worker that has sent fewer than two heartbeats is judged against the expected interval.
//!
//! Job-level suspicion: the scheduler asks the monitor to watch each started task whose job has
//! a progress deadline; a monitor that (re)starts asks the scheduler for every such watch again,
//! so a restart forgets none. A task with no progress within its deadline is suspected (a warning and
//! `cadre_jobs_suspected_total`); still none after a further half deadline, it is reported
//! stalled and the scheduler stops it and loses the attempt (requeued per its retries). Progress
//! clears a suspicion; a worker's death clears the suspicions of all its tasks (their leases are
//! revoked with the worker).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use actix::prelude::*;
use cadre_supervisor::SupervisedContext;
use tokio::time::Instant;

use crate::ids::{FencingToken, WorkerId};
use crate::job::JobId;
use crate::metrics as m;
use crate::protocol::{
    ForgetWorker, Heartbeat, JobStalled, JobsProgressed, ResendWatches, UnwatchJob, WatchJob,
    WorkerDead,
};

type Ctx = SupervisedContext<HealthMonitor>;

/// The detector's settings.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Where verdicts go.
    pub dead: Recipient<WorkerDead>,
    /// Where stalled tasks are reported.
    pub stalled: Recipient<JobStalled>,
    /// The interval workers send heartbeats at (the prior before samples exist).
    pub expected_interval: Duration,
    /// How often phi is evaluated.
    pub check_every: Duration,
    /// Phi above which a worker is dead.
    pub threshold: f64,
    /// Inter-arrival samples kept per worker.
    pub window: usize,
    /// Lower bound of the standard deviation.
    pub min_std: Duration,
    /// A pause added to the mean (GC, a busy arbiter).
    pub acceptable_pause: Duration,
    /// Where the monitor asks, when it starts, for the watches of tasks already running: a
    /// restarted monitor has lost them, and without them no stalled job would be suspected.
    pub resend: Option<Recipient<ResendWatches>>,
}

/// Phi for a heartbeat `elapsed` after the last one, given the inter-arrival `mean` and `std`
/// (all in milliseconds).
pub fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    // A zero (or negative, or NaN) deviation would make every heartbeat at the mean infinitely
    // suspicious: 1 microsecond is the floor.
    let std = if std.is_nan() { 1e-3 } else { std.max(1e-3) };
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    -p_later.max(f64::MIN_POSITIVE).log10()
}

struct History {
    last: Instant,
    intervals: VecDeque<f64>,
}

impl History {
    fn stats(&self, config: &HealthConfig) -> (f64, f64) {
        let pause = config.acceptable_pause.as_secs_f64() * 1000.0;
        let floor = config.min_std.as_secs_f64() * 1000.0;
        if self.intervals.len() < 2 {
            let expected = config.expected_interval.as_secs_f64() * 1000.0;
            return (expected + pause, floor.max(expected / 4.0));
        }
        let n = self.intervals.len() as f64;
        let mean = self.intervals.iter().sum::<f64>() / n;
        let var = self
            .intervals
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean + pause, var.sqrt().max(floor))
    }
}

/// The health monitor actor.
pub struct HealthMonitor {
    config: HealthConfig,
    workers: HashMap<WorkerId, History>,
    tasks: HashMap<FencingToken, Watched>,
}

struct Watched {
    job: JobId,
    worker: WorkerId,
    deadline: Duration,
    last: Instant,
    suspected: bool,
}

impl HealthMonitor {
    /// A monitor with no workers yet; a worker is watched from its first heartbeat.
    pub fn new(config: HealthConfig) -> HealthMonitor {
        HealthMonitor {
            config,
            workers: HashMap::new(),
            tasks: HashMap::new(),
        }
    }

    fn check_tasks(&mut self, ctx: &mut Ctx) {
        let now = Instant::now();
        let mut stalled = Vec::new();
        for (token, w) in &mut self.tasks {
            let silent = now.saturating_duration_since(w.last);
            if !w.suspected && silent >= w.deadline {
                w.suspected = true;
                tracing::warn!(job = %w.job, worker = %w.worker, lease = %token,
                    silent_ms = silent.as_millis() as u64, deadline_ms = w.deadline.as_millis() as u64,
                    path = ctx.path(), "job suspected: no progress within its deadline");
                metrics::counter!(m::JOBS_SUSPECTED).increment(1);
            }
            if w.suspected && silent >= w.deadline + w.deadline / 2 {
                stalled.push((*token, w.job, silent));
            }
        }
        for (token, job, silent) in stalled {
            self.tasks.remove(&token);
            let reason = format!(
                "no progress for {} ms (deadline and grace passed)",
                silent.as_millis()
            );
            if let Err(error) = self
                .config
                .stalled
                .try_send(JobStalled { job, token, reason })
            {
                tracing::error!(job = %job, lease = %token, %error, "stall not delivered to the scheduler");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "job_stalled").increment(1);
            }
        }
    }

    fn check(&mut self, ctx: &mut Ctx) {
        let now = Instant::now();
        let mut dead = Vec::new();
        for (worker, history) in &self.workers {
            let (mean, std) = history.stats(&self.config);
            let elapsed = now.saturating_duration_since(history.last).as_secs_f64() * 1000.0;
            let value = phi(elapsed, mean, std);
            if value > self.config.threshold {
                dead.push((*worker, value, elapsed));
            }
        }
        for (worker, value, elapsed) in dead {
            self.workers.remove(&worker);
            // The worker's leases go with it: its tasks' suspicions are moot.
            self.tasks.retain(|_, w| w.worker != worker);
            let reason = format!(
                "no heartbeat for {elapsed:.0} ms (phi {value:.1} above {})",
                self.config.threshold
            );
            tracing::error!(worker = %worker, phi = value, silent_ms = elapsed as u64,
                path = ctx.path(), "worker declared dead by the failure detector");
            if let Err(error) = self.config.dead.try_send(WorkerDead {
                worker,
                reason,
                exited: false,
            }) {
                tracing::error!(worker = %worker, %error, "worker death not delivered to the scheduler");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "worker_dead").increment(1);
            }
        }
    }
}

impl Actor for HealthMonitor {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        if let Some(resend) = &self.config.resend {
            if let Err(error) = resend.try_send(ResendWatches) {
                tracing::error!(%error, path = ctx.path(),
                    "health monitor could not ask for the watches of running tasks: stalls of jobs started before it went unnoticed");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "resend_watches").increment(1);
            }
        }
        ctx.run_interval(self.config.check_every, |act, ctx| {
            act.check(ctx);
            act.check_tasks(ctx);
        });
    }
}

impl Handler<Heartbeat> for HealthMonitor {
    type Result = ();

    fn handle(&mut self, msg: Heartbeat, _: &mut Ctx) {
        metrics::counter!(m::HEARTBEATS).increment(1);
        let now = Instant::now();
        let window = self.config.window.max(2);
        let history = self.workers.entry(msg.worker).or_insert_with(|| History {
            last: now,
            intervals: VecDeque::with_capacity(window),
        });
        let interval = now.saturating_duration_since(history.last).as_secs_f64() * 1000.0;
        if interval > 0.0 {
            if history.intervals.len() == window {
                history.intervals.pop_front();
            }
            history.intervals.push_back(interval);
        }
        history.last = now;
    }
}

impl Handler<WatchJob> for HealthMonitor {
    type Result = ();

    fn handle(&mut self, msg: WatchJob, _: &mut Ctx) {
        self.tasks.insert(
            msg.token,
            Watched {
                job: msg.job,
                worker: msg.worker,
                deadline: msg.deadline,
                last: Instant::now(),
                suspected: false,
            },
        );
    }
}

impl Handler<ForgetWorker> for HealthMonitor {
    type Result = ();

    fn handle(&mut self, msg: ForgetWorker, _: &mut Ctx) {
        self.workers.remove(&msg.worker);
        self.tasks.retain(|_, w| w.worker != msg.worker);
    }
}

impl Handler<UnwatchJob> for HealthMonitor {
    type Result = ();

    fn handle(&mut self, msg: UnwatchJob, _: &mut Ctx) {
        self.tasks.remove(&msg.token);
    }
}

impl Handler<JobsProgressed> for HealthMonitor {
    type Result = ();

    fn handle(&mut self, msg: JobsProgressed, _: &mut Ctx) {
        let now = Instant::now();
        for token in msg.tokens {
            if let Some(w) = self.tasks.get_mut(&token) {
                if w.suspected {
                    tracing::info!(job = %w.job, lease = %token, "suspected job made progress again");
                }
                w.last = now;
                w.suspected = false;
            }
        }
    }
}
