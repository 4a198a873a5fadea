//! SIGKILL of an agent in the middle of 2,000 jobs, not restarted: every job ends, once, as
//! succeeded; the only jobs that ran twice are those whose first attempt was running on the
//! killed agent; no attempt ran twice. Each job appends `job attempt` to a file on its agent
//! (`<agent data>/ran`, reached from its scratch directory), so the files say where each
//! attempt ran.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::{wait_workers, Agent};
use common::{counter, free_port, ids, wait_for, Scratch, Server};
use serde_json::json;

/// `(job, attempt)` lines of an agent's `ran` file.
fn ran(agent: &Agent) -> Vec<(u64, u64)> {
    std::fs::read_to_string(agent.data_dir.join("ran"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (job, attempt) = l.split_once(' ')?;
            Some((job.parse().ok()?, attempt.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn an_agent_killed_among_2000_jobs_reruns_only_what_it_was_running() {
    let dir = Scratch::new("cluster-kill-2000");
    let port = free_port();
    let sched = Server::start_scheduler(dir.path(), port, &[]);
    let join = format!("127.0.0.1:{port}");
    let two_cpus = [("CADRE_WORKER_CPU_MILLIS", "2000")];
    let mut agents: Vec<Agent> = ["k1", "k2", "k3"]
        .iter()
        .map(|name| Agent::start(dir.path(), name, &join, &two_cpus))
        .collect();
    wait_workers(
        &sched,
        &["k1/cpu-0", "k2/cpu-0", "k3/cpu-0"],
        Duration::from_secs(30),
    );

    let spec = json!({
        "name": "append",
        "kind": {"command": {"program": "/bin/sh", "args": ["-c",
            "echo $CADRE_JOB_ID $CADRE_ATTEMPT >> \"$TMPDIR/../../ran\"; sleep 0.1"]}},
        "resources": {"cpu_millis": 100},
        "max_requeues": 3
    });
    let (status, body) = sched.post("/v1/jobs", &json!({ "jobs": vec![spec; 2000] }));
    assert_eq!(status, 201, "{body}");
    let ids = ids(&body);
    assert_eq!(ids.len(), 2000);

    // Kill k1 once it has run a few hundred, while it runs more.
    wait_for("k1 to run 300 jobs", Duration::from_secs(120), || {
        ran(&agents[0]).len() >= 300
    });
    agents[0].kill9();
    sched.wait_drained(Duration::from_secs(300));

    // Every job ended succeeded, once.
    for id in &ids {
        assert_eq!(sched.state(*id), "succeeded", "job {id}");
    }
    let metrics = sched.metrics_text();
    let succeeded = counter(
        &metrics,
        "cadre_jobs_finished_total",
        &["state=\"succeeded\""],
    );
    assert_eq!(succeeded, 2000.0, "one accepted completion per job");

    // Where each attempt ran.
    let mut attempts: BTreeMap<u64, Vec<(usize, u64)>> = BTreeMap::new();
    for (a, agent) in agents.iter().enumerate() {
        for (job, attempt) in ran(agent) {
            attempts.entry(job).or_default().push((a, attempt));
        }
    }
    assert_eq!(attempts.len(), 2000, "every job ran");
    let mut reruns = 0;
    for (job, runs) in &attempts {
        let distinct: BTreeSet<u64> = runs.iter().map(|(_, at)| *at).collect();
        assert_eq!(
            distinct.len(),
            runs.len(),
            "job {job}: an attempt ran twice: {runs:?}"
        );
        if runs.len() > 1 {
            reruns += 1;
            // Only the killed agent's attempts ran again.
            let first = runs.iter().min_by_key(|(_, at)| *at).unwrap();
            assert_eq!(
                first.0, 0,
                "job {job} ran again though not on the killed agent: {runs:?}"
            );
            assert!(
                runs.iter().filter(|(a, _)| *a == 0).count() == 1,
                "job {job}: {runs:?}"
            );
        }
    }
    assert!(reruns > 0, "the kill caught some running job");
    for agent in agents.iter_mut().skip(1) {
        agent.stop();
    }
}
