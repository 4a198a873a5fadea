//! An agent cut off from its scheduler (a network namespace whose link drops every packet,
//! the TCP connection left open as in a real partition) kills its own task before its lease
//! runs out, and the scheduler starts the job again elsewhere only after that: the old
//! attempt's last sign of life (a tick it logs every 50 ms) comes before the new attempt's
//! start. Healing the link brings the agent
//! back. An agent that hears nothing back (the scheduler's packets to it are lost) closes its
//! connection and fences its task; the job runs again only after. Ten percent of packets lost
//! each way for two minutes declares no agent dead and runs every job once.
//! SKIP where network namespaces or `iptables` are missing (`CADRE_REQUIRE_NETNS=1`: a
//! failure).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::cluster::{wait_workers, Agent};
use common::netns::Host;
use common::{free_port, wait_for, Scratch, Server};

const SECS_30: Duration = Duration::from_secs(30);

/// `(attempt, event, nanoseconds)` lines the job appended to `path`.
fn events(path: &std::path::Path) -> Vec<(u32, String, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let event = it.next()?.to_owned();
            let attempt = it.next()?.parse().ok()?;
            let at = it.next()?.parse().ok()?;
            Some((attempt, event, at))
        })
        .collect()
}

/// Runs until killed, logging its start and then a tick every 50 ms, with its attempt, to
/// `log`: the last tick of an attempt is (within 50 ms) when it was still alive.
fn ticking(log: &std::path::Path) -> String {
    format!(
        "echo start $CADRE_ATTEMPT $(date +%s%N) >> {log}; \
         while :; do echo tick $CADRE_ATTEMPT $(date +%s%N) >> {log}; sleep 0.05; done",
        log = log.display()
    )
}

