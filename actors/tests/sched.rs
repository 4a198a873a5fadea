//! Placement: the queue orders by priority with aging as a static rank (FIFO within a rank),
//! the capacity table books every resource at most once (gangs all or nothing, GPUs by index,
//! unhealthy GPUs and draining workers never granted, a lost worker releases every job touching
//! it), and the placer backfills past a young head, stops for an old one, parks what can never
//! fit and brings it back when capacity arrives. Random operations check the table's invariant
//! after every step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_actors::metrics as m;
use cadre_actors::sched::{
    CapacityTable, Grant, JobQueue, Placement, Placer, PlacerConfig, QueuedJob, Waiting,
    WorkerCapacity,
};
use cadre_actors::{Error, JobId, Resources, WorkerId};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const GIB: u64 = 1 << 30;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn res(cpu_millis: u32, memory_bytes: u64, gpus: u32) -> Resources {
    Resources {
        cpu_millis,
        memory_bytes,
        gpus,
    }
}

fn cap(cpu_millis: u64, memory_bytes: u64, gpus: &[u32]) -> WorkerCapacity {
    WorkerCapacity {
        cpu_millis,
        memory_bytes,
        gpus: gpus.to_vec(),
    }
}

fn qj(id: u64, priority: i16, resources: Resources, gang: u32, at: Instant) -> QueuedJob {
    QueuedJob {
        job: JobId(id),
        priority,
        resources,
        gang,
        enqueued_at: at,
    }
}

/// A job of priority `priority` needing 1 core, enqueued at `at`.
fn small(id: u64, priority: i16, at: Instant) -> QueuedJob {
    qj(id, priority, res(1000, GIB, 0), 1, at)
}

fn order(q: &JobQueue) -> Vec<u64> {
    q.iter().map(|j| j.job.0).collect()
}

/// One event: its level and its fields (`message` included) rendered to strings.
type Captured = (Level, BTreeMap<String, String>);

/// Events at WARN and above.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Captured>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level <= Level::WARN {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push((level, fields));
        }
    }
}

