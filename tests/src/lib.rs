//! Test harness: one moto server per test binary, a fresh stack (tables, queues, bus, rules of
//! `template.yaml`) per test so tests never see each other's data, real `aws-sdk-*` clients,
//! and helpers to drive handlers with the `events/` fixtures.

use std::{path::PathBuf, sync::OnceLock, time::Duration};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use local::{
    emulator::Emulator,
    provision::{ProvisionOptions, Stack, provision},
    template::Template,
};
use serde_json::Value;

pub mod faults;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The emulator shared by every test of this binary (started on first use, on a free port).
pub fn endpoint() -> &'static str {
    static EMULATOR: OnceLock<Emulator> = OnceLock::new();
    &EMULATOR
        .get_or_init(|| local::emulator::spawn_on_free_port().expect("start moto server"))
        .endpoint
}

pub async fn sdk_for(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        // The functions' HTTP client (the workspace builds the SDK without one of its own).
        .http_client(shared::http_client::SdkHttpClient::shared(
            Duration::from_millis(500),
        ))
        .load()
        .await
}

/// A freshly provisioned copy of the template's resources, plus clients to inspect them.
pub struct Env {
    pub sdk: SdkConfig,
    pub stack: Stack,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub events: aws_sdk_eventbridge::Client,
    /// A queue that receives every event published on the bus (a test-only rule).
    pub observer_url: String,
}

impl Env {
    pub async fn new() -> Env {
        // Handler logs appear in the output of failing tests.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info")
            .try_init();
        let sdk = sdk_for(endpoint()).await;
        let template = Template::load(root().join("template.yaml")).expect("template loads");
        let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let opts = ProvisionOptions {
            stack_name: name.clone(),
            ..ProvisionOptions::default()
        };
        let stack = provision(&template, &sdk, &opts).await.expect("provision");
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let events = aws_sdk_eventbridge::Client::new(&sdk);
        let observer_url = observe_bus(&sqs, &events, &stack, &name).await;
        Env {
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            sqs,
            events,
            sdk,
            stack,
            observer_url,
        }
    }

    pub fn table(&self, logical: &str) -> String {
        self.stack
            .table_name(logical)
            .expect("table in stack")
            .to_owned()
    }

    pub fn bus(&self) -> String {
        self.stack.bus_name("EventBus").expect("bus").to_owned()
    }

    pub fn queue_url(&self, logical: &str) -> String {
        self.stack.queue_url(logical).expect("queue").to_owned()
    }

    /// The URL of the dead-letter queue of queue `logical` (its `RedrivePolicy`'s target).
    pub fn dlq_url(&self, logical: &str) -> String {
        let dlq = self.stack.dlq(logical).expect("the queue has a DLQ");
        self.queue_url(dlq)
    }

