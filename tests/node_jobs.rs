//! End-to-end tests of what a command job gets from a node: its default CPU reservation, its
//! cgroup (memory limit, a kill nothing escapes, the fallback to process groups), its
//! documented environment, its working directory, and retries of its own failures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    alive, cgroups_or_skip, env_map, remove_node_cgroups, run_within, signal, wait_for,
    wait_pid_file, Scratch, Server, BIN,
};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

/// A command job spec for the API, without `resources`.
fn command(name: &str, program: &str, args: &[&str]) -> Value {
    json!({"name": name, "kind": {"command": {"program": program, "args": args}}})
}

/// Submits one spec through the API and returns its id.
fn post_job(node: &Server, spec: &Value) -> u64 {
    let (status, body) = node.post("/v1/jobs", spec);
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().unwrap()
}

fn stdout_of(node: &Server, id: u64) -> String {
    node.get_text(&format!("/v1/jobs/{id}/logs"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- default resources ----

#[test]
fn a_job_that_names_no_resources_reserves_one_cpu() {
    let dir = Scratch::new("jobs-defcpu");
    let node = Server::start(dir.path(), &[]);
    let id = post_job(&node, &command("plain", "/bin/true", &[]));
    let job = node.wait_state(id, "succeeded", LONG);
    assert_eq!(job["spec"]["resources"]["cpu_millis"], 1000, "{job}");
    // An explicit 0 is kept: a job that only waits may reserve no CPU.
    let mut spec = command("waits", "/bin/true", &[]);
    spec["resources"] = json!({"cpu_millis": 0});
    let zero = post_job(&node, &spec);
    let job = node.wait_state(zero, "succeeded", LONG);
    assert_eq!(job["spec"]["resources"]["cpu_millis"], 0, "{job}");
    // `cadre status` says what the job reserves.
    let out = node.cli(&["status", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let status = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        status.contains("cpu") && (status.contains("1000") || status.contains("1 cpu")),
        "`cadre status` does not show the CPU the job reserves:\n{status}"
    );
}

#[test]
fn jobs_without_resources_run_no_more_at_once_than_the_node_has_cores() {
    let dir = Scratch::new("jobs-2cores");
    let node = Server::start(dir.path(), &[("CADRE_WORKER_CPU_MILLIS", "2000")]);
    let specs: Vec<Value> = (0..6)
        .map(|i| command(&format!("sleep-{i}"), "/bin/sleep", &["3"]))
        .collect();
    let (status, body) = node.post("/v1/jobs", &json!({ "jobs": specs }));
    assert_eq!(status, 201, "{body}");
    let ids: Vec<u64> = body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    // Sample the list until every job has ended; at no sample may more than two hold a core.
    let mut most = 0;
    let mut samples = Vec::new();
    wait_for("all six jobs ended", Duration::from_secs(40), || {
        let (status, list) = node.get("/v1/jobs?limit=100");
        assert_eq!(status, 200, "{list}");
        let states: Vec<String> = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["state"].as_str().unwrap().to_owned())
            .collect();
        let on_worker = states
            .iter()
            .filter(|s| *s == "running" || *s == "leased")
            .count();
        most = most.max(on_worker);
        assert!(
            on_worker <= 2,
            "{on_worker} jobs hold a core on a 2-core node: {states:?}"
        );
        samples.push(on_worker);
        std::thread::sleep(Duration::from_millis(100));
        states.len() == 6 && states.iter().all(|s| s == "succeeded")
    });
    // The node's two cores were used (one each), not one job at a time.
    assert_eq!(
        most, 2,
        "most on the worker at once: {most}; samples {samples:?}"
    );
}

// ---- cgroups ----

#[test]
fn with_cgroups_a_job_over_its_memory_limit_fails_out_of_memory() {
    if !cgroups_or_skip("jobs_oom") {
        return;
    }
    let dir = Scratch::new("jobs-oom");
    let node = Server::start(dir.path(), &[]);
    let mut spec = command(
        "hog",
        "/bin/sh",
        &[
            "-c",
            "x=$(head -c 300000000 /dev/zero | tr \"\\0\" a); echo ${#x}",
        ],
    );
    spec["resources"] = json!({"memory_bytes": 32 * 1024 * 1024});
    let id = post_job(&node, &spec);
    let job = node.wait_state(id, "failed", LONG);
    let error = job["outcome"]["error"].as_str().unwrap_or("");
    assert!(error.contains("out of memory"), "{job}");
    assert!(
        !stdout_of(&node, id).contains("300000000"),
        "it got its memory"
    );
    drop(node);
    remove_node_cgroups(&std::fs::read_to_string(dir.path().join("server.log")).unwrap());
}

#[test]
fn with_cgroups_a_child_that_leaves_its_session_dies_with_its_job() {
    if !cgroups_or_skip("jobs_setsid") {
        return;
    }
    let dir = Scratch::new("jobs-setsid");
    let node = Server::start(dir.path(), &[]);
    let pidfile = dir.path().join("escaper.pid");
    let p = pidfile.display();
    // The job waits for its child to write its pid, so the pid is known whatever happens next.
    let script = format!(
        "setsid -f /bin/sh -c \"echo \\$\\$ > {p}; exec sleep 1000\" </dev/null >/dev/null 2>&1; \
         while [ ! -s {p} ]; do sleep 0.05; done; sleep 0.3"
    );
    let id = node.submit(&[], &["/bin/sh", "-c", &script]);
    node.wait_state(id, "succeeded", LONG);
    let pid = wait_pid_file(&pidfile, LONG);
    let survived = alive(pid);
    if survived {
        signal(pid, "KILL");
    }
    assert!(
        !survived,
        "the setsid child {pid} outlived job {id}: {}",
        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()
    );
    // The node said once, at start, that command jobs run in cgroups.
    let log = node.log_text();
    let said = log
        .lines()
        .filter(|l| l.contains("command jobs run in cgroups"))
        .count();
    assert_eq!(said, 1, "log:\n{log}");
    drop(node);
    remove_node_cgroups(&log);
}

/// A node stopped cleanly after command jobs removes its cgroup parent and reports nothing
/// left over: the groups of its last jobs (kept as spares, or still being released off their
/// threads) are not leftovers of killed jobs, and no cgroup operation failed on the way.
#[test]
fn with_cgroups_a_clean_stop_removes_every_group_and_reports_no_leftover() {
    if !cgroups_or_skip("jobs_clean_stop") {
        return;
    }
    let dir = Scratch::new("jobs-clean-stop");
    let mut node = Server::start(dir.path(), &[]);
    let ids: Vec<u64> = (0..6).map(|_| node.submit(&[], &["/bin/true"])).collect();
    for id in ids {
        node.wait_state(id, "succeeded", LONG);
    }
    let dirs = common::node_cgroup_dirs(&node.log_text());
    assert!(!dirs.is_empty(), "the log names no cgroup parent");
    assert!(dirs.iter().any(|d| d.exists()), "no parent made: {dirs:?}");
    node.stop();
    let log = node.log_text();
    assert!(
        !log.contains("left at shutdown") && !log.contains("cgroup operation failed"),
        "log:\n{log}"
    );
    for d in &dirs {
        assert!(!d.exists(), "{} is left", d.display());
    }
}

/// The test harness itself: a node killed outright leaves its cgroup parent with its jobs'
/// groups and spares in it, and dropping its `Server` removes all of that, killing what still
/// runs there (removing the parent alone failed while groups were inside: every test run left
/// a few dozen parents on the machine, each one more group for the kernel to walk).
#[test]
fn with_cgroups_a_killed_node_s_groups_are_gone_once_its_server_is_dropped() {
    if !cgroups_or_skip("jobs_killed_cleanup") {
        return;
    }
    let dir = Scratch::new("jobs-killed-cleanup");
    let mut node = Server::start(dir.path(), &[]);
    let done = node.submit(&[], &["/bin/true"]);
    node.wait_state(done, "succeeded", LONG);
    let running = node.submit(&[], &["/bin/sleep", "60"]);
    node.wait_state(running, "running", LONG);
    let dirs = common::node_cgroup_dirs(&node.log_text());
    node.kill9();
    let inside = |d: &std::path::Path| {
        std::fs::read_dir(d).map_or(0, |e| {
            e.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .count()
        })
    };
    assert!(
        dirs.iter().any(|d| inside(d) > 0),
        "the killed node left no group inside its parent: {dirs:?}"
    );
    drop(node);
    for d in &dirs {
        assert!(!d.exists(), "{} is left", d.display());
    }
}

#[test]
fn without_cgroups_the_node_runs_jobs_in_process_groups_and_says_so_once() {
    let dir = Scratch::new("jobs-nocg");
    let empty = dir.path().join("empty-root");
    std::fs::create_dir_all(&empty).unwrap();
    let root = empty.to_str().unwrap();
    // auto (the default): nothing mounted under the root, so process groups, said once.
    let node = Server::start(dir.path(), &[("CADRE_CGROUPS_ROOT", root)]);
    let id = node.submit(&[], &["/bin/sh", "-c", "echo ran"]);
    node.wait_state(id, "succeeded", LONG);
    assert_eq!(stdout_of(&node, id), "ran\n");
    let log = node.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cgroups unavailable"))
        .collect();
    assert_eq!(warnings.len(), 1, "log:\n{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("process groups"),
        "{}",
        warnings[0]
    );
    assert!(!log.contains("command jobs run in cgroups"), "log:\n{log}");
    drop(node);

    // off: said as such, and jobs still run.
    let off_dir = Scratch::new("jobs-cgoff");
    let node = Server::start(off_dir.path(), &[("CADRE_CGROUPS", "off")]);
    let id = node.submit(&[], &["/bin/true"]);
    node.wait_state(id, "succeeded", LONG);
    let log = node.log_text();
    assert!(log.contains("cgroups off"), "log:\n{log}");
    assert!(!log.contains("cgroups unavailable"), "log:\n{log}");
    drop(node);

    // required: a node that cannot have them does not start, and names the setting.
    let data = dir.path().join("required-data");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .env("CADRE_CGROUPS", "required")
        .env("CADRE_CGROUPS_ROOT", root);
    let (status, output) = run_within(&mut cmd, &dir.path().join("required.log"), LONG);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("cgroups.mode"), "{status}: {output}");
}

// ---- environment ----

/// Every variable a job may see without `--inherit-env`, plus the `FOO` the tests set.
const DOCUMENTED: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "CADRE_JOB_ID",
    "CADRE_JOB_NAME",
    "CADRE_ATTEMPT",
    "CADRE_TASK",
    "CADRE_GANG_SIZE",
    "CADRE_SCRATCH",
    "CUDA_VISIBLE_DEVICES",
    "FOO",
];

#[test]
fn a_job_gets_the_documented_environment_not_the_nodes() {
    let dir = Scratch::new("jobs-env");
    let node = Server::start(dir.path(), &[("CADRE_TEST_SECRET", "hush")]);
    let id = node.submit(
        &[
            "--name",
            "envjob",
            "--env",
            "FOO=bar",
            "--env",
            "CADRE_JOB_ID=999",
        ],
        &["/usr/bin/env"],
    );
    node.wait_state(id, "succeeded", LONG);
    let env = env_map(&stdout_of(&node, id));
    let extra: Vec<&String> = env
        .keys()
        .filter(|k| !DOCUMENTED.contains(&k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "undocumented variables {extra:?}: {env:?}"
    );
    assert!(!env.contains_key("CADRE_TEST_SECRET"), "{env:?}");
    let get = |k: &str| {
        env.get(k)
            .unwrap_or_else(|| panic!("{k} missing: {env:?}"))
            .as_str()
    };
    assert_eq!(get("PATH"), std::env::var("PATH").unwrap());
    if let Ok(home) = std::env::var("HOME") {
        assert_eq!(get("HOME"), home);
    }
    assert_eq!(
        get("LANG"),
        std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_owned())
    );
    assert_eq!(get("CADRE_JOB_ID"), id.to_string(), "the spec overrode it");
    assert_eq!(get("CADRE_JOB_NAME"), "envjob");
    assert_eq!(get("CADRE_ATTEMPT"), "1");
    assert_eq!(get("CADRE_TASK"), "0");
    assert_eq!(get("CADRE_GANG_SIZE"), "1");
    assert_eq!(get("CUDA_VISIBLE_DEVICES"), "");
    assert_eq!(get("FOO"), "bar");
    let scratch = node.data_dir.join("scratch").join(format!("{id}.0"));
    assert_eq!(
        Path::new(get("CADRE_SCRATCH")).canonicalize().unwrap(),
        scratch.canonicalize().unwrap()
    );
    assert_eq!(get("TMPDIR"), get("CADRE_SCRATCH"));

    // --inherit-env starts from the node's environment; cadre's own variables still win.
    let id = node.submit(
        &["--inherit-env", "--env", "CADRE_JOB_ID=999"],
        &["/usr/bin/env"],
    );
    node.wait_state(id, "succeeded", LONG);
    let env = env_map(&stdout_of(&node, id));
    assert_eq!(
        env.get("CADRE_TEST_SECRET").map(String::as_str),
        Some("hush"),
        "{env:?}"
    );
    assert_eq!(env.get("CADRE_JOB_ID"), Some(&id.to_string()), "{env:?}");

    // A job may set PATH, but not cadre's variables.
    let id = node.submit(
        &["--env", "PATH=/x", "--env", "CADRE_JOB_ID=999"],
        &["/usr/bin/env"],
    );
    node.wait_state(id, "succeeded", LONG);
    let env = env_map(&stdout_of(&node, id));
    assert_eq!(env.get("PATH").map(String::as_str), Some("/x"), "{env:?}");
    assert_eq!(env.get("CADRE_JOB_ID"), Some(&id.to_string()), "{env:?}");
}

// ---- working directory ----

#[test]
fn a_job_runs_in_its_scratch_directory_unless_it_names_an_existing_workdir() {
    let dir = Scratch::new("jobs-workdir");
    let node = Server::start(dir.path(), &[]);
    // A workdir that does not exist is refused at submit, by the CLI and the API alike.
    let out = node.cli(&["submit", "--workdir", "/no/such", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kind.command.workdir"), "{err}");
    let mut spec = command("nowhere", "/bin/true", &[]);
    spec["kind"]["command"]["workdir"] = json!("/no/such");
    let (status, body) = node.post("/v1/jobs", &spec);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "kind.command.workdir", "{body}");
    let (_, list) = node.get("/v1/jobs");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");

    let id = node.submit(&[], &["/bin/pwd"]);
    node.wait_state(id, "succeeded", LONG);
    let cwd = stdout_of(&node, id);
    let cwd = cwd.trim_end();
    assert!(cwd.ends_with(&format!("/scratch/{id}.0")), "{cwd}");
    let scratch = node
        .data_dir
        .canonicalize()
        .unwrap()
        .join("scratch")
        .join(format!("{id}.0"));
    assert_eq!(Path::new(cwd), scratch);
    assert!(scratch.is_dir(), "{} is not a directory", scratch.display());

    let id = node.submit(&["--workdir", "/tmp"], &["/bin/pwd"]);
    node.wait_state(id, "succeeded", LONG);
    assert_eq!(stdout_of(&node, id), "/tmp\n");
}

// ---- retries ----

#[test]
fn a_failing_job_is_retried_after_a_backoff_then_fails_with_its_last_failure() {
    let dir = Scratch::new("jobs-retry");
    let node = Server::start(dir.path(), &[]);
    let id = node.submit(
        &["--retries", "2", "--retry-backoff", "1"],
        &["/bin/sh", "-c", "exit 3"],
    );
    // Between attempts it is queued, waiting out its backoff.
    let mut waiting = Value::Null;
    wait_for("a retry backoff", LONG, || {
        let job = node.job(id);
        assert!(job["state"] != "failed", "failed without a retry: {job}");
        let retrying = job["waiting"]["kind"] == "retry";
        if retrying {
            waiting = job;
        }
        retrying
    });
    assert_eq!(waiting["state"], "queued", "{waiting}");
    assert!(
        waiting["waiting"]["not_before_ms"].as_u64().unwrap()
            >= waiting["submitted_ms"].as_u64().unwrap(),
        "{waiting}"
    );
    let job = node.wait_state(id, "failed", LONG);
    assert_eq!(job["attempt"], 3, "{job}");
    assert_eq!(job["failures"], 2, "{job}");
    assert_eq!(job["last_failure"]["exit_code"], 3, "{job}");
    assert_eq!(job["outcome"]["exit_code"], 3, "{job}");
}

#[test]
fn a_job_without_retries_fails_at_its_first_attempt() {
    let dir = Scratch::new("jobs-noretry");
    let node = Server::start(dir.path(), &[]);
    let cli = node.submit(&["--retries", "0"], &["/bin/sh", "-c", "exit 3"]);
    // Through the API, retries are off unless the spec asks.
    let api = post_job(&node, &command("fails", "/bin/sh", &["-c", "exit 3"]));
    for id in [cli, api] {
        let job = node.wait_state(id, "failed", LONG);
        assert_eq!(job["attempt"], 1, "{job}");
        assert_eq!(job["failures"], 0, "{job}");
        assert_eq!(job["outcome"]["exit_code"], 3, "{job}");
    }
}

#[test]
fn a_job_that_fails_once_succeeds_on_its_retry() {
    let dir = Scratch::new("jobs-retryok");
    let node = Server::start(dir.path(), &[]);
    let id = node.submit(
        &["--retries", "1", "--retry-backoff", "1"],
        &["/bin/sh", "-c", "[ \"$CADRE_ATTEMPT\" = 2 ]"],
    );
    let job = node.wait_state(id, "succeeded", LONG);
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(job["failures"], 1, "{job}");
    assert_eq!(job["last_failure"]["exit_code"], 1, "{job}");
}

#[test]
fn a_lost_attempt_does_not_spend_the_jobs_retries() {
    let dir = Scratch::new("jobs-lostretry");
    let node = Server::start(dir.path(), &[]);
    let pidfile = dir.path().join("attempt1.pid");
    let script = format!(
        "if [ \"$CADRE_ATTEMPT\" = 1 ]; then echo $$ > {}; exec sleep 60; fi; exit 0",
        pidfile.display()
    );
    // No retries for its own failures; the default requeues for lost attempts.
    let id = node.submit(&["--retries", "0"], &["/bin/sh", "-c", &script]);
    node.wait_state(id, "running", LONG);
    let pid = wait_pid_file(&pidfile, LONG);
    signal(pid, "KILL");
    let job = node.wait_state(id, "succeeded", LONG);
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(job["requeues"], 1, "{job}");
    assert_eq!(job["failures"], 0, "{job}");
    assert!(
        job["last_loss"].as_str().unwrap_or("").contains("signal 9"),
        "{job}"
    );
}
