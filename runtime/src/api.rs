//! The HTTP/JSON API under `/v1`, plus `/healthz` and `/readyz`.
//!
//! Errors are `{"error": ..., "field": ..., "reason": ...}` with a fitting status (400 invalid
//! input, 404 unknown job, 409 wrong state, 413 body too large, 503 not ready or draining, 500
//! the node failed); an invalid spec also lists every violated field in `errors`. Specs are
//! validated here, before the scheduler sees them, so nothing invalid is stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use cadre_actors::job::{FieldError, JobId, JobSpec, JobState, Limits};
use cadre_actors::protocol::JobEvent;
use cadre_actors::scheduler::{
    CancelJob, CancelOutcome, GetJob, ListJobs, Nodes, Ready, Scheduler, Submit,
};
use cadre_actors::worker::WorkerConfig;
use cadre_cpu::launcher::LogReader;
use cadre_supervisor::FailureJournal;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::error::Error;
use crate::registry::NodeRegistry;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The scheduler.
    pub scheduler: Addr<Scheduler>,
    /// Validation's view of the node.
    pub registry: Arc<NodeRegistry>,
    /// Validation limits.
    pub limits: Limits,
    /// The supervision tree's failure journal.
    pub failures: FailureJournal,
    /// Job events.
    pub events: broadcast::Sender<JobEvent>,
    /// The worker's settings (for log paths).
    pub worker: Arc<WorkerConfig>,
    /// Jobs one batch may hold.
    pub max_batch_jobs: usize,
    /// Reads job logs.
    pub log_reader: LogReader,
    /// The largest request body taken, in bytes.
    pub max_body_bytes: usize,
}

/// An error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// What failed, in a few words.
    pub error: String,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// Why.
    pub reason: String,
    /// Every violated field of an invalid spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

fn fail(
    status: StatusCode,
    route: &'static str,
    error: &str,
    field: Option<&str>,
    reason: impl Into<String>,
) -> HttpResponse {
    let reason = reason.into();
    metrics::counter!("cadre_api_errors_total", "route" => route, "status" => status.as_str().to_owned()).increment(1);
    if status.is_server_error() {
        tracing::error!(route, status = status.as_u16(), error, field, %reason, "API request failed");
    } else {
        tracing::debug!(route, status = status.as_u16(), error, field, %reason, "API request refused");
    }
    HttpResponse::build(status).json(ApiError {
        error: error.to_owned(),
        field: field.map(str::to_owned),
        reason,
        errors: Vec::new(),
    })
}

fn actors_error(route: &'static str, error: cadre_actors::Error) -> HttpResponse {
    use cadre_actors::Error as E;
    match &error {
        E::UnknownJob { .. } => fail(
            StatusCode::NOT_FOUND,
            route,
            "unknown job",
            Some("id"),
            error.to_string(),
        ),
        E::Conflict { .. } => fail(
            StatusCode::CONFLICT,
            route,
            "wrong state",
            Some("state"),
            error.to_string(),
        ),
        E::Unavailable { .. } | E::Mailbox { .. } => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            route,
            "unavailable",
            None,
            error.to_string(),
        ),
        _ => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            route,
            "internal",
            None,
            error.to_string(),
        ),
    }
}

fn mailbox(route: &'static str, error: actix::MailboxError) -> HttpResponse {
    fail(
        StatusCode::SERVICE_UNAVAILABLE,
        route,
        "unavailable",
        None,
        format!("the scheduler did not answer ({error}); it may be restarting"),
    )
}

#[allow(
    clippy::result_large_err,
    reason = "the refusal is the response the handler returns at once"
)]
fn parse_id(route: &'static str, raw: &str) -> Result<JobId, HttpResponse> {
    raw.parse::<u64>().map(JobId).map_err(|_| {
        fail(
            StatusCode::BAD_REQUEST,
            route,
            "invalid input",
            Some("id"),
            format!("{raw:?} is not a job id (a positive integer)"),
        )
    })
}

