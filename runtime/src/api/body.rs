//! Request bodies, read with three bounds: one body is at most `max_body_bytes` (413), it must
//! arrive within `body_timeout` (408: a client that stalls halfway holds nothing for long), and
//! all bodies being read at once hold at most `max_body_bytes_in_flight` (503 with
//! `Retry-After`: the node sheds load instead of growing without bound). A declared
//! `Content-Length` is checked before a byte is read.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{fail, ApiState};

/// A body read whole, with the share of the in-flight budget it holds until dropped.
pub(super) struct Body {
    pub(super) bytes: web::BytesMut,
    _held: Option<OwnedSemaphorePermit>,
}

/// Takes `n` more bytes of the in-flight budget, without waiting.
fn hold(budget: &Arc<Semaphore>, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> bool {
    let Ok(n) = u32::try_from(n) else {
        return false;
    };
    match Arc::clone(budget).try_acquire_many_owned(n) {
        Ok(permit) => {
            match held {
                Some(h) => h.merge(permit),
                None => *held = Some(permit),
            }
            true
        }
        Err(_) => false,
    }
}

fn busy(route: &'static str, limit: usize) -> HttpResponse {
    let mut response = fail(
        StatusCode::SERVICE_UNAVAILABLE,
        route,
        "busy",
        Some("body"),
        format!("the node holds {limit} bytes of request bodies already; retry in a moment"),
    );
    response.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from_static("1"),
    );
    response
}

/// Reads the request's body within the bounds in the module comment.
pub(super) async fn read(
    route: &'static str,
    req: &HttpRequest,
    mut payload: web::Payload,
    state: &ApiState,
) -> Result<Body, HttpResponse> {
    let limit = state.max_body_bytes;
    let budget = &state.bodies_in_flight;
    let in_flight = state.max_body_bytes_in_flight;
    let mut held = None;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared {
        if n > limit {
            return Err(too_large(route, limit));
        }
        if !hold(budget, &mut held, n) {
            return Err(busy(route, in_flight));
        }
    }
    let mut reserved = declared.unwrap_or(0);
    let read = async {
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
                return Err(too_large(route, limit));
            }
            // Bytes beyond what was declared (or all of them, when nothing was) are held as
            // they come.
            let len = body.len() + chunk.len();
            if len > reserved {
                if !hold(budget, &mut held, len - reserved) {
                    return Err(busy(route, in_flight));
                }
                reserved = len;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok(Body { bytes, _held: held }),
        Ok(Err(response)) => Err(response),
        Err(_) => Err(fail(
            StatusCode::REQUEST_TIMEOUT,
            route,
            "body too slow",
            Some("body"),
            format!(
                "the request body did not arrive within {} s",
                state.body_timeout.as_secs()
            ),
        )),
    }
}

fn too_large(route: &'static str, limit: usize) -> HttpResponse {
    fail(
        StatusCode::PAYLOAD_TOO_LARGE,
        route,
        "body too large",
        Some("body"),
        format!("request bodies are limited to {limit} bytes"),
    )
}
