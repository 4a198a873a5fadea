//! The HTTP/JSON API under `/v1`, plus `/healthz` and `/readyz`.
//!
//! Errors are `{"error": ..., "field": ..., "reason": ...}` with a fitting status: 400 invalid
//! input (the field's path, e.g. `resources.cpu_millis`, and why), 404 unknown job (or one
//! "pruned by retention"), 405 a method a route does not take (with `Allow`), 408 a request
//! body that did not arrive in time, 409 wrong state, 413 body too large, 503 not ready,
//! draining, or too many request bodies held at once, 507 the job store's disk is full (the
//! reason names it and its free space), 500 the node failed; an invalid spec also lists every
//! violated field in `errors`. Specs are validated here, before the scheduler sees them, so
//! nothing invalid is stored.
//!
//! A refusal is the client's, not the node's: 4xx, 503 and 507 are logged at debug and
//! counted (`cadre_api_errors_total{route,status}`); only a 500 is an error event. A request
//! that is not HTTP at all (a malformed head) is answered 400 by the HTTP layer before any
//! route sees it, and not logged (`CADRE_LOG=actix_http=debug` shows those).
//!
//! Every `GET` route also answers `HEAD` (RFC 9110), without a body.
//!
//! No authorization on loopback, the default address; a node listening elsewhere should sit
//! behind a proxy that authenticates.

mod body;
mod jobs;
mod logs;
mod remote_logs;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use actix_web::http::{Method, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use cadre_actors::job::{FieldError, JobId, Limits};
use cadre_actors::protocol::JobEvent;
use cadre_actors::scheduler::{Nodes, Ready, Scheduler};
use cadre_cpu::launcher::LogReader;
use cadre_supervisor::FailureJournal;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Semaphore};

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
    /// Where the local worker writes job logs (`<job>.<task>.out` and `.err`).
    pub log_dir: std::path::PathBuf,
    /// Jobs one batch may hold.
    pub max_batch_jobs: usize,
    /// Reads job logs.
    pub log_reader: LogReader,
    /// The largest request body taken, in bytes.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Bytes of request bodies the API may hold at once, over all requests.
    pub bodies_in_flight: Arc<Semaphore>,
    /// The size of that budget.
    pub max_body_bytes_in_flight: usize,
    /// The agents connected to this node's cluster port: where the logs of their tasks are
    /// read.
    pub agents: crate::cluster::link::Agents,
    /// How long a request to an agent waits for its answer.
    pub agent_timeout: Duration,
    /// This node's name.
    pub node_name: String,
    /// Whether this node runs a worker of its own (whose logs are in `log_dir`).
    pub local_worker: bool,
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

/// A refusal or failure of a request: counted, logged (a 500 is the node's failure: error; a
/// client's refusal: debug) and answered with the error body.
fn fail(
    status: StatusCode,
    route: &'static str,
    error: &str,
    field: Option<&str>,
    reason: impl Into<String>,
) -> HttpResponse {
    let reason = reason.into();
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(route, status = status.as_u16(), error, field, %reason, "API request failed");
    } else {
        tracing::debug!(route, status = status.as_u16(), error, field, %reason, "API request refused");
    }
    respond(status, route, error, field, reason)
}

