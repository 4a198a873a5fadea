//! The job store: what is committed is there after a restart, refused records change nothing,
//! interrupted jobs are requeued or failed per their retries, snapshots replace replay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use cadre_actors::job::{CommandJob, JobKind, JobSpec, JobState, Resources};
use cadre_actors::sched::Grant;
use cadre_actors::store::{Outcome, Record, Store, StoreOptions};
use cadre_actors::{Error, FencingToken, JobId, WorkerId};
use cadre_cpu::{BackendSetting, IoEngine};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("cadre-store-{name}-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("leaving {}: {e}", self.0.display());
        }
    }
}

fn spec(name: &str, retries: u32) -> JobSpec {
    JobSpec {
        name: name.into(),
        kind: JobKind::Command(CommandJob {
            program: "/bin/true".into(),
            args: vec!["a".into(), "b c".into()],
            ..CommandJob::default()
        }),
        resources: Resources {
            cpu_millis: 500,
            memory_bytes: 1 << 20,
            gpus: 0,
        },
        priority: 3,
        max_retries: 0,
        timeout_secs: Some(10),
        progress_deadline_secs: None,
        gang: 1,
        labels: [("team".to_string(), "infra".to_string())].into(),
        requeue: true,
        max_requeues: retries,
        retry_backoff_secs: 10,
    }
}

fn grant() -> Vec<Grant> {
    vec![Grant {
        worker: WorkerId(1),
        task: 0,
        cpu_millis: 500,
        memory_bytes: 1 << 20,
        gpus: vec![],
    }]
}

async fn open(dir: &Path) -> (Store, cadre_actors::store::Recovery) {
    open_with(dir, StoreOptions::default()).await
}

async fn open_with(dir: &Path, options: StoreOptions) -> (Store, cadre_actors::store::Recovery) {
    let engine = IoEngine::new(BackendSetting::Std).unwrap();
    Store::open(dir, engine, options).await.unwrap()
}

async fn commit(store: &mut Store, record: Record) {
    store.commit(record).await.unwrap().await.unwrap();
}

#[tokio::test]
async fn submitted_jobs_survive_a_restart_and_ids_keep_growing() {
    let dir = Scratch::new("submit");
    let (mut store, rec) = open(dir.path()).await;
    assert_eq!(rec.jobs, 0);
    let (ids, durable) = store
        .submit(vec![spec("a", 0), spec("b", 0)], 1_700_000_000_000)
        .await
        .unwrap();
    durable.await.unwrap();
    assert_eq!(ids, vec![JobId(1), JobId(2)]);
    store.close().await;

    let (mut store, rec) = open(dir.path()).await;
    assert_eq!(rec.jobs, 2);
    assert_eq!(rec.records, 1);
    let a = store.table().get(JobId(1)).unwrap();
    assert_eq!(a.spec, spec("a", 0));
    assert_eq!(a.status.state, JobState::Queued);
    assert_eq!(a.submitted_ms, 1_700_000_000_000);
    let (ids, durable) = store.submit(vec![spec("c", 0)], 0).await.unwrap();
    durable.await.unwrap();
    assert_eq!(ids, vec![JobId(3)], "ids continue after a restart");
    store.close().await;
}

#[tokio::test]
async fn interrupted_jobs_are_requeued_or_failed_per_retries_and_tokens_persist() {
    let dir = Scratch::new("interrupted");
    let (mut store, _) = open(dir.path()).await;
    let (ids, d) = store
        .submit(
            vec![spec("retry", 1), spec("once", 0), spec("waiting", 0)],
            0,
        )
        .await
        .unwrap();
    d.await.unwrap();
    commit(
        &mut store,
        Record::Leased {
            job: ids[0],
            attempt: 1,
            grants: grant(),
            tokens: vec![FencingToken(7)],
            nodes: Vec::new(),
        },
    )
    .await;
    commit(
        &mut store,
        Record::Started {
            job: ids[0],
            attempt: 1,
        },
    )
    .await;
    commit(
        &mut store,
        Record::Leased {
            job: ids[1],
            attempt: 1,
            grants: grant(),
            tokens: vec![FencingToken(9)],
            nodes: Vec::new(),
        },
    )
    .await;
    assert_eq!(
        store.table().get(ids[0]).unwrap().tokens,
        vec![FencingToken(7)]
    );
    store.close().await;

    let (mut store, rec) = open(dir.path()).await;
    assert_eq!(rec.requeued, vec![ids[0]]);
    assert_eq!(rec.failed, vec![ids[1]]);
    let retry = store.table().get(ids[0]).unwrap();
    assert_eq!(retry.status.state, JobState::Queued);
    assert_eq!(retry.status.attempt, 2);
    assert!(retry.grants.is_empty() && retry.tokens.is_empty());
    assert!(retry.last_loss.as_deref().unwrap().contains("running"));
    let once = store.table().get(ids[1]).unwrap();
    assert_eq!(once.status.state, JobState::Failed);
    assert!(once
        .outcome
        .as_ref()
        .unwrap()
        .error
        .as_deref()
        .unwrap()
        .contains("no requeues left"));
    assert_eq!(
        store.table().get(ids[2]).unwrap().status.state,
        JobState::Queued
    );
    assert_eq!(store.table().token_high_water(), FencingToken(9));

    // A token at or below the persisted high-water mark is refused: tokens never repeat.
    let err = store
        .commit(Record::Leased {
            job: ids[0],
            attempt: 2,
            grants: grant(),
            tokens: vec![FencingToken(9)],
            nodes: Vec::new(),
        })
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    store.close().await;

    // The recovery's own records are durable: a second restart finds nothing more to do.
    let (store, rec) = open(dir.path()).await;
    assert!(rec.requeued.is_empty() && rec.failed.is_empty());
    assert_eq!(store.table().get(ids[0]).unwrap().status.attempt, 2);
    store.close().await;
}

