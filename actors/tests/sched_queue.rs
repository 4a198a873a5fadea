//! Placement's queue: priority with linear aging kept as a static rank (FIFO within a rank), an
//! old low-priority job overtaking at one point per period, strict priority without aging, and
//! removal, duplicate pushes and positions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/placement.rs"]
mod placement;

use std::time::Duration;

use cadre_actors::sched::JobQueue;
use cadre_actors::JobId;
use tokio::time::Instant;

use placement::{order, qj, res, secs, small, subscribed};

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