    /// Runs `drain` (a worker's pass over queue `logical`) until the queue's dead-letter queue
    /// holds a message: SQS moves a message there on the receive after its `maxReceiveCount`.
    /// Fails the test if that takes longer than `within`; returns the dead-letter queue's URL.
    pub async fn drain_until_dead_lettered(
        &self,
        logical: &str,
        within: Duration,
        mut drain: impl AsyncFnMut(),
    ) -> String {
        let dlq = self.dlq_url(logical);
        let deadline = std::time::Instant::now() + within;
        while self.depth(&dlq).await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing of {logical} reached the DLQ within {within:?}"
            );
            drain().await;
        }
        dlq
    }

    /// The environment `template.yaml` gives function `logical` (with `Globals`), every
    /// intrinsic resolved against this test's stack as `make dev` resolves it. Tests build each
    /// function from it (`Config::from_vars`), so a variable the template forgets or misnames
    /// fails them; `.with(..)` points one function elsewhere (a fault, another bus).
    pub fn vars(&self, logical: &str) -> shared::config::Vars {
        let function = self
            .stack
            .function(logical)
            .unwrap_or_else(|| panic!("{logical} is not a function of the template"));
        shared::config::Vars::from(function.env.clone())
    }

    /// Receives what is in a queue now (waiting briefly for EventBridge deliveries), deleting
    /// nothing: messages come back after `visibility` seconds.
    pub async fn receive(
        &self,
        queue_url: &str,
        visibility: i32,
    ) -> Vec<aws_sdk_sqs::types::Message> {
        let mut all = Vec::new();
        for _ in 0..3 {
            let out = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(visibility)
                .wait_time_seconds(if all.is_empty() { 1 } else { 0 })
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive");
            let got = out.messages.unwrap_or_default();
            if got.is_empty() && !all.is_empty() {
                break;
            }
            all.extend(got);
        }
        all
    }

    pub async fn delete(&self, queue_url: &str, msgs: &[aws_sdk_sqs::types::Message]) {
        for m in msgs {
            self.sqs
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
        }
    }

    /// Runs `handler` over what queue `logical` holds now, as the Lambda poller would: the
    /// failed items stay (visible again at once), the rest are deleted. Returns the failed ids.
    pub async fn drain<F, Fut>(&self, logical: &str, handler: F) -> Vec<String>
    where
        F: FnOnce(SqsEvent) -> Fut,
        Fut: std::future::Future<Output = aws_lambda_events::event::sqs::SqsBatchResponse>,
    {
        let url = self.queue_url(logical);
        let msgs = self.receive(&url, 30).await;
        if msgs.is_empty() {
            return Vec::new();
        }
        let resp = handler(sqs_event(&msgs)).await;
        let failed: Vec<String> = resp
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        let (retry, done): (Vec<_>, Vec<_>) = msgs
            .into_iter()
            .partition(|m| failed.iter().any(|f| Some(f.as_str()) == m.message_id()));
        self.delete(&url, &done).await;
        self.retry_now(&url, &retry).await;
        failed
    }

    /// Makes messages visible again at once (instead of after the visibility timeout).
    pub async fn retry_now(&self, queue_url: &str, msgs: &[aws_sdk_sqs::types::Message]) {
        for m in msgs {
            self.sqs
                .change_message_visibility()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .visibility_timeout(0)
                .send()
                .await
                .expect("change visibility");
        }
    }

    /// Everything published on the bus since the last call: `(detail-type, detail)`.
    pub async fn published(&self) -> Vec<(String, Value)> {
        let msgs = self.receive(&self.observer_url, 30).await;
        self.delete(&self.observer_url, &msgs).await;
        msgs.iter()
            .map(|m| {
                let v: Value = serde_json::from_str(m.body().unwrap_or("{}")).expect("json");
                (
                    v["detail-type"].as_str().unwrap_or("").to_owned(),
                    v["detail"].clone(),
                )
            })
            .collect()
    }

    pub async fn depth(&self, queue_url: &str) -> i64 {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            )
            .send()
            .await
            .expect("attributes");
        out.attributes()
            .map(|a| {
                a.values()
                    .filter_map(|v| v.parse::<i64>().ok())
                    .sum::<i64>()
            })
            .unwrap_or(0)
    }

    /// How many items the table holds (to show bad input wrote nothing).
    pub async fn item_count(&self, logical: &str) -> usize {
        let out = self
            .dynamodb
            .scan()
            .table_name(self.table(logical))
            .send()
            .await
            .expect("scan");
        out.items().len()
    }
}

impl Env {
    /// A queue receiving every event on the bus that matches `pattern` (an EventBridge event
    /// pattern), for services the default observer does not cover.
    pub async fn observe(&self, name: &str, pattern: &str) -> String {
        let queue = format!("{}-{name}", self.stack.name);
        observer(&self.sqs, &self.events, &self.bus(), &queue, pattern).await
    }
}

async fn observe_bus(
    sqs: &aws_sdk_sqs::Client,
    events: &aws_sdk_eventbridge::Client,
    stack: &Stack,
    name: &str,
) -> String {
    let bus = stack.bus_name("EventBus").expect("bus");
    let pattern = r#"{"source":["cqrs.agents","cqrs.conversations","cqrs.agents.command"]}"#;
    observer(sqs, events, bus, &format!("{name}-observer"), pattern).await
}

