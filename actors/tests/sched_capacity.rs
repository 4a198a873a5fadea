//! Placement's capacity table: every resource is booked at most once and given back exactly once
//! (a second reservation for a job is refused, logged and counted), gangs all or nothing, GPUs
//! by index and never when unhealthy, draining workers take nothing new, and a lost worker
//! releases every job touching it on every worker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/placement.rs"]
mod placement;

use std::collections::BTreeSet;

use cadre_actors::metrics as m;
use cadre_actors::sched::CapacityTable;
use cadre_actors::{Error, JobId, WorkerId};
use metrics_util::debugging::DebuggingRecorder;
use tracing::Level;

use placement::{cap, counter, res, subscribed, GIB};

#[test]
fn reserve_then_release_restores_free_capacity_exactly_and_only_once() {
    let _sub = subscribed();
    let w = WorkerId(1);
    let mut t = CapacityTable::new();
    t.add_worker(w, &cap(4000, 8 * GIB, &[0, 1])).unwrap();
    assert!(matches!(
        t.add_worker(w, &cap(1, 1, &[])),
        Err(Error::DuplicateWorker { worker }) if worker == w
    ));
    let before = t.summary();
    assert_eq!(
        (
            before.workers,
            before.accepting,
            before.cpu_free,
            before.memory_free,
            before.gpus_free
        ),
        (1, 1, 4000, 8 * GIB, 2)
    );

    let grants = t.reserve(JobId(1), &res(1500, GIB, 1), 1).unwrap().unwrap();
    assert_eq!(grants.len(), 1);
    let g = &grants[0];
    assert_eq!(
        (g.worker, g.task, g.cpu_millis, g.memory_bytes, g.gpus.len()),
        (w, 0, 1500, GIB, 1)
    );
    let during = t.summary();
    assert_eq!(
        (during.cpu_free, during.memory_free, during.gpus_free),
        (2500, 7 * GIB, 1)
    );
    assert_eq!(t.reservation(JobId(1)), Some(grants.as_slice()));
    assert_eq!(t.reserved_jobs(), 1);
    t.check().unwrap();

    let second = t
        .reserve(JobId(2), &res(2500, 7 * GIB, 1), 1)
        .unwrap()
        .unwrap();
    assert_eq!(t.summary().cpu_free, 0);
    assert_ne!(second[0].gpus, grants[0].gpus);
    assert_eq!(t.reserve(JobId(3), &res(1, 0, 0), 1).unwrap(), None, "full");
    t.check().unwrap();

    assert_eq!(t.release(JobId(1)), Some(grants));
    assert_eq!(t.release(JobId(1)), None, "second release finds nothing");
    assert_eq!(t.release(JobId(2)), Some(second));
    assert_eq!(t.summary(), before);
    assert_eq!(t.release(JobId(2)), None);
    assert_eq!(t.release(JobId(42)), None, "never booked");
    assert_eq!(t.summary(), before, "nothing freed twice");
    assert_eq!(t.reserved_jobs(), 0);
    assert_eq!(t.reservation(JobId(1)), None);
    t.check().unwrap();

    // Released capacity is whole again: one job can take all of it.
    let all = t
        .reserve(JobId(4), &res(4000, 8 * GIB, 2), 1)
        .unwrap()
        .unwrap();
    assert_eq!(all[0].gpus, [0, 1]);
    t.check().unwrap();
}

#[test]
fn a_second_reservation_for_a_job_is_refused_logged_and_counted() {
    let (events, _guard) = subscribed();
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut t = CapacityTable::new();
        t.add_worker(WorkerId(1), &cap(8000, 8 * GIB, &[0, 1]))
            .unwrap();
        let first = t.reserve(JobId(7), &res(1000, GIB, 1), 1).unwrap().unwrap();
        let after_first = t.summary();
        // A job that simply does not fit is no refusal.
        assert_eq!(t.reserve(JobId(8), &res(9000, 0, 0), 1).unwrap(), None);
        for demand in [res(1000, GIB, 1), res(1, 1, 0), res(0, 0, 0)] {
            let err = t.reserve(JobId(7), &demand, 2).unwrap_err();
            assert!(
                matches!(err, Error::AlreadyReserved { job: JobId(7) }),
                "{err}"
            );
        }
        assert_eq!(t.summary(), after_first, "nothing booked by a refusal");
        assert_eq!(t.reservation(JobId(7)), Some(first.as_slice()));
        assert_eq!(t.reserved_jobs(), 1);
        t.check().unwrap();
        // Once released, the job may book again.
        t.release(JobId(7)).unwrap();
        t.reserve(JobId(7), &res(1000, GIB, 1), 1).unwrap().unwrap();
        t.check().unwrap();
    });
    assert_eq!(
        counter(
            &snap,
            m::CAPACITY_REFUSALS,
            &[("reason", "already_reserved")]
        ),
        3
    );
    assert_eq!(counter(&snap, m::CAPACITY_REFUSALS, &[]), 3);
    let errors = events.at(Level::ERROR);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors
        .iter()
        .all(|e| e.get("job").map(String::as_str) == Some("7")));
}

