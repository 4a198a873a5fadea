//! The cluster with real processes on loopback: a scheduler with no worker of its own
//! (`cadre serve --cluster-addr --no-local-worker`) and agents (`cadre agent --join`). Jobs
//! spread over the agents, a gang spans them, the jobs of an agent killed with SIGKILL run
//! again on the others, an agent comes back to a restarted scheduler, and the cluster port
//! refuses strangers, other protocol versions and oversized frames while serving on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::cluster::{wait_workers, workers, Agent};
use common::{counter, free_port, wait_for, Scratch, Server};
use serde_json::Value;

const SECS_30: Duration = Duration::from_secs(30);
const ONE_CPU: [(&str, &str); 1] = [("CADRE_WORKER_CPU_MILLIS", "1000")];

/// The worker ids holding a job's tasks.
fn grant_workers(job: &Value) -> Vec<u64> {
    job["grants"]
        .as_array()
        .unwrap_or_else(|| panic!("no grants: {job}"))
        .iter()
        .map(|g| g["worker"].as_u64().unwrap())
        .collect()
}

/// The id the scheduler gave the worker registered as `node/name`.
fn worker_id(sched: &Server, node_name: &str) -> u64 {
    let (_, body) = sched.get("/v1/nodes");
    body["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| {
            format!(
                "{}/{}",
                w["node"].as_str().unwrap(),
                w["name"].as_str().unwrap()
            ) == node_name
        })
        .unwrap_or_else(|| panic!("{node_name} not registered: {body}"))["worker"]
        .as_u64()
        .unwrap()
}