/// The field a serde error names (`missing field `name``, `unknown field `x``), if any.
fn serde_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

fn parse_spec(value: serde_json::Value, prefix: &str) -> Result<JobSpec, FieldError> {
    serde_json::from_value::<JobSpec>(value).map_err(|e| {
        let message = e.to_string();
        let field = serde_field(&message).unwrap_or_else(|| "body".to_owned());
        FieldError {
            field: format!("{prefix}{field}"),
            reason: message,
        }
    })
}

/// Reads a request body of at most `limit` bytes; a larger one is refused with 413 (JSON).
async fn read_body(
    route: &'static str,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, HttpResponse> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            fail(
                StatusCode::BAD_REQUEST,
                route,
                "invalid body",
                Some("body"),
                e.to_string(),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                route,
                "body too large",
                Some("body"),
                format!("request bodies are limited to {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn submit(state: web::Data<ApiState>, payload: web::Payload) -> HttpResponse {
    const ROUTE: &str = "submit";
    let body = match read_body(ROUTE, payload, state.max_body_bytes).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                ROUTE,
                "invalid JSON",
                Some("body"),
                e.to_string(),
            )
        }
    };
    let (batch, items) = match value {
        serde_json::Value::Array(items) => (true, items),
        serde_json::Value::Object(mut map) if map.contains_key("jobs") => {
            match map.remove("jobs") {
                Some(serde_json::Value::Array(items)) => (true, items),
                _ => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        ROUTE,
                        "invalid input",
                        Some("jobs"),
                        "must be an array of job specs",
                    )
                }
            }
        }
        other => (false, vec![other]),
    };
    if items.is_empty() {
        return fail(
            StatusCode::BAD_REQUEST,
            ROUTE,
            "invalid input",
            Some("jobs"),
            "holds no job",
        );
    }
    if items.len() > state.max_batch_jobs {
        return fail(
            StatusCode::BAD_REQUEST,
            ROUTE,
            "invalid input",
            Some("jobs"),
            format!(
                "holds {} jobs; at most {}",
                items.len(),
                state.max_batch_jobs
            ),
        );
    }
    let mut specs = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let prefix = if batch {
            format!("jobs[{i}].")
        } else {
            String::new()
        };
        match parse_spec(item, &prefix) {
            Ok(spec) => match spec.validate(&state.limits, state.registry.as_ref()) {
                Ok(()) => specs.push(spec),
                Err(invalid) => errors.extend(invalid.0.into_iter().map(|e| FieldError {
                    field: format!("{prefix}{}", e.field),
                    reason: e.reason,
                })),
            },
            Err(e) => errors.push(e),
        }
    }
    if let Some(first) = errors.first() {
        metrics::counter!("cadre_api_errors_total", "route" => ROUTE, "status" => "400")
            .increment(1);
        tracing::debug!(errors = errors.len(), field = %first.field, reason = %first.reason, "invalid job spec refused");
        return HttpResponse::BadRequest().json(ApiError {
            error: "invalid job spec".to_owned(),
            field: Some(first.field.clone()),
            reason: first.reason.clone(),
            errors,
        });
    }
    match state.scheduler.send(Submit { specs }).await {
        Ok(Ok(ids)) if batch => {
            HttpResponse::Created().json(serde_json::json!({"ids": ids, "state": "queued"}))
        }
        Ok(Ok(ids)) => match ids.first() {
            Some(id) => {
                HttpResponse::Created().json(serde_json::json!({"id": id, "state": "queued"}))
            }
            None => fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                ROUTE,
                "internal",
                None,
                "the scheduler returned no id",
            ),
        },
        Ok(Err(e)) => actors_error(ROUTE, e),
        Err(e) => mailbox(ROUTE, e),
    }
}

async fn get_job(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    const ROUTE: &str = "get";
    let id = match parse_id(ROUTE, &path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.scheduler.send(GetJob(id)).await {
        Ok(Ok(view)) => HttpResponse::Ok().json(view),
        Ok(Err(e)) => actors_error(ROUTE, e),
        Err(e) => mailbox(ROUTE, e),
    }
}

/// Query of the list route.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

fn parse_state(raw: &str) -> Option<JobState> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).ok()
}

