//! The health monitor on a paused clock: the phi-accrual detector (`phi`), worker deaths (a
//! silent worker declared dead once, a forgotten registration, a worker with one heartbeat) and
//! job stalls (no progress within one and a half deadlines, progress in time, unwatching, a
//! worker's death clearing its tasks' watches).
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::health::{phi, HealthConfig, HealthMonitor};
use cadre_actors::protocol::{
    ForgetWorker, Heartbeat, JobStalled, JobsProgressed, UnwatchJob, WatchJob, WorkerDead,
};
use cadre_actors::{FencingToken, JobId, WorkerId};
use cadre_supervisor::{SupervisedContext, SupervisorRef, SupervisorSpec, WorkerSpec};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::Level;

use support::{lock, ms, run};

#[test]
fn phi_is_small_at_the_mean_and_grows_beyond_it() {
    let (mean, std) = (200.0, 25.0);
    let at_mean = phi(mean, mean, std);
    assert!(at_mean < 0.5, "phi at the mean: {at_mean}");
    assert!(phi(100.0, mean, std) < at_mean, "earlier than the mean");
    let mut last = at_mean;
    for elapsed in [210.0, 250.0, 300.0, 350.0, 400.0, 600.0, 1_000.0] {
        let value = phi(elapsed, mean, std);
        assert!(value > last, "phi({elapsed}) = {value} not above {last}");
        last = value;
    }
    // Eight standard deviations late is far beyond a threshold of 8; far later stays finite.
    assert!(phi(mean + 8.0 * std, mean, std) > 8.0);
    let far = phi(1e9, mean, std);
    assert!(far.is_finite() && far > 8.0, "{far}");
    // A wider distribution is more forgiving at the same lateness.
    assert!(phi(300.0, mean, 100.0) < phi(300.0, mean, std));
}

/// Records the verdicts the health monitor sends, with when they came.
#[derive(Clone, Default)]
struct Verdicts {
    dead: Arc<Mutex<Vec<(Instant, WorkerDead)>>>,
    stalled: Arc<Mutex<Vec<(Instant, JobStalled)>>>,
}

impl Actor for Verdicts {
    type Context = SupervisedContext<Self>;
}

impl Handler<WorkerDead> for Verdicts {
    type Result = ();
    fn handle(&mut self, msg: WorkerDead, _: &mut Self::Context) {
        lock(&self.dead).push((Instant::now(), msg));
    }
}

impl Handler<JobStalled> for Verdicts {
    type Result = ();
    fn handle(&mut self, msg: JobStalled, _: &mut Self::Context) {
        lock(&self.stalled).push((Instant::now(), msg));
    }
}

impl Verdicts {
    fn dead(&self) -> Vec<WorkerId> {
        lock(&self.dead).iter().map(|(_, d)| d.worker).collect()
    }
    fn stalled(&self) -> Vec<(JobId, FencingToken)> {
        lock(&self.stalled)
            .iter()
            .map(|(_, s)| (s.job, s.token))
            .collect()
    }
}

const BEAT: Duration = Duration::from_millis(100);

struct HealthRig {
    monitor: Addr<HealthMonitor>,
    verdicts: Verdicts,
    root: SupervisorRef,
}

async fn health_rig() -> HealthRig {
    let verdicts = Verdicts::default();
    let v = verdicts.clone();
    let verdict_spec = WorkerSpec::new("verdicts", move || v.clone()).mailbox_capacity(1024);
    let verdict_addr = verdict_spec.addr();
    // The node's settings for a 100 ms heartbeat.
    let config = HealthConfig {
        dead: verdict_addr.clone().recipient(),
        stalled: verdict_addr.recipient(),
        expected_interval: BEAT,
        check_every: BEAT / 2,
        threshold: 8.0,
        window: 100,
        min_std: BEAT / 4,
        acceptable_pause: BEAT,
        resend: None,
    };
    let monitor_spec = WorkerSpec::new("health", move || HealthMonitor::new(config.clone()))
        .mailbox_capacity(1024);
    let monitor = monitor_spec.addr();
    let root = SupervisorSpec::one_for_one()
        .child(verdict_spec)
        .child(monitor_spec)
        .start("health-test")
        .await
        .unwrap();
    HealthRig {
        monitor,
        verdicts,
        root,
    }
}

