//! The three restart strategies: who restarts, in which order, and who keeps its state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use actix::prelude::*;
use cadre_supervisor::{SupervisorSpec, WorkerSpec};
use common::*;

fn three(log: &Log, sup: SupervisorSpec) -> (SupervisorSpec, Vec<Addr<Probe>>) {
    let a = WorkerSpec::new("a", Probe::factory("a", log));
    let b = WorkerSpec::new("b", Probe::factory("b", log));
    let c = WorkerSpec::new("c", Probe::factory("c", log));
    let addrs = vec![a.addr(), b.addr(), c.addr()];
    (sup.child(a).child(b).child(c), addrs)
}

/// Bumps every child's count to 1 and clears the log.
async fn prime(addrs: &[Addr<Probe>], log: &Log) {
    for addr in addrs {
        assert_eq!(addr.send(Inc).await.unwrap(), 1);
    }
    log.lock().unwrap().clear();
}

#[test]
fn one_for_one_restarts_only_the_failed_child() {
    let log = new_log();
    let l = log.clone();
    run(|_| async move {
        let (spec, addrs) = three(&l, SupervisorSpec::one_for_one());
        let root = spec.start("s1").await.unwrap();
        prime(&addrs, &l).await;
        addrs[1].do_send(Boom);
        // b restarted fresh (count 1 again), a and c kept their state (count 2)
        assert_eq!(addrs[1].send(Inc).await.unwrap(), 1);
        assert_eq!(addrs[0].send(Inc).await.unwrap(), 2);
        assert_eq!(addrs[2].send(Inc).await.unwrap(), 2);
        assert_eq!(entries(&l), vec!["start:b"]);
        root.stop().await.unwrap();
    });
}

#[test]
fn one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() {
    let log = new_log();
    let l = log.clone();
    run(|_| async move {
        let (spec, addrs) = three(&l, SupervisorSpec::one_for_all());
        let root = spec.start("s2").await.unwrap();
        prime(&addrs, &l).await;
        addrs[1].do_send(Boom);
        // b answers only once the whole group restarted (a before b, c after b, its mailbox
        // held while it was stopped)
        for i in [1, 0, 2] {
            assert_eq!(
                addrs[i].send(Inc).await.unwrap(),
                1,
                "child {i} restarted fresh"
            );
        }
        assert_eq!(
            entries(&l),
            vec!["stop:c", "stop:a", "start:a", "start:b", "start:c"]
        );
        root.stop().await.unwrap();
    });
}

#[test]
fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let log = new_log();
    let l = log.clone();
    run(|_| async move {
        let (spec, addrs) = three(&l, SupervisorSpec::rest_for_one());
        let root = spec.start("s3").await.unwrap();
        prime(&addrs, &l).await;
        addrs[1].do_send(Boom);
        assert_eq!(addrs[1].send(Inc).await.unwrap(), 1);
        assert_eq!(addrs[2].send(Inc).await.unwrap(), 1);
        assert_eq!(
            addrs[0].send(Inc).await.unwrap(),
            2,
            "a was started before b: untouched"
        );
        assert_eq!(entries(&l), vec!["stop:c", "start:b", "start:c"]);
        root.stop().await.unwrap();
    });
}
