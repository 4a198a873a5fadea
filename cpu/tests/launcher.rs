//! The launcher's suite: argv without a shell, environment and working directory, exit codes and
//! signals, exact output capture on both I/O backends, timeouts that kill the whole process
//! group, rlimits and CPU pinning, validation, no zombie or leaked descriptor, and the log reader.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cadre_cpu::launcher::{CommandSpec, ExitOutcome, Launcher, ResourceLimits, CAPTURE_CHUNK};
use cadre_cpu::{BackendSetting, CpuError, IoEngine};
use common::{launchers, Scratch};
use tokio::sync::RwLock;

/// The descriptor-count test needs the process to itself: it takes this for writing, every other
/// test for reading.
static GATE: RwLock<()> = RwLock::const_new(());

/// The launcher tests' command: output to `out.log` and `err.log` in the scratch directory.
trait SpecIn {
    fn spec(&self, argv: &[&str]) -> CommandSpec;
}

impl SpecIn for Scratch {
    fn spec(&self, argv: &[&str]) -> CommandSpec {
        CommandSpec::new(
            argv.iter().copied(),
            self.path().join("out.log"),
            self.path().join("err.log"),
        )
    }
}

fn std_launcher() -> Launcher {
    Launcher::new(IoEngine::new(BackendSetting::Std).unwrap())
}

/// The state letter of `/proc/<pid>/stat` and the parent pid, or `None` when the pid is gone.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) S ppid ...: comm may hold spaces, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Dead: gone from /proc, or a zombie left to some other reaper (not a child of ours).
fn is_dead(pid: i32) -> bool {
    match proc_state(pid) {
        None => true,
        Some(('Z', ppid)) => ppid != std::process::id() as i32,
        Some(_) => false,
    }
}

async fn eventually_dead(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    is_dead(pid)
}

async fn read_pidfile(path: &Path) -> i32 {
    for _ in 0..250 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().parse().unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} was never written", path.display());
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn argv_is_not_run_through_a_shell() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("argv");
    let spec = dir.spec(&["/bin/echo", "a;b", "$HOME", "`id`", "*"]);
    let mut proc = std_launcher().spawn(&spec, "job-argv").unwrap();
    let report = proc.wait().await.unwrap();
    assert_eq!(report.outcome, ExitOutcome::Code(0));
    assert_eq!(read(&spec.stdout_log), "a;b $HOME `id` *\n");
    assert_eq!(report.stdout_bytes, 17);
    assert!(report.logs_complete);
}

