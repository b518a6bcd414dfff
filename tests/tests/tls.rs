//! The functions over TLS, in a test binary of its own: the functions' HTTP client reads its
//! trust store once per process (`AWS_CA_BUNDLE`, `shared::http_client`), so the bundle is set
//! here before anything builds one.
//!
//! agents-api, configured from the environment as its `main` configures it
//! (`shared::aws::from_vars`), reaches DynamoDB and SQS on the emulator through the HTTPS front
//! of `local dev --tls`, trusting the front's local CA; the init warm-up
//! (`shared::aws::warm_up`) leaves the first request a connection already open; a warmed
//! connection the server has since closed is replaced without an error; a warm-up that cannot
//! connect holds init up at most `WARM_UP_TIMEOUT`.

use std::time::{Duration, Instant};

use local::tls::{LocalCa, TlsFront};
use serde_json::{Value, json};
use shared::aws::{WARM_UP_ENV, WARM_UP_TIMEOUT, WarmUp, warm_up};
use system_tests::{Env, api, body_json, request};

/// The SDK configuration of a function on Lambda (region, credentials), pointed at `endpoint`.
fn sdk_at(endpoint: &str) -> aws_config::SdkConfig {
    let vars = [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_ENDPOINT_URL", endpoint),
    ];
    shared::aws::from_vars(vars.map(|(k, v)| (k.to_string(), v.to_string())))
        .expect("a Lambda environment")
}

async fn get_state(app: &agents_api::AwsApp, id: &str) -> (u16, Value) {
    let event = api(
        "agents-api/get-agent-state.json",
        &format!("/agents/{id}/state"),
        None,
    );
    let resp = agents_api::handle(app, request(&event)).await;
    (resp.status().as_u16(), body_json(&resp))
}

#[tokio::test]
async fn a_function_reaches_dynamodb_over_tls_with_the_ca_bundle_and_a_warmed_connection() {
    let emulator = system_tests::endpoint();
    let ca = LocalCa::new().unwrap();
    let front = TlsFront::start(emulator, Duration::from_secs(60), &ca)
        .await
        .unwrap();
    // A front that closes connections idle for 200 ms, as a server's keep-alive timeout does.
    let closing = TlsFront::start(emulator, Duration::from_millis(200), &ca)
        .await
        .unwrap();
    // SAFETY: the only test of this binary; no other thread reads the environment now (the
    // emulator's threads only read its output).
    unsafe { std::env::set_var("AWS_CA_BUNDLE", front.ca_bundle()) };
    let env = Env::new().await;
    let vars = env.vars("AgentsApiFunction").with(WARM_UP_ENV, "on");

    // Warmed in init: one connection, which the first request finds open.
    let sdk = sdk_at(front.endpoint());
    let app = agents_api::init(&sdk, &vars).unwrap();
    assert_eq!(
        front.handshakes(),
        0,
        "init opens nothing before the warm-up"
    );
    assert_eq!(warm_up(&sdk, &vars).await, WarmUp::Done);
    assert_eq!(front.handshakes(), 1);
    let (status, body) = get_state(&app, "tls-1").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        front.handshakes(),
        1,
        "the first request reused the warmed connection"
    );

    // The whole function over TLS: a registration (DynamoDB and SQS), then its state.
    let register = api(
        "agents-api/register-agent.json",
        "/agents/tls-1",
        Some(&json!({"name": "Tess", "skills": ["billing"], "capacity": 1}).to_string()),
    );
    let resp = agents_api::handle(&app, request(&register)).await;
    assert_eq!(resp.status(), 202, "{}", body_json(&resp));
    let (status, agent) = get_state(&app, "tls-1").await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(
        (&agent["state"], &agent["version"]),
        (&json!("OFFLINE"), &json!(0))
    );

    // A warmed connection the server closed while idle: replaced by a new one, no error.
    let sdk = sdk_at(closing.endpoint());
    let app = agents_api::init(&sdk, &vars).unwrap();
    assert_eq!(warm_up(&sdk, &vars).await, WarmUp::Done);
    assert_eq!(closing.handshakes(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, agent) = get_state(&app, "tls-1").await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(
        closing.handshakes(),
        2,
        "a new connection replaced the closed one"
    );

    // Off, or no table: nothing is sent.
    let off = vars.clone().with(WARM_UP_ENV, "off");
    assert_eq!(warm_up(&sdk, &off).await, WarmUp::Off);
    let no_table = vars.clone().with("TABLE_NAME", "");
    assert_eq!(warm_up(&sdk, &no_table).await, WarmUp::NoTable);
    assert_eq!(closing.handshakes(), 2);

    // Nothing listening: a failure, within the warm-up's bound.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let started = Instant::now();
    let outcome = warm_up(&sdk_at(&dead_endpoint), &vars).await;
    assert!(
        matches!(outcome, WarmUp::Failed(_) | WarmUp::TimedOut),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < WARM_UP_TIMEOUT + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}
