//! End-to-end tests of the node's HTTP API edges, on the real `cadre` binary: 405 with `Allow`
//! for a wrong method, the bounds on request bodies (408, 413, 503 with `Retry-After`), unknown
//! fields, type errors and unknown kinds refused with their path (JSON and TOML), SIGHUP and a
//! second SIGTERM while draining, `/readyz` and the `ended` count, and the aligned columns of
//! `cadre list`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::{read_reply, signal, wait_for, Scratch, Server};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

/// The default largest request body (`max_body_bytes`).
const MAX_BODY: usize = 16 << 20;

fn true_job(name: &str) -> Value {
    json!({"name": name, "kind": {"command": {"program": "/bin/true"}}})
}

fn job_count(node: &Server) -> usize {
    let (status, list) = node.get("/v1/jobs");
    assert_eq!(status, 200, "{list}");
    list["jobs"].as_array().unwrap().len()
}

/// An error body is `{error, field, reason}`.
fn assert_error_body(body: &Value, field: &str) {
    assert!(body["error"].is_string(), "{body}");
    assert!(body["reason"].is_string(), "{body}");
    assert_eq!(body["field"], field, "{body}");
}

#[test]
fn a_wrong_method_is_405_with_allow_and_an_unknown_path_is_404() {
    let dir = Scratch::new("api-methods");
    let node = Server::start(dir.path(), &[]);
    for (method, path, allow) in [
        ("POST", "/v1/nodes", "GET, HEAD"),
        ("PUT", "/v1/jobs", "GET, HEAD, POST"),
        ("GET", "/v1/jobs/1/cancel", "POST"),
        ("DELETE", "/v1/jobs/1/logs", "GET, HEAD"),
        ("POST", "/readyz", "GET, HEAD"),
        ("PUT", "/v1/jobs/1", "GET, HEAD, DELETE"),
        ("POST", "/v1/events", "GET, HEAD"),
    ] {
        let reply = node.request(method, path, None);
        assert_eq!(reply.status, 405, "{method} {path}: {reply:?}");
        assert_eq!(
            reply.header("allow"),
            Some(allow),
            "{method} {path}: {reply:?}"
        );
        assert_error_body(&reply.body, "method");
    }
    // A wrong method with a valid spec stores nothing.
    let reply = node.request("PUT", "/v1/jobs", Some(&true_job("put")));
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(job_count(&node), 0);
    // Unknown paths are 404 whatever the method.
    for (method, path) in [
        ("GET", "/v1/nope"),
        ("POST", "/v1/nope"),
        ("GET", "/v1/jobs/1/nope"),
    ] {
        let reply = node.request(method, path, None);
        assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
        assert_eq!(reply.header("allow"), None, "{reply:?}");
        assert_error_body(&reply.body, "path");
    }
    // The right method still answers.
    assert_eq!(node.request("GET", "/v1/jobs", None).status, 200);
    assert_eq!(node.request("GET", "/v1/nodes", None).status, 200);
    // HEAD wherever GET is (RFC 9110).
    assert_eq!(node.request("HEAD", "/v1/nodes", None).status, 200);
    assert_eq!(node.request("HEAD", "/healthz", None).status, 200);
}

#[test]
fn a_stalled_body_is_answered_408_once_the_body_timeout_passes() {
    let dir = Scratch::new("api-stall");
    let node = Server::start(dir.path(), &[("CADRE_BODY_TIMEOUT_SECS", "1")]);
    let mut stream = node.raw("POST", "/v1/jobs", Some(100_000), b"{\"name\": \"sta");
    let reply = read_reply(&mut stream);
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_error_body(&reply.body, "body");
    // The node keeps serving, and stored nothing.
    assert_eq!(node.get("/healthz").0, 200);
    assert_eq!(job_count(&node), 0);
}

