//! Hot reload of `local dev`, end to end: the `local` binary runs a throw-away cargo workspace
//! whose one function is a dependency-free Lambda Runtime API client (it builds in about a
//! second), against the emulator the runner starts. The tests edit the function's source and
//! the template while requests and queue messages keep flowing, and check that the runner
//! swaps what changed without ever failing a request or losing a message.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_local");

/// The function: loop on `next`; an HTTP API event answers `ANSWER` (and `$SUFFIX`), an SQS
/// event appends `<ANSWER> <body>` per message to `$RELOAD_LOG`.
const FUNCTION: &str = r##"
use std::io::{Read, Write};
use std::net::TcpStream;

const ANSWER: &str = "v1";

/// One HTTP/1.1 exchange with the Runtime API: its head and body.
fn call(api: &str, method: &str, path: &str, body: &str) -> (String, String) {
    let mut s = TcpStream::connect(api).expect("runtime api");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

fn main() {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").unwrap();
    let log = std::env::var("RELOAD_LOG").unwrap_or_default();
    let suffix = std::env::var("SUFFIX").unwrap_or_default();
    loop {
        let (head, event) = call(&api, "GET", "/2018-06-01/runtime/invocation/next", "");
        let id = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("lambda-runtime-aws-request-id")
                    .then(|| value.trim().to_string())
            })
            .expect("request id");
        let answer = if event.contains("\"Records\"") {
            let mut lines = String::new();
            for part in event.split("\"body\":\"").skip(1) {
                let body = part.split('"').next().unwrap_or_default();
                lines.push_str(&format!("{ANSWER} {body}\n"));
            }
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
            file.write_all(lines.as_bytes()).unwrap();
            r#"{"batchItemFailures":[]}"#.to_string()
        } else {
            format!(r#"{{"statusCode":200,"body":"{ANSWER}{suffix}"}}"#)
        };
        call(&api, "POST", &format!("/2018-06-01/runtime/invocation/{id}/response"), &answer);
    }
}
"##;

const TEMPLATE: &str = r#"
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
  Jobs:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 20
  Fn:
    Type: AWS::Serverless::Function
    Metadata:
      BuildProperties:
        Binary: reload-fn
    Properties:
      Timeout: 5
      Environment:
        Variables:
          RELOAD_LOG: LOG_PATH
      Events:
        Hello:
          Type: HttpApi
          Properties: {Method: GET, Path: /hello}
        Queue:
          Type: SQS
          Properties:
            Queue: !GetAtt Jobs.Arn
            BatchSize: 5
"#;

