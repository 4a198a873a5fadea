//! The placer's decisions: the highest-priority job that fits goes first, backfill passes a
//! young head but never an old one, a gang that does not fit holds back no single task of its
//! shape, the backfill depth bounds a decision, a thousand random jobs are each placed once and
//! none is lost, and a decision records its duration and the queue depth.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/placement.rs"]
mod placement;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cadre_actors::metrics as m;
use cadre_actors::sched::{Grant, PlacerConfig, Waiting};
use cadre_actors::{JobId, Resources, WorkerId};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use placement::{cap, pick, placed, placer, qj, res, secs, subscribed, GIB};

#[test]
fn decide_places_the_highest_priority_job_that_fits() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let mut p = placer(
        PlacerConfig::default(),
        t0,
        &[(1, cap(8000, 16 * GIB, &[0, 1]))],
    );
    assert_eq!(p.decide(t0), None, "empty queue");
    assert!(p.enqueue(qj(1, 0, res(1000, GIB, 0), 1, t0)));
    assert!(p.enqueue(qj(2, 50, res(2000, GIB, 1), 1, t0)));
    assert!(p.enqueue(qj(3, 10, res(1000, GIB, 0), 2, t0)));
    assert!(
        !p.enqueue(qj(3, 999, res(1, 1, 0), 1, t0)),
        "already queued"
    );
    assert_eq!(p.waiting(JobId(1)), Some(Waiting::Queued { position: 2 }));

    let first = p.decide(t0).unwrap();
    assert_eq!(first.job, JobId(2));
    assert_eq!(first.grants.len(), 1);
    assert_eq!(first.grants[0].gpus.len(), 1);
    assert_eq!(
        p.capacity().reservation(JobId(2)),
        Some(first.grants.as_slice())
    );
    assert_eq!(p.waiting(JobId(2)), None, "out of the queue");
    let second = p.decide(t0).unwrap();
    assert_eq!((second.job, second.grants.len()), (JobId(3), 2));
    assert_eq!(p.waiting(JobId(1)), Some(Waiting::Queued { position: 0 }));
    assert_eq!(placed(p.decide(t0)), 1);
    assert_eq!(p.decide(t0), None);
    assert_eq!(p.waiting_len(), 0);
    assert_eq!(p.capacity().reserved_jobs(), 3);
    assert_eq!(p.capacity().summary().cpu_free, 8000 - 2000 - 2000 - 1000);
    p.capacity().check().unwrap();

    // A job still holding its reservation is not queued again (a caller skipped a release).
    assert!(!p.enqueue(qj(2, 0, res(2000, GIB, 1), 1, t0)));
    assert_eq!(p.waiting(JobId(2)), None);

    // A job placed and released may be queued and placed again.
    assert!(p.release(JobId(2)).is_some());
    assert_eq!(p.release(JobId(2)), None);
    assert!(p.enqueue(qj(2, 0, res(2000, GIB, 1), 1, t0 + secs(1))));
    assert_eq!(placed(p.decide(t0 + secs(1))), 2);
    p.capacity().check().unwrap();
}

