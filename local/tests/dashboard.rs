//! The dashboard of `local dev` end to end, in a real headless Chromium driven through
//! chromedriver (WebDriver): the `local` binary runs a small template whose functions are the
//! stand-in tests/fixtures/fake_function.py, the page is opened once, and every check reads
//! what the page shows as traffic flows (README.md §Dashboard).
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `CHROMIUM` / `CHROMEDRIVER` naming the
//! executables); without them the test fails saying so. It writes a screenshot of the page
//! to `target/dashboard.png`, and with `UPDATE_SCREENSHOT=1` also to `docs/dashboard.png`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Dev, failure, free_port, local, queue_url, request, workspace};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CORRELATION: &str = "corr-7f3a9c";

const TEMPLATE: &str = include_str!("stacks/dashboard.yaml");

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$name` if set, else the first of `candidates` found in `PATH` (or as an absolute path).
fn executable(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.iter().find_map(|c| {
        if c.starts_with('/') {
            return Path::new(c).is_file().then(|| PathBuf::from(c));
        }
        std::env::split_paths(&path)
            .map(|d| d.join(c))
            .find(|p| p.is_file())
    })
}

fn browser_tools() -> (PathBuf, PathBuf) {
    let chromium = executable(
        "CHROMIUM",
        &["chromium", "chromium-browser", "/usr/bin/chromium"],
    );
    let driver = executable("CHROMEDRIVER", &["chromedriver", "/usr/bin/chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => (c, d),
        (c, d) => panic!(
            "the dashboard test runs a real headless browser and needs Chromium and chromedriver \
             (found chromium: {c:?}, chromedriver: {d:?}): install them with \
             `apt-get install chromium chromium-driver`, or set CHROMIUM and CHROMEDRIVER"
        ),
    }
}

fn start_driver(chromedriver: &Path) -> Driver {
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
    let mut driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = driver.child.try_wait() {
            panic!("chromedriver exited: {status}");
        }
        assert!(Instant::now() < deadline, "chromedriver never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=1440,1220",
            ],
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// Runs `script` in the page until it returns something other than `null`, for up to
/// `timeout`; panics naming `what` and the last value otherwise.
async fn wait_for(client: &Client, what: &str, timeout: Duration, script: &str) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let value = client.execute(script, vec![]).await;
        match value {
            Ok(v) if !v.is_null() => return v,
            _ if Instant::now() >= deadline => {
                let page = client
                    .execute("return document.body.innerText", vec![])
                    .await
                    .unwrap_or_default();
                panic!("{what}: not shown within {timeout:?} (last: {value:?}); page:\n{page}");
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Clicks the first element matching `css`, retrying while the page re-renders it.
async fn click(client: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clicked = match client.find(Locator::Css(css)).await {
            Ok(e) => e.click().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("cannot click {css}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The invocation rows of one function's card: each row's data and cell texts.
fn invocations_of(function: &str) -> String {
    format!(
        r#"const rows = [...document.querySelectorAll('.function[data-function="{function}"] tr.invocation')];
        return rows.map(r => ({{
            requestId: r.dataset.requestId,
            outcome: r.dataset.outcome,
            trigger: r.querySelector('.trigger').innerText,
            correlation: r.querySelector('.correlation').innerText,
            duration: r.querySelector('.duration').innerText,
            init: r.querySelector('.init').innerText,
            memory: r.querySelector('.memory').innerText,
        }}));"#
    )
}

/// Waits up to `timeout` until the invocation rows of `function`'s card ([`invocations_of`],
/// as `rows`) satisfy the JavaScript condition `when`; returns the rows.
async fn wait_for_invocations(
    client: &Client,
    what: &str,
    timeout: Duration,
    function: &str,
    when: &str,
) -> Value {
    let rows = invocations_of(function);
    let script = format!("const rows = (() => {{ {rows} }})(); return {when} ? rows : null;");
    wait_for(client, what, timeout, &script).await
}

/// Waits up to `timeout` until `function`'s card shows one invocation, a success; asserts
/// that it shows `trigger` and [`CORRELATION`], and returns it.
async fn wait_for_one_success(
    client: &Client,
    what: &str,
    timeout: Duration,
    function: &str,
    trigger: &str,
) -> Value {
    let when = "rows.length === 1 && rows[0].outcome === 'success'";
    let row = wait_for_invocations(client, what, timeout, function, when).await[0].clone();
    assert_eq!(row["trigger"], trigger, "{row}");
    assert_eq!(row["correlation"], CORRELATION, "{row}");
    row
}

/// The cells of `queue`'s row in the queues table: `visible`, `inFlight`, and `redrive` (the
/// redrive button's `text` and `enabled`, or `null` without one); `null` without a row.
fn queue_cells(queue: &str) -> String {
    format!(
        r#"const row = document.querySelector('#queues tr[data-queue="{queue}"]');
        if (!row) return null;
        const button = row.querySelector('button.redrive');
        return {{
            visible: row.querySelector('.visible').innerText,
            inFlight: row.querySelector('.in-flight').innerText,
            redrive: button ? {{ text: button.innerText, enabled: !button.disabled }} : null,
        }};"#
    )
}

/// An SQS client of the emulator the start-up table names.
/// Waits up to `timeout` until `queue`'s row ([`queue_cells`], as `q`) is shown and satisfies
/// the JavaScript condition `when`; returns its cells.
async fn wait_for_queue(
    client: &Client,
    what: &str,
    timeout: Duration,
    queue: &str,
    when: &str,
) -> Value {
    let cells = queue_cells(queue);
    let script = format!("const q = (() => {{ {cells} }})(); return q && {when} ? q : null;");
    wait_for(client, what, timeout, &script).await
}

async fn sqs_client(dev: &Dev) -> aws_sdk_sqs::Client {
    let line = dev
        .lines()
        .into_iter()
        .find(|l| l.starts_with("Emulator  "))
        .expect("the emulator line of the start-up table");
    let endpoint = line["Emulator  ".len()..]
        .split_whitespace()
        .next()
        .unwrap();
    common::sqs_client(endpoint).await
}

/// Sends `queue` an [`event_body`].
async fn send_event(sqs: &aws_sdk_sqs::Client, queue: &str, detail_type: &str, sleep: f64) {
    sqs.send_message()
        .queue_url(queue)
        .message_body(event_body(detail_type, sleep))
        .send()
        .await
        .unwrap();
}

/// An EventBridge event as a rule delivers it to a queue; `sleep` makes the fake worker take
/// that long over its batch.
fn event_body(detail_type: &str, sleep: f64) -> String {
    json!({
        "version": "0", "id": uuid::Uuid::new_v4(), "detail-type": detail_type,
        "source": "cqrs.agents", "account": "123456789012", "region": "us-east-1",
        "time": "2026-01-05T10:00:00Z", "resources": [],
        "detail": {
            "id": uuid::Uuid::new_v4(), "correlationId": CORRELATION,
            "occurredAt": "2026-01-05T10:00:00Z", "type": detail_type,
            "data": {"agentId": "ada"},
        },
        "sleep": sleep,
    })
    .to_string()
}

#[test]
fn a_template_route_under_the_dashboard_prefix_is_refused() {
    let dir = workspace(
        "reserved",
        &TEMPLATE.replace("Path: /health", "Path: /_local/health"),
        true,
    );
    let port = free_port().to_string();
    let err = failure(&dir, &["dev", "--no-build", "--port", &port]);
    assert!(
        err.contains("route GET /_local/health (function HealthFunction) starts with /_local")
            && err.contains("reserved for the local dashboard"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_stack_live_in_a_real_browser() {
    let (chromium, chromedriver) = browser_tools();
    let retry_now = [("LOCAL_RETRY_DELAY_SECONDS", "0")];
    let runner = Dev::fake("live", TEMPLATE, "d", &[], &retry_now);
    let dir = runner.dir.clone();
    let port = runner.port;
    let startup = runner.lines().join("\n");
    assert!(
        startup.contains(&format!("Dashboard http://127.0.0.1:{port}/_local/")),
        "{startup}"
    );

    // The prefix is the dashboard's: no request under it reaches the template's routes.
    let send = move |method: &'static str,
                     path: &'static str,
                     headers: Vec<(&'static str, String)>,
                     body: &'static str| {
        tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(port, method, path, &headers, body)
        })
    };
    let http = move |method, path, headers| send(method, path, headers, "");
    let redirect = http("GET", "/_local", vec![]).await.unwrap();
    assert_eq!(redirect.status, 308, "{redirect:?}");
    assert!(redirect.head.contains("location: /_local/"), "{redirect:?}");
    let missing = http("GET", "/_local/nope", vec![]).await.unwrap();
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("no such dashboard resource"),
        "{missing:?}"
    );
    let forged = http("POST", "/_local/api/queues/AgentsDLQ/redrive", vec![])
        .await
        .unwrap();
    assert_eq!(
        forged.status, 403,
        "a redrive without the dashboard's header: {forged:?}"
    );

    let token = local(&dir, &["token", "--role", "supervisor"])
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();

    let driver = start_driver(&chromedriver);
    let profile = dir.join("chromium-profile");
    let client = browser(&driver, &chromium, &profile).await;
    client
        .goto(&format!("http://127.0.0.1:{port}/_local/"))
        .await
        .unwrap();
    // Set once: still there at the end means the page was never reloaded.
    client
        .execute("window.loadedOnce = true; return null;", vec![])
        .await
        .unwrap();

    // (1) The routes and their functions.
    let routes = wait_for(
        &client,
        "the routes table",
        Duration::from_secs(15),
        r#"const rows = [...document.querySelectorAll('#routes tbody tr')].map(r => [...r.cells].map(c => c.innerText));
           return rows.length === 4 ? rows : null;"#,
    )
    .await;
    assert_eq!(
        routes,
        json!([
            [
                "PUT",
                "/agents/{agentId}",
                "scopes supervisors",
                "AgentsApiFunction"
            ],
            [
                "GET",
                "/agents/{agentId}/state",
                "scopes agents|supervisors",
                "AgentsApiFunction"
            ],
            [
                "PUT",
                "/agents/{agentId}/state",
                "scopes agents|supervisors",
                "AgentsApiFunction"
            ],
            ["GET", "/health", "public", "HealthFunction"],
        ])
    );
    let idle = wait_for_queue(
        &client,
        "the queues table",
        Duration::from_secs(10),
        "AgentsQueue",
        "true",
    )
    .await;
    assert_eq!(
        (&idle["visible"], &idle["inFlight"]),
        (&json!("0"), &json!("0"))
    );

    // (2) A request with a known correlation id: its invocation appears with its REPORT
    // figures, a cold start's init duration included.
    let answer = http(
        "PUT",
        "/agents/ada",
        vec![
            ("authorization", format!("Bearer {token}")),
            ("x-correlation-id", CORRELATION.to_string()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let _ = http("GET", "/health", vec![]).await.unwrap();
    let api = wait_for_one_success(
        &client,
        "the API function's invocation",
        Duration::from_secs(10),
        "AgentsApiFunction",
        "PUT /agents/{agentId}",
    )
    .await;
    let figure = |v: &Value, unit: &str| {
        v.as_str()
            .is_some_and(|s| s.ends_with(unit) && s.len() > unit.len())
    };
    assert!(figure(&api["duration"], " ms"), "{api}");
    assert!(
        figure(&api["init"], " ms"),
        "a cold start shows its init duration: {api}"
    );
    assert!(figure(&api["memory"], " / 256 MB"), "{api}");

    // A failing invocation shows as such, with the function's error.
    let failed = send(
        "PUT",
        "/agents/bob/state",
        vec![("authorization", format!("Bearer {token}"))],
        r#"{"fail": "agent bob is not registered"}"#,
    )
    .await
    .unwrap();
    assert_eq!(failed.status, 502, "{failed:?}");
    let error = wait_for(
        &client,
        "the failed invocation",
        Duration::from_secs(10),
        r#"const row = document.querySelector('.function[data-function="AgentsApiFunction"] tr.invocation[data-outcome="error"]');
           return row ? [row.querySelector('.trigger').innerText, row.title] : null;"#,
    )
    .await;
    assert_eq!(
        error,
        json!([
            "PUT /agents/{agentId}/state",
            "Boom: agent bob is not registered"
        ])
    );

    // (3) A message on the queue: in flight while the worker takes 3 s over it, then its
    // invocation appears (trigger: the queue) and the queue is empty again.
    let sqs = sqs_client(&runner).await;
    let agents_queue = queue_url(&sqs, "d-AgentsQueue").await;
    send_event(&sqs, &agents_queue, "AgentRegistered", 3.0).await;
    wait_for_queue(
        &client,
        "the message in flight",
        Duration::from_secs(10),
        "AgentsQueue",
        "q.inFlight === '1'",
    )
    .await;
    let worker = wait_for_one_success(
        &client,
        "the worker's invocation",
        Duration::from_secs(15),
        "AgentsWorkerFunction",
        "queue AgentsQueue (1 msg)",
    )
    .await;
    assert!(figure(&worker["duration"], " s"), "slept 3 s: {worker}");
    assert!(figure(&worker["memory"], " / 128 MB"), "{worker}");
    wait_for_queue(
        &client,
        "the queue drained",
        Duration::from_secs(10),
        "AgentsQueue",
        "q.visible === '0' && q.inFlight === '0'",
    )
    .await;

    // (4) A dead message: the DLQ's depth shows it; its redrive button moves it back to the
    // source queue (depth 0), where the worker handles it.
    let dlq = queue_url(&sqs, "d-AgentsDLQ").await;
    send_event(&sqs, &dlq, "AgentStateChanged", 0.2).await;
    let dead = wait_for_queue(
        &client,
        "the DLQ's depth",
        Duration::from_secs(10),
        "AgentsDLQ",
        "q.visible === '1' && q.redrive.enabled",
    )
    .await;
    assert_eq!(dead["redrive"]["text"], "Redrive → AgentsQueue");
    click(
        &client,
        r#"#queues tr[data-queue="AgentsDLQ"] button.redrive"#,
    )
    .await;
    wait_for_queue(
        &client,
        "the DLQ empty after the redrive",
        Duration::from_secs(10),
        "AgentsDLQ",
        "q.visible === '0' && !q.redrive.enabled",
    )
    .await;
    let note = wait_for(
        &client,
        "the redrive's report",
        Duration::from_secs(5),
        "const t = document.getElementById('redrive-result').innerText; return t.includes('moved') ? t : null;",
    )
    .await;
    assert_eq!(note, "AgentsDLQ: moved 1 message back to AgentsQueue");
    wait_for_invocations(
        &client,
        "the redriven message's invocation",
        Duration::from_secs(15),
        "AgentsWorkerFunction",
        "rows.length === 2 && rows.every(r => r.outcome === 'success')",
    )
    .await;

    // (5) The trace: a click on the request's invocation opens it; typing the id gives the
    // same. Every invocation that carried the id, in time order, each with its log lines.
    click(
        &client,
        &format!(
            r#".function[data-function="AgentsApiFunction"] tr.invocation[data-request-id="{}"]"#,
            api["requestId"].as_str().unwrap()
        ),
    )
    .await;
    let trace_script = r#"const items = [...document.querySelectorAll('#trace-results .trace-invocation')];
        if (items.length !== 3) return null;
        return items.map(i => ({
            function: i.dataset.function,
            trigger: i.querySelector('.trigger').innerText,
            lines: [...i.querySelectorAll('.log-line')].map(l => l.innerText),
        }));"#;
    let clicked = wait_for(
        &client,
        "the trace opened by a click",
        Duration::from_secs(10),
        trace_script,
    )
    .await;
    client
        .find(Locator::Css("#trace-input"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    client
        .find(Locator::Css("#trace-input"))
        .await
        .unwrap()
        .send_keys(CORRELATION)
        .await
        .unwrap();
    click(&client, "#trace-go").await;
    let typed = wait_for(
        &client,
        "the trace of the typed id",
        Duration::from_secs(10),
        trace_script,
    )
    .await;
    assert_eq!(clicked, typed);
    let functions: Vec<&str> = typed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["function"].as_str().unwrap())
        .collect();
    assert_eq!(
        functions,
        [
            "AgentsApiFunction",
            "AgentsWorkerFunction",
            "AgentsWorkerFunction"
        ]
    );
    assert_eq!(typed[0]["trigger"], "PUT /agents/{agentId}");
    let lines = |n: usize| typed[n]["lines"].to_string();
    assert!(
        lines(0).contains("request received") && lines(0).contains(CORRELATION),
        "the request's own log line: {}",
        lines(0)
    );
    assert!(
        lines(0).contains("fake function ready"),
        "its cold start's init output: {}",
        lines(0)
    );
    assert!(
        lines(1).contains("message handled") && lines(1).contains("AgentRegistered"),
        "{}",
        lines(1)
    );
    assert!(lines(2).contains("AgentStateChanged"), "{}", lines(2));
    assert_eq!(
        client
            .execute("return window.loadedOnce === true", vec![])
            .await
            .unwrap(),
        json!(true),
        "everything above came without a reload"
    );

    // The screenshot, with the trace open.
    client
        .execute("window.scrollTo(0, 0); return null;", vec![])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = client.screenshot().await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("target/dashboard.png"), &png).unwrap();
    if std::env::var("UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        std::fs::write(root.join("docs/dashboard.png"), &png).unwrap();
    }
    client.close().await.unwrap();
    drop(driver);
    drop(runner);
    let _ = std::fs::remove_dir_all(dir);
}
