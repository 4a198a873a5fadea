//! End to end: the `cadre` binary runs the demo tree, restarts the failing worker, disables the
//! broken callback, stops in order and prints the failure journal; bad input exits with 2.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn cadre() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cadre"))
}

#[test]
fn demo_runs_a_real_tree_and_prints_its_failures() {
    let out = cadre()
        .args(["demo", "--seconds", "3"])
        .env("CADRE_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("cadre/ticker kind=fatal"), "{stdout}");
    assert!(
        stdout.contains("cadre/callbacks/flaky kind=panic"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cadre/callbacks/flaky kind=disabled"),
        "{stdout}"
    );
    assert!(stderr.contains("restarting child"), "{stderr}");
    assert!(stderr.contains("tick delivered"), "{stderr}");
}

#[test]
fn bad_arguments_exit_with_2_and_name_the_problem() {
    let out = cadre()
        .args(["demo", "--seconds", "zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds"));
    let out = cadre().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