#[test]
fn backfill_passes_a_young_head_but_never_an_old_one() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let config = PlacerConfig {
        aging: Some(secs(1)),
        backfill_depth: 64,
        reserve_head_after: Some(secs(60)),
    };
    let mut p = placer(config, t0, &[(1, cap(4000, 16 * GIB, &[]))]);
    p.enqueue(qj(1, 100, res(1000, GIB, 0), 1, t0));
    assert_eq!(placed(p.decide(t0)), 1); // 3000 left
    p.enqueue(qj(10, 50, res(4000, GIB, 0), 1, t0)); // the head: needs the whole worker
    p.enqueue(qj(11, 0, res(1000, GIB, 0), 1, t0));
    p.enqueue(qj(12, 0, res(1000, GIB, 0), 1, t0));
    p.enqueue(qj(13, 0, res(1000, GIB, 0), 1, t0));

    // Young head: a smaller job behind it goes first.
    assert_eq!(placed(p.decide(t0 + secs(1))), 11);
    assert_eq!(p.waiting(JobId(10)), Some(Waiting::Queued { position: 0 }));
    // Exactly at reserve_head_after nothing passes it any more, though 12 would fit.
    assert_eq!(p.decide(t0 + secs(60)), None);
    assert_eq!(p.decide(t0 + secs(600)), None);
    assert_eq!(p.waiting(JobId(12)), Some(Waiting::Queued { position: 1 }));
    assert_eq!(p.capacity().summary().cpu_free, 2000);
    // Just before the limit it still backfills.
    assert_eq!(placed(p.decide(t0 + secs(59))), 12);
    assert_eq!(p.decide(t0 + secs(61)), None);
    // Capacity drains toward the head: releasing part is not enough, releasing all is.
    p.release(JobId(11)).unwrap();
    assert_eq!(p.decide(t0 + secs(62)), None, "2000 free, head needs 4000");
    p.release(JobId(1)).unwrap();
    assert_eq!(p.decide(t0 + secs(63)), None);
    p.release(JobId(12)).unwrap();
    let head = p.decide(t0 + secs(64)).unwrap();
    assert_eq!((head.job, head.grants[0].cpu_millis), (JobId(10), 4000));
    p.release(JobId(10)).unwrap();
    assert_eq!(placed(p.decide(t0 + secs(65))), 13);
    p.capacity().check().unwrap();

    // Without a head reservation backfill goes on at any age.
    let config = PlacerConfig {
        reserve_head_after: None,
        ..config
    };
    let mut p = placer(config, t0, &[(1, cap(4000, 16 * GIB, &[]))]);
    p.enqueue(qj(1, 100, res(1000, GIB, 0), 1, t0));
    assert_eq!(placed(p.decide(t0)), 1);
    p.enqueue(qj(10, 50, res(4000, GIB, 0), 1, t0));
    p.enqueue(qj(11, 0, res(1000, GIB, 0), 1, t0));
    assert_eq!(placed(p.decide(t0 + secs(24 * 3600))), 11);

    // A gang head is reserved for in the same way.
    let mut p = placer(
        PlacerConfig::default(),
        t0,
        &[(1, cap(2000, 16 * GIB, &[])), (2, cap(2000, 16 * GIB, &[]))],
    );
    p.enqueue(qj(1, 100, res(1000, GIB, 0), 1, t0));
    assert_eq!(placed(p.decide(t0)), 1);
    p.enqueue(qj(10, 50, res(2000, GIB, 0), 2, t0));
    p.enqueue(qj(11, 0, res(1000, GIB, 0), 1, t0));
    p.enqueue(qj(12, 0, res(1000, GIB, 0), 1, t0));
    assert_eq!(placed(p.decide(t0 + secs(1))), 11);
    assert_eq!(p.decide(t0 + secs(60)), None);
    p.release(JobId(1)).unwrap();
    assert_eq!(p.decide(t0 + secs(61)), None);
    p.release(JobId(11)).unwrap();
    let gang = p.decide(t0 + secs(62)).unwrap();
    assert_eq!((gang.job, gang.grants.len()), (JobId(10), 2));
}

#[test]
fn a_gang_that_does_not_fit_does_not_hold_back_one_task_of_its_shape() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let two = [(1, cap(2000, 16 * GIB, &[])), (2, cap(2000, 16 * GIB, &[]))];
    let mut p = placer(PlacerConfig::default(), t0, &two);
    p.enqueue(qj(1, 100, res(1000, GIB, 0), 1, t0));
    assert_eq!(placed(p.decide(t0)), 1); // one worker half full
    p.enqueue(qj(10, 50, res(2000, GIB, 0), 2, t0)); // both workers whole: not now
    p.enqueue(qj(11, 0, res(2000, GIB, 0), 1, t0)); // one of its tasks: fits on the other
    p.enqueue(qj(12, 0, res(2000, GIB, 0), 1, t0));
    let single = p.decide(t0 + secs(1)).unwrap();
    assert_eq!((single.job, single.grants.len()), (JobId(11), 1));
    // Now neither worker has a whole 2000 left: job 12 waits behind the young gang.
    assert_eq!(p.decide(t0 + secs(2)), None);
    assert_eq!(p.waiting(JobId(12)), Some(Waiting::Queued { position: 1 }));
    p.capacity().check().unwrap();
}

#[test]
fn backfill_depth_bounds_how_far_a_decision_looks() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let run = |depth: usize| {
        let config = PlacerConfig {
            backfill_depth: depth,
            ..PlacerConfig::default()
        };
        let mut p = placer(config, t0, &[(1, cap(4000, 16 * GIB, &[0]))]);
        p.enqueue(qj(1, 100, res(1000, GIB, 0), 1, t0));
        assert_eq!(placed(p.decide(t0)), 1); // 3000 cpu left
                                             // Two jobs that fit nowhere now (but could on an idle worker), then one that fits.
        p.enqueue(qj(2, 10, res(4000, GIB, 0), 1, t0));
        p.enqueue(qj(3, 9, res(3500, GIB, 0), 1, t0));
        p.enqueue(qj(4, 0, res(1000, GIB, 0), 1, t0));
        p.decide(t0 + secs(1)).map(|x| x.job.0)
    };
    assert_eq!(run(2), None);
    assert_eq!(run(1), None);
    assert_eq!(run(3), Some(4));
    assert_eq!(run(64), Some(4));

    // Parked jobs do not use up the depth.
    let config = PlacerConfig {
        backfill_depth: 1,
        ..PlacerConfig::default()
    };
    let mut p = placer(config, t0, &[(1, cap(4000, 16 * GIB, &[]))]);
    p.enqueue(qj(1, 10, res(1000, GIB, 1), 1, t0)); // needs a GPU: never fits
    p.enqueue(qj(2, 9, res(99_000, GIB, 0), 1, t0)); // never fits
    p.enqueue(qj(3, 0, res(1000, GIB, 0), 1, t0));
    assert_eq!(placed(p.decide(t0)), 3);
    assert!(matches!(
        p.waiting(JobId(1)),
        Some(Waiting::Unplaceable { .. })
    ));
    assert!(matches!(
        p.waiting(JobId(2)),
        Some(Waiting::Unplaceable { .. })
    ));
}

