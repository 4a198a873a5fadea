//! The CLI's pure pieces: the progress bar `cadre watch` draws, and its exit code for a flag
//! it refuses without asking the API.

use cadre::cli::progress_bar;

#[test]
fn the_progress_bar_fills_in_proportion_and_clamps() {
    assert_eq!(progress_bar(0.5, 10), "[#####.....]  50%");
    assert_eq!(progress_bar(0.0, 4), "[....]   0%");
    assert_eq!(progress_bar(1.0, 4), "[####] 100%");
    assert_eq!(progress_bar(7.0, 4), "[####] 100%");
    assert_eq!(progress_bar(f64::NAN, 4), "[....]   0%");
}

#[test]
fn an_invalid_flag_is_exit_code_2_and_help_is_0() {
    let bin = env!("CARGO_BIN_EXE_cadre");
    let out = std::process::Command::new(bin)
        .args(["submit", "--priority", "x", "--", "/bin/true"])
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
    // A client command with no node to talk to is an ordinary error, exit 1.
    let out = std::process::Command::new(bin)
        .args(["--api", "http://127.0.0.1:9", "status", "1"])
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(1));
}
