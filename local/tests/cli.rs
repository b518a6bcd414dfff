//! The `local` binary end to end: bad input fails clearly; `local dev` serves a route and
//! polls a queue with a stand-in function (tests/fixtures/fake_function.py), then stops
//! cleanly on SIGTERM, taking the emulator it started with it.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Dev, failure, free_port, get, local, queue_url, request, workspace};
use shared::dlq::{Depth, depth};

const TEMPLATE: &str = include_str!("stacks/jobs.yaml");

#[test]
fn malformed_template_is_a_clear_error() {
    let dir = workspace("malformed", "Resources: [unclosed", false);
    let err = failure(&dir, &["dev", "--no-build"]);
    assert!(err.contains("template.yaml: not valid YAML"), "{err}");
    let err = failure(&dir, &["dev", "--template", "missing.yaml"]);
    assert!(err.contains("cannot read template missing.yaml"), "{err}");
}

#[test]
fn missing_binary_is_a_clear_error() {
    let dir = workspace("missing", TEMPLATE, false);
    let port = free_port().to_string();
    let err = failure(&dir, &["dev", "--no-build", "--port", &port]);
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
    let err = failure(&dir, &["dev", "--no-build", "--port", &port]);
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
    let err = failure(&plain, &["token", "--role", "agent"]);
    assert!(err.contains("declares no JWT authorizer"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_serves_routes_polls_queues_and_stops_cleanly() {
    let retry_now = [("LOCAL_RETRY_DELAY_SECONDS", "0")];
    let mut dev = Dev::fake("dev", TEMPLATE, "t", &[], &retry_now);
    let port = dev.port;
    let table = dev.lines().join("\n");
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
    let spoofed = [
        ("Host", "bad host"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "a b"),
        ("X-Forwarded-Port", "x"),
    ];
    let answer = tokio::task::spawn_blocking(move || request(port, "GET", "/echo/h", &spoofed, ""))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let headers =
        &serde_json::from_str::<serde_json::Value>(&answer.body).unwrap()["event"]["headers"];
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
    dev.wait_for_within(&["REPORT RequestId:"], Duration::from_secs(5));

    // One good message is consumed; a poison one is retried, then redriven to the DLQ.
    let sqs = dev.sqs().await;
    let jobs = queue_url(&sqs, "t-Jobs").await;
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
    let dlq = queue_url(&sqs, "t-JobsDLQ").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs_depth = depth(&sqs, &jobs).await.unwrap();
        let dlq_depth = depth(&sqs, &dlq).await.unwrap();
        if jobs_depth == Depth::default() && dlq_depth.visible == 1 {
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
    dev.terminate();
    let emulator = dev.endpoint.trim_start_matches("http://");
    assert!(TcpStream::connect(emulator).is_err(), "emulator still up");
    let _ = std::fs::remove_dir_all(&dev.dir);
}

const SCHEDULED: &str = include_str!("stacks/scheduled.yaml");

/// `Schedule` and `ScheduleV2` events fire on their schedule, 60 times faster with
/// `LOCAL_SCHEDULE_SPEEDUP=60` (a minute a second), with the payloads AWS sends; a disabled one
/// never fires; the runner still stops cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn dev_fires_scheduled_events_with_their_payloads() {
    let speedup = [("LOCAL_SCHEDULE_SPEEDUP", "60")];
    let mut dev = Dev::fake("schedule", SCHEDULED, "t", &[], &speedup);
    let table = dev.lines().join("\n");
    assert!(
        table.contains("Schedules (LOCAL_SCHEDULE_SPEEDUP=60"),
        "{table}"
    );
    assert!(table.contains("rate(1 minute)"), "{table}");
    assert!(table.contains("-> Fn"), "{table}");
    assert!(table.contains("t-FnTick"), "{table}");
    assert!(table.contains("t-FnOff, disabled"), "{table}");

    // Everything printed for a few seconds: a few minutes of schedule time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = dev.lines();
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
    dev.terminate();
    let _ = std::fs::remove_dir_all(&dev.dir);
}

// ---------------------------------------------------------------------------------------------
// Lambda behaviours through one shared `local dev` process (and the one emulator it starts):
// timeouts, failed inits, overlapping requests. Each scenario has its own function, so the
// scenarios can run in parallel without sharing instances.

const SCENARIOS: &str = include_str!("stacks/scenarios.yaml");

/// The `local dev` process shared by the scenario tests. It is never dropped (a static): it
/// shuts down, emulator included, when this test process exits and its stdin pipe closes.
fn shared() -> &'static Dev {
    static SHARED: std::sync::OnceLock<Dev> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| Dev::fake("scenarios", SCENARIOS, "s", &[], &[]))
}

/// What API Gateway answers when a function fails: `502` and its message.
fn bad_gateway() -> (u16, String) {
    (502, r#"{"message":"Internal Server Error"}"#.to_string())
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

    // It reports its error through /runtime/init/error, then exits.
    assert_eq!(rt.get("/init-error"), bad_gateway());
    rt.wait_for_each(&[
        &[
            "[InitError]",
            "init failed: Runtime.InitError: cannot read config: TABLE_NAME is not set",
        ],
        &["[InitError] INIT_REPORT", "Status: error"],
    ]);

    // It exits before asking for an invocation; what it printed is shown.
    assert_eq!(rt.get("/exit-at-init"), bad_gateway());
    rt.wait_for_each(&[
        &["[ExitAtInit] exiting during init"],
        &[
            "[ExitAtInit]",
            "Runtime exited before init completed: exit status: 7",
        ],
    ]);

    // The runner is still up: another function answers, and the broken one is tried afresh.
    let (status, body) = rt.post("/echo", "{}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(rt.get("/init-error"), bad_gateway());
    // The runner prints the second INIT_REPORT as the 502 goes out: wait for the line.
    rt.wait_for_more(
        &["[InitError] INIT_REPORT", "Status: error"],
        1,
        Duration::from_secs(10),
    );
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

const LIMITED: &str = include_str!("stacks/limited.yaml");

/// `local dev --lambda-limits --tls`: the function gets the HTTPS front as its endpoint and
/// the front's CA as `AWS_CA_BUNDLE` (a TLS request verified with that CA alone reaches the
/// emulator through it); it runs in cgroups of its own with its `MemorySize`'s CPU share and
/// memory limit; a request that takes it past its `MemorySize` kills it, answered and logged
/// as Lambda does (`502`, `Runtime exited with error: signal: killed`, `Runtime.ExitError`,
/// `Error Type: Runtime.OutOfMemory` on the REPORT line); the next request gets a fresh instance.
#[test]
fn dev_runs_functions_at_their_lambda_limits_over_tls() {
    let dev = Dev::fake("limits", LIMITED, "l", &["--lambda-limits", "--tls"], &[]);
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

    assert_eq!(dev.post("/mem", r#"{"allocate_mb": 256}"#), bad_gateway());
    dev.wait_for_each(&[
        &["[Mem] ", "Error: Runtime exited with error: signal: killed"],
        &["[Mem] Runtime.ExitError"],
        &[
            "[Mem] REPORT",
            "Status: error\tError Type: Runtime.OutOfMemory",
        ],
    ]);
    let (status, body) = dev.post("/mem", "{}");
    assert_eq!(status, 200, "{body}");
    assert_ne!(pid_of(&body), pid, "a fresh instance answers");
}
