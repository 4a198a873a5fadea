//! The real scheduler with a journal in a temporary directory, driven by fake workers: fencing
//! tokens (stale finishes refused), lease renewal and expiry, a worker's death revoking its jobs,
//! a gang task's failure stopping the other task, and a real worker running, renewing and
//! cancelling jobs.
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cadre_actors::job::JobState;
use cadre_actors::protocol::{KillReason, Renew, TaskEnd, WorkerDead};
use cadre_actors::scheduler::{CancelJob, CancelOutcome};
use cadre_actors::{Error, FencingToken, JobId, WorkerId};
use serde_json::json;
use tokio::time::{sleep, sleep_until, Instant};

use support::{
    forever, lock, ms, run, sched_job, until, workload_spec, SchedRig, LEASE_LOST, LONG_TTL, TTL,
};

#[test]
fn scheduler_refuses_stale_finishes_and_ends_the_job_with_the_live_token() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register(0, 4000).await;
        let [job] = rig.submit(vec![sched_job("a", 0)]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!((a.job, a.attempt, a.task), (job, 1, 0));
        assert_eq!(a.grant.worker, w);
        assert_eq!(a.lease_ttl, LONG_TTL);
        assert_eq!(rig.view(job).await.state, JobState::Leased);
        // A start under another token is refused and changes nothing.
        let mut zombie = a.clone();
        zombie.token = FencingToken(a.token.0 + 1);
        let err = rig.started(w, &zombie).await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        assert_eq!(rig.view(job).await.state, JobState::Leased);
        rig.started(w, &a).await.unwrap();
        rig.until_state(job, JobState::Running).await;

        let done = TaskEnd::Completed {
            result: json!({ "answer": 42 }),
        };
        // Another token of the same job, and the right token from another worker: refused.
        let other = FencingToken(a.token.0 + 1);
        let err = rig.finished(w, job, other, done.clone()).await;
        assert!(
            matches!(err, Err(Error::StaleToken { presented, current: Some(c), .. }) if presented == other && c == a.token),
            "{err:?}"
        );
        let err = rig
            .finished(WorkerId(w.0 + 7), job, a.token, done.clone())
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        // ...and they changed nothing.
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Running, 1));
        assert!(view.outcome.is_none());

        rig.finished(w, job, a.token, done).await.unwrap();
        let view = rig.until_state(job, JobState::Succeeded).await;
        let outcome = view.outcome.unwrap();
        assert_eq!(outcome.result, Some(json!({ "answer": 42 })));
        assert_eq!(outcome.error, None);
        // The lease is gone: a repeat is refused too.
        let err = rig
            .finished(w, job, a.token, TaskEnd::Exited { code: 1 })
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        assert_eq!(rig.view(job).await.state, JobState::Succeeded);
        assert!(rig.fake(0).kills().is_empty());
        rig.stop().await;
    });
    assert_eq!(
        obs.counter(
            "cadre_lease_stale_token_rejections_total",
            &[("op", "finished")]
        ),
        3
    );
}

