//! Hot reload of `local dev`, end to end: the `local` binary runs a throw-away cargo workspace
//! whose one function is a dependency-free Lambda Runtime API client (it builds in about a
//! second), against the emulator the runner starts. The tests edit the function's source and
//! the template while requests and queue messages keep flowing, and check that the runner
//! swaps what changed without ever failing a request or losing a message.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Dev, get, queue_url, scratch_dir};

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

const TEMPLATE: &str = include_str!("stacks/reload.yaml");

/// A fresh cargo workspace: `Cargo.toml`, `template.yaml`, the function crate `fn/`.
fn workspace(name: &str) -> PathBuf {
    let dir = scratch_dir(name);
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

/// `local dev` (building the workspace) with `env` added, the stack named `stack`.
fn start(dir: &Path, stack: &str, env: &[(&str, &str)]) -> Dev {
    Dev::start(dir, &["--stack", stack], env)
}

/// Replaces the first `from` in the workspace's `file` with `to`.
fn edit(dev: &Dev, file: &str, from: &str, to: &str) {
    let path = dev.dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Waits until `path` answers 200 with `body`.
fn wait_for_answer(dev: &Dev, path: &str, body: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = dev.get(path);
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

/// The message numbers in the function's log, and the versions that processed them.
fn processed(dev: &Dev) -> (BTreeSet<usize>, BTreeSet<String>) {
    let text = std::fs::read_to_string(dev.dir.join("messages.log")).unwrap_or_default();
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

/// The directory of the snapshot copies the runner's instances execute.
fn snapshot_dir(dev: &Dev) -> PathBuf {
    dev.dir
        .join("target/local-dev")
        .join(dev.child.id().to_string())
}

/// The snapshot copies the runner's instances execute.
fn snapshots(dev: &Dev) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(snapshot_dir(dev))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Closes stdin: the runner shuts down cleanly, its snapshots with it.
fn shut_down(mut dev: Dev) {
    dev.stop();
    assert!(
        !snapshot_dir(&dev).exists(),
        "the runner's snapshots outlive it"
    );
    let _ = std::fs::remove_dir_all(&dev.dir);
}

/// Asserts that every answer is a 200 with one of `bodies`.
fn assert_all_answered(answers: &[(u16, String)], bodies: &[&str]) {
    let bad: Vec<&(u16, String)> = answers
        .iter()
        .filter(|(status, body)| *status != 200 || !bodies.contains(&body.as_str()))
        .collect();
    assert!(bad.is_empty(), "failed answers during reload: {bad:?}");
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
fn wait_all_processed(runner: &Dev, sent: usize) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (numbers, versions) = processed(runner);
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
    let runner = start(&dir, "rs", &[]);
    assert!(
        runner.count(&["Reload", "watching template.yaml", "fn"]) == 1,
        "{:#?}",
        runner.lines()
    );
    assert_eq!(get(runner.port, "/hello"), (200, "v1".to_string()));
    assert_eq!(snapshots(&runner), vec!["reload-fn-1".to_string()]);

    let sqs = runner.sqs().await;
    let jobs = queue_url(&sqs, "rs-Jobs").await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = keep_sending(sqs.clone(), jobs, Arc::clone(&sent), Arc::clone(&stop));
    let requests = keep_requesting(runner.port, "/hello", Arc::clone(&stop));
    // Some messages go to v1 first.
    while sent.load(Ordering::Acquire) < 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    edit(&runner, "fn/src/main.rs", "\"v1\"", "\"v2\"");
    let line = runner.wait_for_within(&["reload: rebuilt reload-fn in"], Duration::from_secs(120));
    assert!(line.contains("new instances for Fn"), "{line}");
    wait_for_answer(&runner, "/hello", "v2", Duration::from_secs(10));
    // The v1 snapshot is removed once no instance runs it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while snapshots(&runner) != vec!["reload-fn-2".to_string()] {
        assert!(
            Instant::now() < deadline,
            "snapshots {:?}",
            snapshots(&runner)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_v2 = sent.load(Ordering::Acquire);
    while sent.load(Ordering::Acquire) < at_v2 + 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A syntax error: the build fails, v2 keeps serving.
    edit(
        &runner,
        "fn/src/main.rs",
        "fn main() {",
        "fn main() { let broken = ;",
    );
    runner.wait_for_within(&["reload: build failed"], Duration::from_secs(120));
    assert_eq!(get(runner.port, "/hello"), (200, "v2".to_string()));
    assert_eq!(
        runner.count(&["reload: rebuilt"]),
        1,
        "nothing swapped on a failed build"
    );

    stop.store(true, Ordering::Release);
    sender.await.unwrap();
    let answers = requests.join().unwrap();
    assert_all_answered(&answers, &["v1", "v2"]);
    assert!(answers.iter().any(|(_, b)| b == "v1"), "no v1 answer seen");
    assert!(answers.iter().any(|(_, b)| b == "v2"), "no v2 answer seen");
    let versions = wait_all_processed(&runner, sent.load(Ordering::Acquire));
    assert_eq!(
        versions,
        BTreeSet::from(["v1".to_string(), "v2".to_string()]),
        "messages were processed by both builds"
    );
    shut_down(runner);
}

/// Editing the template re-provisions (a new queue is created), swaps the route table (a new
/// route answers), restarts the pollers (the new queue is polled, the old one still is) and the
/// schedules (a new one fires), and gives the function new instances with its new
/// environment; a broken template changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_template_change_adds_routes_queues_and_environment() {
    let dir = workspace("template");
    let runner = start(&dir, "rt", &[("LOCAL_SCHEDULE_SPEEDUP", "60")]);
    assert_eq!(get(runner.port, "/bye").0, 404);
    let sqs = runner.sqs().await;
    let jobs = queue_url(&sqs, "rt-Jobs").await;
    let stop = Arc::new(AtomicBool::new(false));
    let requests = keep_requesting(runner.port, "/hello", Arc::clone(&stop));

    edit(
        &runner,
        "template.yaml",
        "  Fn:\n",
        "  More:\n    Type: AWS::SQS::Queue\n  Fn:\n",
    );
    edit(
        &runner,
        "template.yaml",
        "          RELOAD_LOG:",
        "          SUFFIX: \"-new\"\n          RELOAD_LOG:",
    );
    edit(
        &runner,
        "template.yaml",
        "        Queue:\n",
        "        Tick:\n          Type: Schedule\n          Properties: {Schedule: rate(1 minute)}\n        Bye:\n          Type: HttpApi\n          Properties: {Method: GET, Path: /bye}\n        MoreQueue:\n          Type: SQS\n          Properties:\n            Queue: !GetAtt More.Arn\n        Queue:\n",
    );
    let line = runner.wait_for_within(&["reload: template.yaml applied"], Duration::from_secs(120));
    assert!(line.contains("added GET /bye"), "{line}");
    assert!(line.contains("new instances for Fn"), "{line}");
    assert!(line.contains("SQS pollers restarted"), "{line}");
    assert!(line.contains("schedules restarted"), "{line}");
    // The new schedule fires (60 times faster than real time: every second).
    runner.wait_for(&["[schedule] Fn rate(1 minute) fired"]);
    assert_eq!(get(runner.port, "/bye"), (200, "v1-new".to_string()));
    assert_eq!(get(runner.port, "/hello"), (200, "v1-new".to_string()));

    // The new queue exists and is polled; the old one still is.
    let more = queue_url(&sqs, "rt-More").await;
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
    runner.wait_for(&["reload: the running configuration and functions keep serving"]);
    assert_eq!(get(runner.port, "/bye"), (200, "v1-new".to_string()));

    stop.store(true, Ordering::Release);
    let answers = requests.join().unwrap();
    assert_all_answered(&answers, &["v1", "v1-new"]);
    shut_down(runner);
}