#[tokio::test]
async fn env_and_cwd_are_applied() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("env");
    let mut spec = dir.spec(&["/bin/sh", "-c", r#"echo "$FOO"; pwd; echo "${HOME-unset}""#]);
    spec.clear_env = true;
    spec.env = vec![("FOO".into(), "bar baz".into())];
    spec.cwd = Some(dir.path().to_path_buf());
    let mut proc = std_launcher().spawn(&spec, "job-env").unwrap();
    proc.wait().await.unwrap();
    assert_eq!(
        read(&spec.stdout_log),
        format!("bar baz\n{}\nunset\n", dir.path().display())
    );

    // Without clear_env the launcher's environment is inherited, and env adds to it.
    std::env::var("PATH").expect("the test runs with PATH set");
    let mut spec = dir.spec(&["/bin/sh", "-c", r#"echo "${PATH:+has-path} $EXTRA""#]);
    spec.env = vec![("EXTRA".into(), "x".into())];
    let mut proc = std_launcher().spawn(&spec, "job-env2").unwrap();
    proc.wait().await.unwrap();
    assert_eq!(read(&spec.stdout_log), "has-path x\n");
}

#[tokio::test]
async fn exit_code_and_signal_are_reported() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("exit");
    let launcher = std_launcher();
    let mut proc = launcher
        .spawn(&dir.spec(&["/bin/sh", "-c", "exit 7"]), "job-code")
        .unwrap();
    let report = proc.wait().await.unwrap();
    assert_eq!(report.outcome, ExitOutcome::Code(7));
    assert!(!report.outcome.success());
    assert!(!report.terminated && !report.timed_out && !report.killed);

    let mut proc = launcher
        .spawn(&dir.spec(&["/bin/sh", "-c", "kill -9 $$"]), "job-sig")
        .unwrap();
    assert_eq!(proc.wait().await.unwrap().outcome, ExitOutcome::Signal(9));

    // Waiting again gives the same report.
    let first = proc.wait().await.unwrap();
    assert_eq!(proc.wait().await.unwrap(), first);

    // A program that does not exist is a spawn error naming it.
    let err = launcher
        .spawn(&dir.spec(&["/nonexistent/program"]), "job-missing")
        .unwrap_err();
    match err {
        CpuError::Spawn { program, source } => {
            assert_eq!(program, "/nonexistent/program");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other}"),
    }
}

#[tokio::test]
async fn stdout_and_stderr_are_captured_exactly_on_both_backends() {
    let _gate = GATE.read().await;
    for (name, launcher) in launchers() {
        let dir = Scratch::new(&format!("capture-{name}"));
        let spec = dir.spec(&[
            "/bin/sh",
            "-c",
            "printf 'out1\\n'; printf 'err1' >&2; printf 'out2'; printf 'err2\\n' >&2",
        ]);
        let mut proc = launcher.spawn(&spec, "job-capture").unwrap();
        let report = proc.wait().await.unwrap();
        assert_eq!(read(&spec.stdout_log), "out1\nout2", "{name}");
        assert_eq!(read(&spec.stderr_log), "err1err2\n", "{name}");
        assert_eq!((report.stdout_bytes, report.stderr_bytes), (9, 9), "{name}");
        assert!(report.logs_complete, "{name}");

        // A second spawn truncates the logs.
        let spec2 = dir.spec(&["/bin/echo", "short"]);
        launcher
            .spawn(&spec2, "job-capture2")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(read(&spec2.stdout_log), "short\n", "{name}");
        assert_eq!(read(&spec2.stderr_log), "", "{name}");
    }
}

#[tokio::test]
async fn large_output_is_captured_completely_on_both_backends() {
    let _gate = GATE.read().await;
    const LEN: u64 = 50_000_000;
    for (name, launcher) in launchers() {
        let dir = Scratch::new(&format!("large-{name}"));
        // A pattern, not zeroes, so a misplaced chunk would show.
        let spec = dir.spec(&[
            "/bin/sh",
            "-c",
            &format!("yes 0123456789abcde | head -c {LEN}"),
        ]);
        let mut proc = launcher.spawn(&spec, "job-large").unwrap();
        let report = proc.wait().await.unwrap();
        assert_eq!(report.outcome, ExitOutcome::Code(0), "{name}");
        assert_eq!(report.stdout_bytes, LEN, "{name}");
        assert!(report.logs_complete, "{name}");
        let data = std::fs::read(&spec.stdout_log).unwrap();
        assert_eq!(data.len() as u64, LEN, "{name}");
        let line = b"0123456789abcde\n";
        for (i, chunk) in data.chunks(line.len()).enumerate() {
            assert_eq!(
                chunk,
                &line[..chunk.len()],
                "{name}: bytes at {} differ",
                i * line.len()
            );
        }
    }
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("group");
    let pidfile = dir.path().join("pidfile");
    let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
    let mut proc = std_launcher()
        .spawn(&dir.spec(&["/bin/sh", "-c", &script]), "job-group")
        .unwrap();
    let grandchild = read_pidfile(&pidfile).await;
    let child = proc.pid();
    assert_eq!(proc.pgid(), child);
    assert!(
        !is_dead(grandchild),
        "the grandchild runs before the timeout"
    );

    let started = Instant::now();
    let report = proc
        .wait_timeout(Duration::from_millis(300), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        report.timed_out && report.terminated && !report.killed,
        "{report:?}"
    );
    assert_eq!(report.outcome, ExitOutcome::Signal(libc::SIGTERM));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "SIGTERM sufficed, no grace needed"
    );
    assert!(proc_state(child).is_none(), "the child is reaped");
    assert!(
        eventually_dead(grandchild, Duration::from_secs(5)).await,
        "the grandchild is gone"
    );
}

#[tokio::test]
async fn a_child_ignoring_sigterm_gets_sigkill_after_the_grace() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("sigkill");
    let pidfile = dir.path().join("pidfile");
    let script = format!(
        "trap '' TERM; sleep 1000 & echo $! > {}; wait",
        pidfile.display()
    );
    let mut proc = std_launcher()
        .spawn(&dir.spec(&["/bin/sh", "-c", &script]), "job-kill")
        .unwrap();
    let grandchild = read_pidfile(&pidfile).await;
    let grace = Duration::from_millis(400);
    let started = Instant::now();
    let report = proc.terminate(grace).await.unwrap();
    let took = started.elapsed();
    assert!(
        report.terminated && report.killed && !report.timed_out,
        "{report:?}"
    );
    assert_eq!(report.outcome, ExitOutcome::Signal(libc::SIGKILL));
    assert!(
        took >= grace,
        "SIGKILL came only after the grace ({took:?})"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(proc_state(proc.pid()).is_none(), "the child is reaped");
    assert!(
        eventually_dead(grandchild, Duration::from_secs(5)).await,
        "the grandchild is gone"
    );

    // Terminating a finished process only returns its report.
    assert_eq!(proc.terminate(grace).await.unwrap(), report);
}

#[tokio::test]
async fn leftovers_of_the_group_die_with_its_leader() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("leftover");
    let pidfile = dir.path().join("pidfile");
    // The background sleep keeps stdout open: without the group kill, capture would never end.
    let script = format!("sleep 1000 & echo $! > {}", pidfile.display());
    let mut proc = std_launcher()
        .spawn(&dir.spec(&["/bin/sh", "-c", &script]), "job-left")
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(4), proc.wait())
        .await
        .expect("wait returns although the leftover held the pipe")
        .unwrap();
    assert_eq!(report.outcome, ExitOutcome::Code(0));
    assert!(report.logs_complete);
    let leftover = read_pidfile(&pidfile).await;
    assert!(eventually_dead(leftover, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn dropping_a_running_process_kills_its_group() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("drop");
    let pidfile = dir.path().join("pidfile");
    let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
    let proc = std_launcher()
        .spawn(&dir.spec(&["/bin/sh", "-c", &script]), "job-drop")
        .unwrap();
    let grandchild = read_pidfile(&pidfile).await;
    let child = proc.pid();
    let mut captured = proc.log_watch();
    drop(proc);
    tokio::time::timeout(Duration::from_secs(5), captured.wait_for(|done| *done))
        .await
        .expect("capture finishes once the group is dead")
        .unwrap();
    assert!(
        eventually_dead(grandchild, Duration::from_secs(5)).await,
        "the grandchild is gone"
    );
    // tokio reaps the killed direct child in the background: it must not stay a zombie of ours.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_state(child).is_some() && Instant::now() < deadline {
        // Another spawn gives tokio's orphan reaper a SIGCHLD to act on.
        std_launcher()
            .spawn(&dir.spec(&["/bin/true"]), "job-tick")
            .unwrap()
            .wait()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proc_state(child), None, "the dropped child was reaped");
}

