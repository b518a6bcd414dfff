//! JSON logs on stdout, which Lambda ships to CloudWatch Logs. `lambda_runtime` opens a span per
//! invocation carrying the request id, so every line of an invocation can be found by it.

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the JSON subscriber once per process. `RUST_LOG` sets the level (default `info`).
///
/// The filter is a [`Targets`] (`level` or `target=level,...`), not an `EnvFilter`: the
/// template only ever sets a plain level (`LogLevel`), and `EnvFilter` compiles regular
/// expressions to parse even that, a measurable part of a cold start (docs/ARCHITECTURE.md §Budgets). An
/// unparsable `RUST_LOG` falls back to `info`, as before.
pub fn init() {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .finish()
        .with(filter(std::env::var("RUST_LOG").ok().as_deref()))
        .init();
}

/// The filter `RUST_LOG` (`value`) asks for, `info` when unset or unparsable.
fn filter(value: Option<&str>) -> Targets {
    value
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn rust_log_levels() {
        assert_eq!(filter(None).default_level(), Some(LevelFilter::INFO));
        assert_eq!(filter(Some("")).default_level(), Some(LevelFilter::INFO));
        assert_eq!(
            filter(Some("debug")).default_level(),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(
            filter(Some("WARN")).default_level(),
            Some(LevelFilter::WARN)
        );
        assert_eq!(
            filter(Some("shared=loud")).default_level(),
            Some(LevelFilter::INFO)
        );
        let targets = filter(Some("warn,shared=debug"));
        assert!(targets.would_enable("shared::worker", &Level::DEBUG));
        assert!(!targets.would_enable("aws_smithy_runtime", &Level::INFO));
    }
}
