//! The worker against a scripted fake scheduler, keeping its leases: renewals answered in time,
//! self-fencing when renewals go unanswered or answer too late (by the send time of the last
//! answered one), a refused renewal killing only its task, and registering again when the
//! scheduler forgets the worker.
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cadre_actors::{FencingToken, JobId, WorkerId};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::Level;

use support::{
    forever, ms, run, until, RenewMode, WorkerRig, FENCE_MARGIN, LEASE_LOST, RENEW_EVERY, TTL,
};

#[test]
fn worker_keeps_a_task_whose_renewals_are_answered_in_time() {
    for mode in [RenewMode::Answer, RenewMode::Late(ms(100))] {
        let obs =
            run(|_| async move {
                let rig = WorkerRig::start(false).await;
                rig.fake.script().renew = mode;
                rig.assign(1, 10, forever()).await;
                // Three lease lifetimes: renewals carry it.
                sleep(TTL * 3).await;
                assert!(
                    rig.fake.finished().is_empty(),
                    "{mode:?}: {:?}",
                    rig.fake.finished()
                );
                let renews = rig.fake.got().renews.clone();
                assert!(renews.len() >= 10, "{mode:?}: {} renewals", renews.len());
                assert!(renews
                    .iter()
                    .all(|r| r.worker == WorkerId(1)
                        && r.leases == vec![(JobId(1), FencingToken(10))]));
                rig.stop().await;
            });
        assert_eq!(
            obs.counter("cadre_worker_self_fences_total", &[]),
            0,
            "{mode:?}"
        );
    }
}

/// The fake renews nothing in time (`mode`): the worker kills the task by its kill-by instant.
fn self_fence_case(mode: RenewMode) {
    let obs = run(|obs| async move {
        let rig = WorkerRig::start(false).await;
        rig.fake.script().renew = mode;
        let t0 = Instant::now();
        rig.assign(1, 10, forever()).await;
        // The kill-by instant is TTL - FENCE_MARGIN after the assignment: not killed before.
        sleep_until(t0 + TTL - FENCE_MARGIN - ms(50)).await;
        assert!(rig.fake.finished().is_empty(), "{mode:?}: killed early");
        assert_eq!(obs.counter("cadre_worker_self_fences_total", &[]), 0);
        // Killed after it, before the lease itself would lapse at the scheduler.
        sleep_until(t0 + TTL).await;
        assert_eq!(
            rig.fake.finished(),
            vec![(FencingToken(10), LEASE_LOST)],
            "{mode:?}"
        );
        assert_eq!(
            rig.cancelled(),
            vec![JobId(1)],
            "the workload saw its cancel signal"
        );
        assert!(!rig.fake.got().renews.is_empty(), "renewals were tried");
        // Once: the task is gone, nothing more is fenced.
        sleep(TTL * 3).await;
        assert_eq!(rig.fake.finished().len(), 1);
        rig.stop().await;
    });
    assert_eq!(
        obs.counter("cadre_worker_self_fences_total", &[]),
        1,
        "{mode:?}"
    );
    assert!(obs.counter("cadre_worker_renew_failures_total", &[]) >= 1);
    let fenced = obs.events.with(
        Level::ERROR,
        "lease not renewed in time: the worker kills the task itself",
    );
    assert_eq!(fenced.len(), 1);
    assert_eq!(fenced[0].get("lease").map(String::as_str), Some("10"));
}

#[test]
fn worker_fences_itself_when_renewals_go_unanswered() {
    self_fence_case(RenewMode::Silent);
}

#[test]
fn worker_fences_itself_when_renewals_answer_after_the_margin() {
    self_fence_case(RenewMode::Late(FENCE_MARGIN + ms(100)));
}