impl Events {
    fn at(&self, level: Level) -> Vec<BTreeMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// Installs an event-capturing subscriber for the calling thread. Every test runs under one:
/// tracing caches each callsite's interest process-wide, and a callsite first hit on a thread
/// without a subscriber can be cached as uninteresting, losing another test's events.
fn subscribed() -> (Events, tracing::subscriber::DefaultGuard) {
    let events = Events::default();
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    (events, guard)
}

/// A counter's value summed over the label sets carrying `label` (all when `None`).
fn counter(snap: &Snapshotter, name: &str, label: Option<(&str, &str)>) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == name)
        .filter(|(k, _, _, _)| {
            label.is_none_or(|(lk, lv)| k.key().labels().any(|l| l.key() == lk && l.value() == lv))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------------------------

#[test]
fn higher_priority_goes_first_and_fifo_holds_within_a_priority() {
    let _sub = subscribed();
    let t0 = Instant::now();
    for aging in [Some(secs(1)), None] {
        // Same enqueued_at: priority, then push order.
        let mut q = JobQueue::new(aging, t0);
        for (id, prio) in [
            (1, 0),
            (2, 5),
            (3, -3),
            (4, 5),
            (5, 0),
            (6, 1000),
            (7, -1000),
        ] {
            assert!(q.push(small(id, prio, t0)));
        }
        assert_eq!(order(&q), [6, 2, 4, 1, 5, 3, 7], "aging {aging:?}");
        assert_eq!(q.peek().map(|j| j.job), Some(JobId(6)));
        assert_eq!(q.len(), 7);

        // Increasing enqueued_at within one priority: first in, first out, whatever the spread
        // (aging ranks a later arrival lower, never higher).
        let mut q = JobQueue::new(aging, t0);
        for id in 0..10u64 {
            assert!(q.push(small(id, 7, t0 + Duration::from_millis(id * 137))));
        }
        assert_eq!(order(&q), (0..10).collect::<Vec<_>>(), "aging {aging:?}");

        // A later push of equal priority goes behind every job of that priority already there,
        // and still ahead of lower priorities.
        let mut q = JobQueue::new(aging, t0);
        q.push(small(1, 3, t0));
        q.push(small(2, 3, t0 + Duration::from_millis(10)));
        q.push(small(3, 2, t0));
        q.push(small(4, 3, t0 + Duration::from_millis(20)));
        assert_eq!(order(&q), [1, 2, 4, 3], "aging {aging:?}");
        q.push(small(5, 3, t0 + Duration::from_millis(30)));
        assert_eq!(order(&q), [1, 2, 4, 5, 3], "aging {aging:?}");
    }
}

#[test]
fn aging_lets_an_old_low_priority_job_overtake_at_one_point_per_period() {
    let _sub = subscribed();
    let t0 = Instant::now();
    // rank = priority * 1000 ms - enqueued ms: -10 at t0 is -10000; +10 at t0+x is 10000 - x.
    let race = |later_secs: u64, low_first: bool| {
        let mut q = JobQueue::new(Some(secs(1)), t0);
        let low = small(1, -10, t0);
        let high = small(2, 10, t0 + secs(later_secs));
        if low_first {
            q.push(low);
            q.push(high);
        } else {
            q.push(high);
            q.push(low);
        }
        q.peek().unwrap().job.0
    };
    for low_first in [true, false] {
        assert_eq!(race(25, low_first), 1, "waited 25 points, needed 20");
        assert_eq!(race(21, low_first), 1, "one point past the boundary");
        assert_eq!(race(19, low_first), 2, "one point short of the boundary");
        assert_eq!(race(0, low_first), 2, "same arrival: priority decides");
    }
    // Exactly at the boundary the ranks tie and the earlier arrival goes first, whatever the
    // push order.
    assert_eq!(race(20, true), 1);
    assert_eq!(race(20, false), 1);

    // The period scales the effect: with 10 s per point the same 25 s gap is 2.5 points only.
    let mut q = JobQueue::new(Some(secs(10)), t0);
    q.push(small(1, -10, t0));
    q.push(small(2, 10, t0 + secs(25)));
    assert_eq!(order(&q), [2, 1]);

    // An epoch after some arrivals still orders them by age.
    let mut q = JobQueue::new(Some(secs(1)), t0 + secs(100));
    q.push(small(1, 0, t0 + secs(200)));
    q.push(small(2, 0, t0));
    q.push(small(3, 0, t0 + secs(50)));
    q.push(small(4, 1, t0 + secs(100)));
    assert_eq!(
        order(&q),
        [2, 3, 4, 1],
        "job 4 is 1 point up but 50 s younger than 3"
    );
}

#[test]
fn without_aging_priority_is_strict_whatever_the_age() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let mut q = JobQueue::new(None, t0);
    q.push(small(1, -10, t0));
    q.push(small(2, 10, t0 + secs(365 * 24 * 3600)));
    q.push(small(3, -9, t0 + secs(3600)));
    q.push(small(4, -1000, t0));
    q.push(small(5, 1000, t0 + secs(7 * 24 * 3600)));
    assert_eq!(order(&q), [5, 2, 3, 1, 4]);
}

#[test]
fn remove_duplicate_push_and_position() {
    let _sub = subscribed();
    let t0 = Instant::now();
    let mut q = JobQueue::new(Some(secs(1)), t0);
    assert!(q.is_empty());
    assert_eq!(q.peek(), None);
    for id in 1..=5u64 {
        assert!(q.push(small(id, 0, t0 + Duration::from_millis(id))));
    }
    for id in 1..=5u64 {
        assert_eq!(q.position(JobId(id)), Some(id as usize - 1));
    }

    // Cancel a middle job: it comes back as pushed, and the ones behind move up.
    let removed = q.remove(JobId(3)).unwrap();
    assert_eq!(removed, small(3, 0, t0 + Duration::from_millis(3)));
    assert_eq!(order(&q), [1, 2, 4, 5]);
    assert_eq!(q.position(JobId(4)), Some(2));
    assert_eq!(q.position(JobId(3)), None);
    assert!(!q.contains(JobId(3)));
    assert_eq!(q.get(JobId(3)), None);
    assert_eq!(q.remove(JobId(3)), None, "removing twice finds nothing");
    assert_eq!(q.remove(JobId(99)), None);
    assert_eq!(q.len(), 4);

    // A duplicate id is refused and changes nothing, even with a higher priority.
    let dup = qj(2, 1000, res(1, 1, 1), 4, t0);
    assert!(!q.push(dup));
    assert_eq!(order(&q), [1, 2, 4, 5]);
    assert_eq!(
        q.get(JobId(2)),
        Some(&small(2, 0, t0 + Duration::from_millis(2)))
    );
    assert_eq!(q.len(), 4);

    // A removed job may be pushed again.
    assert!(q.push(small(3, 1, t0)));
    assert_eq!(order(&q), [3, 1, 2, 4, 5]);
    assert_eq!(q.position(JobId(5)), Some(4));
    while let Some(head) = q.peek().map(|j| j.job) {
        q.remove(head).unwrap();
    }
    assert!(q.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Capacity
// ---------------------------------------------------------------------------------------------

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
            Some(("reason", "already_reserved"))
        ),
        3
    );
    assert_eq!(counter(&snap, m::CAPACITY_REFUSALS, None), 3);
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

/// The test's own picture of the table: what each worker has and who holds what.
#[derive(Debug, Clone)]
struct ModelWorker {
    cpu: u64,
    mem: u64,
    healthy: BTreeMap<u32, bool>,
    accepting: bool,
}

#[derive(Debug, Default)]
struct Model {
    workers: BTreeMap<WorkerId, ModelWorker>,
    live: BTreeMap<JobId, Vec<Grant>>,
}

impl Model {
    fn used(&self, w: WorkerId) -> (u64, u64, BTreeMap<u32, JobId>) {
        let (mut cpu, mut mem, mut gpus) = (0u64, 0u64, BTreeMap::new());
        for (job, grants) in &self.live {
            for g in grants.iter().filter(|g| g.worker == w) {
                cpu += u64::from(g.cpu_millis);
                mem += g.memory_bytes;
                for &i in &g.gpus {
                    if let Some(other) = gpus.insert(i, *job) {
                        panic!("GPU {i} of worker {w} granted to {other} and {job}");
                    }
                }
            }
        }
        (cpu, mem, gpus)
    }

    /// How many tasks of `r` fit on `w` now.
    fn fit_count(&self, w: WorkerId, r: &Resources) -> u64 {
        let mw = &self.workers[&w];
        if !mw.accepting {
            return 0;
        }
        let (cpu, mem, held) = self.used(w);
        let free_gpus = mw
            .healthy
            .iter()
            .filter(|(i, h)| **h && !held.contains_key(*i))
            .count() as u64;
        // A dimension the task does not use (division by zero) sets no bound.
        [
            (mw.cpu - cpu).checked_div(u64::from(r.cpu_millis)),
            (mw.mem - mem).checked_div(r.memory_bytes),
            free_gpus.checked_div(u64::from(r.gpus)),
        ]
        .into_iter()
        .flatten()
        .fold(u64::MAX, u64::min)
    }
}

fn pick<T: Copy>(rng: &mut SmallRng, items: &[T]) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[rng.random_range(0..items.len())])
    }
}

