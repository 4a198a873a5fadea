//! Dynamic children (start, terminate, restart, delete, which, count) and the dynamic pool.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use actix::prelude::*;
use cadre_supervisor::{
    ChildKind, Pool, Restart, SupervisedContext, SupervisorError, SupervisorSpec, WorkerSpec,
};
use common::*;

#[test]
fn dynamic_children_follow_otp_semantics() {
    let log = new_log();
    let l = log.clone();
    run(|_| async move {
        let root = SupervisorSpec::one_for_one().start("dy").await.unwrap();
        let x = WorkerSpec::new("x", Probe::factory("x", &l));
        let addr = x.addr();
        root.start_child(x).await.unwrap();
        let dup = root
            .start_child(WorkerSpec::new("x", Probe::factory("x2", &l)))
            .await;
        assert!(
            matches!(dup, Err(SupervisorError::DuplicateChild { .. })),
            "{dup:?}"
        );
        root.start_child(SupervisorSpec::one_for_one().into_child("sub"))
            .await
            .unwrap();
        let counts = root.count_children().await.unwrap();
        assert_eq!(
            (
                counts.specs,
                counts.active,
                counts.workers,
                counts.supervisors
            ),
            (2, 2, 1, 1)
        );
        assert_eq!(addr.send(Inc).await.unwrap(), 1);

        let running = root.delete_child("x").await;
        assert!(
            matches!(running, Err(SupervisorError::ChildRunning { .. })),
            "{running:?}"
        );
        root.terminate_child("x").await.unwrap();
        let kids = root.which_children().await.unwrap();
        assert_eq!(kids[0].id, "x");
        assert!(!kids[0].running);
        assert_eq!(kids[1].kind, ChildKind::Supervisor);

        root.restart_child("x").await.unwrap();
        assert_eq!(
            addr.send(Inc).await.unwrap(),
            1,
            "same address, fresh instance"
        );
        let again = root.restart_child("x").await;
        assert!(
            matches!(again, Err(SupervisorError::AlreadyRunning { .. })),
            "{again:?}"
        );

        root.terminate_child("x").await.unwrap();
        root.delete_child("x").await.unwrap();
        assert!(matches!(addr.send(Inc).await, Err(MailboxError::Closed)));
        let missing = root.terminate_child("x").await;
        assert!(
            matches!(missing, Err(SupervisorError::NoSuchChild { .. })),
            "{missing:?}"
        );
        assert_eq!(root.count_children().await.unwrap().specs, 1);
        root.stop().await.unwrap();
        assert!(matches!(
            root.count_children().await,
            Err(SupervisorError::NotRunning { .. })
        ));
    });
    assert_eq!(
        entries(&log),
        vec!["start:x", "stop:x", "start:x", "stop:x"]
    );
}

#[test]
fn invalid_child_specs_are_refused_with_the_field() {
    run(|_| async {
        let root = SupervisorSpec::one_for_one().start("inv").await.unwrap();
        let log = new_log();
        let bad = root
            .start_child(WorkerSpec::new("a/b", Probe::factory("a", &log)))
            .await;
        assert!(
            matches!(&bad, Err(SupervisorError::InvalidSpec { field, .. }) if field == "child.id"),
            "{bad:?}"
        );
        let dup = SupervisorSpec::one_for_one()
            .child(WorkerSpec::new("same", Probe::factory("a", &log)))
            .child(WorkerSpec::new("same", Probe::factory("b", &log)))
            .start("inv2")
            .await;
        assert!(
            matches!(&dup, Err(SupervisorError::InvalidSpec { field, .. }) if field == "inv2.children[1].id"),
            "{dup:?}"
        );
        assert_eq!(
            root.count_children().await.unwrap().specs,
            0,
            "nothing invalid stored"
        );
        root.stop().await.unwrap();
    });
}

struct Job {
    n: u64,
}

impl Actor for Job {
    type Context = SupervisedContext<Self>;
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Get;

impl Handler<Get> for Job {
    type Result = u64;
    fn handle(&mut self, _: Get, _: &mut Self::Context) -> u64 {
        self.n
    }
}

impl Handler<Boom> for Job {
    type Result = ();
    fn handle(&mut self, _: Boom, _: &mut Self::Context) {
        panic!("job {} failed", self.n);
    }
}

#[test]
fn pool_spawns_children_from_arguments_and_labels_them_by_pool() {
    let cap = run(|_| async {
        let (pool, spec) = Pool::new("jobs", |n: u64| Job { n });
        let pool = pool.child_restart(Restart::Transient);
        let root = SupervisorSpec::one_for_one()
            .child(spec.into_child("jobs"))
            .start("pl")
            .await
            .unwrap();
        let mut addrs = Vec::new();
        for n in 1..=3 {
            let (id, addr) = pool.spawn(n * 10).await.unwrap();
            assert_eq!(id, format!("jobs-{n}"));
            addrs.push(addr);
        }
        assert_eq!(addrs[1].send(Get).await.unwrap(), 20);
        assert_eq!(pool.count().await.unwrap().active, 3);
        // a transient child that panics is rebuilt from its own arguments
        addrs[1].do_send(Boom);
        assert_eq!(addrs[1].send(Get).await.unwrap(), 20);
        pool.terminate("jobs-1").await.unwrap();
        assert_eq!(pool.count().await.unwrap().specs, 2);
        assert!(addrs[0].send(Get).await.is_err());
        root.stop().await.unwrap();
    });
    assert_eq!(cap.failures_of("pl/jobs/jobs-2", "panic"), 1);
    assert_eq!(
        counter(
            "cadre_actor_failures_total",
            &[("actor", "jobs"), ("kind", "panic")]
        ),
        1
    );
    assert_eq!(
        counter("cadre_actor_failures_total", &[("actor", "jobs-2")]),
        0
    );
}