#[test]
fn gpus_are_granted_by_index_at_most_once_and_never_when_unhealthy() {
    let _sub = subscribed();
    let w = WorkerId(1);
    let mut t = CapacityTable::new();
    // Duplicate indices in the registration count once.
    t.add_worker(w, &cap(8000, 8 * GIB, &[1, 0, 1])).unwrap();
    assert_eq!(t.summary().gpus_total, 2);
    let one = res(100, 0, 1);
    let a = t.reserve(JobId(1), &one, 1).unwrap().unwrap();
    let b = t.reserve(JobId(2), &one, 1).unwrap().unwrap();
    assert_eq!((a[0].gpus.len(), b[0].gpus.len()), (1, 1));
    let mut both = [a[0].gpus[0], b[0].gpus[0]];
    both.sort_unstable();
    assert_eq!(both, [0, 1], "two jobs, two different GPUs");
    assert_eq!(t.reserve(JobId(3), &one, 1).unwrap(), None, "no third GPU");
    assert_eq!(t.summary().gpus_free, 0);
    t.check().unwrap();

    // Marking a held GPU unhealthy names its holder; releasing it does not make it grantable.
    let a_gpu = a[0].gpus[0];
    assert_eq!(t.set_gpu_health(w, a_gpu, false).unwrap(), Some(JobId(1)));
    assert_eq!(
        t.reservation(JobId(1)),
        Some(a.as_slice()),
        "the holder keeps it"
    );
    t.check().unwrap();
    t.release(JobId(1)).unwrap();
    let s = t.summary();
    assert_eq!((s.gpus_free, s.gpus_unhealthy), (0, 1));
    assert_eq!(
        t.reserve(JobId(3), &one, 1).unwrap(),
        None,
        "unhealthy GPU not granted"
    );
    assert_eq!(
        t.set_gpu_health(w, a_gpu, false).unwrap(),
        None,
        "now held by nobody"
    );
    assert_eq!(
        t.set_gpu_health(w, b[0].gpus[0], true).unwrap(),
        Some(JobId(2))
    );
    assert_eq!(t.set_gpu_health(w, a_gpu, true).unwrap(), None);
    let c = t.reserve(JobId(3), &one, 1).unwrap().unwrap();
    assert_eq!(c[0].gpus, [a_gpu]);
    t.check().unwrap();

    // Unknown devices and workers are errors.
    assert!(matches!(
        t.set_gpu_health(w, 7, false),
        Err(Error::UnknownDevice { index: 7, .. })
    ));
    assert!(matches!(
        t.set_gpu_health(WorkerId(9), 0, false),
        Err(Error::UnknownWorker { .. })
    ));

    // A free unhealthy GPU in the middle is skipped.
    let v = WorkerId(2);
    t.add_worker(v, &cap(8000, 8 * GIB, &[4, 5, 6])).unwrap();
    t.set_accepting(w, false).unwrap();
    t.set_gpu_health(v, 5, false).unwrap();
    assert_eq!(t.reserve(JobId(4), &res(0, 0, 3), 1).unwrap(), None);
    let d = t.reserve(JobId(4), &res(0, 0, 2), 1).unwrap().unwrap();
    assert_eq!((d[0].worker, d[0].gpus.clone()), (v, vec![4, 6]));
    t.check().unwrap();
}

