//! Retention on the real scheduler: ended jobs beyond the policy (count, age) are pruned by a
//! journaled record, answered "pruned by retention" afterwards (also after a restart, which
//! replays the pruning), their files handed to the janitor once the record is durable, a job
//! that has not ended is never pruned, and a disk fuller than the policy allows prunes ended
//! jobs early.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_actors::job::JobState;
use cadre_actors::protocol::TaskEnd;
use cadre_actors::scheduler::{DiskProbe, GetJob, Janitor, PrunedJob, Retention};
use cadre_actors::{Error, JobId};
use cadre_cpu::disk::DiskSpace;
use tokio::time::sleep;

use support::{lock, run, sched_job, RigOptions, SchedRig, Scratch, LONG_TTL};

fn janitor() -> (Janitor, Arc<Mutex<Vec<PrunedJob>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let janitor: Janitor = Arc::new(move |jobs: Vec<PrunedJob>| lock(&s).extend(jobs));
    (janitor, seen)
}

fn keep(max_jobs: usize, max_age: Duration) -> Retention {
    Retention {
        max_age,
        max_jobs,
        every: Duration::from_millis(100),
        batch: 4,
        ..Retention::default()
    }
}

/// Runs `n` jobs to success on fake worker 0.
async fn run_jobs(rig: &SchedRig, n: usize, already: usize) -> Vec<JobId> {
    let w = rig.register(0, 64_000).await;
    let specs = (0..n).map(|i| sched_job(&format!("j{i}"), 0)).collect();
    let ids = rig.submit(specs).await;
    let assigns = rig.until_assigns(0, already + n).await;
    for a in &assigns[already..] {
        rig.started(w, a).await.unwrap();
        rig.finished(w, a.job, a.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
    }
    for &id in &ids {
        rig.until_state(id, JobState::Succeeded).await;
    }
    ids
}

#[test]
fn ended_jobs_beyond_the_count_are_pruned_and_stay_pruned_across_a_restart() {
    let obs = run(|_| async {
        let (janitor, cleaned) = janitor();
        let options = RigOptions {
            retention: keep(5, Duration::from_secs(24 * 3600)),
            janitor: Some(janitor),
            ..RigOptions::default()
        };
        let rig = SchedRig::start_full(Scratch::new("journal"), LONG_TTL, 1, options).await;
        let ids = run_jobs(&rig, 12, 0).await;
        // A job that has not ended is never pruned, whatever the count.
        let [waiting] = rig.submit(vec![sched_job("queued", 0)]).await[..] else {
            panic!("one id");
        };
        sleep(Duration::from_millis(500)).await;
        let mut pruned = Vec::new();
        let mut kept = Vec::new();
        for &id in &ids {
            match rig.sched.send(GetJob(id)).await.unwrap() {
                Err(Error::Pruned { job }) => pruned.push(job),
                Ok(view) => kept.push(view.id),
                Err(other) => panic!("job {id}: {other}"),
            }
        }
        assert_eq!(kept, ids[7..], "the newest five ended jobs are kept");
        assert_eq!(pruned, ids[..7], "the oldest go first");
        assert_eq!(
            rig.view(waiting).await.state,
            JobState::Leased,
            "placed, not pruned"
        );
        let mut janitored: Vec<JobId> = lock(&cleaned).iter().map(|p| p.job).collect();
        janitored.sort();
        assert_eq!(
            janitored, pruned,
            "the janitor heard of each pruned job once"
        );
        // An id never given out is unknown, not pruned.
        assert!(matches!(
            rig.sched.send(GetJob(JobId(10_000))).await.unwrap(),
            Err(Error::UnknownJob { .. })
        ));

        // The pruning is journaled: a restarted scheduler does not bring them back.
        rig.root.terminate_child("scheduler").await.unwrap();
        rig.root.restart_child("scheduler").await.unwrap();
        for &id in &pruned {
            assert!(
                matches!(
                    rig.sched.send(GetJob(id)).await.unwrap(),
                    Err(Error::Pruned { .. })
                ),
                "job {id} came back"
            );
        }
        for &id in &kept {
            assert_eq!(rig.view(id).await.state, JobState::Succeeded);
        }
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_jobs_pruned_total", &[]), 7);
}

#[test]
fn ended_jobs_older_than_the_age_are_pruned() {
    run(|_| async {
        let (janitor, cleaned) = janitor();
        let options = RigOptions {
            // Any job that has ended is old enough: wall-clock milliseconds pass meanwhile.
            retention: keep(1_000, Duration::from_millis(1)),
            janitor: Some(janitor),
            ..RigOptions::default()
        };
        let rig = SchedRig::start_full(Scratch::new("journal"), LONG_TTL, 1, options).await;
        let ids = run_jobs(&rig, 6, 0).await;
        std::thread::sleep(Duration::from_millis(5));
        sleep(Duration::from_millis(500)).await;
        for &id in &ids {
            assert!(
                matches!(
                    rig.sched.send(GetJob(id)).await.unwrap(),
                    Err(Error::Pruned { .. })
                ),
                "job {id} is older than the policy allows"
            );
        }
        assert_eq!(lock(&cleaned).len(), 6);
        assert!(lock(&cleaned).iter().all(|p| p.tasks == 1 && !p.command));
        rig.stop().await;
    });
}

/// Which of `ids` the scheduler answers "pruned".
async fn pruned_of(rig: &SchedRig, ids: &[JobId]) -> Vec<JobId> {
    let mut pruned = Vec::new();
    for &id in ids {
        match rig.sched.send(GetJob(id)).await.unwrap() {
            Err(Error::Pruned { job }) => pruned.push(job),
            Ok(_) => {}
            Err(other) => panic!("job {id}: {other}"),
        }
    }
    pruned
}

/// What the disk stand-in answers when it is to fail.
const UNREADABLE: u64 = u64::MAX;

/// Past the disk limit, ended jobs go early, oldest first, whatever the count allows (a share
/// of those kept per pass, here the batch of 4), and their files go to the janitor; a disk that
/// cannot be read ends pressure (one warning, each failure counted), and once the disk is below
/// the limit again pruning stops: the count and the age alone decide.
#[test]
fn a_disk_fuller_than_the_limit_prunes_ended_jobs_early_until_it_is_not() {
    let count = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&count);
    let obs = run(|_| async move {
        // A disk of 100 bytes, half full.
        let free = Arc::new(AtomicU64::new(50));
        let f = Arc::clone(&free);
        let probe = DiskProbe(Arc::new(move || {
            let free_bytes = f.load(Ordering::SeqCst);
            if free_bytes == UNREADABLE {
                return Err(std::io::Error::other("stale file handle"));
            }
            Ok(DiskSpace {
                free_bytes,
                total_bytes: 100,
                used_bytes: 100 - free_bytes,
            })
        }));
        let (janitor, cleaned) = janitor();
        let options = RigOptions {
            retention: Retention {
                max_disk_used_percent: 90,
                disk: Some(probe),
                // Jobs that ended just now go too (the wall clock does not follow the test's).
                pressure_min_age: Duration::ZERO,
                ..keep(1_000, Duration::from_secs(24 * 3600))
            },
            janitor: Some(janitor),
            ..RigOptions::default()
        };
        let rig = SchedRig::start_full(Scratch::new("journal"), LONG_TTL, 1, options).await;
        let ids = run_jobs(&rig, 30, 0).await;
        sleep(Duration::from_millis(300)).await;
        assert!(
            pruned_of(&rig, &ids).await.is_empty(),
            "pruned below the limit"
        );

        free.store(5, Ordering::SeqCst);
        let mut pruned = Vec::new();
        for _ in 0..100 {
            pruned = pruned_of(&rig, &ids).await;
            if pruned.len() >= 10 {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        assert!(pruned.len() >= 10, "only {} pruned early", pruned.len());
        assert_eq!(pruned, ids[..pruned.len()], "the oldest go first");

        // A disk that cannot be read ends pressure: no pruning on a stale reading.
        free.store(UNREADABLE, Ordering::SeqCst);
        sleep(Duration::from_millis(300)).await;
        let unreadable = pruned_of(&rig, &ids).await;
        sleep(Duration::from_millis(500)).await;
        assert_eq!(
            pruned_of(&rig, &ids).await,
            unreadable,
            "pruning went on while the disk could not be read"
        );

        free.store(50, Ordering::SeqCst);
        sleep(Duration::from_millis(300)).await;
        let settled = pruned_of(&rig, &ids).await;
        sleep(Duration::from_millis(500)).await;
        assert_eq!(
            pruned_of(&rig, &ids).await,
            settled,
            "pruning went on below the limit"
        );
        assert!(settled.len() < ids.len(), "everything was pruned");
        let mut janitored: Vec<JobId> = lock(&cleaned).iter().map(|p| p.job).collect();
        janitored.sort();
        assert_eq!(janitored, settled, "the janitor heard of each once");
        rig.stop().await;
        counted.store(settled.len() as u64, Ordering::SeqCst);
    });
    assert_eq!(
        obs.counter("cadre_jobs_pruned_total", &[("reason", "disk")]),
        count.load(Ordering::SeqCst)
    );
    assert!(
        !obs.events
            .with(
                tracing::Level::WARN,
                "the data's disk is fuller than retention allows: pruning ended jobs early"
            )
            .is_empty(),
        "no line said pruning began"
    );
    let unreadable = "cannot read how full the data's disk is: retention goes by age and count alone until it can";
    assert_eq!(obs.events.with(tracing::Level::WARN, unreadable).len(), 1);
    assert!(obs.counter("cadre_retention_disk_errors_total", &[]) >= 2);
}
