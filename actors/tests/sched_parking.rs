//! Parking: a job no worker could ever hold is parked (said once per pass, not once per job)
//! without blocking the queue, and rejoins when capacity arrives, with its age whether aging is
//! on or off; cancel takes out queued and parked jobs and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/placement.rs"]
mod placement;

use cadre_actors::sched::{PlacerConfig, Waiting};
use cadre_actors::{Error, JobId, WorkerId};
use tokio::time::Instant;
use tracing::Level;

use placement::{cap, placed, placer, qj, res, secs, subscribed, GIB};

/// A node starting with many jobs no worker can hold said so once per job (two million lines
/// for a million jobs); a pass says it once, with a count and the first few ids.
#[test]
fn parking_many_jobs_is_one_line_per_pass_not_one_per_job() {
    let (events, _guard) = subscribed();
    let t0 = Instant::now();
    let mut p = placer(
        PlacerConfig::default(),
        t0,
        &[(1, cap(4000, 16 * GIB, &[]))],
    );
    for job in 1..=1000 {
        p.enqueue(qj(job, 0, res(1000, GIB, 1), 1, t0));
    }
    while !p.queue().is_empty() {
        assert!(p.decide(t0).is_none(), "no worker has a GPU");
    }
    p.report();
    let warned = events.at(Level::WARN);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].get("jobs").map(String::as_str), Some("1000"));
    assert_eq!(
        warned[0].get("first").map(String::as_str),
        Some("1, 2, 3, 4, 5, ...")
    );
    p.add_worker(WorkerId(2), &cap(4000, 16 * GIB, &[0]))
        .unwrap();
    assert_eq!(
        p.queue().len(),
        1000,
        "capacity arrived: all of them rejoin"
    );
    p.report();
    assert_eq!(events.at(Level::WARN).len(), 1, "rejoining is no warning");
}