#[tokio::test]
async fn refused_records_change_nothing_and_are_not_journaled() {
    let dir = Scratch::new("refused");
    let (mut store, _) = open(dir.path()).await;
    let (ids, d) = store.submit(vec![spec("a", 0)], 0).await.unwrap();
    d.await.unwrap();
    let job = ids[0];
    let before = store.table().clone();

    let illegal = store
        .commit(Record::Started { job, attempt: 1 })
        .await
        .err()
        .unwrap();
    assert!(matches!(illegal, Error::IllegalTransition(_)), "{illegal}");
    let stale = store
        .commit(Record::Leased {
            job,
            attempt: 2,
            grants: grant(),
            tokens: vec![FencingToken(1)],
            nodes: Vec::new(),
        })
        .await
        .err()
        .unwrap();
    assert!(
        matches!(stale, Error::StaleAttempt { current: 1, .. }),
        "{stale}"
    );
    let not_end = store
        .commit(Record::Ended {
            job,
            attempt: 1,
            state: JobState::Running,
            outcome: Outcome::default(),
            ended_ms: 1,
        })
        .await
        .err()
        .unwrap();
    assert!(matches!(not_end, Error::Rejected { .. }), "{not_end}");
    let unknown = store
        .commit(Record::Started {
            job: JobId(99),
            attempt: 1,
        })
        .await
        .err()
        .unwrap();
    assert!(matches!(unknown, Error::UnknownJob { .. }), "{unknown}");
    assert_eq!(store.table(), &before, "a refused record changes nothing");
    store.close().await;

    let (store, rec) = open(dir.path()).await;
    assert_eq!(rec.records, 1, "only the submission was journaled");
    assert_eq!(store.table(), &before);
    store.close().await;
}

#[tokio::test]
async fn records_committed_without_waiting_are_all_durable_in_order() {
    let dir = Scratch::new("pipelined");
    let (mut store, _) = open(dir.path()).await;
    let mut pending = Vec::new();
    for i in 0..500u64 {
        let (_, d) = store
            .submit(vec![spec(&format!("j{i}"), 0)], i)
            .await
            .unwrap();
        pending.push(d);
    }
    // Lease, start and end every even job, all before any durability is awaited.
    for i in (1..=500u64).step_by(2) {
        let job = JobId(i);
        pending.push(
            store
                .commit(Record::Leased {
                    job,
                    attempt: 1,
                    grants: grant(),
                    tokens: vec![FencingToken(i)],
                    nodes: Vec::new(),
                })
                .await
                .unwrap(),
        );
        pending.push(
            store
                .commit(Record::Started { job, attempt: 1 })
                .await
                .unwrap(),
        );
        pending.push(
            store
                .commit(Record::Ended {
                    job,
                    attempt: 1,
                    state: JobState::Succeeded,
                    outcome: Outcome {
                        exit_code: Some(0),
                        ..Outcome::default()
                    },
                    ended_ms: 1,
                })
                .await
                .unwrap(),
        );
    }
    for d in pending {
        d.await.unwrap();
    }
    let before = store.table().clone();
    store.close().await;

    let (store, rec) = open(dir.path()).await;
    assert_eq!(rec.records, 500 + 3 * 250);
    assert_eq!(store.table(), &before);
    let done = store.table().page(Some(JobState::Succeeded), None, 1000);
    assert_eq!(done.len(), 250);
    assert_eq!(done[0].1.outcome.as_ref().unwrap().exit_code, Some(0));
    store.close().await;
}

