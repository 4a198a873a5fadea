//! The job model: validation names every violated field with its reason, specs round-trip
//! through JSON with their defaults, and the state machine refuses (and reports) every
//! transition its table does not allow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/capture.rs"]
mod capture;
#[path = "support/counters.rs"]
#[allow(dead_code)] // its gauge is not used here
mod counters;

use std::collections::BTreeMap;

use cadre_actors::job::PRIORITY_RANGE;
use cadre_actors::{
    CommandJob, JobId, JobKind, JobSpec, JobState, JobStatus, Limits, Registry, Resources,
    WorkloadJob,
};
use metrics_util::debugging::DebuggingRecorder;
use tracing::Level;

use capture::Events;

struct Node;

impl Registry for Node {
    fn program_found(&self, program: &str) -> bool {
        matches!(program, "/bin/true" | "true" | "python3")
    }
    fn workload_registered(&self, name: &str) -> bool {
        name == "checksum"
    }
    fn dir_exists(&self, path: &str) -> bool {
        path == "/tmp"
    }
}

fn command(program: &str) -> JobSpec {
    JobSpec {
        name: "build-42".into(),
        kind: JobKind::Command(CommandJob {
            program: program.into(),
            args: vec!["-c".into(), "print(1)".into()],
            env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
            workdir: Some("/tmp".into()),
            inherit_env: false,
        }),
        resources: Resources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            gpus: 0,
        },
        priority: 10,
        max_retries: 3,
        timeout_secs: Some(3600),
        progress_deadline_secs: None,
        gang: 1,
        labels: BTreeMap::from([("team".into(), "infra".into())]),
        requeue: true,
        max_requeues: 3,
        retry_backoff_secs: 10,
    }
}

#[test]
fn a_good_spec_passes_and_round_trips_through_json() {
    let spec = command("python3");
    spec.validate(&Limits::default(), &Node).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    // Defaults: an ordinary job is a gang of one at priority 0 with no retries.
    let minimal: JobSpec =
        serde_json::from_str(r#"{"name":"x","kind":{"command":{"program":"true"}}}"#).unwrap();
    assert_eq!(
        (minimal.gang, minimal.priority, minimal.max_retries),
        (1, 0, 0)
    );
    minimal.validate(&Limits::default(), &Node).unwrap();
}

#[test]
fn a_progress_deadline_is_for_workloads_only() {
    let mut spec = command("python3");
    spec.progress_deadline_secs = Some(30);
    let err = spec.validate(&Limits::default(), &Node).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].field, "progress_deadline_secs");
    spec.kind = JobKind::Workload(WorkloadJob {
        name: "checksum".into(),
        params: serde_json::json!({}),
    });
    spec.validate(&Limits::default(), &Node).unwrap();
}

#[test]
fn every_violated_field_is_named_with_its_reason() {
    let spec = JobSpec {
        name: "bad name!".into(),
        kind: JobKind::Command(CommandJob {
            program: "no-such-program".into(),
            args: vec!["ok".into(), "nul\0byte".into()],
            env: BTreeMap::from([("1BAD".into(), "v".into())]),
            workdir: Some("relative/dir".into()),
            inherit_env: false,
        }),
        resources: Resources {
            cpu_millis: 5_000_000,
            memory_bytes: 0,
            gpus: 1000,
        },
        priority: 2000,
        max_retries: 1000,
        timeout_secs: Some(0),
        progress_deadline_secs: None,
        gang: 0,
        labels: BTreeMap::from([("Bad Key".into(), "v".into())]),
        requeue: true,
        max_requeues: 1000,
        retry_backoff_secs: 100_000,
    };
    let err = spec.validate(&Limits::default(), &Node).unwrap_err();
    let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "name",
        "kind.command.program",
        "kind.command.args[1]",
        "kind.command.env.1BAD",
        "kind.command.workdir",
        "resources.cpu_millis",
        "resources.gpus",
        "priority",
        "max_retries",
        "max_requeues",
        "retry_backoff_secs",
        "timeout_secs",
        "gang",
        "labels.Bad Key",
    ] {
        assert!(fields.contains(&want), "{want} missing from {fields:?}");
    }
    assert!(
        !fields.contains(&"kind.command.args[0]"),
        "a good field is not reported"
    );
    for e in &err.0 {
        assert!(!e.reason.is_empty(), "{} has no reason", e.field);
    }
    assert!(err.to_string().contains("command.workdir"), "{err}");
}