#[test]
fn an_unplaceable_job_is_parked_without_blocking_and_rejoins_when_capacity_arrives() {
    let (events, _guard) = subscribed();
    let t0 = Instant::now();
    let mut p = placer(
        PlacerConfig::default(),
        t0,
        &[(1, cap(4000, 16 * GIB, &[]))],
    );
    p.enqueue(qj(1, 100, res(1000, GIB, 1), 1, t0)); // a GPU job on a CPU-only cluster
    p.enqueue(qj(2, 0, res(1000, GIB, 0), 1, t0));
    p.enqueue(qj(3, 0, res(1000, GIB, 0), 1, t0));
    assert_eq!(p.waiting(JobId(1)), Some(Waiting::Queued { position: 0 }));
    // Old enough for a head reservation, yet it does not hold anyone up.
    assert_eq!(placed(p.decide(t0 + secs(3600))), 2);
    let Some(Waiting::Unplaceable { reason }) = p.waiting(JobId(1)) else {
        panic!("parked: {:?}", p.waiting(JobId(1)));
    };
    assert!(reason.contains("1 GPU(s)"), "{reason}");
    assert!(!p.queue().contains(JobId(1)));
    assert_eq!(p.waiting(JobId(3)), Some(Waiting::Queued { position: 0 }));
    assert_eq!(p.waiting_len(), 2, "parked jobs still count as waiting");
    assert!(
        !p.enqueue(qj(1, 100, res(1000, GIB, 1), 1, t0)),
        "already parked"
    );
    p.report();
    let warned = events.at(Level::WARN);
    assert!(
        warned
            .iter()
            .any(|f| f.get("jobs").map(String::as_str) == Some("1")
                && f.get("first").map(String::as_str) == Some("1")),
        "{warned:?}"
    );
    assert_eq!(placed(p.decide(t0 + secs(3601))), 3);
    assert_eq!(p.decide(t0 + secs(3602)), None);

    // Capacity that still cannot hold it leaves it parked.
    p.add_worker(WorkerId(2), &cap(500, GIB, &[0])).unwrap();
    assert!(matches!(
        p.waiting(JobId(1)),
        Some(Waiting::Unplaceable { .. })
    ));
    // Capacity that can brings it back, and it is placed.
    p.add_worker(WorkerId(3), &cap(2000, 4 * GIB, &[0, 1]))
        .unwrap();
    assert_eq!(p.waiting(JobId(1)), Some(Waiting::Queued { position: 0 }));
    let g = p.decide(t0 + secs(3603)).unwrap();
    assert_eq!(
        (g.job, g.grants[0].worker, g.grants[0].gpus.len()),
        (JobId(1), WorkerId(3), 1)
    );
    assert_eq!(p.waiting_len(), 0);
    assert!(matches!(
        p.add_worker(WorkerId(3), &cap(1, 1, &[])),
        Err(Error::DuplicateWorker { .. })
    ));
    p.capacity().check().unwrap();

    // A drained cluster parks; reopening brings jobs back. Same for GPU health.
    p.set_accepting(WorkerId(1), false).unwrap();
    p.set_accepting(WorkerId(3), false).unwrap();
    p.set_accepting(WorkerId(2), false).unwrap();
    p.enqueue(qj(4, 0, res(100, GIB, 0), 1, t0 + secs(3604)));
    assert_eq!(p.decide(t0 + secs(3604)), None);
    assert!(matches!(
        p.waiting(JobId(4)),
        Some(Waiting::Unplaceable { .. })
    ));
    p.set_accepting(WorkerId(2), true).unwrap();
    assert_eq!(p.waiting(JobId(4)), Some(Waiting::Queued { position: 0 }));
    assert_eq!(placed(p.decide(t0 + secs(3605))), 4);

    p.set_accepting(WorkerId(3), true).unwrap();
    for i in [0, 1] {
        assert_eq!(
            p.set_gpu_health(WorkerId(3), i, false).unwrap(),
            (i == g.grants[0].gpus[0]).then_some(JobId(1))
        );
    }
    p.set_gpu_health(WorkerId(2), 0, false).unwrap();
    p.enqueue(qj(5, 0, res(100, GIB, 1), 1, t0 + secs(3606)));
    assert_eq!(p.decide(t0 + secs(3606)), None);
    assert!(matches!(
        p.waiting(JobId(5)),
        Some(Waiting::Unplaceable { .. })
    ));
    p.set_gpu_health(WorkerId(3), 1, true).unwrap();
    assert_eq!(p.waiting(JobId(5)), Some(Waiting::Queued { position: 0 }));
    p.release(JobId(1)).unwrap();
    let on3 = p.decide(t0 + secs(3607)).unwrap();
    assert_eq!(
        (on3.job, on3.grants[0].worker, on3.grants[0].gpus.clone()),
        (JobId(5), WorkerId(3), vec![1])
    );
    p.capacity().check().unwrap();

    // A gang that needs a second worker is parked until one joins.
    let mut p = placer(PlacerConfig::default(), t0, &[(1, cap(2000, 4 * GIB, &[]))]);
    p.enqueue(qj(1, 0, res(2000, GIB, 0), 2, t0));
    assert_eq!(p.decide(t0), None);
    assert!(matches!(
        p.waiting(JobId(1)),
        Some(Waiting::Unplaceable { .. })
    ));
    p.add_worker(WorkerId(2), &cap(2000, 4 * GIB, &[])).unwrap();
    assert_eq!(p.decide(t0).unwrap().grants.len(), 2);
}

