//! Finds or starts the AWS emulator (moto server, through `scripts/emulator.py`).
//!
//! The emulator is started through a tiny Python bootstrap that runs `emulator.py` and exits
//! as soon as its stdin reaches end-of-file. The guard holds the write end of that pipe, so the
//! emulator dies with the runner in every case: guard dropped, process exiting without running
//! destructors (a `static` guard in a test binary), or the runner killed with SIGKILL.
//! Everything here is blocking (std), so a guard works the same from any tokio runtime or none.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Endpoint used when `AWS_ENDPOINT_URL` is unset.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";
/// DynamoDB's own endpoint, when set (the SDKs' service-specific endpoint variable).
pub const DYNAMODB_ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_DYNAMODB";
/// Overrides the workspace root used to find `scripts/emulator.py`.
pub const ROOT_ENV: &str = "LOCAL_WORKSPACE_ROOT";
/// How long a starting emulator may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the emulator's stderr kept to explain a failed start.
const KEPT_LINES: usize = 20;

/// Runs `scripts/emulator.py` with the given argv and exits when stdin closes.
const BOOTSTRAP: &str = r#"
import os, runpy, sys, threading
def _watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"#;

/// Why the emulator could not be reached or started.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("invalid endpoint {0:?}: expected http://HOST:PORT")]
    BadEndpoint(String),
    #[error("nothing answers at {0} and it is not a local address, so it cannot be started here")]
    NotLocal(String),
    #[error("cannot find {0} (set {ROOT_ENV} to the workspace root)")]
    NoScript(PathBuf),
    #[error("cannot run python3: {0}")]
    Python(std::io::Error),
    #[error(
        "moto is not installed and `python3 -m pip install 'moto[server]' waitress` failed: {0}"
    )]
    Install(String),
    #[error("the emulator exited before answering at {endpoint} ({status}): {stderr}")]
    Exited {
        endpoint: String,
        status: String,
        stderr: String,
    },
    #[error("the emulator did not answer at {0} within {START_TIMEOUT:?}")]
    Timeout(String),
}

/// Keeps a started emulator alive; dropping it stops the emulator. An `EmulatorGuard` for an
/// emulator that was already running does nothing.
#[derive(Debug)]
pub struct EmulatorGuard {
    child: Option<(Child, ChildStdin)>,
}

impl EmulatorGuard {
    /// True when this process started the emulator (and will stop it).
    pub fn started(&self) -> bool {
        self.child.is_some()
    }

    /// The emulator's process id, when this process started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|(child, _)| child.id())
    }
}

impl Drop for EmulatorGuard {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An emulator started for a test harness.
#[derive(Debug)]
pub struct Emulator {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub guard: EmulatorGuard,
}

/// Returns at once if something answers HTTP at `endpoint`; otherwise starts the emulator
/// there (installing moto with pip once if python cannot import it) and waits until it
/// answers. Only loopback endpoints can be started.
pub fn ensure(endpoint: &str) -> Result<EmulatorGuard, EmulatorError> {
    let addr = socket_addr(endpoint)?;
    if answers(addr) {
        return Ok(EmulatorGuard { child: None });
    }
    if !addr.ip().is_loopback() {
        return Err(EmulatorError::NotLocal(endpoint.to_string()));
    }
    start(endpoint, addr)
}

/// Starts a fresh emulator on a free loopback port (one per test binary is the intended use).
pub fn spawn_on_free_port() -> Result<Emulator, EmulatorError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(EmulatorError::Python)?
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let guard = start(&endpoint, SocketAddr::from(([127, 0, 0, 1], port)))?;
    Ok(Emulator { endpoint, guard })
}

/// The endpoint to use: `AWS_ENDPOINT_URL`, else [`DEFAULT_ENDPOINT`].
pub fn endpoint_from_env() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// `AWS_ENDPOINT_URL_DYNAMODB`, when set: DynamoDB is served there instead (by a second moto
/// process when `local` starts it, so DynamoDB's work no longer waits behind the other
/// services' in one interpreter).
pub fn dynamodb_endpoint_from_env() -> Option<String> {
    std::env::var(DYNAMODB_ENDPOINT_ENV)
        .ok()
        .filter(|s| !s.is_empty())
}

/// True when an HTTP server answers at `endpoint` now.
pub fn is_up(endpoint: &str) -> Result<bool, EmulatorError> {
    Ok(answers(socket_addr(endpoint)?))
}

