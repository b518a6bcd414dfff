//! The agents worker in-process: a batch of 10 independent messages vs one against the
//! emulator, and CPU time per event with every AWS call answered instantly from memory; and
//! the agents API's warm query (`GET /agents/{agentId}/state`) the same way: requests per
//! second one instance's handler serves.

use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;

use agents_worker::AwsApp;

use crate::proc::process_cpu;

/// `n` `RegisterAgent` commands for distinct new agents, as EventBridge delivers them.
pub fn batch(n: usize) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = (0..n)
        .map(|_| {
            let agent = uuid::Uuid::new_v4().simple().to_string();
            let detail = serde_json::json!({
                "id": uuid::Uuid::new_v4(),
                "correlationId": "bench",
                "occurredAt": chrono::Utc::now(),
                "type": "RegisterAgent",
                "data": {"agentId": format!("bench-{}", &agent[..12]), "name": "Bench",
                         "skills": ["billing"], "capacity": 2, "version": 1},
            });
            let mut m = SqsMessage::default();
            m.message_id = Some(uuid::Uuid::new_v4().to_string());
            m.body = Some(
                serde_json::json!({"detail-type": "RegisterAgent",
                    "source": "cqrs.agents.command", "detail": detail})
                .to_string(),
            );
            m
        })
        .collect();
    event
}

/// Alternates batches of one and of ten, `reps` each: (one, ten) durations.
pub async fn batch_vs_one(app: &AwsApp, reps: usize) -> (Vec<Duration>, Vec<Duration>) {
    // Warm the connection pool (and moto's code paths) first.
    shared::worker::handle(app, batch(10)).await;
    let (mut one, mut ten) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        for (n, out) in [(1, &mut one), (10, &mut ten)] {
            let event = batch(n);
            let started = Instant::now();
            let resp = shared::worker::handle(app, event).await;
            out.push(started.elapsed());
            if !resp.batch_item_failures.is_empty() {
                eprintln!("batch of {n}: {} failures", resp.batch_item_failures.len());
            }
        }
    }
    (one, ten)
}

/// Answers every AWS call after `delay` (zero: at once): `{}` for DynamoDB (no item, write
/// accepted), `get_item` for `GetItem` when set, and a successful `PutEvents`. Calls never wait
/// for each other, as on AWS.
#[derive(Debug)]
struct Canned {
    delay: Duration,
    get_item: Option<&'static str>,
}

impl HttpConnector for Canned {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let body = if target.ends_with("PutEvents") {
            r#"{"FailedEntryCount":0,"Entries":[{"EventId":"1"}]}"#
        } else if target.ends_with("GetItem") {
            self.get_item.unwrap_or("{}")
        } else {
            "{}"
        };
        let mut response =
            Response::new(StatusCode::try_from(200).expect("200"), SdkBody::from(body));
        response
            .headers_mut()
            .insert("content-type", "application/x-amz-json-1.0");
        if self.delay.is_zero() {
            return HttpConnectorFuture::ready(Ok(response));
        }
        let delay = self.delay;
        HttpConnectorFuture::new(async move {
            tokio::time::sleep(delay).await;
            Ok(response)
        })
    }
}

/// SDK configuration whose every call is answered by [`Canned`] after `delay`.
pub async fn canned_sdk(delay: Duration) -> SdkConfig {
    canned_sdk_with(Canned {
        delay,
        get_item: None,
    })
    .await
}

async fn canned_sdk_with(canned: Canned) -> SdkConfig {
    let connector = SharedHttpConnector::new(canned);
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url("http://canned.invalid")
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .http_client(http_client_fn(move |_, _| connector.clone()))
        .load()
        .await
}

