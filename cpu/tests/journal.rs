//! The durable journal: group commit, rolling, compaction, recovery of torn tails, hard errors
//! on corruption before the tail, and a randomized property test of damaged segments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use cadre_cpu::journal::{legacy_segment, Journal, JournalOptions, FRAME_HEADER};
use cadre_cpu::{BackendSetting, CpuError, IoEngine};
use common::{engines, Scratch};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn small() -> JournalOptions {
    JournalOptions {
        segment_bytes: 4096,
        max_record_bytes: 1024,
        max_batch_bytes: 64 << 10,
        queue_depth: 1024,
        ..JournalOptions::default()
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_durable_in_order_and_batched() {
    for engine in engines() {
        let dir = Scratch::new("journal-basic");
        let (j, rec) = Journal::open(dir.path(), engine.clone(), JournalOptions::default())
            .await
            .unwrap();
        assert!(rec.records.is_empty() && rec.snapshot.is_none() && rec.torn_tail.is_none());
        let mut tasks = Vec::new();
        for a in 0..64u32 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = None;
                for s in 0..40u32 {
                    let lsn = j.append(format!("{a}:{s}").into_bytes()).await.unwrap();
                    assert!(last < Some(lsn), "LSNs grow per appender");
                    last = Some(lsn);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = j.stats();
        assert_eq!(stats.appends, 64 * 40);
        assert!(
            stats.commits < stats.appends / 2,
            "{}: 64 concurrent appenders must share commits: {stats:?}",
            engine.backend()
        );
        j.close().await;
        let (j, rec) = Journal::open(dir.path(), engine.clone(), JournalOptions::default())
            .await
            .unwrap();
        assert_eq!(rec.records.len(), 64 * 40);
        let mut next: HashMap<u32, u32> = HashMap::new();
        for r in &rec.records {
            let s = String::from_utf8(r.clone()).unwrap();
            let (a, seq) = s.split_once(':').unwrap();
            let (a, seq): (u32, u32) = (a.parse().unwrap(), seq.parse().unwrap());
            let want = next.entry(a).or_insert(0);
            assert_eq!(seq, *want, "appender {a} out of order");
            *want += 1;
        }
        j.close().await;
    }
}

#[tokio::test]
async fn segments_roll_and_recovery_reads_them_all() {
    for engine in engines() {
        let dir = Scratch::new("journal-roll");
        let (j, _) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        for i in 0..300u32 {
            j.append(vec![(i % 256) as u8; 100]).await.unwrap();
        }
        j.close().await;
        let segs = files(dir.path(), "seg");
        assert!(
            segs.len() >= 7,
            "300 x 108 bytes in 4 KiB segments: {segs:?}"
        );
        let (j, rec) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        assert_eq!(rec.records.len(), 300);
        for (i, r) in rec.records.iter().enumerate() {
            assert_eq!(r, &vec![(i % 256) as u8; 100]);
        }
        j.close().await;
    }
}

#[tokio::test]
async fn compaction_replaces_old_segments_by_the_snapshot() {
    for engine in engines() {
        let dir = Scratch::new("journal-compact");
        let (j, _) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        for i in 0..100u32 {
            j.append(format!("old-{i}").into_bytes()).await.unwrap();
        }
        let before = files(dir.path(), "seg");
        j.compact(b"state after 100".to_vec()).await.unwrap();
        for i in 0..50u32 {
            j.append(format!("new-{i}").into_bytes()).await.unwrap();
        }
        j.close().await;
        for old in &before {
            assert!(
                !old.exists(),
                "{} should be deleted by compaction",
                old.display()
            );
        }
        assert_eq!(files(dir.path(), "snap").len(), 1);
        let (j, rec) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        assert_eq!(rec.snapshot.as_deref(), Some(&b"state after 100"[..]));
        let want: Vec<Vec<u8>> = (0..50).map(|i| format!("new-{i}").into_bytes()).collect();
        assert_eq!(rec.records, want);
        // A second compaction replaces the first snapshot.
        j.compact(b"second".to_vec()).await.unwrap();
        j.close().await;
        assert_eq!(files(dir.path(), "snap").len(), 1);
        let (j, rec) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        assert_eq!(rec.snapshot.as_deref(), Some(&b"second"[..]));
        assert!(rec.records.is_empty());
        j.close().await;
    }
}

#[tokio::test]
async fn an_interrupted_compaction_is_finished_on_open() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let dir = Scratch::new("journal-leftovers");
    let (j, _) = Journal::open(dir.path(), engine.clone(), small())
        .await
        .unwrap();
    for i in 0..80u32 {
        j.append(format!("r{i}").into_bytes()).await.unwrap();
    }
    let old = files(dir.path(), "seg");
    j.compact(b"snap".to_vec()).await.unwrap();
    j.append(b"after".to_vec()).await.unwrap();
    j.close().await;
    // Put back what a crash between rename and delete leaves: an old segment and a temp file.
    fs::write(&old[0], b"stale bytes that must never be read").unwrap();
    fs::write(dir.path().join("snapshot.tmp"), b"half a snapshot").unwrap();
    let (j, rec) = Journal::open(dir.path(), engine.clone(), small())
        .await
        .unwrap();
    assert_eq!(rec.snapshot.as_deref(), Some(&b"snap"[..]));
    assert_eq!(rec.records, vec![b"after".to_vec()]);
    assert!(!old[0].exists() && !dir.path().join("snapshot.tmp").exists());
    j.close().await;
}

#[tokio::test]
async fn compactions_without_appends_and_empty_segments_recover() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let dir = Scratch::new("journal-empty");
    let (j, _) = Journal::open(dir.path(), engine.clone(), small())
        .await
        .unwrap();
    j.compact(b"a".to_vec()).await.unwrap();
    j.compact(b"b".to_vec()).await.unwrap();
    j.append(b"r".to_vec()).await.unwrap();
    j.close().await;
    assert_eq!(
        files(dir.path(), "seg").len(),
        1,
        "no empty segments left behind"
    );
    // An empty segment before others (a roll whose segment never got a batch) holds nothing.
    let segs = files(dir.path(), "seg");
    let next = dir.path().join(format!(
        "{:020}.seg",
        segs[0]
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            + 1
    ));
    fs::write(&next, b"").unwrap();
    let (j, rec) = Journal::open(dir.path(), engine.clone(), small())
        .await
        .unwrap();
    assert_eq!(rec.snapshot.as_deref(), Some(&b"b"[..]));
    assert_eq!(rec.records, vec![b"r".to_vec()]);
    j.append(b"s".to_vec()).await.unwrap();
    j.close().await;
    let (j, rec) = Journal::open(dir.path(), engine, small()).await.unwrap();
    assert_eq!(rec.records, vec![b"r".to_vec(), b"s".to_vec()]);
    j.close().await;
}

async fn ten_records(engine: &IoEngine, dir: &Path) -> PathBuf {
    let (j, _) = Journal::open(dir, engine.clone(), JournalOptions::default())
        .await
        .unwrap();
    for i in 0..10u32 {
        j.append(format!("record-{i}").into_bytes()).await.unwrap();
    }
    j.close().await;
    files(dir, "seg").pop().unwrap()
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_appending_goes_on() {
    for engine in engines() {
        for tail in [
            &b"\x20\x00\x00\x00\x01\x02"[..],            // half a header
            &b"\x20\x00\x00\x00\x01\x02\x03\x04abc"[..], // a record cut short
            &[0u8; 4096][..],                            // a zero-filled end
        ] {
            let dir = Scratch::new("journal-torn");
            let seg = ten_records(&engine, dir.path()).await;
            let good_len = fs::metadata(&seg).unwrap().len();
            let mut bytes = fs::read(&seg).unwrap();
            bytes.extend_from_slice(tail);
            fs::write(&seg, &bytes).unwrap();
            let (j, rec) = Journal::open(dir.path(), engine.clone(), JournalOptions::default())
                .await
                .unwrap();
            assert_eq!(rec.records.len(), 10);
            let torn = rec.torn_tail.expect("a torn tail is reported");
            assert_eq!(torn.offset, good_len);
            assert_eq!(torn.segment, seg);
            assert_eq!(torn.dropped_bytes, tail.len() as u64);
            // The cut bytes are kept beside the segment, as evidence.
            assert_eq!(fs::read(&torn.moved_to).unwrap(), tail);
            assert_eq!(
                fs::metadata(&seg).unwrap().len(),
                good_len,
                "truncated on disk"
            );
            j.append(b"after".to_vec()).await.unwrap();
            j.close().await;
            let (j, rec) = Journal::open(dir.path(), engine.clone(), JournalOptions::default())
                .await
                .unwrap();
            assert_eq!(rec.records.len(), 11);
            assert_eq!(rec.records[10], b"after");
            assert!(rec.torn_tail.is_none());
            j.close().await;
        }
    }
}

#[tokio::test]
async fn a_bad_last_record_is_a_torn_tail() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let dir = Scratch::new("journal-badlast");
    let seg = ten_records(&engine, dir.path()).await;
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    let (j, rec) = Journal::open(dir.path(), engine, JournalOptions::default())
        .await
        .unwrap();
    assert_eq!(rec.records.len(), 9);
    assert!(rec.torn_tail.unwrap().reason.contains("CRC32C"));
    j.close().await;
}

#[tokio::test]
async fn corruption_before_the_tail_is_a_hard_error_naming_segment_and_offset() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let dir = Scratch::new("journal-corrupt");
    let seg = ten_records(&engine, dir.path()).await;
    let mut bytes = fs::read(&seg).unwrap();
    // Second record's payload CRC: its frame starts after the segment header frame (12 + 24)
    // and the first record (12 + "record-0").
    let second = 36 + 12 + 8;
    bytes[second + 9] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    match Journal::open(dir.path(), engine.clone(), JournalOptions::default()).await {
        Err(CpuError::Corrupt {
            segment,
            offset,
            reason,
        }) => {
            assert_eq!(segment, seg);
            assert_eq!(offset, second as u64);
            assert!(reason.contains("CRC32C"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was truncated: the bytes are still there for an operator to look at.
    assert_eq!(fs::read(&seg).unwrap(), bytes);
}

#[tokio::test]
async fn a_short_segment_before_the_last_is_corruption() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let dir = Scratch::new("journal-shortseg");
    let (j, _) = Journal::open(dir.path(), engine.clone(), small())
        .await
        .unwrap();
    for _ in 0..100u32 {
        j.append(vec![7u8; 100]).await.unwrap();
    }
    j.close().await;
    let segs = files(dir.path(), "seg");
    let first = &segs[0];
    let len = fs::metadata(first).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 50)
        .unwrap();
    let err = Journal::open(dir.path(), engine, small())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CpuError::Corrupt { segment, .. } if segment == first),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_its_field() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let dir = Scratch::new("journal-input");
    let bad = JournalOptions {
        segment_bytes: 10,
        ..JournalOptions::default()
    };
    let err = Journal::open(dir.path(), engine.clone(), bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("journal.segment_bytes"), "{err}");
    let (j, _) = Journal::open(dir.path(), engine.clone(), small())
        .await
        .unwrap();
    let err = j.append(vec![0u8; 2000]).await.unwrap_err();
    assert!(
        matches!(
            err,
            CpuError::Invalid {
                field: "record",
                ..
            }
        ),
        "{err}"
    );
    // The directory is locked while open.
    let err = Journal::open(dir.path(), engine.clone(), small())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CpuError::Invalid {
                field: "journal.dir",
                ..
            }
        ),
        "{err}"
    );
    // Nothing invalid was stored; the journal keeps serving.
    j.append(b"ok".to_vec()).await.unwrap();
    j.close().await;
    let (j, rec) = Journal::open(dir.path(), engine, small()).await.unwrap();
    assert_eq!(rec.records, vec![b"ok".to_vec()]);
    j.close().await;
}

