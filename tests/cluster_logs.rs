//! `cadre logs` of jobs that ran on agents: the scheduler reads them from the agent over the
//! cluster connection, in chunks no larger than a frame, and gives back the same bytes (head,
//! the cap's marker, tail) a local read gives; followed, they stream until the job ends; an
//! agent that is gone is a 503 naming it. An agent may not take the name of a scheduler that
//! runs a worker of its own. The files of jobs the scheduler prunes are removed on the agents
//! they ran on, also on an agent that was away when they were pruned (a sweep at its return).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::cluster::{wait_workers, Agent};
use common::{free_port, wait_for, Scratch, Server};

const SECS_30: Duration = Duration::from_secs(30);

/// `seq 1 n`'s output.
fn seq(n: u64) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// Lines `from..` of a log cut at an arbitrary byte, checked to count up by one: nothing
/// repeated or skipped across chunk boundaries. The first partial line is skipped.
fn assert_counts_up(text: &str, last: u64) {
    let mut lines = text.lines().skip(1).map(|l| l.parse::<u64>().unwrap());
    let mut prev = lines.next().unwrap();
    for n in lines {
        assert_eq!(n, prev + 1, "a line repeated or skipped after {prev}");
        prev = n;
    }
    assert_eq!(prev, last);
}

#[test]
fn logs_of_jobs_on_an_agent_are_read_over_the_cluster_connection() {
    let dir = Scratch::new("cluster-logs");
    let port = free_port();
    // A small frame limit: one log answer holds at most ~60 KiB, so a log takes many.
    let small_frames = [("CADRE_CLUSTER_MAX_FRAME_BYTES", "65536")];
    let sched = Server::start_scheduler(dir.path(), port, &small_frames);
    let join = format!("127.0.0.1:{port}");
    let cap = [
        ("CADRE_CLUSTER_MAX_FRAME_BYTES", "65536"),
        ("CADRE_LOGS_MAX_BYTES_PER_STREAM", "262144"),
    ];
    let mut agent = Agent::start(dir.path(), "a1", &join, &cap);
    wait_workers(&sched, &["a1/cpu-0"], SECS_30);

    // ~200 KB on stdout (under the cap), a line on stderr: read whole, byte for byte.
    let whole = sched.submit(&[], &["/bin/sh", "-c", "seq 1 30000; echo 'to stderr' >&2"]);
    let job = sched.wait_state(whole, "succeeded", SECS_30);
    assert_eq!(job["nodes"][0], "a1", "{job}");
    let out = sched.cli(&["logs", &whole.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), seq(30000));
    let out = sched.cli(&["logs", "--stderr", &whole.to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "to stderr\n",
        "{out:?}"
    );
    // The last bytes only.
    let tail = sched.get_text(&format!("/v1/jobs/{whole}/logs?tail=12"));
    assert_eq!(tail, "29999\n30000\n");

    // ~1.9 MB over a 256 KiB cap: the head, the marker, the tail, each byte once.
    let capped = sched.submit(&[], &["/usr/bin/seq", "1", "300000"]);
    sched.wait_state(capped, "succeeded", SECS_30);
    // All of it (the CLI reads the last MiB of the logical stream, which starts in the gap).
    let text = sched.get_text(&format!("/v1/jobs/{capped}/logs?tail=4000000"));
    let (head, rest) = text
        .split_once("\n[cadre: ")
        .unwrap_or_else(|| panic!("no marker in {} bytes", text.len()));
    assert!(head.starts_with("1\n2\n3\n"), "{}", &head[..20]);
    let (_, tail) = rest.split_once("kept]\n").unwrap();
    assert!(tail.len() > 64 << 10, "the tail is kept: {}", tail.len());
    assert_counts_up(tail, 300000);
    // The head ends where the cap cut it, mid-line: the whole lines before are 1, 2, 3, ...
    let whole_lines = head.lines().count() - 1;
    assert!(
        head.starts_with(&seq(whole_lines as u64)),
        "the head counts up from 1"
    );
    let out = sched.cli(&["logs", &capped.to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("\n[cadre: "),
        "the last MiB starts in the gap"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dropped"),
        "the CLI says output was dropped: {out:?}"
    );

    // Followed from before it starts, a job's output streams until it ends.
    let slow = sched.submit(
        &[],
        &[
            "/bin/sh",
            "-c",
            "echo one; sleep 0.6; echo two; sleep 0.6; echo three",
        ],
    );
    let out = sched.cli(&["logs", "-f", &slow.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\nthree\n");
    assert_eq!(sched.state(slow), "succeeded");

    // The agent gone, its jobs' logs cannot be read: a 503 that says where they are.
    agent.stop();
    wait_for("a1 gone", SECS_30, || {
        common::cluster::workers(&sched).is_empty()
    });
    let (status, body) = sched.get(&format!("/v1/jobs/{whole}/logs"));
    assert_eq!(status, 503, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("a1"), "{body}");
    let out = sched.cli(&["logs", &whole.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not connected"),
        "{out:?}"
    );
    let metrics = sched.metrics_text();
    assert!(
        common::counter(
            &metrics,
            "cadre_cluster_agent_request_failures_total",
            &["side=\"scheduler\"", "type=\"read_log\""]
        ) >= 2.0,
        "{metrics}"
    );
}

#[test]
fn an_agent_may_not_take_the_name_of_a_scheduler_that_runs_a_worker() {
    let dir = Scratch::new("cluster-own-name");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sched = Server::start(
        dir.path(),
        &[
            ("CADRE_CLUSTER_ADDR", addr.as_str()),
            ("CADRE_CLUSTER_INSECURE", "true"),
            ("CADRE_NODE_NAME", "main"),
        ],
    );
    wait_workers(&sched, &["main/cpu-0"], SECS_30);
    let agent = Agent::start(dir.path(), "main", &addr, &[]);
    wait_for("the agent refused", SECS_30, || {
        agent.log_text().contains("the scheduler's own node")
    });
    // The local worker kept its registration and runs jobs; an agent of another name joins.
    let other = Agent::start(dir.path(), "a2", &addr, &[]);
    wait_workers(&sched, &["a2/cpu-0", "main/cpu-0"], SECS_30);
    let id = sched.submit(&[], &["/bin/true"]);
    sched.wait_state(id, "succeeded", SECS_30);
    assert!(
        sched.log_text().contains("the scheduler's own node"),
        "{}",
        sched.log_text()
    );
    drop(other);
}

/// The files a job left on an agent (its logs, its scratch directory).
fn files_of(agent: &Agent, job: u64) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["logs", "scratch"] {
        if let Ok(entries) = std::fs::read_dir(agent.data_dir.join(dir)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.split('.').next() == Some(&job.to_string()) {
                    found.push(format!("{dir}/{name}"));
                }
            }
        }
    }
    found
}

#[test]
fn files_of_pruned_jobs_are_removed_on_their_agents_also_when_pruned_while_away() {
    let dir = Scratch::new("cluster-prune");
    let port = free_port();
    let sched = Server::start_scheduler(
        dir.path(),
        port,
        &[
            ("CADRE_RETENTION_MAX_JOBS", "2"),
            ("CADRE_RETENTION_EVERY_MS", "100"),
        ],
    );
    let join = format!("127.0.0.1:{port}");
    let mut a1 = Agent::start(dir.path(), "a1", &join, &[]);
    wait_workers(&sched, &["a1/cpu-0"], SECS_30);
    let on_a1: Vec<u64> = (0..3)
        .map(|i| sched.submit(&[], &["/bin/sh", "-c", &format!("echo job {i}")]))
        .collect();
    for id in &on_a1 {
        sched.wait_state(*id, "succeeded", SECS_30);
    }
    // Two ended jobs are kept: the first is pruned, and its files on a1 go with it.
    wait_for("job 1's files removed on its agent", SECS_30, || {
        files_of(&a1, on_a1[0]).is_empty()
    });
    assert!(
        !files_of(&a1, on_a1[2]).is_empty(),
        "a kept job's files stay"
    );

    // a1 away, a2 runs more jobs; pruning takes a1's last two while a1 cannot hear of it.
    a1.stop();
    let a2 = Agent::start(dir.path(), "a2", &join, &[]);
    wait_workers(&sched, &["a2/cpu-0"], SECS_30);
    for i in 0..3 {
        let id = sched.submit(&[], &["/bin/sh", "-c", &format!("echo later {i}")]);
        sched.wait_state(id, "succeeded", SECS_30);
    }
    wait_for("a1's jobs pruned", SECS_30, || {
        sched.get(&format!("/v1/jobs/{}", on_a1[2])).0 != 200
    });
    assert!(
        !files_of(&a1, on_a1[1]).is_empty(),
        "not removed while away"
    );
    // Back, a1 is sent a sweep of everything pruned meanwhile.
    a1.spawn();
    wait_for("a1's pruned jobs' files swept", SECS_30, || {
        files_of(&a1, on_a1[1]).is_empty() && files_of(&a1, on_a1[2]).is_empty()
    });
    assert!(
        a1.log_text().contains("removed what pruned jobs left here"),
        "{}",
        a1.log_text()
    );
    drop(a2);
}
