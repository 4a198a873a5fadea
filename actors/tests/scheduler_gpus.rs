//! The real scheduler's GPUs, driven by fake workers: GPU health reports (no new work on an
//! unhealthy GPU, unknown workers and devices refused, a repeated report taken as no change, the
//! GPU of a worker that registered again, a job left on a GPU that turns unhealthy), dropping a
//! worker's earlier registration, releasing GPUs on every way a job ends, and the reason a GPU
//! job waits on a node without GPUs.
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cadre_actors::job::JobState;
use cadre_actors::protocol::{JobStalled, KillReason, Renew, TaskEnd};
use cadre_actors::sched::Waiting;
use cadre_actors::scheduler::{CancelJob, CancelOutcome, JobView, Nodes};
use cadre_actors::{Error, JobId, WorkerId, WorkerIdentity};
use serde_json::json;
use tokio::time::{sleep, Instant};
use tracing::Level;

use support::{fake_worker, gpu_job, ms, run, sched_job, until, SchedRig, LONG_TTL};

#[test]
fn scheduler_places_no_new_work_on_an_unhealthy_gpu_until_it_is_healthy_again() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register_gpus(0, 4000, vec![0, 1]).await;
        let path = fake_worker(0);
        rig.gpu_health(&path, 0, false).await.unwrap();
        let [two, one] = rig
            .submit(vec![gpu_job("two-gpus", 2), gpu_job("one-gpu", 1)])
            .await[..]
        else {
            panic!("two ids");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(a.job, one);
        assert_eq!(a.grant.gpus, vec![1], "placed on the healthy GPU only");
        sleep(ms(200)).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            1,
            "the 2-GPU job was placed with GPU 0 unhealthy"
        );
        let view = rig.view(two).await;
        assert_eq!(view.state, JobState::Queued);
        assert!(
            matches!(&view.waiting, Some(Waiting::Unplaceable { .. })),
            "{:?}",
            view.waiting
        );
        rig.started(w, &a).await.unwrap();
        rig.until_state(one, JobState::Running).await;

        // Healthy again: the 2-GPU job rejoins the queue but waits for GPU 1.
        rig.gpu_health(&path, 0, true).await.unwrap();
        sleep(ms(200)).await;
        assert_eq!(rig.fake(0).assigns().len(), 1, "placed on a held GPU");
        let view = rig.view(two).await;
        assert_eq!(view.state, JobState::Queued);
        assert!(
            matches!(&view.waiting, Some(Waiting::Queued { .. })),
            "still unplaceable once every GPU is healthy: {:?}",
            view.waiting
        );

        rig.finished(w, one, a.token, TaskEnd::Completed { result: json!(1) })
            .await
            .unwrap();
        rig.until_state(one, JobState::Succeeded).await;
        let b = rig.until_assigns(0, 2).await.remove(1);
        assert_eq!(b.job, two);
        let mut gpus = b.grant.gpus.clone();
        gpus.sort_unstable();
        assert_eq!(gpus, vec![0, 1]);
        assert!(rig.fake(0).kills().is_empty());
        rig.stop().await;
    });
}

#[test]
fn scheduler_gpu_health_places_at_once_when_healthy_and_refuses_unknown_workers_and_devices() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let path = fake_worker(0);
        // Before the worker registers, its path is unknown.
        let err = rig.gpu_health(&path, 0, false).await;
        assert!(err.is_err(), "{err:?}");
        let w = rig.register_gpus(0, 4000, vec![0, 1]).await;
        let err = rig
            .gpu_health(&WorkerIdentity::new("test", "no-such-worker"), 0, false)
            .await;
        assert!(err.is_err(), "{err:?}");
        let err = rig.gpu_health(&path, 5, false).await;
        assert!(
            matches!(err, Err(Error::UnknownDevice { worker, index: 5 }) if worker == w),
            "{err:?}"
        );

        rig.gpu_health(&path, 1, false).await.unwrap();
        // A device already unhealthy may be reported again (the monitor does so on every
        // sample): taken, and counted as no change.
        rig.gpu_health(&path, 1, false).await.unwrap();
        let [job] = rig.submit(vec![gpu_job("two-gpus", 2)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        assert!(rig.fake(0).assigns().is_empty());
        assert_eq!(rig.view(job).await.state, JobState::Queued);
        // Nothing else happens: the healthy report alone places the job.
        rig.gpu_health(&path, 1, true).await.unwrap();
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(a.job, job);
        let mut gpus = a.grant.gpus.clone();
        gpus.sort_unstable();
        assert_eq!(gpus, vec![0, 1]);
        rig.stop().await;
    });
    let count = |state| obs.counter("cadre_gpu_health_changes_total", &[("state", state)]);
    assert_eq!(count("unknown_worker"), 2);
    assert_eq!(count("refused"), 1);
    assert_eq!(count("unhealthy"), 1);
    assert_eq!(count("healthy"), 1);
}

