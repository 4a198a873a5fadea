//! Readiness (`Ready`, what `/readyz` answers) follows the workers: a scheduler with no worker
//! registered is not ready and says that no worker is registered; it is ready once one
//! registers, not ready again once its only worker is declared dead or a restart forgot it,
//! and ready again when a worker registers again. A node that said "ready" with no worker
//! would take traffic it can only queue.
//!
//! Time only moves through `tokio::time` on a paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cadre_actors::protocol::WorkerDead;
use cadre_actors::scheduler::Ready;

use support::{run, SchedRig, LONG_TTL};

/// The scheduler's readiness now.
async fn ready(rig: &SchedRig) -> Result<(), String> {
    rig.sched.send(Ready).await.unwrap()
}

/// Not ready, for the reason that no worker is registered.
async fn assert_waits_for_a_worker(rig: &SchedRig, when: &str) {
    match ready(rig).await {
        Ok(()) => panic!("{when}: ready with no worker registered"),
        Err(reason) => assert!(
            reason.contains("no worker is registered"),
            "{when}: not ready, but the reason does not name the missing worker: {reason}"
        ),
    }
}

#[test]
fn a_scheduler_is_ready_only_while_a_worker_is_registered() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        // The journal is open (the first message waits for it): only the worker is missing.
        assert_waits_for_a_worker(&rig, "at start").await;
        let worker = rig.register(0, 1000).await;
        assert_eq!(ready(&rig).await, Ok(()), "a worker is registered");
        // The health monitor declares the only worker dead: nothing could run what comes.
        rig.sched
            .send(WorkerDead {
                worker,
                reason: "test".to_owned(),
                exited: false,
            })
            .await
            .unwrap();
        assert_waits_for_a_worker(&rig, "after its only worker died").await;
        rig.register(0, 1000).await;
        assert_eq!(ready(&rig).await, Ok(()), "the worker registered again");
        rig.stop().await;
    });
}

#[test]
fn a_restarted_scheduler_is_not_ready_until_a_worker_registers_again() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        rig.register(0, 1000).await;
        assert_eq!(ready(&rig).await, Ok(()));
        // A restart forgets every registration (workers register again on their next renewal).
        rig.root.terminate_child("scheduler").await.unwrap();
        rig.root.restart_child("scheduler").await.unwrap();
        assert_waits_for_a_worker(&rig, "after a restart").await;
        rig.register(0, 1000).await;
        assert_eq!(ready(&rig).await, Ok(()), "the worker registered again");
        rig.stop().await;
    });
}
