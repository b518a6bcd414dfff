//! Operations against a real moto server: `GET /health` and the DLQ routes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use system_tests::{Env, api, body_json, request};

/// The health function as the template configures it, probing only `tables` and the agents
/// queues (a test controls what is missing).
fn health_config(env: &Env, tables: Vec<String>) -> health_api::Config {
    let queues = [env.queue_url("AgentsQueue"), env.queue_url("AgentsDLQ")];
    let vars = env
        .vars("HealthFunction")
        .with("HEALTH_TABLES", tables.join(","))
        .with("HEALTH_QUEUES", queues.join(","));
    health_api::Config::from_vars(&vars).unwrap()
}

async fn health(app: &health_api::App) -> (u16, Value) {
    let ev = system_tests::fixture("health-api/health.json");
    let resp = health_api::handle(app, request(&ev)).await;
    (resp.status().as_u16(), body_json(&resp))
}

#[tokio::test]
async fn health_reports_each_dependency_and_names_the_failing_one() {
    let env = Env::new().await;
    let app = health_api::App::new(
        &env.sdk,
        health_config(&env, vec![env.table("AgentsTable")]),
    );
    let (status, report) = health(&app).await;
    assert_eq!(status, 200, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 4, "table, two queues, bus: {report}");
    assert!(
        checks
            .iter()
            .all(|c| c["status"] == "up" && c["latencyMs"].is_number())
    );

    let app = health_api::App::new(
        &env.sdk,
        health_config(&env, vec![env.table("AgentsTable"), "missing-table".into()]),
    );
    let (status, report) = health(&app).await;
    assert_eq!(status, 503);
    assert_eq!(report["failing"], json!(["missing-table"]));
}

#[tokio::test]
async fn health_answers_503_quickly_when_the_emulator_is_unreachable() {
    let env = Env::new().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let sdk = system_tests::sdk_for(&dead).await;
    let app = health_api::App::new(&sdk, health_config(&env, vec![env.table("AgentsTable")]));
    let started = Instant::now();
    let (status, report) = health(&app).await;
    assert_eq!(status, 503);
    assert_eq!(report["failing"].as_array().unwrap().len(), 4, "{report}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// The emulator behind a proxy that goes dark and comes back: 503 naming every dependency
/// within the probe timeout, then 200 again.
#[tokio::test]
async fn health_follows_an_outage_and_the_recovery() {
    let env = Env::new().await;
    let proxy = system_tests::Proxy::start(system_tests::endpoint()).await;
    let sdk = system_tests::sdk_for(&proxy.endpoint).await;
    let app = health_api::App::new(&sdk, health_config(&env, vec![env.table("AgentsTable")]));
    assert_eq!(health(&app).await.0, 200);

    proxy.set_up(false);
    let started = Instant::now();
    let (status, report) = health(&app).await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["failing"].as_array().unwrap().len(), 4, "{report}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    proxy.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&app).await.0 != 200 {
        assert!(Instant::now() < deadline, "health never recovered");
    }
}

fn ops_app(env: &Env) -> ops_api::App {
    ops_api::init(&env.sdk, &env.vars("OpsFunction")).unwrap()
}

async fn ops(app: &ops_api::App, method: &str, path: &str, query: Option<&str>) -> (u16, Value) {
    let mut ev = api("ops-api/list-dlqs.json", path, None);
    ev["requestContext"]["http"]["method"] = method.into();
    system_tests::route(&mut ev);
    if let Some(q) = query {
        let (k, v) = q.split_once('=').unwrap();
        ev["rawQueryString"] = q.into();
        ev["queryStringParameters"] = json!({ k: v });
    }
    let resp = ops_api::handle(app, request(&ev)).await;
    (resp.status().as_u16(), body_json(&resp))
}

fn queue<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap()
}

fn agents_worker(env: &Env, bus: &str) -> agents_worker::AwsApp {
    agents_worker::init(
        &env.sdk,
        &env.vars("AgentsWorkerFunction")
            .with("EVENT_BUS_NAME", bus.to_owned()),
    )
    .unwrap()
}

fn agents_api(env: &Env) -> agents_api::AwsApp {
    agents_api::init(&env.sdk, &env.vars("AgentsApiFunction")).unwrap()
}

