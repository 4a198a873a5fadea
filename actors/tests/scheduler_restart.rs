//! Restarts: the real scheduler restarted on an existing journal (an interrupted job requeued
//! afresh, not with its age; a queued job keeping the age it earned), a scheduler restarted
//! under an idle worker (which registers again and runs the next job), and a health monitor
//! restarted under a running job (which it still watches for progress).
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cadre_actors::job::JobState;
use cadre_actors::protocol::TaskEnd;
use cadre_actors::sched::Grant;
use cadre_actors::scheduler::TakeSnapshot;
use cadre_actors::store::{Record, Store, StoreOptions, Submission};
use cadre_actors::{FencingToken, JobId, WorkerId};
use cadre_cpu::{BackendSetting, IoEngine};
use serde_json::json;

use support::{run, sched_job, workload_spec, SchedRig, Scratch, LONG_TTL};

/// Writes a journal in `journal` holding a priority-0 job accepted two minutes ago (leased
/// when the node stopped, if `old_was_leased`; else still queued) and a priority-50 job
/// accepted now.
async fn journal_with_an_old_and_a_new_job(journal: &Scratch, old_was_leased: bool) {
    let engine = IoEngine::new(BackendSetting::Std).unwrap();
    let (mut store, _) = Store::open(journal.path(), engine, StoreOptions::default())
        .await
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut new = sched_job("new", 0);
    new.priority = 50;
    let jobs = vec![
        Submission::new(JobId(1), sched_job("old", 1), now_ms - 120_000),
        Submission::new(JobId(2), new, now_ms),
    ];
    store
        .commit(Record::Submitted { jobs })
        .await
        .unwrap()
        .await
        .unwrap();
    if old_was_leased {
        let leased = Record::Leased {
            job: JobId(1),
            attempt: 1,
            grants: vec![Grant {
                worker: WorkerId(1),
                task: 0,
                cpu_millis: 1000,
                memory_bytes: 1 << 20,
                gpus: Vec::new(),
            }],
            tokens: vec![FencingToken(1)],
            nodes: Vec::new(),
        };
        store.commit(leased).await.unwrap().await.unwrap();
    }
    store.close().await;
}

#[test]
fn scheduler_restart_requeues_an_interrupted_job_afresh_not_with_its_age() {
    run(|_| async {
        let journal = Scratch::new("journal");
        journal_with_an_old_and_a_new_job(&journal, true).await;
        let rig = SchedRig::start_in(journal, LONG_TTL, 1, None).await;
        // The old job was running when the node stopped: the restart queues it again as its
        // second attempt, afresh, as a retry while the node runs would be. The new job's 50
        // points put it first; counting the old one's two minutes since submission (run time
        // of its first attempt included) would have put the old one first.
        rig.register(0, 1000).await;
        let first = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(first.job, JobId(2));
        assert_eq!(rig.view(JobId(1)).await.attempt, 2);
        rig.stop().await;
    });
}

#[test]
fn scheduler_restart_keeps_the_age_a_queued_job_earned() {
    run(|_| async {
        let journal = Scratch::new("journal");
        // Before the restart: a job of priority 0 accepted two minutes ago, and one of priority
        // 50 accepted just now, both still queued.
        journal_with_an_old_and_a_new_job(&journal, false).await;
        let rig = SchedRig::start_in(journal, LONG_TTL, 1, None).await;
        // Room for one job at a time. At the default aging (a point per second waited) the old
        // job's 120 s outweigh the new one's 50 points: it goes first, as it would have without
        // the restart. A restart that forgot the wait would place the new one first.
        rig.register(0, 1000).await;
        let first = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(first.job, JobId(1));
        rig.stop().await;
    });
}