/// Where each record's frame begins in the segments of `dir`: (segment, offset of the frame,
/// its length field's offset), in record order. The first frame of each segment is its header.
fn frame_offsets(dir: &Path) -> Vec<(PathBuf, usize)> {
    let mut out = Vec::new();
    for seg in files(dir, "seg") {
        let bytes = fs::read(&seg).unwrap();
        let mut pos = 0usize;
        let mut first = true;
        while pos + FRAME_HEADER <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            if !first {
                out.push((seg.clone(), pos));
            }
            first = false;
            pos += FRAME_HEADER + len;
        }
    }
    out
}

/// Property: whatever is truncated or flipped in the segments, recovery never panics and gives
/// either a prefix of what was written or an error naming the damage. One flipped bit is held
/// to more: anywhere but inside the very last frame, it is corruption (never taken for a torn
/// tail, which would lose the records after it), and in the last frame it costs at most that
/// one record. Flips aimed at length fields are a case of their own: the bug this guards
/// against took a grown length for a torn tail and cut off every record after it.
#[tokio::test]
async fn damaged_segments_recover_to_a_prefix_or_an_error() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let origin = Scratch::new("journal-prop-origin");
    let (j, _) = Journal::open(origin.path(), engine.clone(), small())
        .await
        .unwrap();
    let mut written = Vec::new();
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    for i in 0..120u32 {
        let len = rng.random_range(0..200);
        let rec: Vec<u8> = (0..len).map(|k| (i as u8) ^ (k as u8)).collect();
        j.append(rec.clone()).await.unwrap();
        written.push(rec);
    }
    j.close().await;
    let segs = files(origin.path(), "seg");
    let frames = frame_offsets(origin.path());
    assert_eq!(frames.len(), written.len());
    let last_frame = frames.last().unwrap().clone();
    let cases = std::env::var("CADRE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let (mut prefixes, mut errors, mut length_flips) = (0, 0, 0);
    for case in 0..cases {
        let dir = Scratch::new("journal-prop");
        for s in &segs {
            fs::copy(s, dir.path().join(s.file_name().unwrap())).unwrap();
        }
        // 0: truncate; 1: several flips anywhere; 2: one flip anywhere; 3: one flip in a length.
        let what = rng.random_range(0..4);
        let (victim, single) = if what == 3 {
            let (seg, at) = &frames[rng.random_range(0..frames.len())];
            let victim = dir.path().join(seg.file_name().unwrap());
            let mut bytes = fs::read(&victim).unwrap();
            bytes[at + rng.random_range(0..4)] ^= 1 << rng.random_range(0..8);
            fs::write(&victim, &bytes).unwrap();
            length_flips += 1;
            (victim, Some(*at))
        } else {
            let victim = dir
                .path()
                .join(segs[rng.random_range(0..segs.len())].file_name().unwrap());
            let mut bytes = fs::read(&victim).unwrap();
            let mut single = None;
            if what == 0 && !bytes.is_empty() {
                bytes.truncate(rng.random_range(0..bytes.len()));
            } else {
                let flips = if what == 2 { 1 } else { rng.random_range(1..4) };
                for _ in 0..flips {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.random_range(0..8);
                    single = Some(at);
                }
                if flips > 1 {
                    single = None;
                }
            }
            fs::write(&victim, &bytes).unwrap();
            (victim, single)
        };
        let in_last_frame =
            |at: usize| victim.file_name() == last_frame.0.file_name() && at >= last_frame.1;
        match Journal::open(dir.path(), engine.clone(), small()).await {
            Ok((j, rec)) => {
                assert!(rec.records.len() <= written.len(), "case {case}");
                assert_eq!(
                    rec.records[..],
                    written[..rec.records.len()],
                    "case {case}: not a prefix"
                );
                if let Some(at) = single {
                    assert!(
                        in_last_frame(at),
                        "case {case}: a flipped bit at {at} of {} recovered {} of {} records instead of being refused",
                        victim.display(),
                        rec.records.len(),
                        written.len()
                    );
                    assert!(rec.records.len() + 1 >= written.len(), "case {case}");
                }
                prefixes += 1;
                j.close().await;
            }
            Err(CpuError::Corrupt { segment, .. }) => {
                assert_eq!(segment.file_name(), victim.file_name(), "case {case}");
                errors += 1;
            }
            Err(other) => panic!("case {case}: unexpected error {other}"),
        }
    }
    println!(
        "{cases} damaged journals ({length_flips} with a flipped length): {prefixes} recovered a prefix, {errors} refused as corrupt"
    );
    assert!(prefixes > 0 && errors > 0, "both outcomes must occur");
    assert!(length_flips > 0);
}