#[tokio::test]
async fn a_failing_log_write_still_drains_the_pipe() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("full");
    // Writes to /dev/full fail with ENOSPC; 4 MB is far more than a pipe holds, so a capture
    // that stopped reading would leave the child blocked and this wait would time out.
    let mut spec = dir.spec(&["/bin/sh", "-c", "head -c 4000000 /dev/zero; echo done >&2"]);
    spec.stdout_log = PathBuf::from("/dev/full");
    let mut proc = std_launcher().spawn(&spec, "job-full").unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), proc.wait())
        .await
        .expect("the child is not left blocked on a full pipe")
        .unwrap();
    assert_eq!(report.outcome, ExitOutcome::Code(0));
    assert_eq!(report.stdout_bytes, 4_000_000, "every byte was drained");
    assert!(!report.logs_complete);
    assert_eq!(
        read(&spec.stderr_log),
        "done\n",
        "the other stream is unaffected"
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The descriptor count once it has held still for 300 ms: the test that ran before this one
/// may still be tearing down its runtime (and its io_uring engine) on the other test thread.
async fn settled_fds() -> usize {
    let mut last = open_fds();
    let mut still = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = open_fds();
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still == 3 {
            break;
        }
    }
    last
}

#[tokio::test]
async fn no_zombies_and_no_leaked_descriptors() {
    let _gate = GATE.write().await;
    let dir = Scratch::new("fds");
    let launcher = std_launcher();
    // Warm up: the first spawn sets up tokio's SIGCHLD handling, which holds descriptors for
    // the life of the process.
    launcher
        .spawn(&dir.spec(&["/bin/true"]), "job-warm")
        .unwrap()
        .wait()
        .await
        .unwrap();
    let before = settled_fds().await;
    let mut pids = Vec::new();
    let mut running = Vec::new();
    for i in 0..20 {
        let spec = CommandSpec::new(
            ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
            dir.path().join(format!("out{i}.log")),
            dir.path().join(format!("err{i}.log")),
        );
        let proc = launcher.spawn(&spec, &format!("job-{i}")).unwrap();
        pids.push(proc.pid());
        running.push(proc);
    }
    assert!(
        open_fds() > before,
        "the running processes hold pipes and logs"
    );
    for proc in &mut running {
        let report = proc.wait().await.unwrap();
        assert_eq!(report.outcome, ExitOutcome::Code(3));
        assert_eq!((report.stdout_bytes, report.stderr_bytes), (4, 4));
    }
    drop(running);
    assert_eq!(
        settled_fds().await,
        before,
        "every pipe, log and pidfd is closed"
    );
    for pid in pids {
        assert_eq!(
            proc_state(pid),
            None,
            "pid {pid} was reaped, not left a zombie"
        );
    }
}

