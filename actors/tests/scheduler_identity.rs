//! A worker is `(node, name)`, not an actor path: two nodes that both call their worker `cpu-0`
//! are two workers, each keeping its jobs when the other registers; the same pair registering
//! again is a restart, which replaces the earlier registration (whose jobs are lost and
//! requeued), so its capacity is never offered twice.
//!
//! A drained node (`cadre drain`) takes no new work, keeps its running jobs, stays drained
//! when it registers again, and takes work again once undrained. A dead worker is shown as
//! departed until it registers again.
//!
//! Time only moves through `tokio::time` on a paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cadre_actors::job::JobState;
use cadre_actors::protocol::WorkerDead;
use cadre_actors::scheduler::{DrainNode, Nodes};
use cadre_actors::{Error, WorkerIdentity};

use support::{run, sched_job, SchedRig, LONG_TTL};

#[test]
fn workers_of_the_same_name_on_two_nodes_do_not_evict_each_other() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 3).await;
        let a = rig
            .register_as(0, WorkerIdentity::new("node-a", "cpu-0"), 1000, Vec::new())
            .await;
        let job = rig.submit(vec![sched_job("on-a", 3)]).await[0];
        let assign = rig.until_assigns(0, 1).await.remove(0);
        rig.started(a, &assign).await.unwrap();
        rig.until_state(job, JobState::Running).await;

        // Node b's worker has the same name: a second worker, not a restart of the first.
        let b = rig
            .register_as(1, WorkerIdentity::new("node-b", "cpu-0"), 1000, Vec::new())
            .await;
        assert_ne!(a, b);
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        let mut seen: Vec<(String, String)> = nodes
            .workers
            .iter()
            .map(|w| (w.node.clone(), w.name.clone()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("node-a".to_owned(), "cpu-0".to_owned()),
                ("node-b".to_owned(), "cpu-0".to_owned())
            ]
        );
        assert_eq!(nodes.capacity.cpu_total, 2000);
        let view = rig.view(job).await;
        assert_eq!((view.state, view.attempt), (JobState::Running, 1));

        // Node a's worker again (it restarted): its earlier registration goes, with its job.
        let again = rig
            .register_as(2, WorkerIdentity::new("node-a", "cpu-0"), 1000, Vec::new())
            .await;
        assert_ne!(again, a);
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        let ids: Vec<_> = nodes.workers.iter().map(|w| w.worker).collect();
        assert!(
            ids.contains(&b) && ids.contains(&again) && !ids.contains(&a),
            "{ids:?}"
        );
        assert_eq!(nodes.capacity.cpu_total, 2000);
        // The lost attempt is requeued and placed again (attempt 2).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let view = rig.view(job).await;
            if view.attempt == 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "still {view:?}");
            tokio::time::sleep(support::ms(5)).await;
        }
        rig.stop().await;
    });
}

