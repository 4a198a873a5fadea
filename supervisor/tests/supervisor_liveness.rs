//! Liveness: a child that stops making progress within its deadline is killed and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cadre_supervisor::{SupervisorSpec, WorkerSpec};
use common::*;
use tokio::time::Instant;

#[test]
fn unresponsive_child_is_killed_and_restarted() {
    let log = new_log();
    let l = log.clone();
    let cap = run(|_| async move {
        let w = WorkerSpec::new("stuck", Probe::factory("stuck", &l))
            .progress_deadline(Duration::from_secs(3));
        let addr = w.addr();
        let root = SupervisorSpec::one_for_one()
            .child(w)
            .start("lv")
            .await
            .unwrap();
        assert_eq!(addr.send(Inc).await.unwrap(), 1);
        let t0 = Instant::now();
        addr.do_send(Hang);
        // queued behind the hang: answered by the restarted instance
        assert_eq!(addr.send(Inc).await.unwrap(), 1);
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        root.stop().await.unwrap();
    });
    assert_eq!(cap.failures_of("lv/stuck", "unresponsive"), 1);
    assert_eq!(
        entries(&log),
        vec!["start:stuck", "start:stuck", "stop:stuck"]
    );
}

#[test]
fn a_child_without_deadline_may_wait_as_long_as_it_likes() {
    let log = new_log();
    let l = log.clone();
    let cap = run(|_| async move {
        let w = WorkerSpec::new("patient", Probe::factory("patient", &l));
        let addr = w.addr();
        let root = SupervisorSpec::one_for_one()
            .child(w)
            .start("lv2")
            .await
            .unwrap();
        addr.do_send(Hang);
        let queued = addr.send(Inc);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        root.stop().await.unwrap();
        assert!(
            queued.await.is_err(),
            "never handled, and the caller is told when the tree stops"
        );
    });
    assert!(cap.failures().is_empty());
}