#[test]
fn health_declares_a_silent_worker_dead_once_and_spares_a_live_one() {
    let obs = run(|_| async {
        let rig = health_rig().await;
        let (silent, live) = (WorkerId(7), WorkerId(8));
        // Both beat every 100 ms for 3 s: neither is suspected.
        for _ in 0..30 {
            rig.monitor.do_send(Heartbeat { worker: silent });
            rig.monitor.do_send(Heartbeat { worker: live });
            sleep(BEAT).await;
        }
        assert!(rig.verdicts.dead().is_empty(), "{:?}", rig.verdicts.dead());
        // `silent` stops; `live` keeps beating for 10 s more.
        let stopped = Instant::now();
        for _ in 0..100 {
            rig.monitor.do_send(Heartbeat { worker: live });
            sleep(BEAT).await;
        }
        assert_eq!(
            rig.verdicts.dead(),
            vec![silent],
            "the silent worker is reported exactly once, the live one never"
        );
        let (at, verdict) = lock(&rig.verdicts.dead)[0].clone();
        // Phi 8 with a 200 ms mean and a 25 ms deviation is about 330 ms of silence.
        assert!(
            at >= stopped + 2 * BEAT && at <= stopped + 10 * BEAT,
            "declared dead {:?} after the last heartbeat",
            at - stopped
        );
        assert!(
            verdict.reason.contains("no heartbeat"),
            "{}",
            verdict.reason
        );
        rig.root.stop().await.unwrap();
    });
    assert_eq!(
        obs.events
            .with(Level::ERROR, "worker declared dead by the failure detector")
            .len(),
        1
    );
}

#[test]
fn health_forgets_a_worker_whose_registration_is_gone() {
    let obs = run(|_| async {
        let rig = health_rig().await;
        let (gone, kept) = (WorkerId(7), WorkerId(8));
        for _ in 0..30 {
            rig.monitor.do_send(Heartbeat { worker: gone });
            rig.monitor.do_send(Heartbeat { worker: kept });
            sleep(BEAT).await;
        }
        // The scheduler dropped `gone` (it registered again under a new id): both fall silent,
        // and only `kept` is declared dead.
        rig.monitor.do_send(ForgetWorker { worker: gone });
        sleep(BEAT * 50).await;
        assert_eq!(rig.verdicts.dead(), vec![kept]);
        rig.root.stop().await.unwrap();
    });
    assert_eq!(
        obs.events
            .with(Level::ERROR, "worker declared dead by the failure detector")
            .len(),
        1
    );
}

#[test]
fn health_judges_a_worker_with_one_heartbeat_against_the_expected_interval() {
    run(|_| async {
        let rig = health_rig().await;
        rig.monitor.do_send(Heartbeat {
            worker: WorkerId(3),
        });
        sleep(BEAT).await;
        assert!(rig.verdicts.dead().is_empty(), "dead after one interval");
        sleep(BEAT * 20).await;
        assert_eq!(rig.verdicts.dead(), vec![WorkerId(3)]);
        rig.root.stop().await.unwrap();
    });
}

fn watch(job: u64, worker: u64, token: u64, deadline: Duration) -> WatchJob {
    WatchJob {
        job: JobId(job),
        worker: WorkerId(worker),
        token: FencingToken(token),
        deadline,
    }
}

#[test]
fn health_stalls_a_task_without_progress_after_one_and_a_half_deadlines() {
    let obs = run(|obs| async move {
        let rig = health_rig().await;
        let t0 = Instant::now();
        rig.monitor
            .send(watch(1, 1, 10, Duration::from_secs(1)))
            .await
            .unwrap();
        sleep_until(t0 + ms(950)).await;
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 0);
        assert!(
            rig.verdicts.stalled().is_empty(),
            "stalled before its deadline"
        );
        // Past the deadline: suspected (warned and counted), not yet stalled.
        sleep_until(t0 + ms(1450)).await;
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 1);
        assert!(
            rig.verdicts.stalled().is_empty(),
            "stalled before deadline * 1.5"
        );
        sleep_until(t0 + ms(1600)).await;
        assert_eq!(rig.verdicts.stalled(), vec![(JobId(1), FencingToken(10))]);
        // Reported once: the watch is gone after the report.
        sleep(Duration::from_secs(5)).await;
        assert_eq!(rig.verdicts.stalled().len(), 1);
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 1);
        rig.root.stop().await.unwrap();
    });
    assert_eq!(
        obs.events
            .with(
                Level::WARN,
                "job suspected: no progress within its deadline"
            )
            .len(),
        1
    );
}