#[tokio::test]
async fn rlimits_are_applied() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("rlimit");
    let mut spec = dir.spec(&["/bin/sh", "-c", "ulimit -n; ulimit -t; ulimit -v"]);
    spec.limits = ResourceLimits {
        open_files: Some(64),
        cpu_seconds: Some(30),
        address_space_bytes: Some(1 << 30),
        ..ResourceLimits::default()
    };
    let mut proc = std_launcher().spawn(&spec, "job-rlimit").unwrap();
    let report = proc.wait().await.unwrap();
    assert_eq!(
        report.outcome,
        ExitOutcome::Code(0),
        "{}",
        read(&spec.stderr_log)
    );
    // ulimit -v prints kB.
    assert_eq!(read(&spec.stdout_log), "64\n30\n1048576\n");
}

#[tokio::test]
async fn cpu_set_pins_the_child() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("pin");
    let launcher = std_launcher();
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mut wanted = vec![0];
    if cpus > 1 {
        wanted.push(cpus - 1);
    }
    for cpu in wanted {
        let mut spec = dir.spec(&["grep", "Cpus_allowed_list", "/proc/self/status"]);
        spec.cpu_set = Some(vec![cpu]);
        let mut proc = launcher.spawn(&spec, "job-pin").unwrap();
        assert_eq!(proc.wait().await.unwrap().outcome, ExitOutcome::Code(0));
        assert_eq!(
            read(&spec.stdout_log),
            format!("Cpus_allowed_list:\t{cpu}\n")
        );
    }
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("invalid");
    let launcher = std_launcher();
    let field_of = |spec: &CommandSpec| match launcher.spawn(spec, "job-invalid") {
        Err(CpuError::Invalid { field, .. }) => field,
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(_) => panic!("spawned an invalid spec: {spec:?}"),
    };
    let ok = dir.spec(&["/bin/true"]);
    let with = |f: &dyn Fn(&mut CommandSpec)| {
        let mut spec = ok.clone();
        f(&mut spec);
        spec
    };
    assert_eq!(field_of(&with(&|s| s.argv.clear())), "argv");
    assert_eq!(field_of(&with(&|s| s.argv.push("a\0b".into()))), "argv");
    assert_eq!(field_of(&with(&|s| s.argv[0].clear())), "argv");
    assert_eq!(
        field_of(&with(&|s| s.env.push((String::new(), "v".into())))),
        "env"
    );
    assert_eq!(
        field_of(&with(&|s| s.env.push(("A=B".into(), "v".into())))),
        "env"
    );
    assert_eq!(
        field_of(&with(&|s| s.env.push(("A\0".into(), "v".into())))),
        "env"
    );
    assert_eq!(
        field_of(&with(&|s| s.env.push(("A".into(), "v\0".into())))),
        "env"
    );
    assert_eq!(field_of(&with(&|s| s.cpu_set = Some(vec![]))), "cpu_set");
    let beyond = launcher.cpu_count();
    assert_eq!(
        field_of(&with(&|s| s.cpu_set = Some(vec![0, beyond]))),
        "cpu_set"
    );
    assert_eq!(
        field_of(&with(&|s| s.cpu_set = Some(vec![usize::MAX]))),
        "cpu_set"
    );
    assert_eq!(
        field_of(&with(&|s| s.stderr_log = s.stdout_log.clone())),
        "stderr_log"
    );
    assert_eq!(
        field_of(&with(&|s| s.stdout_log = PathBuf::new())),
        "stdout_log"
    );
    // Nothing was created for a refused spec.
    assert!(!ok.stdout_log.exists());
    // And the unchanged spec is fine.
    launcher.spawn(&ok, "job-ok").unwrap().wait().await.unwrap();
}

