//! An agent cut off from its scheduler (a network namespace whose link drops every packet,
//! the TCP connection left open as in a real partition) kills its own task before its lease
//! runs out, and the scheduler starts the job again elsewhere only after that: the old
//! attempt's last sign of life (a tick it logs every 50 ms) comes before the new attempt's
//! start. Healing the link brings the agent
//! back. SKIP where network namespaces cannot be made (`CADRE_REQUIRE_NETNS=1`: a failure).

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

    // Runs until killed, logging its start and then a tick every 50 ms, with its attempt: the
    // last tick of an attempt is (within 50 ms) when it was still alive.
    let log = dir.path().join("events");
    let script = format!(
        "echo start $CADRE_ATTEMPT $(date +%s%N) >> {log}; \
         while :; do echo tick $CADRE_ATTEMPT $(date +%s%N) >> {log}; sleep 0.05; done",
        log = log.display()
    );
    let id = sched.submit(&[], &["/bin/sh", "-c", &script]);
    sched.wait_state(id, "running", SECS_30);
    wait_for("the first attempt's start", SECS_30, || {
        events(&log).iter().any(|(a, e, _)| *a == 1 && e == "start")
    });
    let spare = Agent::start(dir.path(), "spare", &join, &one_cpu);
    wait_workers(&sched, &["cut/cpu-0", "spare/cpu-0"], SECS_30);

    host.cut();
    let deadline = std::time::Instant::now() + SECS_30;
    while !events(&log).iter().any(|(a, e, _)| *a == 2 && e == "start") {
        assert!(
            std::time::Instant::now() < deadline,
            "no second attempt in 30 s; events {:?}\nscheduler:\n{}\ncut-off agent:\n{}\nspare:\n{}",
            events(&log),
            sched.log_text(),
            cut_off.log_text(),
            spare.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Half a second on: any tick the old attempt still wrote is in the file by then.
    std::thread::sleep(Duration::from_millis(500));
    let seen = events(&log);
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
        "the old attempt was alive at {end_1}, after the new one started at {start_2}: {seen:?}"
    );
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
