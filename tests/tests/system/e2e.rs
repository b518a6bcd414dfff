//! End to end through `local dev`: the real function binaries behind the local HTTP API, the
//! SQS pollers and the Runtime API, against a moto server of this test binary. One `local dev`
//! process serves every test (started on first use; it builds the binaries itself), each test
//! using ids of its own. Run with `--nocapture` to see the measured latencies and init
//! durations.
//!
//! Every route but `/health`, `/openapi.json` and `POST /agents/match` needs a JWT
//! (template.yaml's authorizer): requests carry a dev token with every role, minted with the key
//! pair `local dev` verifies with (`.dev/auth/`, or `LOCAL_AUTH_DIR`, which both inherit); a test
//! acting on accounts brings a trader token naming them. `POST /agents/match` is `AWS_IAM`
//! (service to service): requests to it are signed with SigV4 as the conversations worker signs
//! them, with the credentials `local dev` gives its functions (inherited, else `test`/`test`).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use local::auth::{Issuer, Role, TokenRequest};
use serde_json::{Value, json};

/// Stack name given to `local dev`: resources are `e2e-AgentsQueue`, `e2e-AgentsDLQ`, ...
const STACK: &str = "e2e";
/// A cold `local dev` builds every function binary first; a 2-core machine needs time.
const READY_WITHIN: Duration = Duration::from_secs(20 * 60);

/// The shared `local dev` process. It is a static, so never dropped: it runs with
/// `LOCAL_EXIT_ON_STDIN_EOF=1` and a piped stdin, and stops (functions and all) when this test
/// process exits and the pipe closes. The emulator dies the same way (its guard's pipe).
struct Runner {
    base: String,
    endpoint: String,
    /// Every line it printed (stdout and stderr).
    output: Arc<Mutex<Vec<String>>>,
    _stdin: ChildStdin,
    /// Never waited for: the process outlives every test and exits with this one.
    child: Child,
    _emulator: local::emulator::Emulator,
}

fn runner() -> &'static Runner {
    static RUNNER: OnceLock<Runner> = OnceLock::new();
    RUNNER.get_or_init(start)
}

fn start() -> Runner {
    let emulator = local::emulator::spawn_on_free_port().expect("start moto server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let started = Instant::now();
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "-q", "-p", "local", "--bin", "local", "--", "dev"])
        .args(["--port", &port.to_string(), "--stack", STACK])
        .current_dir(system_tests::root())
        .env("AWS_ENDPOINT_URL", &emulator.endpoint)
        .env("LOCAL_RETRY_DELAY_SECONDS", "0")
        .env("LOCAL_EXIT_ON_STDIN_EOF", "1")
        .env_remove("PORT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cargo run -p local");
    let output = Arc::new(Mutex::new(Vec::new()));
    let forward = |stream: Box<dyn Read + Send>| {
        let output = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                output.lock().unwrap().push(line);
            }
        });
    };
    forward(Box::new(child.stdout.take().unwrap()));
    forward(Box::new(child.stderr.take().unwrap()));
    let mut runner = Runner {
        base: format!("http://127.0.0.1:{port}"),
        endpoint: emulator.endpoint.clone(),
        output,
        _stdin: child.stdin.take().unwrap(),
        child,
        _emulator: emulator,
    };
    while !runner.lines().iter().any(|l| l == "ready") {
        if let Ok(Some(status)) = runner.child.try_wait() {
            panic!("local dev exited ({status}):\n{}", runner.tail(80));
        }
        assert!(
            started.elapsed() < READY_WITHIN,
            "local dev not ready within {READY_WITHIN:?}:\n{}",
            runner.tail(80)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "local dev ready in {:.1} s (including cargo run and the build)",
        started.elapsed().as_secs_f64()
    );
    runner
}

impl Runner {
    fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Lines containing every one of `parts`.
    fn matching(&self, parts: &[&str]) -> Vec<String> {
        self.output
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect()
    }

    fn count(&self, parts: &[&str]) -> usize {
        self.matching(parts).len()
    }

    async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&system_tests::sdk_for(&self.endpoint).await)
    }
}

/// An HTTP answer of the local API.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// The issuer and audience `local dev` accepts (template.yaml's parameters' defaults) and the
/// directory of the key pair it verifies with.
fn dev_issuer() -> &'static (Issuer, PathBuf) {
    static ISSUER: OnceLock<(Issuer, PathBuf)> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let path = system_tests::root().join("template.yaml");
        let template = local::template::Template::load(&path).expect("template.yaml");
        let issuer = local::auth::issuer(&template, STACK).expect("the template's JWT issuer");
        (issuer, local::auth::key_dir(&path))
    })
}

/// A dev token request for `roles`, issued now for 12 hours.
fn token_request(roles: &[Role]) -> TokenRequest {
    TokenRequest::new(&dev_issuer().0, roles)
}

/// `request` as a token signed with the dev key (created here when `local dev` has not yet).
fn mint(request: &TokenRequest) -> String {
    local::auth::mint(&dev_issuer().1, request).expect("mint a dev token")
}

