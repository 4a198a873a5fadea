//! A node whose disk fills up (its data directory on a small tmpfs): the job store turns
//! read-only instead of the node restarting itself into the ground: submissions get 507 with
//! the disk and its free space, reads, metrics and the running job's process carry on, a job
//! whose output could not be written says so, and once space is back everything that waited is
//! recorded and the node takes work again by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::tmpfs::Tmpfs;
use common::{wait_for, Scratch, Server};
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

fn metric(node: &Server, name: &str) -> Option<f64> {
    node.metrics_text()
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_full_disk_makes_the_store_read_only_and_the_node_resumes_when_space_is_back() {
    let Some(disk) = Tmpfs::mount("node-full", 48 << 20) else {
        return;
    };
    let scratch = Scratch::new("node-full");
    // The data directory lives on the small disk; the node's own log does not.
    let node_dir = disk.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut node = Server::start_in(scratch.path(), &node_dir, &[]);
    // A job that runs across the whole time the disk is full, printing once it is.
    let marker = scratch.path().join("full");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo written-on-a-full-disk; sleep 1",
        marker.display()
    );
    let running = node.submit(&[], &["/bin/sh", "-c", &script]);
    node.wait_state(running, "running", LONG);

    let filler = disk.fill("filler");
    std::fs::write(&marker, b"").unwrap();
    // A batch needs pages the full disk does not have: its record is the first the disk
    // refuses, and the store turns read-only. The batch is not refused: it waits, unanswered
    // (it was not acknowledged), until the disk takes it.
    let api = node.api.clone();
    let batch = std::thread::spawn(move || {
        let jobs: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                json!({"name": format!("b{i}"), "kind": {"command": {"program": "/bin/true"}},
                "resources": {"cpu_millis": 0}})
            })
            .collect();
        let mut r = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .new_agent()
            .post(format!("{api}/v1/jobs"))
            .send_json(json!({ "jobs": jobs }))
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        (status, body)
    });
    wait_for("the store to turn read-only", LONG, || {
        metric(&node, "cadre_store_writable") == Some(0.0)
    });
    assert!(
        !batch.is_finished(),
        "the batch was answered before it was durable"
    );
    let (status, body) = node.post(
        "/v1/jobs",
        &json!({"name": "refused", "kind": {"command": {"program": "/bin/true"}}}),
    );
    assert_eq!(status, 507, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("disk is full") && reason.contains("free of"),
        "the reason names the disk and its free space: {reason}"
    );
    assert!(reason.contains(&node_dir.display().to_string()), "{reason}");
    // Reads carry on; readiness says why the node takes no work.
    let (status, _) = node.get(&format!("/v1/jobs/{running}"));
    assert_eq!(status, 200);
    let (status, body) = node.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("read-only"),
        "{body}"
    );
    let (status, nodes) = node.get("/v1/nodes");
    assert_eq!(status, 200);
    assert!(nodes["store_unwritable"].is_string(), "{nodes}");

    // Space comes back: the node resumes by itself, and the batch that waited is accepted.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the store to be writable again", LONG, || {
        metric(&node, "cadre_store_writable") == Some(1.0)
    });
    let (status, body) = batch.join().unwrap();
    assert_eq!(status, 201, "{body}");
    let ids = common::ids(&body);
    assert_eq!(ids.len(), 1000);
    let job = node.wait_state(running, "succeeded", LONG);
    let error = job["outcome"]["logs"]["write_error"].as_str().unwrap_or("");
    assert!(
        error.contains("could not be written"),
        "the job says its output was not all written: {job}"
    );
    let next = node.submit(&[], &["/bin/true"]);
    node.wait_state(next, "succeeded", LONG);
    // No restart storm: the scheduler never failed, and the node is the same process.
    let (_, failures) = node.get("/v1/failures");
    assert_eq!(failures["total"], 0, "{failures}");
    let log = node.log_text();
    let stalls = log
        .lines()
        .filter(|l| l.contains("journal write failed"))
        .count();
    assert_eq!(stalls, 1, "one error event for the transition:\n{log}");
    node.stop();
    // What was accepted is there after a restart.
    node.spawn();
    assert_eq!(node.state(running), "succeeded");
    assert_eq!(node.state(next), "succeeded");
    assert_ne!(node.state(ids[999]), "lost");
}
