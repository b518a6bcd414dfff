//! The Lambda Runtime API as served to one function instance.
//!
//! Each instance gets its own listener, so whatever arrives on it comes from that instance:
//! no request needs to say who it is. The server only relays: invocations come in through a
//! channel from the invoker, and everything the runtime reports goes out as an [`Event`].

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Mutex, mpsc};

/// One invocation handed to the runtime by `GET .../invocation/next`.
#[derive(Debug)]
pub(crate) struct Invocation {
    pub request_id: String,
    /// Milliseconds since the epoch when the invocation times out.
    pub deadline_ms: u64,
    pub trace_id: String,
    pub body: Vec<u8>,
}

/// What the instance did, in the order it did it.
#[derive(Debug)]
pub(crate) enum Event {
    /// It asked for the next invocation (the first one marks the end of init).
    Next,
    Response {
        request_id: String,
        body: Bytes,
    },
    Error {
        request_id: String,
        body: Bytes,
    },
    InitError(Bytes),
    /// The kernel's OOM killer killed the process (its memory cgroup's limit, with
    /// `--lambda-limits`); [`Event::Exited`] follows.
    OutOfMemory,
    /// The process ended (description of its exit status).
    Exited(String),
}

pub(crate) struct ApiState {
    pub invocations: Mutex<mpsc::Receiver<Invocation>>,
    pub events: mpsc::UnboundedSender<Event>,
    pub function_arn: String,
}

/// The Runtime API routes (version `2018-06-01`).
pub(crate) fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/{outcome}",
            post(outcome),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(state)
}

/// Long-polls until the invoker sends an invocation.
async fn next(State(state): State<Arc<ApiState>>) -> Response {
    let _ = state.events.send(Event::Next);
    let invocation = state.invocations.lock().await.recv().await;
    let Some(inv) = invocation else {
        // The instance is being torn down: its process is killed while it waits, as Lambda
        // ends a sandbox. Any answer would reach the runtime first and make it panic.
        return std::future::pending().await;
    };
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set("content-type", "application/json");
    set("lambda-runtime-aws-request-id", &inv.request_id);
    set("lambda-runtime-deadline-ms", &inv.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", &state.function_arn);
    set("lambda-runtime-trace-id", &inv.trace_id);
    (StatusCode::OK, headers, inv.body).into_response()
}

/// `POST invocation/{id}/response` or `invocation/{id}/error`: how the invocation ended; any
/// other `{outcome}` is not found.
async fn outcome(
    State(state): State<Arc<ApiState>>,
    Path((request_id, outcome)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let event = match outcome.as_str() {
        "response" => Event::Response { request_id, body },
        "error" => Event::Error { request_id, body },
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    report(&state, event)
}

async fn init_error(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    report(&state, Event::InitError(body))
}

/// Hands `event` to the invoker and accepts the report, as the Runtime API does (`202`).
fn report(state: &ApiState, event: Event) -> Response {
    let _ = state.events.send(event);
    (
        StatusCode::ACCEPTED,
        [("content-type", "application/json")],
        r#"{"status":"OK"}"#,
    )
        .into_response()
}
