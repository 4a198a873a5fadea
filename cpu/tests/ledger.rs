//! The process ledger: a group recorded by a previous instance is killed when the ledger is
//! opened again, a reaped one is not, and a pid now held by a different process (another start
//! time) is never signalled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cadre_cpu::ledger::{process_start_time, ProcessLedger, StartWindow};

mod common;

use common::Scratch;

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .unwrap()
}

fn exited_by_signal(child: &mut Child) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.signal();
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn leftover_groups_are_killed_on_open_and_reaped_ones_are_not() {
    let dir = Scratch::new("ledger-sweep");
    let path = dir.path().join("ledger");
    let (mut ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert!(sweep.killed.is_empty());
    let mut left = sleeper();
    let mut reaped = sleeper();
    ledger.record(left.id() as i32).unwrap();
    ledger.record(reaped.id() as i32).unwrap();
    ledger.forget(reaped.id() as i32).unwrap();
    drop(ledger); // the "node" dies here
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert_eq!(sweep.killed, vec![left.id() as i32]);
    assert_eq!(exited_by_signal(&mut left), Some(9));
    assert!(
        reaped.try_wait().unwrap().is_none(),
        "a forgotten group is left alone"
    );
    reaped.kill().unwrap();
    reaped.wait().unwrap();
    // The file starts afresh: opening again finds nothing.
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert!(sweep.killed.is_empty());
    assert_eq!(sweep.gone, 0);
}

#[test]
fn a_reused_pid_with_another_start_time_is_not_killed() {
    let dir = Scratch::new("ledger-reuse");
    let path = dir.path().join("ledger");
    let mut child = sleeper();
    let pid = child.id() as i32;
    let start = process_start_time(pid).unwrap().unwrap();
    // As if an older process with this pid had been recorded.
    std::fs::write(&path, format!("+ {pid} {}\n+ 999999999 1\n", start - 1)).unwrap();
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert!(sweep.killed.is_empty());
    assert_eq!(sweep.gone, 2);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the unrelated process still runs"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(process_start_time(999_999_999).unwrap(), None);
}

#[test]
fn a_torn_or_garbled_ledger_is_read_as_far_as_it_makes_sense() {
    let dir = Scratch::new("ledger-torn");
    let path = dir.path().join("ledger");
    let mut child = sleeper();
    let pid = child.id() as i32;
    let start = process_start_time(pid).unwrap().unwrap();
    let text = format!("garbage\n+ {pid} {start}\n- {pid} 7\n+ 12 1 2 3\n+ 12");
    std::fs::write(&path, text.as_bytes()).unwrap();
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert_eq!(sweep.killed, vec![pid]);
    // The garbage and the lines with a token too many are counted (and warned about); the torn
    // last line is what a kill leaves.
    assert_eq!(sweep.garbled, 3);
    assert_eq!(exited_by_signal(&mut child), Some(9));
}

/// Under load that never pauses (a group always running), the file is rewritten with the groups
/// still running every so many lines instead of growing for good: it stayed bounded only when
/// nothing ran at all, so a busy node's ledger grew by most of a megabyte a minute. After a
/// rewrite the running group is still recorded: a node killed then still has it killed.
#[test]
fn a_ledger_under_unbroken_load_stays_bounded() {
    let dir = Scratch::new("ledger-bounded");
    let path = dir.path().join("ledger");
    let (mut ledger, _) = ProcessLedger::open(&path).unwrap();
    ledger.set_compact_lines(100);
    let mut left = sleeper();
    let mut churn = sleeper();
    ledger.record(left.id() as i32).unwrap();
    let mut largest = 0;
    // The widest window line there is: 20-digit ticks.
    let wide = StartWindow {
        first: u64::MAX - 1,
        last: u64::MAX,
    };
    for _ in 0..1_000 {
        ledger.record_window(churn.id() as i32, wide).unwrap();
        ledger.forget(churn.id() as i32).unwrap();
        largest = largest.max(std::fs::metadata(&path).unwrap().len());
    }
    assert_eq!(ledger.running(), 1);
    // 100 lines of at most 56 bytes, and the rewritten running group.
    assert!(largest <= 101 * 56, "the ledger grew to {largest} bytes");
    drop(ledger); // the "node" dies here
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert_eq!(sweep.killed, vec![left.id() as i32]);
    assert_eq!(exited_by_signal(&mut left), Some(9));
    assert!(
        churn.try_wait().unwrap().is_none(),
        "a reaped group is left alone"
    );
    churn.kill().unwrap();
    churn.wait().unwrap();
}

/// A line far longer than any the ledger writes (garbage) is skipped without being read into
/// memory whole, and what follows it still counts.
#[test]
fn an_overlong_line_is_skipped() {
    let dir = Scratch::new("ledger-overlong");
    let path = dir.path().join("ledger");
    let mut child = sleeper();
    let pid = child.id() as i32;
    let start = process_start_time(pid).unwrap().unwrap();
    let mut text = "x".repeat(1 << 20);
    text.push_str(&format!("\n+ {pid} {start}\n"));
    std::fs::write(&path, text).unwrap();
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert_eq!(sweep.killed, vec![pid]);
    assert_eq!(sweep.garbled, 1);
    assert_eq!(exited_by_signal(&mut child), Some(9));
}

/// A group recorded by the boot-clock window around its spawn (what the launcher gives, with no
/// read of `/proc`) is killed when the ledger is opened again; one whose pid now belongs to a
/// process started outside the recorded window is left alone.
#[test]
fn a_group_recorded_by_its_start_window_is_killed_and_a_stranger_is_not() {
    let dir = Scratch::new("ledger-window");
    let path = dir.path().join("ledger");
    let (mut ledger, _) = ProcessLedger::open(&path).unwrap();
    let (mut left, window) = StartWindow::around(sleeper);
    let window = window.unwrap();
    let start = process_start_time(left.id() as i32).unwrap().unwrap();
    assert!(window.contains(start), "{start} outside {window:?}");
    ledger.record_window(left.id() as i32, window).unwrap();
    // A process started before the window it is recorded with: as if its pid had been reused.
    let mut stranger = sleeper();
    let stranger_start = process_start_time(stranger.id() as i32).unwrap().unwrap();
    let later = StartWindow {
        first: stranger_start + 1,
        last: stranger_start + 100,
    };
    ledger.record_window(stranger.id() as i32, later).unwrap();
    drop(ledger); // the "node" dies here
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert_eq!(sweep.killed, vec![left.id() as i32]);
    assert_eq!(sweep.gone, 1);
    assert_eq!(exited_by_signal(&mut left), Some(9));
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "a process outside the window is not signalled"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

/// A torn last line (a node killed in the middle of writing it) is not trusted: a number cut
/// short could name another process or unrecord another group. It is not counted as garbled.
#[test]
fn a_torn_last_line_is_not_trusted() {
    let dir = Scratch::new("ledger-torn-last");
    let path = dir.path().join("ledger");
    let mut child = sleeper();
    let pid = child.id() as i32;
    let start = process_start_time(pid).unwrap().unwrap();
    // Recorded whole, then a reap of it cut short: the group is still recorded as running.
    std::fs::write(&path, format!("+ {pid} {start}\n- {pid}").as_bytes()).unwrap();
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert_eq!(sweep.killed, vec![pid]);
    assert_eq!(sweep.garbled, 0);
    assert_eq!(exited_by_signal(&mut child), Some(9));
}

/// A ledger names the boot it was written in: one from before the machine's last boot is not
/// swept (its groups died with that boot, and pids and start times begin again at each boot, so
/// its windows could match processes of this one), while one of this boot is.
#[test]
fn a_ledger_from_an_earlier_boot_is_not_swept() {
    let dir = Scratch::new("ledger-boot");
    let path = dir.path().join("ledger");
    let mut child = sleeper();
    let pid = child.id() as i32;
    let start = process_start_time(pid).unwrap().unwrap();
    std::fs::write(&path, format!("boot not-this-boot\n+ {pid} {start}\n")).unwrap();
    let (ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert!(sweep.rebooted);
    assert!(sweep.killed.is_empty());
    assert_eq!(sweep.gone, 1);
    assert!(
        child.try_wait().unwrap().is_none(),
        "nothing of this boot is signalled"
    );
    drop(ledger);

    // The ledger written now names this boot: a group it records is swept.
    let this_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, format!("boot {}\n", this_boot.trim()));
    let (mut ledger, _) = ProcessLedger::open(&path).unwrap();
    ledger.record(pid).unwrap();
    drop(ledger); // the "node" dies here
    let (_ledger, sweep) = ProcessLedger::open(&path).unwrap();
    assert!(!sweep.rebooted);
    assert_eq!(sweep.killed, vec![pid]);
    assert_eq!(exited_by_signal(&mut child), Some(9));
}
