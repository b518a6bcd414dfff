//! The conversations service against a real moto server: its API handler and worker, the real
//! agents API served over HTTP by a test server that can fail on purpose (5xx, slow answers,
//! refused connections), and the agents worker, all wired by the template's rules.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use conversations_worker::resilience::BreakerState;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use system_tests::{Env, Tap, api, body_json, fixture, request, sqs_bodies, sqs_event};

type ConvApi = conversations_api::AwsApp;
type ConvWorker = conversations_worker::AwsApp;
type AgentsApi = agents_api::AwsApp;

// ------------------------------------------------------------------ a faulty agents API

#[derive(Clone, Copy, Debug)]
enum Fault {
    Status(u16),
    Slow(Duration),
}

/// What the next requests suffer, and when each request arrived.
#[derive(Default)]
struct Faults {
    plan: Mutex<VecDeque<Fault>>,
    hits: Mutex<Vec<Instant>>,
}

/// The real agents API handler behind a real HTTP server on 127.0.0.1, which can be told to
/// fail the next requests, or be stopped (connections refused) and restarted on its port.
struct AgentsServer {
    addr: SocketAddr,
    app: Arc<AgentsApi>,
    faults: Arc<Faults>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AgentsServer {
    async fn start(app: Arc<AgentsApi>) -> AgentsServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = AgentsServer {
            addr: listener.local_addr().unwrap(),
            app,
            faults: Arc::default(),
            task: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (app, faults) = (self.app.clone(), self.faults.clone());
        self.task = Some(tokio::spawn(async move {
            // Dropped with the accept loop, so stopping also cuts pooled connections.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (app, faults) = (app.clone(), faults.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (app, faults) = (app.clone(), faults.clone());
                        async move { Ok::<_, Infallible>(respond(&app, &faults, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        }));
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn fail_next(&self, faults: &[Fault]) {
        self.faults.plan.lock().unwrap().extend(faults);
    }

    fn hits(&self) -> Vec<Instant> {
        self.faults.hits.lock().unwrap().clone()
    }

    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

async fn respond(
    app: &AgentsApi,
    faults: &Faults,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    faults.hits.lock().unwrap().push(Instant::now());
    // The route is IAM-authorized: API Gateway refuses calls not signed for it. (The signature
    // itself is verified by the local runner, end to end in tests/e2e.rs.)
    let signed = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.starts_with("AWS4-HMAC-SHA256 Credential=test/")
                && a.contains("/us-east-1/execute-api/aws4_request")
        })
        && req.headers().contains_key("x-amz-date");
    if !signed {
        return hyper::Response::builder()
            .status(403)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                b"{\"message\":\"Forbidden\"}",
            )))
            .unwrap();
    }
    let fault = faults.plan.lock().unwrap().pop_front();
    match fault {
        Some(Fault::Status(code)) => {
            return hyper::Response::builder()
                .status(code)
                .header("content-type", "application/problem+json")
                .body(Full::new(Bytes::from_static(b"{\"title\":\"injected\"}")))
                .unwrap();
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let (parts, body) = agents_api::handle(app, system_tests::match_request(&bytes))
        .await
        .into_parts();
    hyper::Response::from_parts(parts, Full::new(Bytes::copy_from_slice(body.as_ref())))
}

// ------------------------------------------------------------------ the system under test

struct System {
    env: Env,
    api: ConvApi,
    worker: ConvWorker,
    agents: Arc<AgentsApi>,
    agents_worker: agents_worker::AwsApp,
    server: AgentsServer,
}

async fn system() -> System {
    let env = Env::new().await;
    let agents = Arc::new(agents_api::init(&env.sdk, &env.vars("AgentsApiFunction")).unwrap());
    let agents_worker = agents_worker::init(&env.sdk, &env.vars("AgentsWorkerFunction")).unwrap();
    let server = AgentsServer::start(agents.clone()).await;
    let api = conv_api(&env, &env.bus());
    // Short timeouts, so that the resilience path runs in about a second.
    let vars = env
        .vars("ConversationsWorkerFunction")
        .with("AGENTS_API_URL", server.url())
        .with("AGENTS_TIMEOUT_MS", "300")
        .with("AGENTS_MAX_ATTEMPTS", "3")
        .with("AGENTS_BACKOFF_MS", "60")
        .with("AGENTS_BACKOFF_MAX_MS", "1000")
        .with("AGENTS_BREAKER_FAILURES", "3")
        .with("AGENTS_BREAKER_COOLDOWN_MS", "700");
    let worker = conversations_worker::init(&env.sdk, &vars).unwrap();
    System {
        env,
        api,
        worker,
        agents,
        agents_worker,
        server,
    }
}

fn conv_api(env: &Env, bus: &str) -> ConvApi {
    let vars = env
        .vars("ConversationsApiFunction")
        .with("EVENT_BUS_NAME", bus);
    conversations_api::init(&env.sdk, &vars).unwrap()
}

async fn call(app: &ConvApi, ev: Value) -> (u16, Value, http::HeaderMap) {
    let resp = conversations_api::handle(app, request(&ev)).await;
    (
        resp.status().as_u16(),
        body_json(&resp),
        resp.headers().clone(),
    )
}

async fn call_agents(app: &AgentsApi, ev: Value) -> (u16, Value) {
    let resp = agents_api::handle(app, request(&ev)).await;
    (resp.status().as_u16(), body_json(&resp))
}

impl System {
    /// Runs the conversations worker over its queue once; returns the failed message ids.
    async fn drain(&self) -> Vec<String> {
        self.env
            .drain("ConversationsQueue", |ev| {
                shared::worker::handle(&self.worker, ev)
            })
            .await
    }

    /// Runs the agents worker over its command queue, then its event queue.
    async fn drain_agents(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for queue in ["AgentsCommandQueue", "AgentsQueue"] {
            let worker = &self.agents_worker;
            failed.extend(
                self.env
                    .drain(queue, |ev| shared::worker::handle(worker, ev))
                    .await,
            );
        }
        failed
    }

    /// Registers an agent and, when `available`, makes it AVAILABLE, through the agents
    /// service's own command path.
    async fn agent(&self, id: &str, skills: &[&str], capacity: u32, available: bool) {
        let ev = api(
            "agents-api/register-agent.json",
            &format!("/agents/{id}"),
            Some(&json!({"name": "Agent", "skills": skills, "capacity": capacity}).to_string()),
        );
        assert_eq!(call_agents(&self.agents, ev).await.0, 202);
        assert!(self.drain_agents().await.is_empty());
        if available {
            self.agent_state(id, "AVAILABLE").await;
            // Its AgentStateChanged, with no conversation waiting yet.
            assert!(self.drain().await.is_empty());
        }
    }

    async fn agent_state(&self, id: &str, state: &str) {
        let mut ev = api(
            "agents-api/change-agent-state.json",
            &format!("/agents/{id}/state"),
            Some(&json!({ "state": state }).to_string()),
        );
        ev["headers"]
            .as_object_mut()
            .unwrap()
            .remove("idempotency-key");
        assert_eq!(call_agents(&self.agents, ev).await.0, 202);
        assert!(self.drain_agents().await.is_empty());
    }

    async fn agent_load(&self, id: &str) -> u64 {
        let ev = api(
            "agents-api/get-agent-state.json",
            &format!("/agents/{id}/state"),
            None,
        );
        call_agents(&self.agents, ev).await.1["activeConversations"]
            .as_u64()
            .unwrap()
    }

    async fn start(&self, skills: &[&str]) -> String {
        let (status, body, headers) = call(&self.api, start_event(skills)).await;
        assert_eq!(status, 202, "{body}");
        let id = body["conversationId"].as_str().unwrap().to_owned();
        assert_eq!(headers["location"], format!("/conversations/{id}"));
        id
    }

    /// `GET path` as the fixture `fixture_path` sends it; it must answer `200`: its body.
    async fn get_ok(&self, fixture_path: &str, path: &str) -> Value {
        let (status, body, _) = call(&self.api, api(fixture_path, path, None)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// [`System::start`], then a pass of the worker over the start command, which must not
    /// fail: the conversation as the worker leaves it (queued or assigned).
    async fn start_settled(&self, skills: &[&str]) -> String {
        let id = self.start(skills).await;
        assert!(self.drain().await.is_empty());
        id
    }

    async fn conversation(&self, id: &str) -> Value {
        let path = format!("/conversations/{id}");
        self.get_ok("conversations-api/get-conversation.json", &path)
            .await
    }

    async fn send(&self, id: &str, sender: &str, text: &str) -> String {
        let (status, body, headers) = call(&self.api, message_event(id, sender, text)).await;
        assert_eq!(status, 202, "{body}");
        let m = body["messageId"].as_str().unwrap().to_owned();
        assert_eq!(
            headers["location"],
            format!("/conversations/{id}/messages/{m}")
        );
        m
    }

    async fn message(&self, id: &str, m: &str) -> Value {
        let path = format!("/conversations/{id}/messages/{m}");
        self.get_ok("conversations-api/get-message.json", &path)
            .await
    }

    async fn receipt(&self, id: &str, m: &str, status: &str) {
        let (code, body, _) = call(&self.api, receipt_event(id, m, status)).await;
        assert_eq!(code, 202, "{body}");
    }

    async fn close(&self, id: &str) {
        let (status, body, headers) = call(&self.api, close_event(id)).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(headers["location"], format!("/conversations/{id}"));
    }
}

fn start_event(skills: &[&str]) -> Value {
    api(
        "conversations-api/start-conversation.json",
        "/conversations",
        Some(&json!({"customerId": "cust-1", "channel": "chat", "skills": skills}).to_string()),
    )
}

fn message_event(id: &str, sender: &str, text: &str) -> Value {
    api(
        "conversations-api/send-message.json",
        &format!("/conversations/{id}/messages"),
        Some(&json!({"sender": sender, "text": text}).to_string()),
    )
}

fn receipt_event(id: &str, m: &str, status: &str) -> Value {
    api(
        "conversations-api/record-receipt.json",
        &format!("/conversations/{id}/messages/{m}/receipts"),
        Some(&json!({ "status": status }).to_string()),
    )
}

fn close_event(id: &str) -> Value {
    api(
        "conversations-api/close-conversation.json",
        &format!("/conversations/{id}/close"),
        None,
    )
}

/// `GET /conversations/{id}/messages` with these query parameters (strings).
fn list_event(id: &str, query: &Value) -> Value {
    api(
        "conversations-api/list-messages.json",
        &format!("/conversations/{id}/messages"),
        None,
    )
    .tap_query(query.clone())
}

/// Distinct events of one kind: a retried match republishes its `AgentMatched` with the same
/// id (consumers deduplicate on it), so publications are counted by id.
fn count(events: &[(String, Value)], kind: &str) -> usize {
    let mut ids: Vec<&Value> = events
        .iter()
        .filter(|(t, _)| t == kind)
        .map(|(_, d)| &d["id"])
        .collect();
    ids.sort_by_key(|v| v.to_string());
    ids.dedup();
    ids.len()
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn a_conversation_is_visible_at_once_then_assigned_by_the_sync_match_and_the_event_agrees() {
    let s = system().await;
    s.agent("ann", &["billing"], 2, true).await;
    s.env.published().await;

    let mut ev = start_event(&["billing"]);
    ev["headers"]["idempotency-key"] = "start-1".into();
    let (status, first, _) = call(&s.api, ev.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (_, replay, _) = call(&s.api, ev).await;
    assert_eq!(first, replay, "same key and body: same conversation");
    let id = first["conversationId"].as_str().unwrap();
    let pending = s.conversation(id).await;
    assert_eq!(pending["status"], "PENDING");
    assert_eq!(pending["channel"], "chat");
    assert_eq!(pending["customerId"], "cust-1");
    assert_eq!(pending["skills"], json!(["billing"]));
    assert!(pending["createdAt"].is_string());

    assert!(s.drain().await.is_empty());
    let assigned = s.conversation(id).await;
    assert_eq!(assigned["status"], "ASSIGNED");
    assert_eq!(assigned["agentId"], "ann");
    assert!(assigned["assignedAt"].is_string());
    // The agents API's AgentMatched arrives too, and changes nothing.
    assert!(s.drain().await.is_empty());
    assert_eq!(s.conversation(id).await, assigned);
    assert_eq!(s.agent_load("ann").await, 1);

    let events = s.env.published().await;
    assert_eq!(count(&events, "ConversationStarted"), 1, "{events:?}");
    assert_eq!(count(&events, "AgentMatched"), 1);
    // One match request, or more when a slow machine made an attempt time out: the agents
    // API answers a repeated match for the same conversation with the same agent.
    assert!(!s.server.hits().is_empty(), "the match went over HTTP");
}

#[tokio::test]
async fn the_match_retries_with_growing_delays_the_breaker_opens_half_opens_and_closes() {
    let mut s = system().await;
    s.agent("ann", &[], 1, true).await;
    let id = s.start(&[]).await;

    // 500, 503, then an answer slower than the attempt timeout: three failed attempts.
    s.server.fail_next(&[
        Fault::Status(500),
        Fault::Status(503),
        Fault::Slow(Duration::from_millis(800)),
    ]);
    let started = Instant::now();
    assert_eq!(
        s.drain().await.len(),
        1,
        "the command fails, so SQS redelivers it"
    );
    let hits = s.server.hits();
    assert_eq!(hits.len(), 3);
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(30), "{gaps:?}");
    assert!(gaps[1] > gaps[0], "delays grow: {gaps:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by timeouts"
    );
    assert_eq!(s.worker.agents.breaker_state(), BreakerState::Open);
    assert_eq!(
        s.conversation(&id).await["status"],
        "QUEUED",
        "waits visibly, never lost"
    );

    // Open: the redelivery fails at once without a request.
    let before = Instant::now();
    assert_eq!(s.drain().await.len(), 1);
    assert_eq!(s.server.hits().len(), 3, "short-circuited");
    assert!(before.elapsed() < Duration::from_millis(1_500));

    // Refused connections: after the cool-down one probe goes out, fails, and reopens.
    s.server.stop().await;
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_eq!(s.drain().await.len(), 1);
    assert_eq!(s.worker.agents.breaker_state(), BreakerState::Open);

    // The agents service is back: the next probe closes the breaker and the conversation is
    // assigned, once.
    s.server.restart().await;
    // On a loaded machine a probe can still time out and reopen the breaker: keep letting
    // SQS redeliver (as it would) until one gets through, within a bound.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(750)).await;
        if s.drain().await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed again");
    }
    assert_eq!(s.worker.agents.breaker_state(), BreakerState::Closed);
    let c = s.conversation(&id).await;
    assert_eq!(
        (c["status"].as_str(), c["agentId"].as_str()),
        (Some("ASSIGNED"), Some("ann"))
    );
    assert!(s.drain().await.is_empty(), "AgentMatched agrees");
    assert_eq!(s.agent_load("ann").await, 1, "never double-booked");
    assert_eq!(s.env.depth(&s.env.queue_url("ConversationsQueue")).await, 0);
    let dlq = s.env.dlq_url("ConversationsQueue");
    assert_eq!(s.env.depth(&dlq).await, 0);
}

#[tokio::test]
async fn receipts_out_of_order_and_duplicated_never_move_a_message_back() {
    let s = system().await;
    s.agent("ann", &[], 5, true).await;
    let id = s.start_settled(&[]).await;
    let m = s.send(&id, "customer", "Hello").await;
    assert_eq!(s.message(&id, &m).await["status"], "ACCEPTED");
    assert!(s.drain().await.is_empty());
    let sent = s.message(&id, &m).await;
    assert_eq!(sent["status"], "SENT");
    assert_eq!(sent["text"], "Hello");
    assert_eq!(sent["sender"], "customer");
    assert!(sent["updatedAt"].is_string());

    for status in ["READ", "DELIVERED", "READ", "DELIVERED"] {
        s.receipt(&id, &m, status).await;
    }
    // Delivered twice, as at-least-once delivery may.
    let url = s.env.queue_url("ConversationsQueue");
    let msgs = s.env.receive(&url, 30).await;
    assert!(msgs.len() >= 4);
    for _ in 0..2 {
        let resp = shared::worker::handle(&s.worker, sqs_event(&msgs)).await;
        assert!(resp.batch_item_failures.is_empty());
    }
    s.env.delete(&url, &msgs).await;
    assert_eq!(s.message(&id, &m).await["status"], "READ");

    // A receipt that overtakes its message: DELIVERED first, then SendMessage.
    let m2 = s.send(&id, "agent", "How can I help?").await;
    s.receipt(&id, &m2, "DELIVERED").await;
    let mut msgs = s.env.receive(&url, 30).await;
    msgs.reverse();
    let resp = shared::worker::handle(&s.worker, sqs_event(&msgs)).await;
    assert!(resp.batch_item_failures.is_empty());
    s.env.delete(&url, &msgs).await;
    assert_eq!(s.message(&id, &m2).await["status"], "DELIVERED");
    let sent = count(&s.env.published().await, "MessageSent");
    assert_eq!(sent, 2, "each message sent once");
}

#[tokio::test]
async fn concurrent_messages_to_one_conversation_are_all_kept_in_order() {
    let s = system().await;
    s.agent("ann", &[], 5, true).await;
    let id = s.start_settled(&[]).await;

    let sends = (0..12).map(|i| {
        let (s, id) = (&s, &id);
        async move { s.send(id, "customer", &format!("message {i}")).await }
    });
    let ids = futures::future::join_all(sends).await;
    for _ in 0..3 {
        s.drain().await;
    }

    let mut listed: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = json!({"limit": "5"});
        if let Some(c) = &cursor {
            q["cursor"] = c.clone().into();
        }
        let (status, page, _) = call(&s.api, list_event(&id, &q)).await;
        assert_eq!(status, 200, "{page}");
        listed.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed.len(), 12, "none lost");
    let mut expected = ids.clone();
    expected.sort();
    let got: Vec<&str> = listed
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(got, expected, "listed once each, in id order");
    let accepted: Vec<&str> = listed
        .iter()
        .map(|m| m["acceptedAt"].as_str().unwrap())
        .collect();
    let mut sorted = accepted.clone();
    sorted.sort();
    assert_eq!(accepted, sorted, "id order is acceptance order");
    assert!(listed.iter().all(|m| m["status"] == "SENT"));
}

#[tokio::test]
async fn a_queued_conversation_is_matched_when_an_agent_becomes_available() {
    let s = system().await;
    s.agent("bob", &["spanish"], 1, false).await;
    let id = s.start_settled(&["spanish"]).await;
    assert_eq!(
        s.conversation(&id).await["status"],
        "QUEUED",
        "409: nobody free"
    );

    // bob comes online: AgentStateChanged reaches the conversations queue.
    s.agent_state("bob", "AVAILABLE").await;
    assert!(s.drain().await.is_empty());
    let c = s.conversation(&id).await;
    assert_eq!(c["status"], "ASSIGNED");
    assert_eq!(c["agentId"], "bob");
    assert_eq!(s.agent_load("bob").await, 1);
}

#[tokio::test]
async fn two_conversations_compete_for_one_slot_and_the_freed_slot_goes_to_the_waiting_one() {
    let s = system().await;
    s.agent("solo", &["billing"], 1, true).await;
    let a = s.start(&["billing"]).await;
    let b = s.start(&["billing"]).await;
    assert!(s.drain().await.is_empty(), "both start in one batch");
    let (ca, cb) = (s.conversation(&a).await, s.conversation(&b).await);
    let statuses = [
        ca["status"].as_str().unwrap(),
        cb["status"].as_str().unwrap(),
    ];
    assert!(
        statuses == ["ASSIGNED", "QUEUED"] || statuses == ["QUEUED", "ASSIGNED"],
        "exactly one gets the slot: {statuses:?}"
    );
    assert_eq!(s.agent_load("solo").await, 1);
    let (winner, waiting) = if statuses[0] == "ASSIGNED" {
        (a, b)
    } else {
        (b, a)
    };

    s.close(&winner).await;
    assert!(s.drain().await.is_empty());
    let closed = s.conversation(&winner).await;
    assert_eq!(closed["status"], "CLOSED");
    assert!(closed["closedAt"].is_string());
    // The agents service frees the slot; then the conversations service hands it on.
    assert!(s.drain_agents().await.is_empty());
    assert!(s.drain().await.is_empty());
    let c = s.conversation(&waiting).await;
    assert_eq!(c["status"], "ASSIGNED", "{c}");
    assert_eq!(c["agentId"], "solo");
    assert_eq!(s.agent_load("solo").await, 1);
}

#[tokio::test]
async fn closing_twice_is_harmless_and_messages_to_closed_conversations_are_refused() {
    let s = system().await;
    s.agent("ann", &[], 1, true).await;
    let id = s.start_settled(&[]).await;
    s.env.published().await;

    // A message accepted just before the close, but applied after it: rejected, not retried.
    let late = s.send(&id, "customer", "wait!").await;
    s.close(&id).await;
    let url = s.env.queue_url("ConversationsQueue");
    let mut msgs = s.env.receive(&url, 30).await;
    msgs.reverse();
    let resp = shared::worker::handle(&s.worker, sqs_event(&msgs)).await;
    assert!(resp.batch_item_failures.is_empty());
    s.env.delete(&url, &msgs).await;
    let rejected = s.message(&id, &late).await;
    assert_eq!(rejected["status"], "REJECTED");
    assert_eq!(rejected["reason"], "the conversation is closed");
    let (status, p, _) = call(&s.api, receipt_event(&id, &late, "READ")).await;
    assert_eq!(status, 409, "{p}");

    s.close(&id).await;
    assert!(s.drain().await.is_empty());
    let events = s.env.published().await;
    let closed: Vec<&Value> = events
        .iter()
        .filter(|(t, _)| t == "ConversationClosed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(closed.len(), 1, "closing twice publishes once: {events:?}");
    assert_eq!(closed[0]["data"]["agentId"], "ann");
    assert!(s.drain_agents().await.is_empty());
    assert_eq!(s.agent_load("ann").await, 0, "the slot is freed");

    let (status, p, h) = call(&s.api, message_event(&id, "customer", "hello?")).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(h["content-type"], "application/problem+json");
}

#[tokio::test]
async fn the_fixture_batch_applies_once_whatever_the_redeliveries() {
    let s = system().await;
    // Nobody AVAILABLE: the worker's match answers 409 and the fixture's AgentMatched assigns.
    let batch = fixture("conversations-worker/sqs-batch.json");
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(batch).unwrap();
    for _ in 0..2 {
        let resp = shared::worker::handle(&s.worker, event.clone()).await;
        assert!(resp.batch_item_failures.is_empty());
    }
    let c = s.conversation("conv-1").await;
    assert_eq!(c["status"], "CLOSED");
    assert_eq!(c["agentId"], "agent-1");
    assert_eq!(s.message("conv-1", "msg-1").await["status"], "READ");
    let events = s.env.published().await;
    for kind in ["ConversationStarted", "MessageSent", "ConversationClosed"] {
        assert_eq!(count(&events, kind), 1, "{kind}: {events:?}");
    }
}

#[tokio::test]
async fn duplicates_change_nothing_and_a_poison_message_fails_alone_into_the_dlq() {
    let s = system().await;
    s.agent("ann", &[], 3, true).await;
    let id = s.start(&[]).await;
    let url = s.env.queue_url("ConversationsQueue");
    let mut msgs = s.env.receive(&url, 30).await;
    assert_eq!(msgs.len(), 1);
    // The same command twice in one batch and once more later, beside a poison message.
    s.env
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body(r#"{"detail": {"type": "StartConversation", "data": {"conversationId": 7}}}"#)
        .send()
        .await
        .unwrap();
    msgs.extend(s.env.receive(&url, 30).await);
    let mut batch = sqs_event(&msgs);
    batch.records.push(batch.records[0].clone());
    let resp = shared::worker::handle(&s.worker, batch.clone()).await;
    assert_eq!(resp.batch_item_failures.len(), 1, "only the poison fails");
    let resp = shared::worker::handle(&s.worker, batch).await;
    assert_eq!(resp.batch_item_failures.len(), 1);
    assert_eq!(s.conversation(&id).await["status"], "ASSIGNED");
    assert_eq!(s.agent_load("ann").await, 1);
    let events = s.env.published().await;
    assert_eq!(count(&events, "ConversationStarted"), 1, "{events:?}");
    let (poison, good): (Vec<_>, Vec<_>) = msgs
        .into_iter()
        .partition(|m| m.body().unwrap().contains("\"conversationId\": 7"));
    s.env.delete(&url, &good).await;
    s.env.retry_now(&url, &poison).await;

    let within = Duration::from_secs(30);
    let dlq = s
        .env
        .drain_until_dead_lettered("ConversationsQueue", within, async || {
            s.drain().await;
        })
        .await;
    let dead = s.env.receive(&dlq, 30).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body().unwrap().contains("\"conversationId\": 7"));

    // Hand-written bodies are decoded too (bare envelopes, e.g. redriven by hand).
    let bare = json!({"id": "00000000-0000-4000-8000-0000000000aa", "correlationId": "t",
        "occurredAt": "2026-11-25T18:00:00Z", "type": "CloseConversation",
        "data": {"conversationId": id}})
    .to_string();
    let resp = shared::worker::handle(&s.worker, sqs_bodies(&[bare.clone(), bare])).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(s.conversation(&id).await["status"], "CLOSED");
    assert_eq!(count(&s.env.published().await, "ConversationClosed"), 1);
}

#[tokio::test]
async fn a_command_that_cannot_be_published_leaves_nothing_behind() {
    let s = system().await;
    let broken = conv_api(&s.env, "no-such-bus");
    // (A missing bus is a misconfiguration, 500; an unreachable one would be 503.)
    let (status, body, _) = call(&broken, start_event(&[])).await;
    assert!(status >= 500, "{body}");
    assert_eq!(
        s.env.item_count("ConversationsTable").await,
        0,
        "the PENDING record was compensated"
    );
    let id = s.start(&[]).await;
    let before = s.env.item_count("ConversationsTable").await;
    let (status, _, _) = call(&broken, message_event(&id, "customer", "hi")).await;
    assert!(status >= 500);
    assert_eq!(s.env.item_count("ConversationsTable").await, before);
}

#[tokio::test]
async fn bad_input_gets_a_problem_naming_the_field_and_writes_nothing() {
    let s = system().await;
    let id = s.start(&[]).await;
    let m = s.send(&id, "customer", "hi").await;
    let items = s.env.item_count("ConversationsTable").await;
    let queued = s.env.depth(&s.env.queue_url("ConversationsQueue")).await;

    let with_body = |mut ev: Value, body: &str| {
        ev["body"] = body.into();
        ev
    };
    let with_method = |mut ev: Value, method: &str| {
        ev["requestContext"]["http"]["method"] = method.into();
        system_tests::route(&mut ev);
        ev
    };
    let with_header = |mut ev: Value, k: &str, v: &str| {
        ev["headers"][k] = v.into();
        ev
    };
    let huge = format!(
        r#"{{"sender": "customer", "text": "{}"}}"#,
        "x".repeat(70_000)
    );
    let start = start_event(&[]);
    let msg = message_event(&id, "customer", "x");
    let rec = receipt_event(&id, &m, "READ");
    let get = |path: &str| api("conversations-api/get-conversation.json", path, None);
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (with_body(start.clone(), "{not json"), 400, None),
        (with_body(start.clone(), ""), 400, None),
        (with_body(start.clone(), "[1]"), 422, Some("body")),
        (
            with_body(start.clone(), r#"{"customerId": 5, "channel": "chat"}"#),
            422,
            Some("customerId"),
        ),
        (
            with_body(start.clone(), r#"{"customerId": "c 1", "channel": "chat"}"#),
            422,
            Some("customerId"),
        ),
        (
            with_body(start.clone(), r#"{"customerId": "c1", "channel": "fax"}"#),
            422,
            Some("channel"),
        ),
        (
            with_body(start.clone(), r#"{"customerId": "c1"}"#),
            422,
            Some("body"),
        ),
        (
            with_body(
                start.clone(),
                r#"{"customerId": "c1", "channel": "chat", "skills": ["ok", "no way"]}"#,
            ),
            422,
            Some("skills[1]"),
        ),
        (
            with_body(
                start.clone(),
                r#"{"customerId": "c1", "channel": "chat", "vip": true}"#,
            ),
            422,
            Some("vip"),
        ),
        (
            with_header(start.clone(), "content-type", "text/plain"),
            415,
            None,
        ),
        (
            with_header(start.clone(), "idempotency-key", ""),
            422,
            Some("Idempotency-Key"),
        ),
        (with_body(msg.clone(), &huge), 413, None),
        (
            with_body(msg.clone(), r#"{"sender": "bot", "text": "x"}"#),
            422,
            Some("sender"),
        ),
        (
            with_body(msg.clone(), r#"{"sender": "agent", "text": "   "}"#),
            422,
            Some("text"),
        ),
        (
            with_body(msg.clone(), r#"{"sender": "agent", "text": 3}"#),
            422,
            Some("text"),
        ),
        (
            with_header(msg.clone(), "content-type", "application/xml"),
            415,
            None,
        ),
        (
            message_event("bad$id", "customer", "x"),
            422,
            Some("conversationId"),
        ),
        (message_event("nobody", "customer", "x"), 404, None),
        (
            with_body(rec.clone(), r#"{"status": "SENT"}"#),
            422,
            Some("status"),
        ),
        (
            with_body(rec.clone(), r#"{"status": "read"}"#),
            422,
            Some("status"),
        ),
        (with_body(rec.clone(), "{}"), 422, Some("body")),
        (receipt_event(&id, "bad$id", "READ"), 422, Some("messageId")),
        (receipt_event(&id, "no-such-message", "READ"), 404, None),
        (
            with_header(
                with_body(close_event(&id), r#"{"force": true}"#),
                "content-type",
                "application/json",
            ),
            422,
            Some("force"),
        ),
        (
            with_header(
                with_body(close_event(&id), "{}"),
                "content-type",
                "text/plain",
            ),
            415,
            None,
        ),
        (close_event(&"x".repeat(65)), 422, Some("conversationId")),
        (close_event("nobody"), 404, None),
        (get("/conversations/nobody"), 404, None),
        (get("/conversations/bad$id"), 404, None),
        (
            get(&format!("/conversations/{id}/messages/nothing")),
            404,
            None,
        ),
        (get("/conversations/nobody/messages"), 404, None),
        (get(&format!("/conversations/{id}/nowhere")), 404, None),
        // Routes the API does not have: the gateway answers them on AWS; a function that gets
        // one anyway answers 404 too.
        (
            with_method(get(&format!("/conversations/{id}")), "DELETE"),
            404,
            None,
        ),
        (get("/conversations"), 404, None),
    ];
    for (ev, want, field) in cases {
        let desc = format!(
            "{} {} {}",
            ev["requestContext"]["http"]["method"],
            ev["rawPath"],
            ev["body"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect::<String>()
        );
        let (status, body, headers) = call(&s.api, ev).await;
        system_tests::assert_problem(&desc, (status, &body, &headers), want, field);
    }
    // Query parameters too.
    for (query, field) in [
        (json!({"limit": "0"}), "limit"),
        (json!({"limit": "many"}), "limit"),
        (json!({"limit": ""}), "limit"),
        (json!({"cursor": "garbage!"}), "cursor"),
        (json!({"cursor": ""}), "cursor"),
    ] {
        let (status, body, _) = call(&s.api, list_event(&id, &query)).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["field"], field);
    }
    // A well-formed cursor of another list names no page of this one.
    let foreign = json!({"cursor": "eyJwayI6IkFHRU5UI3giLCJzayI6IkFHRU5UIn0"});
    let (status, body, _) = call(&s.api, list_event(&id, &foreign)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        s.env.item_count("ConversationsTable").await,
        items,
        "nothing written"
    );
    assert_eq!(
        s.env.depth(&s.env.queue_url("ConversationsQueue")).await,
        queued,
        "nothing sent"
    );
}

// ------------------------------------------------------------------ Idempotency-Key

/// The conversations API on a transport whose faults the returned switches control.
async fn faulty_api(env: &Env) -> (ConvApi, Arc<system_tests::faults::Faults>) {
    let (sdk, faults) = system_tests::faults::faulty_sdk(system_tests::endpoint()).await;
    let api = conversations_api::init(&sdk, &env.vars("ConversationsApiFunction")).unwrap();
    (api, faults)
}

impl System {
    /// Sends `ev` with `Idempotency-Key: key` through an API of its own whose next `PutEvents`
    /// answers are lost (the events went out, the answer never came back), so that the API
    /// answers `503`. Returns the keyed request: the client's retry.
    async fn lose_the_answer(&self, ev: Value, key: &str) -> Value {
        let (faulty, faults) = faulty_api(&self.env).await;
        let ev = ev.tap_header("idempotency-key", key);
        faults.lose_answers("PutEvents", 3);
        let (status, body, _) = call(&faulty, ev.clone()).await;
        assert_eq!(status, 503, "the API saw its send time out: {body}");
        ev
    }

    /// Conversation `id` lists one message, the one `accepted` names, SENT; and `retry`, sent
    /// again, replays `accepted`.
    async fn assert_sent_once(&self, id: &str, accepted: &Value, retry: Value) {
        let (status, page, _) = call(&self.api, list_event(id, &json!({"limit": "50"}))).await;
        assert_eq!(status, 200, "{page}");
        let listed = page["items"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "one message: {page}");
        assert_eq!(listed[0]["messageId"], accepted["messageId"]);
        assert_eq!(listed[0]["status"], "SENT", "sent once: {page}");
        assert_eq!(
            &call(&self.api, retry).await.1,
            accepted,
            "replayed from then on"
        );
    }
}

/// `POST /conversations` with `Idempotency-Key: key`, from the supervisor `sub`.
fn keyed_start(key: &str, sub: &str) -> Value {
    let mut ev = system_tests::as_caller(start_event(&["billing"]), sub, "supervisors", "");
    ev["headers"]["idempotency-key"] = key.into();
    ev
}

/// The request as the Lambda runtime hands it over, with `deadline_in` left before Lambda
/// kills the function.
fn with_deadline(ev: &Value, deadline_in: Duration) -> lambda_http::Request {
    use lambda_http::RequestExt;
    let mut ctx = lambda_http::Context::default();
    ctx.deadline = u64::try_from(
        (chrono::Utc::now() + chrono::Duration::from_std(deadline_in).unwrap()).timestamp_millis(),
    )
    .unwrap();
    request(ev).with_lambda_context(ctx)
}

/// Twelve concurrent requests with one key while the bus is gone: none is answered as if its
/// command had been accepted. Once the bus is back, the same race hands off exactly one.
#[tokio::test]
async fn duplicates_racing_an_unavailable_bus_never_get_a_202_and_exactly_one_is_applied() {
    let s = system().await;
    let (api, faults) = faulty_api(&s.env).await;
    let queue = s.env.queue_url("ConversationsQueue");
    faults.missing("PutEvents", true);
    let answers =
        futures::future::join_all((0..12).map(|_| call(&api, keyed_start("race-1", "sue")))).await;
    for (status, body, headers) in &answers {
        assert!(matches!(status, 409 | 503), "never a 202: {status} {body}");
        assert!(headers.contains_key("retry-after"), "{status} {body}");
        assert_eq!(headers["content-type"], "application/problem+json");
    }
    assert!(answers.iter().any(|(s, _, _)| *s == 503), "the bus is down");
    assert_eq!(s.env.depth(&queue).await, 0, "nothing handed off");
    assert_eq!(
        s.env.item_count("ConversationsTable").await,
        1,
        "no conversation left behind: only the key's record, released (the next request with \
         the key takes it over, as the same request)"
    );

    faults.missing("PutEvents", false);
    let answers =
        futures::future::join_all((0..12).map(|_| call(&api, keyed_start("race-1", "sue")))).await;
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _, _)| *s == 202)
        .map(|(_, b, _)| b)
        .collect();
    assert!(!accepted.is_empty(), "{answers:?}");
    assert!(
        accepted.iter().all(|b| *b == accepted[0]),
        "one response: {accepted:?}"
    );
    for (status, body, headers) in &answers {
        assert!(
            *status == 202 || (*status == 409 && headers.contains_key("retry-after")),
            "{status} {body}"
        );
    }
    let (status, replay, _) = call(&api, keyed_start("race-1", "sue")).await;
    assert_eq!(
        (status, &replay),
        (202, accepted[0]),
        "a later retry replays"
    );
    assert_eq!(
        s.env.depth(&queue).await,
        1,
        "exactly one command handed off"
    );
    assert!(s.drain().await.is_empty());
    let id = accepted[0]["conversationId"].as_str().unwrap();
    assert_eq!(s.conversation(id).await["conversationId"], id);
}

/// A function killed between its claim of a key and the completion: the key answers `409`
/// with `Retry-After` until the dead invocation's deadline, then serves the retry; if the dead
/// one had handed its command off, the retry hands off the same command, applied once.
#[tokio::test]
async fn a_claim_whose_request_died_frees_its_key_at_the_deadline_and_applies_once() {
    let s = system().await;
    let (api, faults) = faulty_api(&s.env).await;
    let queue = s.env.queue_url("ConversationsQueue");
    for (key, dies_after, handed_off) in [("crash-1", "PutItem", 0), ("crash-2", "PutEvents", 1)] {
        let ev = keyed_start(key, "sue");
        faults.crash_after(dies_after, 1);
        let deadline = Instant::now() + Duration::from_millis(1_500);
        tokio::select! {
            biased;
            () = faults.crashed() => {}
            resp = conversations_api::handle(&api, with_deadline(&ev, Duration::from_millis(1_500))) => {
                panic!("{key}: finished instead of dying: {}", resp.status())
            }
        }
        assert_eq!(s.env.depth(&queue).await, handed_off, "{key}");
        let resp = conversations_api::handle(&api, request(&ev)).await;
        assert_eq!(
            resp.status(),
            409,
            "{key}: in progress: {}",
            body_json(&resp)
        );
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(body_json(&resp)["type"], "/problems/in-progress");

        tokio::time::sleep_until(deadline.into()).await;
        let (status, body, _) = call(&api, ev.clone()).await;
        assert_eq!(
            status, 202,
            "{key}: usable again after the deadline: {body}"
        );
        assert_eq!(call(&api, ev).await.1, body, "{key}: and completed");
        assert!(s.drain().await.is_empty());
        let id = body["conversationId"].as_str().unwrap();
        assert_eq!(
            s.conversation(id).await["status"],
            "QUEUED",
            "{key}: applied"
        );
        assert_eq!(
            s.env
                .receive(&s.env.observer_url, 30)
                .await
                .iter()
                .filter(|m| m.body().unwrap_or("").contains("ConversationStarted"))
                .count(),
            1,
            "{key}: applied once"
        );
    }
}

/// A key belongs to the caller who sent it: two supervisors sending the same key and body
/// start two conversations, each getting its own `202`; each caller's replay still replays.
#[tokio::test]
async fn two_callers_with_one_key_get_their_own_commands() {
    let s = system().await;
    let (status, sue, _) = call(&s.api, keyed_start("k-1", "sue")).await;
    assert_eq!(status, 202, "{sue}");
    let (status, sam, _) = call(&s.api, keyed_start("k-1", "sam")).await;
    assert_eq!(status, 202, "{sam}");
    assert_ne!(
        sue["conversationId"], sam["conversationId"],
        "two conversations"
    );
    assert_ne!(sue["commandId"], sam["commandId"]);
    assert_eq!(
        call(&s.api, keyed_start("k-1", "sue")).await.1,
        sue,
        "sue's replay"
    );
    assert_eq!(
        call(&s.api, keyed_start("k-1", "sam")).await.1,
        sam,
        "sam's replay"
    );
    assert_eq!(s.env.depth(&s.env.queue_url("ConversationsQueue")).await, 2);
    // The same for a message, a receipt and a close of one conversation.
    assert!(s.drain().await.is_empty());
    let id = sue["conversationId"].as_str().unwrap();
    let with_key = |ev: Value, sub: &str| {
        let mut ev = system_tests::as_caller(ev, sub, "agents", "");
        ev["headers"]["idempotency-key"] = "k-2".into();
        ev
    };
    let message = |sub| with_key(message_event(id, "agent", "hello"), sub);
    let (_, m1, _) = call(&s.api, message("ann")).await;
    let (_, m2, _) = call(&s.api, message("bob")).await;
    assert!(m1["messageId"].is_string() && m2["messageId"].is_string());
    assert_ne!(m1["messageId"], m2["messageId"], "two messages");
    let m = m1["messageId"].as_str().unwrap();
    let (_, r1, _) = call(&s.api, with_key(receipt_event(id, m, "DELIVERED"), "ann")).await;
    let (_, r2, _) = call(&s.api, with_key(receipt_event(id, m, "DELIVERED"), "bob")).await;
    assert_ne!(r1["commandId"], r2["commandId"], "two receipts");
    let (_, c1, _) = call(&s.api, with_key(close_event(id), "ann")).await;
    let (_, c2, _) = call(&s.api, with_key(close_event(id), "bob")).await;
    assert!(c1["commandId"].is_string());
    assert_ne!(c1["commandId"], c2["commandId"], "two closes");
}

/// The key's claim is a conditional write like any other: contention is retried, then `503`.
#[tokio::test]
async fn a_contended_claim_is_retried_then_answers_503() {
    let s = system().await;
    let (api, faults) = faulty_api(&s.env).await;
    faults.contend("PutItem", 2);
    let (status, body, _) = call(&api, keyed_start("contended", "sue")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(faults.contended(), 2);
    faults.contend("PutItem", usize::MAX);
    let (status, body, headers) = call(&api, keyed_start("contended-2", "sue")).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
}

/// A message whose hand-off lost its answer (`PutEvents` went through, the API saw a timeout
/// and answered `503`): the client's retry with the same key names the same message, which is
/// listed and sent once, with no second or phantom message beside it.
#[tokio::test]
async fn a_retry_after_a_lost_hand_off_answer_names_the_same_message_sent_once() {
    let s = system().await;
    let (status, started, _) = call(&s.api, start_event(&["billing"])).await;
    assert_eq!(status, 202, "{started}");
    assert!(s.drain().await.is_empty());
    let id = started["conversationId"].as_str().unwrap();

    let ev = s
        .lose_the_answer(message_event(id, "customer", "hello once"), "lost-1")
        .await;
    let (status, accepted, _) = call(&s.api, ev.clone()).await;
    assert_eq!(status, 202, "{accepted}");
    for _ in 0..2 {
        assert!(s.drain().await.is_empty());
    }
    s.assert_sent_once(id, &accepted, ev).await;
}

/// The same kind of fault as above, with a refusal on current state in the way: a message
/// whose hand-off lost its answer was applied (SENT), then the conversation was closed. The
/// client's retry is the same request, so it gets the same answer (`202`, the same message),
/// not the `409` "closed" that a new message gets; nothing is sent twice.
#[tokio::test]
async fn a_retry_of_a_lost_answer_message_is_accepted_after_the_conversation_closed() {
    let s = system().await;
    let id = s.start_settled(&[]).await;

    let before_the_close = message_event(&id, "customer", "before the close");
    let ev = s
        .lose_the_answer(before_the_close, "lost-before-close")
        .await;
    s.close(&id).await;
    for _ in 0..2 {
        assert!(s.drain().await.is_empty());
    }
    assert_eq!(s.conversation(&id).await["status"], "CLOSED");
    let (status, refused, _) = call(&s.api, message_event(&id, "customer", "new")).await;
    assert_eq!(status, 409, "a new message is refused: {refused}");

    let (status, accepted, _) = call(&s.api, ev.clone()).await;
    assert_eq!(
        status, 202,
        "the retry is the lost attempt's message: {accepted}"
    );
    assert!(s.drain().await.is_empty());
    // Sent before the close, once.
    s.assert_sent_once(&id, &accepted, ev).await;
}

/// And for a receipt: accepted while its message was still ACCEPTED, its answer lost, applied
/// (as nothing) after the message was rejected by a close that overtook it. The retry is
/// accepted (`202`), its command found processed and not sent again; a new receipt for the
/// rejected message is still a `409`.
#[tokio::test]
async fn a_retry_of_a_lost_answer_receipt_is_accepted_after_its_message_was_rejected() {
    let s = system().await;
    let id = s.start_settled(&[]).await;
    let late = s.send(&id, "customer", "wait!").await;
    s.close(&id).await;
    let ev = s
        .lose_the_answer(receipt_event(&id, &late, "DELIVERED"), "lost-receipt")
        .await;

    // The close first, then the message (rejected), then the receipt (changes nothing).
    let url = s.env.queue_url("ConversationsQueue");
    let mut msgs = s.env.receive(&url, 30).await;
    // The receipt is there once per attempt that went through, all under one command id.
    let kinds: Vec<String> = msgs
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            body["detail-type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(
        kinds.len() >= 3
            && kinds[..2] == ["SendMessage", "CloseConversation"]
            && kinds[2..].iter().all(|k| k == "RecordReceipt"),
        "message, close, receipt: {kinds:?}"
    );
    msgs.swap(0, 1);
    let resp = shared::worker::handle(&s.worker, sqs_event(&msgs)).await;
    assert!(resp.batch_item_failures.is_empty());
    s.env.delete(&url, &msgs).await;
    assert_eq!(s.message(&id, &late).await["status"], "REJECTED");
    assert!(s.drain().await.is_empty(), "the close's reactions");
    assert_eq!(s.env.depth(&url).await, 0, "all handled");
    let (status, p, _) = call(&s.api, receipt_event(&id, &late, "READ")).await;
    assert_eq!(status, 409, "a new receipt is refused: {p}");

    let (status, accepted, _) = call(&s.api, ev.clone()).await;
    assert_eq!(
        status, 202,
        "the retry is the lost attempt's receipt: {accepted}"
    );
    assert_eq!(
        s.env.depth(&url).await,
        0,
        "its command was applied already: nothing sent again"
    );
    assert_eq!(s.message(&id, &late).await["status"], "REJECTED");
    assert_eq!(call(&s.api, ev).await.1, accepted, "replayed from then on");
}

// ------------------------------------------------------------------ the sweeper

use conversations_worker::sweeper::{AwsSweeper, Report};

impl System {
    /// The sweeper as the template configures it (its own environment), calling the test's
    /// agents server with the worker's short timeouts; `overrides` set more variables
    /// (`SWEEP_STALE_AFTER_SECS`, `SWEEP_MAX_PER_RUN`, the agents client's policy).
    fn sweeper(&self, overrides: &[(&str, &str)]) -> AwsSweeper {
        let mut vars = self
            .env
            .vars("ConversationsSweeperFunction")
            .with("AGENTS_API_URL", self.server.url())
            .with("AGENTS_TIMEOUT_MS", "300")
            .with("AGENTS_MAX_ATTEMPTS", "3")
            .with("AGENTS_BACKOFF_MS", "60")
            .with("AGENTS_BACKOFF_MAX_MS", "1000");
        for (name, value) in overrides {
            vars = vars.with(name, *value);
        }
        conversations_worker::sweeper::init(&self.env.sdk, &vars).unwrap()
    }

    /// The events on the conversations queue now, removed before the worker sees them (lost on
    /// the way, or parked in a DLQ): their detail-types.
    async fn lose_conversation_events(&self) -> Vec<String> {
        let url = self.env.queue_url("ConversationsQueue");
        let msgs = self.env.receive(&url, 30).await;
        self.env.delete(&url, &msgs).await;
        msgs.iter()
            .map(|m| {
                let v: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                v["detail-type"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// `n` conversations QUEUED (nobody AVAILABLE), in order of creation, then `agent` made
    /// AVAILABLE (registered with `capacity`) without its `AgentStateChanged` ever reaching
    /// the conversations worker: nothing but the sweeper would match them.
    async fn queued_and_forgotten(&self, agent: &str, capacity: u32, n: usize) -> Vec<String> {
        self.agent(agent, &[], capacity, false).await;
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(self.start(&[]).await);
        }
        assert!(self.drain().await.is_empty());
        self.agent_state(agent, "AVAILABLE").await;
        let lost = self.lose_conversation_events().await;
        assert!(
            !lost.is_empty() && lost.iter().all(|k| k == "AgentStateChanged"),
            "{lost:?}"
        );
        assert!(self.drain().await.is_empty());
        for id in &ids {
            assert_eq!(self.conversation(id).await["status"], "QUEUED", "{id}");
        }
        ids
    }

    async fn statuses(&self, ids: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for id in ids {
            out.push(
                self.conversation(id).await["status"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        out
    }
}

/// One scheduled run, as EventBridge invokes it (a Scheduled Event), with 10 s to go.
async fn sweep(sweeper: &AwsSweeper) -> Report {
    let mut event = fixture("conversations-sweeper/scheduled-event.json");
    event["id"] = uuid::Uuid::new_v4().to_string().into();
    conversations_worker::sweeper::handle(sweeper, event, Instant::now() + Duration::from_secs(10))
        .await
}

#[tokio::test]
async fn a_conversation_whose_agent_event_was_lost_is_matched_by_the_sweeper_once() {
    let s = system().await;
    let ids = s.queued_and_forgotten("bob", 1, 1).await;
    let id = &ids[0];
    s.env.published().await;

    let sweeper = s.sweeper(&[("SWEEP_STALE_AFTER_SECS", "0")]);
    let report = sweep(&sweeper).await;
    assert_eq!(
        report,
        Report {
            stale: 1,
            matched: 1,
            ..Report::default()
        }
    );
    let c = s.conversation(id).await;
    assert_eq!(
        (c["status"].as_str(), c["agentId"].as_str()),
        (Some("ASSIGNED"), Some("bob"))
    );
    assert_eq!(s.agent_load("bob").await, 1);
    // What the worker's match publishes: the agents API's AgentMatched, and nothing else.
    let events = s.env.published().await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.iter().all(|k| *k == "AgentMatched"), "{kinds:?}");
    assert_eq!(count(&events, "AgentMatched"), 1, "{events:?}");
    let matched = &events[0].1;
    assert_eq!(matched["data"]["conversationId"], id.as_str());
    assert_eq!(matched["data"]["agentId"], "bob");
    // The AgentMatched reaches the worker and agrees.
    assert!(s.drain().await.is_empty());
    assert_eq!(s.conversation(id).await, c);

    // A second run finds nothing to do and changes nothing.
    let hits = s.server.hits().len();
    assert_eq!(sweep(&sweeper).await, Report::default());
    assert_eq!(s.conversation(id).await, c);
    assert_eq!(s.agent_load("bob").await, 1);
    assert_eq!(s.server.hits().len(), hits, "no match asked");
    assert!(s.env.published().await.is_empty());
}

#[tokio::test]
async fn a_sweep_takes_at_most_its_bound_oldest_first_and_never_overbooks() {
    let s = system().await;
    // Five waiting, room for four, three per run.
    let ids = s.queued_and_forgotten("ann", 4, 5).await;
    let sweeper = s.sweeper(&[("SWEEP_STALE_AFTER_SECS", "0"), ("SWEEP_MAX_PER_RUN", "3")]);

    let first = sweep(&sweeper).await;
    assert_eq!(
        first,
        Report {
            stale: 3,
            matched: 3,
            backlog: true,
            ..Report::default()
        }
    );
    assert_eq!(
        s.statuses(&ids).await,
        ["ASSIGNED", "ASSIGNED", "ASSIGNED", "QUEUED", "QUEUED"],
        "the three oldest"
    );

    let second = sweep(&sweeper).await;
    assert_eq!(
        second,
        Report {
            stale: 2,
            matched: 1,
            no_agent: 1,
            ..Report::default()
        }
    );
    assert_eq!(
        s.statuses(&ids).await,
        ["ASSIGNED", "ASSIGNED", "ASSIGNED", "ASSIGNED", "QUEUED"],
        "the older of the two; the last waits for a free slot"
    );
    assert_eq!(s.agent_load("ann").await, 4, "capacity 4, never more");
    for id in &ids[..4] {
        assert_eq!(s.conversation(id).await["agentId"], "ann");
    }
}

#[tokio::test]
async fn a_conversation_queued_less_than_the_threshold_ago_is_left_to_the_event_path() {
    let s = system().await;
    let ids = s.queued_and_forgotten("cy", 1, 1).await;
    let hits = s.server.hits().len();

    // The template's threshold (30 s): the conversation has waited a few seconds at most.
    let report = sweep(&s.sweeper(&[])).await;
    assert_eq!(report, Report::default());
    assert_eq!(s.statuses(&ids).await, ["QUEUED"]);
    assert_eq!(s.server.hits().len(), hits, "no match asked");

    // Only the threshold held it back.
    let report = sweep(&s.sweeper(&[("SWEEP_STALE_AFTER_SECS", "0")])).await;
    assert_eq!(report.matched, 1, "{report:?}");
    assert_eq!(s.statuses(&ids).await, ["ASSIGNED"]);
}

#[tokio::test]
async fn a_failed_match_does_not_stop_the_sweep() {
    let s = system().await;
    let ids = s.queued_and_forgotten("dee", 2, 2).await;
    let sweeper = s.sweeper(&[("SWEEP_STALE_AFTER_SECS", "0")]);
    // The oldest conversation's match is answered out of contract (not retried).
    s.server.fail_next(&[Fault::Status(400)]);
    let report = sweep(&sweeper).await;
    assert_eq!(
        report,
        Report {
            stale: 2,
            matched: 1,
            failed: 1,
            ..Report::default()
        }
    );
    assert_eq!(s.statuses(&ids).await, ["QUEUED", "ASSIGNED"]);
    // The next run takes it up.
    assert_eq!(sweep(&sweeper).await.matched, 1);
    assert_eq!(s.statuses(&ids).await, ["ASSIGNED", "ASSIGNED"]);
    assert_eq!(s.agent_load("dee").await, 2);
}

#[tokio::test]
async fn a_sweep_with_the_agents_api_hanging_ends_before_its_deadline() {
    let s = system().await;
    let ids = s.queued_and_forgotten("eve", 5, 5).await;
    // Every attempt outlasts its 300 ms timeout; the breaker stays closed, so every call takes
    // its longest (3 attempts and 2 backoffs, about 1.1 s).
    let sweeper = s.sweeper(&[
        ("SWEEP_STALE_AFTER_SECS", "0"),
        ("AGENTS_BREAKER_FAILURES", "100"),
    ]);
    s.server
        .fail_next(&[Fault::Slow(Duration::from_secs(2)); 20]);
    let started = Instant::now();
    let deadline = started + Duration::from_millis(2_500);
    let report = conversations_worker::sweeper::handle(&sweeper, json!({}), deadline).await;
    assert!(
        Instant::now() < deadline,
        "ended {:?} after its deadline",
        Instant::now() - deadline
    );
    assert_eq!(
        report,
        Report {
            stale: 5,
            failed: 1,
            deferred: 4,
            ..Report::default()
        }
    );
    assert_eq!(s.statuses(&ids).await, ["QUEUED"; 5]);
}
