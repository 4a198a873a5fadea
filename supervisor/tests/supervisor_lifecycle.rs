//! Ordered start, reverse ordered stop with shutdown timeouts, and the restart types.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use actix::prelude::*;
use cadre_supervisor::{Restart, Shutdown, SupervisorSpec, WorkerSpec};
use common::*;
use tokio::time::Instant;

#[test]
fn children_start_in_order_and_stop_in_reverse_honouring_shutdown() {
    let log = new_log();
    let l = log.clone();
    let cap = run(|_| async move {
        let root = SupervisorSpec::one_for_one()
            .child(WorkerSpec::new("a", Probe::factory("a", &l)))
            .child(
                WorkerSpec::new("b", Probe::stubborn("b", &l))
                    .shutdown(Shutdown::Timeout(Duration::from_secs(2))),
            )
            .child(WorkerSpec::new("c", Probe::factory("c", &l)).shutdown(Shutdown::Brutal))
            .child(WorkerSpec::new("d", Probe::factory("d", &l)))
            .start("o")
            .await
            .unwrap();
        assert_eq!(
            entries(&l),
            vec!["start:a", "start:b", "start:c", "start:d"]
        );
        let t0 = Instant::now();
        root.stop().await.unwrap();
        assert!(
            t0.elapsed() >= Duration::from_secs(2),
            "waited for b's timeout"
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
        root.wait().await.unwrap();
    });
    // d stops gracefully, c is dropped without hooks, b vetoes and is killed, a stops
    assert_eq!(
        entries(&log),
        vec!["start:a", "start:b", "start:c", "start:d", "stop:d", "veto:b", "stop:a"]
    );
    assert_eq!(cap.failures_of("o/b", "shutdown_timeout"), 1);
    assert_eq!(cap.failures().len(), 1);
}

#[test]
fn transient_restarts_only_after_abnormal_exit() {
    let log = new_log();
    let l = log.clone();
    run(|_| async move {
        let t = WorkerSpec::new("t", Probe::factory("t", &l)).restart(Restart::Transient);
        let p = WorkerSpec::new("p", Probe::factory("p", &l));
        let (ta, pa) = (t.addr(), p.addr());
        let root = SupervisorSpec::one_for_one()
            .child(t)
            .child(p)
            .start("tr")
            .await
            .unwrap();
        ta.do_send(Boom);
        assert_eq!(
            ta.send(Inc).await.unwrap(),
            1,
            "transient restarted after a panic"
        );
        ta.do_send(StopSelf);
        pa.do_send(StopSelf);
        assert_eq!(
            pa.send(Inc).await.unwrap(),
            1,
            "permanent restarted after a normal exit"
        );
        let kids = root.which_children().await.unwrap();
        assert!(
            !kids[0].running,
            "transient not restarted after a normal exit"
        );
        assert_eq!(kids[0].restarts, 1);
        assert!(kids[1].running);
        // its mailbox is kept: a later restart_child serves what was queued meanwhile
        let queued = ta.send(Inc);
        root.restart_child("t").await.unwrap();
        assert_eq!(queued.await.unwrap(), 1);
        root.stop().await.unwrap();
    });
}

#[test]
fn temporary_is_never_restarted_and_is_removed() {
    let log = new_log();
    let l = log.clone();
    let cap = run(|_| async move {
        let t = WorkerSpec::new("tmp", Probe::factory("tmp", &l)).restart(Restart::Temporary);
        let addr = t.addr();
        let root = SupervisorSpec::one_for_one()
            .child(t)
            .start("tp")
            .await
            .unwrap();
        addr.do_send(Boom);
        let reply = addr.send(Inc).await;
        assert!(matches!(reply, Err(MailboxError::Closed)), "{reply:?}");
        assert!(root.which_children().await.unwrap().is_empty());
        root.stop().await.unwrap();
    });
    assert_eq!(cap.failures_of("tp/tmp", "panic"), 1);
    assert_eq!(entries(&log), vec!["start:tmp"]);
}

#[test]
fn a_child_that_cannot_start_fails_the_start_and_the_started_ones_stop_in_reverse() {
    let log = new_log();
    let l = log.clone();
    let cap = run(|_| async move {
        let result = SupervisorSpec::one_for_one()
            .child(WorkerSpec::new("a", Probe::factory("a", &l)))
            .child(WorkerSpec::new("b", Probe::factory("b", &l)))
            .child(WorkerSpec::new("broken", || -> Probe {
                panic!("no config")
            }))
            .child(WorkerSpec::new("d", Probe::factory("d", &l)))
            .start("sf")
            .await;
        assert!(
            matches!(&result, Err(cadre_supervisor::SupervisorError::StartFailed { path, reason }) if path == "sf" && reason.contains("broken")),
            "{result:?}"
        );
    });
    assert_eq!(
        entries(&log),
        vec!["start:a", "start:b", "stop:b", "stop:a"]
    );
    assert_eq!(cap.failures_of("sf/broken", "start_failed"), 1);
}
