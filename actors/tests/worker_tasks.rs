//! The worker against a scripted fake scheduler, running tasks: a workload's start and result, a
//! cancel kill through the workload's cancel signal, a start the scheduler refuses, a workload
//! past its timeout, and an unregistered workload.
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cadre_actors::job::{JobKind, WorkloadJob};
use cadre_actors::protocol::{Kill, KillReason, TaskEnd};
use cadre_actors::{FencingToken, JobId, WorkerId};
use serde_json::json;
use tokio::time::{sleep, sleep_until, Instant};

use support::{forever, lock, ms, run, until, workload_spec, WorkerRig, LEASE_LOST, TERM_GRACE};

#[test]
fn worker_runs_a_workload_reports_its_start_then_its_result() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.assign(1, 10, json!({ "steps": 5, "every_ms": 10 }))
            .await;
        until("the task finishes", Duration::from_secs(2), || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake.finished(),
            vec![(
                FencingToken(10),
                TaskEnd::Completed {
                    result: json!({ "steps": 5 })
                }
            )]
        );
        {
            let got = rig.fake.got();
            assert_eq!(got.started.len(), 1);
            let (s, f) = (&got.started[0], &got.finished[0]);
            assert_eq!(
                (s.worker, s.job, s.token),
                (WorkerId(1), JobId(1), FencingToken(10))
            );
            assert_eq!((f.worker, f.job), (WorkerId(1), JobId(1)));
        }
        assert_eq!(lock(&rig.workload).runs, vec![JobId(1)]);
        rig.stop().await;
    });
}

#[test]
fn worker_cancel_kill_stops_the_workload_through_its_cancel_signal() {
    let obs = run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.assign(1, 10, forever()).await;
        sleep(ms(200)).await;
        // A kill for a task it does not run changes nothing.
        rig.worker
            .send(Kill {
                job: JobId(1),
                token: FencingToken(99),
                reason: KillReason::Cancelled,
            })
            .await
            .unwrap();
        sleep(ms(200)).await;
        assert!(rig.fake.finished().is_empty());
        rig.worker
            .send(Kill {
                job: JobId(1),
                token: FencingToken(10),
                reason: KillReason::Cancelled,
            })
            .await
            .unwrap();
        until("the task ends", TERM_GRACE, || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake.finished(),
            vec![(
                FencingToken(10),
                TaskEnd::Killed {
                    reason: KillReason::Cancelled
                }
            )]
        );
        assert_eq!(rig.cancelled(), vec![JobId(1)]);
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_worker_self_fences_total", &[]), 0);
}

#[test]
fn worker_stops_a_task_whose_start_is_refused_without_running_it() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.fake.script().refuse_started = true;
        rig.assign(1, 10, forever()).await;
        until("the task ends", Duration::from_secs(1), || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(rig.fake.finished(), vec![(FencingToken(10), LEASE_LOST)]);
        assert!(lock(&rig.workload).runs.is_empty(), "the workload ran");
        rig.stop().await;
    });
}

#[test]
fn worker_times_out_a_workload_past_its_timeout() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        let mut spec = workload_spec("slow", forever());
        spec.timeout_secs = Some(2);
        let t0 = Instant::now();
        rig.assign_spec(1, 10, spec).await;
        sleep_until(t0 + Duration::from_secs(2) - ms(50)).await;
        assert!(rig.fake.finished().is_empty(), "ended before its timeout");
        until("the task times out", Duration::from_secs(1), || {
            !rig.fake.finished().is_empty()
        })
        .await;
        assert_eq!(
            rig.fake.finished(),
            vec![(FencingToken(10), TaskEnd::TimedOut)]
        );
        assert_eq!(rig.cancelled(), vec![JobId(1)]);
        rig.stop().await;
    });
}

#[test]
fn worker_fails_to_start_an_unregistered_workload() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        let mut spec = workload_spec("nope", json!({}));
        spec.kind = JobKind::Workload(WorkloadJob {
            name: "missing".to_owned(),
            params: json!({}),
        });
        rig.assign_spec(1, 10, spec).await;
        until("the task ends", Duration::from_secs(1), || {
            !rig.fake.finished().is_empty()
        })
        .await;
        let finished = rig.fake.finished();
        assert!(
            matches!(&finished[0].1, TaskEnd::StartFailed { error } if error.contains("not registered")),
            "{finished:?}"
        );
        assert!(rig.fake.got().started.is_empty());
        rig.stop().await;
    });
}
