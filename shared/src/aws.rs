//! AWS client configuration, built once per cold start.
//!
//! `aws-config` already honours `AWS_ENDPOINT_URL` (the local emulator). What it does not do by
//! default is fail fast: the SDK's defaults wait seconds for a connection and retry for longer,
//! so an outage would hang requests instead of answering `503`. Timeouts here are short and
//! overridable (`AWS_CONNECT_TIMEOUT_MS`, `AWS_OPERATION_TIMEOUT_MS`).

use std::time::Duration;

use aws_config::{
    BehaviorVersion, ConfigLoader, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig,
};

use crate::config::var_or;

pub async fn load() -> SdkConfig {
    configure(aws_config::defaults(BehaviorVersion::latest()))
        .load()
        .await
}

/// Applies our timeouts and retries to a loader (tests point it at a dead endpoint).
pub fn configure(loader: ConfigLoader) -> ConfigLoader {
    let connect = Duration::from_millis(var_or("AWS_CONNECT_TIMEOUT_MS", 500));
    let operation = Duration::from_millis(var_or("AWS_OPERATION_TIMEOUT_MS", 2_000));
    loader
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(connect)
                .read_timeout(operation)
                .operation_attempt_timeout(operation)
                .operation_timeout(operation)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
}

/// Maps an SDK error to our error: transport failures, timeouts and throttling mean the
/// dependency is unavailable (`503`); anything else is unexpected (`500`, cause logged).
pub fn classify<E, R>(what: &str, err: aws_sdk_dynamodb::error::SdkError<E, R>) -> crate::Error
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    let unavailable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(_) => true,
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or_default();
            code.contains("Throttl")
                || code == "ProvisionedThroughputExceededException"
                || code == "RequestLimitExceeded"
                || code == "InternalServerError"
                || code == "ServiceUnavailable"
        }
        _ => false,
    };
    let detail = match err.as_service_error() {
        Some(e) => format!(
            "{what}: {}: {}",
            e.code().unwrap_or("unknown"),
            e.message().unwrap_or_default()
        ),
        None => format!(
            "{what}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&err)
        ),
    };
    if unavailable {
        crate::Error::Unavailable(detail)
    } else {
        crate::Error::Internal(detail)
    }
}