#[test]
fn worker_fences_by_the_send_time_of_its_last_answered_renewal() {
    // Slow answers within the margin still renew; the kill-by instant counts from when the
    // renewal was sent, since the scheduler may have renewed the lease as early as that.
    let delay = FENCE_MARGIN - ms(50);
    run(|_| async move {
        let rig = WorkerRig::start(false).await;
        rig.fake.script().renew = RenewMode::Late(delay);
        rig.assign(1, 10, forever()).await;
        sleep(TTL * 3).await;
        assert!(
            rig.fake.finished().is_empty(),
            "slow but timely renewals keep the task"
        );
        rig.fake.script().renew = RenewMode::Silent;
        until("the task is fenced", TTL * 2, || {
            !rig.fake.finished().is_empty()
        })
        .await;
        {
            let got = rig.fake.got();
            assert_eq!(got.finished[0].end, LEASE_LOST);
            let fenced_at = got.finished_at[0];
            let (renewed_at, _) = *got
                .renew_log
                .iter()
                .rfind(|(_, mode)| *mode == RenewMode::Late(delay))
                .unwrap();
            // The scheduler renewed the lease when that renewal arrived: it lapses TTL after.
            assert!(
                fenced_at < renewed_at + TTL,
                "task fenced {:?} after its last renewal was sent: past the lease",
                fenced_at - renewed_at
            );
            assert!(fenced_at >= renewed_at + TTL - FENCE_MARGIN, "fenced early");
        }
        rig.stop().await;
    });
}

#[test]
fn worker_kills_only_the_task_whose_renewal_is_refused() {
    let obs = run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.fake.script().refuse.insert(FencingToken(10));
        rig.assign(1, 10, forever()).await;
        rig.assign(2, 11, forever()).await;
        until("the refused task ends", RENEW_EVERY * 3, || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(rig.fake.finished(), vec![(FencingToken(10), LEASE_LOST)]);
        assert_eq!(rig.cancelled(), vec![JobId(1)]);
        // The other task lives on through three lifetimes of its lease.
        sleep(TTL * 3).await;
        assert_eq!(rig.fake.finished().len(), 1, "{:?}", rig.fake.finished());
        let last = rig.fake.got().renews.last().cloned().unwrap();
        assert_eq!(last.leases, vec![(JobId(2), FencingToken(11))]);
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_worker_self_fences_total", &[]), 0);
    assert_eq!(
        obs.events
            .with(Level::WARN, "lease renewal refused: the task stops")
            .len(),
        1
    );
}

#[test]
fn worker_registers_again_when_the_scheduler_forgets_it() {
    let obs =
        run(|_| async {
            let rig = WorkerRig::start(false).await;
            rig.fake.script().renew = RenewMode::ForgetOnce;
            rig.assign(1, 10, forever()).await;
            until("a second registration", Duration::from_secs(1), || {
                rig.fake.got().registers.len() == 2
            })
            .await;
            // Its leases went with the scheduler's memory of it: the task stops.
            until("the task ends", Duration::from_secs(1), || {
                !rig.fake.finished().is_empty()
            })
            .await;
            assert_eq!(rig.fake.finished(), vec![(FencingToken(10), LEASE_LOST)]);
            assert_eq!(rig.cancelled(), vec![JobId(1)]);
            // It works under its new id.
            sleep(ms(10)).await;
            rig.assign(2, 20, forever()).await;
            until("a renewal under the new id", Duration::from_secs(1), || {
                rig.fake.got().renews.iter().any(|r| {
                    r.worker == WorkerId(2) && r.leases == vec![(JobId(2), FencingToken(20))]
                })
            })
            .await;
            let last_start = rig.fake.got().started.last().unwrap().worker;
            assert_eq!(last_start, WorkerId(2));
            sleep(TTL * 2).await;
            assert_eq!(rig.fake.finished().len(), 1, "the new task keeps running");
            assert_eq!(rig.fake.got().registers.len(), 2);
            rig.stop().await;
        });
    assert_eq!(
        obs.events
            .with(
                Level::WARN,
                "scheduler no longer knows this worker: its tasks stop and it registers again"
            )
            .len(),
        1
    );
}
