//! The CLI's pure pieces: the progress bar and the live view `cadre watch` draws, the rows of
//! `cadre list`, what `cadre status` says of resources and of output not kept whole, and its
//! exit code for a flag it refuses without asking the API.

use cadre::cli::{
    event_line, list_header, list_row, logs_note, progress_bar, redraw, resources_text, WatchView,
};
use serde_json::json;

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

#[test]
fn the_watch_view_keeps_a_row_per_job_on_a_worker_and_lets_ended_jobs_go() {
    let mut view = WatchView::new();
    // A first queueing is not news; leasing makes a row.
    assert_eq!(
        view.apply(&json!({"job": 7, "state": "queued", "attempt": 1})),
        Ok(None)
    );
    assert!(view.rows(20, 79).is_empty());
    assert_eq!(
        view.apply(&json!({"job": 7, "state": "leased", "attempt": 1})),
        Ok(None)
    );
    assert_eq!(
        view.apply(&json!({"job": 3, "state": "running", "attempt": 1})),
        Ok(None)
    );
    let progress = json!({"job": 7, "state": "running", "attempt": 1,
        "progress": {"task": 0, "fraction": 0.5, "message": "block 2 of 4"}});
    assert_eq!(view.apply(&progress), Ok(None));
    assert_eq!(
        view.rows(20, 79),
        vec![
            "job        3  running   ".to_owned(),
            "job        7  running     [##########..........]  50%  block 2 of 4".to_owned(),
        ]
    );
    // Ending: the row goes and the end is a line of its own.
    assert_eq!(
        view.apply(&json!({"job": 7, "state": "succeeded", "attempt": 1})),
        Ok(Some("job        7  succeeded   attempt 1".to_owned()))
    );
    assert_eq!(view.rows(20, 79).len(), 1);
    // A loss is kept as a line, the retry's queueing too (it is news), and the next attempt's
    // row starts without the old attempt's progress.
    let p3 = json!({"job": 3, "state": "running", "attempt": 1,
        "progress": {"task": 0, "fraction": 0.9}});
    assert_eq!(view.apply(&p3), Ok(None));
    assert!(view
        .apply(&json!({"job": 3, "state": "lost", "attempt": 1}))
        .unwrap()
        .is_some_and(|l| l.contains("lost")));
    assert!(view
        .apply(&json!({"job": 3, "state": "queued", "attempt": 2}))
        .unwrap()
        .is_some_and(|l| l.contains("queued") && l.contains("attempt 2")));
    assert!(view.rows(20, 79).is_empty());
    assert_eq!(
        view.apply(&json!({"job": 3, "state": "running", "attempt": 2})),
        Ok(None)
    );
    assert_eq!(
        view.rows(20, 79),
        vec!["job        3  running   ".to_owned()]
    );
}

#[test]
fn the_watch_view_averages_a_gang_caps_its_rows_and_refuses_a_malformed_event() {
    let mut view = WatchView::new();
    for (task, fraction) in [(0, 0.25), (1, 0.75)] {
        let e = json!({"job": 1, "state": "running", "attempt": 1,
            "progress": {"task": task, "fraction": fraction}});
        assert_eq!(view.apply(&e), Ok(None));
    }
    assert_eq!(
        view.rows(20, 79),
        vec!["job        1  running     [##########..........]  50%  2 tasks".to_owned()]
    );
    for job in 2..=5 {
        assert_eq!(
            view.apply(&json!({"job": job, "state": "running", "attempt": 1})),
            Ok(None)
        );
    }
    let rows = view.rows(3, 79);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3], "... and 2 more jobs on workers");
    assert_eq!(view.rows(4, 79)[4], "... and 1 more job on workers");
    // Every row fits the width, so redrawing in place never wraps.
    assert!(view.rows(20, 12).iter().all(|r| r.chars().count() <= 12));
    assert!(view.apply(&json!({"state": "running"})).is_err());
    assert!(view.apply(&json!({"job": 9, "attempt": 1})).is_err());
    assert!(view.apply(&json!({"job": 9, "state": "running"})).is_err());
    let no_fraction = json!({"job": 9, "state": "running", "attempt": 1, "progress": {"task": 0}});
    assert!(view.apply(&no_fraction).is_err());
    // Nothing of a refused event is kept.
    assert!(!view.rows(20, 79).iter().any(|r| r.contains("job        9")));
    assert_eq!(
        view.apply(&json!({"missed": 12})),
        Ok(Some("(fell behind: 12 events missed)".to_owned()))
    );
}

