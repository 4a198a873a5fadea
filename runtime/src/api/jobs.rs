//! The job routes: submit (one spec, an array, or `{"jobs": [...]}`), get, list, cancel.
//!
//! A body is parsed with plain serde first; only when that fails is it parsed again with the
//! path of each field kept (`serde_path_to_error`, ~15% of a batch submit when always on), so
//! an error names the path (`resources.cpu_millis`, `kind.command.program`,
//! `jobs[3].timeout_secs`), never a bare leaf or the bad value; an unknown field is refused
//! with its path (a typo such as `timeout_sec` must not be dropped silently), whether the spec
//! came as JSON or from a TOML file through the CLI. The fast parse accepts a subset of what
//! the path-keeping one does (it also refuses a duplicate key, which the other takes last-wins)
//! and whatever it refuses goes through the other, so the route accepts the same bodies as
//! with the path-keeping parse alone.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use cadre_actors::job::{FieldError, JobId, JobSpec, JobState};
use cadre_actors::scheduler::{CancelJob, CancelOutcome, GetJob, ListJobs, Submit};
use serde::Deserialize;

use super::{actors_error, body, fail, mailbox, parse_id, ApiError, ApiState};

/// A batch submission's body: `{"jobs": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    jobs: Vec<JobSpec>,
}

/// A body that parses as it is: an array of specs, `{"jobs": [...]}`, or one spec, with
/// whether it was a batch. The common case takes this path, straight from the bytes to the
/// specs; a body that does not (any error) goes the slow way, item by item with every field's
/// path tracked, to name every violated field.
fn parse_fast(body: &[u8]) -> Option<(bool, Vec<JobSpec>)> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice::<Vec<JobSpec>>(body)
            .ok()
            .map(|specs| (true, specs)),
        Some(b'{') => match serde_json::from_slice::<Batch>(body) {
            Ok(batch) => Some((true, batch.jobs)),
            Err(_) => serde_json::from_slice::<JobSpec>(body)
                .ok()
                .map(|spec| (false, vec![spec])),
        },
        _ => None,
    }
}

/// Parses one spec, tracking the path of each field, so that an error names the field's path
/// under `prefix`, and why.
fn parse_spec(value: serde_json::Value, prefix: &str) -> Result<JobSpec, FieldError> {
    serde_path_to_error::deserialize::<_, JobSpec>(value).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.inner().to_string();
        // An unknown or missing field is named by the message; its path is where it sits.
        let leaf = backticked(&reason)
            .filter(|_| reason.starts_with("unknown field") || reason.starts_with("missing field"));
        let field = match (path.as_str(), leaf) {
            (".", Some(leaf)) => leaf,
            (".", None) => "body".to_owned(),
            (p, Some(leaf)) if !p.ends_with(&leaf) => format!("{p}.{leaf}"),
            (p, _) => p.to_owned(),
        };
        FieldError {
            field: format!("{prefix}{field}"),
            reason,
        }
    })
}

/// The first name in backticks in a serde message (`unknown field `x``).
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