#[tokio::test]
async fn a_grown_length_before_the_last_record_is_corruption_not_a_torn_tail() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let dir = Scratch::new("journal-grown-length");
    let seg = ten_records(&engine, dir.path()).await;
    let mut bytes = fs::read(&seg).unwrap();
    let (_, fourth) = frame_offsets(dir.path())[3].clone();
    // A length of 9 bytes becomes 9 + 64: within the record limit, past the end of the file.
    bytes[fourth] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    match Journal::open(dir.path(), engine, JournalOptions::default()).await {
        Err(CpuError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, seg);
            assert_eq!(offset, fourth as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(fs::read(&seg).unwrap(), bytes, "nothing changed on disk");
    assert_eq!(files(dir.path(), "seg").len(), 1, "nothing set aside");
}

#[tokio::test]
async fn a_journal_in_the_previous_frame_format_is_read_and_continued_in_the_new_one() {
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    let dir = Scratch::new("journal-legacy");
    let old: [&[u8]; 3] = [b"one", b"two", b"three"];
    let mut seg = legacy_segment(0, 0, &old);
    // And a torn tail, as the previous version could leave it.
    seg.extend_from_slice(b"\x20\x00\x00");
    fs::write(dir.path().join("00000000000000000000.seg"), &seg).unwrap();
    let (j, rec) = Journal::open(dir.path(), engine.clone(), small())
        .await
        .unwrap();
    assert_eq!(rec.records, old.map(<[u8]>::to_vec));
    assert_eq!(rec.torn_tail.unwrap().dropped_bytes, 3);
    j.append(b"four".to_vec()).await.unwrap();
    j.close().await;
    assert_eq!(
        files(dir.path(), "seg").len(),
        2,
        "new appends start a segment"
    );
    let (j, rec) = Journal::open(dir.path(), engine, small()).await.unwrap();
    assert_eq!(rec.records.len(), 4);
    assert_eq!(rec.records[3], b"four");
    j.close().await;
}

#[tokio::test]
async fn queued_records_resolve_in_order_once_durable_and_fail_once_the_journal_is_gone() {
    for engine in engines() {
        let dir = Scratch::new("journal-queue");
        let (j, _) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        let mut pending = Vec::new();
        for i in 0..50u8 {
            pending.push(j.slot().await.unwrap().queue(vec![i; 10]).unwrap());
        }
        let mut last = None;
        for p in pending {
            let lsn = p.await.unwrap();
            assert!(last.is_none_or(|l| l < lsn), "{last:?} then {lsn:?}");
            last = Some(lsn);
        }
        // An oversized record is refused before it is queued.
        let slot = j.slot().await.unwrap();
        assert!(matches!(
            slot.queue(vec![0; 1 << 20]),
            Err(CpuError::Invalid {
                field: "record",
                ..
            })
        ));
        // A slot held across the close: the record it queues after it is never written, and
        // once the last handle is gone its future says so instead of hanging.
        let slot = j.slot().await.unwrap();
        j.clone().close().await;
        let orphan = slot.queue(vec![9; 10]).unwrap();
        drop(j);
        assert!(matches!(orphan.await, Err(CpuError::JournalStopped { .. })));
        let (_, rec) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        assert_eq!(
            rec.records,
            (0..50u8).map(|i| vec![i; 10]).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn a_snapshot_written_in_chunks_replaces_the_records_before_its_cut() {
    for engine in engines() {
        let dir = Scratch::new("journal-chunked-snapshot");
        let (j, _) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        for i in 0..50 {
            j.append(format!("before-{i}").into_bytes()).await.unwrap();
        }
        let cut = j.slot().await.unwrap().cut().await.unwrap();
        // Records after the cut go on while the snapshot is written.
        for i in 0..10 {
            j.append(format!("after-{i}").into_bytes()).await.unwrap();
        }
        // Abandoned: nothing changes, the temporary file goes.
        let mut abandoned = j.snapshot_file(cut).await.unwrap();
        abandoned.write(b"half".to_vec()).await.unwrap();
        let tmp = abandoned.path().to_path_buf();
        drop(abandoned);
        assert!(!tmp.exists());
        let mut snapshot = j.snapshot_file(cut).await.unwrap();
        snapshot.write(b"state-one|".to_vec()).await.unwrap();
        snapshot.write(vec![7u8; 100_000]).await.unwrap();
        snapshot.write(b"|state-two".to_vec()).await.unwrap();
        snapshot.install().await.unwrap();
        let old: Vec<_> = files(dir.path(), "seg")
            .into_iter()
            .filter(|p| {
                let stem = p.file_stem().unwrap().to_str().unwrap();
                stem.parse::<u64>().unwrap() < cut.segment
            })
            .collect();
        assert!(
            old.is_empty(),
            "segments before the cut are deleted: {old:?}"
        );
        j.append(b"last".to_vec()).await.unwrap();
        j.close().await;
        let (j, rec) = Journal::open(dir.path(), engine.clone(), small())
            .await
            .unwrap();
        let mut want = b"state-one|".to_vec();
        want.extend_from_slice(&[7u8; 100_000]);
        want.extend_from_slice(b"|state-two");
        assert_eq!(rec.snapshot.as_deref(), Some(&want[..]));
        let mut after: Vec<Vec<u8>> = (0..10).map(|i| format!("after-{i}").into_bytes()).collect();
        after.push(b"last".to_vec());
        assert_eq!(rec.records, after);
        j.close().await;
    }
}
