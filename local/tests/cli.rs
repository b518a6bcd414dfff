//! The `local` binary end to end: bad input fails clearly; `local dev` serves a route and
//! polls a queue with a stand-in function (tests/fixtures/fake_function.py), then stops
//! cleanly on SIGTERM, taking the emulator it started with it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_local");

const TEMPLATE: &str = r#"
Globals:
  Function:
    Timeout: 5
    Environment:
      Variables:
        QUEUE_URL: !Ref Jobs
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
  Jobs:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 30
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt JobsDLQ.Arn
        maxReceiveCount: 2
  JobsDLQ:
    Type: AWS::SQS::Queue
  Fn:
    Type: AWS::Serverless::Function
    Metadata:
      BuildProperties:
        Binary: fake-fn
    Properties:
      Environment:
        Variables:
          API_URL: !Sub "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}"
      Events:
        Echo:
          Type: HttpApi
          Properties: {Method: GET, Path: "/echo/{id}"}
        Health:
          Type: HttpApi
          Properties: {Method: GET, Path: /health}
        Queue:
          Type: SQS
          Properties:
            Queue: !GetAtt Jobs.Arn
            FunctionResponseTypes: [ReportBatchItemFailures]
"#;

/// A fresh directory with `template.yaml` and, unless `with_binary` is false, the fake
/// function installed as `target/debug/fake-fn`.
fn workspace(name: &str, template: &str, with_binary: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("local-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("target/debug")).unwrap();
    std::fs::write(dir.join("template.yaml"), template).unwrap();
    if with_binary {
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_function.py");
        std::fs::copy(fake, dir.join("target/debug/fake-fn")).unwrap();
    }
    dir
}

fn local(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("PORT");
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn failure(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn malformed_template_is_a_clear_error() {
    let dir = workspace("malformed", "Resources: [unclosed", false);
    let err = failure(local(&dir, &["dev", "--no-build"]).output().unwrap());
    assert!(err.contains("template.yaml: not valid YAML"), "{err}");
    let err = failure(
        local(&dir, &["dev", "--template", "missing.yaml"])
            .output()
            .unwrap(),
    );
    assert!(err.contains("cannot read template missing.yaml"), "{err}");
}

#[test]
fn missing_binary_is_a_clear_error() {
    let dir = workspace("missing", TEMPLATE, false);
    let port = free_port().to_string();
    let err = failure(
        local(&dir, &["dev", "--no-build", "--port", &port])
            .output()
            .unwrap(),
    );
    assert!(err.contains("function binary"), "{err}");
    assert!(
        err.contains("target/debug/fake-fn not found (function Fn)"),
        "{err}"
    );
}

#[test]
fn port_in_use_is_a_clear_error() {
    let dir = workspace("port", TEMPLATE, true);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = failure(
        local(&dir, &["dev", "--no-build", "--port", &port])
            .output()
            .unwrap(),
    );
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "{err}"
    );
}

#[test]
fn bad_arguments_exit_2() {
    let out = Command::new(BIN)
        .arg("dev")
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option \"--bogus\""));
}

