//! The real scheduler restarted on an existing journal: an interrupted job requeued afresh (not
//! with its age) and a queued job keeping the age it earned.
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cadre_actors::sched::Grant;
use cadre_actors::store::{Record, Store, StoreOptions, Submission};
use cadre_actors::{FencingToken, JobId, WorkerId};
use cadre_cpu::{BackendSetting, IoEngine};

use support::{run, sched_job, SchedRig, Scratch, LONG_TTL};

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