#[test]
fn a_thousand_random_jobs_are_each_placed_once_and_none_is_lost() {
    let (_events, _guard) = subscribed();
    const JOBS: u64 = 1000;
    let cluster = [
        (1, cap(8000, 32 * GIB, &[0, 1, 2, 3])),
        (2, cap(4000, 16 * GIB, &[])),
        (3, cap(16000, 64 * GIB, &[0, 1])),
    ];
    for seed in 0..5u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = placer(PlacerConfig::default(), t0, &cluster);
        let mut next = 0u64;
        let mut waiting: BTreeSet<JobId> = BTreeSet::new();
        let mut running: BTreeMap<JobId, Vec<Grant>> = BTreeMap::new();
        let mut shapes: BTreeMap<JobId, (Resources, u32)> = BTreeMap::new();
        let mut finished = 0u64;
        let mut placements = 0u64;
        let mut step = 0u64;
        loop {
            step += 1;
            assert!(step < 200_000, "seed {seed}: no progress");
            let ctx = format!("seed {seed} step {step}");
            match rng.random_range(0..100) {
                0..=24 if next < JOBS => {
                    for _ in 0..rng.random_range(1..=20) {
                        if next == JOBS {
                            break;
                        }
                        let job = JobId(next);
                        next += 1;
                        let r = if rng.random_bool(0.03) {
                            res(1000, GIB, 8) // more GPUs than any worker has
                        } else {
                            res(
                                rng.random_range(0..=16) * 500,
                                rng.random_range(0..=16) * GIB,
                                [0, 0, 0, 0, 1, 2][rng.random_range(0..6)],
                            )
                        };
                        let gang = [1, 1, 1, 2, 3][rng.random_range(0..5)];
                        let prio = rng.random_range(-5..=5);
                        assert!(p.enqueue(qj(job.0, prio, r, gang, now)), "{ctx}");
                        shapes.insert(job, (r, gang));
                        waiting.insert(job);
                    }
                }
                0..=59 => match p.decide(now) {
                    Some(pl) => {
                        assert!(
                            waiting.remove(&pl.job),
                            "{ctx}: {:?} was not waiting",
                            pl.job
                        );
                        assert!(!running.contains_key(&pl.job), "{ctx}: placed twice");
                        let (r, gang) = shapes[&pl.job];
                        assert_eq!(pl.grants.len(), gang as usize, "{ctx}");
                        for g in &pl.grants {
                            assert_eq!(
                                (g.cpu_millis, g.memory_bytes, g.gpus.len() as u32),
                                (r.cpu_millis, r.memory_bytes, r.gpus),
                                "{ctx}"
                            );
                        }
                        assert_eq!(
                            p.capacity().reservation(pl.job),
                            Some(pl.grants.as_slice()),
                            "{ctx}"
                        );
                        assert_eq!(p.waiting(pl.job), None, "{ctx}");
                        running.insert(pl.job, pl.grants);
                        placements += 1;
                    }
                    None if running.is_empty() => {
                        // An idle cluster places anything that could ever fit.
                        for j in &waiting {
                            assert!(
                                matches!(p.waiting(*j), Some(Waiting::Unplaceable { .. })),
                                "{ctx}: {j} waits on an idle cluster: {:?}",
                                p.waiting(*j)
                            );
                        }
                    }
                    None => {}
                },
                60..=89 => {
                    let ids: Vec<JobId> = running.keys().copied().collect();
                    if let Some(j) = pick(&mut rng, &ids) {
                        assert_eq!(p.release(j), running.remove(&j), "{ctx}");
                        finished += 1;
                    }
                }
                90..=92 => {
                    let ids: Vec<JobId> = waiting.iter().copied().collect();
                    if let Some(j) = pick(&mut rng, &ids) {
                        assert!(p.cancel(j), "{ctx}");
                        waiting.remove(&j);
                        finished += 1;
                    }
                }
                93 => {
                    // A worker dies and comes back: its jobs are lost (finished, for us).
                    let (id, c) = &cluster[rng.random_range(0..cluster.len())];
                    let lost = p.remove_worker(WorkerId(*id)).unwrap();
                    let expected: Vec<JobId> = running
                        .iter()
                        .filter(|(_, gs)| gs.iter().any(|g| g.worker == WorkerId(*id)))
                        .map(|(j, _)| *j)
                        .collect();
                    assert_eq!(lost, expected, "{ctx}");
                    for j in lost {
                        running.remove(&j);
                        finished += 1;
                    }
                    p.capacity().check().unwrap();
                    if rng.random_bool(0.5) {
                        // Let a decision see the smaller cluster first.
                        if let Some(pl) = p.decide(now) {
                            assert!(waiting.remove(&pl.job), "{ctx}");
                            running.insert(pl.job, pl.grants);
                            placements += 1;
                        }
                    }
                    p.add_worker(WorkerId(*id), c).unwrap();
                }
                _ => {}
            }
            now += Duration::from_millis(rng.random_range(0..3000));

            if let Err(e) = p.capacity().check() {
                panic!("{ctx}: {e}");
            }
            assert_eq!(p.capacity().reserved_jobs(), running.len(), "{ctx}");
            assert_eq!(p.waiting_len(), waiting.len(), "{ctx}");
            assert_eq!(
                running.len() as u64 + waiting.len() as u64 + finished,
                next,
                "{ctx}"
            );

            if next == JOBS && running.is_empty() {
                // Drain: whatever is left either places on the idle cluster or is parked.
                while let Some(pl) = p.decide(now) {
                    assert!(waiting.remove(&pl.job));
                    assert_eq!(p.release(pl.job), Some(pl.grants));
                    finished += 1;
                    placements += 1;
                }
                for j in std::mem::take(&mut waiting) {
                    let Some(Waiting::Unplaceable { .. }) = p.waiting(j) else {
                        panic!("seed {seed}: {j} left waiting: {:?}", p.waiting(j));
                    };
                    let (r, gang) = shapes[&j];
                    assert!(
                        p.capacity().never_fits(&r, gang).is_some(),
                        "{j} parked but fits"
                    );
                    assert!(p.cancel(j));
                    finished += 1;
                }
                break;
            }
        }
        assert_eq!(finished, JOBS, "seed {seed}");
        assert_eq!(p.waiting_len(), 0);
        assert_eq!(p.capacity().reserved_jobs(), 0);
        let s = p.capacity().summary();
        assert_eq!((s.cpu_free, s.gpus_free), (s.cpu_total, s.gpus_total));
        assert!(
            placements > JOBS / 2,
            "seed {seed}: only {placements} placements"
        );
    }
}