/// A command whose event cannot be published (the worker is configured with a bus that does
/// not exist) fails until maxReceiveCount and lands in the agent commands' DLQ; once the
/// worker is fixed, a redrive brings it back, and its event is published (once: its effect
/// was applied the first time and is not applied again).
#[tokio::test]
async fn redrive_moves_dead_messages_back_and_they_are_applied() {
    let env = Env::new().await;
    let (ops_app, api_app) = (ops_app(&env), agents_api(&env));
    let broken = agents_worker(&env, "no-such-bus");
    let register = api(
        "agents-api/register-agent.json",
        "/agents/late",
        Some(r#"{"name": "Late", "capacity": 1}"#),
    );
    assert_eq!(
        agents_api::handle(&api_app, request(&register))
            .await
            .status(),
        202
    );
    let dlq = env.queue_url("AgentsCommandDLQ");
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.depth(&dlq).await == 0 {
        assert!(Instant::now() < deadline, "never reached the DLQ");
        env.drain("AgentsCommandQueue", |e| shared::worker::handle(&broken, e))
            .await;
    }

    let (status, list) = ops(&ops_app, "GET", "/ops/dlq", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(queue(&list, "agent-commands")["depth"], 1);
    assert!(
        queue(&list, "agent-commands")["oldestMessageAgeSeconds"]
            .as_i64()
            .unwrap()
            >= 0
    );
    assert_eq!(queue(&list, "event-delivery")["depth"], 0);
    assert!(
        !env.published()
            .await
            .iter()
            .any(|(t, _)| t == "AgentRegistered"),
        "nothing published yet"
    );

    // The fix: a worker with the right bus; the dead command goes back to its FIFO queue.
    let worker = agents_worker(&env, &env.bus());
    let (status, report) = ops(
        &ops_app,
        "POST",
        "/ops/dlq/agent-commands/redrive",
        Some("limit=10"),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], 1);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["remaining"], 0);
    assert!(
        env.drain("AgentsCommandQueue", |e| shared::worker::handle(&worker, e))
            .await
            .is_empty()
    );
    let registered: Vec<_> = env
        .published()
        .await
        .into_iter()
        .filter(|(t, _)| t == "AgentRegistered")
        .collect();
    assert_eq!(registered.len(), 1, "{registered:?}");
    let get = api(
        "agents-api/get-agent-state.json",
        "/agents/late/state",
        None,
    );
    let agent = body_json(&agents_api::handle(&api_app, request(&get)).await);
    assert_eq!(
        (&agent["name"], &agent["version"]),
        (&json!("Late"), &json!(1)),
        "{agent}"
    );

    // Redriving an empty DLQ is a no-op.
    let (status, report) = ops(&ops_app, "POST", "/ops/dlq/agent-commands/redrive", None).await;
    assert_eq!((status, report["moved"].as_i64()), (200, Some(0)));
}

#[tokio::test]
async fn redrive_of_a_rule_dlq_puts_the_events_back_on_the_bus() {
    let env = Env::new().await;
    let ops_app = ops_app(&env);
    let dead_event = json!({
        "version": "0", "id": "e1", "detail-type": "AgentRegistered", "source": "cqrs.agents",
        "account": "123456789012", "time": "2026-11-25T18:00:00Z", "region": "us-east-1",
        "resources": [], "detail": {"id": "00000000-0000-4000-8000-0000000000bb"}
    });
    env.sqs
        .send_message()
        .queue_url(env.queue_url("EventDeliveryDLQ"))
        .message_body(dead_event.to_string())
        .send()
        .await
        .unwrap();
    let (status, report) = ops(&ops_app, "POST", "/ops/dlq/event-delivery/redrive", None).await;
    assert_eq!(
        (status, report["moved"].as_i64()),
        (200, Some(1)),
        "{report}"
    );
    let published = env.published().await;
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].0, "AgentRegistered");
    assert_eq!(published[0].1["id"], "00000000-0000-4000-8000-0000000000bb");
}

#[tokio::test]
async fn ops_routes_reject_bad_input_with_problems() {
    let env = Env::new().await;
    let ops_app = ops_app(&env);
    for (method, path, query, want) in [
        ("POST", "/ops/dlq/nope/redrive", None, 404),
        ("POST", "/ops/dlq/agents/redrive", Some("limit=0"), 422),
        ("POST", "/ops/dlq/agents/redrive", Some("limit=many"), 422),
        // Not a route of the API (the gateway's 404 on AWS); the function answers 404 too.
        ("DELETE", "/ops/dlq", None, 404),
    ] {
        let (status, body) = ops(&ops_app, method, path, query).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert!(body["title"].is_string() && body["detail"].is_string());
    }
}