/// Creates queue `queue` and a rule of the same name sending it every event of `bus` that
/// matches `pattern`; returns the queue's URL.
async fn observer(
    sqs: &aws_sdk_sqs::Client,
    events: &aws_sdk_eventbridge::Client,
    bus: &str,
    queue: &str,
    pattern: &str,
) -> String {
    let url = sqs
        .create_queue()
        .queue_name(queue)
        .send()
        .await
        .expect("observer queue")
        .queue_url
        .expect("url");
    events
        .put_rule()
        .name(queue)
        .event_bus_name(bus)
        .event_pattern(pattern)
        .send()
        .await
        .expect("observer rule");
    events
        .put_targets()
        .rule(queue)
        .event_bus_name(bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("observer")
                .arn(format!("arn:aws:sqs:us-east-1:123456789012:{queue}"))
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("observer target");
    url
}

/// A fixture from `events/`, as JSON to adjust before use.
pub fn fixture(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join("events").join(path)).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// An API Gateway v2 event (JSON) as the `lambda_http::Request` the function receives.
pub fn request(event: &Value) -> lambda_http::Request {
    lambda_http::request::from_str(&event.to_string()).expect("valid API Gateway event")
}

/// A request from a fixture with another path (raw: percent-encoded, as sent) and body, routed
/// as API Gateway routes it ([`route`]).
pub fn api(fixture_path: &str, path: &str, body: Option<&str>) -> Value {
    let mut ev = fixture(fixture_path);
    ev["rawPath"] = path.into();
    ev["requestContext"]["http"]["path"] = path.into();
    match body {
        Some(b) => ev["body"] = b.into(),
        None => {
            ev.as_object_mut().expect("object").remove("body");
        }
    }
    route(&mut ev);
    ev
}

/// Sets the event's `routeKey` and `pathParameters` from its method and raw path the way the
/// gateway does (the local runner's route table of `template.yaml`: the most specific route,
/// parameters percent-decoded). A request no route matches gets API Gateway's catch-all key
/// `$default` and no parameters: the gateway itself answers those (`404`), so this only shows
/// what a function does with an event it should never see.
pub fn route(ev: &mut Value) {
    static ROUTES: OnceLock<local::gateway::RouteTable> = OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let template = Template::load(root().join("template.yaml")).expect("template loads");
        local::gateway::RouteTable::from_template(&template)
    });
    let method = ev["requestContext"]["http"]["method"]
        .as_str()
        .unwrap_or("GET")
        .to_owned();
    let path = ev["rawPath"].as_str().unwrap_or("/").to_owned();
    let object = ev.as_object_mut().expect("an event is an object");
    let (key, params) = match routes.find(&method, &path) {
        Some(m) => (m.route.key(), Some(serde_json::json!(m.params))),
        None => ("$default".to_owned(), None),
    };
    match params {
        Some(p) if p.as_object().is_some_and(|o| !o.is_empty()) => {
            object.insert("pathParameters".into(), p);
        }
        _ => {
            object.remove("pathParameters");
        }
    }
    object.insert("routeKey".into(), key.clone().into());
    ev["requestContext"]["routeKey"] = key.into();
}

/// The `POST /agents/match` a stand-in for the gateway received (the conversations worker's
/// call, `body` as sent), as the event API Gateway would hand the agents API for it.
pub fn match_request(body: &[u8]) -> lambda_http::Request {
    let mut ev = fixture("agents-api/match-agent.json");
    ev["body"] = String::from_utf8_lossy(body).into_owned().into();
    request(&ev)
}

/// The event as API Gateway passes it for a trader whose token's `accounts` claim is
/// `accounts` (space-separated, as the functions read it).
pub fn as_trader(event: Value, accounts: &str) -> Value {
    as_caller(event, "trader", "traders", accounts)
}