#[test]
fn health_progress_in_time_prevents_and_clears_suspicion() {
    run(|obs| async move {
        let rig = health_rig().await;
        let deadline = Duration::from_secs(1);
        rig.monitor.send(watch(1, 1, 10, deadline)).await.unwrap();
        // Progress every 600 ms for 6 s: never suspected, never stalled.
        for _ in 0..10 {
            sleep(ms(600)).await;
            rig.monitor
                .send(JobsProgressed {
                    tokens: vec![FencingToken(10), FencingToken(99)],
                })
                .await
                .unwrap();
        }
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 0);
        assert!(rig.verdicts.stalled().is_empty());
        // Now silent until suspected, then one report of progress: the suspicion clears, and
        // a stall needs a whole deadline and a half counted from that progress.
        sleep(ms(1200)).await;
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 1);
        let progressed = Instant::now();
        rig.monitor
            .send(JobsProgressed {
                tokens: vec![FencingToken(10)],
            })
            .await
            .unwrap();
        sleep_until(progressed + ms(1450)).await;
        assert!(
            rig.verdicts.stalled().is_empty(),
            "a cleared suspicion still led to a stall"
        );
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 2);
        sleep_until(progressed + ms(1600)).await;
        assert_eq!(rig.verdicts.stalled(), vec![(JobId(1), FencingToken(10))]);
        rig.root.stop().await.unwrap();
    });
}

#[test]
fn health_unwatch_prevents_a_stall() {
    run(|obs| async move {
        let rig = health_rig().await;
        rig.monitor
            .send(watch(1, 1, 10, Duration::from_secs(1)))
            .await
            .unwrap();
        rig.monitor
            .send(watch(2, 1, 11, Duration::from_secs(1)))
            .await
            .unwrap();
        sleep(ms(500)).await;
        rig.monitor
            .send(UnwatchJob {
                token: FencingToken(10),
            })
            .await
            .unwrap();
        sleep(Duration::from_secs(5)).await;
        // Only the task still watched is reported.
        assert_eq!(rig.verdicts.stalled(), vec![(JobId(2), FencingToken(11))]);
        assert_eq!(obs.counter("cadre_jobs_suspected_total", &[]), 1);
        rig.root.stop().await.unwrap();
    });
}

#[test]
fn health_worker_death_clears_its_tasks_watches() {
    run(|_| async {
        let rig = health_rig().await;
        let (dying, live) = (WorkerId(1), WorkerId(2));
        for _ in 0..10 {
            rig.monitor.do_send(Heartbeat { worker: dying });
            rig.monitor.do_send(Heartbeat { worker: live });
            sleep(BEAT).await;
        }
        // A task on each worker, deadline 2 s; the first worker then goes silent.
        rig.monitor
            .send(watch(1, dying.0, 10, Duration::from_secs(2)))
            .await
            .unwrap();
        rig.monitor
            .send(watch(2, live.0, 20, Duration::from_secs(2)))
            .await
            .unwrap();
        for _ in 0..60 {
            rig.monitor.do_send(Heartbeat { worker: live });
            sleep(BEAT).await;
        }
        assert_eq!(rig.verdicts.dead(), vec![dying]);
        let (dead_at, _) = lock(&rig.verdicts.dead)[0].clone();
        // The dying worker's task is not reported stalled after its death; the live worker's
        // task (no progress either) is.
        assert_eq!(
            rig.verdicts.stalled(),
            vec![(JobId(2), FencingToken(20))],
            "a dead worker's task was reported stalled"
        );
        let (stalled_at, _) = lock(&rig.verdicts.stalled)[0].clone();
        assert!(dead_at < stalled_at);
        rig.root.stop().await.unwrap();
    });
}