#[test]
fn random_operations_never_book_a_resource_twice() {
    let _sub = subscribed();
    for seed in 0..300u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut t = CapacityTable::new();
        let mut model = Model::default();
        let mut next_worker = 0u64;
        for step in 0..300 {
            let ctx = format!("seed {seed} step {step}");
            let workers: Vec<WorkerId> = model.workers.keys().copied().collect();
            match rng.random_range(0..100) {
                0..=11 => {
                    // Add a worker; now and then an id already registered.
                    if rng.random_bool(0.1) {
                        if let Some(w) = pick(&mut rng, &workers) {
                            let before = t.summary();
                            assert!(
                                matches!(
                                    t.add_worker(w, &cap(1, 1, &[])),
                                    Err(Error::DuplicateWorker { .. })
                                ),
                                "{ctx}"
                            );
                            assert_eq!(t.summary(), before, "{ctx}");
                            continue;
                        }
                    }
                    next_worker += 1;
                    let w = WorkerId(next_worker);
                    let cpu = rng.random_range(1..=16) * 500;
                    let mem = rng.random_range(1..=32) * (GIB / 2);
                    let n = rng.random_range(0..=4u32);
                    let base = rng.random_range(0..3u32);
                    let mut gpus: Vec<u32> = (0..n).map(|i| base + 2 * i).collect();
                    if n > 0 && rng.random_bool(0.2) {
                        gpus.push(base); // a duplicate: counted once
                    }
                    t.add_worker(w, &cap(cpu, mem, &gpus)).unwrap();
                    model.workers.insert(
                        w,
                        ModelWorker {
                            cpu,
                            mem,
                            healthy: gpus.iter().map(|&i| (i, true)).collect(),
                            accepting: true,
                        },
                    );
                }
                12..=17 => {
                    let Some(w) = pick(&mut rng, &workers) else {
                        assert!(
                            matches!(
                                t.remove_worker(WorkerId(0)),
                                Err(Error::UnknownWorker { .. })
                            ),
                            "{ctx}"
                        );
                        continue;
                    };
                    let expected: Vec<JobId> = model
                        .live
                        .iter()
                        .filter(|(_, gs)| gs.iter().any(|g| g.worker == w))
                        .map(|(j, _)| *j)
                        .collect();
                    assert_eq!(t.remove_worker(w).unwrap(), expected, "{ctx}");
                    for j in &expected {
                        model.live.remove(j);
                        assert_eq!(t.reservation(*j), None, "{ctx}");
                    }
                    model.workers.remove(&w);
                }
                18..=59 => {
                    let job = JobId(rng.random_range(0..40));
                    let r = res(
                        rng.random_range(0..=8) * 500,
                        rng.random_range(0..=16) * (GIB / 2),
                        [0, 0, 0, 1, 1, 2, 3][rng.random_range(0..7)],
                    );
                    let gang = rng.random_range(1..=3u32);
                    let before = t.summary();
                    let result = t.reserve(job, &r, gang);
                    if model.live.contains_key(&job) {
                        assert!(
                            matches!(result, Err(Error::AlreadyReserved { job: j }) if j == job),
                            "{ctx}: {result:?}"
                        );
                        assert_eq!(t.summary(), before, "{ctx}");
                        continue;
                    }
                    let room = workers
                        .iter()
                        .fold(0u64, |acc, w| acc.saturating_add(model.fit_count(*w, &r)));
                    match result.unwrap() {
                        None => {
                            assert!(
                                room < u64::from(gang),
                                "{ctx}: room {room} for {gang} of {r:?}"
                            );
                            assert_eq!(t.summary(), before, "{ctx}: refused gang booked something");
                            assert_eq!(t.reservation(job), None, "{ctx}");
                        }
                        Some(grants) => {
                            assert!(room >= u64::from(gang), "{ctx}: no room but granted");
                            assert_eq!(grants.len(), gang as usize, "{ctx}");
                            for (i, g) in grants.iter().enumerate() {
                                assert_eq!(g.task, i as u32, "{ctx}");
                                assert_eq!(
                                    (g.cpu_millis, g.memory_bytes),
                                    (r.cpu_millis, r.memory_bytes),
                                    "{ctx}"
                                );
                                assert_eq!(g.gpus.len(), r.gpus as usize, "{ctx}");
                                let mw = &model.workers[&g.worker];
                                assert!(mw.accepting, "{ctx}: granted on a draining worker");
                                let (_, _, held) = model.used(g.worker);
                                for gpu in &g.gpus {
                                    assert_eq!(
                                        mw.healthy.get(gpu),
                                        Some(&true),
                                        "{ctx}: GPU {gpu}"
                                    );
                                    assert!(
                                        !held.contains_key(gpu),
                                        "{ctx}: GPU {gpu} already held"
                                    );
                                }
                            }
                            model.live.insert(job, grants);
                            // Panics in `used` if the new grants overlap among themselves.
                            for w in &workers {
                                model.used(*w);
                            }
                        }
                    }
                }
                60..=79 => {
                    let job = JobId(rng.random_range(0..40));
                    assert_eq!(t.release(job), model.live.remove(&job), "{ctx}");
                    assert_eq!(t.release(job), None, "{ctx}");
                }
                80..=89 => {
                    let Some(w) = pick(&mut rng, &workers) else {
                        continue;
                    };
                    let indices: Vec<u32> = model.workers[&w].healthy.keys().copied().collect();
                    let Some(i) = pick(&mut rng, &indices) else {
                        assert!(matches!(
                            t.set_gpu_health(w, 99, true),
                            Err(Error::UnknownDevice { .. })
                        ));
                        continue;
                    };
                    let healthy = rng.random_bool(0.5);
                    let holder = model.used(w).2.get(&i).copied();
                    assert_eq!(t.set_gpu_health(w, i, healthy).unwrap(), holder, "{ctx}");
                    model
                        .workers
                        .get_mut(&w)
                        .unwrap()
                        .healthy
                        .insert(i, healthy);
                }
                _ => {
                    let Some(w) = pick(&mut rng, &workers) else {
                        continue;
                    };
                    let accepting = rng.random_bool(0.6);
                    t.set_accepting(w, accepting).unwrap();
                    model.workers.get_mut(&w).unwrap().accepting = accepting;
                }
            }

            if let Err(e) = t.check() {
                panic!("{ctx}: {e}");
            }
            assert_eq!(t.reserved_jobs(), model.live.len(), "{ctx}");
            for (job, grants) in &model.live {
                assert_eq!(t.reservation(*job), Some(grants.as_slice()), "{ctx}");
            }
            let mut expect = (0u64, 0u64, 0u64, 0u64, 0usize);
            for (w, mw) in &model.workers {
                let (cpu, mem, held) = model.used(*w);
                expect.0 += mw.cpu - cpu;
                expect.1 += mw.mem - mem;
                expect.2 += mw
                    .healthy
                    .iter()
                    .filter(|(i, h)| **h && !held.contains_key(*i))
                    .count() as u64;
                expect.3 += mw.healthy.values().filter(|h| !**h).count() as u64;
                expect.4 += usize::from(mw.accepting);
            }
            let s = t.summary();
            assert_eq!(
                (
                    s.cpu_free,
                    s.memory_free,
                    s.gpus_free,
                    s.gpus_unhealthy,
                    s.accepting
                ),
                expect,
                "{ctx}"
            );
            assert_eq!(s.workers, model.workers.len(), "{ctx}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Placer
// ---------------------------------------------------------------------------------------------

fn placer(config: PlacerConfig, t0: Instant, workers: &[(u64, WorkerCapacity)]) -> Placer {
    let mut p = Placer::new(config, t0);
    for (id, c) in workers {
        p.add_worker(WorkerId(*id), c).unwrap();
    }
    p
}

fn placed(p: Option<Placement>) -> u64 {
    p.expect("a placement").job.0
}

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
    let gauge = |snap: &Snapshotter| -> Option<f64> {
        snap.snapshot()
            .into_vec()
            .into_iter()
            .find(|(k, _, _, _)| k.key().name() == m::QUEUE_DEPTH)
            .and_then(|(_, _, _, v)| match v {
                DebugValue::Gauge(g) => Some(g.0),
                _ => None,
            })
    };
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