#[test]
fn scheduler_takes_a_repeated_gpu_health_report_as_no_change() {
    let obs = run(|obs| async move {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register_gpus(0, 4000, vec![0, 1]).await;
        let path = fake_worker(0);
        let count = |state| obs.counter("cadre_gpu_health_changes_total", &[("state", state)]);
        rig.gpu_health(&path, 0, false).await.unwrap();
        assert_eq!(count("unhealthy"), 1);
        let [two] = rig.submit(vec![gpu_job("two-gpus", 2)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        // Again, twice: taken, not counted, and GPU 0 stays unhealthy.
        rig.gpu_health(&path, 0, false).await.unwrap();
        rig.gpu_health(&path, 0, false).await.unwrap();
        assert_eq!(count("unhealthy"), 1);
        sleep(ms(200)).await;
        assert!(
            rig.fake(0).assigns().is_empty(),
            "placed on the unhealthy GPU"
        );
        let view = rig.view(two).await;
        assert_eq!(view.state, JobState::Queued);
        assert!(
            matches!(&view.waiting, Some(Waiting::Unplaceable { .. })),
            "{:?}",
            view.waiting
        );
        // Healthy: the job is placed on both; a repeat of that is no change either.
        rig.gpu_health(&path, 0, true).await.unwrap();
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!((a.job, a.grant.worker), (two, w));
        rig.gpu_health(&path, 0, true).await.unwrap();
        rig.gpu_health(&path, 1, true).await.unwrap();
        assert_eq!(count("healthy"), 1);
        rig.stop().await;
    });
    // Logged once each, on the change.
    assert_eq!(
        obs.events
            .with(Level::WARN, "GPU unhealthy: no new work is placed on it")
            .len(),
        1
    );
    assert_eq!(
        obs.events
            .with(Level::INFO, "GPU healthy again: it takes work")
            .len(),
        1
    );
    let count = |state| obs.counter("cadre_gpu_health_changes_total", &[("state", state)]);
    assert_eq!((count("unhealthy"), count("healthy")), (1, 1));
    assert_eq!(count("refused") + count("unknown_worker"), 0);
}

#[test]
fn scheduler_takes_the_gpu_of_a_worker_that_registered_again_as_healthy_until_it_is_reported() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let first = rig.register_gpus(0, 4000, vec![0]).await;
        let path = fake_worker(0);
        rig.gpu_health(&path, 0, false).await.unwrap();
        let [a_job] = rig.submit(vec![gpu_job("a", 1)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        assert!(
            rig.fake(0).assigns().is_empty(),
            "placed on the unhealthy GPU"
        );

        // The worker registers again (it restarted): its GPU is healthy to the scheduler, and
        // with no report since, the waiting job is placed on it.
        let second = rig.register_gpus(0, 4000, vec![0]).await;
        assert_ne!(second, first);
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!(
            (a.job, a.grant.worker, a.grant.gpus.clone()),
            (a_job, second, vec![0])
        );
        rig.started(second, &a).await.unwrap();
        rig.until_state(a_job, JobState::Running).await;

        // The monitor's next sample reports it unhealthy again: a change for the new
        // registration, so it marks the GPU, and the next job stays off it once it is free.
        rig.gpu_health(&path, 0, false).await.unwrap();
        let [b_job] = rig.submit(vec![gpu_job("b", 1)]).await[..] else {
            panic!("one id");
        };
        rig.finished(second, a_job, a.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(a_job, JobState::Succeeded).await;
        sleep(ms(200)).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            1,
            "placed on the GPU reported unhealthy"
        );
        let view = rig.view(b_job).await;
        assert_eq!(view.state, JobState::Queued);
        assert!(
            matches!(&view.waiting, Some(Waiting::Unplaceable { .. })),
            "{:?}",
            view.waiting
        );
        rig.gpu_health(&path, 0, true).await.unwrap();
        let b = rig.until_assigns(0, 2).await.remove(1);
        assert_eq!(
            (b.job, b.grant.worker, b.grant.gpus),
            (b_job, second, vec![0])
        );
        rig.stop().await;
    });
    let count = |state| obs.counter("cadre_gpu_health_changes_total", &[("state", state)]);
    assert_eq!((count("unhealthy"), count("healthy")), (2, 1));
}

#[test]
fn scheduler_drops_the_earlier_registration_of_a_worker_that_registers_again() {
    let obs = run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let first = rig.register_gpus(0, 4000, vec![0]).await;
        let mut gpu = gpu_job("gpu", 1);
        gpu.max_requeues = 1;
        let [gpu, cpu] = rig.submit(vec![gpu, sched_job("cpu-no-retry", 0)]).await[..] else {
            panic!("two ids");
        };
        let assigns = rig.until_assigns(0, 2).await;
        let by_job = |job: JobId| assigns.iter().find(|a| a.job == job).unwrap().clone();
        let (old, leased) = (by_job(gpu), by_job(cpu));
        assert_eq!((old.grant.worker, old.grant.gpus.clone()), (first, vec![0]));
        rig.started(first, &old).await.unwrap();
        rig.until_state(gpu, JobState::Running).await;
        assert_eq!(rig.view(cpu).await.state, JobState::Leased);

        // It restarted: the earlier registration goes, with its leases and GPU.
        let second = rig.register_gpus(0, 4000, vec![0]).await;
        assert_ne!(second, first);
        // The running GPU job is lost and runs again, as attempt 2 under a larger token, on the
        // one GPU 0 there is; the leased one without retries fails.
        let again = rig.until_assigns(0, 3).await.remove(2);
        assert_eq!(
            (
                again.job,
                again.attempt,
                again.grant.worker,
                again.grant.gpus.clone()
            ),
            (gpu, 2, second, vec![0])
        );
        assert!(again.token > old.token, "{} !> {}", again.token, old.token);
        let view = rig.view(gpu).await;
        assert!(
            view.last_loss
                .as_deref()
                .is_some_and(|l| l.contains("registered again")),
            "{:?}",
            view.last_loss
        );
        let view = rig.until_state(cpu, JobState::Failed).await;
        assert_eq!(view.attempt, 1);
        rig.started(second, &again).await.unwrap();
        rig.until_state(gpu, JobState::Running).await;

        // A second 1-GPU job waits: GPU 0 is not offered twice.
        let [next] = rig.submit(vec![gpu_job("next", 1)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        assert_eq!(rig.fake(0).assigns().len(), 3, "GPU 0 booked twice");
        assert_eq!(rig.view(next).await.state, JobState::Queued);

        // One worker by that name, the new one, holding the one lease.
        let nodes = rig.sched.send(Nodes).await.unwrap().unwrap();
        let named: Vec<(WorkerId, usize)> = nodes
            .workers
            .iter()
            .filter(|n| n.node == fake_worker(0).node && n.name == fake_worker(0).name)
            .map(|n| (n.worker, n.leases))
            .collect();
        assert_eq!(named, vec![(second, 1)]);
        assert_eq!(nodes.workers.len(), 1);
        assert_eq!(nodes.capacity.gpus_total, 1);

        // The earlier registration is unknown, and its tokens are void.
        let err = rig
            .sched
            .send(Renew {
                worker: first,
                leases: vec![(gpu, old.token)],
            })
            .await
            .unwrap();
        assert!(
            matches!(err, Err(Error::UnknownWorker { worker }) if worker == first),
            "{err:?}"
        );
        let err = rig
            .finished(first, cpu, leased.token, TaskEnd::Exited { code: 0 })
            .await;
        assert!(matches!(err, Err(Error::StaleToken { .. })), "{err:?}");
        assert_eq!(rig.view(cpu).await.state, JobState::Failed);

        // Once attempt 2 ends, the waiting job gets GPU 0.
        rig.finished(second, gpu, again.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(gpu, JobState::Succeeded).await;
        let b = rig.until_assigns(0, 4).await.remove(3);
        assert_eq!(
            (b.job, b.grant.worker, b.grant.gpus),
            (next, second, vec![0])
        );
        rig.stop().await;
    });
    assert_eq!(obs.counter("cadre_worker_deaths_total", &[]), 1);
}

#[test]
fn scheduler_leaves_a_job_on_a_gpu_that_turns_unhealthy_and_gives_that_gpu_to_no_one_else() {
    run(|_| async {
        let rig = SchedRig::start(LONG_TTL, 1).await;
        let w = rig.register_gpus(0, 4000, vec![0]).await;
        let path = fake_worker(0);
        let [first] = rig.submit(vec![gpu_job("first", 1)]).await[..] else {
            panic!("one id");
        };
        let a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!((a.job, a.grant.gpus.clone()), (first, vec![0]));
        rig.started(w, &a).await.unwrap();
        rig.until_state(first, JobState::Running).await;
        rig.gpu_health(&path, 0, false).await.unwrap();
        let [second] = rig.submit(vec![gpu_job("second", 1)]).await[..] else {
            panic!("one id");
        };
        sleep(ms(200)).await;
        // The job on it runs on: no kill.
        assert!(rig.fake(0).kills().is_empty(), "{:?}", rig.fake(0).kills());
        assert_eq!(rig.view(first).await.state, JobState::Running);
        // Released, the unhealthy GPU is not given to the waiting job.
        rig.finished(w, first, a.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(first, JobState::Succeeded).await;
        sleep(ms(200)).await;
        assert_eq!(
            rig.fake(0).assigns().len(),
            1,
            "placed on the unhealthy GPU"
        );
        assert_eq!(rig.view(second).await.state, JobState::Queued);
        rig.gpu_health(&path, 0, true).await.unwrap();
        let b = rig.until_assigns(0, 2).await.remove(1);
        assert_eq!((b.job, b.grant.gpus.clone()), (second, vec![0]));
        rig.stop().await;
    });
}

/// How a GPU job's attempt ends, for the release test.
enum GpuEnd {
    /// The worker reports this end after the start; the job ends in the state.
    Report(TaskEnd, JobState),
    /// The worker reports `StartFailed` without a start.
    StartFailed,
    /// The user cancels it; the worker confirms the kill.
    Cancel,
    /// The health monitor reports it stalled.
    Stall,
    /// Its lease runs out (no renewals).
    Expire,
}

#[test]
fn scheduler_releases_the_gpu_on_every_way_a_job_ends() {
    let ttl = Duration::from_secs(1);
    run(|_| async move {
        let rig = SchedRig::start(ttl, 1).await;
        let w = rig.register_gpus(0, 4000, vec![0]).await;
        let ends = [
            (
                "succeeded",
                GpuEnd::Report(TaskEnd::Exited { code: 0 }, JobState::Succeeded),
            ),
            (
                "completed",
                GpuEnd::Report(TaskEnd::Completed { result: json!(1) }, JobState::Succeeded),
            ),
            (
                "exited nonzero",
                GpuEnd::Report(TaskEnd::Exited { code: 3 }, JobState::Failed),
            ),
            (
                "workload failed",
                GpuEnd::Report(
                    TaskEnd::WorkloadFailed {
                        error: "boom".to_owned(),
                    },
                    JobState::Failed,
                ),
            ),
            (
                "timed out",
                GpuEnd::Report(TaskEnd::TimedOut, JobState::TimedOut),
            ),
            (
                "signalled",
                GpuEnd::Report(TaskEnd::Signalled { signal: 9 }, JobState::Failed),
            ),
            ("start failed", GpuEnd::StartFailed),
            ("cancelled", GpuEnd::Cancel),
            ("stalled", GpuEnd::Stall),
            ("lease expired", GpuEnd::Expire),
        ];
        let [mut current] = rig.submit(vec![gpu_job("gpu-0", 1)]).await[..] else {
            panic!("one id");
        };
        let mut a = rig.until_assigns(0, 1).await.remove(0);
        assert_eq!((a.job, a.grant.gpus.clone()), (current, vec![0]));
        for (i, (name, end)) in ends.into_iter().enumerate() {
            if !matches!(end, GpuEnd::StartFailed) {
                rig.started(w, &a).await.unwrap();
                rig.until_state(current, JobState::Running).await;
            }
            // The next job waits while the only GPU is held.
            let [next] = rig
                .submit(vec![gpu_job(&format!("gpu-{}", i + 1), 1)])
                .await[..]
            else {
                panic!("one id");
            };
            sleep(ms(50)).await;
            assert_eq!(
                rig.fake(0).assigns().len(),
                i + 1,
                "{name}: placed on a held GPU"
            );
            assert_eq!(rig.view(next).await.state, JobState::Queued, "{name}");
            let state = match end {
                GpuEnd::Report(end, state) => {
                    rig.finished(w, current, a.token, end).await.unwrap();
                    state
                }
                GpuEnd::StartFailed => {
                    let end = TaskEnd::StartFailed {
                        error: "no such program".to_owned(),
                    };
                    rig.finished(w, current, a.token, end).await.unwrap();
                    JobState::Failed
                }
                GpuEnd::Cancel => {
                    let outcome = rig.sched.send(CancelJob(current)).await.unwrap().unwrap();
                    assert_eq!(outcome, CancelOutcome::Cancelling);
                    until("the kill", Duration::from_secs(1), || {
                        rig.fake(0).kills().iter().any(|k| k.1 == a.token)
                    })
                    .await;
                    let end = TaskEnd::Killed {
                        reason: KillReason::Cancelled,
                    };
                    rig.finished(w, current, a.token, end).await.unwrap();
                    JobState::Cancelled
                }
                GpuEnd::Stall => {
                    rig.sched.do_send(JobStalled {
                        job: current,
                        token: a.token,
                        reason: "no progress".to_owned(),
                    });
                    JobState::Failed
                }
                // Nobody renews: the lease runs out.
                GpuEnd::Expire => JobState::Failed,
            };
            rig.until_state(current, state).await;
            let b = rig.until_assigns(0, i + 2).await.remove(i + 1);
            assert_eq!(
                (b.job, b.grant.gpus.clone()),
                (next, vec![0]),
                "{name}: the next job did not get GPU 0"
            );
            current = next;
            a = b;
        }
        rig.started(w, &a).await.unwrap();
        rig.finished(w, current, a.token, TaskEnd::Exited { code: 0 })
            .await
            .unwrap();
        rig.until_state(current, JobState::Succeeded).await;
        rig.stop().await;
    });
}

#[test]
fn scheduler_on_a_node_without_gpus_says_why_a_gpu_job_waits() {
    run(|_| async {
        let rig = SchedRig::start_with(LONG_TTL, 1, Some("no CUDA driver: test".to_owned())).await;
        rig.register(0, 4000).await;
        let mut big = sched_job("too-big", 0);
        big.resources.cpu_millis = 8000;
        let [gpu, cpu] = rig.submit(vec![gpu_job("gpu", 1), big]).await[..] else {
            panic!("two ids");
        };
        let reason = |view: JobView| match view.waiting {
            Some(Waiting::Unplaceable { reason }) => Some(reason),
            _ => None,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let (gpu_reason, cpu_reason) = loop {
            if let (Some(g), Some(c)) = (reason(rig.view(gpu).await), reason(rig.view(cpu).await)) {
                break (g, c);
            }
            assert!(Instant::now() < deadline, "not both unplaceable");
            sleep(ms(5)).await;
        };
        assert!(
            gpu_reason.contains("; this node has no GPUs: no CUDA driver: test"),
            "{gpu_reason}"
        );
        assert!(
            !cpu_reason.contains("no GPUs") && !cpu_reason.contains("no CUDA driver"),
            "{cpu_reason}"
        );
        assert_eq!(rig.view(gpu).await.state, JobState::Queued);
        assert!(rig.fake(0).assigns().is_empty());
        rig.stop().await;
    });
}
