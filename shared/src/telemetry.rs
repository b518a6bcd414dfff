//! JSON logs on stdout, which Lambda ships to CloudWatch Logs. `lambda_runtime` opens a span per
//! invocation carrying the request id, so every line of an invocation can be found by it.

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber once per process. `RUST_LOG` sets the level (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .init();
}
