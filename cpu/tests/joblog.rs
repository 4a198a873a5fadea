//! The job log suite: a capped stream keeps exactly its head and its latest tail on disk (never
//! more than the cap, also while the process runs), reports what it dropped, and reads back as
//! head + marker + tail; tail(n) across a gap; followers that keep up, and followers slower than
//! the rotation that skip with a marker; removal, one stream or a batch; a segment that cannot
//! be created; validation.
//!
//! Every process prints numbered lines (`00000001\n`, nine bytes each), so each byte read back is
//! checked against its logical offset.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cadre_cpu::joblog::{
    gap_marker, list_pieces, remove_stream, remove_streams, segment_path, LogLayout,
};
use cadre_cpu::launcher::{
    CommandSpec, ExitOutcome, ExitReport, Launcher, LogFollower, CAPTURE_CHUNK, MIN_LOG_CAP,
};
use cadre_cpu::{BackendSetting, CpuError, IoEngine};
use common::{launchers, Scratch};

const CAP: u64 = 256 * 1024;
const LINE: u64 = 9;
/// A guard against a hang, not a timing assertion.
const HANG: Duration = Duration::from_secs(120);

/// Lines `first..=last` as the process prints them.
fn lines(first: u64, last: u64) -> Vec<u8> {
    (first..=last)
        .flat_map(|i| format!("{i:08}\n").into_bytes())
        .collect()
}

/// The shell command printing lines `first..=last`.
fn seq(first: u64, last: u64) -> String {
    format!("seq -f %08.0f {first} {last}")
}

fn std_launcher() -> Launcher {
    Launcher::new(IoEngine::new(BackendSetting::Std).unwrap())
}

fn capped(dir: &Scratch, script: &str, cap: u64) -> CommandSpec {
    let mut spec = CommandSpec::new(
        ["/bin/sh", "-c", script],
        dir.path().join("out.log"),
        dir.path().join("err.log"),
    );
    spec.log_cap = Some(cap);
    spec
}

/// Sums the sizes of the files of the stream at `path` whenever two listings in a row name the
/// same files: every file then existed at once (none is ever created twice), and sizes only grow,
/// so the sum is at most what the disk held at that moment. Returns the largest such sum.
struct DiskWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, usize)>,
}