#[test]
fn workloads_must_be_registered_and_limits_are_configurable() {
    let mut spec = command("true");
    spec.kind = JobKind::Workload(WorkloadJob {
        name: "unknown".into(),
        params: serde_json::json!({"path": "/data/x"}),
    });
    let err = spec.validate(&Limits::default(), &Node).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].field, "kind.workload.name");
    spec.kind = JobKind::Workload(WorkloadJob {
        name: "checksum".into(),
        params: serde_json::json!({"path": "/data/x"}),
    });
    spec.validate(&Limits::default(), &Node).unwrap();
    let tight = Limits {
        params_bytes: 8,
        ..Limits::default()
    };
    let err = spec.validate(&tight, &Node).unwrap_err();
    assert_eq!(err.0[0].field, "kind.workload.params");
    assert!(PRIORITY_RANGE.contains(&-1000) && !PRIORITY_RANGE.contains(&1001));
}

const ALL: [JobState; 8] = [
    JobState::Queued,
    JobState::Leased,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
    JobState::TimedOut,
    JobState::Lost,
];

#[test]
fn the_transition_table_is_exactly_the_documented_one() {
    use JobState::*;
    let allowed = [
        (Queued, Leased),
        (Queued, Cancelled),
        (Leased, Running),
        (Leased, Lost),
        (Leased, Cancelled),
        (Leased, Failed),
        (Running, Succeeded),
        (Running, Failed),
        (Running, Cancelled),
        (Running, TimedOut),
        (Running, Lost),
        (Lost, Queued),
        (Lost, Failed),
        (Leased, Queued),
        (Running, Queued),
    ];
    for from in ALL {
        for to in ALL {
            assert_eq!(
                from.can_go_to(to),
                allowed.contains(&(from, to)),
                "{from} -> {to}"
            );
        }
        if from.is_terminal() {
            assert!(
                ALL.iter().all(|&to| !from.can_go_to(to)),
                "{from} is terminal"
            );
        }
    }
    // States are spelled as the API spells them.
    assert_eq!(serde_json::to_string(&TimedOut).unwrap(), "\"timed_out\"");
    assert_eq!(TimedOut.to_string(), "timed_out");
}

#[test]
fn a_lost_job_is_requeued_while_requeues_remain_then_failed() {
    let mut s = JobStatus::queued(JobId(7));
    for lost_before in 0..3 {
        assert_eq!(s.attempt, lost_before + 1);
        s.transition(JobState::Leased).unwrap();
        s.transition(JobState::Running).unwrap();
        s.transition(JobState::Lost).unwrap();
        let next = s.after_loss(true, 2, lost_before).unwrap();
        if lost_before < 2 {
            assert_eq!(next, JobState::Queued);
        } else {
            assert_eq!(next, JobState::Failed, "two requeues: three attempts");
        }
    }
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(s.attempt, 3);
    // A job that must not run twice fails at its first loss, whatever its budget.
    let mut once = JobStatus::queued(JobId(8));
    once.transition(JobState::Leased).unwrap();
    once.transition(JobState::Lost).unwrap();
    assert_eq!(once.after_loss(false, 5, 0).unwrap(), JobState::Failed);
}

