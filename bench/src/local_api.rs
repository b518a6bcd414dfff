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
use local::auth::{Role, TokenRequest};
use serde_json::Value;

type Http = Client<HttpConnector, Full<Bytes>>;

/// When set, `local dev` looks for the function binaries under this target directory instead
/// (e.g. one where functions that were not built in release link to other builds).
pub const TARGET_DIR_ENV: &str = "BENCH_LOCAL_TARGET_DIR";

/// A running `local dev`; it exits when its stdin closes ([`LocalDev::stop`], or on drop).
pub struct LocalDev {
    pub base: String,
    child: Child,
    stdin: Option<ChildStdin>,
    http: Http,
    /// `Bearer <dev token>` of the roles of [`DevOptions::roles`]: the template's authorizer
    /// protects every route the benchmark calls.
    authorization: String,
}

/// How [`LocalDev::start_with`] starts `local dev`. The default is what `make bench` and
/// `make load` use: release binaries, a token of a supervisor and an agent.
#[derive(Debug, Clone, Default)]
pub struct DevOptions {
    /// The debug binaries (`target/debug`) instead of the release ones.
    pub debug: bool,
    /// More environment variables for `local dev` (e.g. `LOCAL_CHAOS`).
    pub env: Vec<(String, String)>,
    /// The roles of the token requests carry; empty: supervisor and agent.
    pub roles: Vec<Role>,
    /// The trader accounts of the token (its `accounts` claim).
    pub accounts: Vec<String>,
}

/// An answer: status, JSON body (`Null` when it is not JSON) and `Retry-After` in seconds.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<f64>,
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
        Self::start_with(local, root, endpoint, stack, log, &DevOptions::default())
    }

    /// [`LocalDev::start`] with `options`: `local` must be the binary of the profile they name.
    pub fn start_with(
        local: &Path,
        root: &Path,
        endpoint: &str,
        stack: &str,
        log: &Path,
        options: &DevOptions,
    ) -> Result<Self, String> {
        let authorization = format!("Bearer {}", dev_token(root, stack, options)?);
        let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let log_out = log.try_clone().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut child = Command::new(local)
            .arg("dev")
            .args((!options.debug).then_some("--release"))
            .args(["--no-build", "--stack", stack])
            .args(["--port", &port.to_string()])
            .current_dir(root)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("LOCAL_EXIT_ON_STDIN_EOF", "1")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
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
            stdin: Some(stdin),
            http: Client::builder(TokioExecutor::new()).build_http(),
            authorization,
        })
    }

    /// Sends a request with the dev token; returns the status.
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Result<u16, String> {
        Ok(self.request(method, path, body).await?.0)
    }

    /// Sends a request with the dev token; returns the status and the JSON body (`Null` when
    /// it is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let a = self.call(method, path, body, &[]).await?;
        Ok((a.status, a.body))
    }

    /// Sends a request with the dev token and `headers` (e.g. `Idempotency-Key`).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let mut req = self.build(method, path, body.unwrap_or_default(), headers)?;
        let authorization =
            http::HeaderValue::from_str(&self.authorization).map_err(|e| e.to_string())?;
        req.headers_mut().insert("authorization", authorization);
        self.answer(req).await
    }

    /// A JSON request to `path` with `headers`.
    fn build(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Request<Full<Bytes>>, String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())
    }

    /// Sends a request with `headers` to an `AWS_IAM` route, signed (headers included) with
    /// SigV4 by the credentials `local dev` gives its functions, as the conversations worker
    /// signs its calls.
    pub async fn call_signed(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let mut req = self.build(method, path, body, headers)?;
        let credentials = local::runtime::FunctionCredentials::from_env();
        local::auth::sigv4::sign_request(&mut req, body.as_bytes(), &credentials, &region())?;
        self.answer(req).await
    }

    async fn answer(&self, req: http::Request<Full<Bytes>>) -> Result<Answer, String> {
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            body: crate::load::json(&bytes),
            retry_after,
        })
    }

    /// Closes `local dev`'s stdin, so it shuts down in order (its last lines, such as the
    /// `[chaos] injected …` summary, reach the log), and waits up to `within` for it to exit;
    /// true when it did (otherwise it is killed on drop).
    pub fn stop(&mut self, within: Duration) -> bool {
        drop(self.stdin.take());
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
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

/// The region `local dev` runs in (its SDK configuration's: `AWS_REGION`, else
/// `AWS_DEFAULT_REGION`, else `us-east-1`), which signatures are scoped to.
fn region() -> String {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "us-east-1".into())
}

/// A token `local dev` (started in `root`, so verifying with `root/.dev/auth` or
/// `LOCAL_AUTH_DIR`) accepts for the routes the benchmark calls: `options`' roles (supervisor
/// and agent when none) and trader accounts.
fn dev_token(root: &Path, stack: &str, options: &DevOptions) -> Result<String, String> {
    let path = root.join("template.yaml");
    let template = local::template::Template::load(&path).map_err(|e| e.to_string())?;
    let issuer = local::auth::issuer(&template, stack).map_err(|e| e.to_string())?;
    let roles = if options.roles.is_empty() {
        &[Role::Supervisor, Role::Agent][..]
    } else {
        &options.roles[..]
    };
    let mut request = TokenRequest::new(&issuer, roles);
    request.accounts = options.accounts.clone();
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
