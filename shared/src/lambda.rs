//! The start of every function: its `main` is one call to [`serve_http`] (API Gateway
//! functions), [`serve_sqs`] (queue workers) or [`serve_scheduled`] (functions run on a
//! schedule) with the function's `init` (its app from the template's environment, the same
//! `init` the system tests call). [`serve_http`] and [`serve_scheduled`] also take the
//! function's `handle`; [`serve_sqs`] takes only `init`, the app being a
//! [`crate::worker::Worker`].
//!
//! All do the same cold start, in this order: JSON logs ([`crate::telemetry`]), the SDK
//! configuration with its short timeouts ([`crate::aws::load`]), the app built from the
//! template's environment ([`crate::config::Vars`]: a missing variable stops init with its name),
//! the DynamoDB connection opened ([`crate::aws::warm_up`]), then the Lambda runtime loop. The
//! app lives as long as the process (one instance serves one invocation at a time and is never
//! torn down before it exits), so it is leaked to `'static` once, and every invocation borrows
//! it.

use std::convert::Infallible;
use std::future::Future;
use std::time::{Instant, SystemTime};

use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;

/// What init or the runtime loop can fail with (the runtime's boxed error).
pub use lambda_runtime::Error;

use crate::config::Vars;
use crate::worker::Worker;

/// Logs, SDK configuration, then `init`'s app, kept for the life of the process.
async fn start<A: 'static, E: Into<Error>>(
    init: fn(&SdkConfig, &Vars) -> Result<A, E>,
) -> Result<&'static A, Error> {
    crate::telemetry::init();
    let sdk = crate::aws::load().await;
    let vars = Vars::process();
    let app = init(&sdk, &vars).map_err(Into::into)?;
    match crate::aws::warm_up(&sdk, &vars).await {
        crate::aws::WarmUp::Failed(error) => {
            tracing::warn!(%error, "opening the DynamoDB connection in init failed")
        }
        crate::aws::WarmUp::TimedOut => {
            tracing::warn!("opening the DynamoDB connection in init took too long")
        }
        _ => {}
    }
    Ok(Box::leak(Box::new(app)))
}

/// Runs an HTTP API function: every request (a payload 2.0 event) goes to `handle`, which
/// answers every request itself (errors as problem+json), so the runtime never sees an error.
pub async fn serve_http<A, E, Fut>(
    init: fn(&SdkConfig, &Vars) -> Result<A, E>,
    handle: fn(&'static A, lambda_http::Request) -> Fut,
) -> Result<(), Error>
where
    A: Sync + 'static,
    E: Into<Error>,
    Fut: Future<Output = lambda_http::Response<lambda_http::Body>> + Send + 'static,
{
    let app = start(init).await?;
    lambda_http::run(lambda_http::service_fn(move |req| {
        let answer = handle(app, req);
        async move { Ok::<_, Infallible>(answer.await) }
    }))
    .await
}

/// Runs an SQS worker: every batch goes to [`crate::worker::handle`] with the app, whose
/// partial batch response names the messages that failed (`ReportBatchItemFailures`), so the
/// runtime never sees an error.
pub async fn serve_sqs<W, E>(init: fn(&SdkConfig, &Vars) -> Result<W, E>) -> Result<(), Error>
where
    W: Worker + Sync + 'static,
    E: Into<Error>,
{
    let app = start(init).await?;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<SqsEvent>| async move {
            Ok::<_, Error>(crate::worker::handle(app, event.payload).await)
        },
    ))
    .await
}

/// Runs a scheduled function (the target of an EventBridge rule or schedule): every payload (a
/// Scheduled Event, or the schedule's `Input`) goes to `handle` with the instant the
/// invocation must be done by (Lambda's deadline, as an [`Instant`] of this process), and what
/// it returns (a report of the run) is the answer. `handle` never fails: a run that could not do
/// everything says so in its report, and the next run takes up the rest, rather than Lambda
/// retrying the whole run.
pub async fn serve_scheduled<A, E, R, Fut>(
    init: fn(&SdkConfig, &Vars) -> Result<A, E>,
    handle: fn(&'static A, serde_json::Value, Instant) -> Fut,
) -> Result<(), Error>
where
    A: Sync + 'static,
    E: Into<Error>,
    R: serde::Serialize,
    Fut: Future<Output = R>,
{
    let app = start(init).await?;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<serde_json::Value>| {
            let left = event
                .context
                .deadline()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let answer = handle(app, event.payload, Instant::now() + left);
            async move { Ok::<_, Error>(answer.await) }
        },
    ))
    .await
}