async fn list_jobs(state: web::Data<ApiState>, query: web::Query<ListQuery>) -> HttpResponse {
    const ROUTE: &str = "list";
    let filter = match query.state.as_deref() {
        None => None,
        Some(raw) => match parse_state(raw) {
            Some(s) => Some(s),
            None => {
                return fail(StatusCode::BAD_REQUEST, ROUTE, "invalid input", Some("state"),
                    format!("{raw:?} is not one of queued, leased, running, succeeded, failed, cancelled, timed_out, lost"))
            }
        },
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return fail(
            StatusCode::BAD_REQUEST,
            ROUTE,
            "invalid input",
            Some("limit"),
            "must be 1..=1000",
        );
    }
    match state
        .scheduler
        .send(ListJobs {
            state: filter,
            after: query.after.map(JobId),
            limit,
        })
        .await
    {
        Ok(Ok(jobs)) => {
            let next = if jobs.len() == limit {
                jobs.last().map(|j| j.id)
            } else {
                None
            };
            HttpResponse::Ok().json(serde_json::json!({"jobs": jobs, "next": next}))
        }
        Ok(Err(e)) => actors_error(ROUTE, e),
        Err(e) => mailbox(ROUTE, e),
    }
}

async fn cancel(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    const ROUTE: &str = "cancel";
    let id = match parse_id(ROUTE, &path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.scheduler.send(CancelJob(id)).await {
        Ok(Ok(CancelOutcome::Cancelled)) => {
            HttpResponse::Ok().json(serde_json::json!({"id": id, "state": "cancelled"}))
        }
        Ok(Ok(CancelOutcome::Cancelling)) => {
            HttpResponse::Accepted().json(serde_json::json!({"id": id, "state": "cancelling"}))
        }
        Ok(Err(e)) => actors_error(ROUTE, e),
        Err(e) => mailbox(ROUTE, e),
    }
}

/// Query of the logs route.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    stream: Option<String>,
    task: Option<u32>,
    tail: Option<u64>,
    follow: Option<bool>,
}

async fn logs(
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
    let (out, err) = state.worker.log_paths(id, query.task.unwrap_or(0));
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
    if !file.exists() {
        return HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("");
    }
    if query.follow != Some(true) || job.state.is_terminal() {
        let tail = query.tail.unwrap_or(1 << 20);
        return match state.log_reader.tail(&file, tail).await {
            // Streamed chunk by chunk: the tail is never held whole in memory.
            Ok(chunks) => {
                let stream = futures_util::stream::unfold(Some(chunks), |chunks| async move {
                    let mut chunks = chunks?;
                    match chunks.next_chunk().await {
                        Ok(Some(chunk)) => Some((
                            Ok::<_, actix_web::Error>(web::Bytes::from(chunk)),
                            Some(chunks),
                        )),
                        Ok(None) => None,
                        Err(e) => Some((
                            Ok(web::Bytes::from(format!(
                                "\n[cadre: log read failed: {e}]\n"
                            ))),
                            None,
                        )),
                    }
                });
                HttpResponse::Ok()
                    .content_type("text/plain; charset=utf-8")
                    .streaming(stream)
            }
            Err(e) => fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                ROUTE,
                "log read failed",
                Some("stream"),
                e.to_string(),
            ),
        };
    }
    // Follow: until the job ends (its events say so), then what is left in the file.
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
    let follower = match state.log_reader.follow(&file, 0, done_rx) {
        Ok(f) => f,
        Err(e) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                ROUTE,
                "log read failed",
                Some("stream"),
                e.to_string(),
            )
        }
    };
    let stream = futures_util::stream::unfold(Some(follower), |follower| async move {
        let mut follower = follower?;
        match follower.next_chunk().await {
            Ok(Some(chunk)) => Some((
                Ok::<_, actix_web::Error>(web::Bytes::from(chunk)),
                Some(follower),
            )),
            Ok(None) => None,
            Err(e) => Some((
                Ok(web::Bytes::from(format!(
                    "\n[cadre: log read failed: {e}]\n"
                ))),
                None,
            )),
        }
    });
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(stream)
}

