//! A node restarted under load: `kill -9` while clients submit and jobs run loses nothing it
//! acknowledged (every accepted job is there after the restart and runs to its end), and a
//! node starting with many queued jobs waits for its worker instead of parking each job and
//! logging two lines per job.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{stop_clients, Scratch, Server};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

#[test]
fn kill_9_under_load_loses_nothing_that_was_acknowledged() {
    let dir = Scratch::new("restart-load");
    let mut node = Server::start(dir.path(), &[]);
    let accepted = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..2 {
        let (api, accepted, stop) = (node.api.clone(), Arc::clone(&accepted), Arc::clone(&stop));
        clients.push(std::thread::spawn(move || {
            let agent = agent();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let jobs: Vec<serde_json::Value> = (0..20)
                    .map(|k| {
                        json!({"name": format!("c{c}-{i}-{k}"),
                            "kind": {"command": {"program": "/bin/true"}},
                            "resources": {"cpu_millis": 100}})
                    })
                    .collect();
                i += 1;
                // A refused or unanswered request (the node was killed) acknowledged nothing.
                let Ok(mut r) = agent
                    .post(format!("{api}/v1/jobs"))
                    .send_json(json!({ "jobs": jobs }))
                else {
                    continue;
                };
                if r.status().as_u16() != 201 {
                    continue;
                }
                let Ok(text) = r.body_mut().read_to_string() else {
                    continue;
                };
                let body: serde_json::Value = serde_json::from_str(&text).unwrap();
                let ids = body["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap());
                accepted.lock().unwrap().extend(ids);
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    node.kill9();
    let accepted = stop_clients(&stop, clients, &accepted);
    assert!(
        accepted.len() > 100,
        "only {} jobs accepted",
        accepted.len()
    );
    node.spawn();
    for &id in &accepted {
        let (status, job) = node.get(&format!("/v1/jobs/{id}"));
        assert_eq!(status, 200, "accepted job {id} lost: {job}");
    }
    // And each runs to its end (interrupted ones again).
    let last = *accepted.iter().max().unwrap();
    node.wait_state(last, "succeeded", LONG);
    for &id in &accepted {
        let job = node.job(id);
        if job["state"] != "succeeded" {
            node.wait_state(id, "succeeded", LONG);
        }
    }
}

#[test]
fn a_node_starting_with_many_queued_jobs_waits_for_its_worker_and_logs_no_line_per_job() {
    let dir = Scratch::new("restart-queued");
    let mut node = Server::start(dir.path(), &[("CADRE_WORKER_CPU_MILLIS", "1000")]);
    let blocker = node.submit(&["--cpus", "1"], &["/bin/sleep", "600"]);
    node.wait_state(blocker, "running", LONG);
    let jobs: Vec<serde_json::Value> = (0..500)
        .map(|i| json!({"name": format!("q{i}"), "kind": {"command": {"program": "/bin/true"}}}))
        .collect();
    let (status, body) = node.post("/v1/jobs", &json!({ "jobs": jobs }));
    assert_eq!(status, 201, "{body}");
    node.kill9();
    let before = node.log_text().len();
    node.spawn();
    // They wait for the worker and run: none was parked as if no worker could hold it.
    let last = body["ids"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let waiting = &node.job(last)["waiting"];
    assert_eq!(waiting["kind"], "queued", "{waiting}");
    let log = node.log_text()[before..].to_owned();
    let parked = log.lines().filter(|l| l.contains("parked")).count();
    let rejoined = log.lines().filter(|l| l.contains("rejoin")).count();
    assert!(
        parked <= 1 && rejoined <= 1,
        "{parked} parking lines and {rejoined} rejoining lines for 500 queued jobs:\n{log}"
    );
}
