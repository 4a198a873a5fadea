//! `cadre watch`: the API's event stream read line by line, where the watch starts from, when a
//! watched job has ended, and the screen it writes to (a line per event, or the live view
//! redrawn in place on a terminal).

use std::io::{BufRead, BufReader, IsTerminal, Write};

use cadre_actors::job::JobState;
use serde::Deserialize;
use serde_json::Value;
use terminal_size::{terminal_size_of, Height, Width};

use super::view::{event_line, redraw, WatchView};
use super::{CliError, Client, Output};

impl Client {
    /// `cadre watch [ID]`: state changes and progress as they happen.
    ///
    /// On a terminal (and without `-o json`) it keeps a live view: a row per job on a worker
    /// with its progress bar, redrawn in place, and a line of its own for each job that ends
    /// (or is lost, or queued again for a retry). Anywhere else (a pipe, a file) it prints one
    /// line per event, or the API's JSON per event with `-o json`. Without an id it starts
    /// from the jobs on workers and follows every job until interrupted; with an id it starts
    /// from that job's state and returns once the job has ended (at once if it already has),
    /// so it can wait for a job in a script.
    pub fn watch(&self, job: Option<u64>) -> Result<(), CliError> {
        let path = match job {
            Some(id) => format!("/v1/events?job={id}"),
            None => "/v1/events".to_owned(),
        };
        // Subscribed before the current state is read, so a change in between is not missed.
        let mut response = self.agent.get(self.url(&path)).call().map_err(|e| {
            CliError::other(format!("cannot reach the cadre API at {}: {e}", self.base))
        })?;
        if response.status().as_u16() >= 400 {
            return self.finish(Ok(response)).map(|_| ());
        }
        let live = self.output == Output::Text && std::io::stdout().is_terminal();
        let mut out = std::io::stdout().lock();
        let mut screen = Screen::new(live);
        for event in self.watch_start(job)? {
            screen.event(&mut out, &event, self.output)?;
            if job.is_some_and(|id| ends(&event, id)) {
                return screen.flush(&mut out);
            }
        }
        screen.flush(&mut out)?;
        let mut reader = BufReader::new(response.body_mut().as_reader());
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| CliError::other(format!("event stream: {e}")))?;
            if n == 0 {
                break;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                let event: Value = serde_json::from_str(data)
                    .map_err(|e| CliError::other(format!("event stream: {e}: {data}")))?;
                screen.event(&mut out, &event, self.output)?;
                if job.is_some_and(|id| ends(&event, id)) {
                    return screen.flush(&mut out);
                }
                // The stream fell behind and dropped events: the watched job's end may be
                // among them, so its state is read again.
                if let (Some(id), Some(_)) = (job, event.get("missed")) {
                    for event in self.watch_start(Some(id))? {
                        screen.event(&mut out, &event, self.output)?;
                        if ends(&event, id) {
                            return screen.flush(&mut out);
                        }
                    }
                }
            }
            // Redraw once caught up with the stream (checked after every line, the blank one
            // that ends an event included), or every 100 ms while it floods.
            if reader.buffer().is_empty() || screen.due() {
                screen.flush(&mut out)?;
            }
        }
        screen.flush(&mut out)?;
        match job {
            Some(id) => Err(CliError::other(format!(
                "the node at {} closed the event stream before job {id} ended",
                self.base
            ))),
            None => Ok(()),
        }
    }

    /// Where `cadre watch` starts: the job's current state, or the jobs on workers (leased and
    /// running), as events without a time (`at_ms`).
    fn watch_start(&self, job: Option<u64>) -> Result<Vec<Value>, CliError> {
        let as_event = |j: &Value| serde_json::json!({"job": j["id"], "state": j["state"], "attempt": j["attempt"]});
        if let Some(id) = job {
            let reply = self.get(&format!("/v1/jobs/{id}"))?;
            return Ok(vec![as_event(&reply.body)]);
        }
        let mut events = Vec::new();
        for state in ["running", "leased"] {
            let reply = self.get(&format!("/v1/jobs?state={state}&limit={WATCH_ROWS}"))?;
            let Some(jobs) = reply.body["jobs"].as_array() else {
                return Err(CliError::other(format!(
                    "the API listed {state} jobs without a jobs array: {}",
                    reply.body
                )));
            };
            events.extend(jobs.iter().map(as_event));
        }
        Ok(events)
    }
}

/// The most jobs `cadre watch` draws rows for; the rest are counted on one line.
const WATCH_ROWS: usize = 20;

/// Whether `event` says job `id` ended.
fn ends(event: &Value, id: u64) -> bool {
    event["job"].as_u64() == Some(id)
        && event.get("progress").is_none()
        && matches!(JobState::deserialize(&event["state"]), Ok(state) if state.is_terminal())
}

/// Where `cadre watch` writes: lines as events come, or the live view on a terminal.
struct Screen {
    live: bool,
    view: WatchView,
    kept: Vec<String>,
    drawn: usize,
    dirty: bool,
    last_draw: tokio::time::Instant,
}

impl Screen {
    fn new(live: bool) -> Screen {
        Screen {
            live,
            view: WatchView::new(),
            kept: Vec::new(),
            drawn: 0,
            dirty: false,
            last_draw: tokio::time::Instant::now(),
        }
    }

    /// How wide a row may be and how many job rows fit, read from the terminal at each frame
    /// (it may be resized). A row must not wrap and the view must fit the screen, or redrawing
    /// in place goes wrong. Where the size cannot be read: `COLUMNS` if the shell exports it,
    /// else 80 columns, and 20 rows.
    fn size() -> (usize, usize) {
        if let Some((Width(columns), Height(lines))) = terminal_size_of(std::io::stdout()) {
            // One column spare; two lines spare (the count line and the cursor's own).
            let width = usize::from(columns).max(20) - 1;
            let rows = usize::from(lines).saturating_sub(2).clamp(1, WATCH_ROWS);
            return (width, rows);
        }
        let width = match std::env::var("COLUMNS").map(|c| c.trim().parse::<usize>()) {
            Ok(Ok(columns)) if columns >= 20 => columns - 1,
            // Not exported, or not a usable number.
            _ => 79,
        };
        (width, WATCH_ROWS)
    }

    fn event(
        &mut self,
        out: &mut impl Write,
        event: &Value,
        output: Output,
    ) -> Result<(), CliError> {
        if !self.live {
            let line = match output {
                Output::Json => event.to_string(),
                Output::Text => event_line(event),
            };
            return writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| CliError::other(format!("writing to stdout: {e}")));
        }
        let kept = self
            .view
            .apply(event)
            .map_err(|e| CliError::other(format!("event stream: {e}")))?;
        self.kept.extend(kept);
        self.dirty = true;
        Ok(())
    }

    fn due(&self) -> bool {
        self.dirty && self.last_draw.elapsed() >= std::time::Duration::from_millis(100)
    }

    fn flush(&mut self, out: &mut impl Write) -> Result<(), CliError> {
        if !self.live || !self.dirty {
            return Ok(());
        }
        let (width, max_rows) = Screen::size();
        let rows = self.view.rows(max_rows, width);
        let frame = redraw(self.drawn, &self.kept, &rows);
        out.write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| CliError::other(format!("writing to stdout: {e}")))?;
        self.kept.clear();
        self.drawn = rows.len();
        self.dirty = false;
        self.last_draw = tokio::time::Instant::now();
        Ok(())
    }
}
