//! One error type for every function, mapped to HTTP in exactly one place ([`Error::status`]
//! and [`crate::http::problem`]). Causes of 5xx errors are logged, never sent to the caller.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not JSON at all (syntax error, truncated).
    #[error("{0}")]
    Malformed(String),
    /// The JSON is well formed but a field is missing, of the wrong type or invalid.
    #[error("{field}: {detail}")]
    Invalid { field: String, detail: String },
    #[error("{0}")]
    NotFound(String),
    /// The caller is authenticated but may not touch this resource (another trader's account).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// A precondition the request states (a `version` it expects) does not hold: `409` naming
    /// the field.
    #[error("{field}: {detail}")]
    Precondition { field: String, detail: String },
    /// The same request (same `Idempotency-Key`) is still being processed: a conflict that
    /// resolves itself, so callers get `409` with `Retry-After`.
    #[error("{0}")]
    InProgress(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A dependency (DynamoDB, EventBridge, another service) is unreachable, throttling or timed
    /// out. Retrying later may succeed, so callers get `503`.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or an unexpected answer. The text is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Malformed(_) => StatusCode::BAD_REQUEST,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) | Error::Precondition { .. } | Error::InProgress(_) => {
                StatusCode::CONFLICT
            }
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a worker should let SQS redeliver the message (true) or whether retrying can
    /// never succeed (false: the message is poison and belongs in the DLQ as soon as possible).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Internal(_))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("json: {e}"))
    }
}