#[test]
fn bodies_in_flight_are_bounded_with_503_and_retry_after_and_too_large_is_413() {
    let dir = Scratch::new("api-inflight");
    let in_flight = (2 * MAX_BODY).to_string();
    let node = Server::start(
        dir.path(),
        &[
            ("CADRE_MAX_BODY_BYTES_IN_FLIGHT", &in_flight),
            ("CADRE_BODY_TIMEOUT_SECS", "60"),
        ],
    );
    // A declared body over the limit is refused before a byte of it is read.
    let mut big = node.raw("POST", "/v1/jobs", Some(MAX_BODY + 1), b"");
    let reply = read_reply(&mut big);
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_error_body(&reply.body, "body");
    // Two stalled requests declaring the largest body hold the whole budget.
    let mut stalled: Vec<_> = (0..2)
        .map(|_| node.raw("POST", "/v1/jobs", Some(MAX_BODY), b"{\"na"))
        .collect();
    // Wait until the node holds both: a complete tiny body is refused as invalid (400) while
    // there is room, and as busy (503) once the budget is spent. A probe can hold its two bytes
    // just when a stalled request reserves, and then that request is the one refused (503): it
    // is opened again, so the probes cannot keep the budget from filling.
    let deadline = Instant::now() + LONG;
    loop {
        for stream in &mut stalled {
            if answered(stream) {
                *stream = node.raw("POST", "/v1/jobs", Some(MAX_BODY), b"{\"na");
            }
        }
        let reply = node.request("POST", "/v1/jobs", Some(&json!({})));
        match reply.status {
            503 => break,
            400 => {}
            other => panic!("unexpected {other}: {reply:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the stalled bodies never filled the budget; log:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A third request declaring the largest body is shed at once, with Retry-After.
    let mut third = node.raw("POST", "/v1/jobs", Some(MAX_BODY), b"");
    let reply = read_reply(&mut third);
    assert_eq!(reply.status, 503, "{reply:?}");
    let retry: u64 = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {reply:?}"))
        .parse()
        .unwrap();
    assert!(retry >= 1, "{reply:?}");
    assert_error_body(&reply.body, "body");
    // The too-large check still comes first.
    let mut big = node.raw("POST", "/v1/jobs", Some(MAX_BODY + 1), b"");
    assert_eq!(read_reply(&mut big).status, 413);
    // The stalled clients give up (they close their side); the node answers them, and what
    // their bodies held is back.
    for stream in &mut stalled {
        stream.flush().unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let reply = read_reply(stream);
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_error_body(&reply.body, "body");
    }
    drop(stalled);
    let (status, body) = node.post("/v1/jobs", &true_job("after"));
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    node.wait_state(id, "succeeded", LONG);
    assert_eq!(job_count(&node), 1, "only the last submission was stored");
}

/// Whether the node has written anything back on `stream` yet (without waiting for it).
fn answered(stream: &std::net::TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let got = stream.peek(&mut byte);
    stream.set_nonblocking(false).unwrap();
    match got {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("peek on a stalled request: {e}"),
    }
}

#[test]
fn unknown_fields_are_refused_with_their_path_in_json_and_toml() {
    let dir = Scratch::new("api-unknown");
    let node = Server::start(dir.path(), &[]);
    let cases = [
        (
            json!({"name": "a", "kind": {"command": {"program": "/bin/true"}}, "timeout_sec": 5}),
            "timeout_sec",
        ),
        (
            json!({"name": "a", "kind": {"command": {"program": "/bin/true"}}, "resources": {"cpus": 2}}),
            "resources.cpus",
        ),
        (
            json!({"name": "a", "kind": {"command": {"program": "/bin/true", "shell": true}}}),
            "kind.command.shell",
        ),
        // A type error names the path, not the bad value.
        (
            json!({"name": "a", "kind": {"command": {"program": "/bin/true"}}, "resources": {"cpu_millis": "5"}}),
            "resources.cpu_millis",
        ),
        // In a batch, the field is prefixed with the job's index.
        (
            json!({"jobs": [true_job("ok"), {"name": "b", "kind": {"command": {"program": "/bin/true"}}, "timeout_sec": 5}]}),
            "jobs[1].timeout_sec",
        ),
        (
            json!([true_job("ok"), {"name": "b", "kind": {"command": {"program": "/bin/true", "shell": true}}}]),
            "jobs[1].kind.command.shell",
        ),
    ];
    for (spec, field) in cases {
        let (status, body) = node.post("/v1/jobs", &spec);
        assert_eq!(status, 400, "{spec}: {body}");
        assert_error_body(&body, field);
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors: {body}"))
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{spec}: {body}");
    }
    // A TOML job file through the CLI: exit code 2, and stderr names the field.
    let bad = dir.path().join("job.toml");
    std::fs::write(
        &bad,
        "name = \"a\"\nmax_retry = 1\n\n[kind.command]\nprogram = \"/bin/true\"\n",
    )
    .unwrap();
    let out = node.cli(&["submit", "--file", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_retry"), "{stderr}");
    assert_eq!(job_count(&node), 0, "nothing refused was stored");
    // The same file with the field spelled right is taken.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "name = \"a\"\nmax_retries = 1\n\n[kind.command]\nprogram = \"/bin/true\"\n",
    )
    .unwrap();
    let out = node.cli(&["submit", "--file", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let job = node.wait_state(id, "succeeded", LONG);
    assert_eq!(job["name"], "a");
    assert_eq!(job_count(&node), 1);
}

/// The kind's errors name its path, never the bad value or a bare leaf (`program`), over
/// HTTP and from a TOML file through the CLI; an unknown kind lists the kinds there are.
#[test]
fn kind_errors_name_their_path_in_json_and_toml() {
    let dir = Scratch::new("api-kind-errors");
    let node = Server::start(dir.path(), &[]);
    // (JSON body, the same as a TOML file, the field, words the reason must hold)
    let cases: [(Value, &str, &str, &[&str]); 4] = [
        (
            json!({"name": "a", "kind": "docker"}),
            "name = \"a\"\nkind = \"docker\"\n",
            "kind",
            &["docker", "`command`", "`workload`"],
        ),
        (
            json!({"name": "a", "kind": {"docker": {"image": "x"}}}),
            "name = \"a\"\n\n[kind.docker]\nimage = \"x\"\n",
            "kind",
            &["docker", "`command`", "`workload`"],
        ),
        (
            json!({"name": "a", "kind": {"command": {"program": 5}}}),
            "name = \"a\"\n\n[kind.command]\nprogram = 5\n",
            "kind.command.program",
            &["invalid type"],
        ),
        (
            json!({"name": "a", "kind": {"command": {}}}),
            "name = \"a\"\n\n[kind.command]\n",
            "kind.command.program",
            &["missing"],
        ),
    ];
    for (i, (spec, toml, field, words)) in cases.into_iter().enumerate() {
        let (status, body) = node.post("/v1/jobs", &spec);
        assert_eq!(status, 400, "{spec}: {body}");
        assert_error_body(&body, field);
        let reason = body["reason"].as_str().unwrap();
        for word in words {
            assert!(reason.contains(word), "{spec}: {body}");
        }
        let file = dir.path().join(format!("kind-{i}.toml"));
        std::fs::write(&file, toml).unwrap();
        let out = node.cli(&["submit", "--file", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        // The CLI says `<error> (400): <field>: <reason>`.
        assert!(
            stderr.contains(&format!("(400): {field}: ")),
            "{toml}: {stderr}"
        );
        for word in words {
            assert!(stderr.contains(word), "{toml}: {stderr}");
        }
    }
    assert_eq!(job_count(&node), 0, "nothing refused was stored");
}

#[test]
fn a_malformed_request_is_a_client_error_not_a_node_error() {
    let dir = Scratch::new("api-malformed");
    let node = Server::start(dir.path(), &[]);
    let before = node.log_text().len();
    // A Content-Length that is not a number.
    let mut stream = std::net::TcpStream::connect(node.api_addr()).unwrap();
    stream
        .write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: cadre\r\nContent-Length: abc\r\n\r\n{}")
        .unwrap();
    let reply = read_reply(&mut stream);
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(node.get("/healthz").0, 200);
    assert_eq!(job_count(&node), 0);
    // Only a 500 is a node failure: a client's bad request is not logged as an error.
    let log = node.log_text();
    let errors: Vec<&str> = log[before..]
        .lines()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(
        errors.is_empty(),
        "a client's malformed request is logged as a node error: {errors:#?}"
    );
}

/// Lines of the node's log at ERROR level that mention any of `words`.
fn error_lines_mentioning(log: &str, words: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("ERROR") && words.iter().any(|w| l.contains(w)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn sighup_drains_like_sigterm_and_refusals_while_draining_are_not_errors() {
    let dir = Scratch::new("api-sighup");
    // The API's refusals are logged at debug: show them, to see which level they get.
    let mut node = Server::start(
        dir.path(),
        &[("CADRE_LOG", "info,cadre_runtime=debug,actix_server=warn")],
    );
    // The job runs until the test lets it end, so the drain lasts as long as the test needs.
    let go = dir.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", go.display());
    let id = node.submit(&[], &["/bin/sh", "-c", &script]);
    node.wait_state(id, "running", LONG);
    signal(node.pid(), "HUP");
    let mut draining = Value::Null;
    wait_for("readyz turns 503 after SIGHUP", LONG, || {
        let (status, body) = node.get("/readyz");
        draining = body;
        status == 503
    });
    assert!(
        draining["reason"].as_str().unwrap().contains("draining"),
        "{draining}"
    );
    let (status, body) = node.post("/v1/jobs", &true_job("late"));
    assert_eq!(status, 503, "a submission while draining: {body}");
    std::fs::write(&go, "").unwrap();
    let status = node.wait_exit(LONG);
    let log = node.log_text();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(
        log.lines().any(
            |l| (l.contains("signal=SIGHUP") || l.contains("signal=\"SIGHUP\""))
                && l.contains("shutting down")
        ),
        "no SIGHUP shutdown line:\n{log}"
    );
    assert!(log.contains("drained"), "{log}");
    // Both refusals are in the log, at debug: the check below looks at the right lines.
    for route in ["route=\"readyz\"", "route=\"submit\""] {
        assert!(
            log.lines()
                .any(|l| l.contains("DEBUG") && l.contains(route) && l.contains("503")),
            "no debug line for the {route} refusal:\n{log}"
        );
    }
    let errors = error_lines_mentioning(&log, &["readyz", "submit"]);
    assert!(
        errors.is_empty(),
        "a client's refusal is logged as a node error: {errors:#?}"
    );
    node.spawn();
    let job = node.job(id);
    assert_eq!(
        job["state"], "succeeded",
        "it finished during the drain: {job}"
    );
    assert_eq!(job["attempt"], 1, "{job}");
    assert_eq!(job_count(&node), 1, "the late submission was not stored");
}

#[test]
fn a_second_sigterm_during_a_drain_stops_waiting() {
    let dir = Scratch::new("api-second");
    // A grace far longer than the test: only the second signal can end the wait.
    let mut node = Server::start(dir.path(), &[("CADRE_SHUTDOWN_GRACE_SECS", "600")]);
    let id = node.submit(&[], &["/bin/sleep", "60"]);
    node.wait_state(id, "running", LONG);
    signal(node.pid(), "TERM");
    wait_for("readyz turns 503 after SIGTERM", LONG, || {
        node.get("/readyz").0 == 503
    });
    signal(node.pid(), "TERM");
    let status = node.wait_exit(Duration::from_secs(25));
    let log = node.log_text();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("second signal"), "{log}");
    assert!(!log.contains("drained: no job is running"), "{log}");
    assert!(!log.contains("grace period over"), "{log}");
    // The job was stopped, not ended: it runs again after the restart.
    node.spawn();
    let job = node.wait_state(id, "running", LONG);
    assert!(job["attempt"].as_u64().unwrap() >= 1, "{job}");
    let (status, body) = node.post(&format!("/v1/jobs/{id}/cancel"), &json!({}));
    assert!(status == 200 || status == 202, "{status}: {body}");
    node.wait_state(id, "cancelled", LONG);
}

#[test]
fn a_ready_node_says_ready_and_counts_ended_jobs() {
    let dir = Scratch::new("api-ready");
    let node = Server::start(dir.path(), &[]);
    let (status, body) = node.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "ready"}));
    let (_, nodes) = node.get("/v1/nodes");
    assert_eq!(nodes["ended"], 0, "{nodes}");
    assert_eq!(nodes["draining"], false, "{nodes}");
    let a = node.submit(&[], &["/bin/true"]);
    let b = node.submit(&[], &["/bin/sh", "-c", "exit 3"]);
    node.wait_state(a, "succeeded", LONG);
    node.wait_state(b, "failed", LONG);
    let (status, nodes) = node.get("/v1/nodes");
    assert_eq!(status, 200);
    assert_eq!(nodes["ended"], 2, "{nodes}");
    assert_eq!(nodes["jobs"], 2, "{nodes}");
}

#[test]
fn list_columns_stay_aligned_as_ids_grow() {
    let dir = Scratch::new("api-list");
    let node = Server::start(dir.path(), &[]);
    let names: Vec<String> = (1..=12).map(|i| format!("j{}", "x".repeat(i))).collect();
    let (status, body) = node.post(
        "/v1/jobs",
        &json!({"jobs": names.iter().map(|n| true_job(n)).collect::<Vec<_>>()}),
    );
    assert_eq!(status, 201, "{body}");
    let ids = common::ids(&body);
    assert_eq!(ids.len(), 12, "{body}");
    assert!(ids.iter().any(|&i| i < 10) && ids.iter().any(|&i| i >= 10));
    for &id in &ids {
        node.wait_state(id, "succeeded", LONG);
    }
    let out = node.cli(&["list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let state_at = header.find("STATE").unwrap();
    let name_at = header.find("NAME").unwrap();
    let attempt_end = header.find("ATTEMPT").unwrap() + "ATTEMPT".len();
    let id_end = header.find("ID").unwrap() + "ID".len();
    let rows: Vec<&str> = lines.filter(|l| !l.starts_with("more:")).collect();
    assert_eq!(rows.len(), 12, "{text}");
    for row in rows {
        let id: u64 = row.split_whitespace().next().unwrap().parse().unwrap();
        let i = ids.iter().position(|&x| x == id).unwrap();
        assert_eq!(
            row[..id_end].trim_start(),
            id.to_string(),
            "ID right-aligned:\n{text}"
        );
        assert!(
            row[..state_at].ends_with(' ') && row[state_at..].starts_with("succeeded"),
            "STATE at column {state_at}:\n{text}"
        );
        assert!(
            row[..attempt_end].ends_with('1') && row[attempt_end..].starts_with(' '),
            "ATTEMPT right-aligned to column {attempt_end}:\n{text}"
        );
        assert_eq!(
            &row[name_at..],
            names[i],
            "NAME at column {name_at}:\n{text}"
        );
    }
}