#[test]
fn a_failed_attempt_goes_back_to_the_queue_as_a_new_attempt() {
    let mut s = JobStatus::queued(JobId(9));
    s.transition(JobState::Leased).unwrap();
    s.transition(JobState::Running).unwrap();
    s.transition(JobState::Queued).unwrap();
    assert_eq!((s.state, s.attempt), (JobState::Queued, 2));
    s.transition(JobState::Leased).unwrap();
    s.transition(JobState::Queued).unwrap();
    assert_eq!(s.attempt, 3, "a start failure is retried the same way");
}

#[test]
fn defaults_reserve_a_cpu_and_requeue_lost_attempts_and_retry_with_backoff() {
    let spec: JobSpec =
        serde_json::from_str(r#"{"name":"x","kind":{"command":{"program":"true"}}}"#).unwrap();
    assert_eq!(spec.resources.cpu_millis, 1000, "one CPU, as the CLI gives");
    assert!(spec.requeue);
    assert_eq!((spec.max_requeues, spec.max_retries), (3, 0));
    let zero: JobSpec = serde_json::from_str(
        r#"{"name":"x","kind":{"command":{"program":"true"}},"resources":{"cpu_millis":0}}"#,
    )
    .unwrap();
    assert_eq!(
        zero.resources.cpu_millis, 0,
        "a job that only waits may ask for none"
    );
    let partial: JobSpec = serde_json::from_str(
        r#"{"name":"x","kind":{"command":{"program":"true"}},"resources":{"memory_bytes":5}}"#,
    )
    .unwrap();
    assert_eq!(partial.resources.cpu_millis, 1000);
    let backoff: Vec<u64> = (1..=8).map(|n| spec.retry_backoff(n).as_secs()).collect();
    assert_eq!(backoff, [10, 20, 40, 80, 160, 320, 600, 600]);
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    for bad in [
        r#"{"name":"x","kind":{"command":{"program":"true"}},"timeout_sec":5}"#,
        r#"{"name":"x","kind":{"command":{"program":"true"}},"max_retry":1}"#,
        r#"{"name":"x","kind":{"command":{"program":"true"}},"resources":{"cpus":2}}"#,
        r#"{"name":"x","kind":{"command":{"program":"true","shell":true}}}"#,
        r#"{"name":"x","kind":{"workload":{"name":"w","param":{}}}}"#,
    ] {
        let err = serde_json::from_str::<JobSpec>(bad).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{bad}: {err}");
    }
}

#[test]
fn a_workdir_that_does_not_exist_is_refused_with_its_path() {
    let mut spec = command("python3");
    if let JobKind::Command(c) = &mut spec.kind {
        c.workdir = Some("/no/such/dir".into());
    }
    let err = spec.validate(&Limits::default(), &Node).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].field, "kind.command.workdir");
    assert!(err.0[0].reason.contains("not a directory"), "{err}");
}

#[test]
fn an_illegal_transition_is_refused_logged_and_counted_never_applied() {
    let errors = Events::at_least(Level::ERROR);
    let _guard = errors.install();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut s = JobStatus::queued(JobId(9));
        s.transition(JobState::Leased).unwrap();
        s.transition(JobState::Running).unwrap();
        s.transition(JobState::Succeeded).unwrap();
        let err = s.transition(JobState::Running).unwrap_err();
        assert_eq!(
            (err.from, err.to, err.job),
            (JobState::Succeeded, JobState::Running, JobId(9))
        );
        assert_eq!(s.state, JobState::Succeeded, "not applied");
        let mut q = JobStatus::queued(JobId(10));
        assert!(
            q.transition(JobState::Succeeded).is_err(),
            "queued cannot succeed"
        );
        assert_eq!(q.state, JobState::Queued);
    });
    assert_eq!(
        errors.at(Level::ERROR).len(),
        2,
        "one error event per refusal"
    );
    let counted = counters::counter(&snapshotter, "cadre_job_illegal_transitions_total", &[]);
    assert_eq!(counted, 2, "one increment per refusal");
}