#[tokio::test]
async fn tail_returns_the_last_bytes() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("tail");
    let reader = std_launcher().log_reader();
    let path = dir.path().join("log");
    let tail = |n: u64| {
        let (reader, path) = (reader.clone(), path.clone());
        async move {
            reader
                .tail(&path, n)
                .await
                .unwrap()
                .collect(1 << 30)
                .await
                .unwrap()
        }
    };
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    assert_eq!(tail(10).await, &data[data.len() - 10..]);
    assert_eq!(tail(150_000).await, &data[50_000..]);
    assert_eq!(tail(1 << 40).await, data);
    assert_eq!(tail(0).await, Vec::<u8>::new());

    // In chunks no larger than CAPTURE_CHUNK, at the offsets they say.
    let mut chunks = reader.tail(&path, 150_000).await.unwrap();
    assert_eq!((chunks.offset(), chunks.end()), (50_000, 200_000));
    let mut seen = Vec::new();
    while let Some(chunk) = chunks.next_chunk().await.unwrap() {
        assert!(!chunk.is_empty() && chunk.len() <= CAPTURE_CHUNK);
        seen.extend_from_slice(&chunk);
        assert_eq!(chunks.offset(), 50_000 + seen.len() as u64);
    }
    assert_eq!(seen, &data[50_000..]);
    // collect stops at its bound.
    let bounded = reader.tail(&path, 1 << 40).await.unwrap();
    assert_eq!(bounded.collect(1000).await.unwrap(), &data[..1000]);

    std::fs::write(&path, b"").unwrap();
    assert_eq!(tail(10).await, Vec::<u8>::new());
    assert!(matches!(
        reader.tail(dir.path().join("missing"), 10).await,
        Err(CpuError::Io { op: "open", .. })
    ));
}

#[tokio::test]
async fn follow_sees_output_while_the_process_runs() {
    let _gate = GATE.read().await;
    let dir = Scratch::new("follow");
    let launcher = std_launcher();
    let spec = dir.spec(&[
        "/bin/sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.15; done",
    ]);
    let mut proc = launcher.spawn(&spec, "job-follow").unwrap();
    let pid = proc.pid();
    let mut follower = launcher
        .log_reader()
        .follow(&spec.stdout_log, 0, proc.log_watch())
        .unwrap();
    let collect = async {
        let mut seen = Vec::new();
        let mut chunks_while_running = 0;
        while let Some(chunk) = follower.next_chunk().await.unwrap() {
            // Running (or sleeping): not yet exited, so not a zombie or reaped.
            if matches!(proc_state(pid), Some((state, _)) if state != 'Z') {
                chunks_while_running += 1;
            }
            seen.extend_from_slice(&chunk);
        }
        (seen, chunks_while_running)
    };
    let ((seen, while_running), report) = tokio::join!(collect, proc.wait());
    let report = report.unwrap();
    let expected: String = (1..=8).map(|i| format!("line{i}\n")).collect();
    assert_eq!(String::from_utf8(seen).unwrap(), expected);
    assert!(
        while_running >= 2,
        "only {while_running} chunks came while the process ran"
    );
    assert_eq!(report.stdout_bytes, expected.len() as u64);
    assert_eq!(follower.offset(), expected.len() as u64);
    assert_eq!(follower.next_chunk().await.unwrap(), None, "stays finished");

    // Following a finished log from an offset returns the rest, then None.
    let mut late = launcher
        .log_reader()
        .follow(&spec.stdout_log, 6, proc.log_watch())
        .unwrap();
    assert_eq!(
        late.next_chunk().await.unwrap().unwrap(),
        &expected.as_bytes()[6..]
    );
    assert_eq!(late.next_chunk().await.unwrap(), None);
}