#[test]
fn a_gang_is_booked_all_or_nothing() {
    let _sub = subscribed();
    let mut t = CapacityTable::new();
    let (a, b, c) = (WorkerId(1), WorkerId(2), WorkerId(3));
    t.add_worker(a, &cap(2000, 4 * GIB, &[0])).unwrap();
    t.add_worker(b, &cap(2000, 4 * GIB, &[0])).unwrap();
    let before = t.summary();
    let task = res(2000, GIB, 1);

    // Each worker holds one task: a gang of 3 books nothing, GPUs included.
    assert_eq!(t.reserve(JobId(1), &task, 3).unwrap(), None);
    assert_eq!(t.summary(), before);
    assert_eq!(t.reservation(JobId(1)), None);
    assert_eq!(t.reserved_jobs(), 0);
    t.check().unwrap();
    // Nothing leaked: each worker can still be filled by someone else.
    let whole = t
        .reserve(JobId(2), &res(2000, 4 * GIB, 1), 2)
        .unwrap()
        .unwrap();
    t.release(JobId(2)).unwrap();
    assert_eq!(t.summary(), before);

    // A gang of 2 spreads over both workers, one task each, tasks numbered.
    let g = t.reserve(JobId(3), &task, 2).unwrap().unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!(g.iter().map(|x| x.task).collect::<Vec<_>>(), [0, 1]);
    let workers: BTreeSet<WorkerId> = g.iter().map(|x| x.worker).collect();
    assert_eq!(workers, BTreeSet::from([a, b]));
    assert!(g.iter().all(|x| x.gpus == [0] && x.cpu_millis == 2000));
    t.check().unwrap();
    assert_eq!(t.release(JobId(3)), Some(g));
    assert_eq!(whole.len(), 2);

    // Where several tasks fit on one worker they are packed there.
    t.add_worker(c, &cap(8000, 8 * GIB, &[0, 1, 2, 3])).unwrap();
    t.set_accepting(a, false).unwrap();
    t.set_accepting(b, false).unwrap();
    let packed = t.reserve(JobId(4), &res(2000, GIB, 1), 4).unwrap().unwrap();
    assert!(packed.iter().all(|x| x.worker == c));
    let mut gpus: Vec<u32> = packed.iter().flat_map(|x| x.gpus.clone()).collect();
    gpus.sort_unstable();
    assert_eq!(gpus, [0, 1, 2, 3], "one GPU per task, none twice");
    t.check().unwrap();

    // A gang that half fits after partial bookings on a busy cluster leaves it as it was.
    t.release(JobId(4)).unwrap();
    t.set_accepting(a, true).unwrap();
    t.set_accepting(b, true).unwrap();
    t.reserve(JobId(5), &res(6000, GIB, 3), 1).unwrap().unwrap(); // c: 2000 cpu, 1 GPU left
    let busy = t.summary();
    assert_eq!(t.reserve(JobId(6), &task, 4).unwrap(), None, "3 of 4 fit");
    assert_eq!(t.summary(), busy);
    t.check().unwrap();
    let three = t.reserve(JobId(6), &task, 3).unwrap().unwrap();
    let workers: BTreeSet<WorkerId> = three.iter().map(|x| x.worker).collect();
    assert_eq!(workers, BTreeSet::from([a, b, c]));
    t.check().unwrap();
}

#[test]
fn removing_a_worker_releases_exactly_the_jobs_touching_it_on_every_worker() {
    let _sub = subscribed();
    let mut t = CapacityTable::new();
    let (a, b, c) = (WorkerId(1), WorkerId(2), WorkerId(3));
    for w in [a, b, c] {
        t.add_worker(w, &cap(4000, 8 * GIB, &[0, 1])).unwrap();
    }
    // Steer each booking by draining the other workers.
    let only = |t: &mut CapacityTable, on: &[WorkerId]| {
        for w in [a, b, c] {
            t.set_accepting(w, on.contains(&w)).unwrap();
        }
    };
    only(&mut t, &[a]);
    let j1 = t.reserve(JobId(1), &res(1000, GIB, 1), 1).unwrap().unwrap();
    assert_eq!(j1[0].worker, a);
    only(&mut t, &[a, b]);
    let j2 = t.reserve(JobId(2), &res(3000, GIB, 1), 2).unwrap().unwrap();
    let j2_workers: BTreeSet<WorkerId> = j2.iter().map(|g| g.worker).collect();
    assert_eq!(j2_workers, BTreeSet::from([a, b]), "gang spans a and b");
    only(&mut t, &[c]);
    t.reserve(JobId(3), &res(1000, GIB, 1), 1).unwrap().unwrap();
    only(&mut t, &[b]);
    t.reserve(JobId(4), &res(500, GIB, 1), 1).unwrap().unwrap();
    only(&mut t, &[a, b, c]);
    t.check().unwrap();

    let lost = t.remove_worker(b).unwrap();
    assert_eq!(lost, [JobId(2), JobId(4)]);
    assert_eq!(t.reservation(JobId(2)), None);
    assert_eq!(t.reservation(JobId(4)), None);
    assert_eq!(t.reservation(JobId(1)), Some(j1.as_slice()));
    assert!(t.reservation(JobId(3)).is_some());
    assert_eq!(t.reserved_jobs(), 2);
    t.check().unwrap();
    let s = t.summary();
    assert_eq!(s.workers, 2);
    assert_eq!(s.cpu_total, 8000);
    assert_eq!(s.cpu_free, 8000 - 1000 - 1000, "j2's task on a freed too");
    assert_eq!(s.gpus_free, 4 - 2);
    assert_eq!(t.workers().collect::<BTreeSet<_>>(), BTreeSet::from([a, c]));
    // The gang's GPU on a is free again: a can take two more GPU jobs... only one (j1 holds one).
    t.set_accepting(c, false).unwrap();
    t.reserve(JobId(5), &res(0, 0, 1), 1).unwrap().unwrap();
    assert_eq!(t.reserve(JobId(6), &res(0, 0, 1), 1).unwrap(), None);
    t.check().unwrap();

    assert!(matches!(
        t.remove_worker(b),
        Err(Error::UnknownWorker { .. })
    ));
    assert_eq!(t.remove_worker(c).unwrap(), [JobId(3)]);
    // Re-registering comes back whole.
    t.add_worker(b, &cap(4000, 8 * GIB, &[0, 1])).unwrap();
    assert_eq!(
        t.reserve(JobId(7), &res(4000, 8 * GIB, 2), 1)
            .unwrap()
            .unwrap()[0]
            .worker,
        b
    );
    t.check().unwrap();
    assert_eq!(t.remove_worker(a).unwrap(), [JobId(1), JobId(5)]);
    assert_eq!(t.remove_worker(b).unwrap(), [JobId(7)]);
    assert_eq!(t.summary(), Default::default());
    assert_eq!(
        t.reserve(JobId(8), &res(0, 0, 0), 1).unwrap(),
        None,
        "no worker"
    );
    t.check().unwrap();
}

