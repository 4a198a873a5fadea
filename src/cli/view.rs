//! What `cadre watch` draws, free of I/O: the live view (a row per job on a worker), one event as
//! a line, the progress bar, and the bytes that redraw the view in place.

use std::collections::BTreeMap;

use cadre_actors::job::JobState;
use serde::Deserialize;
use serde_json::Value;

/// `[#########.....]  62%` for a fraction of 0.0 ..= 1.0, `width` marks wide.
pub fn progress_bar(fraction: f64, width: usize) -> String {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let done = (fraction * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(done),
        ".".repeat(width - done),
        fraction * 100.0
    )
}

/// One event as `cadre watch` prints it off a terminal.
pub fn event_line(event: &Value) -> String {
    if let Some(missed) = event.get("missed") {
        return format!("(fell behind: {missed} events missed)");
    }
    // As plain strings (a JSON value's Display ignores widths); a field that is not the text
    // this expects is shown as the JSON that came.
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), printable);
    let job = event["job"].to_string();
    match event["progress"]["fraction"].as_f64() {
        Some(fraction) => {
            let message = &event["progress"]["message"];
            format!(
                "job {job:>8}  task {:<3} {}  {}",
                event["progress"]["task"].to_string(),
                progress_bar(fraction, 30),
                if message.is_null() {
                    String::new()
                } else {
                    text(message)
                }
            )
        }
        None => format!(
            "job {job:>8}  {:<10}  attempt {}",
            text(&event["state"]),
            event["attempt"]
        ),
    }
}

/// The live view of `cadre watch` on a terminal: a row per job on a worker (leased, running or
/// lost) with its progress; a job that ends leaves the view as a line of its own.
#[derive(Debug, Default)]
pub struct WatchView {
    jobs: BTreeMap<u64, WatchRow>,
}

#[derive(Debug)]
struct WatchRow {
    state: JobState,
    attempt: u64,
    /// Each task's latest progress: fraction and note.
    tasks: BTreeMap<u64, (f64, String)>,
}

impl WatchView {
    /// An empty view.
    pub fn new() -> WatchView {
        WatchView::default()
    }

    /// Applies one event of the API's stream. Returns the line to keep above the view: a job
    /// that ended, was lost or was queued again for a retry, or events the stream skipped.
    /// An event without a job id is an error: the stream is not what this client expects.
    pub fn apply(&mut self, event: &Value) -> Result<Option<String>, String> {
        if event.get("missed").is_some() {
            return Ok(Some(event_line(event)));
        }
        let field = |value: &Value, name: &str| {
            value
                .get(name)
                .cloned()
                .ok_or_else(|| format!("an event without {name}: {event}"))
        };
        let job = field(event, "job")?
            .as_u64()
            .ok_or_else(|| format!("an event whose job is not an id: {event}"))?;
        let state = JobState::deserialize(&field(event, "state")?)
            .map_err(|e| format!("an event whose state is not a job state ({e}): {event}"))?;
        let attempt = field(event, "attempt")?
            .as_u64()
            .ok_or_else(|| format!("an event whose attempt is not a number: {event}"))?;
        if let Some(progress) = event.get("progress") {
            let task = field(progress, "task")?
                .as_u64()
                .ok_or_else(|| format!("progress whose task is not an index: {event}"))?;
            let fraction = field(progress, "fraction")?
                .as_f64()
                .ok_or_else(|| format!("progress whose fraction is not a number: {event}"))?;
            // The note is optional; whatever it holds is shown as text, never as terminal
            // control sequences.
            let note = progress
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(String::new, printable);
            let row = self.row(job, state, attempt);
            row.tasks.insert(task, (fraction, note));
            return Ok(None);
        }
        if state.is_terminal() {
            self.jobs.remove(&job);
            return Ok(Some(event_line(event)));
        }
        match state {
            JobState::Queued => {
                self.jobs.remove(&job);
                // A first queueing is noise when thousands are submitted; a retry is news.
                Ok((attempt > 1).then(|| event_line(event)))
            }
            JobState::Lost => {
                self.row(job, state, attempt);
                Ok(Some(event_line(event)))
            }
            _ => {
                self.row(job, state, attempt);
                Ok(None)
            }
        }
    }

    fn row(&mut self, job: u64, state: JobState, attempt: u64) -> &mut WatchRow {
        let row = self.jobs.entry(job).or_insert_with(|| WatchRow {
            state,
            attempt,
            tasks: BTreeMap::new(),
        });
        if row.attempt != attempt {
            // A new attempt starts from nothing.
            row.tasks.clear();
            row.attempt = attempt;
        }
        row.state = state;
        row
    }

    /// The rows to draw, each at most `width` characters: up to `max_rows` jobs in id order,
    /// then one line counting the rest. A job's bar is its tasks' mean progress.
    pub fn rows(&self, max_rows: usize, width: usize) -> Vec<String> {
        let mut rows: Vec<String> = self
            .jobs
            .iter()
            .take(max_rows)
            .map(|(job, row)| {
                let mut text = format!("job {job:>8}  {:<10}", row.state.as_str());
                if !row.tasks.is_empty() {
                    let n = row.tasks.len();
                    let mean = row.tasks.values().map(|(f, _)| f).sum::<f64>() / n as f64;
                    text.push_str(&format!("  {}", progress_bar(mean, 20)));
                    if n > 1 {
                        text.push_str(&format!("  {n} tasks"));
                    } else if let Some((_, note)) = row.tasks.values().next() {
                        if !note.is_empty() {
                            text.push_str(&format!("  {note}"));
                        }
                    }
                }
                truncate(&text, width)
            })
            .collect();
        if self.jobs.len() > max_rows {
            rows.push(truncate(
                &match self.jobs.len() - max_rows {
                    1 => "... and 1 more job on workers".to_owned(),
                    n => format!("... and {n} more jobs on workers"),
                },
                width,
            ));
        }
        rows
    }
}

/// `text` with every control character (escape sequences, newlines, tabs) as a space, so what a
/// workload reports cannot move the cursor or restyle the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to at most `width` characters.
fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// The bytes that redraw the live view: up over the `previous` rows drawn last time, the
/// `kept` lines (which scroll away above the view), the new `rows`, and clear what is left of
/// the old view below them.
pub fn redraw(previous: usize, kept: &[String], rows: &[String]) -> String {
    let mut s = String::new();
    if previous > 0 {
        s.push_str(&format!("\x1b[{previous}A\r"));
    }
    for line in kept.iter().chain(rows) {
        s.push_str("\x1b[2K");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("\x1b[J");
    s
}