/// A trader (and every other role) acting on `accounts`.
fn trader_token(accounts: &[&str]) -> String {
    let mut request = token_request(&Role::ALL);
    request.accounts = accounts.iter().map(|a| a.to_string()).collect();
    mint(&request)
}

/// What [`send`] authenticates with: every role, no accounts.
fn default_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| mint(&token_request(&Role::ALL)))
}

/// One request to the local API with a real HTTP client, carrying [`default_token`].
async fn send(method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    send_as(Some(default_token()), method, path, body, headers).await
}

/// One request to the local API with a real HTTP client, carrying `token` as a bearer token
/// (no `authorization` header when `None`).
async fn send_as(
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let auth = token.map_or(Auth::None, Auth::Bearer);
    send_with(auth, method, path, body, headers).await
}

/// One request to an `AWS_IAM` route, signed with the functions' credentials.
async fn send_signed(
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let credentials = local::runtime::FunctionCredentials::from_env();
    send_with(Auth::SigV4(&credentials), method, path, body, headers).await
}

/// How a request authenticates.
enum Auth<'a> {
    None,
    Bearer(&'a str),
    /// Signed with SigV4 for `execute-api` in the runner's region with these credentials.
    SigV4(&'a local::runtime::FunctionCredentials),
}

/// The region `local dev` runs in: its SDK configuration's (`AWS_REGION`, else
/// `AWS_DEFAULT_REGION`, else `us-east-1`).
fn region() -> String {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "us-east-1".into())
}

async fn send_with(
    auth: Auth<'_>,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let rt = runner();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", rt.base));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Auth::Bearer(token) = auth {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let bytes = body.unwrap_or_default().to_owned();
    let mut req = req
        .body(Full::new(Bytes::from(bytes.clone())))
        .expect("request");
    if let Auth::SigV4(credentials) = auth {
        local::auth::sigv4::sign_request(&mut req, bytes.as_bytes(), credentials, &region())
            .expect("signed");
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer in 30 s\n{}", rt.tail(40)))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", rt.tail(40)));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// Polls `check` every 20 ms until it yields a value; panics after `within`.
async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\n{}",
            runner().tail(60)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn register(id: &str, skills: &[&str], capacity: u32) -> Answer {
    let body = json!({"name": "E2E", "skills": skills, "capacity": capacity}).to_string();
    let a = send("PUT", &format!("/agents/{id}"), Some(&body), &[]).await;
    assert_eq!(a.status, 202, "register {id}: {:?}", a.body);
    a
}

async fn change_state(id: &str, state: &str) -> Answer {
    let body = json!({ "state": state }).to_string();
    let key = unique("key");
    let a = send(
        "POST",
        &format!("/agents/{id}/state"),
        Some(&body),
        &[("idempotency-key", &key)],
    )
    .await;
    assert_eq!(a.status, 202, "state of {id}: {:?}", a.body);
    a
}

/// Sends `GET path` with `token` ([`send_as`]) until it answers `200` with a body `done`
/// accepts; returns that body. Panics after `within` (`what` names the wait).
async fn get_until_as(
    token: Option<&str>,
    what: &str,
    within: Duration,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, within, async || {
        let a = send_as(token, "GET", path, None, &[]).await;
        (a.status == 200 && done(&a.body)).then_some(a.body)
    })
    .await
}

/// [`get_until_as`] with [`default_token`].
async fn get_until(
    what: &str,
    within: Duration,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    get_until_as(Some(default_token()), what, within, path, done).await
}

/// Waits until `GET /agents/{id}/state` shows the agent in `state`; returns the agent.
async fn wait_for_state(id: &str, state: &str, within: Duration) -> Value {
    let path = format!("/agents/{id}/state");
    get_until(&format!("{id} {state}"), within, &path, |agent| {
        agent["state"] == state
    })
    .await
}

/// A new agent (id `prefix-…`) with `skills` and capacity 1, registered (OFFLINE) and shown by
/// the query once this returns.
async fn registered_agent(prefix: &str, skills: &[&str]) -> String {
    let agent = unique(prefix);
    register(&agent, skills, 1).await;
    wait_for_state(&agent, "OFFLINE", Duration::from_secs(30)).await;
    agent
}

/// A new agent (id `prefix-…`) with `skill` and capacity 1, AVAILABLE once this returns.
async fn available_agent(prefix: &str, skill: &str) -> String {
    let agent = registered_agent(prefix, &[skill]).await;
    change_state(&agent, "AVAILABLE").await;
    wait_for_state(&agent, "AVAILABLE", Duration::from_secs(30)).await;
    agent
}

