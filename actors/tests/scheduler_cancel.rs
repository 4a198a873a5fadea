//! The real scheduler with a journal in a temporary directory, cancelling jobs: queued ones at
//! once and running ones through their worker, a cancelled job whose lease runs out, and a
//! cancel of a placement whose lease record is not yet durable.
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cadre_actors::job::JobState;
use cadre_actors::protocol::{KillReason, TaskEnd};
use cadre_actors::scheduler::{CancelJob, CancelOutcome};
use cadre_actors::{Error, JobId};
use tokio::time::sleep;

use support::{lock, ms, run, sched_job, until, SchedRig, LONG_TTL};

#[test]
fn scheduler_cancels_queued_jobs_at_once_and_running_ones_through_their_worker() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        // No worker yet: the job waits, and a cancel ends it durably at once.
        let [queued] = rig.submit(vec![sched_job("queued", 0)]).await[..] else {
            panic!("one id");
        };
        assert_eq!(rig.view(queued).await.state, JobState::Queued);
        let outcome = rig.sched.send(CancelJob(queued)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelled);
        assert_eq!(rig.view(queued).await.state, JobState::Cancelled);
        let again = rig.sched.send(CancelJob(queued)).await.unwrap();
        assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
        let unknown = rig.sched.send(CancelJob(JobId(999))).await.unwrap();
        assert!(
            matches!(unknown, Err(Error::UnknownJob { .. })),
            "{unknown:?}"
        );

        let w = rig.register(0, 4000).await;
        let [job] = rig.submit(vec![sched_job("running", 3)]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(a.job, job, "the cancelled job is never placed");
        rig.started(w, &a).await.unwrap();
        rig.until_state(job, JobState::Running).await;
        let outcome = rig.sched.send(CancelJob(job)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelling);
        until("the kill", Duration::from_secs(1), || {
            !rig.fake(0).kills().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake(0).kills(),
            vec![(job, a.token, KillReason::Cancelled)]
        );
        // Still running until its worker confirms.
        assert_eq!(rig.view(job).await.state, JobState::Running);
        rig.finished(
            w,
            job,
            a.token,
            TaskEnd::Killed {
                reason: KillReason::Cancelled,
            },
        )
        .await
        .unwrap();
        let view = rig.until_state(job, JobState::Cancelled).await;
        assert_eq!(view.attempt, 1, "a cancelled job is not retried");
        sleep(ms(500)).await;
        assert_eq!(rig.fake(0).assigns().len(), 1);
        rig.stop().await;
    });
}

/// BUG (see the report): a running job the user cancelled, whose worker never confirms the
/// kill, ends `failed` instead of `cancelled` when its lease then runs out and it has no
/// retries left (`Scheduler::lose` only turns a cancel into `cancelled` when the loss
/// requeued the job).
#[test]
fn scheduler_cancelled_job_whose_lease_runs_out_ends_cancelled() {
    let ttl = Duration::from_secs(1);
    run(|_| async move {
        let rig = SchedRig::start(ttl, 1).await;
        let w = rig.register(0, 4000).await;
        let [job] = rig.submit(vec![sched_job("a", 0)]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        rig.started(w, &a).await.unwrap();
        let outcome = rig.sched.send(CancelJob(job)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelling);
        // The worker never answers; the lease runs out.
        sleep(ttl * 3).await;
        let view = rig.view(job).await;
        assert_eq!(view.state, JobState::Cancelled, "{view:?}");
        rig.stop().await;
    });
}

/// A cancel that arrives while a placement's lease record is still on its way to disk: the
/// kill goes out before the assignment, so a worker would ignore it (it does not know the token
/// yet) and then run the task; the scheduler must not assign a cancelled placement. (This
/// failed before 8aa8a43: the job stayed `running` and the workload never saw a cancel.)
#[test]
fn scheduler_cancel_of_a_placement_not_yet_durable_still_stops_the_task() {
    run(|_| async {
        let rig = SchedRig::start(Duration::from_secs(2), 0).await;
        let [job] = rig.submit(vec![sched_job("a", 0)]).await[..] else {
            panic!("one id");
        };
        // A real worker joins now; its registration places the job at once.
        let (seen, _logs) = rig.add_real_worker().await;
        // Cancel as soon as the job is leased.
        while rig.view(job).await.state != JobState::Leased {
            tokio::task::yield_now().await;
        }
        let outcome = rig.sched.send(CancelJob(job)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelling);
        sleep(Duration::from_secs(10)).await;
        let view = rig.view(job).await;
        assert_eq!(
            view.state,
            JobState::Cancelled,
            "still {} 10 s after the cancel; the workload saw its cancel: {}",
            view.state,
            !lock(&seen).cancelled.is_empty()
        );
        // If the task ran at all, it was stopped.
        let (runs, cancelled) = {
            let seen = lock(&seen);
            (seen.runs.clone(), seen.cancelled.clone())
        };
        assert_eq!(runs, cancelled);
        rig.stop().await;
    });
}
