//! The logs route: a task's stdout or stderr, its last `tail` bytes (1 MiB by default), or
//! followed as it grows until the job ends. Every read goes in bounded chunks, so a request
//! never holds a log in memory; a stream that passed its cap reads as its head, a marker line
//! saying how much was dropped, and its tail.
//!
//! Following a job that has not started yet waits for it to start (and ends, empty, if it ends
//! without starting), as `tail -f` waits for a file.
//!
//! A task that runs or ran on an agent (the job's `nodes` name another node than this one's
//! worker) is read from that agent over the cluster connection, in bounded chunks
//! ([`super::remote_logs`]); an agent that is not connected is a 503 saying so.

use std::path::PathBuf;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use cadre_actors::job::JobId;
use cadre_actors::scheduler::{GetJob, JobView};
use cadre_actors::worker::task_log_paths;
use cadre_wire::LogStream;
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

pub(super) fn text(
    stream: impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(stream)
}

pub(super) fn read_failed(e: impl std::fmt::Display) -> web::Bytes {
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
    let task = query.task.unwrap_or(0);
    let (out, err) = task_log_paths(&state.log_dir, id, task);
    let (file, stream) = match query.stream.as_deref().unwrap_or("stdout") {
        "stdout" => (out, LogStream::Stdout),
        "stderr" => (err, LogStream::Stderr),
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
    let at = Where {
        job: id,
        task,
        stream,
        file,
    };
    if let Some(node) = remote_node(&state, &job, task) {
        return if follow {
            super::remote_logs::follow(state.into_inner(), node, at).await
        } else {
            super::remote_logs::tail(state.into_inner(), node, at, query.tail.unwrap_or(1 << 20))
                .await
        };
    }
    let file = at.file.clone();
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
    text(follow_stream(state.into_inner(), at))
}

/// The log a request reads: a task's stream, and its file should it be on this node.
#[derive(Debug, Clone)]
pub(super) struct Where {
    pub(super) job: JobId,
    pub(super) task: u32,
    pub(super) stream: LogStream,
    pub(super) file: PathBuf,
}

/// The agent whose files hold the task's log, when not this node's worker: the node its latest
/// attempt was placed on (none before it was placed, or where that was not recorded).
fn remote_node(state: &ApiState, job: &JobView, task: u32) -> Option<String> {
    let node = job.nodes.get(task as usize).filter(|n| !n.is_empty())?;
    (!(state.local_worker && *node == state.node_name)).then(|| node.clone())
}

/// Where a follow is.
enum Follow {
    /// The job has not started: wait for its log.
    Waiting,
    Reading(cadre_cpu::launcher::LogFollower),
    Remote(super::remote_logs::Following),
}

/// How a follow starts, once the job has.
enum Start {
    /// The log is this node's file.
    Local,
    /// The log is on this agent.
    Remote(String),
    /// The job ended without a log.
    Nothing,
}

/// Waits until the job's log exists here, or it is placed on an agent, or it ended without a
/// log.
async fn wait_for_start(state: &ApiState, at: &Where) -> Start {
    let local = || {
        if at.file.exists() {
            Start::Local
        } else {
            Start::Nothing
        }
    };
    loop {
        // Where the job's latest attempt is placed first: a local file may be an earlier
        // attempt's.
        match state.scheduler.send(GetJob(at.job)).await {
            Ok(Ok(view)) => {
                if let Some(node) = remote_node(state, &view, at.task) {
                    return Start::Remote(node);
                }
                if at.file.exists() {
                    return Start::Local;
                }
                if view.state.is_terminal() {
                    return local();
                }
            }
            // Gone (pruned) or the scheduler is restarting: nothing more to follow.
            _ => return local(),
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// Whether the job has ended (or is gone, so nothing more will be written for it); a
/// scheduler that cannot answer now (restarting) has not said so.
pub(super) async fn job_ended(state: &ApiState, id: JobId) -> bool {
    match state.scheduler.send(GetJob(id)).await {
        Ok(Ok(view)) => view.state.is_terminal(),
        Ok(Err(cadre_actors::Error::UnknownJob { .. } | cadre_actors::Error::Pruned { .. })) => {
            true
        }
        Ok(Err(error)) => {
            tracing::debug!(job = %id, %error, "a follower could not learn whether its job ended; it asks again");
            false
        }
        Err(error) => {
            tracing::debug!(job = %id, %error, "a follower could not reach the scheduler; it asks again");
            false
        }
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
    at: Where,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    futures_util::stream::unfold(Some(Follow::Waiting), move |follow| {
        let state = std::sync::Arc::clone(&state);
        let at = at.clone();
        async move {
            let mut follower = match follow? {
                Follow::Reading(follower) => follower,
                Follow::Remote(remote) => {
                    return remote
                        .next_chunk(&state)
                        .await
                        .map(|(chunk, next)| (Ok(chunk), next.map(Follow::Remote)));
                }
                Follow::Waiting => match wait_for_start(&state, &at).await {
                    Start::Nothing => return None,
                    Start::Remote(node) => {
                        let remote = super::remote_logs::Following::new(node, at);
                        return remote
                            .next_chunk(&state)
                            .await
                            .map(|(chunk, next)| (Ok(chunk), next.map(Follow::Remote)));
                    }
                    Start::Local => {
                        // A job that already ended while we waited: read all that is there.
                        let done = watch_end(&state, at.job);
                        match state.log_reader.follow(&at.file, 0, done) {
                            Ok(f) => f,
                            Err(e) => return Some((Ok(read_failed(e)), None)),
                        }
                    }
                },
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