#[test]
fn draining_workers_take_nothing_new_and_never_fits_names_the_need() {
    let _sub = subscribed();
    let mut t = CapacityTable::new();
    let (a, b) = (WorkerId(1), WorkerId(2));
    assert!(t.never_fits(&res(0, 0, 0), 1).is_some(), "no worker at all");
    t.add_worker(a, &cap(4000, 8 * GIB, &[0, 1])).unwrap();
    t.add_worker(b, &cap(2000, 4 * GIB, &[])).unwrap();
    t.reserve(JobId(1), &res(1000, GIB, 1), 1).unwrap().unwrap();

    t.set_accepting(a, false).unwrap();
    assert_eq!(t.summary().accepting, 1);
    assert!(
        t.reservation(JobId(1)).is_some(),
        "draining keeps reservations"
    );
    t.check().unwrap();
    // Fits on a only: refused while a drains, and never_fits says why.
    let gpu_job = res(1000, GIB, 1);
    assert_eq!(t.reserve(JobId(2), &gpu_job, 1).unwrap(), None);
    let why = t.never_fits(&gpu_job, 1).unwrap();
    assert!(why.contains("1 task(s) of 1000 millicores"), "{why}");
    assert!(why.contains("1 GPU(s)"), "{why}");
    // Fits on b: placed there.
    let on_b = t.reserve(JobId(3), &res(2000, GIB, 0), 1).unwrap().unwrap();
    assert_eq!(on_b[0].worker, b);
    t.set_accepting(a, true).unwrap();
    assert_eq!(
        t.reserve(JobId(2), &gpu_job, 1).unwrap().unwrap()[0].worker,
        a
    );
    t.check().unwrap();

    // never_fits looks at idle capacity, not at what is free now.
    assert_eq!(t.never_fits(&res(4000, 8 * GIB, 2), 1), None);
    assert_eq!(t.never_fits(&res(2000, GIB, 0), 3), None, "2 on a, 1 on b");
    let why = t.never_fits(&res(2000, GIB, 0), 4).unwrap();
    assert!(why.contains("4 task(s) of 2000 millicores"), "{why}");
    let why = t.never_fits(&res(1000, GIB, 64), 1).unwrap();
    assert!(why.contains("64 GPU(s)"), "{why}");
    let why = t.never_fits(&res(5000, GIB, 0), 1).unwrap();
    assert!(why.contains("5000 millicores"), "{why}");
    let why = t.never_fits(&res(0, 9 * GIB, 0), 1).unwrap();
    assert!(why.contains(&format!("{} bytes", 9 * GIB)), "{why}");
    assert_eq!(t.never_fits(&res(0, 0, 0), 1_000_000), None);
    // Unhealthy GPUs do not count.
    t.set_gpu_health(a, 0, false).unwrap();
    assert_eq!(t.never_fits(&res(0, 0, 1), 1), None);
    assert!(t.never_fits(&res(0, 0, 2), 1).is_some());
    t.set_gpu_health(a, 1, false).unwrap();
    assert!(t.never_fits(&res(0, 0, 1), 1).is_some());
    // Nor do draining workers.
    assert_eq!(t.never_fits(&res(1000, 0, 0), 1), None);
    t.set_accepting(a, false).unwrap();
    t.set_accepting(b, false).unwrap();
    assert!(t.never_fits(&res(1000, 0, 0), 1).is_some());
    assert!(matches!(
        t.set_accepting(WorkerId(9), true),
        Err(Error::UnknownWorker { .. })
    ));
}
