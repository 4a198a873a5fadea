//! `cadre-runtime`: the cadre node. Its configuration ([`config`]), its supervision tree and
//! shutdown ([`node`]), the HTTP/JSON API under `/v1` ([`api`]) and the Prometheus endpoint
//! ([`metrics`]).

pub mod agent;
pub mod api;
pub mod cluster;
pub mod config;
pub mod confine;
pub mod error;
pub mod extensions;
pub mod gpu;
pub mod gpu_workloads;
pub mod metrics;
pub mod node;
pub mod registry;
mod worker_tree;

pub use agent::Agent;
pub use config::{Config, Flags, LogFormat};
pub use error::Error;
pub use extensions::Extensions;
pub use node::Node;

/// What the HTTP layer logs of a connection that is not HTTP (a malformed head, a reset): a
/// client's error, which actix logs at ERROR. It is off unless `CADRE_LOG` names `actix_http`;
/// the request itself is answered 400.
const HTTP_LAYER_OFF: &str = "actix_http::h1::dispatcher=off";

/// Installs the log subscriber: readable lines, or JSON objects; `CADRE_LOG` filters
/// (default `info`). Logs go to stderr.
pub fn init_tracing(format: LogFormat) {
    let mut directives = std::env::var("CADRE_LOG").unwrap_or_else(|_| "info".to_owned());
    if !directives.contains("actix_http") {
        directives.push(',');
        directives.push_str(HTTP_LAYER_OFF);
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{HTTP_LAYER_OFF}")));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