/// CPU time of this process per event over `batches` batches of 10 (all AWS calls canned);
/// (CPU per event, wall per event).
pub async fn cpu_per_event(batches: usize) -> (Duration, Duration) {
    let app = canned_app(Duration::ZERO).await;
    shared::worker::handle(&app, batch(10)).await;
    let events: Vec<SqsEvent> = (0..batches).map(|_| batch(10)).collect();
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    for event in events {
        let resp = shared::worker::handle(&app, event).await;
        debug_assert!(resp.batch_item_failures.is_empty());
    }
    let n = (batches * 10) as u32;
    ((process_cpu() - cpu0) / n, wall0.elapsed() / n)
}

/// The agents worker with every AWS call answered by [`Canned`] after `delay`.
pub async fn canned_app(delay: Duration) -> AwsApp {
    let vars = shared::config::Vars::from(std::collections::BTreeMap::from([
        ("TABLE_NAME".to_owned(), "agents".to_owned()),
        ("EVENT_BUS_NAME".to_owned(), "bus".to_owned()),
    ]));
    agents_worker::init(&canned_sdk(delay).await, &vars).expect("both variables are set")
}

/// The `GetItem` answer for agent `agent-1`, as DynamoDB sends it (the store's item: keys and
/// the agent's fields).
const AGENT_ITEM: &str = r#"{"Item":{"pk":{"S":"AGENT#agent-1"},"sk":{"S":"PROFILE"},
"agentId":{"S":"agent-1"},"name":{"S":"Ada"},"state":{"S":"AVAILABLE"},
"skills":{"L":[{"S":"billing"}]},"capacity":{"N":"2"},"activeConversations":{"N":"0"},
"version":{"N":"3"},"updatedAt":{"S":"2026-12-06T10:00:00Z"}}}"#;

/// Warm `GET /agents/{agentId}/state` requests (the `events/` fixture) through
/// `agents_api::handle`, one at a time on this thread, its `GetItem` answered at once from
/// memory: (requests per second, CPU per request). What one warm instance's handler can serve
/// (an instance serves one request at a time); the Runtime API's own round trip is not in it.
///
/// # Panics
/// When a request does not answer `200` (the canned item no longer matches the store's
/// shape).
pub async fn api_requests_per_second(requests: usize) -> (f64, Duration) {
    let sdk = canned_sdk_with(Canned {
        delay: Duration::ZERO,
        get_item: Some(AGENT_ITEM),
    })
    .await;
    let vars = shared::config::Vars::from(std::collections::BTreeMap::from([
        ("TABLE_NAME".to_owned(), "agents".to_owned()),
        ("EVENT_BUS_NAME".to_owned(), "bus".to_owned()),
        (
            "AGENTS_COMMAND_QUEUE_URL".to_owned(),
            "http://canned.invalid/q".to_owned(),
        ),
    ]));
    let app = agents_api::init(&sdk, &vars).expect("the variables agents-api reads are set");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events/agents-api/get-agent-state.json");
    let event = std::fs::read_to_string(&fixture).expect("the fixture exists");
    let request = || lambda_http::request::from_str(&event).expect("an API Gateway v2 event");
    let warm = agents_api::handle(&app, request()).await;
    assert_eq!(
        warm.status(),
        200,
        "the canned agent is served: {:?}",
        warm.body()
    );
    let requests_ready: Vec<_> = (0..requests).map(|_| request()).collect();
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    for req in requests_ready {
        let resp = agents_api::handle(&app, req).await;
        debug_assert_eq!(resp.status(), 200);
    }
    let wall = wall0.elapsed();
    let n = requests as u32;
    (
        requests as f64 / wall.as_secs_f64(),
        (process_cpu() - cpu0) / n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canned `GetItem` answer still deserializes as the store's agent (the measurement
    /// would panic on a `404`/`500` otherwise), and the figures are real.
    #[tokio::test]
    async fn the_canned_agent_is_served_and_measured() {
        let (rps, cpu) = api_requests_per_second(20).await;
        assert!(rps > 0.0 && rps.is_finite(), "{rps}");
        assert!(cpu > Duration::ZERO, "{cpu:?}");
    }
}