/// `local token` signs with the key pair it creates beside the template, for the issuer and
/// audience of the template's authorizer, and the gateway's verifier accepts the token.
#[test]
fn token_prints_a_jwt_the_templates_authorizer_accepts() {
    let template = TEMPLATE.replace(
        "    Type: AWS::Serverless::HttpApi\n",
        "    Type: AWS::Serverless::HttpApi\n    Properties:\n      Auth:\n        DefaultAuthorizer: Jwt\n        Authorizers:\n          Jwt: {JwtConfiguration: {issuer: https://iss.test, audience: [aud]}}\n",
    );
    let dir = workspace("token", &template, false);
    let token = |args: &[&str]| {
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        local(&dir, &all)
            .env_remove("LOCAL_AUTH_DIR")
            .output()
            .unwrap()
    };
    let out = token(&[
        "--role",
        "trader operator",
        "--accounts",
        "A-1 A-2",
        "--ttl",
        "60",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = String::from_utf8(out.stdout).unwrap();
    assert_eq!(jwt.lines().count(), 1, "only the token on stdout: {jwt}");
    let jwks_path = dir.join(".dev/auth/jwks.json");
    let jwks = serde_json::from_slice(&std::fs::read(&jwks_path).unwrap()).unwrap();
    let verifier = local::auth::Verifier::new(
        "authorization",
        "https://iss.test".into(),
        vec!["aud".into()],
        &jwks,
    );
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {}", jwt.trim()).parse().unwrap(),
    );
    let now = chrono::Utc::now().timestamp();
    let ok = verifier.check(&headers, &["traders".into()], now).unwrap();
    assert_eq!(ok.claims["sub"], "dev-trader");
    assert_eq!(ok.claims["scope"], "traders operators");
    assert_eq!(ok.claims["accounts"], "A-1 A-2");
    assert_eq!(
        ok.claims["exp"].as_i64().unwrap() - ok.claims["iat"].as_i64().unwrap(),
        60
    );

    let usage = token(&["--role", "agent", "--accounts", "A-1"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("add --role trader"));
    let plain = workspace("token-none", TEMPLATE, false);
    let err = failure(
        local(&plain, &["token", "--role", "agent"])
            .output()
            .unwrap(),
    );
    assert!(err.contains("declares no JWT authorizer"), "{err}");
}

/// `GET` over a raw socket: status line and body.
fn get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, None)
}

/// One HTTP/1.1 request over a raw socket: status and body.
fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    raw_request(port, method, path, body, &host)
}

/// [`request`] with `head` as its header lines (each ending in CRLF), `Host` included.
fn raw_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    head: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (headers, body) = match body {
        Some(b) => (
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ),
            b,
        ),
        None => (String::new(), ""),
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{head}Connection: close\r\n{headers}\r\n{body}"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn wait_for(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return seen;
            }
        }
        panic!("{needle:?} not printed within {timeout:?}; got {seen:#?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (usize, usize) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = out.attributes().unwrap();
    let n = |k: A| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        n(A::ApproximateNumberOfMessages),
        n(A::ApproximateNumberOfMessagesNotVisible),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_serves_routes_polls_queues_and_stops_cleanly() {
    let dir = workspace("dev", TEMPLATE, true);
    let port = free_port();
    let emulator_port = free_port();
    let endpoint = format!("http://127.0.0.1:{emulator_port}");
    let mut child = local(
        &dir,
        &[
            "dev",
            "--no-build",
            "--port",
            &port.to_string(),
            "--stack",
            "t",
        ],
    )
    .env("AWS_ENDPOINT_URL", &endpoint)
    .env("LOCAL_RETRY_DELAY_SECONDS", "0")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("| {line}");
            let _ = tx.send(line);
        }
    });
    let running = Running { child, lines };
    let startup = running.wait_for("ready", Duration::from_secs(90));
    let table = startup.join("\n");
    assert!(table.contains("/echo/{id}"), "{table}");
    assert!(table.contains("Jobs (t-Jobs) -> Fn"), "{table}");
    assert!(table.contains("DLQ JobsDLQ (t-JobsDLQ)"), "{table}");
    assert!(table.contains("started by local"), "{table}");

    let (status, body) = tokio::task::spawn_blocking(move || get(port, "/echo/a%201?x=1"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["event"]["pathParameters"]["id"], "a 1");
    assert_eq!(echo["event"]["routeKey"], "GET /echo/{id}");
    // The gateway sets Host and X-Forwarded-* itself, whatever the client sent, as API
    // Gateway does: a function never sees a client's values there.
    let spoofed = "Host: bad host\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: a b\r\nX-Forwarded-Port: x\r\n";
    let (status, body) =
        tokio::task::spawn_blocking(move || raw_request(port, "GET", "/echo/h", None, spoofed))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let headers = &serde_json::from_str::<serde_json::Value>(&body).unwrap()["event"]["headers"];
    assert_eq!(headers["host"], format!("127.0.0.1:{port}"), "{headers}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{headers}");
    assert_eq!(headers["x-forwarded-port"], port.to_string(), "{headers}");
    assert_eq!(echo["env"]["API_URL"], format!("http://127.0.0.1:{port}"));
    assert!(
        echo["env"]["QUEUE_URL"]
            .as_str()
            .unwrap()
            .ends_with("/t-Jobs")
    );
    assert_eq!(
        tokio::task::spawn_blocking(move || get(port, "/health"))
            .await
            .unwrap()
            .0,
        200
    );
    let (status, body) = tokio::task::spawn_blocking(move || get(port, "/nope"))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (404, r#"{"message":"Not Found"}"#));
    running.wait_for("REPORT RequestId:", Duration::from_secs(5));

    // One good message is consumed; a poison one is retried, then redriven to the DLQ.
    let sdk = local::emulator::sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let jobs = sqs
        .get_queue_url()
        .queue_name("t-Jobs")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    sqs.send_message()
        .queue_url(&jobs)
        .message_body("good")
        .send()
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(&jobs)
        .message_body("poison")
        .send()
        .await
        .unwrap();
    let dlq = sqs
        .get_queue_url()
        .queue_name("t-JobsDLQ")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs_depth = queue_depth(&sqs, &jobs).await;
        let dlq_depth = queue_depth(&sqs, &dlq).await;
        if jobs_depth == (0, 0) && dlq_depth.0 == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs {jobs_depth:?}, dlq {dlq_depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_dlq = sqs.receive_message().queue_url(&dlq).send().await.unwrap();
    assert_eq!(in_dlq.messages()[0].body(), Some("poison"));

    // SIGTERM: a clean exit, and the emulator this run started is gone.
    let mut running = running;
    let pid = running.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = running.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        TcpStream::connect(("127.0.0.1", emulator_port)).is_err(),
        "emulator still up"
    );
    let _ = std::fs::remove_dir_all(dir);
}

const SCHEDULED: &str = r#"
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: fake-fn}}
    Properties:
      Environment:
        Variables: {FAKE_PRINT_EVENTS: "1"}
      Events:
        Tick:
          Type: Schedule
          Properties: {Schedule: rate(1 minute)}
        Report:
          Type: Schedule
          Properties:
            Schedule: rate(2 minutes)
            Input: '{"job": "report"}'
        Timed:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: cron(* * * * ? *)
            Input: '{"at": "<aws.scheduler.scheduled-time>"}'
        Off:
          Type: Schedule
          Properties: {Schedule: cron(0/1 * * * ? *), Enabled: false}