/// Waits (30 s at most, `why` says what to print otherwise) for the second attempt's start in
/// `log`, then checks the first attempt's last sign of life came before it.
fn assert_second_attempt_after_the_first(log: &std::path::Path, why: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + SECS_30;
    while !events(log).iter().any(|(a, e, _)| *a == 2 && e == "start") {
        assert!(
            std::time::Instant::now() < deadline,
            "no second attempt in 30 s; events {:?}\n{}",
            events(log),
            why()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Half a second on: any tick the old attempt still wrote is in the file by then.
    std::thread::sleep(Duration::from_millis(500));
    let seen = events(log);
    let end_1 = seen
        .iter()
        .filter(|(a, _, _)| *a == 1)
        .map(|(_, _, at)| *at)
        .max()
        .unwrap();
    let start_2 = seen
        .iter()
        .find(|(a, e, _)| *a == 2 && e == "start")
        .map(|(_, _, at)| *at)
        .unwrap();
    assert!(
        end_1 < start_2,
        "the old attempt was alive at {end_1}, after the new one started at {start_2}: {seen:?}\n{}",
        why()
    );
}

#[test]
fn a_cut_off_agent_fences_its_task_before_the_job_runs_again_elsewhere() {
    let Some(host) = Host::make("a_cut_off_agent_fences_its_task", 201) else {
        return;
    };
    let dir = Scratch::new("cluster-partition");
    let port = free_port();
    let sched = Server::start_scheduler_on(
        dir.path(),
        &format!("0.0.0.0:{port}"),
        &[],
        &["--insecure-cluster"],
    );
    let one_cpu = [("CADRE_WORKER_CPU_MILLIS", "1000")];
    let join = format!("{}:{port}", host.here);
    let mut cut_off = Agent::start_in_netns(dir.path(), "cut", &join, &one_cpu, &host.name);
    wait_workers(&sched, &["cut/cpu-0"], SECS_30);

    let log = dir.path().join("events");
    let script = ticking(&log);
    let id = sched.submit(&[], &["/bin/sh", "-c", &script]);
    sched.wait_state(id, "running", SECS_30);
    wait_for("the first attempt's start", SECS_30, || {
        events(&log).iter().any(|(a, e, _)| *a == 1 && e == "start")
    });
    let spare = Agent::start(dir.path(), "spare", &join, &one_cpu);
    wait_workers(&sched, &["cut/cpu-0", "spare/cpu-0"], SECS_30);

    host.cut();
    assert_second_attempt_after_the_first(&log, || {
        format!(
            "scheduler:\n{}\ncut-off agent:\n{}\nspare:\n{}",
            sched.log_text(),
            cut_off.log_text(),
            spare.log_text()
        )
    });
    assert!(
        cut_off
            .log_text()
            .contains("the worker kills the task itself"),
        "the cut-off agent fenced itself:\n{}",
        cut_off.log_text()
    );
    assert!(
        sched.log_text().contains("declared dead"),
        "{}",
        sched.log_text()
    );

    // Healed, the agent finds it was forgotten, registers again and takes work.
    host.heal();
    wait_workers(
        &sched,
        &["cut/cpu-0", "spare/cpu-0"],
        Duration::from_secs(60),
    );
    cut_off.stop();
    drop(spare);
    drop(sched);
}

#[test]
fn an_agent_that_hears_nothing_back_closes_and_fences_before_the_job_runs_again() {
    let Some(host) = Host::make("an_agent_that_hears_nothing_back", 202) else {
        return;
    };
    let dir = Scratch::new("cluster-close");
    let port = free_port();
    // Leases of 5 s: a job run again at once would overlap its old attempt for a while.
    let sched = Server::start_scheduler_on(
        dir.path(),
        &format!("0.0.0.0:{port}"),
        &[("CADRE_LEASE_TTL_MS", "5000")],
        &["--insecure-cluster"],
    );
    let join = format!("{}:{port}", host.here);
    // Requests unanswered for 300 ms time out: three in a row and it closes the connection.
    let closer_env = [
        ("CADRE_WORKER_CPU_MILLIS", "1000"),
        ("CADRE_CLUSTER_REQUEST_TIMEOUT_MS", "300"),
    ];
    let mut closer = Agent::start_in_netns(dir.path(), "closer", &join, &closer_env, &host.name);
    wait_workers(&sched, &["closer/cpu-0"], SECS_30);
    let log = dir.path().join("events");
    let id = sched.submit(&[], &["/bin/sh", "-c", &ticking(&log)]);
    sched.wait_state(id, "running", SECS_30);
    wait_for("the first attempt's start", SECS_30, || {
        events(&log).iter().any(|(a, e, _)| *a == 1 && e == "start")
    });
    let spare = Agent::start(
        dir.path(),
        "spare",
        &join,
        &[("CADRE_WORKER_CPU_MILLIS", "1000")],
    );
    wait_workers(&sched, &["closer/cpu-0", "spare/cpu-0"], SECS_30);

    // The scheduler's packets to the agent are lost; the agent's still arrive, its close too.
    if let Err(reason) = host.cut_one_way() {
        common::netns::skip_or_fail(
            "an_agent_that_hears_nothing_back",
            &format!("cannot drop packets with iptables: {reason}"),
        );
        return;
    }
    assert_second_attempt_after_the_first(&log, || {
        format!(
            "scheduler:\n{}\nclosing agent:\n{}\nspare:\n{}",
            sched.log_text(),
            closer.log_text(),
            spare.log_text()
        )
    });
    assert!(
        closer.log_text().contains("why=\"unanswered\""),
        "the agent closed the connection itself:\n{}",
        closer.log_text()
    );
    assert!(
        !sched
            .log_text()
            .contains("agent closed its connection: its registration ends"),
        "the agent's close read as its exit:\n{}",
        sched.log_text()
    );

    host.heal_one_way();
    wait_workers(
        &sched,
        &["closer/cpu-0", "spare/cpu-0"],
        Duration::from_secs(60),
    );
    closer.stop();
    drop(spare);
    drop(sched);
}

#[test]
fn ten_percent_loss_each_way_for_two_minutes_declares_no_agent_dead() {
    let Some(host) = Host::make("ten_percent_loss_each_way", 203) else {
        return;
    };
    let dir = Scratch::new("cluster-loss");
    let port = free_port();
    // The default timings (leases of 10 s renewed every second), not the tests' quick ones.
    let defaults = [
        ("CADRE_LEASE_TTL_MS", "10000"),
        ("CADRE_RENEW_EVERY_MS", "1000"),
        ("CADRE_FENCE_MARGIN_MS", "2000"),
    ];
    let sched = Server::start_scheduler_on(
        dir.path(),
        &format!("0.0.0.0:{port}"),
        &defaults,
        &["--insecure-cluster"],
    );
    let join = format!("{}:{port}", host.here);
    let mut agent = Agent::start_in_netns(dir.path(), "lossy", &join, &defaults, &host.name);
    wait_workers(&sched, &["lossy/cpu-0"], SECS_30);
    if let Err(reason) = host.lose(10) {
        common::netns::skip_or_fail(
            "ten_percent_loss_each_way",
            &format!("cannot drop packets with iptables: {reason}"),
        );
        return;
    }
    let secs: u64 = std::env::var("CADRE_LOSS_TEST_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut ids = Vec::new();
    while std::time::Instant::now() < until {
        // Jobs all along: their assignments, starts and ends cross the lossy link too.
        ids.push(sched.submit(&[], &["/bin/sleep", "0.5"]));
        std::thread::sleep(Duration::from_secs(2));
    }
    for id in &ids {
        let job = sched.wait_state(*id, "succeeded", Duration::from_secs(60));
        assert_eq!(job["attempt"], 1, "a job ran again under loss: {job}");
    }
    let log = sched.log_text();
    assert!(!log.contains("declared dead"), "{log}");
    assert!(!log.contains("cluster connection ended"), "{log}");
    assert_eq!(
        common::cluster::workers(&sched),
        vec!["lossy/cpu-0".to_owned()]
    );
    assert_eq!(
        agent
            .log_text()
            .matches("connected to the scheduler")
            .count(),
        1,
        "the agent reconnected under loss:\n{}",
        agent.log_text()
    );
    let dropped = host.dropped();
    // About 0.6 packets a second cross the link (renewals, their answers, the jobs): a tenth
    // of them lost is several per 10 s.
    assert!(
        dropped * 20 >= secs,
        "the link lost only {dropped} packets in {secs} s"
    );
    println!(
        "{dropped} packets dropped over {secs} s, {} jobs",
        ids.len()
    );
    agent.stop();
    drop(sched);
}