#[test]
fn jobs_spread_over_agents_gangs_span_them_and_a_killed_agents_jobs_run_elsewhere() {
    let dir = Scratch::new("cluster-spread");
    let port = free_port();
    let sched = Server::start_scheduler(dir.path(), port, &[]);
    let join = format!("127.0.0.1:{port}");
    let mut agents: Vec<Agent> = ["a1", "a2"]
        .iter()
        .map(|name| Agent::start(dir.path(), name, &join, &ONE_CPU))
        .collect();
    agents.push(Agent::start_with(
        dir.path(),
        "a3",
        &join,
        &ONE_CPU,
        &[
            "--insecure-cluster",
            "--datacenter",
            "dc2",
            "--labels",
            "rack=r7,zone=b",
        ],
    ));
    wait_workers(&sched, &["a1/cpu-0", "a2/cpu-0", "a3/cpu-0"], SECS_30);
    // Each worker as the scheduler sees it: datacenter, labels, what it has free, its state.
    let (_, nodes) = sched.get("/v1/nodes");
    let a3 = nodes["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["node"] == "a3")
        .unwrap()
        .clone();
    assert_eq!(a3["datacenter"], "dc2", "{a3}");
    assert_eq!(a3["labels"]["rack"], "r7", "{a3}");
    assert_eq!(a3["free"]["cpu_millis"], 1000, "{a3}");
    assert_eq!(a3["state"], "alive", "{a3}");
    assert!(
        a3["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "where it connects from: {a3}"
    );
    assert!(a3["renewed_ms"].as_u64().unwrap() > 0, "{a3}");

    // One CPU each: three one-CPU jobs run on three agents at once.
    let ids: Vec<u64> = (0..3)
        .map(|_| sched.submit(&[], &["/bin/sleep", "2"]))
        .collect();
    let mut on = BTreeSet::new();
    for id in &ids {
        let job = sched.wait_state(*id, "running", SECS_30);
        on.extend(grant_workers(&job));
    }
    assert_eq!(on.len(), 3, "three jobs on three agents: {on:?}");
    let (_, nodes) = sched.get("/v1/nodes");
    for w in nodes["workers"].as_array().unwrap() {
        assert_eq!(
            w["free"]["cpu_millis"], 0,
            "a busy agent has no CPU free: {w}"
        );
    }
    for id in &ids {
        sched.wait_state(*id, "succeeded", SECS_30);
    }

    // A gang of two spans two agents, all or nothing.
    let gang = sched.submit(&["--gang", "2"], &["/bin/sleep", "1"]);
    let job = sched.wait_state(gang, "running", SECS_30);
    let held: BTreeSet<u64> = grant_workers(&job).into_iter().collect();
    assert_eq!(held.len(), 2, "a gang of two on two agents: {job}");
    sched.wait_state(gang, "succeeded", SECS_30);

    // Drained, a1 takes no new work: two jobs run on a2 and a3; undrained, it takes work again.
    let out = sched.cli(&["drain", "a1"]);
    assert!(out.status.success(), "{out:?}");
    let nodes = String::from_utf8_lossy(&sched.cli(&["nodes"]).stdout).to_string();
    assert!(nodes.contains("a1/cpu-0  draining"), "{nodes}");
    let a1 = worker_id(&sched, "a1/cpu-0");
    let ids: Vec<u64> = (0..2)
        .map(|_| sched.submit(&[], &["/bin/sleep", "1"]))
        .collect();
    for id in &ids {
        let job = sched.wait_state(*id, "running", SECS_30);
        assert!(
            !grant_workers(&job).contains(&a1),
            "a drained node got work: {job}"
        );
    }
    let out = sched.cli(&["drain", "--undo", "a1"]);
    assert!(out.status.success(), "{out:?}");
    let out = sched.cli(&["drain", "nowhere"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown node"),
        "{out:?}"
    );
    for id in &ids {
        sched.wait_state(*id, "succeeded", SECS_30);
    }

    // SIGKILL one agent while each runs a job: its job runs again on another, the others once.
    let ids: Vec<u64> = (0..3)
        .map(|_| sched.submit(&[], &["/bin/sleep", "2"]))
        .collect();
    for id in &ids {
        sched.wait_state(*id, "running", SECS_30);
    }
    let a1 = worker_id(&sched, "a1/cpu-0");
    let victim = *ids
        .iter()
        .find(|id| grant_workers(&sched.job(**id)) == vec![a1])
        .unwrap();
    agents[0].kill9();
    wait_workers(&sched, &["a2/cpu-0", "a3/cpu-0"], SECS_30);
    // Shown as dead, with why, until it comes back.
    let (_, nodes) = sched.get("/v1/nodes");
    let dead = &nodes["departed"][0];
    assert_eq!(dead["node"], "a1", "{nodes}");
    assert!(
        dead["reason"].as_str().unwrap().contains("closed"),
        "{nodes}"
    );
    let text = String::from_utf8_lossy(&sched.cli(&["nodes"]).stdout).to_string();
    assert!(text.contains("a1/cpu-0  dead  127.0.0.1:"), "{text}");
    for id in &ids {
        let job = sched.wait_state(*id, "succeeded", SECS_30);
        let attempt = job["attempt"].as_u64().unwrap();
        if *id == victim {
            assert_eq!(attempt, 2, "the killed agent's job ran again: {job}");
            let loss = job["last_loss"].as_str().unwrap_or_default();
            assert!(loss.contains(&format!("worker {a1} died")), "{job}");
        } else {
            assert_eq!(attempt, 1, "a job on a live agent ran once: {job}");
        }
    }
    assert!(
        sched
            .log_text()
            .contains("worker dead: its leases are revoked"),
        "{}",
        sched.log_text()
    );
    for agent in agents.iter_mut().skip(1) {
        agent.stop();
    }
}

#[test]
fn an_agent_comes_back_to_a_restarted_scheduler_which_kept_its_drain() {
    let dir = Scratch::new("cluster-restart");
    let port = free_port();
    let mut sched = Server::start_scheduler(dir.path(), port, &[]);
    let join = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(dir.path(), "a1", &join, &[]);
    wait_workers(&sched, &["a1/cpu-0"], SECS_30);
    let first = sched.submit(&[], &["/bin/true"]);
    sched.wait_state(first, "succeeded", SECS_30);

    // Drained before the crash: journaled, so still drained after it.
    assert!(sched.cli(&["drain", "a1"]).status.success());
    sched.kill9();
    sched.spawn();
    // The agent reconnects (with backoff) and registers again, still drained.
    wait_workers(&sched, &["a1/cpu-0"], SECS_30);
    let nodes = String::from_utf8_lossy(&sched.cli(&["nodes"]).stdout).to_string();
    assert!(nodes.contains("a1/cpu-0  draining"), "{nodes}");
    let second = sched.submit(&[], &["/bin/true"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sched.state(second),
        "queued",
        "a drained node takes no work"
    );
    assert!(sched.cli(&["drain", "--undo", "a1"]).status.success());
    sched.wait_state(second, "succeeded", SECS_30);
    assert_eq!(sched.state(first), "succeeded", "kept through the restart");
    let agent_log = agent.log_text();
    assert!(
        agent_log.contains("connection to the scheduler")
            || agent_log.contains("closed the connection"),
        "the agent said it lost its scheduler:\n{agent_log}"
    );
    let metrics = agent.metrics_text();
    let reconnects = counter(&metrics, "cadre_cluster_reconnects_total", &[]);
    assert!(reconnects >= 1.0, "{metrics}");
    agent.stop();
    sched.stop();
}

/// Reads until the peer closes (or 5 s pass); what it sent.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the scheduler did not close the connection: {e}; read {out:?}"),
        }
    }
}

#[test]
fn strangers_other_versions_and_huge_frames_are_refused_and_the_scheduler_serves_on() {
    let dir = Scratch::new("cluster-refuse");
    let port = free_port();
    let sched = Server::start_scheduler(dir.path(), port, &[]);
    let addr = format!("127.0.0.1:{port}");

    // Not cadre: closed with nothing said.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(read_to_close(&mut s).is_empty());

    // Version 2 only: the scheduler states its versions (1..1), then closes.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"CDRW\x00\x02\x00\x02").unwrap();
    assert_eq!(read_to_close(&mut s), b"CDRW\x00\x01\x00\x01");

    // A frame of 2^31 bytes after a good preamble: refused from its length alone.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"CDRW\x00\x01\x00\x01").unwrap();
    s.write_all(&(1u32 << 31).to_be_bytes()).unwrap();
    assert_eq!(read_to_close(&mut s), b"CDRW\x00\x01\x00\x01");

    wait_for("the refusals logged", SECS_30, || {
        let log = sched.log_text();
        log.contains("not a cadre peer")
            && log.contains("agent speaks 2, scheduler 1")
            && log.contains("over the limit")
    });
    let metrics = sched.get_text("/metrics");
    let metrics = if metrics.contains("cadre_") {
        metrics
    } else {
        sched.metrics_text()
    };
    for reason in ["not_cadre", "version", "oversized"] {
        assert_eq!(
            counter(
                &metrics,
                "cadre_wire_handshake_refusals_total",
                &[&format!("reason=\"{reason}\""), "side=\"scheduler\""]
            ),
            1.0,
            "{reason}: {metrics}"
        );
    }

    // It serves on: an agent joins and runs a job.
    let agent = Agent::start(dir.path(), "a1", &addr, &[]);
    wait_workers(&sched, &["a1/cpu-0"], SECS_30);
    let id = sched.submit(&[], &["/bin/true"]);
    sched.wait_state(id, "succeeded", SECS_30);
    assert_eq!(workers(&sched), vec!["a1/cpu-0".to_owned()]);
    drop(agent);
}

#[test]
fn a_cluster_is_refused_without_its_flags_with_the_field_named() {
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "serve",
                "--cluster-addr",
                "127.0.0.1:0",
                "--insecure-cluster",
                "--tls-ca",
                "/x/ca.crt",
            ],
            "cluster.tls_ca",
        ),
        (
            &["serve", "--cluster-addr", "127.0.0.1:0"],
            "cluster.tls_ca",
        ),
        (&["serve", "--no-local-worker"], "cluster.local_worker"),
        (
            &["agent", "--join", "nowhere", "--insecure-cluster"],
            "cluster.join[0]",
        ),
    ];
    for (args, field) in cases {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .env("CADRE_DATA_DIR", "/nonexistent/never-created")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?} names {field}: {stderr}");
    }
}

