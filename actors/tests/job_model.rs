//! The job model: validation names every violated field with its reason, specs round-trip
//! through JSON with their defaults, and the state machine refuses (and reports) every
//! transition its table does not allow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cadre_actors::job::PRIORITY_RANGE;
use cadre_actors::{
    CommandJob, JobId, JobKind, JobSpec, JobState, JobStatus, Limits, Registry, Resources,
    WorkloadJob,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

struct Node;

impl Registry for Node {
    fn program_found(&self, program: &str) -> bool {
        matches!(program, "/bin/true" | "true" | "python3")
    }
    fn workload_registered(&self, name: &str) -> bool {
        name == "checksum"
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
    };
    let err = spec.validate(&Limits::default(), &Node).unwrap_err();
    let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "name",
        "command.program",
        "command.args[1]",
        "command.env.1BAD",
        "command.workdir",
        "resources.cpu_millis",
        "resources.gpus",
        "priority",
        "max_retries",
        "timeout_secs",
        "gang",
        "labels.Bad Key",
    ] {
        assert!(fields.contains(&want), "{want} missing from {fields:?}");
    }
    assert!(
        !fields.contains(&"command.args[0]"),
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
    assert_eq!(err.0[0].field, "workload.name");
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
    assert_eq!(err.0[0].field, "workload.params");
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
fn a_lost_job_is_requeued_while_retries_remain_then_failed() {
    let mut s = JobStatus::queued(JobId(7));
    for attempt in 1..=3 {
        assert_eq!(s.attempt, attempt);
        s.transition(JobState::Leased).unwrap();
        s.transition(JobState::Running).unwrap();
        s.transition(JobState::Lost).unwrap();
        let next = s.after_loss(2).unwrap();
        if attempt < 3 {
            assert_eq!(next, JobState::Queued);
        } else {
            assert_eq!(next, JobState::Failed, "two retries: three attempts");
        }
    }
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(s.attempt, 3);
}

#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber> Layer<S> for Errors {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == Level::ERROR {
            self.0.lock().unwrap().push(format!("{event:?}"));
        }
    }
}

#[test]
fn an_illegal_transition_is_refused_logged_and_counted_never_applied() {
    let errors = Errors::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(errors.clone()));
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
        errors.0.lock().unwrap().len(),
        2,
        "one error event per refusal"
    );
    let counted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == "cadre_job_illegal_transitions_total")
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum();
    assert_eq!(counted, 2, "one increment per refusal");
}