/// The event as API Gateway passes it for the token of subject `sub` with `scope` (one scope)
/// and the `accounts` claim (empty: none).
pub fn as_caller(mut event: Value, sub: &str, scope: &str, accounts: &str) -> Value {
    let mut claims = serde_json::json!({
        "iss": "https://issuer.local.invalid", "sub": sub, "scope": scope,
    });
    if !accounts.is_empty() {
        claims["accounts"] = accounts.into();
    }
    event["requestContext"]["authorizer"] =
        serde_json::json!({"jwt": { "claims": claims, "scopes": [scope] }});
    event
}

/// The event without the authorizer's verified claims: a request that skipped the authorizer.
pub fn unauthenticated(mut event: Value) -> Value {
    if let Some(ctx) = event["requestContext"].as_object_mut() {
        ctx.remove("authorizer");
    }
    event
}

/// The SQS messages as the event Lambda would hand to the worker, with their system
/// attributes (`MessageGroupId`, `SequenceNumber` of a FIFO queue's, receive counts; received
/// by [`Env::receive`] with all of them).
pub fn sqs_event(msgs: &[aws_sdk_sqs::types::Message]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = msgs
        .iter()
        .map(|m| {
            let mut r = SqsMessage::default();
            r.message_id = m.message_id.clone();
            r.receipt_handle = m.receipt_handle.clone();
            r.body = m.body.clone();
            r.event_source = Some("aws:sqs".into());
            r.attributes = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            r
        })
        .collect();
    event
}

/// An SQS event whose records carry these bodies (ids `m0`, `m1`, ...).
pub fn sqs_bodies(bodies: &[String]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut r = SqsMessage::default();
            r.message_id = Some(format!("m{i}"));
            r.body = Some(b.clone());
            r
        })
        .collect();
    event
}

pub fn body_json(resp: &lambda_http::Response<lambda_http::Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null)
}

/// A TCP proxy in front of the emulator that a test switches off and on, to play an outage.
/// Off, it accepts connections and then says nothing (a black hole, the harshest outage: only
/// timeouts end the wait) and cuts the connections it was forwarding.
pub struct Proxy {
    pub endpoint: String,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let (up, watch) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (target, mut watch) = (target.clone(), watch.clone());
                tokio::spawn(async move {
                    if !*watch.borrow() {
                        // Hold the socket without answering until the test ends.
                        let _ = watch.wait_for(|up| *up).await;
                        return;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { endpoint, up }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// Small edits of a fixture event: a new body, one more header, a query string.
pub trait Tap {
    fn tap_body(self, body: &str) -> Self;
    fn tap_header(self, name: &str, value: &str) -> Self;
    /// Sets the query string from `query` (an object of string values) in both forms API
    /// Gateway passes it: `rawQueryString` (`k=v&...`, as given, not encoded) and
    /// `queryStringParameters`.
    fn tap_query(self, query: Value) -> Self;
}

impl Tap for Value {
    fn tap_body(mut self, body: &str) -> Self {
        self["body"] = body.into();
        self
    }
    fn tap_header(mut self, name: &str, value: &str) -> Self {
        self["headers"][name] = value.into();
        self
    }
    fn tap_query(mut self, query: Value) -> Self {
        let raw: Vec<String> = query
            .as_object()
            .expect("a query is an object")
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().expect("a query value is a string")))
            .collect();
        self["rawQueryString"] = raw.join("&").into();
        self["queryStringParameters"] = query;
        self
    }
}

/// Asserts that an answer is the problem+json `want` (with every member a problem has, and
/// `field` naming the offending field when given); `desc` names the request in the message.
pub fn assert_problem(
    desc: &str,
    (status, body, headers): (u16, &Value, &http::HeaderMap),
    want: u16,
    field: Option<&str>,
) {
    assert_eq!(status, want, "{desc}: {body}");
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{desc}"
    );
    for k in ["type", "title", "status", "detail"] {
        assert!(!body[k].is_null(), "{desc}: problem lacks {k}: {body}");
    }
    if let Some(f) = field {
        assert_eq!(body["field"], f, "{desc}: {body}");
    }
}
