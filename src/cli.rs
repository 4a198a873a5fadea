//! The command-line client: each subcommand is one or two calls to the node's HTTP API
//! (`--api URL`, or `CADRE_API`). `-o json` prints the JSON the API returned. Exit codes: 0 ok,
//! 2 invalid input (a bad flag, or the API's 400), 1 any other error.

// By role: this file holds the client itself (its HTTP calls, how an error answer becomes a
// `CliError`), `submit.rs` `cadre submit` (flags or a spec file to a job spec), `commands.rs`
// the one-shot commands (`status`, `list`, `cancel`, `logs`, `failures`, `nodes`) and their text,
// `watch.rs` `cadre watch` (the event stream and the terminal it writes to) and `view.rs` what
// `cadre watch` draws (the live view, the event lines, the progress bar), free of I/O.

mod commands;
mod submit;
mod view;
mod watch;

use clap::ValueEnum;
use serde_json::Value;

pub use commands::{list_header, list_row, logs_note, resources_text};
pub use submit::SubmitArgs;
pub use view::{event_line, progress_bar, redraw, WatchView};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Readable text.
    #[default]
    Text,
    /// The API's JSON.
    Json,
}

/// A client failure and its exit code.
#[derive(Debug)]
pub struct CliError {
    /// 2 for invalid input, 1 otherwise.
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl CliError {
    fn invalid(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
    fn other(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

/// The client: a base URL and an output format.
pub struct Client {
    base: String,
    output: Output,
    agent: ureq::Agent,
}

struct Reply {
    status: u16,
    body: Value,
}

impl Client {
    /// A client of the API at `base`.
    pub fn new(base: &str, output: Output) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            output,
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, CliError> {
        let mut response = response.map_err(|e| {
            CliError::other(format!("cannot reach the cadre API at {}: {e}", self.base))
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::other(format!("reading the API's answer: {e}")))?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                CliError::other(format!(
                    "the API answered {status} with non-JSON ({e}): {text}"
                ))
            })?
        };
        if status >= 400 {
            if self.output == Output::Json {
                println!("{body}");
            }
            let field = body.get("field").and_then(Value::as_str).unwrap_or("-");
            let reason = body.get("reason").and_then(Value::as_str).unwrap_or("");
            let error = body.get("error").and_then(Value::as_str).unwrap_or("error");
            let mut message = format!("{error} ({status}): {field}: {reason}");
            if let Some(errors) = body.get("errors").and_then(Value::as_array) {
                for e in errors.iter().skip(1) {
                    message.push_str(&format!(
                        "\n  {}: {}",
                        e.get("field").and_then(Value::as_str).unwrap_or("-"),
                        e.get("reason").and_then(Value::as_str).unwrap_or("")
                    ));
                }
            }
            return Err(CliError {
                code: if status == 400 { 2 } else { 1 },
                message,
            });
        }
        Ok(Reply { status, body })
    }

    fn get(&self, path: &str) -> Result<Reply, CliError> {
        self.finish(self.agent.get(self.url(path)).call())
    }

    fn post(&self, path: &str, body: &Value) -> Result<Reply, CliError> {
        self.finish(self.agent.post(self.url(path)).send_json(body))
    }

    fn delete(&self, path: &str) -> Result<Reply, CliError> {
        self.finish(self.agent.delete(self.url(path)).call())
    }

    fn print_json(&self, reply: &Reply) -> bool {
        if self.output == Output::Json {
            println!("{}", reply.body);
            true
        } else {
            false
        }
    }
}
