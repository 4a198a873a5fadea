//! End-to-end tests of the extension API through the two example nodes in `examples/`: a
//! workload (checksum through the I/O engine, with progress) and callbacks (a line per finished
//! job; one that panics).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{example, wait_for, Scratch, Server};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

fn checksum_job(path: &str, extra: Value) -> Value {
    let mut params = json!({"path": path});
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    json!({"name": "sum", "kind": {"workload": {"name": "checksum", "params": params}}})
}

fn submit(node: &Server, spec: &Value) -> u64 {
    let (status, body) = node.post("/v1/jobs", spec);
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().unwrap()
}

#[test]
fn the_checksum_workload_returns_the_files_crc_and_reports_progress() {
    let dir = Scratch::new("ext-checksum");
    let node = Server::start_bin(&example("checksum_workload"), dir.path(), &[]);
    let data: Vec<u8> = (0..3_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let file = dir.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    // Follow the event stream while the job runs.
    let api = node.api.clone();
    let events = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut r = agent.get(format!("{api}/v1/events?job=1")).call().unwrap();
        let mut lines = Vec::new();
        let reader = std::io::BufReader::new(r.body_mut().as_reader());
        for line in std::io::BufRead::lines(reader) {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(data).unwrap();
                let done = v["state"] == "succeeded";
                lines.push(v);
                if done {
                    break;
                }
            }
        }
        lines
    });
    std::thread::sleep(Duration::from_millis(300));
    let id = submit(
        &node,
        &checksum_job(file.to_str().unwrap(), json!({"delay_ms": 150})),
    );
    assert_eq!(id, 1);
    let job = node.wait_state(id, "succeeded", LONG);
    let expected = format!("{:08x}", crc32c::crc32c(&data));
    assert_eq!(
        job["outcome"]["result"]["crc32c"],
        expected.as_str(),
        "{job}"
    );
    assert_eq!(job["outcome"]["result"]["bytes"], data.len() as u64);
    let events = events.join().unwrap();
    let fractions: Vec<f64> = events
        .iter()
        .filter_map(|e| e["progress"]["fraction"].as_f64())
        .collect();
    assert!(fractions.len() >= 2, "progress events: {events:?}");
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    assert_eq!(fractions.last().copied(), Some(1.0));
    // A workload that does not exist is refused at the edge, with the field.
    let (status, body) = node.post(
        "/v1/jobs",
        &json!({"name": "x", "kind": {"workload": {"name": "nope", "params": {}}}}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["field"], "kind.workload.name", "{body}");
}

#[test]
fn a_panicking_workload_is_logged_counted_and_restarted_while_the_node_serves() {
    let dir = Scratch::new("ext-panic");
    let node = Server::start_bin(&example("checksum_workload"), dir.path(), &[]);
    let file = dir.path().join("small");
    std::fs::write(&file, b"hello").unwrap();
    let path = file.to_str().unwrap();
    let boom = submit(&node, &checksum_job(path, json!({"panic": true})));
    let job = node.wait_state(boom, "failed", LONG);
    assert!(
        job["outcome"]["error"]
            .as_str()
            .unwrap()
            .contains("panicked"),
        "{job}"
    );
    let (_, failures) = node.get("/v1/failures");
    let list = failures["failures"].as_array().unwrap();
    assert!(
        list.iter()
            .any(|f| f["path"] == "cadre/workloads/checksum" && f["kind"] == "panic"),
        "{failures}"
    );
    assert!(
        node.log_text().contains("checksum asked to panic"),
        "the panic is logged"
    );
    let metrics = node.metrics_text();
    assert!(
        metrics.contains("cadre_actor_failures_total{actor=\"checksum\",kind=\"panic\"} 1"),
        "{metrics}"
    );
    // The restarted workload runs the next job.
    let ok = submit(&node, &checksum_job(path, json!({})));
    let job = node.wait_state(ok, "succeeded", LONG);
    assert_eq!(
        job["outcome"]["result"]["crc32c"],
        format!("{:08x}", crc32c::crc32c(b"hello")).as_str()
    );
    assert_eq!(node.get("/healthz").0, 200);
}

#[test]
fn a_task_without_progress_past_its_deadline_is_stopped_and_retried() {
    let dir = Scratch::new("ext-stall");
    let node = Server::start_bin(&example("checksum_workload"), dir.path(), &[]);
    let file = dir.path().join("two-chunks");
    std::fs::write(&file, vec![7u8; 2 << 20]).unwrap();
    // One progress report, then 20 s of silence against a 1 s deadline.
    let mut spec = checksum_job(file.to_str().unwrap(), json!({"delay_ms": 20_000}));
    spec["progress_deadline_secs"] = json!(1);
    spec["max_requeues"] = json!(1);
    let id = submit(&node, &spec);
    wait_for("second attempt", LONG, || node.job(id)["attempt"] == 2);
    let job = node.job(id);
    assert!(
        job["last_loss"].as_str().unwrap().contains("no progress"),
        "{job}"
    );
    let job = node.wait_state(id, "failed", LONG);
    assert!(
        job["outcome"]["error"]
            .as_str()
            .unwrap()
            .contains("no requeues left"),
        "{job}"
    );
    let metrics = node.metrics_text();
    assert!(
        metrics.contains("cadre_jobs_suspected_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("cadre_jobs_stalled_total 2"), "{metrics}");
}

#[test]
fn callbacks_see_every_finished_job_and_a_panicking_one_is_contained() {
    let dir = Scratch::new("ext-callback");
    let log = dir.path().join("finished.log");
    let log_str = log.to_str().unwrap().to_owned();
    let node = Server::start_bin(
        &example("finished_jobs_callback"),
        dir.path(),
        &[
            ("CADRE_FINISHED_LOG", &log_str),
            ("CADRE_PANIC_ON_JOB", "2"),
        ],
    );
    let a = node.submit(&[], &["/bin/true"]);
    node.wait_state(a, "succeeded", LONG);
    let b = node.submit(&[], &["/bin/sh", "-c", "exit 4"]);
    node.wait_state(b, "failed", LONG);
    let c = node.submit(&[], &["/bin/true"]);
    node.wait_state(c, "succeeded", LONG);
    wait_for("three lines", LONG, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 3)
    });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("{a} succeeded attempt=1\n{b} failed attempt=1\n{c} succeeded attempt=1\n")
    );
    // The panicking callback (on job 2) was logged, counted and restarted; the node serves on.
    wait_for("panic recorded", LONG, || {
        let (_, f) = node.get("/v1/failures");
        f["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == "cadre/callbacks/panicky" && r["kind"] == "panic")
    });
    let metrics = node.metrics_text();
    assert!(
        metrics.contains("cadre_actor_failures_total{actor=\"panicky\",kind=\"panic\"} 1"),
        "{metrics}"
    );
    assert!(node.log_text().contains("panicky callback asked to panic"));
    let d = node.submit(&[], &["/bin/true"]);
    node.wait_state(d, "succeeded", LONG);
    wait_for("four lines", LONG, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 4)
    });
}