#[test]
fn scheduler_renewed_lease_lives_and_an_expired_one_is_requeued_with_a_larger_token() {
    let ttl = Duration::from_secs(1);
    run(|_| async move {
        let rig = SchedRig::start(ttl, 1).await;
        let w = rig.register(0, 4000).await;
        let [job] = rig.submit(vec![sched_job("a", 1)]).await[..] else {
            panic!("one id");
        };
        let first = rig.until_assigns(0, 1).await.remove(0);
        rig.started(w, &first).await.unwrap();
        // Renewed every 300 ms for 3 s: the lease lives.
        for _ in 0..10 {
            sleep(ms(300)).await;
            let reply = rig
                .sched
                .send(Renew {
                    worker: w,
                    leases: vec![(job, first.token)],
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(reply.renewed, vec![first.token]);
            assert!(reply.refused.is_empty());
        }
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Running, 1));
        // Silence: not lost before the time to live has run out since the last renewal...
        let silent = Instant::now();
        sleep_until(silent + ttl - ms(100)).await;
        assert_eq!(rig.fake(0).assigns().len(), 1);
        assert_eq!(rig.view(job).await.state, JobState::Running);
        // ...but after it: the old task is told to stop, and the job runs again as attempt 2
        // under a larger token.
        let second = rig.until_assigns(0, 2).await.remove(1);
        assert!(Instant::now() >= silent + ttl);
        assert_eq!((second.job, second.attempt), (job, 2));
        assert!(
            second.token > first.token,
            "{} !> {}",
            second.token,
            first.token
        );
        assert_eq!(
            rig.fake(0).kills(),
            vec![(job, first.token, KillReason::LeaseLost)]
        );
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Leased, 2));
        assert!(
            view.last_loss
                .as_deref()
                .is_some_and(|l| l.contains("expired")),
            "{:?}",
            view.last_loss
        );
        // The zombie's word is refused, and changes nothing.
        let err = rig
            .finished(w, job, first.token, TaskEnd::Completed { result: json!(1) })
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        let reply = rig
            .sched
            .send(Renew {
                worker: w,
                leases: vec![(job, first.token)],
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.refused, vec![(job, first.token)]);
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Leased, 2));
        // Attempt 2 is the last (one retry): its expiry fails the job.
        let view = rig.until_state(job, JobState::Failed).await;
        assert_eq!(view.attempt, 2);
        assert!(view
            .outcome
            .and_then(|o| o.error)
            .is_some_and(|e| e.contains("no requeues left")),);
        sleep(ttl * 3).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            2,
            "a failed job is not placed again"
        );
        rig.stop().await;
    });
}

#[test]
fn scheduler_worker_death_revokes_leased_and_running_jobs() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 2).await;
        let w = rig.register(0, 4000).await;
        let ids = rig
            .submit(vec![
                sched_job("running", 1),
                sched_job("leased", 1),
                sched_job("leased-no-retry", 0),
            ])
            .await;
        let assigns = rig.until_assigns(0, 3).await;
        let by_job = |job: JobId| assigns.iter().find(|a| a.job == job).unwrap().clone();
        let (running, leased) = (by_job(ids[0]), by_job(ids[1]));
        rig.started(w, &running).await.unwrap();
        rig.until_state(ids[0], JobState::Running).await;
        assert_eq!(rig.view(ids[1]).await.state, JobState::Leased);

        // Its process is gone (its connection closed): its jobs are requeued at once.
        rig.sched
            .send(WorkerDead {
                worker: w,
                reason: "test".to_owned(),
                exited: true,
            })
            .await
            .unwrap();
        for id in &ids[..2] {
            let view = rig.until_state(*id, JobState::Queued).await;
            assert_eq!(view.attempt, 2, "job {id}");
            assert!(view
                .last_loss
                .as_deref()
                .is_some_and(|l| l.contains("died")));
        }
        rig.until_state(ids[2], JobState::Failed).await;
        // The dead worker is unknown now, and its tokens are void.
        let err = rig
            .sched
            .send(Renew {
                worker: w,
                leases: vec![(ids[0], running.token)],
            })
            .await
            .unwrap();
        assert!(
            matches!(err, Err(Error::UnknownWorker { worker }) if worker == w),
            "{err:?}"
        );
        let err = rig
            .finished(w, ids[0], running.token, TaskEnd::Exited { code: 0 })
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");

        // A new worker gets both requeued jobs, under new tokens; the failed one stays failed.
        let w2 = rig.register(1, 4000).await;
        let again = rig.until_assigns(1, 2).await;
        sleep(ms(100)).await;
        assert_eq!(rig.fake(1).assigns().len(), 2);
        let mut jobs: Vec<JobId> = again.iter().map(|a| a.job).collect();
        jobs.sort();
        assert_eq!(jobs, vec![ids[0], ids[1]]);
        assert!(again.iter().all(|a| a.attempt == 2
            && a.grant.worker == w2
            && a.token > running.token.max(leased.token)));
        assert_eq!(rig.view(ids[2]).await.state, JobState::Failed);
        rig.stop().await;
    });
}