#[test]
fn a_redraw_goes_up_over_the_last_view_and_clears_what_is_left() {
    let kept = vec!["job 1 succeeded".to_owned()];
    let rows = vec!["row a".to_owned(), "row b".to_owned()];
    assert_eq!(
        redraw(3, &kept, &rows),
        "\x1b[3A\r\x1b[2Kjob 1 succeeded\n\x1b[2Krow a\n\x1b[2Krow b\n\x1b[J"
    );
    // The first frame moves nowhere.
    assert_eq!(redraw(0, &[], &rows[..1]), "\x1b[2Krow a\n\x1b[J");
}

#[test]
fn an_event_off_a_terminal_is_one_line() {
    assert_eq!(
        event_line(&json!({"job": 4, "state": "failed", "attempt": 2})),
        "job        4  failed      attempt 2"
    );
    assert_eq!(
        event_line(&json!({"job": 4, "state": "running", "attempt": 1,
            "progress": {"task": 1, "fraction": 1.0, "message": "done"}})),
        format!("job        4  task 1   {}  done", progress_bar(1.0, 30))
    );
}

#[test]
fn a_progress_note_cannot_drive_the_terminal() {
    let mut view = WatchView::new();
    let sneaky = json!({"job": 1, "state": "running", "attempt": 1,
        "progress": {"task": 0, "fraction": 0.0, "message": "a\u{1b}[2Jb\nc"}});
    assert_eq!(view.apply(&sneaky), Ok(None));
    let rows = view.rows(20, 79);
    assert!(rows[0].ends_with("a [2Jb c"), "{rows:?}");
    assert!(!rows[0].chars().any(char::is_control));
    assert!(!event_line(&sneaky).chars().any(char::is_control));
}

/// A JSON value's own formatting ignores widths: ids and attempts printed through it left the
/// columns ragged.
#[test]
fn list_rows_line_up_with_the_header_whatever_the_widths() {
    let header = list_header();
    let state_at = header.find("STATE").unwrap();
    for (id, attempt) in [(1, 1), (12, 3), (123_456, 10)] {
        let row = list_row(&json!({"id": id, "state": "running", "attempt": attempt, "name": "x"}));
        assert_eq!(row.find("running"), Some(state_at), "{header}\n{row}");
        assert_eq!(row.len(), header.len() - "NAME".len() + 1, "{row}");
    }
}

#[test]
fn status_names_what_a_job_reserves_and_output_not_kept_whole() {
    assert_eq!(
        resources_text(&json!({"cpu_millis": 1500, "memory_bytes": 0, "gpus": 1})),
        "1.5 CPU (1500 millicores), no memory limit, 1 GPU(s)"
    );
    assert!(
        resources_text(&json!({"cpu_millis": 0, "memory_bytes": 5, "gpus": 0}))
            .starts_with("no CPU reserved")
    );
    assert_eq!(logs_note(&json!({"exit_code": 0, "logs": null})), None);
    assert_eq!(logs_note(&json!({"exit_code": 0})), None);
    let note =
        logs_note(&json!({"logs": {"dropped_bytes": 7, "write_error": "disk full"}})).unwrap();
    assert!(
        note.contains("7 bytes of output dropped") && note.contains("disk full"),
        "{note}"
    );
}