/// The error body of `status`, counted in `cadre_api_errors_total`; the caller logs.
fn respond(
    status: StatusCode,
    route: &'static str,
    error: &str,
    field: Option<&str>,
    reason: String,
) -> HttpResponse {
    metrics::counter!("cadre_api_errors_total", "route" => route, "status" => status.as_str().to_owned()).increment(1);
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
        E::Pruned { .. } => fail(
            StatusCode::NOT_FOUND,
            route,
            "pruned by retention",
            Some("id"),
            error.to_string(),
        ),
        E::UnknownNode { .. } => fail(
            StatusCode::NOT_FOUND,
            route,
            "unknown node",
            Some("node"),
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
        E::StoreUnwritable { reason } => fail(
            StatusCode::INSUFFICIENT_STORAGE,
            route,
            "insufficient storage",
            None,
            format!("the job store is read-only: {reason}"),
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

/// How often a request the scheduler did not answer is a warning: the rest meanwhile are
/// debug lines (all counted), so a restart under load is a line, not a flood.
const UNANSWERED_WARN_EVERY: Duration = Duration::from_secs(10);

/// When a request the scheduler did not answer was last a warning.
static UNANSWERED_WARNED: Mutex<Option<tokio::time::Instant>> = Mutex::new(None);

/// Whether this unanswered request is the one to warn of (see [`UNANSWERED_WARN_EVERY`]).
fn warn_unanswered() -> bool {
    let now = tokio::time::Instant::now();
    let mut last = UNANSWERED_WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let due = last.is_none_or(|at| now.duration_since(at) >= UNANSWERED_WARN_EVERY);
    if due {
        *last = Some(now);
    }
    due
}

/// 503 for a request the scheduler did not answer: not the client's doing but the node's (the
/// scheduler is restarting, or stuck), so a warning rather than a debug line (one per
/// [`UNANSWERED_WARN_EVERY`]; the restart itself is the supervisor's error event).
fn mailbox(route: &'static str, error: actix::MailboxError) -> HttpResponse {
    let reason = format!("the scheduler did not answer ({error}); it may be restarting");
    if warn_unanswered() {
        tracing::warn!(route, status = 503, %reason,
            "API request failed: the scheduler did not answer (more within 10 s at debug)");
    } else {
        tracing::debug!(route, status = 503, %reason, "API request failed: the scheduler did not answer");
    }
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        route,
        "unavailable",
        None,
        reason,
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

/// Query of the events route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// `POST /v1/nodes/{node}/drain` drains a node; `DELETE` undoes it.
async fn drain_node(
    state: web::Data<ApiState>,
    node: web::Path<String>,
    req: actix_web::HttpRequest,
) -> HttpResponse {
    let node = node.into_inner();
    let drain = req.method() != Method::DELETE;
    let asked = cadre_actors::scheduler::DrainNode {
        node: node.clone(),
        drain,
    };
    match state.scheduler.send(asked).await {
        Ok(Ok(workers)) => HttpResponse::Ok().json(serde_json::json!({
            "node": node,
            "draining": drain,
            "workers": workers,
        })),
        Ok(Err(e)) => actors_error("drain", e),
        Err(e) => mailbox("drain", e),
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

/// 200 when the node can run what it accepts now; 503 with the reason otherwise (starting,
/// draining, no worker registered, the job store read-only).
async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    match state.scheduler.send(Ready).await {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Ok(Err(reason)) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "readyz",
            "not ready",
            None,
            reason,
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

/// A route that exists but does not take the request's method: 405 with `Allow`.
fn not_allowed(allow: &'static [Method]) -> actix_web::Route {
    web::to(move |req: HttpRequest| {
        let allowed = allow
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let mut response = fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            "method not allowed",
            Some("method"),
            format!("{} takes {allowed}, not {}", req.path(), req.method()),
        );
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allowed) {
            response
                .headers_mut()
                .insert(actix_web::http::header::ALLOW, value);
        }
        async move { response }
    })
}

/// A route's resource: its handlers by method, and 405 for any other method.
fn resource(
    path: &str,
    allow: &'static [Method],
    routes: Vec<actix_web::Route>,
) -> actix_web::Resource {
    let mut r = web::resource(path);
    for route in routes {
        r = r.route(route);
    }
    r.default_service(not_allowed(allow))
}

const GET: &[Method] = &[Method::GET, Method::HEAD];

/// A route for `GET` and `HEAD` (whose response the HTTP layer sends without its body).
fn get() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
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
            .service(resource("/healthz", GET, vec![get().to(healthz)]))
            .service(resource("/readyz", GET, vec![get().to(readyz)]))
            .service(resource(
                "/v1/jobs",
                &[Method::GET, Method::HEAD, Method::POST],
                vec![web::post().to(jobs::submit), get().to(jobs::list)],
            ))
            .service(resource(
                "/v1/jobs/{id}",
                &[Method::GET, Method::HEAD, Method::DELETE],
                vec![get().to(jobs::get), web::delete().to(jobs::cancel)],
            ))
            .service(resource(
                "/v1/jobs/{id}/cancel",
                &[Method::POST],
                vec![web::post().to(jobs::cancel)],
            ))
            .service(resource(
                "/v1/jobs/{id}/logs",
                GET,
                vec![get().to(logs::logs)],
            ))
            .service(resource("/v1/events", GET, vec![get().to(events)]))
            .service(resource("/v1/nodes", GET, vec![get().to(nodes)]))
            .service(resource(
                "/v1/nodes/{node}/drain",
                &[Method::POST, Method::DELETE],
                vec![web::post().to(drain_node), web::delete().to(drain_node)],
            ))
            .service(resource("/v1/failures", GET, vec![get().to(failures)]))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What a log subscriber wrote.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A scheduler that does not answer is the node's problem, a warning (then debug lines for
    /// a while, so a restart under load does not flood the log); a client's refusal (503 while
    /// draining) is a debug line. All are answered and counted.
    #[test]
    fn an_unanswered_request_is_a_warning_and_a_refusal_is_not() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let unanswered = mailbox("jobs", actix::MailboxError::Closed);
            assert_eq!(unanswered.status(), StatusCode::SERVICE_UNAVAILABLE);
            // The next within the period: answered alike, a debug line.
            let again = mailbox("nodes", actix::MailboxError::Timeout);
            assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
            let refused = fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "jobs",
                "draining",
                None,
                "the node is draining",
            );
            assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .map_or_else(String::new, str::to_owned)
        };
        assert!(line("Mailbox has closed").contains("WARN"), "{text}");
        assert!(line("timed out").contains("DEBUG"), "{text}");
        assert!(line("draining").contains("DEBUG"), "{text}");
    }
}
