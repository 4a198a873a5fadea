//! The logs route: a task's stdout or stderr, its last `tail` bytes (1 MiB by default), or
//! followed as it grows until the job ends. Every read goes in bounded chunks, so a request
//! never holds a log in memory; a stream that passed its cap reads as its head, a marker line
//! saying how much was dropped, and its tail.
//!
//! Following a job that has not started yet waits for it to start (and ends, empty, if it ends
//! without starting), as `tail -f` waits for a file.

use std::path::PathBuf;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use cadre_actors::job::JobId;
use cadre_actors::scheduler::GetJob;
use cadre_actors::worker::task_log_paths;
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use super::{actors_error, fail, mailbox, parse_id, ApiState};

/// How often a follower of a job that has not started looks again.
const START_POLL: Duration = Duration::from_millis(100);

/// Query of the logs route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    stream: Option<String>,
    task: Option<u32>,
    tail: Option<u64>,
    follow: Option<bool>,
}

fn text(
    stream: impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(stream)
}

fn read_failed(e: impl std::fmt::Display) -> web::Bytes {
    web::Bytes::from(format!("\n[cadre: log read failed: {e}]\n"))
}

pub(super) async fn logs(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> HttpResponse {
    const ROUTE: &str = "logs";
    let id = match parse_id(ROUTE, &path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let job = match state.scheduler.send(GetJob(id)).await {
        Ok(Ok(view)) => view,
        Ok(Err(e)) => return actors_error(ROUTE, e),
        Err(e) => return mailbox(ROUTE, e),
    };
    let (out, err) = task_log_paths(&state.log_dir, id, query.task.unwrap_or(0));
    let file = match query.stream.as_deref().unwrap_or("stdout") {
        "stdout" => out,
        "stderr" => err,
        other => {
            return fail(
                StatusCode::BAD_REQUEST,
                ROUTE,
                "invalid input",
                Some("stream"),
                format!("{other:?} is not stdout or stderr"),
            )
        }
    };
    let follow = query.follow == Some(true) && !job.state.is_terminal();
    if !follow {
        if !file.exists() {
            return text(futures_util::stream::empty());
        }
        let tail = query.tail.unwrap_or(1 << 20);
        return match state.log_reader.tail(&file, tail).await {
            // Streamed chunk by chunk: the tail is never held whole in memory.
            Ok(chunks) => text(futures_util::stream::unfold(
                Some(chunks),
                |chunks| async move {
                    let mut chunks = chunks?;
                    match chunks.next_chunk().await {
                        Ok(Some(chunk)) => Some((Ok(web::Bytes::from(chunk)), Some(chunks))),
                        Ok(None) => None,
                        Err(e) => Some((Ok(read_failed(e)), None)),
                    }
                },
            )),
            Err(e) => fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                ROUTE,
                "log read failed",
                Some("stream"),
                e.to_string(),
            ),
        };
    }
    text(follow_stream(state.into_inner(), id, file))
}

/// Where a follow is.
enum Follow {
    /// The job has not started: wait for its log.
    Waiting,
    Reading(cadre_cpu::launcher::LogFollower),
}

/// Waits until the job's log exists (true) or the job ended without one (false).
async fn wait_for_start(state: &ApiState, id: JobId, file: &std::path::Path) -> bool {
    loop {
        if file.exists() {
            return true;
        }
        match state.scheduler.send(GetJob(id)).await {
            Ok(Ok(view)) if view.state.is_terminal() => return file.exists(),
            Ok(Ok(_)) => {}
            // Gone (pruned) or the scheduler is restarting: nothing more to follow.
            _ => return file.exists(),
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// Raises the flag once the job has ended (its events say so, or its state when events were
/// missed), so the follower reads what is left and stops.
fn watch_end(state: &ApiState, id: JobId) -> watch::Receiver<bool> {
    let (done_tx, done_rx) = watch::channel(false);
    let mut events = state.events.subscribe();
    let scheduler = state.scheduler.clone();
    actix_rt::spawn(async move {
        loop {
            let ended = tokio::select! {
                event = events.recv() => match event {
                    Ok(e) => e.job == id && e.state.is_terminal(),
                    Err(broadcast::error::RecvError::Lagged(_)) => false,
                    Err(broadcast::error::RecvError::Closed) => true,
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    matches!(scheduler.send(GetJob(id)).await, Ok(Ok(v)) if v.state.is_terminal())
                }
                () = done_tx.closed() => return,
            };
            if ended {
                if done_tx.send(true).is_err() {
                    tracing::debug!(job = %id, "log follower left before the job ended");
                }
                return;
            }
        }
    });
    done_rx
}

fn follow_stream(
    state: std::sync::Arc<ApiState>,
    id: JobId,
    file: PathBuf,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    futures_util::stream::unfold(Some(Follow::Waiting), move |at| {
        let state = std::sync::Arc::clone(&state);
        let file = file.clone();
        async move {
            let mut follower = match at? {
                Follow::Reading(follower) => follower,
                Follow::Waiting => {
                    if !wait_for_start(&state, id, &file).await {
                        return None;
                    }
                    // A job that already ended while we waited: read all that is there.
                    let done = watch_end(&state, id);
                    match state.log_reader.follow(&file, 0, done) {
                        Ok(f) => f,
                        Err(e) => return Some((Ok(read_failed(e)), None)),
                    }
                }
            };
            match follower.next_chunk().await {
                Ok(Some(chunk)) => {
                    Some((Ok(web::Bytes::from(chunk)), Some(Follow::Reading(follower))))
                }
                Ok(None) => None,
                Err(e) => Some((Ok(read_failed(e)), None)),
            }
        }
    })
}
