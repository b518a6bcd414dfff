//! The analytics service against a real moto server: its worker counts exactly once whatever
//! the redelivery (same event in two batches, twice in one batch, on two instances at once),
//! its summary agrees with a run of commands through the real agents, conversations and
//! trades handlers, and its API answers bad input with problems.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use system_tests::{Env, api, body_json, fixture, request, sqs_bodies};

type Worker = analytics_worker::AwsApp;
type Api = analytics_api::AwsApp;

struct Analytics {
    env: Env,
    worker: Worker,
    api: Api,
}

async fn analytics() -> Analytics {
    let env = Env::new().await;
    let worker = analytics_worker::init(&env.sdk, &env.vars("AnalyticsWorkerFunction")).unwrap();
    let api = analytics_api::init(&env.sdk, &env.vars("AnalyticsApiFunction")).unwrap();
    Analytics { env, worker, api }
}

impl Analytics {
    /// Hands `bodies` to the worker as one batch; returns the failed message ids.
    async fn batch(&self, bodies: &[String]) -> Vec<String> {
        let resp = shared::worker::handle(&self.worker, sqs_bodies(bodies)).await;
        resp.batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    }

    /// Runs the worker over the analytics queue until it is empty, as the Lambda poller would.
    async fn settle(&self) {
        let url = self.env.queue_url("AnalyticsQueue");
        for _ in 0..50 {
            if self.env.depth(&url).await == 0 {
                return;
            }
            let failed = self
                .env
                .drain("AnalyticsQueue", |ev| {
                    shared::worker::handle(&self.worker, ev)
                })
                .await;
            assert!(failed.is_empty(), "analytics worker failed {failed:?}");
        }
        panic!("the analytics queue did not drain");
    }

    async fn get(&self, path: &str) -> (u16, Value, String) {
        let fixture_path = if path.starts_with("/analytics/agents/") {
            "analytics-api/get-agent.json"
        } else {
            "analytics-api/get-summary.json"
        };
        self.call(api(fixture_path, path, None)).await
    }

    async fn call(&self, ev: Value) -> (u16, Value, String) {
        let resp = analytics_api::handle(&self.api, request(&ev)).await;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (resp.status().as_u16(), body_json(&resp), content_type)
    }