#[test]
fn mutual_tls_takes_only_the_clusters_certificates_made_for_the_node_that_presents_them() {
    use common::cluster::{certs, tls_args};
    let dir = Scratch::new("cluster-tls");
    let good = dir.path().join("certs");
    let other = dir.path().join("other-ca");
    certs(&good, &["sched", "a1", "a2"]);
    // Another CA, with a certificate for a node of the same name.
    certs(&other, &["a1"]);
    let port = free_port();
    let sched_args = tls_args(&good, &good, "sched");
    let sched_args: Vec<&str> = sched_args.iter().map(String::as_str).collect();
    let sched = Server::start_scheduler_with(dir.path(), port, &[], &sched_args);
    let join = format!("127.0.0.1:{port}");

    let a1_args = tls_args(&good, &good, "a1");
    let a1_args: Vec<&str> = a1_args.iter().map(String::as_str).collect();
    let a1 = Agent::start_with(dir.path(), "a1", &join, &[], &a1_args);
    wait_workers(&sched, &["a1/cpu-0"], SECS_30);
    let id = sched.submit(&[], &["/bin/true"]);
    sched.wait_state(id, "succeeded", SECS_30);

    // A certificate from another CA: refused in TLS, logged with the peer, counted.
    let foreign = tls_args(&good, &other, "a1");
    let foreign: Vec<&str> = foreign.iter().map(String::as_str).collect();
    let _x = Agent::start_with(dir.path(), "x", &join, &[], &foreign);
    // a2's own certificate, but it says it is a3: refused as another node's identity.
    let a2_args = tls_args(&good, &good, "a2");
    let a2_args: Vec<&str> = a2_args.iter().map(String::as_str).collect();
    let _a3 = Agent::start_with(dir.path(), "a3", &join, &[], &a2_args);
    // No TLS at all: a plain cadre preamble is not a TLS hello.
    let mut plain = TcpStream::connect(&join).unwrap();
    plain.write_all(b"CDRW\x00\x01\x00\x01").unwrap();
    let answered = read_to_close(&mut plain);
    assert!(!answered.starts_with(b"CDRW"), "{answered:?}");
    wait_for("the refusals", SECS_30, || {
        let log = sched.log_text();
        log.matches("cluster TLS handshake refused").count() >= 2
            && log.contains("the certificate is not made for node a3")
    });
    // The agent checks the scheduler's name: `localhost` is not in its certificate.
    let wrong_name = Agent::start_with(
        dir.path(),
        "a2",
        &format!("localhost:{port}"),
        &[],
        &a2_args,
    );
    wait_for("the agent refused the scheduler's name", SECS_30, || {
        wrong_name.log_text().contains("TLS")
            && wrong_name
                .log_text()
                .contains("not valid for name \"localhost\"")
    });
    assert_eq!(workers(&sched), vec!["a1/cpu-0".to_owned()]);
    let metrics = sched.metrics_text();
    assert!(
        counter(
            &metrics,
            "cadre_wire_handshake_refusals_total",
            &["reason=\"tls\"", "side=\"scheduler\""]
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "cadre_wire_handshake_refusals_total",
            &["reason=\"identity\""]
        ) >= 1.0,
        "{metrics}"
    );
    drop(a1);
}
