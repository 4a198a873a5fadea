//! Restart intensity over a sliding period, and escalation through two levels.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cadre_supervisor::{SupervisorError, SupervisorSpec, WorkerSpec};
use common::*;
use tokio::time::sleep;

#[test]
fn intensity_window_slides_and_a_gap_does_not_reset_it() {
    let log = new_log();
    let l = log.clone();
    let cap = run(|_| async move {
        let w = WorkerSpec::new("w", Probe::factory("w", &l));
        let addr = w.addr();
        let root = SupervisorSpec::one_for_one()
            .intensity(2, Duration::from_secs(5))
            .child(w)
            .start("i1")
            .await
            .unwrap();
        // restarts at 0 s and 3 s, a gap, then 6 s: 0 s has left the window, {3, 6} = 2 allowed
        for at in [0u64, 3, 3] {
            sleep(Duration::from_secs(at)).await;
            addr.do_send(Boom);
            assert_eq!(addr.send(Inc).await.unwrap(), 1, "restarted");
        }
        // 7 s: {3, 6, 7} = 3 restarts within 5 s: more than 2, the supervisor gives up
        sleep(Duration::from_secs(1)).await;
        addr.do_send(Boom);
        let result = root.wait().await;
        assert!(
            matches!(result, Err(SupervisorError::RestartLimit { ref supervisor, intensity: 2, .. }) if supervisor == "i1"),
            "{result:?}"
        );
        assert!(
            addr.send(Inc).await.is_err(),
            "the mailbox closed with the tree"
        );
    });
    assert_eq!(cap.failures_of("i1/w", "panic"), 4);
    assert_eq!(cap.failures_of("i1", "restart_limit"), 1);
    // the children were stopped before the supervisor gave up
    assert_eq!(entries(&log).last().map(String::as_str), Some("start:w"));
    assert_eq!(counter("cadre_actor_restarts_total", &[("actor", "w")]), 3);
}

#[test]
fn escalation_goes_through_two_levels() {
    let log = new_log();
    let l = log.clone();
    let cap = run(|_| async move {
        let leaf = WorkerSpec::new("leaf", Probe::factory("leaf", &l));
        let addr = leaf.addr();
        let mid = SupervisorSpec::one_for_one()
            .intensity(1, Duration::from_secs(10))
            .child(leaf);
        let sibling = WorkerSpec::new("sibling", Probe::factory("sibling", &l));
        let root = SupervisorSpec::one_for_one()
            .intensity(1, Duration::from_secs(10))
            .child(mid.into_child("mid"))
            .child(sibling)
            .start("e")
            .await
            .unwrap();
        // two leaf panics: mid restarts once, then gives up and escalates; root restarts mid
        addr.do_send(Boom);
        assert_eq!(addr.send(Inc).await.unwrap(), 1);
        addr.do_send(Boom);
        assert_eq!(
            addr.send(Inc).await.unwrap(),
            1,
            "restarted through root restarting mid"
        );
        let kids = root.which_children().await.unwrap();
        assert_eq!(kids[0].restarts, 1, "mid restarted once by root");
        // the same again: root's second restart within its period is over its intensity
        addr.do_send(Boom);
        assert_eq!(addr.send(Inc).await.unwrap(), 1);
        addr.do_send(Boom);
        let result = root.wait().await;
        assert!(
            matches!(result, Err(SupervisorError::RestartLimit { ref supervisor, .. }) if supervisor == "e"),
            "{result:?}"
        );
    });
    assert_eq!(cap.failures_of("e/mid/leaf", "panic"), 4);
    assert_eq!(cap.failures_of("e/mid", "restart_limit"), 2);
    assert_eq!(cap.failures_of("e/mid", "escalated"), 2);
    assert_eq!(cap.failures_of("e", "restart_limit"), 1);
    // the root stopped its other child too, in reverse start order (sibling after mid)
    let all = entries(&log);
    assert_eq!(all.iter().filter(|e| *e == "stop:sibling").count(), 1);
}

#[test]
fn backoff_grows_exponentially_between_consecutive_restarts() {
    let log = new_log();
    let l = log.clone();
    run(|_| async move {
        let w = WorkerSpec::new("bo", Probe::factory("bo", &l));
        let addr = w.addr();
        let root = SupervisorSpec::one_for_one()
            .intensity(10, Duration::from_secs(60))
            .backoff(cadre_supervisor::Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(3),
                jitter: 0.0,
            })
            .child(w)
            .start("bo")
            .await
            .unwrap();
        let mut waits = Vec::new();
        for _ in 0..4 {
            let t0 = tokio::time::Instant::now();
            addr.do_send(Boom);
            assert_eq!(addr.send(Inc).await.unwrap(), 1);
            waits.push(t0.elapsed().as_secs());
        }
        // 1 s, 2 s, then capped at 3 s
        assert_eq!(waits, vec![1, 2, 3, 3]);
        // while a restart waits for its delay the supervisor still answers, and a stop cancels it
        addr.do_send(Boom);
        settle().await;
        let t0 = tokio::time::Instant::now();
        assert!(!root.which_children().await.unwrap()[0].running);
        root.stop().await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "stop did not wait for the backoff"
        );
        settle().await;
        assert_eq!(
            entries(&l).iter().filter(|e| *e == "start:bo").count(),
            5,
            "no restart after the stop"
        );
    });
}
