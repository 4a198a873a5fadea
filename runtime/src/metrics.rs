//! The Prometheus endpoint: metrics-exporter-prometheus renders every `cadre_*` metric, with
//! histograms (buckets, not summaries), served at `/metrics` on its own address.

use std::net::SocketAddr;

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::Error;

/// An installed exporter.
#[derive(Clone)]
pub struct Exporter(PrometheusHandle);

/// Latency buckets in seconds: 1 us to 10 s.
const BUCKETS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// Installs the process-wide recorder. Call once, before any metric is touched.
pub fn install() -> Result<Exporter, Error> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| Error::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))?;
    Ok(Exporter(handle))
}

/// Describes the node's own metrics and sets the build info.
pub fn describe() {
    cadre_actors::metrics::describe();
    cadre_cpu::metrics::describe();
    cadre_gpu::metrics::describe();
    metrics::gauge!("cadre_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::describe_gauge!("cadre_build_info", "cadre's version; always 1");
    // Counters and gauges exist from the start (at zero), so a dashboard or an alert on a
    // rate sees them before the first event.
    use cadre_actors::metrics as m;
    for counter in [
        m::JOBS_SUBMITTED,
        m::JOBS_LOST,
        m::LEASE_GRANTS,
        m::LEASE_RENEWALS,
        m::LEASE_EXPIRATIONS,
        m::LEASE_REVOCATIONS,
        m::LEASE_GRANT_REFUSALS,
        m::HEARTBEATS,
        m::WORKER_DEATHS,
        m::SELF_FENCES,
        m::RENEW_FAILURES,
        m::STORE_APPEND_BYTES,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for state in ["succeeded", "failed", "cancelled", "timed_out"] {
        metrics::counter!(m::JOBS_FINISHED, "state" => state).increment(0);
    }
    for op in ["renew", "started", "finished"] {
        metrics::counter!(m::LEASE_STALE_TOKENS, "op" => op).increment(0);
    }
    metrics::gauge!(m::QUEUE_DEPTH).set(0.0);
    metrics::gauge!(m::JOBS_RUNNING).set(0.0);
    metrics::describe_counter!("cadre_api_errors_total", "API errors, by route and status");
}

async fn render(exporter: web::Data<Option<Exporter>>) -> HttpResponse {
    match exporter.get_ref() {
        Some(Exporter(handle)) => {
            handle.run_upkeep();
            HttpResponse::Ok()
                .content_type("text/plain; version=0.0.4")
                .body(handle.render())
        }
        None => HttpResponse::ServiceUnavailable()
            .content_type("application/json")
            .body(r#"{"error":"metrics","field":"metrics","reason":"no recorder is installed in this process"}"#),
    }
}

/// The `/metrics` server on `addr`.
pub fn server(
    exporter: Option<Exporter>,
    addr: SocketAddr,
) -> Result<(actix_web::dev::Server, actix_web::dev::ServerHandle), Error> {
    let data = web::Data::new(exporter);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(render))
    })
    .workers(1)
    .disable_signals()
    .bind(addr)
    .map_err(|source| Error::Listen {
        what: "metrics endpoint",
        addr: addr.to_string(),
        source,
    })?
    .run();
    let handle = server.handle();
    Ok((server, handle))
}