pub(super) async fn submit(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    const ROUTE: &str = "submit";
    let body = match body::read(ROUTE, &req, payload, &state).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    if let Some((batch, specs)) = parse_fast(&body.bytes) {
        drop(body);
        return submit_specs(&state, batch, specs).await;
    }
    let value: serde_json::Value = match serde_json::from_slice(&body.bytes) {
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
    drop(body);
    let (batch, items) = match value {
        serde_json::Value::Array(items) => (true, items),
        serde_json::Value::Object(mut map) if map.contains_key("jobs") => {
            if let Some(other) = map.keys().find(|k| *k != "jobs") {
                return fail(
                    StatusCode::BAD_REQUEST,
                    ROUTE,
                    "invalid input",
                    Some(other.as_str()),
                    format!("unknown field `{other}` beside `jobs`"),
                );
            }
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
            Ok(spec) => {
                // Validated here too, so one answer names every violated field of every item.
                if let Err(bad) = spec.validate(&state.limits, state.registry.as_ref()) {
                    errors.extend(bad.0.into_iter().map(|e| FieldError {
                        field: format!("{prefix}{}", e.field),
                        reason: e.reason,
                    }));
                }
                specs.push(spec);
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return invalid(errors);
    }
    submit_specs(&state, batch, specs).await
}

fn invalid(errors: Vec<FieldError>) -> HttpResponse {
    const ROUTE: &str = "submit";
    let (field, reason) = match errors.first() {
        Some(first) => (first.field.clone(), first.reason.clone()),
        None => ("body".to_owned(), "invalid".to_owned()),
    };
    metrics::counter!("cadre_api_errors_total", "route" => ROUTE, "status" => "400").increment(1);
    tracing::debug!(errors = errors.len(), field = %field, reason = %reason, "invalid job spec refused");
    HttpResponse::BadRequest().json(ApiError {
        error: "invalid job spec".to_owned(),
        field: Some(field),
        reason,
        errors,
    })
}

/// Validates parsed specs (every violated field, with its path) and submits them.
async fn submit_specs(state: &ApiState, batch: bool, specs: Vec<JobSpec>) -> HttpResponse {
    const ROUTE: &str = "submit";
    if specs.is_empty() {
        return fail(
            StatusCode::BAD_REQUEST,
            ROUTE,
            "invalid input",
            Some("jobs"),
            "holds no job",
        );
    }
    if specs.len() > state.max_batch_jobs {
        return fail(
            StatusCode::BAD_REQUEST,
            ROUTE,
            "invalid input",
            Some("jobs"),
            format!(
                "holds {} jobs; at most {}",
                specs.len(),
                state.max_batch_jobs
            ),
        );
    }
    let mut errors = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        if let Err(bad) = spec.validate(&state.limits, state.registry.as_ref()) {
            let prefix = if batch {
                format!("jobs[{i}].")
            } else {
                String::new()
            };
            errors.extend(bad.0.into_iter().map(|e| FieldError {
                field: format!("{prefix}{}", e.field),
                reason: e.reason,
            }));
        }
    }
    if !errors.is_empty() {
        return invalid(errors);
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

pub(super) async fn get(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
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
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

fn parse_state(raw: &str) -> Option<JobState> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).ok()
}

pub(super) async fn list(state: web::Data<ApiState>, query: web::Query<ListQuery>) -> HttpResponse {
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

pub(super) async fn cancel(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn field_of(spec: serde_json::Value) -> String {
        match parse_spec(spec, "") {
            Ok(_) => panic!("accepted"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn errors_name_the_path_of_the_field() {
        let cmd = |extra: serde_json::Value| {
            let mut spec =
                serde_json::json!({"name": "a", "kind": {"command": {"program": "/bin/true"}}});
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            spec
        };
        assert_eq!(
            field_of(cmd(serde_json::json!({"resources": {"cpu_millis": "5"}}))),
            "resources.cpu_millis"
        );
        assert_eq!(
            field_of(serde_json::json!({"name": "a", "kind": {"command": {"program": 5}}})),
            "kind.command.program"
        );
        assert_eq!(
            field_of(serde_json::json!({"name": "a", "kind": {"docker": {}}})),
            "kind"
        );
        assert_eq!(
            field_of(cmd(serde_json::json!({"timeout_sec": 5}))),
            "timeout_sec"
        );
        assert_eq!(
            field_of(cmd(serde_json::json!({"max_retry": 1}))),
            "max_retry"
        );
        assert_eq!(
            field_of(cmd(serde_json::json!({"resources": {"cpus": 2}}))),
            "resources.cpus"
        );
        assert_eq!(
            field_of(
                serde_json::json!({"name": "a", "kind": {"command": {"program": "x", "shell": true}}})
            ),
            "kind.command.shell"
        );
        assert_eq!(
            field_of(serde_json::json!({"kind": {"command": {"program": "x"}}})),
            "name"
        );
    }

    fn error_of(spec: serde_json::Value) -> FieldError {
        match parse_spec(spec, "") {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    /// The kind's errors name its path, never the bad value or a bare leaf, and an unknown
    /// kind lists the kinds there are.
    #[test]
    fn kind_errors_name_the_path_and_what_is_accepted() {
        for kind in [
            serde_json::json!("docker"),
            serde_json::json!({"docker": {}}),
        ] {
            let e = error_of(serde_json::json!({"name": "a", "kind": kind}));
            assert_eq!(e.field, "kind", "{kind}: {}", e.reason);
            assert!(e.reason.contains("docker"), "{}", e.reason);
            for accepted in ["`command`", "`workload`"] {
                assert!(e.reason.contains(accepted), "{kind}: {}", e.reason);
            }
        }
        let e = error_of(serde_json::json!({"name": "a", "kind": {"command": {"program": 5}}}));
        assert_eq!(e.field, "kind.command.program");
        assert!(!e.reason.is_empty());
        let e = error_of(serde_json::json!({"name": "a", "kind": {"command": {}}}));
        assert_eq!(e.field, "kind.command.program", "{}", e.reason);
        assert!(e.reason.contains("missing"), "{}", e.reason);
        // Under a batch's prefix, the same paths.
        let e = parse_spec(
            serde_json::json!({"name": "a", "kind": {"command": {}}}),
            "jobs[2].",
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(e.field, "jobs[2].kind.command.program");
    }
}