#[test]
fn a_drained_node_takes_no_new_work_keeps_its_jobs_and_takes_work_again_when_undrained() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 3).await;
        let a = rig
            .register_as(0, WorkerIdentity::new("node-a", "cpu-0"), 1000, Vec::new())
            .await;
        let running = rig.submit(vec![sched_job("before", 3)]).await[0];
        let assign = rig.until_assigns(0, 1).await.remove(0);
        rig.started(a, &assign).await.unwrap();
        rig.register_as(1, WorkerIdentity::new("node-b", "cpu-0"), 2000, Vec::new())
            .await;

        let drained = rig
            .sched
            .send(DrainNode {
                node: "node-a".to_owned(),
                drain: true,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(drained, vec![a]);
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        let draining: Vec<(String, bool)> = nodes
            .workers
            .iter()
            .map(|w| (w.node.clone(), w.draining))
            .collect();
        assert!(
            draining.contains(&("node-a".to_owned(), true)),
            "{draining:?}"
        );
        assert!(
            draining.contains(&("node-b".to_owned(), false)),
            "{draining:?}"
        );
        // New work goes to b only; a's running job keeps its lease.
        rig.submit(vec![sched_job("after-1", 3), sched_job("after-2", 3)])
            .await;
        rig.until_assigns(1, 2).await;
        tokio::time::sleep(support::ms(100)).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            1,
            "a drained node got new work"
        );
        assert_eq!(rig.view(running).await.state, JobState::Running);

        // a's worker registers again (its agent reconnected): still drained.
        rig.register_as(2, WorkerIdentity::new("node-a", "cpu-0"), 1000, Vec::new())
            .await;
        rig.submit(vec![sched_job("after-3", 3)]).await;
        tokio::time::sleep(support::ms(100)).await;
        assert!(
            rig.fake(2).assigns().is_empty(),
            "a drained node's new registration got work"
        );

        // Undrained: it takes the waiting job.
        rig.sched
            .send(DrainNode {
                node: "node-a".to_owned(),
                drain: false,
            })
            .await
            .unwrap()
            .unwrap();
        rig.until_assigns(2, 1).await;

        let unknown = rig
            .sched
            .send(DrainNode {
                node: "node-z".to_owned(),
                drain: true,
            })
            .await
            .unwrap();
        assert!(
            matches!(&unknown, Err(Error::UnknownNode { node }) if node == "node-z"),
            "{unknown:?}"
        );
        rig.stop().await;
    });
}

/// `cadre nodes` shows each worker's datacenter, what it has free and its state: alive while it
/// renews, suspect after half a lease without a renewal.
#[test]
fn the_nodes_view_shows_datacenter_free_capacity_and_a_silent_worker_as_suspect() {
    run(|_| async {
        let ttl = std::time::Duration::from_secs(4);
        let rig = SchedRig::start(ttl, 1).await;
        let w = rig.register(0, 2000).await;
        rig.submit(vec![sched_job("one", 3)]).await;
        rig.until_assigns(0, 1).await;
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        let view = nodes.workers.iter().find(|v| v.worker == w).unwrap();
        assert_eq!(view.datacenter, "dc1");
        assert_eq!(view.free.cpu_millis, 1000, "{view:?}");
        assert_eq!(view.state, "alive");
        tokio::time::sleep(ttl / 2 + support::ms(100)).await;
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        let view = nodes.workers.iter().find(|v| v.worker == w).unwrap();
        assert_eq!(view.state, "suspect", "{view:?}");
        rig.stop().await;
    });
}

/// A worker that died is shown as dead, with why and when, until it registers again; only the
/// latest 64 are kept.
#[test]
fn a_dead_worker_is_shown_as_departed_until_it_registers_again() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register(0, 1000).await;
        rig.sched
            .send(WorkerDead {
                worker: w,
                reason: "its connection closed".to_owned(),
                exited: true,
            })
            .await
            .unwrap();
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        assert!(nodes.workers.is_empty(), "{nodes:?}");
        assert_eq!(nodes.departed.len(), 1, "{nodes:?}");
        let dead = &nodes.departed[0];
        assert_eq!((dead.worker, dead.name.as_str()), (w, "fake-worker-0"));
        assert!(dead.reason.contains("connection closed"), "{dead:?}");
        assert!(dead.died_ms >= dead.registered_ms, "{dead:?}");

        let again = rig.register(0, 1000).await;
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        assert!(nodes.departed.is_empty(), "back, not dead: {nodes:?}");
        assert_eq!(nodes.workers.len(), 1);
        assert_ne!(again, w);

        for i in 0..70 {
            let id = rig
                .register_as(
                    0,
                    WorkerIdentity::new(format!("n{i}"), "cpu-0"),
                    1000,
                    Vec::new(),
                )
                .await;
            rig.sched
                .send(WorkerDead {
                    worker: id,
                    reason: format!("gone {i}"),
                    exited: true,
                })
                .await
                .unwrap();
        }
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        assert_eq!(nodes.departed.len(), 64, "bounded");
        assert_eq!(nodes.departed[63].reason, "gone 69", "newest last");
        rig.stop().await;
    });
}
