//! What the wire's tests share: a paused-clock runtime with a metrics recorder of its own,
//! counter lookups, and sample messages of every type.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use cadre_actors::ids::{FencingToken, WorkerId};
use cadre_actors::job::{CommandJob, JobId, JobKind, JobSpec};
use cadre_actors::protocol::{
    Assign, Backpressure, GpuDevice, Kill, KillReason, ProgressAck, ProgressUpdate, RenewReply,
    TaskEnd,
};
use cadre_actors::sched::{Grant, WorkerCapacity};
use cadre_actors::store::LogsNote;
use cadre_actors::workload::Progress;
use cadre_wire::{
    AgentAnswer, AgentRequest, Hello, HelloAnswer, LogStream, Refusal, RefusalKind, RunningTask,
    SchedulerAnswer, SchedulerRequest, ToScheduler, ToWorker, Welcome,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Runs `f` on a current-thread runtime whose clock is paused, with metrics going to a
/// recorder of its own; returns the recorder's snapshotter.
pub fn run<F, Fut>(f: F) -> Snapshotter
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(f());
    snapshotter
}

/// The value of counter `name` summed over the label sets that carry `labels`.
pub fn counter(snap: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == name)
        .filter(|(k, _, _, _)| {
            labels
                .iter()
                .all(|(lk, lv)| k.key().labels().any(|l| l.key() == *lk && l.value() == *lv))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

pub fn hello() -> Hello {
    Hello {
        node: "node-7f3a".to_owned(),
        worker: "cpu-0".to_owned(),
        datacenter: "dc1".to_owned(),
        labels: BTreeMap::from([("rack".to_owned(), "r12".to_owned())]),
        capacity: WorkerCapacity {
            cpu_millis: 16_000,
            memory_bytes: 64 << 30,
            gpus: vec![0, 1],
        },
        gpus: vec![
            GpuDevice {
                index: 0,
                uuid: "GPU-00000000-1111-2222-3333-444444444444".to_owned(),
                ordinal: 0,
            },
            GpuDevice {
                index: 1,
                uuid: "GPU-55555555-1111-2222-3333-444444444444".to_owned(),
                ordinal: 1,
            },
        ],
        running: vec![RunningTask {
            job: JobId(41),
            attempt: 2,
            task: 0,
            token: FencingToken(900),
        }],
        software: "cadre 0.1.0".to_owned(),
    }
}

pub fn welcome() -> Welcome {
    Welcome {
        worker: WorkerId(3),
        scheduler: "sched-a".to_owned(),
        lease_ttl_ms: 10_000,
        clock_us: 1_234,
    }
}

pub fn spec() -> JobSpec {
    JobSpec {
        name: "train".to_owned(),
        kind: JobKind::Command(CommandJob {
            program: "/bin/echo".to_owned(),
            args: vec!["hi".to_owned()],
            env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            workdir: None,
            inherit_env: false,
        }),
        resources: Default::default(),
        priority: -3,
        max_retries: 2,
        timeout_secs: Some(60),
        progress_deadline_secs: None,
        gang: 1,
        labels: BTreeMap::new(),
        requeue: true,
        max_requeues: 3,
        retry_backoff_secs: 10,
    }
}

/// One message of every kind an agent sends.
pub fn to_scheduler() -> Vec<ToScheduler> {
    let request = |id, request| ToScheduler::Request { id, request };
    vec![
        request(
            1,
            SchedulerRequest::Renew {
                leases: vec![(JobId(1), FencingToken(10)), (JobId(2), FencingToken(11))],
            },
        ),
        request(
            2,
            SchedulerRequest::Started {
                job: JobId(1),
                token: FencingToken(10),
            },
        ),
        request(
            3,
            SchedulerRequest::Finished {
                job: JobId(1),
                token: FencingToken(10),
                end: TaskEnd::Exited { code: 3 },
                output: Some(LogsNote {
                    dropped_bytes: 7,
                    write_error: None,
                }),
            },
        ),
        request(
            4,
            SchedulerRequest::Finished {
                job: JobId(2),
                token: FencingToken(11),
                end: TaskEnd::Completed {
                    result: serde_json::json!({"sum": 1.5, "ok": true, "v": [1, 2]}),
                },
                output: None,
            },
        ),
        request(
            5,
            SchedulerRequest::Progress {
                seq: 9,
                updates: vec![ProgressUpdate {
                    job: JobId(2),
                    token: FencingToken(11),
                    task: 0,
                    progress: Progress {
                        fraction: 0.25,
                        message: Some("block 1 of 4".to_owned()),
                    },
                }],
            },
        ),
        request(
            6,
            SchedulerRequest::GpuHealth {
                index: 1,
                healthy: false,
                reason: "xid 79".to_owned(),
            },
        ),
        ToScheduler::Answer {
            id: 77,
            answer: Ok(AgentAnswer::Log {
                bytes: b"line one\n\x00\xff".to_vec(),
                next: 4107,
                end: 8192,
            }),
        },
        ToScheduler::Answer {
            id: 78,
            answer: Err(Refusal::new(
                RefusalKind::UnknownJob,
                "job 5 has no log here",
            )),
        },
        ToScheduler::Ping { id: 5 },
        ToScheduler::Pong {
            id: 6,
            clock_us: 99,
        },
    ]
}

/// One message of every kind the scheduler sends.
pub fn to_worker() -> Vec<ToWorker> {
    vec![
        ToWorker::Assign {
            assign: Box::new(Assign {
                job: JobId(1),
                attempt: 1,
                task: 0,
                token: FencingToken(10),
                spec: spec(),
                grant: Grant {
                    worker: WorkerId(3),
                    task: 0,
                    cpu_millis: 1000,
                    memory_bytes: 0,
                    gpus: vec![1],
                },
                lease_ttl: Duration::from_secs(10),
            }),
            clock_us: 5_000,
            lease_deadline_us: 10_005_000,
        },
        ToWorker::Kill(Kill {
            job: JobId(1),
            token: FencingToken(10),
            reason: KillReason::Cancelled,
        }),
        ToWorker::Drain,
        ToWorker::Request {
            id: 77,
            request: AgentRequest::ReadLog {
                job: JobId(1),
                task: 0,
                stream: LogStream::Stderr,
                offset: 4096,
                tail: None,
                max_bytes: 65_536,
            },
        },
        ToWorker::Answer {
            id: 1,
            answer: Ok(SchedulerAnswer::Renewed(RenewReply {
                renewed: vec![FencingToken(10)],
                refused: vec![(JobId(2), FencingToken(11))],
            })),
        },
        ToWorker::Answer {
            id: 2,
            answer: Ok(SchedulerAnswer::Done),
        },
        ToWorker::Answer {
            id: 5,
            answer: Ok(SchedulerAnswer::Progress(ProgressAck {
                seq: 9,
                level: Backpressure::Throttle,
                refused: vec![],
            })),
        },
        ToWorker::Answer {
            id: 3,
            answer: Err(Refusal::new(RefusalKind::StaleToken, "stale")),
        },
        ToWorker::Ping {
            id: 6,
            clock_us: 10,
        },
        ToWorker::Pong {
            id: 5,
            clock_us: 11,
        },
    ]
}

pub fn hello_answers() -> Vec<HelloAnswer> {
    vec![
        HelloAnswer::Welcome(welcome()),
        HelloAnswer::Refused(Refusal::new(RefusalKind::Identity, "hello.node: empty")),
    ]
}