"#;

/// `Schedule` and `ScheduleV2` events fire on their schedule, 60 times faster with
/// `LOCAL_SCHEDULE_SPEEDUP=60` (a minute a second), with the payloads AWS sends; a disabled one
/// never fires; the runner still stops cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn dev_fires_scheduled_events_with_their_payloads() {
    let dir = workspace("schedule", SCHEDULED, true);
    let mut child = local(
        &dir,
        &[
            "dev",
            "--no-build",
            "--port",
            &free_port().to_string(),
            "--stack",
            "t",
        ],
    )
    .env(
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", free_port()),
    )
    .env("LOCAL_SCHEDULE_SPEEDUP", "60")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("| {line}");
            let _ = tx.send(line);
        }
    });
    let mut running = Running { child, lines };
    let table = running
        .wait_for("ready", Duration::from_secs(90))
        .join("\n");
    assert!(
        table.contains("Schedules (LOCAL_SCHEDULE_SPEEDUP=60"),
        "{table}"
    );
    assert!(table.contains("rate(1 minute)"), "{table}");
    assert!(table.contains("-> Fn"), "{table}");
    assert!(table.contains("t-FnTick"), "{table}");
    assert!(table.contains("t-FnOff, disabled"), "{table}");

    // Everything printed for a few seconds: a few minutes of schedule time.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(line) = running
        .lines
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        seen.push(line);
    }
    let events: Vec<serde_json::Value> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("[Fn] event "))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect();
    let scheduled: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["detail-type"] == "Scheduled Event")
        .collect();
    assert!(scheduled.len() >= 2, "{seen:#?}");
    for e in &scheduled {
        assert_eq!(e["version"], "0");
        assert_eq!(e["source"], "aws.events");
        assert_eq!(e["account"], "123456789012");
        assert_eq!(e["detail"], serde_json::json!({}));
        let region = e["region"].as_str().unwrap();
        assert_eq!(
            e["resources"],
            serde_json::json!([format!(
                "arn:aws:events:{region}:123456789012:rule/t-FnTick"
            )])
        );
        assert!(
            uuid::Uuid::parse_str(e["id"].as_str().unwrap()).is_ok(),
            "{e}"
        );
    }
    // A minute of schedule time between two firings.
    let time = |e: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap()
    };
    // Firings are invoked without waiting for each other: their lines may come out of order.
    let mut times: Vec<_> = scheduled.iter().map(|e| time(e)).collect();
    times.sort();
    assert_eq!((times[1] - times[0]).num_seconds(), 60, "{times:?}");
    assert_ne!(scheduled[0]["id"], scheduled[1]["id"]);
    // A rule's Input replaces the Scheduled Event.
    assert!(
        events
            .iter()
            .any(|e| *e == serde_json::json!({"job": "report"})),
        "{events:#?}"
    );
    // A schedule's Input, its context attributes filled in: a whole minute, for that cron.
    let timed = events
        .iter()
        .find_map(|e| e["at"].as_str())
        .unwrap_or_else(|| panic!("no ScheduleV2 event in {events:#?}"));
    assert!(timed.ends_with(":00Z"), "{timed}");
    assert!(
        seen.iter()
            .any(|l| l == "[schedule] Fn rate(1 minute) fired"),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("cron(0/1 * * * ? *) fired")),
        "a disabled schedule fired: {seen:#?}"
    );

    // SIGTERM while schedules are running: a clean exit.
    let pid = running.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = running.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Lambda behaviours through one shared `local dev` process (and the one emulator it starts):