/// SDK configuration for the emulator at `endpoint`: region from `AWS_REGION` (default
/// `us-east-1`), credentials from the environment when set, else `test`/`test`; a service with
/// an endpoint of its own in the environment (`AWS_ENDPOINT_URL_DYNAMODB`, …) goes there.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".to_string());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        // The functions' HTTP client (the workspace builds the SDK without one of its own),
        // with the SDK's default connect timeout.
        .http_client(shared::http_client::SdkHttpClient::shared(
            std::time::Duration::from_millis(3_100),
        ))
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region));
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "local",
        ));
    }
    shared::aws::with_service_endpoints(loader.load().await, std::env::vars())
}

/// `scripts/emulator.py` under the workspace root (`LOCAL_WORKSPACE_ROOT`, else the parent
/// of this crate's directory at compile time).
pub fn script_path() -> PathBuf {
    let root = std::env::var_os(ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    root.join("scripts").join("emulator.py")
}

fn start(endpoint: &str, addr: SocketAddr) -> Result<EmulatorGuard, EmulatorError> {
    let script = script_path();
    if !script.is_file() {
        return Err(EmulatorError::NoScript(script));
    }
    ensure_moto()?;
    let mut child = Command::new("python3")
        .args(["-c", BOOTSTRAP])
        .arg(&script)
        .args(["-H", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(EmulatorError::Python)?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stderr = keep_tail(child.stderr.take().expect("stderr is piped"));
    let mut guard = EmulatorGuard {
        child: Some((child, stdin)),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answers(addr) {
            return Ok(guard);
        }
        let (child, _) = guard.child.as_mut().expect("set above");
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            let stderr = stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
            return Err(EmulatorError::Exited {
                endpoint: endpoint.to_string(),
                status: status.to_string(),
                stderr,
            });
        }
        if Instant::now() > deadline {
            return Err(EmulatorError::Timeout(endpoint.to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Installs moto and waitress (the HTTP server `scripts/emulator.py` runs it on) when python
/// cannot import them (once per process: pip is slow even when idle).
fn ensure_moto() -> Result<(), EmulatorError> {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import moto.server, jsonpath_ng, waitress"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .map_err(EmulatorError::Python)
    };
    if importable()? {
        return Ok(());
    }
    tracing::info!("moto is not installed; running python3 -m pip install 'moto[server]' waitress");
    let mut last = String::new();
    // Debian's python refuses plain pip installs (PEP 668); the second form is what works there.
    for extra in [&[][..], &["--break-system-packages"][..]] {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "moto[server]",
                "waitress",
            ])
            .args(extra)
            .output()
            .map_err(EmulatorError::Python)?;
        if out.status.success() && importable()? {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(EmulatorError::Install(last))
}

/// Drains `stream` on a thread (a full pipe would block the emulator) keeping its last lines.
fn keep_tail(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let tail = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&tail);
    let echo = std::env::var_os("LOCAL_EMULATOR_LOG").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[emulator] {line}");
            }
            if let Ok(mut tail) = sink.lock() {
                if tail.len() == KEPT_LINES {
                    tail.remove(0);
                }
                tail.push(line);
            }
        }
    });
    tail
}

/// True when an HTTP server answers at `addr` (any status: moto answers 404 on `/`).
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// `http://host:port[/...]` → a socket address.
fn socket_addr(endpoint: &str) -> Result<SocketAddr, EmulatorError> {
    let bad = || EmulatorError::BadEndpoint(endpoint.to_string());
    let rest = endpoint.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()
        .map_err(|_| bad())?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            socket_addr("http://127.0.0.1:4566").unwrap(),
            "127.0.0.1:4566".parse().unwrap()
        );
        assert_eq!(socket_addr("http://localhost:5000/").unwrap().port(), 5000);
        assert!(matches!(
            socket_addr("https://x:1"),
            Err(EmulatorError::BadEndpoint(_))
        ));
        assert!(matches!(
            socket_addr("http://"),
            Err(EmulatorError::BadEndpoint(_))
        ));
    }

    #[test]
    fn finds_the_launcher_script() {
        assert!(script_path().is_file(), "{}", script_path().display());
    }

    #[test]
    fn starts_answers_and_stops() {
        let emulator = spawn_on_free_port().expect("moto starts");
        assert!(emulator.guard.started());
        let addr = socket_addr(&emulator.endpoint).unwrap();
        assert!(answers(addr));
        // Something answers now, so `ensure` reuses it and owns nothing.
        assert!(!ensure(&emulator.endpoint).unwrap().started());
        drop(emulator);
        assert!(!answers(addr), "the emulator stops with its guard");
    }

    /// CPU seconds (user + system) the process `pid` has used, from `/proc/<pid>/stat`.
    fn cpu_seconds(pid: u32) -> f64 {
        crate::runtime::cpu_time(pid)
            .expect("proc stat")
            .as_secs_f64()
    }

    /// A FIFO queue `name` (content-based deduplication) holding `bodies` in one group, in order.
    async fn fifo_queue(sqs: &aws_sdk_sqs::Client, name: &str, bodies: &[&str]) -> String {
        use aws_sdk_sqs::types::QueueAttributeName;
        let queue = sqs
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "true")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        for body in bodies {
            sqs.send_message()
                .queue_url(&queue)
                .message_body(*body)
                .message_group_id("g")
                .send()
                .await
                .unwrap();
        }
        queue
    }

    /// One receive of up to `max` messages, no wait.
    async fn receive(
        sqs: &aws_sdk_sqs::Client,
        queue: &str,
        max: i32,
    ) -> Vec<aws_sdk_sqs::types::Message> {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(max)
            .send()
            .await
            .unwrap();
        out.messages.unwrap_or_default()
    }

    /// moto's long poll spins on a FIFO queue whose visible messages all belong to a group in
    /// flight (a core for the whole wait); the launcher makes it sleep until a delete releases
    /// the group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_poll_behind_an_in_flight_fifo_group_sleeps_until_the_group_is_released() {
        let emulator = spawn_on_free_port().expect("moto starts");
        let pid = emulator.guard.pid().expect("started here");
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emulator.endpoint).await);
        let queue = fifo_queue(&sqs, "spin.fifo", &["first", "second"]).await;
        let first = receive(&sqs, &queue, 1).await.remove(0);
        assert_eq!(first.body(), Some("first"));

        let poll = {
            let (sqs, queue) = (sqs.clone(), queue.clone());
            tokio::spawn(async move {
                let out = sqs
                    .receive_message()
                    .queue_url(&queue)
                    .wait_time_seconds(10)
                    .send()
                    .await
                    .unwrap();
                (Instant::now(), out.messages().to_vec())
            })
        };
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let spent = cpu_seconds(pid) - before;
        assert!(
            spent < 0.3,
            "the emulator used {spent:.2} s of CPU in 1 s of a blocked long poll"
        );
        assert!(
            !poll.is_finished(),
            "the group is in flight: nothing to deliver"
        );

        let deleted = Instant::now();
        sqs.delete_message()
            .queue_url(&queue)
            .receipt_handle(first.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
        let (answered, messages) = poll.await.unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].body(), Some("second"));
        let waited = answered.duration_since(deleted);
        assert!(
            waited < Duration::from_secs(1),
            "the released group was delivered {waited:?} after the delete"
        );
    }

    fn s(v: &str) -> aws_sdk_dynamodb::types::AttributeValue {
        aws_sdk_dynamodb::types::AttributeValue::S(v.to_owned())
    }

    /// A table keyed `pk` + `sk` with a `byState` index (`state`, `pk`), as the stores use.
    async fn table(dynamodb: &aws_sdk_dynamodb::Client, name: &str) {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
            Projection, ProjectionType, ScalarAttributeType,
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .unwrap()
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap()
        };
        dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .attribute_definitions(attribute("pk"))
            .attribute_definitions(attribute("sk"))
            .attribute_definitions(attribute("state"))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name("byState")
                    .key_schema(key("state", KeyType::Hash))
                    .key_schema(key("pk", KeyType::Range))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    /// A cancelled transaction leaves every item as it was: the launcher's item-level undo
    /// replaces moto's whole-table snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_transaction_changes_nothing_and_a_committed_one_everything() {
        use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem, Update};
        let emulator = spawn_on_free_port().expect("moto starts");
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&emulator.endpoint).await);
        table(&dynamodb, "undo").await;
        let item = |pk: &str, v: &str| {
            std::collections::HashMap::from([
                ("pk".to_owned(), s(pk)),
                ("sk".to_owned(), s("A")),
                ("v".to_owned(), s(v)),
            ])
        };
        let put = |pk, v| {
            let request = dynamodb.put_item().table_name("undo");
            request.set_item(Some(item(pk, v))).send()
        };
        put("x", "1").await.unwrap();
        let writes = |check: &str| {
            vec![
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name("undo")
                            .key("pk", s("x"))
                            .key("sk", s("A"))
                            .update_expression("SET v = :v")
                            .expression_attribute_values(":v", s("2"))
                            .build()
                            .unwrap(),
                    )
                    .build(),
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name("undo")
                            .set_item(Some(item("y", "1")))
                            .build()
                            .unwrap(),
                    )
                    .build(),
                TransactWriteItem::builder()
                    .condition_check(
                        ConditionCheck::builder()
                            .table_name("undo")
                            .key("pk", s(check))
                            .key("sk", s("A"))
                            .condition_expression("attribute_exists(pk)")
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ]
        };
        let get = |pk: &'static str| {
            let dynamodb = dynamodb.clone();
            async move {
                dynamodb
                    .get_item()
                    .table_name("undo")
                    .key("pk", s(pk))
                    .key("sk", s("A"))
                    .send()
                    .await
                    .unwrap()
                    .item
                    .map(|i| i["v"].as_s().unwrap().clone())
            }
        };
        let cancelled = dynamodb
            .transact_write_items()
            .set_transact_items(Some(writes("guard")))
            .send()
            .await;
        assert!(cancelled.is_err(), "the condition check fails");
        assert_eq!(get("x").await.as_deref(), Some("1"), "the update is undone");
        assert_eq!(get("y").await, None, "the put is undone");

        put("guard", "0").await.unwrap();
        dynamodb
            .transact_write_items()
            .set_transact_items(Some(writes("guard")))
            .send()
            .await
            .expect("every condition holds");
        assert_eq!(get("x").await.as_deref(), Some("2"));
        assert_eq!(get("y").await.as_deref(), Some("1"));
    }

    /// What a transaction, a partition query and an index query cost the emulator does not
    /// grow with the items stored elsewhere in the table (moto alone: a copy of the whole table
    /// per transaction, a sort of it per query).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_emulators_cost_per_request_does_not_grow_with_the_table() {
        use aws_sdk_dynamodb::types::{Put, PutRequest, TransactWriteItem, WriteRequest};
        let emulator = spawn_on_free_port().expect("moto starts");
        let pid = emulator.guard.pid().expect("started here");
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&emulator.endpoint).await);
        table(&dynamodb, "costs").await;
        let agent = |pk: String, state: &str| {
            std::collections::HashMap::from([
                ("pk".to_owned(), s(&pk)),
                ("sk".to_owned(), s("A")),
                ("state".to_owned(), s(state)),
                ("padding".to_owned(), s(&"x".repeat(200))),
            ])
        };
        let round = |tag: &'static str| {
            let dynamodb = dynamodb.clone();
            async move {
                let before = cpu_seconds(pid);
                for i in 0..100 {
                    let put = Put::builder()
                        .table_name("costs")
                        .set_item(Some(agent(format!("{tag}-{i}"), tag)))
                        .build()
                        .unwrap();
                    dynamodb
                        .transact_write_items()
                        .transact_items(TransactWriteItem::builder().put(put).build())
                        .send()
                        .await
                        .unwrap();
                    dynamodb
                        .query()
                        .table_name("costs")
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(&format!("{tag}-{i}")))
                        .send()
                        .await
                        .unwrap();
                }
                for _ in 0..20 {
                    let out = dynamodb
                        .query()
                        .table_name("costs")
                        .index_name("byState")
                        .key_condition_expression("#s = :s")
                        .expression_attribute_names("#s", "state")
                        .expression_attribute_values(":s", s(tag))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(out.count(), 100);
                }
                cpu_seconds(pid) - before
            }
        };
        let small = round("small").await;
        for batch in 0..120 {
            let writes = (0..25)
                .map(|i| {
                    let put = PutRequest::builder()
                        .set_item(Some(agent(format!("other-{batch}-{i}"), "OFFLINE")))
                        .build()
                        .unwrap();
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            dynamodb
                .batch_write_item()
                .request_items("costs", writes)
                .send()
                .await
                .unwrap();
        }
        let large = round("large").await;
        assert!(
            large < small * 2.0 + 0.1,
            "100 transactions, 100 partition queries and 20 index queries cost {small:.2} s of \
             emulator CPU beside 200 items and {large:.2} s beside 3,200"
        );
    }

    /// The emulator answers several requests on one connection, as AWS endpoints do (moto's own
    /// server closes every connection: a TCP connection and a server thread per AWS call).
    #[test]
    fn the_emulator_keeps_a_connection_for_the_next_request() {
        let emulator = spawn_on_free_port().expect("moto starts");
        let addr = emulator.endpoint.trim_start_matches("http://").to_owned();
        let conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut writer = conn;
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\n\
             Content-Type: application/x-amz-json-1.0\r\nAuthorization: AWS4-HMAC-SHA256 \
             Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, \
             Signature=x\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        for attempt in 1..=3 {
            writer.write_all(request.as_bytes()).unwrap();
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(
                status.starts_with("HTTP/1.1 200"),
                "request {attempt}: {status:?}"
            );
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let header = line.trim_end().to_ascii_lowercase();
                if header.is_empty() {
                    break;
                }
                assert_ne!(header, "connection: close", "request {attempt}");
                if let Some(v) = header.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let body = String::from_utf8(body).unwrap();
            assert!(body.contains("TableNames"), "request {attempt}: {body}");
        }
    }

    /// What a receive costs the emulator does not grow with the queue's depth (moto alone: every
    /// message it hands out recomputes the queue's attributes, each a pass over all its messages).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receive_costs_the_same_from_a_deep_queue() {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        let emulator = spawn_on_free_port().expect("moto starts");
        let pid = emulator.guard.pid().expect("started here");
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emulator.endpoint).await);
        let queue = sqs
            .create_queue()
            .queue_name("deep")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let fill = |messages: usize| {
            let (sqs, queue) = (sqs.clone(), queue.clone());
            async move {
                for batch in 0..messages / 10 {
                    let entries = (0..10)
                        .map(|i| {
                            SendMessageBatchRequestEntry::builder()
                                .id(format!("m{i}"))
                                .message_body(format!("{batch}-{i}"))
                                .build()
                                .unwrap()
                        })
                        .collect();
                    let sent = sqs
                        .send_message_batch()
                        .queue_url(&queue)
                        .set_entries(Some(entries));
                    sent.send().await.unwrap();
                }
            }
        };
        // Twenty receives of ten messages each, made visible again at once (timeout 0).
        let receives = || {
            let (sqs, queue) = (sqs.clone(), queue.clone());
            async move {
                let before = cpu_seconds(pid);
                for _ in 0..20 {
                    let out = sqs
                        .receive_message()
                        .queue_url(&queue)
                        .max_number_of_messages(10)
                        .visibility_timeout(0)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(out.messages().len(), 10);
                }
                cpu_seconds(pid) - before
            }
        };
        fill(20).await;
        let shallow = receives().await;
        fill(2_000).await;
        let deep = receives().await;
        assert!(
            deep < shallow * 2.0 + 0.1,
            "20 receives of 10 messages cost {shallow:.2} s of emulator CPU from a queue of 20 \
             messages and {deep:.2} s from one of 2,020"
        );
    }

    /// A FIFO group whose in-flight messages become visible again (a failed batch, retried)
    /// hands them out in order again: moto alone hands out the second first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_fifo_group_is_handed_out_in_order_again() {
        let emulator = spawn_on_free_port().expect("moto starts");
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emulator.endpoint).await);
        let queue = fifo_queue(&sqs, "order.fifo", &["m0", "m1", "m2"]).await;
        let batch = receive(&sqs, &queue, 2).await;
        assert_eq!(batch.len(), 2);
        // The poller's retry of the batch.
        let retry = crate::poller::visibility_entries(&batch.iter().collect::<Vec<_>>(), 1);
        assert_eq!(retry.len(), 2, "an entry per message");
        sqs.change_message_visibility_batch()
            .queue_url(&queue)
            .set_entries(Some(retry))
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let next = receive(&sqs, &queue, 1).await;
        let bodies: Vec<&str> = next.iter().filter_map(|m| m.body()).collect();
        assert_eq!(bodies, ["m0"], "the group's first message first");
    }

    /// A consumer that outlived its visibility timeout cannot hide the message again (SQS:
    /// `MessageNotInflight`), so the rest of its FIFO group cannot overtake it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_no_longer_in_flight_keeps_its_place_in_its_group() {
        let emulator = spawn_on_free_port().expect("moto starts");
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emulator.endpoint).await);
        let queue = fifo_queue(&sqs, "late.fifo", &["m0", "m1"]).await;
        let first = receive(&sqs, &queue, 1).await;
        let handle = first[0].receipt_handle().unwrap().to_owned();
        let visibility = |seconds| {
            sqs.change_message_visibility()
                .queue_url(&queue)
                .receipt_handle(&handle)
                .visibility_timeout(seconds)
                .send()
        };
        visibility(0)
            .await
            .expect("in flight: its timeout can end now");
        let late = visibility(30).await.expect_err("no longer in flight");
        assert!(
            format!("{late:?}").contains("MessageNotInflight"),
            "{late:?}"
        );
        let next = receive(&sqs, &queue, 10).await;
        let bodies: Vec<&str> = next.iter().filter_map(|m| m.body()).collect();
        assert_eq!(bodies, ["m0", "m1"]);
    }
}
