//! Two retry budgets, on the real scheduler with a fake worker: a job's own failure (exit,
//! timeout) is retried only per its `max_retries`, after a backoff that doubles, and a lost
//! attempt (the node's trouble) is requeued per `requeue`/`max_requeues` without spending the
//! job's own retries. A job waiting out its backoff can be cancelled, and keeps waiting across
//! a scheduler restart.
//!
//! Time moves through `tokio::time` on a paused clock: every "not before" is virtual time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cadre_actors::job::JobState;
use cadre_actors::protocol::TaskEnd;
use cadre_actors::sched::Waiting;
use cadre_actors::scheduler::{CancelJob, CancelOutcome};
use tokio::time::{sleep, Instant};

use support::{run, sched_job, SchedRig, LEASE_LOST, LONG_TTL};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_failed_attempt_is_retried_after_a_doubling_backoff_then_the_job_fails() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register(0, 4000).await;
        let mut spec = sched_job("flaky", 0);
        spec.max_retries = 2;
        spec.retry_backoff_secs = 10;
        let [job] = rig.submit(vec![spec]).await[..] else {
            panic!("one id");
        };
        let first = rig.until_assigns(0, 1).await.remove(0);
        rig.started(w, &first).await.unwrap();
        let failed_at = Instant::now();
        rig.finished(w, job, first.token, TaskEnd::Exited { code: 3 })
            .await
            .unwrap();
        let view = rig.until_state(job, JobState::Queued).await;
        assert_eq!((view.attempt, view.failures, view.requeues), (2, 1, 0));
        assert!(
            matches!(view.waiting, Some(Waiting::Retry { failures: 1, .. })),
            "{:?}",
            view.waiting
        );
        assert_eq!(view.last_failure.unwrap().exit_code, Some(3));
        // Not placed before its backoff is over, then placed.
        sleep(secs(9)).await;
        assert_eq!(rig.fake(0).assigns().len(), 1, "placed during its backoff");
        let second = rig.until_assigns(0, 2).await.remove(1);
        assert!(failed_at.elapsed() >= secs(10));
        assert_eq!(second.attempt, 2);
        rig.started(w, &second).await.unwrap();
        let failed_at = Instant::now();
        rig.finished(w, job, second.token, TaskEnd::TimedOut)
            .await
            .unwrap();
        // The second retry waits twice as long.
        sleep(secs(19)).await;
        assert_eq!(rig.fake(0).assigns().len(), 2, "the backoff did not double");
        let third = rig.until_assigns(0, 3).await.remove(2);
        assert!(failed_at.elapsed() >= secs(20));
        rig.started(w, &third).await.unwrap();
        rig.finished(w, job, third.token, TaskEnd::Exited { code: 1 })
            .await
            .unwrap();
        let view = rig.until_state(job, JobState::Failed).await;
        assert_eq!((view.attempt, view.failures), (3, 2));
        assert_eq!(view.outcome.unwrap().exit_code, Some(1));
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_jobs_retried_total", &[]), 2);
    assert_eq!(
        obs.counter("cadre_jobs_retried_total", &[("state", "timed_out")]),
        1
    );
}

#[test]
fn a_lost_attempt_is_requeued_without_spending_the_jobs_own_retries() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register(0, 4000).await;
        // No retries of its own, one requeue.
        let mut spec = sched_job("once", 1);
        spec.max_retries = 0;
        let [job] = rig.submit(vec![spec]).await[..] else {
            panic!("one id");
        };
        let first = rig.until_assigns(0, 1).await.remove(0);
        rig.started(w, &first).await.unwrap();
        rig.finished(w, job, first.token, LEASE_LOST).await.unwrap();
        let second = rig.until_assigns(0, 2).await.remove(1);
        assert_eq!(second.attempt, 2, "requeued at once, no backoff");
        let view = rig.view(job).await;
        assert_eq!((view.requeues, view.failures), (1, 0));
        rig.started(w, &second).await.unwrap();
        rig.finished(w, job, second.token, TaskEnd::Exited { code: 2 })
            .await
            .unwrap();
        let view = rig.until_state(job, JobState::Failed).await;
        assert_eq!(view.attempt, 2, "its own failure had no retry");

        // A job that must not run twice fails at its first loss.
        let mut spec = sched_job("never-twice", 5);
        spec.requeue = false;
        let [job] = rig.submit(vec![spec]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 3).await.remove(2);
        rig.started(w, &a).await.unwrap();
        rig.finished(w, job, a.token, LEASE_LOST).await.unwrap();
        let view = rig.until_state(job, JobState::Failed).await;
        assert_eq!(view.attempt, 1);
        assert!(
            view.outcome
                .and_then(|o| o.error)
                .is_some_and(|e| e.contains("requeue: false")),
            "the outcome says why it was not run again"
        );
        rig.stop().await;
    });
}

#[test]
fn a_job_in_its_backoff_is_cancelled_at_once_and_waits_it_out_across_a_restart() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register(0, 4000).await;
        let mut spec = sched_job("retried", 0);
        spec.max_retries = 3;
        spec.retry_backoff_secs = 30;
        let [a, b] = rig.submit(vec![spec.clone(), spec]).await[..] else {
            panic!("two ids");
        };
        let assigns = rig.until_assigns(0, 2).await;
        for (job, assign) in [(a, &assigns[0]), (b, &assigns[1])] {
            rig.started(w, assign).await.unwrap();
            rig.finished(w, job, assign.token, TaskEnd::Exited { code: 1 })
                .await
                .unwrap();
            rig.until_state(job, JobState::Queued).await;
        }
        // Cancelled while it waits: at once, and it is never placed.
        let cancelled = rig.sched.send(CancelJob(a)).await.unwrap().unwrap();
        assert_eq!(cancelled, CancelOutcome::Cancelled);
        // The other survives a restart still in its backoff.
        rig.root.terminate_child("scheduler").await.unwrap();
        rig.root.restart_child("scheduler").await.unwrap();
        let w = rig.register(0, 4000).await;
        let view = rig.view(b).await;
        assert!(
            matches!(view.waiting, Some(Waiting::Retry { .. })),
            "{:?}",
            view.waiting
        );
        sleep(secs(27)).await;
        assert_eq!(rig.fake(0).assigns().len(), 2, "placed during its backoff");
        let again = rig.until_assigns(0, 3).await.remove(2);
        assert_eq!((again.job, again.attempt), (b, 2));
        rig.started(w, &again).await.unwrap();
        rig.finished(w, b, again.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(b, JobState::Succeeded).await;
        assert_eq!(rig.view(a).await.state, JobState::Cancelled);
        rig.stop().await;
    });
}