/// Query of the events route.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    job: Option<u64>,
}

async fn events(state: web::Data<ApiState>, query: web::Query<EventsQuery>) -> HttpResponse {
    let only = query.job.map(JobId);
    let rx = state.events.subscribe();
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) if only.is_none_or(|j| j == event.job) => {
                    let line = match serde_json::to_string(&event) {
                        Ok(json) => format!("event: state\ndata: {json}\n\n"),
                        Err(e) => format!(
                            "event: error\ndata: {{\"error\":\"encode\",\"reason\":\"{e}\"}}\n\n"
                        ),
                    };
                    return Some((Ok::<_, actix_web::Error>(web::Bytes::from(line)), rx));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event stream subscriber fell behind");
                    metrics::counter!("cadre_api_errors_total", "route" => "events", "status" => "lagged").increment(1);
                    let line = format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n");
                    return Some((Ok(web::Bytes::from(line)), rx));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream.boxed_local())
}

async fn nodes(state: web::Data<ApiState>) -> HttpResponse {
    match state.scheduler.send(Nodes).await {
        Ok(Ok(view)) => HttpResponse::Ok().json(view),
        Ok(Err(e)) => actors_error("nodes", e),
        Err(e) => mailbox("nodes", e),
    }
}

async fn failures(state: web::Data<ApiState>) -> HttpResponse {
    let records: Vec<serde_json::Value> = state
        .failures
        .records()
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "seq": r.seq,
                "at_ms": r.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "path": r.path,
                "actor": r.actor,
                "kind": r.kind.as_str(),
                "message": r.message,
                "restart_count": r.restart_count,
                "context": r.context,
            })
        })
        .collect();
    HttpResponse::Ok()
        .json(serde_json::json!({"failures": records, "total": state.failures.total()}))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    match state.scheduler.send(Ready).await {
        Ok(true) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Ok(false) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "readyz",
            "not ready",
            None,
            "the scheduler is starting or draining",
        ),
        Err(e) => mailbox("readyz", e),
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    fail(
        StatusCode::NOT_FOUND,
        "unknown",
        "not found",
        Some("path"),
        format!("no route {} {}", req.method(), req.path()),
    )
}

/// The API server on `addr`; request bodies over `max_body` bytes get 413.
pub fn server(
    state: ApiState,
    addr: SocketAddr,
    max_body: usize,
    threads: usize,
) -> Result<(actix_web::dev::Server, actix_web::dev::ServerHandle), Error> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(web::JsonConfig::default().limit(max_body))
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                let reason = e.to_string();
                actix_web::error::InternalError::from_response(
                    e,
                    fail(
                        StatusCode::BAD_REQUEST,
                        "query",
                        "invalid input",
                        Some("query"),
                        reason,
                    ),
                )
                .into()
            }))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/v1/jobs", web::post().to(submit))
            .route("/v1/jobs", web::get().to(list_jobs))
            .route("/v1/jobs/{id}", web::get().to(get_job))
            .route("/v1/jobs/{id}", web::delete().to(cancel))
            .route("/v1/jobs/{id}/cancel", web::post().to(cancel))
            .route("/v1/jobs/{id}/logs", web::get().to(logs))
            .route("/v1/events", web::get().to(events))
            .route("/v1/nodes", web::get().to(nodes))
            .route("/v1/failures", web::get().to(failures))
            .default_service(web::to(not_found))
    })
    .workers(threads)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(addr)
    .map_err(|source| Error::Listen {
        what: "API",
        addr: addr.to_string(),
        source,
    })?
    .run();
    let handle = server.handle();
    Ok((server, handle))
}