/// An idle worker used to skip its renewals, so it never learned that a restarted scheduler
/// had forgotten it: no worker was registered again and every later job waited forever.
#[test]
fn an_idle_worker_registers_again_after_the_scheduler_restarts_and_runs_the_next_job() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 0).await;
        let (_seen, _logs) = rig.add_real_worker().await;
        let [first] = rig
            .submit(vec![workload_spec("first", json!({ "steps": 2 }))])
            .await[..]
        else {
            panic!("one id");
        };
        rig.until_state(first, JobState::Succeeded).await;
        // The worker is idle now; the scheduler restarts and forgets every registration.
        rig.root.terminate_child("scheduler").await.unwrap();
        rig.root.restart_child("scheduler").await.unwrap();
        let [next] = rig
            .submit(vec![workload_spec("next", json!({ "steps": 2 }))])
            .await[..]
        else {
            panic!("one id");
        };
        rig.until_state(next, JobState::Succeeded).await;
        rig.stop().await;
    });
    let said = obs.events.with(
        tracing::Level::WARN,
        "scheduler no longer knows this worker: its tasks stop and it registers again",
    );
    assert_eq!(
        said.len(),
        1,
        "the worker said once why it registered again"
    );
}

/// A restarted health monitor used to forget every watch: a job that had stopped progressing
/// was never suspected again and ran on forever.
#[test]
fn a_restarted_health_monitor_still_stalls_a_job_that_stopped_progressing() {
    run(|_| async {
        let rig = SchedRig::start_with_health(LONG_TTL).await;
        let (_seen, _logs) = rig.add_real_worker().await;
        // One report every ten minutes against a one-second deadline: it stalls.
        let mut spec = workload_spec("silent", json!({ "every_ms": 600_000 }));
        spec.progress_deadline_secs = Some(1);
        spec.max_requeues = 0;
        let [job] = rig.submit(vec![spec]).await[..] else {
            panic!("one id");
        };
        rig.until_state(job, JobState::Running).await;
        rig.root.terminate_child("health").await.unwrap();
        rig.root.restart_child("health").await.unwrap();
        let view = rig.until_state(job, JobState::Failed).await;
        let error = view.outcome.and_then(|o| o.error).expect("an error");
        assert!(error.contains("no progress"), "{error}");
        rig.stop().await;
    });
}

/// A snapshot written a chunk at a time while jobs keep changing is exact: a scheduler
/// restarted from it (and the records after its cut) sees every job as it was.
#[test]
fn a_snapshot_taken_while_jobs_change_restores_every_job_after_a_restart() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register(0, 1_000_000).await;
        let specs = (0..3000)
            .map(|i| {
                let mut s = sched_job(&format!("j{i}"), 1);
                s.resources.cpu_millis = 1000;
                s
            })
            .collect();
        let ids = rig.submit(specs).await;
        let assigns = rig.until_assigns(0, 1000).await;
        // The snapshot is taken while half of the placed jobs end.
        let snapshot = rig.sched.send(TakeSnapshot);
        let ends = async {
            for a in &assigns[..500] {
                rig.started(w, a).await.unwrap();
                rig.finished(w, a.job, a.token, TaskEnd::Exited { code: 0 })
                    .await
                    .unwrap();
            }
        };
        let (done, ()) = tokio::join!(snapshot, ends);
        let done = done.unwrap().unwrap();
        assert!(done.jobs >= 3000 && done.steps >= 2, "{done:?}");
        let mut before = Vec::new();
        for &id in &ids {
            let v = rig.view(id).await;
            before.push((v.id, v.state, v.attempt));
        }
        rig.root.terminate_child("scheduler").await.unwrap();
        rig.root.restart_child("scheduler").await.unwrap();
        for (id, state, attempt) in before {
            let v = rig.view(id).await;
            // Leased jobs were interrupted by the restart: lost, then queued again.
            let expect = if state == JobState::Leased {
                (JobState::Queued, attempt + 1)
            } else {
                (state, attempt)
            };
            assert_eq!((v.state, v.attempt), expect, "job {id}");
        }
        rig.stop().await;
    });
}
