//! End-to-end tests of `cadre serve`: the real binary on free ports in a temporary directory,
//! driven through its CLI and HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{alive, signal, wait_for, Scratch, Server};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_command_job_succeeds_and_its_output_is_kept() {
    let dir = Scratch::new("succeed");
    let node = Server::start(dir.path(), &[]);
    let id = node.submit(
        &["--name", "hello"],
        &["/bin/sh", "-c", "echo out-$CADRE_JOB_ID; echo err >&2"],
    );
    let job = node.wait_state(id, "succeeded", LONG);
    assert_eq!(job["outcome"]["exit_code"], 0);
    assert_eq!(job["name"], "hello");
    let out = node.cli(&["logs", &id.to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("out-{id}\n"));
    let err = node.cli(&["logs", "--stderr", &id.to_string()]);
    assert_eq!(String::from_utf8_lossy(&err.stdout), "err\n");
    // -o json prints the API's JSON: at least id and state.
    let out = node.cli(&["-o", "json", "status", &id.to_string()]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], id);
    assert_eq!(v["state"], "succeeded");
}

#[test]
fn a_failing_command_fails_with_its_exit_code() {
    let dir = Scratch::new("fail");
    let node = Server::start(dir.path(), &[]);
    let id = node.submit(&[], &["/bin/sh", "-c", "exit 7"]);
    let job = node.wait_state(id, "failed", LONG);
    assert_eq!(job["outcome"]["exit_code"], 7);
    let text = node.cli(&["status", &id.to_string()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("exit code 7"));
}

#[test]
fn a_job_past_its_timeout_is_timed_out() {
    let dir = Scratch::new("timeout");
    let node = Server::start(dir.path(), &[]);
    let id = node.submit(&["--timeout", "1"], &["/bin/sleep", "60"]);
    let job = node.wait_state(id, "timed_out", LONG);
    assert_eq!(job["attempt"], 1);
}

#[test]
fn cancel_works_while_queued_and_while_running() {
    let dir = Scratch::new("cancel");
    let node = Server::start(dir.path(), &[("CADRE_WORKER_CPU_MILLIS", "1000")]);
    let running = node.submit(&[], &["/bin/sleep", "60"]);
    node.wait_state(running, "running", LONG);
    // The only core is taken: this one waits in the queue.
    let queued = node.submit(&[], &["/bin/sleep", "60"]);
    assert_eq!(node.state(queued), "queued");
    let out = node.cli(&["cancel", &queued.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.state(queued), "cancelled");
    let out = node.cli(&["cancel", &running.to_string()]);
    assert!(out.status.success());
    node.wait_state(running, "cancelled", LONG);
    // Cancelling an ended job is a conflict (exit 1), not a success.
    let out = node.cli(&["cancel", &running.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let (status, body) = node.post(&format!("/v1/jobs/{running}/cancel"), &Value::Null);
    assert_eq!(status, 409, "{body}");
    // The core is free again: a new job runs.
    let next = node.submit(&[], &["/bin/true"]);
    node.wait_state(next, "succeeded", LONG);
}

#[test]
fn a_job_killed_from_outside_is_retried() {
    let dir = Scratch::new("retry");
    let node = Server::start(dir.path(), &[]);
    let pidfile = dir.path().join("pid");
    let script = format!(
        "if [ \"$CADRE_ATTEMPT\" = 1 ]; then echo $$ > {}; exec sleep 60; fi; exit 0",
        pidfile.display()
    );
    // A kill from outside is the node's trouble, not the job's: a lost attempt, requeued.
    let id = node.submit(&["--requeues", "1"], &["/bin/sh", "-c", &script]);
    node.wait_state(id, "running", LONG);
    wait_for("pid file", LONG, || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(pid, "KILL");
    let job = node.wait_state(id, "succeeded", LONG);
    assert_eq!(job["attempt"], 2);
    assert!(
        job["last_loss"].as_str().unwrap().contains("signal 9"),
        "{job}"
    );
    // Without requeues left, the same loss fails the job.
    let pidfile = dir.path().join("pid2");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let id = node.submit(&["--requeues", "0"], &["/bin/sh", "-c", &script]);
    node.wait_state(id, "running", LONG);
    wait_for("pid file", LONG, || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(pid, "KILL");
    let job = node.wait_state(id, "failed", LONG);
    assert!(
        job["outcome"]["error"]
            .as_str()
            .unwrap()
            .contains("no requeues left"),
        "{job}"
    );
}

#[test]
fn a_gang_starts_all_its_tasks_together() {
    let dir = Scratch::new("gang");
    let node = Server::start(dir.path(), &[("CADRE_WORKER_CPU_MILLIS", "3000")]);
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let script = format!(
        "touch {0}/$CADRE_TASK; while [ $(ls {0} | wc -l) -lt $CADRE_GANG_SIZE ]; do sleep 0.05; done",
        marks.display()
    );
    let id = node.submit(&["--gang", "3"], &["/bin/sh", "-c", &script]);
    let job = node.wait_state(id, "succeeded", LONG);
    assert_eq!(job["attempt"], 1);
    let mut tasks: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    tasks.sort();
    assert_eq!(tasks, ["0", "1", "2"]);
    // A GPU job on a node without GPUs (this machine has no CUDA driver) waits, saying why,
    // and the node's status says why it has none.
    let id = node.submit(&["--gpus", "1"], &["/bin/true"]);
    let job = node.job(id);
    assert_eq!(job["state"], "queued");
    let reason = job["waiting"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("this node has no GPUs") && reason.contains("CUDA"),
        "{job}"
    );
    let text = node.cli(&["status", &id.to_string()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("unplaceable") && text.contains("no GPUs"),
        "{text}"
    );
    let (_, nodes) = node.get("/v1/nodes");
    assert_eq!(nodes["capacity"]["gpus_total"], 0, "{nodes}");
    assert!(
        nodes["gpus_absent"].as_str().unwrap().contains("CUDA"),
        "{nodes}"
    );
    // cadre's GPU workloads are registered: one asked without GPUs fails, saying so; one asking
    // for a GPU here waits like any GPU job.
    let (status, body) = node.post(
        "/v1/jobs",
        &json!({"name": "saxpy", "kind": {"workload": {"name": "gpu.saxpy", "params": {"n": 1024}}}}),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    let job = node.wait_state(id, "failed", Duration::from_secs(10));
    assert!(
        job["outcome"]["error"]
            .as_str()
            .unwrap()
            .contains("resources.gpus"),
        "{job}"
    );
    let (status, body) = node.post(
        "/v1/jobs",
        &json!({"name": "saxpy", "resources": {"gpus": 1},
            "kind": {"workload": {"name": "gpu.saxpy", "params": {"n": 1024}}}}),
    );
    assert_eq!(status, 201, "{body}");
    let job = node.job(body["id"].as_u64().unwrap());
    assert_eq!(job["waiting"]["kind"], "unplaceable", "{job}");
    // A gang larger than the node can ever hold waits with a reason instead of running partly.
    let id = node.submit(&["--gang", "4"], &["/bin/true"]);
    let job = node.job(id);
    assert_eq!(job["state"], "queued");
    assert_eq!(job["waiting"]["kind"], "unplaceable", "{job}");
}

#[test]
fn higher_priority_runs_first() {
    let dir = Scratch::new("priority");
    let node = Server::start(dir.path(), &[("CADRE_WORKER_CPU_MILLIS", "1000")]);
    let order = dir.path().join("order");
    let gate = dir.path().join("gate");
    let blocker = node.submit(
        &[],
        &[
            "/bin/sh",
            "-c",
            &format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display()),
        ],
    );
    node.wait_state(blocker, "running", LONG);
    let append = |name: &str| format!("echo {name} >> {}", order.display());
    let low = node.submit(&["--priority", "-5"], &["/bin/sh", "-c", &append("low")]);
    let mid = node.submit(&[], &["/bin/sh", "-c", &append("mid")]);
    let high = node.submit(&["--priority", "500"], &["/bin/sh", "-c", &append("high")]);
    std::fs::write(&gate, "").unwrap();
    for id in [low, mid, high] {
        node.wait_state(id, "succeeded", LONG);
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "high\nmid\nlow\n");
}

#[test]
fn concurrent_submissions_never_double_book() {
    let dir = Scratch::new("concurrent");
    let node = Server::start(dir.path(), &[("CADRE_WORKER_CPU_MILLIS", "2000")]);
    let slots = dir.path().join("slots");
    std::fs::create_dir_all(&slots).unwrap();
    // Each job holds one of two cores; `mkdir` fails if a third runs at the same time.
    let script = format!(
        "for s in a b; do if mkdir {0}/$s 2>/dev/null; then sleep 0.01; rmdir {0}/$s; exit 0; fi; done; exit 42",
        slots.display()
    );
    let api = node.api.clone();
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let api = api.clone();
            let script = script.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                (0..10)
                    .map(|_| {
                        let spec = json!({"name": "slot", "kind": {"command": {"program": "/bin/sh", "args": ["-c", script]}},
                            "resources": {"cpu_millis": 1000}});
                        let mut r = agent.post(format!("{api}/v1/jobs")).send_json(&spec).unwrap();
                        assert_eq!(r.status().as_u16(), 201);
                        let v: Value = r.body_mut().read_json().unwrap();
                        v["id"].as_u64().unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut ids: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "every submission got its own id");
    let mut max_running = 0;
    wait_for("1000 jobs done", Duration::from_secs(240), || {
        let (_, nodes) = node.get("/v1/nodes");
        let running = nodes["running"].as_u64().unwrap();
        max_running = max_running.max(running);
        assert!(running <= 2, "more jobs running than cores: {nodes}");
        let (_, page) = node.get("/v1/jobs?state=succeeded&limit=1000");
        page["jobs"].as_array().unwrap().len() == 1000
    });
    let (_, failed) = node.get("/v1/jobs?state=failed&limit=10");
    assert_eq!(failed["jobs"].as_array().unwrap().len(), 0, "{failed}");
    assert!(max_running >= 1);
}

#[test]
fn kill_9_loses_nothing_accepted_and_requeues_running_jobs() {
    let dir = Scratch::new("kill9");
    // Snapshots every 7 records: the restart reads a snapshot and the records after it.
    let mut node = Server::start(
        dir.path(),
        &[
            ("CADRE_WORKER_CPU_MILLIS", "1000"),
            ("CADRE_SNAPSHOT_EVERY", "7"),
        ],
    );
    let pidfile = dir.path().join("pid");
    let running = node.submit(
        &["--retries", "1"],
        &[
            "/bin/sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 60", pidfile.display()),
        ],
    );
    node.wait_state(running, "running", LONG);
    wait_for("pid file", LONG, || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let old_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let queued: Vec<u64> = (0..20).map(|_| node.submit(&[], &["/bin/true"])).collect();
    node.kill9();
    // The job's process outlives a node killed outright (it has its own process group) ...
    assert!(
        alive(old_pid),
        "the old attempt runs until the node comes back"
    );
    node.spawn();
    // ... and the restarted node kills it (its process ledger) before running anything.
    wait_for("old attempt gone", Duration::from_secs(5), || {
        !alive(old_pid)
    });
    assert!(node
        .log_text()
        .contains("left running by the previous node"));
    let job = node.job(running);
    assert!(
        matches!(job["state"].as_str(), Some("queued" | "leased" | "running")),
        "{job}"
    );
    assert_eq!(job["attempt"], 2, "{job}");
    assert!(
        job["last_loss"].as_str().unwrap().contains("node stopped"),
        "{job}"
    );
    node.post(&format!("/v1/jobs/{running}/cancel"), &Value::Null);
    node.wait_state(running, "cancelled", LONG);
    for id in queued {
        node.wait_state(id, "succeeded", LONG);
    }
    assert!(node.log_text().contains("job store snapshot written"));
    assert!(
        node.log_text().contains("snapshot=true"),
        "the restart read a snapshot"
    );
    // New ids continue above the old ones.
    let next = node.submit(&[], &["/bin/true"]);
    assert!(next > running + 20);
}

#[test]
fn invalid_specs_get_field_errors_exit_2_and_nothing_is_stored() {
    let dir = Scratch::new("invalid");
    let node = Server::start(dir.path(), &[]);
    let out = node.cli(&["submit", "--priority", "5000", "--", "/no/such/program"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("command.program"), "{err}");
    assert!(err.contains("priority"), "{err}");
    // A flag the CLI itself refuses is exit 2 as well.
    let out = node.cli(&["submit", "--cpus", "many", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2));
    // The API: 400 with the field and every violation.
    let (status, body) = node.post(
        "/v1/jobs",
        &json!({"name": "bad name!", "kind": {"command": {"program": "/bin/true", "workdir": "relative"}}, "gang": 0}),
    );
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"name")
            && fields.contains(&"gang")
            && fields.contains(&"kind.command.workdir"),
        "{body}"
    );
    assert!(
        body["reason"].is_string() && body["field"].is_string(),
        "{body}"
    );
    let (status, body) = node.post(
        "/v1/jobs",
        &json!({"kind": {"command": {"program": "/bin/true"}}}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["field"], "name", "{body}");
    // One bad job refuses the whole batch.
    let (status, body) = node.post(
        "/v1/jobs",
        &json!({"jobs": [{"name": "ok", "kind": {"command": {"program": "/bin/true"}}}, {"name": "x", "kind": {"command": {"program": ""}}}]}),
    );
    assert_eq!(status, 400);
    assert!(
        body["field"].as_str().unwrap().starts_with("jobs[1]."),
        "{body}"
    );
    let (status, body) = node.get("/v1/jobs/abc");
    assert_eq!(status, 400);
    assert_eq!(body["field"], "id");
    let (status, _) = node.get("/v1/jobs/99");
    assert_eq!(status, 404);
    let (_, list) = node.get("/v1/jobs");
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        0,
        "nothing invalid was stored: {list}"
    );
    // And the node keeps serving.
    let id = node.submit(&[], &["/bin/true"]);
    node.wait_state(id, "succeeded", LONG);
}

#[test]
fn sigterm_drains_running_jobs_then_exits() {
    let dir = Scratch::new("sigterm");
    let mut node = Server::start(dir.path(), &[]);
    let id = node.submit(&[], &["/bin/sleep", "1.5"]);
    node.wait_state(id, "running", LONG);
    let pid = node.pid();
    let api = node.api.clone();
    signal(pid, "TERM");
    // While draining, new work is refused with 503 (or the listener is already closed).
    std::thread::sleep(Duration::from_millis(200));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    if let Ok(mut r) = agent
        .post(format!("{api}/v1/jobs"))
        .send_json(json!({"name": "late", "kind": {"command": {"program": "/bin/true"}}}))
    {
        assert_eq!(
            r.status().as_u16(),
            503,
            "{}",
            r.body_mut().read_to_string().unwrap()
        );
    }
    let status = node.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{}", node.log_text());
    assert!(node.log_text().contains("drained"), "{}", node.log_text());
    node.spawn();
    let job = node.job(id);
    assert_eq!(
        job["state"], "succeeded",
        "the job finished during the drain: {job}"
    );
    assert_eq!(job["attempt"], 1);
}

#[test]
fn metrics_are_prometheus_text_with_the_promised_names() {
    let dir = Scratch::new("metrics");
    let node = Server::start(dir.path(), &[]);
    let id = node.submit(&[], &["/bin/true"]);
    node.wait_state(id, "succeeded", LONG);
    let text = node.metrics_text();
    for name in [
        "cadre_jobs_submitted_total",
        "cadre_jobs_finished_total{state=\"succeeded\"}",
        "cadre_scheduler_queue_depth",
        "cadre_jobs_running",
        "cadre_scheduler_decision_seconds_bucket",
        "cadre_lease_grants_total",
        "cadre_lease_renewals_total",
        "cadre_heartbeats_total",
        "cadre_store_append_seconds_bucket",
        "cadre_store_append_bytes_total",
        "cadre_build_info",
        "cadre_gpu_devices",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    match promtool {
        Ok(out) if out.status.success() => {
            let path = dir.path().join("metrics.txt");
            std::fs::write(&path, &text).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("promtool check metrics < {}", path.display()))
                .output()
                .unwrap();
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && report.trim().is_empty(),
                "promtool: {report}"
            );
        }
        _ => {
            assert!(
                std::env::var("CADRE_REQUIRE_PROMTOOL").is_err(),
                "promtool is missing and CADRE_REQUIRE_PROMTOOL is set"
            );
            eprintln!("SKIP promtool check: promtool is not installed");
        }
    }
}

#[test]
fn nodes_failures_health_and_unknown_routes_answer() {
    let dir = Scratch::new("misc");
    let node = Server::start(dir.path(), &[]);
    let (status, nodes) = node.get("/v1/nodes");
    assert_eq!(status, 200);
    assert_eq!(nodes["workers"].as_array().unwrap().len(), 1, "{nodes}");
    let (status, failures) = node.get("/v1/failures");
    assert_eq!(status, 200);
    assert!(failures["failures"].is_array());
    assert_eq!(node.get("/healthz").0, 200);
    let (status, body) = node.get("/v1/nope");
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    // A body over the limit is refused, and the node keeps serving.
    let big = "x".repeat(17 << 20);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let result = agent
        .post(format!("{}/v1/jobs", node.api))
        .send(big.as_bytes());
    if let Ok(mut r) = result {
        assert_eq!(r.status().as_u16(), 413);
        let body: Value = r.body_mut().read_json().unwrap();
        assert_eq!(body["field"], "body", "{body}");
    }
    assert_eq!(node.get("/healthz").0, 200);
    let out = node.cli(&["nodes"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cpu-0"));
}

#[test]
fn a_job_file_in_toml_is_submitted_and_json_logs_are_json() {
    let dir = Scratch::new("file");
    let node = Server::start(dir.path(), &[("CADRE_LOG_FORMAT", "json")]);
    let file = dir.path().join("job.toml");
    std::fs::write(
        &file,
        "name = \"from-file\"\npriority = 3\n[kind.command]\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"echo toml\"]\n",
    )
    .unwrap();
    let out = node.cli(&["submit", "--file", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let job = node.wait_state(id, "succeeded", LONG);
    assert_eq!(job["name"], "from-file");
    assert_eq!(job["spec"]["priority"], 3);
    assert_eq!(node.get_text(&format!("/v1/jobs/{id}/logs")), "toml\n");
    // Every log line the node wrote is a JSON object with a level and fields.
    let log = node.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// Runs `cadre watch ARGS` with its output piped; the child and a thread reading its lines.
fn watch(node: &Server, args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(common::BIN)
        .arg("--api")
        .arg(&node.api)
        .arg("watch")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for the child to exit on its own; kills it and fails if it does not.
fn exits_within(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("cadre watch did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn watch_follows_jobs_and_returns_when_the_watched_job_ends() {
    let dir = Scratch::new("watch");
    let node = Server::start(dir.path(), &[]);
    // A running job, so the watch of every job has a state to start from: its first line
    // shows that it is subscribed, before the job it must see end is submitted.
    let blocker = node.submit(&[], &["/bin/sleep", "60"]);
    node.wait_state(blocker, "running", LONG);
    // Every job: lines as events come (stdout is a pipe, not a terminal).
    let (mut all, all_lines) = watch(&node, &[]);
    let first = all_lines
        .recv_timeout(LONG)
        .expect("watch of every job starts");
    assert_eq!(first, format!("job {blocker:>8}  running     attempt 1"));
    // One job: it starts from the job's state and returns once the job has ended.
    let id = node.submit(&[], &["/bin/sleep", "1"]);
    let (mut one, one_lines) = watch(&node, &[&id.to_string()]);
    let status = exits_within(&mut one, LONG);
    assert!(status.success(), "watch {id} exited {status}");
    // It has exited: its output ends, and the reader hands over every line.
    let lines: Vec<String> = one_lines.iter().collect();
    let last = lines.last().expect("watch printed the job's states");
    assert!(
        last.contains(&format!("job {id:>8}  succeeded")),
        "last line {last:?} of {lines:?}"
    );
    // The whole stream saw the same job end.
    let wanted = format!("job {id:>8}  succeeded");
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = all_lines
            .recv_timeout(left)
            .expect("watch of every job saw the end");
        if line.contains(&wanted) {
            break;
        }
    }
    all.kill().unwrap();
    all.wait().unwrap();
    assert!(node.cli(&["cancel", &blocker.to_string()]).status.success());
    // A job that has already ended: its state, at once.
    let (mut again, again_lines) = watch(&node, &[&id.to_string()]);
    assert!(exits_within(&mut again, LONG).success());
    let lines: Vec<String> = again_lines.iter().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("succeeded"));
    // A job that does not exist: an error, exit 1.
    let (mut unknown, _) = watch(&node, &["999999"]);
    assert_eq!(exits_within(&mut unknown, LONG).code(), Some(1));
}