// timeouts, failed inits, overlapping requests. Each scenario has its own function, so the
// scenarios can run in parallel without sharing instances.

const SCENARIOS: &str = r#"
Globals:
  Function:
    Timeout: 5
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
  Echo:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: fake-fn}}
    Properties:
      Events:
        Echo: {Type: HttpApi, Properties: {Method: POST, Path: /echo}}
  Slow:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: fake-fn}}
    Properties:
      Timeout: 2
      Events:
        Slow: {Type: HttpApi, Properties: {Method: POST, Path: /slow}}
  InitError:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: fake-fn}}
    Properties:
      Environment:
        Variables:
          FAKE_INIT_ERROR: "cannot read config: TABLE_NAME is not set"
      Events:
        Get: {Type: HttpApi, Properties: {Method: GET, Path: /init-error}}
  ExitAtInit:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: fake-fn}}
    Properties:
      Environment:
        Variables:
          FAKE_EXIT_AT_INIT: "1"
      Events:
        Get: {Type: HttpApi, Properties: {Method: GET, Path: /exit-at-init}}
"#;

/// The `local dev` process shared by the scenario tests. It is never dropped (a static): it
/// runs with `LOCAL_EXIT_ON_STDIN_EOF=1` and a piped stdin, so it shuts down, emulator
/// included, when this test process exits and the pipe closes.
struct Shared {
    port: u16,
    /// Everything it printed (stdout and stderr), line by line.
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _stdin: std::process::ChildStdin,
    /// Never waited for: the process outlives every test and exits with this one.
    child: Child,
}

fn shared() -> &'static Shared {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| start_dev(&workspace("scenarios", SCENARIOS, true), "s", &[]))
}

