//! Latency through `local dev`: warm query routes vs a bare `GetItem` to the same emulator,
//! and command → query-visible.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

type Http = Client<HttpConnector, Full<Bytes>>;

/// When set, `local dev` looks for the function binaries under this target directory instead
/// (e.g. one where functions that were not built in release link to other builds).
pub const TARGET_DIR_ENV: &str = "BENCH_LOCAL_TARGET_DIR";

/// A running `local dev`; it exits when its stdin closes (on drop).
pub struct LocalDev {
    pub base: String,
    child: Child,
    _stdin: ChildStdin,
    http: Http,
    /// `Bearer <dev token>` of an agent and supervisor: the template's authorizer protects
    /// every route the benchmark calls.
    authorization: String,
}

impl LocalDev {
    /// Starts the release `local` binary (`--release --no-build`) against `endpoint` and waits
    /// for its `ready` line.
    /// Its output goes to `log`.
    pub fn start(
        local: &Path,
        root: &Path,
        endpoint: &str,
        stack: &str,
        log: &Path,
    ) -> Result<Self, String> {
        let authorization = format!("Bearer {}", dev_token(root, stack)?);
        let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let log_out = log.try_clone().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut child = Command::new(local)
            .args(["dev", "--release", "--no-build", "--stack", stack])
            .args(["--port", &port.to_string()])
            .current_dir(root)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("LOCAL_EXIT_ON_STDIN_EOF", "1")
            .envs(std::env::var_os(TARGET_DIR_ENV).map(|dir| ("CARGO_TARGET_DIR", dir)))
            .env_remove("PORT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", local.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            // Its stdout (REPORT lines, function logs) goes to the log too, and never blocks.
            let mut log = log_out;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line == "ready" {
                    let _ = ready_tx.send(());
                }
            }
        });
        if ready.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = child.kill();
            return Err("local dev did not print ready within 120 s (see its log)".into());
        }
        Ok(LocalDev {
            base: format!("http://127.0.0.1:{port}"),
            child,
            _stdin: stdin,
            http: Client::builder(TokioExecutor::new()).build_http(),
            authorization,
        })
    }

    /// Sends a request; returns the status.
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Result<u16, String> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("authorization", &self.authorization)
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .map_err(|e| e.to_string())?;
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }

    /// Registers an agent and polls its state every `poll` until it is visible: the latency.
    pub async fn command_to_visible(&self, id: &str, poll: Duration) -> Result<Duration, String> {
        let body = r#"{"name": "Bench", "skills": ["billing"], "capacity": 2}"#;
        let started = Instant::now();
        let status = self
            .send("PUT", &format!("/agents/{id}"), Some(body))
            .await?;
        if status != 202 {
            return Err(format!("PUT /agents/{id}: {status}"));
        }
        let path = format!("/agents/{id}/state");
        while started.elapsed() < Duration::from_secs(10) {
            if self.send("GET", &path, None).await? == 200 {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(poll).await;
        }
        Err(format!("{id} not visible within 10 s"))
    }
}

/// A token `local dev` (started in `root`, so verifying with `root/.dev/auth` or
/// `LOCAL_AUTH_DIR`) accepts for the routes the benchmark calls.
fn dev_token(root: &Path, stack: &str) -> Result<String, String> {
    use local::auth::{Role, TokenRequest};
    let path = root.join("template.yaml");
    let template = local::template::Template::load(&path).map_err(|e| e.to_string())?;
    let issuer = local::auth::issuer(&template, stack).map_err(|e| e.to_string())?;
    let request = TokenRequest::new(&issuer, &[Role::Supervisor, Role::Agent]);
    local::auth::mint(&local::auth::key_dir(&path), &request).map_err(|e| e.to_string())
}

impl Drop for LocalDev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `clients` concurrent clients, each running `per_client` requests back to back; every
/// request's latency.
pub async fn concurrent<F, Fut>(clients: usize, per_client: usize, request: F) -> Vec<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let request = &request;
    let all = futures::future::join_all((0..clients).map(|_| async move {
        let mut out = Vec::with_capacity(per_client);
        for _ in 0..per_client {
            let started = Instant::now();
            match request().await {
                Ok(()) => out.push(started.elapsed()),
                Err(e) => eprintln!("request failed: {e}"),
            }
        }
        out
    }))
    .await;
    all.into_iter().flatten().collect()
}

/// The `GetItem` the agent state route makes, straight to the emulator.
pub async fn get_item(db: &aws_sdk_dynamodb::Client, table: &str, id: &str) -> Result<(), String> {
    db.get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("AGENT#{id}")))
        .key("sk", AttributeValue::S("PROFILE".into()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string())?
        .item
        .ok_or_else(|| format!("agent {id} not found"))
        .map(drop)
}