/// Starts a conversation needing `skill` (`headers` added to the request) and waits until it is
/// ASSIGNED; returns its path (`/conversations/{id}`, the answer's `location`) and the
/// conversation.
async fn start_assigned(skill: &str, headers: &[(&str, &str)]) -> (String, Value) {
    let body = json!({"customerId": "cust-1", "channel": "chat", "skills": [skill]}).to_string();
    let created = send("POST", "/conversations", Some(&body), headers).await;
    assert_eq!(created.status, 202, "{:?}", created.body);
    let id = created.body["conversationId"].as_str().unwrap();
    let path = format!("/conversations/{id}");
    assert_eq!(created.header("location"), path);
    let within = Duration::from_secs(30);
    let conv = get_until("conversation ASSIGNED", within, &path, |c| {
        c["status"] == "ASSIGNED"
    })
    .await;
    (path, conv)
}

/// Waits until a line of `local dev`'s output contains every one of `parts` (`what` names it).
async fn wait_for_log(what: &str, parts: &[&str]) {
    let rt = runner();
    eventually(what, Duration::from_secs(30), async || {
        (rt.count(parts) > 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_command_is_accepted_then_shows_in_the_query() {
    runner(); // started (and built) before the clock starts
    let id = unique("e2e-a");
    let location = format!("/agents/{id}/state");

    let sent = Instant::now();
    let accepted = register(&id, &["billing"], 2).await;
    assert_eq!(accepted.header("location"), location);
    assert_eq!(accepted.body["agentId"], id.as_str());
    assert!(
        accepted.body["commandId"].is_string(),
        "{:?}",
        accepted.body
    );
    let agent = wait_for_state(&id, "OFFLINE", Duration::from_secs(10)).await;
    let mut latencies = vec![sent.elapsed()];
    assert_eq!(agent["name"], "E2E");
    assert_eq!(agent["capacity"], 2);
    assert_eq!(agent["skills"], json!(["billing"]));

    // State changes, each sent only once the previous one is visible.
    for state in ["AVAILABLE", "AWAY", "AVAILABLE", "AWAY", "AVAILABLE"] {
        let sent = Instant::now();
        let accepted = change_state(&id, state).await;
        assert_eq!(accepted.header("location"), location);
        wait_for_state(&id, state, Duration::from_secs(10)).await;
        latencies.push(sent.elapsed());
    }
    let mut sorted = latencies.clone();
    sorted.sort();
    eprintln!(
        "command -> query-visible latency through local dev: register {:.1} ms, state changes {:?} ms, p50 {:.1} ms",
        latencies[0].as_secs_f64() * 1000.0,
        latencies[1..]
            .iter()
            .map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0)
            .collect::<Vec<_>>(),
        sorted[sorted.len() / 2].as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn a_poison_message_reaches_the_dlq_while_the_commands_around_it_are_applied() {
    let rt = runner();
    let sqs = rt.sqs().await;
    let url = |name: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_url()
                .queue_name(name)
                .send()
                .await
                .expect("queue exists")
                .queue_url()
                .expect("url")
                .to_owned()
        }
    };
    let queue = url(format!("{STACK}-AgentsQueue")).await;
    let dlq = url(format!("{STACK}-AgentsDLQ")).await;

    let marker = unique("poison");
    let (good_1, good_2) = (unique("e2e-b1"), unique("e2e-b2"));
    register(&good_1, &[], 1).await;
    sqs.send_message()
        .queue_url(&queue)
        .message_body(json!({"detail": {"type": "NoSuchCommand"}, "e2e": marker}).to_string())
        .send()
        .await
        .expect("send poison");
    register(&good_2, &[], 1).await;

    wait_for_state(&good_1, "OFFLINE", Duration::from_secs(30)).await;
    wait_for_state(&good_2, "OFFLINE", Duration::from_secs(30)).await;

    // maxReceiveCount is 5; LOCAL_RETRY_DELAY_SECONDS=0 retries at once.
    let dead = eventually(
        "poison message in the DLQ",
        Duration::from_secs(90),
        async || {
            let out = sqs
                .receive_message()
                .queue_url(&dlq)
                .max_number_of_messages(10)
                .visibility_timeout(2)
                .send()
                .await
                .expect("receive from DLQ");
            out.messages()
                .iter()
                .find(|m| m.body().unwrap_or_default().contains(&marker))
                .cloned()
        },
    )
    .await;
    assert!(dead.body().unwrap().contains("NoSuchCommand"));
    assert!(
        rt.count(&[
            "[poller] AgentsWorkerFunction",
            "left in the queue for retry"
        ]) >= 1,
        "the worker reported the poison message as a batch item failure:\n{}",
        rt.tail(60)
    );
    // Both good agents stay applied (nothing was rolled back with the poison message).
    for id in [&good_1, &good_2] {
        let a = send("GET", &format!("/agents/{id}/state"), None, &[]).await;
        assert_eq!(a.status, 200, "{id}: {:?}", a.body);
    }
}

#[tokio::test]
async fn bad_input_through_the_gateway_gets_a_problem() {
    let id = unique("e2e-c");
    let path = format!("/agents/{id}");
    for (body, status, field) in [
        ("{not json", 400, None),
        (r#"{"name": "N", "capacity": 99}"#, 422, Some("capacity")),
    ] {
        let a = send("PUT", &path, Some(body), &[]).await;
        assert_eq!(a.status, status, "{body}: {:?}", a.body);
        assert_eq!(a.header("content-type"), "application/problem+json");
        for k in ["type", "title", "status", "detail"] {
            assert!(
                !a.body[k].is_null(),
                "{body}: problem lacks {k}: {:?}",
                a.body
            );
        }
        assert_eq!(a.body["status"], status);
        if let Some(f) = field {
            assert_eq!(a.body["field"], f, "{body}");
        }
    }
    // Nothing was accepted.
    assert_eq!(
        send("GET", &format!("{path}/state"), None, &[])
            .await
            .status,
        404
    );
    // A route that is not in template.yaml does not exist: API Gateway's own 404.
    let a = send("DELETE", &path, None, &[]).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body, json!({"message": "Not Found"}));
    // Headers the gateway sets itself: a client's unparsable values never reach a function
    // (lambda_http cannot build a request URL from them).
    for header in [("x-forwarded-proto", "a b"), ("x-forwarded-port", "no")] {
        let a = send("GET", "/health", None, &[header]).await;
        assert_eq!(a.status, 200, "{header:?}: {:?}", a.body);
    }
    // A dot-segment is the decoded path parameter `.` (a 422 naming it), never another route.
    let token = trader_token(&["acc-dot"]);
    for raw in ["%2E", "%2e%2E"] {
        let path = format!("/accounts/acc-dot/positions/{raw}");
        let a = send_as(Some(&token), "GET", &path, None, &[]).await;
        assert_eq!(
            (a.status, &a.body["field"]),
            (422, &json!("symbol")),
            "{path}: {:?}",
            a.body
        );
    }
}

#[tokio::test]
async fn concurrent_matches_fill_capacity_exactly_on_several_instances() {
    let rt = runner();
    // A skill of this test only, so other tests' agents are never candidates.
    let skill = unique("s");
    let agents = [unique("e2e-d1"), unique("e2e-d2")];
    for id in &agents {
        register(id, &[&skill], 2).await;
    }
    for id in &agents {
        wait_for_state(id, "OFFLINE", Duration::from_secs(30)).await;
        change_state(id, "AVAILABLE").await;
    }
    for id in &agents {
        wait_for_state(id, "AVAILABLE", Duration::from_secs(30)).await;
    }

    let requests = 10;
    let answers = futures::future::join_all((0..requests).map(|i| {
        let body =
            json!({"conversationId": format!("{skill}-conv-{i}"), "skills": [skill]}).to_string();
        async move { send_signed("POST", "/agents/match", Some(&body), &[]).await }
    }))
    .await;
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let conflicts = answers.iter().filter(|a| a.status == 409).count();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(ok.len(), 4, "2 agents x capacity 2: {statuses:?}");
    assert_eq!(conflicts, requests - 4, "the rest conflict: {statuses:?}");
    for a in answers.iter().filter(|a| a.status == 409) {
        assert_eq!(a.header("content-type"), "application/problem+json");
    }
    for id in &agents {
        let held = ok
            .iter()
            .filter(|a| a.body["agentId"] == id.as_str())
            .count();
        assert_eq!(held, 2, "{id} holds exactly its capacity");
        let agent = send("GET", &format!("/agents/{id}/state"), None, &[]).await;
        assert_eq!(agent.body["activeConversations"], 2);
    }
    // Overlapping requests ran on more than one instance: one cold start each.
    let cold = rt.count(&["[AgentsApiFunction] REPORT", "Init Duration"]);
    assert!(
        cold > 1,
        "{cold} AgentsApiFunction instance(s):\n{}",
        rt.tail(60)
    );
}

/// `name: 12.34 ms` / `name: 12 MB` in a REPORT line.
fn field(line: &str, name: &str) -> Option<f64> {
    let rest = &line[line.find(&format!("{name}: "))? + name.len() + 2..];
    rest.split_whitespace().next()?.parse().ok()
}

#[tokio::test]
async fn report_lines_carry_duration_memory_and_init_duration() {
    let rt = runner();
    // Make sure both functions have run at least once.
    registered_agent("e2e-e", &[]).await;

    for function in ["AgentsApiFunction", "AgentsWorkerFunction"] {
        let prefix = format!("[{function}] REPORT RequestId: ");
        let reports = rt.matching(&[&prefix]);
        assert!(!reports.is_empty(), "no REPORT for {function}");
        for line in &reports {
            let duration = field(line, "Duration").unwrap_or(-1.0);
            assert!(duration > 0.0, "{line}");
            assert!(
                field(line, "Billed Duration").unwrap_or(0.0) >= 1.0,
                "{line}"
            );
            assert!(
                field(line, "Memory Size").is_some_and(|mb| mb >= 128.0),
                "{line}"
            );
            let memory = field(line, "Max Memory Used").unwrap_or(0.0);
            assert!(memory > 0.0 && memory < 1024.0, "{line}");
        }
        let inits: Vec<f64> = reports
            .iter()
            .filter_map(|l| field(l, "Init Duration"))
            .collect();
        assert!(!inits.is_empty(), "no cold start REPORT for {function}");
        assert!(
            inits.iter().all(|ms| *ms > 0.0 && *ms < 10_000.0),
            "{inits:?}"
        );
        eprintln!(
            "{function}: {} invocations, init durations {inits:?} ms",
            reports.len()
        );
    }
}

/// The contact centre end to end: create → ASSIGNED (sync match) → message → READ (a late DELIVERED
/// does not move it back) → close → the agent's slot is freed.
#[tokio::test]
async fn a_conversation_goes_from_created_to_closed_and_frees_its_agent() {
    let skill = unique("sk");
    let agent = available_agent("conv-agent", &skill).await;

    let (path, conv) = start_assigned(&skill, &[]).await;
    assert_eq!(conv["agentId"], agent.as_str());
    assert!(conv["assignedAt"].is_string());

    let sent = send(
        "POST",
        &format!("{path}/messages"),
        Some(r#"{"sender": "customer", "text": "hello"}"#),
        &[],
    )
    .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let message = format!(
        "{path}/messages/{}",
        sent.body["messageId"].as_str().unwrap()
    );
    let within = Duration::from_secs(30);
    get_until("message SENT", within, &message, |m| m["status"] == "SENT").await;
    for receipt in ["READ", "DELIVERED"] {
        let body = json!({ "status": receipt }).to_string();
        let a = send("POST", &format!("{message}/receipts"), Some(&body), &[]).await;
        assert_eq!(a.status, 202, "{receipt}: {:?}", a.body);
    }
    get_until("message READ", within, &message, |m| m["status"] == "READ").await;

    let closed = send("POST", &format!("{path}/close"), Some("{}"), &[]).await;
    assert_eq!(closed.status, 202, "{:?}", closed.body);
    get_until("conversation CLOSED", within, &path, |c| {
        c["status"] == "CLOSED"
    })
    .await;
    let agent_path = format!("/agents/{agent}/state");
    get_until("agent freed", within, &agent_path, |a| {
        a["activeConversations"] == 0
    })
    .await;
    // The READ stayed READ although DELIVERED was processed after it.
    let a = send("GET", &message, None, &[]).await;
    assert_eq!(a.body["status"], "READ");
}

/// The trading back office end to end: buy 10 @ 100, buy 5 @ 130, sell 20 (more than held: REJECTED),
/// sell 12 @ 150. By hand: average cost (1000 + 650) / 15 = 110; P&L 12 × (150 − 110) = 480;
/// 3 left; cash −1650 + 1800 = 150 and securities −150, summing to zero.
#[tokio::test]
async fn trades_execute_in_order_into_positions_and_a_balanced_ledger() {
    let account = unique("acct");
    let token = trader_token(&[&account]);
    let send = async |method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]| {
        send_as(Some(&token), method, path, body, headers).await
    };
    let orders = [
        ("BUY", json!(10), json!("100")),
        ("BUY", json!("5"), json!(130)),
        ("SELL", json!("20"), json!("150")),
        ("SELL", json!(12), json!("150.00")),
    ];
    let mut ids = Vec::new();
    for (side, quantity, price) in orders {
        let body = json!({"accountId": account, "symbol": "ACME", "side": side,
                          "quantity": quantity, "price": price})
        .to_string();
        let key = unique("trade");
        let a = send("POST", "/trades", Some(&body), &[("idempotency-key", &key)]).await;
        assert_eq!(a.status, 202, "{:?}", a.body);
        ids.push(a.body["tradeId"].as_str().unwrap().to_owned());
    }
    let within = Duration::from_secs(60);
    let mut statuses = Vec::new();
    for id in &ids {
        let path = format!("/trades/{id}");
        let trade = get_until_as(Some(&token), "trade decided", within, &path, |t| {
            t["status"] == "EXECUTED" || t["status"] == "REJECTED"
        })
        .await;
        statuses.push(trade["status"].clone());
    }
    assert_eq!(statuses, ["EXECUTED", "EXECUTED", "REJECTED", "EXECUTED"]);

    let position = format!("/accounts/{account}/positions/ACME");
    let what = "position after the last sell";
    let p = get_until_as(Some(&token), what, within, &position, |p| {
        p["realizedPnl"] == "480"
    })
    .await;
    assert_eq!(p["quantity"], "3");
    assert_eq!(p["averagePrice"], "110");

    let balance = format!("/accounts/{account}/balance");
    let b = get_until_as(Some(&token), "ledger balance", within, &balance, |b| {
        b["balances"]["cash"] == "150"
    })
    .await;
    assert_eq!(b["balances"]["securities:ACME"], "-150");
    assert_eq!(b["total"], "0");
    let ledger = send("GET", &format!("/accounts/{account}/ledger"), None, &[]).await;
    assert_eq!(ledger.body["entries"].as_array().unwrap().len(), 6);
}

/// Observability end to end: the correlation id sent with one `POST /conversations` is in the
/// log lines of every function the request reached (the API, the worker that applied it, the
/// agents API its match call reached, the analytics worker that counted its events), and the
/// analytics API serves the counts through the gateway.
#[tokio::test]
async fn one_correlation_id_follows_a_conversation_through_every_function() {
    let rt = runner();
    let skill = unique("corr-sk");
    let agent = available_agent("corr-agent", &skill).await;

    let correlation = unique("corr");
    start_assigned(&skill, &[("x-correlation-id", &correlation)]).await;
    // The analytics worker counted the start and the match (events caused by this request).
    let stats = format!("/analytics/agents/{agent}");
    let what = "analytics counted the match";
    let counted = get_until(what, Duration::from_secs(30), &stats, |a| {
        // Timed: both its ConversationStarted and its AgentMatched were counted.
        a["assignmentsTimed"] == 1
    })
    .await;
    assert_eq!(counted["agentId"], agent.as_str());
    assert_eq!(counted["conversationsHandled"], 1);
    assert!(
        counted["meanTimeToAssignMs"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0)
    );
    let summary = send("GET", "/analytics/summary", None, &[]).await;
    assert_eq!(summary.status, 200, "{:?}", summary.body);
    assert!(summary.body["conversationsCreated"].as_u64().unwrap() >= 1);

    for function in [
        "ConversationsApiFunction",
        "ConversationsWorkerFunction",
        "AgentsApiFunction",
        "AnalyticsWorkerFunction",
    ] {
        let prefix = format!("[{function}] ");
        let what = format!("{correlation} in the logs of {function}");
        wait_for_log(&what, &[&prefix, &correlation]).await;
    }
    // Each such line is one JSON log record carrying the id as a field, not just in a message.
    for line in rt.matching(&[&correlation]) {
        let Some((_, json)) = line.split_once("] ") else {
            continue;
        };
        let record: Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert_eq!(
            record["span"]["correlation_id"],
            correlation.as_str(),
            "{line}"
        );
    }
}

/// Every Embedded Metric Format line the functions printed is one CloudWatch accepts: an
/// `_aws` object with a numeric `Timestamp` and `CloudWatchMetrics` directives whose
/// dimensions and metrics name top-level members, the metric values numbers.
#[tokio::test]
async fn every_emf_line_is_valid_emf() {
    let rt = runner();
    // At least one API request and one worker batch.
    registered_agent("e2e-emf", &[]).await;
    assert_eq!(
        send("GET", "/analytics/summary", None, &[]).await.status,
        200
    );

    // The functions' output reaches the runner's log a moment after their answers.
    let wanted = [
        "AgentsApiFunction",
        "AgentsWorkerFunction",
        "AnalyticsApiFunction",
    ];
    eventually(
        "an EMF line from every function",
        Duration::from_secs(10),
        async || {
            let lines = rt.lines();
            wanted
                .iter()
                .all(|f| {
                    let prefix = format!("[{f}");
                    lines
                        .iter()
                        .any(|l| l.starts_with(&prefix) && l.contains("\"_aws\""))
                })
                .then_some(())
        },
    )
    .await;
    // One snapshot (other tests keep logging): every line that mentions `_aws` is a
    // function's JSON line with an `_aws` object.
    let emf: Vec<(String, Value)> = rt
        .lines()
        .into_iter()
        .filter(|line| line.contains("\"_aws\""))
        .map(|line| {
            let (prefix, json) = line
                .split_once("] ")
                .unwrap_or_else(|| panic!("not a function's line: {line}"));
            let doc: Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("EMF line is not JSON ({e}): {line}"));
            assert!(doc["_aws"].is_object(), "{line}");
            (prefix.trim_start_matches('[').to_owned(), doc)
        })
        .collect();
    for function in wanted {
        assert!(
            emf.iter().any(|(f, _)| f == function),
            "no EMF line from {function}"
        );
    }
    for (function, doc) in &emf {
        let aws = &doc["_aws"];
        assert!(
            aws["Timestamp"].as_i64().is_some_and(|t| t > 0),
            "{function}: {doc}"
        );
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .expect("CloudWatchMetrics");
        assert!(!directives.is_empty(), "{function}: {doc}");
        for d in directives {
            assert!(
                d["Namespace"].as_str().is_some_and(|n| !n.is_empty()),
                "{doc}"
            );
            for set in d["Dimensions"].as_array().expect("Dimensions") {
                for name in set.as_array().expect("dimension set") {
                    let name = name.as_str().expect("dimension name");
                    assert!(doc[name].is_string(), "{function}: dimension {name}: {doc}");
                }
            }
            let metrics = d["Metrics"].as_array().expect("Metrics");
            assert!(!metrics.is_empty(), "{doc}");
            for m in metrics {
                let name = m["Name"].as_str().expect("metric name");
                assert!(doc[name].is_number(), "{function}: metric {name}: {doc}");
            }
        }
    }
}

/// JWT authorization through the real gateway, as API Gateway's JWT authorizer does it: no
/// token, a bad one (expired, another issuer, another audience, a forged signature, not a JWT)
/// → `401`, a valid one without the route's scope → `403`, and in neither case does the
/// function run; a valid token with the scope reaches it; public routes need none. The
/// `AWS_IAM` route takes a SigV4 signature and nothing else.
#[tokio::test]
async fn the_gateway_checks_tokens_before_any_function_runs() {
    let rt = runner();
    for public in ["/health", "/openapi.json"] {
        let a = send_as(None, "GET", public, None, &[]).await;
        assert_eq!(a.status, 200, "{public} is public: {:?}", a.body);
    }

    let agent = unique("e2e-auth");
    register(&agent, &[], 1).await;
    let path = format!("/agents/{agent}/state");
    let expired = {
        let mut r = token_request(&[Role::Agent]);
        r.issued_at -= 7200;
        r.ttl_secs = 3600;
        mint(&r)
    };
    let foreign_issuer = {
        let mut r = token_request(&[Role::Agent]);
        r.issuer = "https://issuer.elsewhere.invalid".into();
        mint(&r)
    };
    let foreign_audience = {
        let mut r = token_request(&[Role::Agent]);
        r.audience = "another-api".into();
        mint(&r)
    };
    // A valid header and payload (an operator's) with the signature of another payload.
    let forged = {
        let operator = mint(&token_request(&[Role::Operator]));
        let agent = mint(&token_request(&[Role::Agent]));
        let (head, _) = operator.rsplit_once('.').unwrap();
        let (_, signature) = agent.rsplit_once('.').unwrap();
        format!("{head}.{signature}")
    };
    let mut refused = Vec::new();
    for (what, token, expected_description) in [
        ("no token", None, None),
        ("expired", Some(expired.as_str()), Some("expired")),
        ("another issuer", Some(&foreign_issuer), Some("issuer")),
        (
            "another audience",
            Some(&foreign_audience),
            Some("audience"),
        ),
        ("forged", Some(&forged), Some("signature")),
        ("not a JWT", Some("not-a-jwt"), Some("not a valid JWT")),
    ] {
        let correlation = unique("refused");
        let a = send_as(
            token,
            "GET",
            &path,
            None,
            &[("x-correlation-id", &correlation)],
        )
        .await;
        assert_eq!(a.status, 401, "{what}: {:?}", a.body);
        assert_eq!(a.body, json!({"message": "Unauthorized"}), "{what}");
        assert_eq!(a.header("content-type"), "application/json", "{what}");
        let challenge = a.header("www-authenticate");
        match expected_description {
            None => assert_eq!(challenge, "Bearer", "{what}"),
            Some(reason) => {
                assert!(
                    challenge
                        .starts_with(r#"Bearer scope="agents supervisors" error="invalid_token""#)
                        && challenge.contains(reason),
                    "{what}: {challenge}"
                );
            }
        }
        refused.push(correlation);
    }

    // An agent may read an agent's state but not the DLQs: 403, the ops function never runs.
    let agent_token = mint(&token_request(&[Role::Agent]));
    let correlation = unique("forbidden");
    let a = send_as(
        Some(&agent_token),
        "GET",
        "/ops/dlq",
        None,
        &[("x-correlation-id", &correlation)],
    )
    .await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert_eq!(a.body, json!({"message": "Forbidden"}));
    assert!(
        a.header("www-authenticate")
            .starts_with(r#"Bearer scope="operators" error="insufficient_scope""#),
        "{}",
        a.header("www-authenticate")
    );
    refused.push(correlation);

    // The same agent token on a route of its scope reaches the function (its log has the id).
    let allowed = unique("allowed");
    let state = eventually("the agent's state", Duration::from_secs(30), async || {
        let a = send_as(
            Some(&agent_token),
            "GET",
            &path,
            None,
            &[("x-correlation-id", &allowed)],
        )
        .await;
        (a.status == 200).then_some(a.body)
    })
    .await;
    assert_eq!(state["agentId"], agent.as_str());
    let operator = mint(&token_request(&[Role::Operator]));
    let dlq = send_as(Some(&operator), "GET", "/ops/dlq", None, &[]).await;
    assert_eq!(dlq.status, 200, "{:?}", dlq.body);
    let what = "the allowed request in the agents API's log";
    wait_for_log(what, &["[AgentsApiFunction] ", &allowed]).await;

    // POST /agents/match is AWS_IAM (service to service): a JWT, even a supervisor's, no
    // authorization at all, or a signature with another secret → 403 as API Gateway answers
    // them, and the agents API never runs; a request signed with the functions' credentials
    // reaches it (409: no agent has this test's skill).
    let body =
        json!({"conversationId": unique("e2e-iam"), "skills": [unique("nobody")]}).to_string();
    let supervisor = mint(&token_request(&[Role::Supervisor]));
    let functions = local::runtime::FunctionCredentials::from_env();
    let wrong_secret = local::runtime::FunctionCredentials {
        secret_access_key: "not-the-functions-secret".into(),
        ..functions.clone()
    };
    // The match request, authenticated with `auth`, carrying `correlation`.
    let post_match = async |auth, correlation: &str| {
        let headers = [("x-correlation-id", correlation)];
        send_with(auth, "POST", "/agents/match", Some(&body), &headers).await
    };
    for (what, auth, expected) in [
        (
            "a supervisor's JWT",
            Auth::Bearer(&supervisor),
            "Authorization header requires 'Credential' parameter.",
        ),
        ("no authorization", Auth::None, "Forbidden"),
        (
            "another secret",
            Auth::SigV4(&wrong_secret),
            "The request signature we calculated does not match the signature you provided.",
        ),
    ] {
        let correlation = unique("refused-iam");
        let a = post_match(auth, &correlation).await;
        assert_eq!(a.status, 403, "{what}: {:?}", a.body);
        let message = a.body["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(expected), "{what}: {message}");
        assert_eq!(a.header("content-type"), "application/json", "{what}");
        assert_eq!(a.header("www-authenticate"), "", "{what}: no JWT challenge");
        refused.push(correlation);
    }
    let signed = unique("signed");
    let a = post_match(Auth::SigV4(&functions), &signed).await;
    assert_eq!(a.status, 409, "{:?}", a.body);
    assert_eq!(a.header("content-type"), "application/problem+json");
    let what = "the signed match in the agents API's log";
    wait_for_log(what, &["[AgentsApiFunction] ", &signed]).await;

    for correlation in &refused {
        let reached = rt.matching(&[correlation]);
        assert!(reached.is_empty(), "a refused request ran: {reached:?}");
    }
}

/// One command of the README's "Try it" block, and the status its comment documents.
struct Documented {
    /// The command, continuation lines joined.
    command: String,
    /// The status the comment starts with; `None` for commands that answer nothing (`export`).
    status: Option<u16>,
    /// "once …": a query that shows an effect a moment after its command's `202`.
    eventually: bool,
}

/// The commands of the README's "Try it" block (the first `sh` block after its heading).
fn readme_try_it() -> Vec<Documented> {
    let readme = std::fs::read_to_string(system_tests::root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Try it").expect("a Try it section")..];
    let start = section.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let (code, comment) = line.split_once(" # ").unwrap_or((line, ""));
        let code = code.trim_end();
        match code.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(code);
                let comment = comment.trim();
                commands.push(Documented {
                    command: std::mem::take(&mut current),
                    status: comment.get(..3).and_then(|s| s.parse().ok()),
                    eventually: comment.split_whitespace().any(|w| w == "once"),
                });
            }
        }
    }
    commands
}

/// The README's "Try it" block, pasted into a shell against `make dev`: every command answers
/// the status its comment documents (ids made unique to this run; the port the runner's).
#[tokio::test]
async fn the_readme_try_it_block_answers_as_documented() {
    let rt = runner();
    let commands = readme_try_it();
    assert!(commands.len() >= 10, "the block was found whole");
    let suffix = unique("r");
    let rename = |command: &str| {
        command
            .replace("localhost:3000", rt.base.trim_start_matches("http://"))
            .replace("agents/ada", &format!("agents/ada-{suffix}"))
            .replace("acc-1", &format!("acc-{suffix}"))
            .replace("\"c1\"", &format!("\"c1-{suffix}\""))
            .replace("ada-1'", &format!("ada-1-{suffix}'"))
            .replace("t-1'", &format!("t-1-{suffix}'"))
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for documented in &commands {
        let command = rename(&documented.command);
        if let Some(assignment) = command.strip_prefix("export ") {
            let name = assignment.split('=').next().unwrap().to_owned();
            let out = Command::new("bash")
                .args(["-c", &format!("{command}; printf %s \"${name}\"")])
                .current_dir(system_tests::root())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{command}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            env.push((name, String::from_utf8(out.stdout).unwrap()));
            continue;
        }
        let want = documented
            .status
            .unwrap_or_else(|| panic!("no documented status: {command}"));
        // Every curl of the block also prints the status, last.
        let script = format!(
            "curl() {{ command curl -w '\\n@status %{{http_code}}\\n' \"$@\"; }}\n{command}"
        );
        let deadline =
            Instant::now() + Duration::from_secs(if documented.eventually { 20 } else { 0 });
        loop {
            let out = tokio::process::Command::new("bash")
                .args(["-c", &script])
                .envs(env.iter().cloned())
                .current_dir(system_tests::root())
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let status = stdout
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("@status "))
                .and_then(|s| s.trim().parse::<u16>().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{command}: no status\n{stdout}\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
            if status == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{command}\nanswered {status}, the README says {want}\n{stdout}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
