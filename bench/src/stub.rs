//! A minimal Lambda Runtime API, one per function process: records when the process first
//! asks for an invocation (the end of init) and hands it queued events, like the local runner
//! (local/src/runtime) but with nothing else in the way of the measurement.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc};

/// What the process told the stub.
enum Report {
    Next(Instant),
    /// A response, an invocation error or an init error, with its body.
    Done(Bytes),
}

struct Api {
    events: Mutex<mpsc::Receiver<Vec<u8>>>,
    reports: mpsc::UnboundedSender<Report>,
}

/// One function process attached to its own stub.
pub struct Process {
    child: Child,
    spawned_at: Instant,
    events: mpsc::Sender<Vec<u8>>,
    reports: mpsc::UnboundedReceiver<Report>,
    server: tokio::task::JoinHandle<()>,
}

const WAIT: Duration = Duration::from_secs(10);

impl Process {
    /// Starts `binary` with `env` and the Lambda variables; the stub listens before the clock
    /// starts, so init is process start → first `GET /runtime/invocation/next`.
    pub async fn spawn(binary: &Path, env: &BTreeMap<String, String>) -> Result<Process, String> {
        Process::spawn_limited(binary, env, 128, None).await
    }

    /// [`Process::spawn`] with `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` = `memory_mb` and, when given,
    /// in the cgroups of `limits` from its first instruction. With `limits` the init clock
    /// starts once the binary has been executed (`spawn` returns after `exec`): joining the
    /// cgroups between fork and exec can wait for an RCU grace period of the kernel (cgroup
    /// v1 migrations), a cost of the sandbox, which Lambda's Init Duration does not include.
    pub async fn spawn_limited(
        binary: &Path,
        env: &BTreeMap<String, String>,
        memory_mb: u64,
        limits: Option<&local::runtime::limits::InstanceLimits>,
    ) -> Result<Process, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (events, events_rx) = mpsc::channel(1);
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let api = Arc::new(Api {
            events: Mutex::new(events_rx),
            reports: reports_tx,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(done))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(done))
            .route("/2018-06-01/runtime/init/error", post(done))
            .with_state(api);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut command = Command::new(binary);
        if let Some(limits) = limits {
            limits.attach(&mut command);
        }
        let mut spawned_at = Instant::now();
        let child = command
            .env_clear()
            .envs(env)
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string())
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("_HANDLER", "bootstrap")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        if limits.is_some() {
            spawned_at = Instant::now();
        }
        Ok(Process {
            child,
            spawned_at,
            events,
            reports,
            server,
        })
    }

    /// Waits for the first `invocation/next`: the init duration.
    pub async fn init(&mut self) -> Result<Duration, String> {
        match tokio::time::timeout(WAIT, self.reports.recv()).await {
            Ok(Some(Report::Next(at))) => Ok(at - self.spawned_at),
            Ok(Some(Report::Done(body))) => {
                Err(format!("init error: {}", String::from_utf8_lossy(&body)))
            }
            Ok(None) | Err(_) => Err("no invocation/next within 10 s".into()),
        }
    }

    /// Invokes the function with `event` and waits for its response (or error): its body.
    pub async fn invoke(&mut self, event: Vec<u8>) -> Result<Bytes, String> {
        self.events.send(event).await.map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(WAIT, self.reports.recv()).await {
                Ok(Some(Report::Done(body))) => return Ok(body),
                Ok(Some(Report::Next(_))) => continue,
                Ok(None) | Err(_) => return Err("no response within 10 s".into()),
            }
        }
    }

    /// Peak resident set size (`VmHWM`), in KiB.
    pub fn max_rss_kib(&self) -> Option<u64> {
        crate::proc::max_rss_kib(self.child.id()?)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        self.server.abort();
    }
}

async fn next(State(api): State<Arc<Api>>) -> Response {
    let _ = api.reports.send(Report::Next(Instant::now()));
    let Some(body) = api.events.lock().await.recv().await else {
        return StatusCode::GONE.into_response();
    };
    let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
    (
        StatusCode::OK,
        [
            ("content-type", "application/json".to_string()),
            (
                "lambda-runtime-aws-request-id",
                uuid::Uuid::new_v4().to_string(),
            ),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:bench".to_string(),
            ),
            ("lambda-runtime-trace-id", "Root=1-bench".to_string()),
        ],
        body,
    )
        .into_response()
}

async fn done(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let _ = api.reports.send(Report::Done(body));
    (StatusCode::ACCEPTED, r#"{"status":"OK"}"#).into_response()
}
