//! A node that crashes, restarts and prunes, run as the real binary: `kill -9` under a mixed
//! load with retention pruning all along loses no acknowledged job (each is there and ended, or
//! was pruned after it ran), and what ran at the kill runs again; retention holds across a
//! restart (pruned jobs stay pruned, their logs and scratch directories gone, kept jobs keep
//! their logs); a journal damaged before its tail is refused, naming the segment and the
//! offset, without a byte changed, while a torn last write is set aside and the node starts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{stop_clients, wait_for, Scratch, Server};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);
/// Draining everything a few seconds of load queued takes a while on a loaded 2-core machine.
const DRAIN: Duration = Duration::from_secs(240);

/// The jobs of the mixed load; each command first appends its attempt to a marker file named
/// by its id, so the test knows which jobs ran and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Ends at once, successfully.
    True,
    /// Only writes its marker, reserving no CPU.
    Noop,
    /// Prints some output.
    Print,
    /// Exits 3.
    Fail,
    /// Runs until the node was restarted (a flag file exists): it is running at the kill.
    Long,
}

impl Kind {
    fn of(n: u64) -> Kind {
        match n % 40 {
            0 => Kind::Long,
            1 | 2 => Kind::Fail,
            3..=8 => Kind::Print,
            9..=22 => Kind::True,
            _ => Kind::Noop,
        }
    }

    /// The state a job of this kind ends in.
    fn ends(self) -> &'static str {
        match self {
            Kind::Fail => "failed",
            _ => "succeeded",
        }
    }
}

/// Where the markers go and the flag long jobs wait for.
#[derive(Clone)]
struct Marks {
    dir: PathBuf,
    restarted: PathBuf,
}