/// A fresh cargo workspace: `Cargo.toml`, `template.yaml`, the function crate `fn/`.
fn workspace(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("local-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("fn/src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"fn\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("fn/Cargo.toml"),
        "[package]\nname = \"reload-fn\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("fn/src/main.rs"), FUNCTION).unwrap();
    let log = dir.join("messages.log");
    std::fs::write(
        dir.join("template.yaml"),
        TEMPLATE.replace("LOG_PATH", &log.display().to_string()),
    )
    .unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path`: status and body, or status 0 when the connection fails.
fn get(port: u16, path: &str) -> (u16, String) {
    let attempt = || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        Ok((status, body.unwrap_or_default()))
    };
    attempt().unwrap_or_else(|e| (0, e.to_string()))
}

/// A `local dev` process on a workspace; stopped when dropped (and, through its piped stdin,
/// whenever this test process exits).
struct Runner {
    dir: PathBuf,
    port: u16,
    endpoint: String,
    output: Arc<Mutex<Vec<String>>>,
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Runner {
    fn start(dir: &Path, stack: &str, env: &[(&str, &str)]) -> Runner {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let mut child = Command::new(BIN)
            .args(["dev", "--port", &port.to_string(), "--stack", stack])
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("LOCAL_EXIT_ON_STDIN_EOF", "1")
            .envs(env.iter().copied())
            .env_remove("PORT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let forward = |stream: Box<dyn Read + Send>| {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("| {line}");
                    output.lock().unwrap().push(line);
                }
            });
        };
        forward(Box::new(child.stdout.take().unwrap()));
        forward(Box::new(child.stderr.take().unwrap()));
        let runner = Runner {
            dir: dir.to_path_buf(),
            port,
            endpoint,
            output,
            stdin: child.stdin.take(),
            child,
        };
        runner.wait_for(&["ready"], Duration::from_secs(180));
        runner
    }

    fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    fn count(&self, parts: &[&str]) -> usize {
        let output = self.output.lock().unwrap();
        output
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Waits until one more printed line than `before` contains all of `parts`.
    fn wait_for_more(&self, parts: &[&str], before: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let matching: Vec<String> = self
                .lines()
                .into_iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .collect();
            if matching.len() > before {
                return matching[before].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {parts:?} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, parts: &[&str], timeout: Duration) -> String {
        self.wait_for_more(parts, 0, timeout)
    }

    /// Waits until `path` answers 200 with `body`.
    fn wait_for_answer(&self, path: &str, body: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = get(self.port, path);
            if answer == (200, body.to_string()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered {body:?}; last {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    /// The message numbers in the function's log, and the versions that processed them.
    fn processed(&self) -> (BTreeSet<usize>, BTreeSet<String>) {
        let text = std::fs::read_to_string(self.dir.join("messages.log")).unwrap_or_default();
        let mut numbers = BTreeSet::new();
        let mut versions = BTreeSet::new();
        for line in text.lines() {
            let Some((version, body)) = line.split_once(' ') else {
                continue;
            };
            versions.insert(version.to_string());
            if let Some(n) = body.strip_prefix('m').and_then(|n| n.parse().ok()) {
                numbers.insert(n);
            }
        }
        (numbers, versions)
    }

    /// The snapshot copies the runner's instances execute.
    fn snapshots(&self) -> Vec<String> {
        let dir = self
            .dir
            .join("target/local-dev")
            .join(self.child.id().to_string());
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn queue_url(&self, sqs: &aws_sdk_sqs::Client, name: &str) -> String {
        sqs.get_queue_url()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string()
    }

    /// Closes stdin: the runner shuts down cleanly.
    fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "local dev exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "local dev did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !self
                .dir
                .join("target/local-dev")
                .join(self.child.id().to_string())
                .exists(),
            "the runner's snapshots outlive it"
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests `path` back to back on a thread until stopped; returns every answer.
fn keep_requesting(
    port: u16,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u16, String)>> {
    std::thread::spawn(move || {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Acquire) {
            answers.push(get(port, path));
            std::thread::sleep(Duration::from_millis(20));
        }
        answers
    })
}

/// Sends `m0`, `m1`, … to `queue` every 50 ms until stopped; `sent` counts them.
fn keep_sending(
    sqs: aws_sdk_sqs::Client,
    queue: String,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Acquire) {
            let n = sent.load(Ordering::Acquire);
            sqs.send_message()
                .queue_url(&queue)
                .message_body(format!("m{n}"))
                .send()
                .await
                .unwrap();
            sent.store(n + 1, Ordering::Release);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Waits until messages `0..sent` are all in the function's log.
fn wait_all_processed(runner: &Runner, sent: usize) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (numbers, versions) = runner.processed();
        let missing: Vec<usize> = (0..sent).filter(|n| !numbers.contains(n)).collect();
        if missing.is_empty() {
            return versions;
        }
        assert!(
            Instant::now() < deadline,
            "messages never processed: {missing:?} of {sent}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Editing the function's source rebuilds it and swaps it in while requests and messages keep
/// flowing: every request answers 200 with the old or the new build, every message is
/// processed, the old snapshot goes once its instances are gone; a build error keeps the
/// last good build serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_change_swaps_the_function_without_failing_a_request_or_losing_a_message() {
    let dir = workspace("source");
    let runner = Runner::start(&dir, "rs", &[]);
    assert!(
        runner.count(&["Reload", "watching template.yaml", "fn"]) == 1,
        "{:#?}",
        runner.lines()
    );
    assert_eq!(get(runner.port, "/hello"), (200, "v1".to_string()));
    assert_eq!(runner.snapshots(), vec!["reload-fn-1".to_string()]);

    let sqs = aws_sdk_sqs::Client::new(&local::emulator::sdk_config(&runner.endpoint).await);
    let jobs = runner.queue_url(&sqs, "rs-Jobs").await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = keep_sending(sqs.clone(), jobs, Arc::clone(&sent), Arc::clone(&stop));
    let requests = keep_requesting(runner.port, "/hello", Arc::clone(&stop));
    // Some messages go to v1 first.
    while sent.load(Ordering::Acquire) < 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    runner.edit("fn/src/main.rs", "\"v1\"", "\"v2\"");
    let line = runner.wait_for(&["reload: rebuilt reload-fn in"], Duration::from_secs(120));
    assert!(line.contains("new instances for Fn"), "{line}");
    runner.wait_for_answer("/hello", "v2", Duration::from_secs(10));
    // The v1 snapshot is removed once no instance runs it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while runner.snapshots() != vec!["reload-fn-2".to_string()] {
        assert!(
            Instant::now() < deadline,
            "snapshots {:?}",
            runner.snapshots()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_v2 = sent.load(Ordering::Acquire);
    while sent.load(Ordering::Acquire) < at_v2 + 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A syntax error: the build fails, v2 keeps serving.
    runner.edit(
        "fn/src/main.rs",
        "fn main() {",
        "fn main() { let broken = ;",
    );
    runner.wait_for(&["reload: build failed"], Duration::from_secs(120));
    assert_eq!(get(runner.port, "/hello"), (200, "v2".to_string()));
    assert_eq!(
        runner.count(&["reload: rebuilt"]),
        1,
        "nothing swapped on a failed build"
    );

    stop.store(true, Ordering::Release);
    sender.await.unwrap();
    let answers = requests.join().unwrap();
    let bad: Vec<&(u16, String)> = answers
        .iter()
        .filter(|(status, body)| *status != 200 || (body != "v1" && body != "v2"))
        .collect();
    assert!(bad.is_empty(), "failed answers during reload: {bad:?}");
    assert!(answers.iter().any(|(_, b)| b == "v1"), "no v1 answer seen");
    assert!(answers.iter().any(|(_, b)| b == "v2"), "no v2 answer seen");
    let versions = wait_all_processed(&runner, sent.load(Ordering::Acquire));
    assert_eq!(
        versions,
        BTreeSet::from(["v1".to_string(), "v2".to_string()]),
        "messages were processed by both builds"
    );
    runner.stop();
}

/// Editing the template re-provisions (a new queue is created), swaps the route table (a new
/// route answers), restarts the pollers (the new queue is polled, the old one still is) and the
/// schedules (a new one fires), and gives the function new instances with its new
/// environment; a broken template changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_template_change_adds_routes_queues_and_environment() {
    let dir = workspace("template");
    let runner = Runner::start(&dir, "rt", &[("LOCAL_SCHEDULE_SPEEDUP", "60")]);
    assert_eq!(get(runner.port, "/bye").0, 404);
    let sqs = aws_sdk_sqs::Client::new(&local::emulator::sdk_config(&runner.endpoint).await);
    let jobs = runner.queue_url(&sqs, "rt-Jobs").await;
    let stop = Arc::new(AtomicBool::new(false));
    let requests = keep_requesting(runner.port, "/hello", Arc::clone(&stop));

    runner.edit(
        "template.yaml",
        "  Fn:\n",
        "  More:\n    Type: AWS::SQS::Queue\n  Fn:\n",
    );
    runner.edit(
        "template.yaml",
        "          RELOAD_LOG:",
        "          SUFFIX: \"-new\"\n          RELOAD_LOG:",
    );
    runner.edit(
        "template.yaml",
        "        Queue:\n",
        "        Tick:\n          Type: Schedule\n          Properties: {Schedule: rate(1 minute)}\n        Bye:\n          Type: HttpApi\n          Properties: {Method: GET, Path: /bye}\n        MoreQueue:\n          Type: SQS\n          Properties:\n            Queue: !GetAtt More.Arn\n        Queue:\n",
    );
    let line = runner.wait_for(&["reload: template.yaml applied"], Duration::from_secs(120));
    assert!(line.contains("added GET /bye"), "{line}");
    assert!(line.contains("new instances for Fn"), "{line}");
    assert!(line.contains("SQS pollers restarted"), "{line}");
    assert!(line.contains("schedules restarted"), "{line}");
    // The new schedule fires (60 times faster than real time: every second).
    runner.wait_for(
        &["[schedule] Fn rate(1 minute) fired"],
        Duration::from_secs(10),
    );
    assert_eq!(get(runner.port, "/bye"), (200, "v1-new".to_string()));
    assert_eq!(get(runner.port, "/hello"), (200, "v1-new".to_string()));

    // The new queue exists and is polled; the old one still is.
    let more = runner.queue_url(&sqs, "rt-More").await;
    for (queue, body) in [(&more, "m0"), (&jobs, "m1")] {
        sqs.send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    wait_all_processed(&runner, 2);

    // A template that does not parse: reported, the running configuration kept.
    let before = runner.count(&["reload:"]);
    std::fs::write(dir.join("template.yaml"), "Resources: [unclosed").unwrap();
    runner.wait_for_more(&["reload:"], before, Duration::from_secs(30));
    runner.wait_for(
        &["reload: the running configuration and functions keep serving"],
        Duration::from_secs(10),
    );
    assert_eq!(get(runner.port, "/bye"), (200, "v1-new".to_string()));

    stop.store(true, Ordering::Release);
    let answers = requests.join().unwrap();
    let bad: Vec<&(u16, String)> = answers
        .iter()
        .filter(|(status, body)| *status != 200 || (body != "v1" && body != "v1-new"))
        .collect();
    assert!(bad.is_empty(), "failed answers during reload: {bad:?}");
    runner.stop();
}