#[tokio::test]
async fn a_snapshot_replaces_replay_and_later_records_apply_on_top() {
    let dir = Scratch::new("snapshot");
    let options = StoreOptions {
        snapshot_every: 10,
        ..StoreOptions::default()
    };
    let (mut store, _) = open_with(dir.path(), options.clone()).await;
    for i in 0..12u64 {
        let (_, d) = store.submit(vec![spec("s", 0)], i).await.unwrap();
        d.await.unwrap();
    }
    assert!(store.compaction_due());
    store.compact().await.unwrap();
    assert!(!store.compaction_due());
    commit(
        &mut store,
        Record::Ended {
            job: JobId(3),
            attempt: 1,
            state: JobState::Cancelled,
            outcome: Outcome::default(),
            ended_ms: 1,
        },
    )
    .await;
    let (_, d) = store.submit(vec![spec("after", 0)], 99).await.unwrap();
    d.await.unwrap();
    let before = store.table().clone();
    store.close().await;

    let (store, rec) = open_with(dir.path(), options).await;
    assert!(rec.snapshot);
    assert_eq!(
        rec.records, 2,
        "only the records after the snapshot are replayed"
    );
    assert_eq!(rec.jobs, 13);
    assert_eq!(store.table(), &before);
    assert_eq!(
        store.table().get(JobId(3)).unwrap().status.state,
        JobState::Cancelled
    );
    store.close().await;
}

#[tokio::test]
async fn pages_follow_ids_and_filter_by_state() {
    let dir = Scratch::new("pages");
    let (mut store, _) = open(dir.path()).await;
    let (ids, d) = store
        .submit((0..10).map(|i| spec(&format!("p{i}"), 0)).collect(), 0)
        .await
        .unwrap();
    d.await.unwrap();
    for job in ids.iter().take(4) {
        commit(
            &mut store,
            Record::Ended {
                job: *job,
                attempt: 1,
                state: JobState::Cancelled,
                outcome: Outcome::default(),
                ended_ms: 1,
            },
        )
        .await;
    }
    let first = store.table().page(None, None, 3);
    assert_eq!(
        first.iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let next = store.table().page(None, Some(JobId(3)), 3);
    assert_eq!(
        next.iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    let queued = store.table().page(Some(JobState::Queued), None, 100);
    assert_eq!(
        queued.iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
        (5..=10).collect::<Vec<_>>()
    );
    store.close().await;
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused() {
    let dir = Scratch::new("locked");
    let (store, _) = open(dir.path()).await;
    let engine = IoEngine::new(BackendSetting::Std).unwrap();
    let err = Store::open(dir.path(), engine, StoreOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Store { op: "open", .. }), "{err}");
    store.close().await;
}

/// A drained node is journaled: kept through replay and through a snapshot (a snapshot
/// written before the drained set existed reads as none drained), undrained likewise.
#[tokio::test]
async fn drained_nodes_survive_replay_and_snapshots() {
    let dir = Scratch::new("drained");
    let options = StoreOptions {
        snapshot_every: 4,
        ..StoreOptions::default()
    };
    let (mut store, _) = open_with(dir.path(), options.clone()).await;
    let drain = |node: &str, drain: bool| Record::Drained {
        node: node.to_owned(),
        drain,
    };
    commit(&mut store, drain("gpu-17", true)).await;
    commit(&mut store, drain("gpu-18", true)).await;
    assert!(
        store.commit(drain("", true)).await.is_err(),
        "a drain names a node"
    );
    store.close().await;

    let (mut store, rec) = open_with(dir.path(), options.clone()).await;
    assert!(!rec.snapshot);
    let drained: Vec<&str> = store.table().drained().iter().map(String::as_str).collect();
    assert_eq!(drained, ["gpu-17", "gpu-18"], "replayed");
    commit(&mut store, drain("gpu-18", false)).await;
    for i in 0..4u64 {
        let (_, d) = store.submit(vec![spec("s", 0)], i).await.unwrap();
        d.await.unwrap();
    }
    assert_eq!(
        store.table().kept_ranges(),
        [(1, 4)],
        "ids 1 to 4, none pruned"
    );
    store.compact().await.unwrap();
    store.close().await;

    let (store, rec) = open_with(dir.path(), options).await;
    assert!(rec.snapshot, "read from the snapshot");
    let drained: Vec<&str> = store.table().drained().iter().map(String::as_str).collect();
    assert_eq!(drained, ["gpu-17"]);
    store.close().await;
}