#[test]
fn a_parked_job_rejoins_with_its_age_when_aging_is_on() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let config = PlacerConfig {
        aging: Some(secs(1)),
        ..PlacerConfig::default()
    };
    let mut p = placer(config, t0, &[(1, cap(4000, 16 * GIB, &[]))]);
    p.enqueue(qj(1, 0, res(8000, GIB, 0), 1, t0));
    assert_eq!(p.decide(t0), None);
    assert!(matches!(
        p.waiting(JobId(1)),
        Some(Waiting::Unplaceable { .. })
    ));
    p.enqueue(qj(2, 0, res(1000, GIB, 0), 1, t0 + secs(5)));
    p.add_worker(WorkerId(2), &cap(8000, 16 * GIB, &[]))
        .unwrap();
    assert_eq!(p.waiting(JobId(1)), Some(Waiting::Queued { position: 0 }));
    assert_eq!(p.waiting(JobId(2)), Some(Waiting::Queued { position: 1 }));
    assert_eq!(placed(p.decide(t0 + secs(6))), 1);
}

#[test]
fn a_parked_job_rejoins_with_its_age_when_aging_is_off() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let config = PlacerConfig {
        aging: None,
        ..PlacerConfig::default()
    };
    let mut p = placer(config, t0, &[(1, cap(4000, 16 * GIB, &[]))]);
    p.enqueue(qj(1, 0, res(8000, GIB, 0), 1, t0));
    assert_eq!(p.decide(t0), None);
    assert!(matches!(
        p.waiting(JobId(1)),
        Some(Waiting::Unplaceable { .. })
    ));
    p.enqueue(qj(2, 0, res(1000, GIB, 0), 1, t0 + secs(5)));
    p.add_worker(WorkerId(2), &cap(8000, 16 * GIB, &[]))
        .unwrap();
    // "rejoins it, keeping its age": FIFO within priority 0 puts job 1 (t0) before job 2 (t0+5s).
    assert_eq!(p.waiting(JobId(1)), Some(Waiting::Queued { position: 0 }));
    assert_eq!(placed(p.decide(t0 + secs(6))), 1);
}

#[test]
fn cancel_takes_out_queued_and_parked_jobs_and_nothing_else() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let mut p = placer(
        PlacerConfig::default(),
        t0,
        &[(1, cap(4000, 16 * GIB, &[]))],
    );
    p.enqueue(qj(1, 10, res(1000, GIB, 0), 1, t0));
    p.enqueue(qj(2, 20, res(1000, GIB, 2), 1, t0)); // examined first, parked
    p.enqueue(qj(3, 0, res(1000, GIB, 0), 1, t0));
    p.enqueue(qj(4, -5, res(1000, GIB, 0), 1, t0));
    assert_eq!(placed(p.decide(t0)), 1);
    assert!(matches!(
        p.waiting(JobId(2)),
        Some(Waiting::Unplaceable { .. })
    ));
    assert_eq!(p.waiting_len(), 3);

    assert!(p.cancel(JobId(3)), "queued");
    assert_eq!(p.waiting(JobId(3)), None);
    assert_eq!(p.waiting(JobId(4)), Some(Waiting::Queued { position: 0 }));
    assert!(p.cancel(JobId(2)), "parked");
    assert_eq!(p.waiting(JobId(2)), None);
    assert_eq!(p.waiting_len(), 1);
    assert!(!p.cancel(JobId(2)), "twice");
    assert!(!p.cancel(JobId(99)), "unknown");
    assert!(!p.cancel(JobId(1)), "placed: released, not cancelled");
    assert!(p.capacity().reservation(JobId(1)).is_some());

    // A cancelled parked job does not come back with capacity; the cancelled queued one is
    // never placed.
    p.add_worker(WorkerId(2), &cap(4000, 16 * GIB, &[0, 1]))
        .unwrap();
    assert_eq!(p.waiting(JobId(2)), None);
    assert_eq!(placed(p.decide(t0)), 4);
    assert_eq!(p.decide(t0), None);
    assert_eq!(p.capacity().reserved_jobs(), 2);
    // And it may be queued again afresh.
    assert!(p.enqueue(qj(2, 20, res(1000, GIB, 2), 1, t0)));
    assert_eq!(placed(p.decide(t0)), 2);
}