impl DiskWatch {
    fn start(path: &Path) -> DiskWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, path) = (stop.clone(), path.to_path_buf());
        let thread = std::thread::spawn(move || {
            let (mut max, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let first = stream_files(&path);
                let second = stream_files(&path);
                let names =
                    |v: &[(PathBuf, u64)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
                if names(&first) == names(&second) {
                    max = max.max(first.iter().map(|f| f.1).sum());
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (max, samples)
        });
        DiskWatch { stop, thread }
    }

    fn stop(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The head and segment files of the stream at `path`, by plain directory listing.
fn stream_files(path: &Path) -> Vec<(PathBuf, u64)> {
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().to_str().unwrap().to_owned();
        if file == name || file.starts_with(&format!("{name}.")) {
            if let Ok(meta) = entry.metadata() {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// Checks that `chunks` are `expected` read in order from logical offset `from`, with markers
/// standing for the bytes they say were dropped. Returns the end offset and the markers seen.
fn check_stream(chunks: &[Vec<u8>], expected: &[u8], from: u64, head: u64) -> (u64, usize) {
    let mut pos = from;
    let mut markers = 0;
    for chunk in chunks {
        assert!(
            !chunk.is_empty() && chunk.len() <= CAPTURE_CHUNK,
            "a chunk of {} bytes",
            chunk.len()
        );
        if let Some(n) = marker(chunk) {
            assert_eq!(chunk, &gap_marker(n, head), "marker at {pos}");
            assert!(n > 0, "an empty gap at {pos}");
            markers += 1;
            pos += n;
            continue;
        }
        let end = pos as usize + chunk.len();
        assert!(end <= expected.len(), "bytes past the end at {pos}");
        assert!(
            chunk[..] == expected[pos as usize..end],
            "bytes at {pos}..{end} are not the stream's"
        );
        pos = end as u64;
    }
    (pos, markers)
}

/// The bytes a marker chunk says were dropped; `None` for data (numbered lines hold no `[`).
fn marker(chunk: &[u8]) -> Option<u64> {
    let rest = chunk.strip_prefix(b"\n[cadre: ")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).unwrap().parse().ok()
}

async fn follow_to_end(follower: &mut LogFollower) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while let Some(chunk) = tokio::time::timeout(HANG, follower.next_chunk())
        .await
        .expect("the follower ends")
        .unwrap()
    {
        chunks.push(chunk);
    }
    chunks
}

/// Reads `follower` until its offset reaches `to`.
async fn follow_until(follower: &mut LogFollower, to: u64) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while follower.offset() < to {
        let chunk = tokio::time::timeout(HANG, follower.next_chunk())
            .await
            .expect("the bytes come")
            .unwrap()
            .expect("the stream goes on");
        chunks.push(chunk);
    }
    chunks
}

/// Waits until the stream at `path` reaches logical offset `len`.
async fn wait_for_len(path: &Path, len: u64) {
    tokio::time::timeout(HANG, async {
        loop {
            let end = list_pieces(path)
                .unwrap()
                .iter()
                .map(|p| p.end())
                .max()
                .unwrap_or(0);
            if end >= len {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the process prints");
}

/// The layout on disk after a finished run: the head, then at most six segments back to back
/// up to the end of the stream, each byte the process's own. Returns the bytes kept.
fn check_layout(path: &Path, cap: u64, expected: &[u8], report: &ExitReport) -> u64 {
    let layout = LogLayout::for_cap(cap);
    let total = expected.len() as u64;
    let pieces = list_pieces(path).unwrap();
    assert!(pieces[0].head && pieces[0].start == 0);
    assert_eq!(pieces[0].len, layout.head);
    let segments = &pieces[1..];
    assert!(
        !segments.is_empty() && segments.len() <= 6,
        "{} segments",
        segments.len()
    );
    for pair in segments.windows(2) {
        assert_eq!(pair[0].end(), pair[1].start, "segments are back to back");
    }
    for piece in &pieces {
        assert!(piece.len <= layout.head.max(layout.segment));
        if !piece.head {
            assert_eq!(piece.path, segment_path(path, piece.start));
            assert_eq!((piece.start - layout.head) % layout.segment, 0);
        }
        let bytes = std::fs::read(&piece.path).unwrap();
        assert!(
            bytes[..] == expected[piece.start as usize..piece.end() as usize],
            "{} holds other bytes",
            piece.path.display()
        );
    }
    let last = segments.last().unwrap();
    assert_eq!(last.end(), total, "the tail ends where the output did");
    if total >= layout.head + 6 * layout.segment {
        assert_eq!(segments.len(), 6, "six segments kept");
    }
    let kept: u64 = pieces.iter().map(|p| p.len).sum();
    assert!(kept <= cap, "{kept} bytes on disk for a cap of {cap}");
    assert_eq!(report.stdout_bytes, total);
    assert_eq!(report.stdout_dropped_bytes, total - kept);
    assert_eq!(report.stdout_dropped_bytes, segments[0].start - layout.head);
    kept
}

#[tokio::test]
async fn a_capped_stream_keeps_its_head_and_tail_and_never_more_than_the_cap() {
    for (name, launcher) in launchers() {
        for cap in [CAP, MIN_LOG_CAP] {
            let dir = Scratch::new(&format!("joblog-cap-{name}-{cap}"));
            let n = 200_000;
            let expected = lines(1, n);
            let spec = capped(&dir, &seq(1, n), cap);
            let watch = DiskWatch::start(&spec.stdout_log);
            let mut proc = launcher.spawn(&spec, "job-cap").unwrap();
            let report = proc.wait().await.unwrap();
            let (max_on_disk, samples) = watch.stop();
            assert_eq!(report.outcome, ExitOutcome::Code(0), "{name}");
            assert!(
                report.logs_complete,
                "a cap-drop is not incomplete ({name})"
            );
            assert!(
                max_on_disk <= cap,
                "{name}: {max_on_disk} bytes on disk while running, cap {cap}"
            );
            println!("{name} cap {cap}: {samples} consistent samples, at most {max_on_disk} bytes");

            let kept = check_layout(&spec.stdout_log, cap, &expected, &report);
            assert!(
                report.stdout_dropped_bytes > 0 && kept + report.stdout_dropped_bytes == n * LINE
            );
            // The uncapped-size stderr is only a head.
            assert_eq!(report.stderr_dropped_bytes, 0);
            assert_eq!(list_pieces(&spec.stderr_log).unwrap().len(), 1);

            // Read back: head, one marker naming the gap, the true last bytes.
            let layout = LogLayout::for_cap(cap);
            let first = list_pieces(&spec.stdout_log).unwrap()[1].start;
            let mut want = expected[..layout.head as usize].to_vec();
            want.extend(gap_marker(first - layout.head, layout.head));
            want.extend_from_slice(&expected[first as usize..]);
            let reader = launcher.log_reader();
            let back = reader.read_from(&spec.stdout_log, 0).await.unwrap();
            assert!(
                back.collect(1 << 30).await.unwrap() == want,
                "{name} cap {cap}"
            );
        }
    }
}

#[tokio::test]
async fn tail_and_read_from_cross_the_gap_in_bounded_chunks() {
    let dir = Scratch::new("joblog-tail");
    let launcher = std_launcher();
    let n = 100_000;
    let expected = lines(1, n);
    let total = n * LINE;
    let spec = capped(&dir, &seq(1, n), CAP);
    let report = launcher
        .spawn(&spec, "job-tail")
        .unwrap()
        .wait()
        .await
        .unwrap();
    check_layout(&spec.stdout_log, CAP, &expected, &report);
    let head = LogLayout::for_cap(CAP).head;
    let first = list_pieces(&spec.stdout_log).unwrap()[1].start;
    let tail_kept = total - first;
    let reader = launcher.log_reader();
    let tail = |n: u64| {
        let (reader, path) = (reader.clone(), spec.stdout_log.clone());
        async move {
            let mut chunks = reader.tail(&path, n).await.unwrap();
            let mut out = Vec::new();
            while let Some(chunk) = chunks.next_chunk().await.unwrap() {
                assert!(chunk.len() <= CAPTURE_CHUNK);
                out.push(chunk);
            }
            out
        }
    };
    let flat = |chunks: Vec<Vec<u8>>| chunks.concat();

    // Within the kept tail: exactly the last bytes.
    assert!(flat(tail(1000).await) == expected[(total - 1000) as usize..]);
    assert!(flat(tail(tail_kept).await) == expected[first as usize..]);
    // Reaching 1000 bytes into the gap: a marker for those, then the tail.
    let chunks = tail(tail_kept + 1000).await;
    assert_eq!(chunks[0], gap_marker(1000, head));
    assert_eq!(
        check_stream(&chunks, &expected, first - 1000, head),
        (total, 1)
    );
    // Everything but the first 10 bytes: the rest of the head, the marker, the tail.
    let chunks = tail(total - 10).await;
    assert_eq!(check_stream(&chunks, &expected, 10, head), (total, 1));
    assert!(chunks.contains(&gap_marker(first - head, head)));
    assert!(flat(tail(0).await).is_empty());

    // From an offset inside the gap: the rest of the gap, then the tail.
    let chunks = reader.read_from(&spec.stdout_log, head + 5).await.unwrap();
    assert_eq!((chunks.offset(), chunks.end()), (head + 5, total));
    let bytes = chunks.collect(1 << 30).await.unwrap();
    let mut want = gap_marker(first - head - 5, head);
    want.extend_from_slice(&expected[first as usize..]);
    assert!(bytes == want);
    // From the end: nothing.
    let end = reader.read_from(&spec.stdout_log, total).await.unwrap();
    assert!(end.collect(1 << 20).await.unwrap().is_empty());

    // The listing names each piece's logical range.
    let pieces = reader.pieces(&spec.stdout_log).await.unwrap();
    assert_eq!(pieces, list_pieces(&spec.stdout_log).unwrap());
    assert_eq!((pieces[0].start, pieces[0].end()), (0, head));
    assert_eq!(pieces.last().unwrap().end(), total);
}

#[tokio::test]
async fn a_follower_reading_through_rotations_sees_one_consistent_stream() {
    for (name, launcher) in launchers() {
        for cap in [CAP, MIN_LOG_CAP] {
            let dir = Scratch::new(&format!("joblog-follow-{name}-{cap}"));
            // Bursts with pauses, so the follower reads while segments come and go.
            let (bursts, per) = (40, 5_000);
            let script = format!(
                "i=0; while [ $i -lt {bursts} ]; do s=$((i * {per} + 1)); \
                 seq -f %08.0f $s $((s + {per} - 1)); sleep 0.01; i=$((i + 1)); done"
            );
            let expected = lines(1, bursts * per);
            let spec = capped(&dir, &script, cap);
            let mut proc = launcher.spawn(&spec, "job-follow").unwrap();
            let mut follower = launcher
                .log_reader()
                .follow(&spec.stdout_log, 0, proc.log_watch())
                .unwrap();
            let (chunks, report) = tokio::join!(follow_to_end(&mut follower), proc.wait());
            let report = report.unwrap();
            assert!(report.logs_complete);
            let head = LogLayout::for_cap(cap).head;
            let (end, markers) = check_stream(&chunks, &expected, 0, head);
            assert_eq!(
                end,
                expected.len() as u64,
                "{name} cap {cap}: the follower reached the end"
            );
            assert_eq!(follower.offset(), end);
            assert_eq!(follower.next_chunk().await.unwrap(), None, "stays finished");
            println!(
                "{name} cap {cap}: {} chunks, {markers} markers",
                chunks.len()
            );
            check_layout(&spec.stdout_log, cap, &expected, &report);
        }
    }
}

/// A process printing lines `1..=a`, waiting for `go1`, printing up to `b`, waiting for `go2`,
/// printing up to `c`.
fn paused_script(dir: &Scratch, a: u64, b: u64, c: u64) -> (String, PathBuf, PathBuf) {
    let (go1, go2) = (dir.path().join("go1"), dir.path().join("go2"));
    let wait = |go: &Path| format!("while [ ! -e {} ]; do sleep 0.01; done", go.display());
    let script = format!(
        "{}; {}; {}; {}; {}",
        seq(1, a),
        wait(&go1),
        seq(a + 1, b),
        wait(&go2),
        seq(b + 1, c)
    );
    (script, go1, go2)
}

#[tokio::test]
async fn a_follower_whose_segment_rotated_out_skips_to_the_oldest_with_a_marker() {
    let dir = Scratch::new("joblog-slow");
    let launcher = std_launcher();
    let layout = LogLayout::for_cap(CAP);
    // Phase 1 ends inside the first segment; phase 2 rotates it out many times over.
    let (a, b, c) = (9_000, 120_000, 121_000);
    assert!(a * LINE > layout.head && a * LINE < layout.head + layout.segment);
    let (script, go1, go2) = paused_script(&dir, a, b, c);
    let expected = lines(1, c);
    let spec = capped(&dir, &script, CAP);
    let mut proc = launcher.spawn(&spec, "job-slow").unwrap();
    wait_for_len(&spec.stdout_log, a * LINE).await;

    let reader = launcher.log_reader();
    // One follower in the first segment, one at the start of the head.
    let mut in_segment = reader
        .follow(&spec.stdout_log, layout.head, proc.log_watch())
        .unwrap();
    let mut in_head = reader
        .follow(&spec.stdout_log, 0, proc.log_watch())
        .unwrap();
    let mut seen_segment = follow_until(&mut in_segment, a * LINE).await;
    let mut seen_head = vec![in_head.next_chunk().await.unwrap().unwrap()];

    // Both stall while the process prints far past the cap, then read on while it still runs.
    std::fs::write(&go1, b"").unwrap();
    wait_for_len(&spec.stdout_log, b * LINE).await;
    let first = list_pieces(&spec.stdout_log).unwrap()[1].start;
    assert!(first > a * LINE, "the followers' segment is gone");
    let more = follow_until(&mut in_segment, b * LINE).await;
    assert_eq!(
        more[0],
        gap_marker(first - a * LINE, layout.head),
        "skipped with a marker"
    );
    seen_segment.extend(more);
    seen_head.extend(follow_until(&mut in_head, b * LINE).await);

    std::fs::write(&go2, b"").unwrap();
    let ((rest_segment, rest_head), report) = tokio::join!(
        async {
            (
                follow_to_end(&mut in_segment).await,
                follow_to_end(&mut in_head).await,
            )
        },
        proc.wait()
    );
    assert!(report.unwrap().logs_complete);
    seen_segment.extend(rest_segment);
    seen_head.extend(rest_head);
    let total = c * LINE;
    let (end, markers) = check_stream(&seen_segment, &expected, layout.head, layout.head);
    assert_eq!((end, markers), (total, 1));
    let (end, markers) = check_stream(&seen_head, &expected, 0, layout.head);
    assert_eq!(end, total);
    assert!(
        markers >= 1,
        "the head's follower skipped the rotated-out segments"
    );
}

#[tokio::test]
async fn a_follower_in_the_head_finds_the_tail_after_the_first_segments_rotated_out() {
    // The follower last listed the stream when only a short head existed, so it knows of no
    // segment; the one after the head is gone by the time it gets there, and its name is all
    // it could have looked for.
    let dir = Scratch::new("joblog-head");
    let launcher = std_launcher();
    let layout = LogLayout::for_cap(CAP);
    let (a, b, c) = (1_000, 120_000, 121_000);
    let (script, go1, go2) = paused_script(&dir, a, b, c);
    let expected = lines(1, c);
    let spec = capped(&dir, &script, CAP);
    let mut proc = launcher.spawn(&spec, "job-head").unwrap();
    wait_for_len(&spec.stdout_log, a * LINE).await;
    let mut follower = launcher
        .log_reader()
        .follow(&spec.stdout_log, 0, proc.log_watch())
        .unwrap();
    let mut seen = follow_until(&mut follower, a * LINE).await;
    std::fs::write(&go1, b"").unwrap();
    wait_for_len(&spec.stdout_log, b * LINE).await;
    // The process is still running (it waits for go2).
    seen.extend(follow_until(&mut follower, b * LINE).await);
    let (_, markers) = check_stream(&seen, &expected, 0, layout.head);
    assert_eq!(markers, 1);
    std::fs::write(&go2, b"").unwrap();
    let (rest, report) = tokio::join!(follow_to_end(&mut follower), proc.wait());
    assert!(report.unwrap().logs_complete);
    seen.extend(rest);
    assert_eq!(
        check_stream(&seen, &expected, 0, layout.head),
        (c * LINE, 1)
    );
}

#[tokio::test]
async fn remove_stream_frees_every_piece_and_spawn_clears_old_segments() {
    let dir = Scratch::new("joblog-remove");
    let launcher = std_launcher();
    let n = 100_000;
    let spec = capped(&dir, &seq(1, n), CAP);
    let report = launcher
        .spawn(&spec, "job-rm")
        .unwrap()
        .wait()
        .await
        .unwrap();
    let kept = check_layout(&spec.stdout_log, CAP, &lines(1, n), &report);

    // A second run on the same paths, uncapped, leaves none of the first run's segments.
    let mut again = spec.clone();
    again.argv = vec!["/bin/sh".into(), "-c".into(), seq(1, 3)];
    again.log_cap = None;
    let report = launcher
        .spawn(&again, "job-rm2")
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!((report.stdout_bytes, report.stdout_dropped_bytes), (27, 0));
    let pieces = list_pieces(&spec.stdout_log).unwrap();
    assert_eq!(pieces.len(), 1, "{pieces:?}");
    let back = launcher
        .log_reader()
        .read_from(&spec.stdout_log, 0)
        .await
        .unwrap();
    assert_eq!(back.collect(1 << 20).await.unwrap(), lines(1, 3));

    // A run printing nothing over a short head (too short to have segments) leaves it empty.
    let mut quiet = again.clone();
    quiet.argv = vec!["/bin/true".into()];
    launcher
        .spawn(&quiet, "job-rm-quiet")
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&spec.stdout_log).unwrap().len(), 0);

    // Run capped again and remove it: every byte on disk is freed.
    let report = launcher
        .spawn(&spec, "job-rm3")
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        check_layout(&spec.stdout_log, CAP, &lines(1, n), &report),
        kept
    );
    assert_eq!(remove_stream(&spec.stdout_log).unwrap(), kept);
    assert!(list_pieces(&spec.stdout_log).unwrap().is_empty());
    assert!(stream_files(&spec.stdout_log).is_empty());
    assert!(spec.stderr_log.exists(), "the other stream is left alone");
    assert_eq!(
        remove_stream(&spec.stdout_log).unwrap(),
        0,
        "already gone is fine"
    );
    assert_eq!(remove_stream(dir.path().join("nowhere/x.out")).unwrap(), 0);
    assert!(matches!(
        launcher.log_reader().tail(&spec.stdout_log, 10).await,
        Err(CpuError::Io { op: "open", .. })
    ));
}

#[tokio::test]
async fn a_segment_that_cannot_be_created_is_a_write_error_and_the_pipe_is_drained() {
    let dir = Scratch::new("joblog-nospace");
    let launcher = std_launcher();
    let layout = LogLayout::for_cap(CAP);
    let (a, b) = (1_000, 100_000);
    let go = dir.path().join("go1");
    let script = format!(
        "{}; while [ ! -e {} ]; do sleep 0.01; done; {}",
        seq(1, a),
        go.display(),
        seq(a + 1, b)
    );
    let spec = capped(&dir, &script, CAP);
    let mut proc = launcher.spawn(&spec, "job-nospace").unwrap();
    // A directory where the first segment goes: creating it fails, as on a full disk.
    std::fs::create_dir(segment_path(&spec.stdout_log, layout.head)).unwrap();
    std::fs::write(&go, b"").unwrap();
    let report = tokio::time::timeout(HANG, proc.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report.outcome,
        ExitOutcome::Code(0),
        "the child was not left blocked"
    );
    assert_eq!(report.stdout_bytes, b * LINE, "every byte was drained");
    assert_eq!(report.stdout_dropped_bytes, 0);
    assert!(!report.logs_complete);
    let pieces = list_pieces(&spec.stdout_log).unwrap();
    assert_eq!(pieces.len(), 1, "only the head: {pieces:?}");
    assert!(std::fs::read(&spec.stdout_log).unwrap() == lines(1, b)[..layout.head as usize]);
}

#[tokio::test]
async fn the_cap_is_validated_and_an_uncapped_stream_is_one_file() {
    let dir = Scratch::new("joblog-valid");
    let launcher = std_launcher();
    let mut spec = capped(&dir, &seq(1, 10), MIN_LOG_CAP - 1);
    match launcher.spawn(&spec, "job-small") {
        Err(CpuError::Invalid { field, .. }) => assert_eq!(field, "log_cap"),
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(_) => panic!("a cap below the minimum was taken"),
    }
    assert!(!spec.stdout_log.exists());

    // Uncapped, as before: one file holding everything.
    spec.log_cap = None;
    spec.argv[2] = seq(1, 100_000);
    let report = launcher
        .spawn(&spec, "job-uncapped")
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(report.logs_complete);
    assert_eq!(
        (report.stdout_bytes, report.stdout_dropped_bytes),
        (900_000, 0)
    );
    assert_eq!(list_pieces(&spec.stdout_log).unwrap().len(), 1);
    assert!(std::fs::read(&spec.stdout_log).unwrap() == lines(1, 100_000));
    let tail = launcher
        .log_reader()
        .tail(&spec.stdout_log, 90)
        .await
        .unwrap();
    assert_eq!(tail.collect(1 << 20).await.unwrap(), lines(99_991, 100_000));
}

/// Writes `len` bytes to `path`.
fn file_of(path: &Path, len: u64) {
    std::fs::write(path, vec![b'x'; len as usize]).unwrap();
}

#[test]
fn a_batch_removal_takes_each_stream_whole_and_nothing_else() {
    let dir = Scratch::new("joblog-remove-batch");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let layout = LogLayout::for_cap(MIN_LOG_CAP);
    // A stream past its head: the head and two segments, as the writer names them.
    let long = logs.join("1.0.out");
    file_of(&long, layout.head);
    file_of(&segment_path(&long, layout.head), layout.segment);
    file_of(&segment_path(&long, layout.head + layout.segment), 7);
    // A stream whose name is the first one's and a suffix (as a segment's is), also long, with
    // one segment past its first (which was rotated out).
    let other = logs.join("1.0.out.1");
    file_of(&other, layout.head);
    file_of(&segment_path(&other, layout.head + 3 * layout.segment), 5);
    // A short stream (no listing needed), a missing one, one in another directory.
    let short = logs.join("2.0.err");
    file_of(&short, 10);
    let missing = logs.join("3.0.out");
    let elsewhere_dir = dir.path().join("other");
    std::fs::create_dir_all(&elsewhere_dir).unwrap();
    let elsewhere = elsewhere_dir.join("4.0.out");
    file_of(&elsewhere, layout.head);
    file_of(&segment_path(&elsewhere, layout.head), 3);
    // What is not part of any of them stays: another job's segment, a name that only looks
    // like a segment, and a stream not in the batch.
    let kept = logs.join("5.0.out");
    file_of(&kept, layout.head);
    let kept_segment = segment_path(&kept, layout.head);
    file_of(&kept_segment, 9);
    let lookalike = logs.join("1.0.out.0000000000000001638x");
    file_of(&lookalike, 1);

    // The first stream twice (the second time through another spelling): removed once.
    let again = logs.join(".").join("1.0.out");
    let paths = vec![
        long.clone(),
        other.clone(),
        short.clone(),
        missing,
        elsewhere.clone(),
        again,
    ];
    let freed: Vec<u64> = remove_streams(&paths)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        freed,
        vec![
            layout.head + layout.segment + 7,
            layout.head + 5,
            10,
            0,
            layout.head + 3,
            0
        ]
    );
    for path in [&long, &other, &short, &elsewhere] {
        assert!(
            list_pieces(path).unwrap().is_empty(),
            "{} left",
            path.display()
        );
    }
    for path in [&kept, &kept_segment, &lookalike] {
        assert!(path.exists(), "{} was removed", path.display());
    }
    assert_eq!(
        remove_streams(&paths)
            .into_iter()
            .map(|r| r.unwrap())
            .sum::<u64>(),
        0,
        "already gone is fine"
    );
}