impl Marks {
    fn marker(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Attempts that wrote the marker of job `id` (0 when it never ran).
    fn runs(&self, id: u64) -> usize {
        std::fs::read_to_string(self.marker(id))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn spec(&self, kind: Kind, name: String) -> Value {
        let mark = format!(
            "echo $CADRE_ATTEMPT >> {}/$CADRE_JOB_ID",
            self.dir.display()
        );
        let (script, cpu) = match kind {
            Kind::True => (format!("{mark}; exec /bin/true"), 100),
            Kind::Noop => (mark, 0),
            Kind::Print => (
                format!("{mark}; head -c 20000 /dev/zero | tr '\\0' x; echo; echo printed >&2"),
                100,
            ),
            Kind::Fail => (format!("{mark}; echo failing >&2; exit 3"), 100),
            Kind::Long => (
                format!(
                    "{mark}; while [ ! -e {} ]; do sleep 0.05; done",
                    self.restarted.display()
                ),
                0,
            ),
        };
        json!({"name": name,
            "kind": {"command": {"program": "/bin/sh", "args": ["-c", script]}},
            "resources": {"cpu_millis": cpu}})
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// One client: a batch of 8 (every fourth request a single job) every 150 ms until `stop`;
/// what the node acknowledged goes into `accepted`.
fn client(
    c: u64,
    api: String,
    marks: Marks,
    accepted: Arc<Mutex<BTreeMap<u64, Kind>>>,
    stop: Arc<AtomicBool>,
) {
    let agent = agent();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = if seq % 4 == 3 { 1 } else { 8 };
        let kinds: Vec<Kind> = (0..n).map(|i| Kind::of(c * 7 + seq * 8 + i)).collect();
        let specs: Vec<Value> = kinds
            .iter()
            .enumerate()
            .map(|(i, &k)| marks.spec(k, format!("c{c}-{seq}-{i}")))
            .collect();
        let body = if n == 1 {
            specs[0].clone()
        } else {
            json!({ "jobs": specs })
        };
        seq += 1;
        // A refused or unanswered request (the node was killed) acknowledged nothing.
        if let Ok(mut r) = agent.post(format!("{api}/v1/jobs")).send_json(body) {
            let status = r.status().as_u16();
            if let (200 | 201, Ok(text)) = (status, r.body_mut().read_to_string()) {
                let reply: Value = serde_json::from_str(&text).unwrap();
                let ids: Vec<u64> = match reply.get("ids") {
                    Some(ids) => ids
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap())
                        .collect(),
                    None => vec![reply["id"].as_u64().unwrap()],
                };
                assert_eq!(ids.len(), kinds.len(), "{reply}");
                accepted.lock().unwrap().extend(ids.into_iter().zip(kinds));
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn kill_9_under_mixed_load_with_retention_loses_nothing_accepted() {
    let dir = Scratch::new("crash-mixed");
    let marks = Marks {
        dir: dir.path().join("ran"),
        restarted: dir.path().join("restarted"),
    };
    std::fs::create_dir_all(&marks.dir).unwrap();
    let mut node = Server::start(
        dir.path(),
        &[
            ("CADRE_RETENTION_MAX_JOBS", "50"),
            ("CADRE_RETENTION_MAX_AGE_SECS", "10"),
            ("CADRE_RETENTION_EVERY_MS", "100"),
        ],
    );
    let accepted = Arc::new(Mutex::new(BTreeMap::<u64, Kind>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (api, marks) = (node.api.clone(), marks.clone());
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || client(c, api, marks, accepted, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    // Mid-load, with a long job running that has written its marker (so its run is seen).
    let long_running = |node: &Server| -> Vec<u64> {
        let accepted = accepted.lock().unwrap();
        node.ids_in("running")
            .into_iter()
            .filter(|id| accepted.get(id) == Some(&Kind::Long))
            .collect()
    };
    wait_for("a long job running with its marker", LONG, || {
        long_running(&node).iter().any(|&id| marks.runs(id) > 0)
    });
    let running_at_kill = long_running(&node);
    node.kill9();
    let accepted = stop_clients(&stop, clients, &accepted);
    assert!(
        accepted.len() > 100,
        "only {} jobs accepted",
        accepted.len()
    );
    // Long jobs cannot end before the flag exists: those listed running were running at the kill.
    let runs_at_kill: BTreeMap<u64, usize> = running_at_kill
        .iter()
        .map(|&id| (id, marks.runs(id)))
        .collect();
    assert!(runs_at_kill.values().any(|&n| n > 0), "{runs_at_kill:?}");
    std::fs::write(&marks.restarted, b"").unwrap();

    node.spawn();
    node.wait_drained(DRAIN);
    let mut lost = Vec::new();
    let mut pruned = 0;
    let mut kept = 0;
    for (&id, &kind) in &accepted {
        let (status, body) = node.job_or_error(id);
        let ran = marks.runs(id) > 0;
        match status {
            200 => {
                kept += 1;
                assert_eq!(
                    body["state"],
                    kind.ends(),
                    "job {id} ({kind:?}) did not end as its command dictates: {body}"
                );
                assert!(ran, "job {id} ({kind:?}) ended without running: {body}");
            }
            404 if body["error"] == "pruned by retention" => {
                pruned += 1;
                // Only ended jobs are pruned: one that never ran was lost, not pruned.
                if !ran {
                    lost.push(format!("{id} ({kind:?}): pruned but never ran: {body}"));
                }
            }
            _ => lost.push(format!("{id} ({kind:?}): {status} {body}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged jobs lost:\n{}\nlog:\n{}",
        lost.len(),
        accepted.len(),
        lost.join("\n"),
        node.log_text()
    );
    assert!(pruned > 0, "nothing was pruned ({kept} kept)");
    // What ran at the kill was requeued and ran again.
    for (&id, &before) in &runs_at_kill {
        let after = marks.runs(id);
        assert!(
            after > before,
            "job {id}, running at the kill, did not run again ({before} runs before, {after} after)"
        );
        let (status, body) = node.job_or_error(id);
        if status == 200 {
            assert_eq!(body["state"], "succeeded", "{body}");
            assert!(body["requeues"].as_u64().unwrap() >= 1, "{body}");
        }
    }
    let log = node.log_text();
    assert!(!log.contains("panicked"), "the node panicked:\n{log}");
    println!(
        "{} accepted, {pruned} pruned, {kept} kept, {} long jobs running at the kill",
        accepted.len(),
        runs_at_kill.len()
    );
}

/// The files job `id` has under `dir` (logs: `<id>.<task>.<stream>...`; scratch: `<id>.<task>`).
fn files_of(dir: &Path, id: u64) -> Vec<String> {
    let prefix = format!("{id}.");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

#[test]
fn retention_holds_across_a_process_restart_and_pruned_files_are_gone() {
    let dir = Scratch::new("crash-retention");
    let mut node = Server::start(
        dir.path(),
        &[
            ("CADRE_RETENTION_MAX_JOBS", "3"),
            ("CADRE_RETENTION_EVERY_MS", "100"),
        ],
    );
    let script =
        "echo out-$CADRE_JOB_ID; echo err-$CADRE_JOB_ID >&2; echo kept > $CADRE_SCRATCH/file";
    let ids: Vec<u64> = (0..8)
        .map(|i| {
            let (status, body) = node.post(
                "/v1/jobs",
                &json!({"name": format!("r{i}"),
                    "kind": {"command": {"program": "/bin/sh", "args": ["-c", script]}}}),
            );
            assert_eq!(status, 201, "{body}");
            body["id"].as_u64().unwrap()
        })
        .collect();
    let highest = *ids.iter().max().unwrap();
    // Everything ends, and all but the 3 that ended last are pruned.
    let split = |node: &Server| -> (Vec<u64>, Vec<u64>) {
        let mut kept = Vec::new();
        let mut pruned = Vec::new();
        for &id in &ids {
            let (status, body) = node.job_or_error(id);
            match status {
                200 if body["state"] == "succeeded" => kept.push(id),
                404 if body["error"] == "pruned by retention" => pruned.push(id),
                _ => {}
            }
        }
        (kept, pruned)
    };
    wait_for("all but 3 jobs pruned", LONG, || {
        let (kept, pruned) = split(&node);
        kept.len() == 3 && pruned.len() == ids.len() - 3
    });
    let (kept, pruned) = split(&node);
    let (logs, scratch) = (node.data_dir.join("logs"), node.data_dir.join("scratch"));
    for &id in &pruned {
        let (status, body) = node.job_or_error(id);
        assert_eq!(status, 404, "{body}");
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("pruned by retention"),
            "{body}"
        );
        let (status, body) = node.get(&format!("/v1/jobs/{id}/logs"));
        assert_eq!(
            (status, &body["error"]),
            (404, &json!("pruned by retention"))
        );
        wait_for(
            &format!("the files of pruned job {id} removed"),
            LONG,
            || files_of(&logs, id).is_empty() && files_of(&scratch, id).is_empty(),
        );
    }
    // The kept jobs' files are where the pruned ones' were looked for.
    for &id in &kept {
        assert!(
            files_of(&logs, id).contains(&format!("{id}.0.out")),
            "{:?}",
            files_of(&logs, id)
        );
        assert!(scratch.join(format!("{id}.0")).join("file").exists());
    }
    // An id never given out is unknown, not pruned.
    let unknown = |node: &Server| {
        let (status, body) = node.job_or_error(highest + 1);
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "unknown job", "{body}");
        assert!(
            !body["reason"].as_str().unwrap().contains("pruned"),
            "{body}"
        );
    };
    unknown(&node);

    node.stop();
    node.spawn();
    // Replay does not bring the pruned jobs back, nor their files.
    for &id in &pruned {
        let (status, body) = node.job_or_error(id);
        assert_eq!(status, 404, "pruned job {id} after the restart: {body}");
        assert_eq!(body["error"], "pruned by retention", "{body}");
        assert!(files_of(&logs, id).is_empty() && files_of(&scratch, id).is_empty());
    }
    for &id in &kept {
        assert_eq!(node.state(id), "succeeded");
        assert_eq!(
            node.get_text(&format!("/v1/jobs/{id}/logs")),
            format!("out-{id}\n")
        );
        assert_eq!(
            node.get_text(&format!("/v1/jobs/{id}/logs?stream=stderr")),
            format!("err-{id}\n")
        );
    }
    unknown(&node);
    // And the kept ones stay kept: the policy, applied again, finds nothing more to prune.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(split(&node), (kept, pruned));
}

/// The frames of a segment of this version (`len: u32 | hcrc: u32 | crc: u32 | payload`), as
/// `(start, end)` byte ranges, the segment header first; each frame's payload CRC is checked.
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&bytes[12..20], b"CADRSEG2", "not a segment of this version");
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let len_bytes: [u8; 4] = bytes[pos..pos + 4].try_into().unwrap();
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        let end = pos + 12 + len;
        assert!(end <= bytes.len(), "frame at {pos} runs past the end");
        let want = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &bytes[pos + 12..end]);
        assert_eq!(crc, want, "frame at {pos}");
        out.push((pos, end));
        pos = end;
    }
    out
}

/// The journal's files by name.
fn journal_files(journal: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(journal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_corrupt_journal_refuses_to_start_naming_segment_and_offset() {
    let dir = Scratch::new("crash-corrupt");
    let mut node = Server::start(dir.path(), &[("CADRE_SNAPSHOT_EVERY", "1000000")]);
    let ids: Vec<u64> = (0..6).map(|_| node.submit(&[], &["/bin/true"])).collect();
    for &id in &ids {
        node.wait_state(id, "succeeded", LONG);
    }
    node.stop();
    let journal = node.data_dir.join("journal");
    let names = journal_files(&journal);
    assert!(
        !names.iter().any(|n| n.ends_with(".snap")),
        "no snapshot yet: every record is in the segments {names:?}"
    );
    let seg = journal.join(names.iter().rfind(|n| n.ends_with(".seg")).unwrap());
    let original = std::fs::read(&seg).unwrap();
    let framed = frames(&original);
    assert!(framed.len() >= 8, "{} frames", framed.len());
    // A record in the middle, with intact records after it.
    let (start, end) = framed[framed.len() / 2];
    let payload_flip = {
        let mut bytes = original.clone();
        bytes[start + 12 + (end - start - 12) / 2] ^= 0x10;
        bytes
    };
    let length_flip = {
        let mut bytes = original.clone();
        bytes[start] ^= 0x01;
        bytes
    };
    for (case, damaged) in [("payload", payload_flip), ("length", length_flip)] {
        std::fs::write(&seg, &damaged).unwrap();
        let out = dir.path().join(format!("refused-{case}.log"));
        let (status, output) = node.start_refused(&out, LONG);
        assert!(
            !status.success(),
            "{case}: started on a corrupt journal:\n{output}"
        );
        let said = format!("journal corrupt in {} at offset {start}", seg.display());
        assert!(
            output.contains(&said),
            "{case}: the error names the segment and the offset ({said:?}):\n{output}"
        );
        // Nothing was truncated or set aside: the bytes are there for an operator.
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            damaged,
            "{case}: the segment changed"
        );
        assert_eq!(journal_files(&journal), names, "{case}");
    }

    // A torn last write is no corruption: set aside next to the segment, and the node starts.
    let (last, last_end) = *framed.last().unwrap();
    let cut = last + (last_end - last) / 2;
    std::fs::write(&seg, &original[..cut]).unwrap();
    node.spawn();
    let torn = seg.with_file_name(format!(
        "{}.torn-{last}",
        seg.file_name().unwrap().to_string_lossy()
    ));
    assert_eq!(std::fs::read(&torn).unwrap(), &original[last..cut]);
    assert_eq!(&std::fs::read(&seg).unwrap()[..last], &original[..last]);
    assert!(node.log_text().contains("torn tail"), "{}", node.log_text());
    // Every job is still there, and ends (one whose end was the torn record runs again).
    node.wait_drained(LONG);
    for &id in &ids {
        assert_eq!(node.state(id), "succeeded", "{}", node.job(id));
    }
}
