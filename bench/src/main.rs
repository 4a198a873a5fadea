//! `cadre-bench`: the benchmark runner. `cadre-bench SUITE [--quick]` runs one suite and writes
//! its results to stdout, one JSON object per line (progress goes to stderr); see
//! `bench/README.md` for the suites, the cases and their targets.
//!
//! One module per suite (`supervisor.rs`, `io.rs`, `scheduler.rs` with `e2e.rs`, `gpu.rs`), plus what they share: `report.rs` (JSON lines and
//! statistics) and `alloc.rs` (the counting global allocator: mimalloc, as the `cadre` binary uses, counted by
//! the `cap` crate).

mod alloc;
mod cluster;
mod e2e;
mod gpu;
mod io;
mod many_agents;
mod report;
mod scheduler;
mod snapshot;
mod soak;
mod supervisor;

use std::process::ExitCode;
use std::sync::OnceLock;

/// `--minutes N`: how long the soak suite runs.
static MINUTES: OnceLock<u64> = OnceLock::new();

/// A suite: its name on the command line, a one-line description, and its entry point (the
/// argument says whether to run the short `--quick` version).
struct Suite {
    name: &'static str,
    about: &'static str,
    run: fn(bool) -> Result<(), BenchError>,
}

/// The suites, in the order the usage lists them.
const SUITES: &[Suite] = &[
    Suite {
        name: "supervisor",
        about:
            "supervised actors vs plain actix: throughput, request/reply, panic restart, idle memory",
        run: supervisor::run,
    },
    Suite {
        name: "io",
        about: "journal appends on io_uring vs std, fdatasync rate, log capture, spawn and reap",
        run: io::run,
    },
    Suite {
        name: "scheduler",
        about: "decisions at 10k workers/100k queued, 1M queued jobs, durable submits, replay, end to end",
        run: scheduler::run,
    },
    Suite {
        name: "cluster",
        about: "a scheduler and 4 agents over TLS vs the all-in-one node; requeue after an agent's SIGKILL",
        run: cluster::run,
    },
    Suite {
        name: "soak",
        about: "a node under steady mixed load for 30 minutes (--minutes N): memory, fds, disk flat, throughput steady",
        run: |quick| soak::run(quick, MINUTES.get().copied()),
    },
    Suite {
        name: "gpu",
        about: "GPU jobs through cadre vs bare cudarc: per-job overhead, matmul TFLOP/s, copy bandwidth (needs a GPU)",
        run: gpu::run,
    },
];

/// Why a suite could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The supervisor refused a request (start, stop, ...).
    #[error("supervisor: {0}")]
    Supervisor(#[from] cadre_supervisor::SupervisorError),
    /// A request to an actor got no reply.
    #[error("mailbox: {0}")]
    Mailbox(#[from] actix::MailboxError),
    /// A task the bench spawned did not finish.
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The cpu crate failed (I/O engine, journal, launcher).
    #[error("cpu: {0}")]
    Cpu(#[from] cadre_cpu::CpuError),
    /// Writing the results failed.
    #[error("writing results: {0}")]
    Io(#[from] std::io::Error),
    /// A sanity check of a case failed (lost messages, no restart, a wait that never ended).
    #[error("check failed: {0}")]
    Check(String),
}

fn usage() -> String {
    let mut text =
        String::from("usage: cadre-bench SUITE [--quick] [--case NAME] [--minutes N]\n\nsuites:\n");
    for suite in SUITES {
        text.push_str(&format!("  {:<12}{}\n", suite.name, suite.about));
    }
    text.push_str(
        "\n--quick runs a short version (for CI); --case NAME runs one case of the suite;\n--minutes N sets how long the soak suite runs (default 30).",
    );
    text
}

fn main() -> ExitCode {
    // The scheduler suite runs a node with a large queue in a fresh process of its own.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(many_agents::SIM_CHILD) {
        return match many_agents::sim_child(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cadre-bench: simulated agents: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some(cluster::AGENT_CHILD) {
        return match cluster::agent_child(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cadre-bench: cluster agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let [flag, n] = args.as_slice() {
        if flag == e2e::NODE_RSS_CHILD {
            return match n
                .parse::<usize>()
                .map_err(|e| BenchError::Check(e.to_string()))
                .and_then(e2e::node_rss_child)
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cadre-bench: node memory child: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let mut suite = None;
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--case" => match args.next() {
                Some(case) => report::only(case),
                None => {
                    eprintln!("cadre-bench: --case needs a case name\n\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--minutes" => match args.next().and_then(|n| n.parse::<u64>().ok()) {
                Some(n) if n >= 3 => {
                    if MINUTES.set(n).is_err() {
                        eprintln!("cadre-bench: --minutes given twice");
                        return ExitCode::from(2);
                    }
                }
                _ => {
                    eprintln!(
                        "cadre-bench: --minutes needs a number of minutes, at least 3\n\n{}",
                        usage()
                    );
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                eprintln!("{}", usage());
                return ExitCode::SUCCESS;
            }
            name if suite.is_none() && !name.starts_with('-') => suite = Some(arg),
            other => {
                eprintln!("cadre-bench: unexpected argument {other:?}\n\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let Some(name) = suite else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let Some(found) = SUITES.iter().find(|s| s.name == name) else {
        eprintln!("cadre-bench: unknown suite {name:?}\n\n{}", usage());
        return ExitCode::from(2);
    };
    match (found.run)(quick) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cadre-bench: {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