    async fn summary(&self) -> Value {
        let (status, body, _) = self.get("/analytics/summary").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn agent(&self, id: &str) -> Value {
        let (status, body, _) = self.get(&format!("/analytics/agents/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// The bodies of the sample batch (`events/analytics-worker/sqs-batch.json`): agent-1
/// registered, conv-1 started, matched 250 ms later, one agent message, closed; one ACME trade
/// executed (10 at 12.5) and one rejected.
fn sample_bodies() -> Vec<String> {
    fixture("analytics-worker/sqs-batch.json")["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap().to_owned())
        .collect()
}

/// What the sample batch counts, once.
fn sample_summary() -> Value {
    json!({
        "conversationsCreated": 1, "conversationsAssigned": 1, "conversationsClosed": 1,
        "messages": 1, "tradesExecuted": 1, "tradesRejected": 1,
        "volumeBySymbol": {"ACME": {"quantity": "10", "notional": "125"}}
    })
}

/// An event as EventBridge delivers it to SQS, with a fresh event id.
fn event(kind: &str, data: Value) -> String {
    let source = match kind {
        "AgentMatched" | "AgentRegistered" | "AgentStateChanged" => "cqrs.agents",
        "TradeExecuted" | "TradeRejected" => "cqrs.trades",
        _ => "cqrs.conversations",
    };
    json!({
        "detail-type": kind, "source": source,
        "detail": {
            "id": uuid::Uuid::new_v4(), "correlationId": "analytics-test",
            "occurredAt": "2026-11-25T18:00:00Z", "type": kind, "data": data
        }
    })
    .to_string()
}

fn started(conversation: &str, created_at: &str) -> String {
    event(
        "ConversationStarted",
        json!({"conversationId": conversation, "customerId": "cust-1", "channel": "chat",
               "skills": [], "createdAt": created_at}),
    )
}

fn matched(conversation: &str, agent: &str, matched_at: &str) -> String {
    event(
        "AgentMatched",
        json!({"conversationId": conversation, "agentId": agent, "matchedAt": matched_at}),
    )
}

fn message(conversation: &str, sender: &str, agent: Option<&str>) -> String {
    event(
        "MessageSent",
        json!({"conversationId": conversation, "messageId": uuid::Uuid::new_v4().to_string(),
               "sender": sender, "agentId": agent, "sentAt": "2026-11-25T18:00:09Z"}),
    )
}

fn closed(conversation: &str, agent: Option<&str>) -> String {
    event(
        "ConversationClosed",
        json!({"conversationId": conversation, "agentId": agent,
               "closedAt": "2026-11-25T18:00:10Z"}),
    )
}

// ------------------------------------------------------------------ exactly once

#[tokio::test]
async fn counters_are_exact_after_duplicated_and_redelivered_events() {
    let a = analytics().await;
    let bodies = sample_bodies();
    assert!(a.batch(&bodies).await.is_empty());
    assert_eq!(a.summary().await, sample_summary());
    let agent = json!({"agentId": "agent-1", "conversationsHandled": 1, "messagesSent": 1,
                       "assignmentsTimed": 1, "meanTimeToAssignMs": 250.0});
    assert_eq!(a.agent("agent-1").await, agent);

    // Redelivered in another batch, in reverse order.
    let reversed: Vec<String> = bodies.iter().rev().cloned().collect();
    assert!(a.batch(&reversed).await.is_empty());
    // Every event twice within one batch.
    let twice: Vec<String> = bodies.iter().flat_map(|b| [b.clone(), b.clone()]).collect();
    assert!(a.batch(&twice).await.is_empty());
    // The same batch on two instances at once (SQS delivers at least once).
    let (x, y) = futures::join!(a.batch(&bodies), a.batch(&bodies));
    assert!(x.is_empty() && y.is_empty(), "{x:?} {y:?}");
    // Through the real queue: the same event sent twice, drained by the poller's rules.
    let url = a.env.queue_url("AnalyticsQueue");
    for _ in 0..2 {
        for b in &bodies {
            a.env
                .sqs
                .send_message()
                .queue_url(&url)
                .message_body(b)
                .send()
                .await
                .expect("send");
        }
    }
    a.settle().await;

    assert_eq!(a.summary().await, sample_summary(), "nothing counted twice");
    assert_eq!(a.agent("agent-1").await, agent);
}

#[tokio::test]
async fn a_conversation_counts_once_even_when_announced_closed_twice_and_matched_first() {
    let a = analytics().await;
    // The match arrives before the start: the time to assign is still counted, once.
    assert!(
        a.batch(&[matched("c-1", "ann", "2026-11-25T18:00:02.500Z")])
            .await
            .is_empty()
    );
    let ann = a.agent("ann").await;
    assert_eq!(ann["conversationsHandled"], 1);
    assert_eq!(ann["assignmentsTimed"], 0);
    assert_eq!(ann["meanTimeToAssignMs"], Value::Null);
    assert!(
        a.batch(&[started("c-1", "2026-11-25T18:00:01Z")])
            .await
            .is_empty()
    );
    // A conversation closed before its match is announced closed twice (two event ids).
    assert!(
        a.batch(&[closed("c-1", None), closed("c-1", Some("ann"))])
            .await
            .is_empty()
    );
    // Start and match of another conversation applied concurrently on two instances: the
    // timeline condition makes one of them retry, so the time is counted exactly once.
    let start = [started("c-2", "2026-11-25T18:00:00Z")];
    let matched = [matched("c-2", "ann", "2026-11-25T18:00:00.100Z")];
    let (x, y) = futures::join!(a.batch(&start), a.batch(&matched));
    assert!(x.is_empty() && y.is_empty(), "{x:?} {y:?}");

    let s = a.summary().await;
    assert_eq!(s["conversationsCreated"], 2);
    assert_eq!(s["conversationsAssigned"], 2);
    assert_eq!(s["conversationsClosed"], 1, "{s}");
    let ann = a.agent("ann").await;
    assert_eq!(ann["conversationsHandled"], 2);
    assert_eq!(ann["assignmentsTimed"], 2);
    // (1500 ms + 100 ms) / 2
    assert_eq!(ann["meanTimeToAssignMs"], 800.0, "{ann}");
}

#[tokio::test]
async fn per_agent_stats_count_only_that_agents_messages_and_conversations() {
    let a = analytics().await;
    let registered = event(
        "AgentRegistered",
        json!({"agentId": "idle", "name": "Idle", "skills": [], "capacity": 1, "version": 1}),
    );
    let bodies = vec![
        registered,
        started("c-1", "2026-11-25T18:00:00Z"),
        matched("c-1", "ann", "2026-11-25T18:00:00.200Z"),
        started("c-2", "2026-11-25T18:00:00Z"),
        matched("c-2", "bob", "2026-11-25T18:00:01Z"),
        started("c-3", "2026-11-25T18:00:00Z"),
        matched("c-3", "ann", "2026-11-25T18:00:00.400Z"),
        message("c-1", "customer", Some("ann")),
        message("c-1", "agent", Some("ann")),
        message("c-1", "agent", Some("ann")),
        message("c-2", "agent", Some("bob")),
        message("c-3", "customer", Some("ann")),
    ];
    assert!(a.batch(&bodies).await.is_empty());
    assert_eq!(
        a.agent("ann").await,
        json!({"agentId": "ann", "conversationsHandled": 2, "messagesSent": 2,
               "assignmentsTimed": 2, "meanTimeToAssignMs": 300.0})
    );
    assert_eq!(
        a.agent("bob").await,
        json!({"agentId": "bob", "conversationsHandled": 1, "messagesSent": 1,
               "assignmentsTimed": 1, "meanTimeToAssignMs": 1000.0})
    );
    // Registered, nothing else yet: known, all zero.
    assert_eq!(
        a.agent("idle").await,
        json!({"agentId": "idle", "conversationsHandled": 0, "messagesSent": 0,
               "assignmentsTimed": 0, "meanTimeToAssignMs": null})
    );
    assert_eq!(a.summary().await["messages"], 5);
}

#[tokio::test]
async fn a_poison_event_fails_alone() {
    let a = analytics().await;
    let mut bodies = sample_bodies();
    let command = event(
        "RegisterAgent",
        json!({"agentId": "x", "name": "X", "skills": [], "capacity": 1, "version": 1}),
    )
    .replace("cqrs.conversations", "cqrs.agents.command");
    let bad_trade = event(
        "TradeExecuted",
        json!({"tradeId": uuid::Uuid::new_v4(), "accountId": "acct-1", "symbol": "ACME",
               "side": "BUY", "quantity": "-1", "price": "1", "sequence": 1,
               "executedAt": "2026-11-25T18:00:00Z"}),
    );
    bodies.insert(1, "{not json".to_owned());
    bodies.insert(3, command);
    bodies.push(bad_trade);
    let mut failed = a.batch(&bodies).await;
    failed.sort();
    let expected: Vec<String> = ["m1", "m3", &format!("m{}", bodies.len() - 1)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(failed, expected);
    // The batch-mates were counted.
    assert_eq!(a.summary().await, sample_summary());
}

// ------------------------------------------------------------------ API

#[tokio::test]
async fn bad_input_gets_a_problem_and_an_empty_system_has_zero_counters() {
    let a = analytics().await;
    assert_eq!(
        a.summary().await,
        json!({"conversationsCreated": 0, "conversationsAssigned": 0, "conversationsClosed": 0,
               "messages": 0, "tradesExecuted": 0, "tradesRejected": 0, "volumeBySymbol": {}})
    );
    for (path, status) in [
        ("/analytics/agents/nobody", 404),
        ("/analytics/agents/bad%23id", 404),
        ("/analytics/agents/a%2Fb", 404),
        ("/analytics/nothing", 404),
    ] {
        let (code, body, content_type) = a.get(path).await;
        assert_eq!(code, status, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        for k in ["type", "title", "status", "detail"] {
            assert!(!body[k].is_null(), "{path}: problem lacks {k}: {body}");
        }
    }
    let mut post = api(
        "analytics-api/get-summary.json",
        "/analytics/summary",
        Some("{}"),
    );
    post["requestContext"]["http"]["method"] = "POST".into();
    system_tests::route(&mut post);
    let (code, body, content_type) = a.call(post).await;
    assert_eq!(code, 404, "not a route of the API: {body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(
        a.env.item_count("AnalyticsTable").await,
        0,
        "reads write nothing"
    );
}

// ------------------------------------------------------------------ end to end

/// The real agents API served over HTTP for the conversations worker's match call.
async fn serve_agents(app: std::sync::Arc<agents_api::AwsApp>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let app = app.clone();
                    async move {
                        let bytes = BodyExt::collect(req.into_body()).await?.to_bytes();
                        let req = system_tests::match_request(&bytes);
                        let (parts, body) = agents_api::handle(&app, req).await.into_parts();
                        Ok::<_, hyper::Error>(hyper::Response::from_parts(
                            parts,
                            Full::new(Bytes::copy_from_slice(body.as_ref())),
                        ))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn status_of(resp: lambda_http::Response<lambda_http::Body>) -> (u16, Value) {
    (resp.status().as_u16(), body_json(&resp))
}

#[tokio::test]
async fn the_summary_matches_the_commands_of_a_run_through_the_real_handlers() {
    let a = analytics().await;
    let env = &a.env;
    let agents =
        std::sync::Arc::new(agents_api::init(&env.sdk, &env.vars("AgentsApiFunction")).unwrap());
    let agents_worker = agents_worker::init(&env.sdk, &env.vars("AgentsWorkerFunction")).unwrap();
    let conversations =
        conversations_api::init(&env.sdk, &env.vars("ConversationsApiFunction")).unwrap();
    let conversations_worker = conversations_worker::init(
        &env.sdk,
        &env.vars("ConversationsWorkerFunction")
            .with("AGENTS_API_URL", serve_agents(agents.clone()).await),
    )
    .unwrap();
    let trades = trades_api::init(&env.sdk, &env.vars("TradesApiFunction")).unwrap();
    let trades_worker = trades_worker::init(&env.sdk, &env.vars("TradesWorkerFunction")).unwrap();
    let drain_agents = async || {
        for queue in ["AgentsCommandQueue", "AgentsQueue"] {
            let failed = env
                .drain(queue, |ev| shared::worker::handle(&agents_worker, ev))
                .await;
            assert!(failed.is_empty(), "agents worker failed {failed:?}");
        }
    };
    let drain_conversations = async || {
        let failed = env
            .drain("ConversationsQueue", |ev| {
                shared::worker::handle(&conversations_worker, ev)
            })
            .await;
        assert!(failed.is_empty(), "conversations worker failed {failed:?}");
    };

    // Agents: ann and bob, AVAILABLE, two slots each.
    for id in ["ann", "bob"] {
        let ev = api(
            "agents-api/register-agent.json",
            &format!("/agents/{id}"),
            Some(&json!({"name": "Agent", "skills": ["billing"], "capacity": 2}).to_string()),
        );
        let (code, body) = status_of(agents_api::handle(&agents, request(&ev)).await);
        assert_eq!(code, 202, "{body}");
        drain_agents().await;
        let mut ev = api(
            "agents-api/change-agent-state.json",
            &format!("/agents/{id}/state"),
            Some(r#"{"state": "AVAILABLE"}"#),
        );
        ev["headers"]
            .as_object_mut()
            .unwrap()
            .remove("idempotency-key");
        let (code, body) = status_of(agents_api::handle(&agents, request(&ev)).await);
        assert_eq!(code, 202, "{body}");
        drain_agents().await;
    }
    drain_conversations().await;

    // Three conversations, each matched synchronously by the worker.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let ev = api(
            "conversations-api/start-conversation.json",
            "/conversations",
            Some(r#"{"customerId": "cust-1", "channel": "chat", "skills": ["billing"]}"#),
        );
        let (code, body) = status_of(conversations_api::handle(&conversations, request(&ev)).await);
        assert_eq!(code, 202, "{body}");
        ids.push(body["conversationId"].as_str().unwrap().to_owned());
    }
    drain_conversations().await;
    drain_conversations().await; // the AgentMatched events
    let mut owner = std::collections::HashMap::new();
    for id in &ids {
        let ev = api(
            "conversations-api/get-conversation.json",
            &format!("/conversations/{id}"),
            None,
        );
        let (_, c) = status_of(conversations_api::handle(&conversations, request(&ev)).await);
        assert_eq!(c["status"], "ASSIGNED", "{c}");
        owner.insert(id.clone(), c["agentId"].as_str().unwrap().to_owned());
    }

    // Messages: in the first conversation two from the agent and one from the customer, in
    // the second one from the agent.
    for (conv, sender) in [(0, "agent"), (0, "customer"), (0, "agent"), (1, "agent")] {
        let ev = api(
            "conversations-api/send-message.json",
            &format!("/conversations/{}/messages", ids[conv]),
            Some(&json!({"sender": sender, "text": "hello"}).to_string()),
        );
        let (code, body) = status_of(conversations_api::handle(&conversations, request(&ev)).await);
        assert_eq!(code, 202, "{body}");
    }
    drain_conversations().await;
    // Two conversations closed.
    for id in &ids[..2] {
        let ev = api(
            "conversations-api/close-conversation.json",
            &format!("/conversations/{id}/close"),
            None,
        );
        let (code, body) = status_of(conversations_api::handle(&conversations, request(&ev)).await);
        assert_eq!(code, 202, "{body}");
    }
    drain_conversations().await;
    drain_conversations().await;
    drain_agents().await;

    // Trades: three executed (ACME twice, XYZ once), one SELL beyond the holdings rejected.
    for (symbol, side, quantity, price) in [
        ("ACME", "BUY", "10", "12.5"),
        ("ACME", "BUY", "0.1", "0.2"),
        ("XYZ", "BUY", "3", "7"),
        ("ACME", "SELL", "1000", "1"),
    ] {
        let mut ev = api(
            "trades-api/submit-trade.json",
            "/trades",
            Some(
                &json!({"accountId": "acct-1", "symbol": symbol, "side": side,
                        "quantity": quantity, "price": price})
                .to_string(),
            ),
        );
        ev["headers"]["idempotency-key"] = uuid::Uuid::new_v4().to_string().into();
        let ev = system_tests::as_trader(ev, "acct-1");
        let (code, body) = status_of(trades_api::handle(&trades, request(&ev)).await);
        assert_eq!(code, 202, "{body}");
    }
    for _ in 0..3 {
        let failed = env
            .drain("TradesQueue", |ev| {
                shared::worker::handle(&trades_worker, ev)
            })
            .await;
        assert!(failed.is_empty(), "trades worker failed {failed:?}");
    }

    a.settle().await;
    assert_eq!(
        a.summary().await,
        json!({
            "conversationsCreated": 3, "conversationsAssigned": 3, "conversationsClosed": 2,
            "messages": 4, "tradesExecuted": 3, "tradesRejected": 1,
            "volumeBySymbol": {
                "ACME": {"quantity": "10.1", "notional": "125.02"},
                "XYZ": {"quantity": "3", "notional": "21"}
            }
        })
    );
    let mut handled = 0;
    for agent in ["ann", "bob"] {
        let stats = a.agent(agent).await;
        let mine = ids.iter().filter(|c| owner[*c] == agent).count();
        assert_eq!(stats["conversationsHandled"], mine, "{stats}");
        assert_eq!(stats["assignmentsTimed"], mine, "{stats}");
        let sent = [&ids[0], &ids[0], &ids[1]]
            .iter()
            .filter(|c| owner[**c] == agent)
            .count();
        assert_eq!(stats["messagesSent"], sent, "{stats}");
        if mine > 0 {
            assert!(
                stats["meanTimeToAssignMs"].as_f64().unwrap() >= 0.0,
                "{stats}"
            );
        }
        handled += mine;
    }
    assert_eq!(handled, 3);
}