#[test]
fn scheduler_gang_task_failure_stops_the_other_task_and_fails_the_job() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 2).await;
        // Each worker has room for one task only.
        let w0 = rig.register(0, 1000).await;
        let w1 = rig.register(1, 1000).await;
        let mut spec = sched_job("gang", 0);
        spec.gang = 2;
        let [job] = rig.submit(vec![spec]).await[..] else {
            panic!("one id");
        };
        let a0 = rig.until_assigns(0, 1).await.remove(0);
        let a1 = rig.until_assigns(1, 1).await.remove(0);
        assert_eq!((a0.job, a1.job), (job, job));
        assert_ne!(a0.token, a1.token);
        assert_eq!((a0.grant.worker, a1.grant.worker), (w0, w1));
        let mut tasks = [a0.task, a1.task];
        tasks.sort_unstable();
        assert_eq!(tasks, [0, 1]);
        rig.started(w0, &a0).await.unwrap();
        rig.started(w1, &a1).await.unwrap();
        rig.until_state(job, JobState::Running).await;

        rig.finished(w0, job, a0.token, TaskEnd::Exited { code: 1 })
            .await
            .unwrap();
        until("the other task's kill", Duration::from_secs(1), || {
            !rig.fake(1).kills().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake(1).kills(),
            vec![(job, a1.token, KillReason::LeaseLost)]
        );
        assert!(
            rig.fake(0).kills().is_empty(),
            "the failed task was not killed"
        );
        // The job ends only once both tasks have.
        sleep(ms(100)).await;
        assert_eq!(rig.view(job).await.state, JobState::Running);
        rig.finished(w1, job, a1.token, LEASE_LOST).await.unwrap();
        let view = rig.until_state(job, JobState::Failed).await;
        assert_eq!(view.outcome.unwrap().exit_code, Some(1));
        rig.stop().await;
    });
}

#[test]
fn scheduler_and_a_real_worker_run_renew_and_cancel_jobs() {
    let obs = run(|obs| async move {
        let rig = SchedRig::start(TTL, 0).await;
        let (seen, _logs) = rig.add_real_worker().await;
        let [done] = rig
            .submit(vec![workload_spec(
                "counts",
                json!({ "steps": 20, "every_ms": 10 }),
            )])
            .await[..]
        else {
            panic!("one id");
        };
        let view = rig.until_state(done, JobState::Succeeded).await;
        assert_eq!(view.outcome.unwrap().result, Some(json!({ "steps": 20 })));
        // A job that runs until cancelled lives through three lease lifetimes on renewals.
        let [job] = rig.submit(vec![workload_spec("forever", forever())]).await[..] else {
            panic!("one id");
        };
        rig.until_state(job, JobState::Running).await;
        sleep(TTL * 3).await;
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Running, 1));
        assert!(obs.counter("cadre_progress_flushes_total", &[]) > 0);
        let outcome = rig.sched.send(CancelJob(job)).await.unwrap().unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelling);
        rig.until_state(job, JobState::Cancelled).await;
        assert_eq!(lock(&seen).cancelled, vec![job]);
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_worker_self_fences_total", &[]), 0);
    assert_eq!(obs.counter("cadre_lease_expirations_total", &[]), 0);
}

/// A worker that only went silent may be cut off and still running its task until it fences
/// itself, before its lease would run out: its job is queued again at once (recorded lost)
/// but placed only once that lease has run out, so the old attempt is dead before the new one
/// starts anywhere.
#[test]
fn a_silent_workers_jobs_run_again_only_after_its_leases_run_out() {
    run(|_| async {
        let ttl = Duration::from_secs(3);
        let rig = SchedRig::start(ttl, 2).await;
        let w = rig.register(0, 1000).await;
        let id = rig.submit(vec![sched_job("cut-off", 1)]).await[0];
        let first = rig.until_assigns(0, 1).await.remove(0);
        let granted = tokio::time::Instant::now();
        rig.started(w, &first).await.unwrap();
        rig.until_state(id, JobState::Running).await;
        rig.register(1, 1000).await;
        rig.sched
            .send(WorkerDead {
                worker: w,
                reason: "no heartbeat".to_owned(),
                exited: false,
            })
            .await
            .unwrap();
        let view = rig.until_state(id, JobState::Queued).await;
        assert_eq!(view.attempt, 2);
        // The other worker is free, but the lease could still be live on the silent one.
        sleep(ttl - granted.elapsed() - ms(200)).await;
        assert!(
            rig.fake(1).assigns().is_empty(),
            "placed while the old lease was live"
        );
        let again = rig.until_assigns(1, 1).await;
        assert!(granted.elapsed() >= ttl - ms(10), "{:?}", granted.elapsed());
        assert_eq!((again[0].job, again[0].attempt), (id, 2));
        rig.stop().await;
    });
}