/// `local dev --no-build` of the workspace `dir` on a free port, with its own emulator, and
/// `extra` arguments; returns once it printed `ready`.
fn start_dev(dir: &Path, stack: &str, extra: &[&str]) -> Shared {
    {
        let port = free_port();
        let port_arg = port.to_string();
        let mut args = vec!["dev", "--no-build", "--port", &port_arg, "--stack", stack];
        args.extend_from_slice(extra);
        let mut child = local(dir, &args)
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", free_port()),
            )
            .env("LOCAL_EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let forward = |stream: Box<dyn Read + Send>| {
            let output = std::sync::Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line);
                }
            });
        };
        forward(Box::new(child.stdout.take().unwrap()));
        forward(Box::new(child.stderr.take().unwrap()));
        let mut shared = Shared {
            port,
            output,
            _stdin: child.stdin.take().unwrap(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !shared.printed(|l| l == "ready") {
            if let Ok(Some(status)) = shared.child.try_wait() {
                panic!("local dev exited ({status}): {:#?}", shared.lines());
            }
            assert!(
                Instant::now() < deadline,
                "not ready: {:#?}",
                shared.lines()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        shared
    }
}

impl Shared {
    fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    fn printed(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.output.lock().unwrap().iter().any(|l| pred(l))
    }

    /// Waits until a printed line contains every one of `parts` (output is asynchronous).
    fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self
                .output
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {parts:?} in {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, parts: &[&str]) -> usize {
        self.output
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Waits until `n` printed lines contain every one of `parts` (output is asynchronous:
    /// a REPORT line may follow the answer it reports on).
    fn wait_for_count(&self, parts: &[&str], n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count(parts) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.count(parts)
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        request(self.port, "POST", path, Some(body))
    }
}

fn pid_of(body: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {body}"))
}

#[test]
fn a_function_over_its_timeout_is_killed_and_the_next_request_gets_a_fresh_instance() {
    let rt = shared();
    let (status, body) = rt.post("/slow", "{}");
    assert_eq!(status, 200, "{body}");
    let first = pid_of(&body);

    // Timeout: 2 in the template; the function would sleep 30 s.
    let started = Instant::now();
    let (status, body) = rt.post("/slow", r#"{"sleep": 30}"#);
    let took = started.elapsed();
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"message":"Service Unavailable"}"#)
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3_500),
        "answered after {took:?}, expected about Timeout (2 s) + at most 1 s"
    );
    rt.wait_for(&["[Slow]", "Task timed out after 2.00 seconds"]);
    rt.wait_for(&["[Slow] REPORT", "Status: timeout"]);
    // The timed-out instance is killed (and reaped), not left sleeping.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{first}")).exists() {
        assert!(
            Instant::now() < deadline,
            "instance {first} still running after its timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (status, body) = rt.post("/slow", "{}");
    assert_eq!(status, 200, "{body}");
    assert_ne!(pid_of(&body), first, "a fresh instance answers");
    // Two cold starts of Slow: the first request's and the replacement's.
    assert_eq!(
        rt.wait_for_count(&["[Slow] REPORT", "Init Duration"], 2),
        2,
        "{:#?}",
        rt.lines()
    );
}

#[test]
fn a_function_that_fails_to_start_shows_its_error_and_the_runner_stays_up() {
    let rt = shared();
    let bad_gateway = (502, r#"{"message":"Internal Server Error"}"#.to_string());

    // It reports its error through /runtime/init/error, then exits.
    assert_eq!(get(rt.port, "/init-error"), bad_gateway);
    rt.wait_for(&[
        "[InitError]",
        "init failed: Runtime.InitError: cannot read config: TABLE_NAME is not set",
    ]);
    rt.wait_for(&["[InitError] INIT_REPORT", "Status: error"]);

    // It exits before asking for an invocation; what it printed is shown.
    assert_eq!(get(rt.port, "/exit-at-init"), bad_gateway);
    rt.wait_for(&["[ExitAtInit] exiting during init"]);
    rt.wait_for(&[
        "[ExitAtInit]",
        "Runtime exited before init completed: exit status: 7",
    ]);

    // The runner is still up: another function answers, and the broken one is tried afresh.
    let (status, body) = rt.post("/echo", "{}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(rt.port, "/init-error"), bad_gateway);
    // The runner prints the second INIT_REPORT as the 502 goes out: wait for the line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.count(&["[InitError] INIT_REPORT", "Status: error"]) < 2 {
        assert!(
            Instant::now() < deadline,
            "second INIT_REPORT never printed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn overlapping_requests_run_on_several_instances() {
    let rt = shared();
    let requests = 4;
    let started = Instant::now();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..requests)
            .map(|_| s.spawn(|| rt.post("/echo", r#"{"sleep": 1}"#)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();
    let mut pids = Vec::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        pids.push(pid_of(body));
    }
    pids.sort_unstable();
    pids.dedup();
    assert!(
        pids.len() > 1,
        "all {requests} requests ran on one instance"
    );
    // One instance would take 4 x 1 s.
    assert!(
        took < Duration::from_millis(3_500),
        "{requests} overlapping 1 s requests took {took:?}"
    );
    assert!(
        rt.wait_for_count(&["[Echo] REPORT", "Init Duration"], pids.len()) >= pids.len(),
        "a cold start per instance: {:#?}",
        rt.lines()
    );
}

const LIMITED: &str = r#"
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
  Mem:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: fake-fn}}
    Properties:
      MemorySize: 128
      Timeout: 10
      Events:
        Post: {Type: HttpApi, Properties: {Method: POST, Path: /mem}}
"#;

/// `local dev --lambda-limits --tls`: the function gets the HTTPS front as its endpoint and
/// the front's CA as `AWS_CA_BUNDLE` (a TLS request verified with that CA alone reaches the
/// emulator through it); it runs in cgroups of its own with its `MemorySize`'s CPU share and
/// memory limit; a request that takes it past its `MemorySize` kills it, answered and logged
/// as Lambda does (`502`, `Runtime exited with error: signal: killed`, `Runtime.ExitError`,
/// `Error Type: Runtime.OutOfMemory` on the REPORT line); the next request gets a fresh instance.
#[test]
fn dev_runs_functions_at_their_lambda_limits_over_tls() {
    let dir = workspace("limits", LIMITED, true);
    let dev = start_dev(&dir, "l", &["--lambda-limits", "--tls"]);
    dev.wait_for(&[
        "Limits",
        "CPU MemorySize/1769 of one per 20 ms once init ends",
    ]);
    dev.wait_for(&["TLS       https://127.0.0.1:"]);

    let (status, body) = dev.post("/mem", "{}");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let endpoint = answer["env"]["AWS_ENDPOINT_URL"].as_str().unwrap();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let bundle = answer["env"]["AWS_CA_BUNDLE"].as_str().unwrap();
    let pem = std::fs::read_to_string(bundle).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    // Any HTTP status means the handshake verified against the bundle and the request
    // reached the emulator (moto answers `GET /` itself).
    let check = Command::new("python3")
        .args([
            "-c",
            "import ssl, sys, urllib.request, urllib.error\n\
             ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
             try:\n    print(urllib.request.urlopen(sys.argv[1], context=ctx).status)\n\
             except urllib.error.HTTPError as e:\n    print(e.code)",
            endpoint,
            bundle,
        ])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&check.stdout);
    assert!(
        code.trim().parse::<u16>().is_ok(),
        "{code} {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let pid = pid_of(&body);
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = |controller: &str| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = match controller {
                "" => controllers.is_empty(),
                c => controllers.split(',').any(|x| x == c),
            };
            hit.then(|| path.trim_start_matches('/').to_string())
        })
    };
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_string();
    let root = Path::new("/sys/fs/cgroup");
    let (dir, quota, limit) = match (path("cpu"), path("memory")) {
        (Some(cpu), Some(memory)) => {
            let (cpu, memory) = (root.join("cpu").join(cpu), root.join("memory").join(memory));
            let quota = format!(
                "{} {}",
                read(cpu.join("cpu.cfs_quota_us")),
                read(cpu.join("cpu.cfs_period_us"))
            );
            (cpu, quota, read(memory.join("memory.limit_in_bytes")))
        }
        _ => {
            let dir = root.join(path("").expect("a cgroup v2 path"));
            let (quota, limit) = (read(dir.join("cpu.max")), read(dir.join("memory.max")));
            (dir, quota, limit)
        }
    };
    assert!(
        dir.to_str().unwrap().contains("/local-"),
        "{}",
        dir.display()
    );
    assert_eq!(quota, format!("{} 20000", 20_000 * 128 / 1769));
    assert_eq!(limit, (128u64 << 20).to_string());

    let (status, body) = dev.post("/mem", r#"{"allocate_mb": 256}"#);
    assert_eq!(
        (status, body.as_str()),
        (502, r#"{"message":"Internal Server Error"}"#)
    );
    dev.wait_for(&["[Mem] ", "Error: Runtime exited with error: signal: killed"]);
    dev.wait_for(&["[Mem] Runtime.ExitError"]);
    dev.wait_for(&[
        "[Mem] REPORT",
        "Status: error\tError Type: Runtime.OutOfMemory",
    ]);
    let (status, body) = dev.post("/mem", "{}");
    assert_eq!(status, 200, "{body}");
    assert_ne!(pid_of(&body), pid, "a fresh instance answers");
}
