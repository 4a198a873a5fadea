//! A cadre node with one extension callback, `finished-log`: it appends one line per finished
//! job (`<id> <state> attempt=<n>`) to a file, `$CADRE_FINISHED_LOG` or
//! `./cadre-data/finished.log`.
//!
//! Run it as a node (`cargo run --example finished_jobs_callback -- serve`) and submit jobs.
//! A second callback, `panicky`, panics when the job whose id is `$CADRE_PANIC_ON_JOB` ends (to
//! see a failing extension logged, counted and restarted while the node and the other callback
//! go on).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use cadre::actors::protocol::NodeEvent;
use cadre::runtime::Extensions;
use cadre::supervisor::{Callback, CallbackError};

struct FinishedLog {
    path: PathBuf,
}

impl Callback<NodeEvent> for FinishedLog {
    fn on_event(&mut self, event: &NodeEvent) -> Result<(), CallbackError> {
        let NodeEvent::JobState { change } = event else {
            return Ok(());
        };
        if !change.state.is_terminal() {
            return Ok(());
        }
        let line = format!(
            "{} {} attempt={}\n",
            change.job, change.state, change.attempt
        );
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// Panics when the job `job` ends.
struct Panicky {
    job: Option<u64>,
}

impl Callback<NodeEvent> for Panicky {
    #[allow(
        clippy::panic,
        reason = "the example shows a panicking callback being contained"
    )]
    fn on_event(&mut self, event: &NodeEvent) -> Result<(), CallbackError> {
        if let NodeEvent::JobState { change } = event {
            if Some(change.job.0) == self.job && change.state.is_terminal() {
                panic!("panicky callback asked to panic on job {}", change.job);
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let path = std::env::var_os("CADRE_FINISHED_LOG")
        .map_or_else(|| PathBuf::from("./cadre-data/finished.log"), PathBuf::from);
    let panic_on = std::env::var("CADRE_PANIC_ON_JOB")
        .ok()
        .and_then(|v| v.parse().ok());
    cadre::app::main(
        Extensions::new()
            .callback("finished-log", move || FinishedLog { path: path.clone() })
            .callback("panicky", move || Panicky { job: panic_on }),
    )
}
