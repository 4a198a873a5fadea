//! The journal on a disk that fills up (a real tmpfs): appends stall instead of failing, the
//! health watch says why with the free space, everything waiting becomes durable in order once
//! space is back, a close while stalled refuses what it holds (nothing of it was acknowledged),
//! and a compaction that does not fit fails alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/common/tmpfs.rs"]
mod tmpfs;

use std::time::Duration;

use cadre_cpu::journal::{Journal, JournalHealth, JournalOptions};
use cadre_cpu::{CpuError, IoEngine};
use common::engines;
use tmpfs::Tmpfs;

fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: 64 << 10,
        retry_first: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..JournalOptions::default()
    }
}

/// Larger than a page, so that no record fits in what is left of a page the segment already
/// has: on a full tmpfs every one of them needs a page that is not there.
fn record(i: usize) -> Vec<u8> {
    format!("record-{i:04}-{}", "x".repeat(5000)).into_bytes()
}

async fn wait_health(j: &Journal, writable: bool) -> JournalHealth {
    let mut health = j.health();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let now = health.borrow_and_update().clone();
            if now.is_writable() == writable {
                return now;
            }
            health.changed().await.unwrap();
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("journal not writable={writable} within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stalls_appends_until_space_is_back_then_all_are_durable_in_order() {
    let Some(disk) = Tmpfs::mount("journal-full", 2 << 20) else {
        return;
    };
    for engine in engines() {
        let dir = disk
            .path()
            .join(format!("journal-{}", engine.backend().as_str()));
        let (j, _) = Journal::open(&dir, engine.clone(), options())
            .await
            .unwrap();
        j.append(b"before".to_vec()).await.unwrap();
        let filler = disk.fill("filler");
        // Queued in a known order; none may complete while the disk is full.
        let mut pending = Vec::new();
        for i in 0..50 {
            pending.push(j.slot().await.unwrap().queue(record(i)).unwrap());
        }
        let JournalHealth::Stalled(stall) = wait_health(&j, false).await else {
            unreachable!()
        };
        assert_eq!(stall.kind, "no_space", "{stall}");
        let reason = stall.to_string();
        assert!(
            reason.contains("disk is full") && reason.contains(&dir.display().to_string()),
            "{reason}"
        );
        assert!(
            reason.contains("free of"),
            "the reason says the free space: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first = pending.remove(0);
        let waited = tokio::time::timeout(Duration::from_millis(50), first).await;
        assert!(
            waited.is_err(),
            "an append completed on a full disk: {waited:?}"
        );
        std::fs::remove_file(&filler).unwrap();
        wait_health(&j, true).await;
        for p in pending {
            tokio::time::timeout(Duration::from_secs(20), p)
                .await
                .unwrap()
                .unwrap();
        }
        j.append(b"after".to_vec()).await.unwrap();
        j.close().await;
        let (j, rec) = Journal::open(&dir, engine.clone(), options())
            .await
            .unwrap();
        let mut want = vec![b"before".to_vec()];
        want.extend((0..50).map(record));
        want.push(b"after".to_vec());
        assert_eq!(rec.records.len(), want.len());
        assert_eq!(rec.records, want, "every record, once, in order");
        assert!(
            rec.torn_tail.is_none(),
            "a refused write leaves nothing behind"
        );
        j.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_stalled_journal_refuses_what_it_holds_and_acknowledged_nothing_of_it() {
    let Some(disk) = Tmpfs::mount("journal-close", 2 << 20) else {
        return;
    };
    let engine = IoEngine::new(cadre_cpu::BackendSetting::Auto).unwrap();
    let dir = disk.path().join("journal");
    let (j, _) = Journal::open(&dir, engine.clone(), options())
        .await
        .unwrap();
    j.append(b"kept".to_vec()).await.unwrap();
    let filler = disk.fill("filler");
    let mut pending = Vec::new();
    for i in 0..5 {
        pending.push(j.slot().await.unwrap().queue(record(i)).unwrap());
    }
    wait_health(&j, false).await;
    tokio::time::timeout(Duration::from_secs(10), j.clone().close())
        .await
        .expect("close returns while the disk is still full");
    for p in pending {
        match p.await {
            Err(CpuError::JournalStopped { reason, .. }) => {
                assert!(reason.contains("not durable"), "{reason}")
            }
            other => panic!("expected JournalStopped, got {other:?}"),
        }
    }
    drop(j);
    std::fs::remove_file(&filler).unwrap();
    let (j, rec) = Journal::open(&dir, engine, options()).await.unwrap();
    assert_eq!(rec.records, vec![b"kept".to_vec()]);
    j.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_that_does_not_fit_fails_alone_and_the_journal_carries_on() {
    let Some(disk) = Tmpfs::mount("journal-compact", 1 << 20) else {
        return;
    };
    let engine = IoEngine::new(cadre_cpu::BackendSetting::Auto).unwrap();
    let dir = disk.path().join("journal");
    let (j, _) = Journal::open(&dir, engine.clone(), options())
        .await
        .unwrap();
    for i in 0..10 {
        j.append(record(i)).await.unwrap();
    }
    let err = j.compact(vec![7u8; 2 << 20]).await.unwrap_err();
    assert!(matches!(err, CpuError::Io { .. }), "{err}");
    assert!(
        !dir.join("snapshot.tmp").exists(),
        "the failed snapshot's file is gone"
    );
    assert!(j.health().borrow().is_writable());
    j.append(record(10)).await.unwrap();
    j.close().await;
    let (j, rec) = Journal::open(&dir, engine, options()).await.unwrap();
    assert!(rec.snapshot.is_none());
    assert_eq!(rec.records, (0..11).map(record).collect::<Vec<_>>());
    j.close().await;
}