#[test]
fn decide_records_its_duration_and_the_queue_depth() {
    let _sub = subscribed();
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let gauge = |snap: &Snapshotter| placement::gauge(snap, m::QUEUE_DEPTH);
    let samples = |snap: &Snapshotter| -> Vec<f64> {
        snap.snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, _, _, _)| k.key().name() == m::DECISION_SECONDS)
            .flat_map(|(_, _, _, v)| match v {
                DebugValue::Histogram(h) => h.into_iter().map(|x| x.0).collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    metrics::with_local_recorder(&recorder, || {
        let t0 = Instant::now();
        let mut p = placer(
            PlacerConfig::default(),
            t0,
            &[(1, cap(2000, 16 * GIB, &[]))],
        );
        for id in 1..=4 {
            p.enqueue(qj(id, 0, res(1000, GIB, 0), 1, t0));
        }
        p.enqueue(qj(5, 0, res(1000, GIB, 1), 1, t0)); // parked at the first decision
        assert_eq!(gauge(&snap), Some(5.0));
        assert!(samples(&snap).is_empty());

        assert_eq!(placed(p.decide(t0)), 1);
        assert_eq!(placed(p.decide(t0)), 2);
        assert_eq!(p.decide(t0), None);
        let recorded = samples(&snap);
        assert_eq!(recorded.len(), 3, "one sample per decision: {recorded:?}");
        assert!(recorded.iter().all(|s| s.is_finite() && *s >= 0.0));
        assert_eq!(p.waiting_len(), 3, "3, 4 queued and 5 parked");
        assert_eq!(gauge(&snap), Some(3.0));

        assert!(p.cancel(JobId(5)));
        assert_eq!(gauge(&snap), Some(2.0));
        p.release(JobId(1)).unwrap();
        assert_eq!(placed(p.decide(t0)), 3);
        // Each snapshot drains the histogram: only the decision since the last one is there.
        assert_eq!(samples(&snap).len(), 1);
        assert_eq!(gauge(&snap), Some(1.0));
        assert!(p.cancel(JobId(4)));
        assert_eq!(gauge(&snap), Some(0.0));
    });
}
