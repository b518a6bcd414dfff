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

/// `GET` over a raw socket: status line and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
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
