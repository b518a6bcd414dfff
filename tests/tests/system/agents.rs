//! The agents service against a real moto server: API handler, worker and their guarantees.

use std::time::{Duration, Instant};

use agents_worker::App as WorkerApp;
use serde_json::{Value, json};
use shared::{bus::EventBridgeBus, store::agents::DynamoAgentStore};
use system_tests::{Env, Tap, api, body_json, fixture, request, sqs_bodies};

type Api = agents_api::AwsApp;
type Worker = WorkerApp<DynamoAgentStore, EventBridgeBus>;

fn api_app(env: &Env) -> Api {
    api_app_on(env, &env.sdk)
}

fn api_app_on(env: &Env, sdk: &aws_config::SdkConfig) -> Api {
    agents_api::init(sdk, &env.vars("AgentsApiFunction")).unwrap()
}

fn worker_app(env: &Env, bus: &str) -> Worker {
    worker_app_on(env, &env.sdk, bus)
}

fn worker_app_on(env: &Env, sdk: &aws_config::SdkConfig, bus: &str) -> Worker {
    agents_worker::init(
        sdk,
        &env.vars("AgentsWorkerFunction")
            .with("EVENT_BUS_NAME", bus.to_owned()),
    )
    .unwrap()
}

async fn call(app: &Api, ev: Value) -> (u16, Value, lambda_http::http::HeaderMap) {
    let resp = agents_api::handle(app, request(&ev)).await;
    (
        resp.status().as_u16(),
        body_json(&resp),
        resp.headers().clone(),
    )
}

/// Runs the agents worker over what its queues hold now (its command queue, then its event
/// queue); returns the failed message ids.
async fn drain(env: &Env, worker: &Worker) -> Vec<String> {
    let mut failed = env
        .drain("AgentsCommandQueue", |event| {
            shared::worker::handle(worker, event)
        })
        .await;
    failed.extend(
        env.drain("AgentsQueue", |event| shared::worker::handle(worker, event))
            .await,
    );
    failed
}

fn register_event(id: &str, name: &str, skills: &[&str], capacity: u32) -> Value {
    api(
        "agents-api/register-agent.json",
        &format!("/agents/{id}"),
        Some(&json!({"name": name, "skills": skills, "capacity": capacity}).to_string()),
    )
}

fn state_event(id: &str, state: &str, version: Option<u64>) -> Value {
    let mut body = json!({ "state": state });
    if let Some(v) = version {
        body["version"] = v.into();
    }
    let mut ev = api(
        "agents-api/change-agent-state.json",
        &format!("/agents/{id}/state"),
        Some(&body.to_string()),
    );
    ev["headers"]
        .as_object_mut()
        .unwrap()
        .remove("idempotency-key");
    ev
}

fn get_state_event(id: &str) -> Value {
    api(
        "agents-api/get-agent-state.json",
        &format!("/agents/{id}/state"),
        None,
    )
}

async fn get_agent(app: &Api, id: &str) -> (u16, Value) {
    let (status, body, _) = call(app, get_state_event(id)).await;
    (status, body)
}

/// A fresh stack (its tables, the API and the worker) with `agents` registered and AVAILABLE.
async fn with_available_agents(agents: &[(&str, &[&str], u32)]) -> (Env, Api, Worker) {
    let env = Env::new().await;
    let (app, worker) = (api_app(&env), worker_app(&env, &env.bus()));
    available_agents(&env, &app, &worker, agents).await;
    (env, app, worker)
}

/// Registers agents and makes them AVAILABLE through the whole command path.
async fn available_agents(env: &Env, app: &Api, worker: &Worker, agents: &[(&str, &[&str], u32)]) {
    for (id, skills, cap) in agents {
        let (status, _, _) = call(app, register_event(id, "Agent", skills, *cap)).await;
        assert_eq!(status, 202);
    }
    assert!(drain(env, worker).await.is_empty());
    for (id, _, _) in agents {
        let (status, _, _) = call(app, state_event(id, "AVAILABLE", None)).await;
        assert_eq!(status, 202);
    }
    assert!(drain(env, worker).await.is_empty());
}

fn match_event(conversation: &str, skills: &[&str]) -> Value {
    api(
        "agents-api/match-agent.json",
        "/agents/match",
        Some(&json!({"conversationId": conversation, "skills": skills}).to_string()),
    )
}

/// `GET /agents/{agentId}/commands/{commandId}`.
async fn command(app: &Api, agent: &str, command: &Value) -> (u16, Value) {
    let path = format!("/agents/{agent}/commands/{}", command.as_str().unwrap());
    let (status, body, _) = call(app, api("agents-api/get-agent-command.json", &path, None)).await;
    (status, body)
}

#[tokio::test]
async fn register_then_change_state_at_once_both_apply_in_order_and_show_in_queries() {
    let env = Env::new().await;
    let (app, worker) = (api_app(&env), worker_app(&env, &env.bus()));

    let (status, registered, headers) = call(&app, fixture("agents-api/register-agent.json")).await;
    assert_eq!(status, 202, "{registered}");
    assert_eq!(registered["agentId"], "agent-1");
    assert!(registered["commandId"].is_string());
    assert_eq!(headers["location"], "/agents/agent-1/state");
    // Visible at once, before the worker ran: registered, not yet applied (version 0).
    let (status, agent) = get_agent(&app, "agent-1").await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(
        (&agent["state"], &agent["version"]),
        (&json!("OFFLINE"), &json!(0))
    );
    assert_eq!(agent["name"], "Ada Lovelace");
    // So a state change sent right after the 202 is accepted too (read your writes)...
    let (status, changed, _) = call(&app, fixture("agents-api/change-agent-state.json")).await;
    assert_eq!(status, 202, "{changed}");
    assert_eq!(
        command(&app, "agent-1", &changed["commandId"]).await.0,
        404,
        "no outcome before the worker ran"
    );

    // ... and applied after the registration: one FIFO message group per agent.
    assert!(drain(&env, &worker).await.is_empty());
    let (status, agent) = get_agent(&app, "agent-1").await;
    assert_eq!(status, 200);
    assert_eq!(agent["state"], "AVAILABLE");
    assert_eq!(agent["name"], "Ada Lovelace");
    assert_eq!(agent["skills"], json!(["billing", "english"]));
    assert_eq!(agent["capacity"], 2);
    assert_eq!(agent["activeConversations"], 0);
    assert_eq!(agent["version"], 2, "two commands applied");
    assert!(agent["updatedAt"].is_string());
    for (cmd, version) in [(&registered, 1), (&changed, 2)] {
        let (status, outcome) = command(&app, "agent-1", &cmd["commandId"]).await;
        assert_eq!(status, 200, "{outcome}");
        assert_eq!(
            (&outcome["status"], &outcome["version"]),
            (&json!("APPLIED"), &json!(version)),
            "{outcome}"
        );
    }
    assert_eq!(
        command(&app, "other", &changed["commandId"]).await.0,
        404,
        "another agent's"
    );

    let published = env.published().await;
    let types: Vec<&str> = published.iter().map(|(t, _)| t.as_str()).collect();
    for t in ["AgentRegistered", "AgentStateChanged"] {
        assert_eq!(
            types.iter().filter(|x| **x == t).count(),
            1,
            "{t} in {types:?}"
        );
    }
    let changed = &published
        .iter()
        .find(|(t, _)| t == "AgentStateChanged")
        .unwrap()
        .1;
    assert_eq!(changed["data"]["previousState"], "OFFLINE");
    // The correlation id of the HTTP request travels into the events it caused.
    assert_eq!(
        changed["correlationId"],
        "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    );
}

#[tokio::test]
async fn list_filters_by_state_and_skill_and_paginates() {
    let env = Env::new().await;
    let (app, worker) = (api_app(&env), worker_app(&env, &env.bus()));
    available_agents(
        &env,
        &app,
        &worker,
        &[
            ("a1", &["billing"], 1),
            ("a2", &["billing", "french"], 1),
            ("a3", &["french"], 1),
        ],
    )
    .await;
    call(&app, register_event("a4", "Offline", &["billing"], 1)).await;
    assert!(drain(&env, &worker).await.is_empty());

    let list = |query: Value| fixture("agents-api/list-agents.json").tap_query(query);
    let ids = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agentId"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, body, _) = call(
        &app,
        list(json!({"state": "AVAILABLE", "skill": "billing"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(ids(&body), ["a1", "a2"]);
    let (_, body, _) = call(&app, list(json!({"state": "OFFLINE"}))).await;
    assert_eq!(ids(&body), ["a4"]);

    // Page through everything one at a time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut q = json!({"limit": "1"});
        if let Some(c) = &cursor {
            q["cursor"] = c.clone().into();
        }
        let (s, body, _) = call(&app, list(q)).await;
        assert_eq!(s, 200, "{body}");
        seen.extend(ids(&body));
        match body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["a1", "a2", "a3", "a4"]);

    for bad in [
        json!({"state": "BUSY"}),
        json!({"limit": "0"}),
        json!({"limit": "x"}),
        json!({"cursor": "garbage!"}),
        // Present but empty names no skill (the spec's Skill has minLength 1): not "any".
        json!({"skill": ""}),
        json!({"state": ""}),
        json!({"limit": ""}),
    ] {
        let (s, body, _) = call(&app, list(bad.clone())).await;
        assert_eq!(s, 422, "{bad}: {body}");
        let named = bad.as_object().unwrap().keys().next().unwrap();
        assert_eq!(&body["field"], named, "{bad}: {body}");
    }
    // A cursor of base64url text that names no page of this list: not found.
    let (s, body, _) = call(&app, list(json!({"cursor": "e30"}))).await;
    assert_eq!(s, 404, "{body}");
}

#[tokio::test]
async fn idempotency_key_replays_the_same_response_and_rejects_another_body() {
    let env = Env::new().await;
    let (app, worker) = (api_app(&env), worker_app(&env, &env.bus()));
    call(&app, fixture("agents-api/register-agent.json")).await;
    assert_eq!(
        call(&app, register_event("agent-2", "Bo", &[], 1)).await.0,
        202
    );
    assert!(drain(&env, &worker).await.is_empty());
    env.published().await;

    let commands = env.queue_url("AgentsCommandQueue");
    let ev = fixture("agents-api/change-agent-state.json");
    let (s1, b1, h1) = call(&app, ev.clone()).await;
    let (s2, b2, h2) = call(&app, ev.clone()).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(b1, b2, "same key and body: same response, same command id");
    assert_eq!(h1["location"], h2["location"]);
    assert_eq!(env.depth(&commands).await, 1, "one command queued");

    let mut other = ev.clone();
    other["body"] = json!({"state": "AWAY"}).to_string().into();
    let (s3, b3, h3) = call(&app, other).await;
    assert_eq!(s3, 422);
    assert_eq!(b3["field"], "Idempotency-Key");
    assert_eq!(h3["content-type"], "application/problem+json");
    // The same key on another agent is another request too.
    let mut elsewhere = api(
        "agents-api/change-agent-state.json",
        "/agents/agent-2/state",
        Some(r#"{"state": "AVAILABLE"}"#),
    );
    elsewhere["headers"]["idempotency-key"] = ev["headers"]["idempotency-key"].clone();
    let (s4, b4, _) = call(&app, elsewhere).await;
    assert_eq!((s4, &b4["field"]), (422, &json!("Idempotency-Key")), "{b4}");
    assert_eq!(env.depth(&commands).await, 1, "nothing more queued");

    // A key belongs to its caller: another supervisor's same key and body is its own command.
    let other_caller = system_tests::as_caller(ev.clone(), "sam", "supervisors", "");
    let (s5, b5, _) = call(&app, other_caller.clone()).await;
    assert_eq!(s5, 202, "{b5}");
    assert_ne!(b5["commandId"], b1["commandId"], "sam's own command");
    assert_eq!(call(&app, other_caller).await.1, b5, "sam's replay replays");
    assert_eq!(env.depth(&commands).await, 2);
    // Both are applied, each once.
    assert!(drain(&env, &worker).await.is_empty());
    assert_eq!(get_agent(&app, "agent-1").await.1["version"], 3);
}

#[tokio::test]
async fn match_reserves_once_per_conversation_and_conflicts_when_nobody_fits() {
    let (env, app, _worker) = with_available_agents(&[("solo", &["billing"], 1)]).await;
    env.published().await;

    let (s, m1, _) = call(&app, match_event("conv-1", &["billing"])).await;
    assert_eq!(s, 200, "{m1}");
    assert_eq!(m1["agentId"], "solo");
    assert_eq!(m1["conversationId"], "conv-1");
    assert!(m1["matchedAt"].is_string());
    let (s, m2, _) = call(&app, match_event("conv-1", &["billing"])).await;
    assert_eq!(s, 200);
    assert_eq!(m1, m2, "a repeated match returns the same agent");
    assert_eq!(get_agent(&app, "solo").await.1["activeConversations"], 1);

    let (s, p, h) = call(&app, match_event("conv-2", &["billing"])).await;
    assert_eq!(s, 409, "{p}");
    assert_eq!(h["content-type"], "application/problem+json");
    let (s, _, _) = call(&app, match_event("conv-3", &["german"])).await;
    assert_eq!(s, 409);

    // Both publications of the match carry one event id, so consumers see one event.
    let matched: Vec<Value> = env
        .published()
        .await
        .into_iter()
        .filter(|(t, _)| t == "AgentMatched")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(matched.len(), 2);
    assert_eq!(matched[0]["id"], matched[1]["id"]);
}

/// A repeated match while its agent still has room: the reservation is found by the write that
/// would create it (the match reads no reservation first), so the answer is the first match's
/// and no second slot is taken.
#[tokio::test]
async fn a_repeated_match_while_its_agent_has_room_takes_no_second_slot() {
    let (_env, app, _worker) = with_available_agents(&[("duo", &["billing"], 2)]).await;

    let (s, first, _) = call(&app, match_event("conv-a", &["billing"])).await;
    assert_eq!(s, 200, "{first}");
    let (s, again, _) = call(&app, match_event("conv-a", &["billing"])).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(first, again, "a repeated match returns the first match");
    assert_eq!(get_agent(&app, "duo").await.1["activeConversations"], 1);

    let (s, other, _) = call(&app, match_event("conv-b", &["billing"])).await;
    assert_eq!(s, 200, "{other}");
    assert_eq!(other["agentId"], "duo");
    assert_eq!(get_agent(&app, "duo").await.1["activeConversations"], 2);
}

#[tokio::test]
async fn concurrent_matches_never_exceed_capacity() {
    let agents: [(&str, &[&str], u32); 3] = [
        ("c1", &["chat"], 2),
        ("c2", &["chat"], 3),
        ("c3", &["chat"], 1),
    ];
    let (_env, app, _worker) = with_available_agents(&agents).await;
    let total_capacity = 6;
    let requests = 24;

    let app = &app;
    let results = futures::future::join_all(
        (0..requests)
            .map(|i| async move { call(app, match_event(&format!("conv-{i}"), &["chat"])).await }),
    )
    .await;
    let ok: Vec<&Value> = results
        .iter()
        .filter(|r| r.0 == 200)
        .map(|r| &r.1)
        .collect();
    let conflicts = results.iter().filter(|r| r.0 == 409).count();
    assert_eq!(
        ok.len(),
        total_capacity,
        "exactly min(requests, capacity) succeed"
    );
    assert_eq!(
        conflicts,
        requests - total_capacity,
        "the rest get 409, never 5xx"
    );
    for (id, _, cap) in agents {
        let held = ok.iter().filter(|m| m["agentId"] == id).count();
        assert_eq!(held as u32, cap, "{id} holds exactly its capacity");
        assert_eq!(get_agent(app, id).await.1["activeConversations"], cap);
    }
}

#[tokio::test]
async fn conversation_closed_frees_the_slot_once_and_fixture_commands_apply_once() {
    let (_env, app, worker) = with_available_agents(&[("agent-1", &["billing"], 1)]).await;
    let (s, _, _) = call(&app, match_event("conv-1", &["billing"])).await;
    assert_eq!(s, 200);
    assert_eq!(call(&app, match_event("conv-2", &["billing"])).await.0, 409);

    // The event fixture: ConversationClosed for conv-1, delivered twice, as at-least-once
    // delivery may.
    let sqs = |path: &str| -> aws_lambda_events::event::sqs::SqsEvent {
        serde_json::from_value(fixture(path)).unwrap()
    };
    for _ in 0..2 {
        let resp = shared::worker::handle(&worker, sqs("agents-worker/sqs-events.json")).await;
        assert!(resp.batch_item_failures.is_empty());
    }
    let (_, agent) = get_agent(&app, "agent-1").await;
    assert_eq!(agent["activeConversations"], 0, "freed exactly once");
    assert_eq!(
        (&agent["name"], &agent["version"]),
        (&json!("Agent"), &json!(2))
    );
    let (s, m, _) = call(&app, match_event("conv-2", &["billing"])).await;
    assert_eq!((s, m["agentId"].as_str()), (200, Some("agent-1")));

    // The command fixture (a profile update and a state change of agent-1, in one message
    // group), delivered twice: applied once, in order.
    for _ in 0..2 {
        let resp = shared::worker::handle(&worker, sqs("agents-worker/sqs-batch.json")).await;
        assert!(resp.batch_item_failures.is_empty());
    }
    let (_, agent) = get_agent(&app, "agent-1").await;
    assert_eq!(
        (&agent["name"], &agent["state"], &agent["version"]),
        (&json!("Ada Lovelace"), &json!("AVAILABLE"), &json!(4)),
        "{agent}"
    );
}

/// `POST /agents/{agentId}/state` with a body `{"state": …}` and, when given, a `version`
/// precondition; without an `Idempotency-Key`.
async fn change(app: &Api, id: &str, state: &str, version: Option<Value>) -> (u16, Value) {
    let mut body = json!({ "state": state });
    if let Some(v) = version {
        body["version"] = v;
    }
    let mut ev = state_event(id, state, None);
    ev["body"] = body.to_string().into();
    let (status, body, _) = call(app, ev).await;
    (status, body)
}

/// The server orders an agent's changes: no client-chosen value can make later commands
/// no-ops. A `version` is a precondition (`409` stale, `422` never issued), checked again when
/// the command's turn comes; a command it rejects then says so.
#[tokio::test]
async fn the_server_orders_changes_and_a_version_is_only_a_precondition() {
    let env = Env::new().await;
    let (app, worker) = (api_app(&env), worker_app(&env, &env.bus()));
    assert_eq!(
        call(&app, register_event("zed", "Zed", &["x"], 1)).await.0,
        202
    );

    // A far-future version, a version in the wrong unit (ns since 1970), one the agent never
    // reached: none holds (a 409 naming it: a version is a precondition), and later valid
    // commands of anybody go through. A negative one is no version at all (422).
    for far in [
        json!(18_446_744_073_709_551_615u64),
        json!(1_765_000_000_000_000_000u64),
        json!(7),
    ] {
        let (status, body) = change(&app, "zed", "AWAY", Some(far.clone())).await;
        assert_eq!(
            (status, &body["field"], &body["type"]),
            (
                409,
                &json!("version"),
                &json!("/problems/precondition-failed")
            ),
            "{far}: {body}"
        );
    }
    let (status, body) = change(&app, "zed", "AWAY", Some(json!(-1))).await;
    assert_eq!((status, &body["field"]), (422, &json!("version")), "{body}");
    let mut huge = register_event("zed", "Zed", &["x"], 1);
    huge["body"] = json!({"name": "Zed", "capacity": 1, "version": u64::MAX})
        .to_string()
        .into();
    let (status, body, _) = call(&app, huge).await;
    assert_eq!((status, &body["field"]), (409, &json!("version")), "{body}");
    assert_eq!(change(&app, "zed", "AVAILABLE", None).await.0, 202);
    assert!(drain(&env, &worker).await.is_empty());
    let (_, agent) = get_agent(&app, "zed").await;
    assert_eq!(
        (&agent["state"], &agent["version"]),
        (&json!("AVAILABLE"), &json!(2))
    );

    // A stale precondition is refused at once, naming the version.
    let (status, body) = change(&app, "zed", "AWAY", Some(json!(1))).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("version"),
        "{body}"
    );

    // A precondition that holds when accepted but not when applied: another command accepted
    // before it is applied first, so it is rejected, and its outcome says so.
    let (status, first) = change(&app, "zed", "OFFLINE", None).await;
    assert_eq!(status, 202, "{first}");
    let (status, second) = change(&app, "zed", "AWAY", Some(json!(2))).await;
    assert_eq!(
        status, 202,
        "the agent is still at 2 when accepted: {second}"
    );
    assert!(drain(&env, &worker).await.is_empty());
    let (_, agent) = get_agent(&app, "zed").await;
    assert_eq!(
        (&agent["state"], &agent["version"]),
        (&json!("OFFLINE"), &json!(3))
    );
    let (status, outcome) = command(&app, "zed", &second["commandId"]).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["status"], "REJECTED");
    assert!(
        outcome["reason"].as_str().unwrap().contains("version 3"),
        "{outcome}"
    );
    assert_eq!(
        command(&app, "zed", &first["commandId"]).await.1["version"],
        3
    );
}

/// Two state changes from two callers at once end in the order the server accepted them: the
/// order of their queue (its sequence numbers), whatever their clocks.
#[tokio::test]
async fn concurrent_changes_apply_in_the_order_the_server_accepted_them() {
    let env = Env::new().await;
    let (app, worker) = (api_app(&env), worker_app(&env, &env.bus()));
    assert_eq!(
        call(&app, register_event("con", "Con", &[], 1)).await.0,
        202
    );
    assert!(drain(&env, &worker).await.is_empty());
    for round in 0..5 {
        let from = |sub: &str, state: &str| {
            let ev = state_event("con", state, None);
            call(&app, system_tests::as_caller(ev, sub, "agents", ""))
        };
        let (a, b) = futures::join!(from("ann", "AWAY"), from("bob", "AVAILABLE"));
        assert_eq!((a.0, b.0), (202, 202));
        let url = env.queue_url("AgentsCommandQueue");
        let queued = env.receive(&url, 30).await;
        assert_eq!(queued.len(), 2, "round {round}");
        // SQS hands a message group over in the order it accepted the messages (on AWS, their
        // sequence numbers'; moto's are random, its delivery order is the witness).
        let last = queued.last().unwrap();
        let accepted_last = if last.body().unwrap().contains("AWAY") {
            "AWAY"
        } else {
            "AVAILABLE"
        };
        let resp = shared::worker::handle(&worker, system_tests::sqs_event(&queued)).await;
        assert!(resp.batch_item_failures.is_empty());
        env.delete(&url, &queued).await;
        let (_, agent) = get_agent(&app, "con").await;
        assert_eq!(agent["state"], accepted_last, "round {round}: {agent}");
        assert_eq!(
            agent["version"],
            1 + 2 * (round + 1),
            "round {round}: both applied"
        );
    }
}

#[tokio::test]
async fn a_poison_message_fails_alone_and_reaches_the_dlq() {
    let env = Env::new().await;
    let (app, worker) = (api_app(&env), worker_app(&env, &env.bus()));
    let url = env.queue_url("AgentsQueue");
    // A good command on each side of a message that can never be processed.
    call(&app, register_event("good-1", "One", &[], 1)).await;
    env.sqs
        .send_message()
        .queue_url(&url)
        .message_body(r#"{"detail": {"type": "NoSuchCommand"}}"#)
        .send()
        .await
        .unwrap();
    call(&app, register_event("good-2", "Two", &[], 1)).await;

    let failed = drain(&env, &worker).await;
    assert_eq!(failed.len(), 1, "only the poison message fails");
    assert_eq!(get_agent(&app, "good-1").await.0, 200);
    assert_eq!(get_agent(&app, "good-2").await.0, 200);

    // maxReceiveCount is 5: SQS moves it to the DLQ on the next receive after that.
    let within = Duration::from_secs(30);
    let dlq = env
        .drain_until_dead_lettered("AgentsQueue", within, async || {
            drain(&env, &worker).await;
        })
        .await;
    assert_eq!(env.depth(&dlq).await, 1);
    let dead = env.receive(&dlq, 30).await;
    assert!(dead[0].body().unwrap().contains("NoSuchCommand"));
}

#[tokio::test]
async fn an_event_that_failed_to_publish_is_published_on_redelivery() {
    let env = Env::new().await;
    let app = api_app(&env);
    call(&app, register_event("a1", "Ann", &[], 1)).await;
    env.published().await;

    // The first attempt writes the agent, then cannot publish (the bus does not exist).
    let broken = worker_app(&env, "no-such-bus");
    let failed = drain(&env, &broken).await;
    assert_eq!(failed.len(), 1, "the message fails so SQS redelivers it");
    assert_eq!(get_agent(&app, "a1").await.0, 200, "the effect was written");
    assert!(env.published().await.is_empty());

    // Redelivery publishes the stored event without applying the command twice.
    let worker = worker_app(&env, &env.bus());
    assert!(drain(&env, &worker).await.is_empty());
    let events = env.published().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "AgentRegistered");
    assert_eq!(env.depth(&env.queue_url("AgentsCommandQueue")).await, 0);
}

#[tokio::test]
async fn bad_input_gets_a_problem_never_a_5xx_and_writes_nothing() {
    let env = Env::new().await;
    let app = api_app(&env);
    let huge = format!(r#"{{"name": "{}", "capacity": 1}}"#, "x".repeat(70_000));
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (
            register_event("a1", "N", &[], 1).tap_body("{not json"),
            400,
            None,
        ),
        (
            register_event("a1", "N", &[], 1).tap_body(r#"{"name": "N", "capacity": "two"}"#),
            422,
            Some("capacity"),
        ),
        (
            register_event("a1", "N", &[], 1).tap_body(r#"{"name": "N", "capacity": 99}"#),
            422,
            Some("capacity"),
        ),
        (
            register_event("a1", "N", &[], 1).tap_body(r#"{"capacity": 1}"#),
            422,
            Some("body"),
        ),
        (
            register_event("a1", "N", &[], 1)
                .tap_body(r#"{"name": "N", "capacity": 1, "skills": ["ok", "not ok"]}"#),
            422,
            Some("skills[1]"),
        ),
        (
            register_event("a1", "N", &[], 1)
                .tap_body(r#"{"name": "N", "capacity": 1, "admin": true}"#),
            422,
            Some("admin"),
        ),
        (
            register_event("a1", "N", &[], 1).tap_body(r#"[1, 2]"#),
            422,
            Some("body"),
        ),
        (register_event("a1", "N", &[], 1).tap_body(""), 400, None),
        (register_event("a1", "N", &[], 1).tap_body(&huge), 413, None),
        (
            register_event("bad%20id", "N", &[], 1),
            422,
            Some("agentId"),
        ),
        (
            register_event(&"x".repeat(65), "N", &[], 1),
            422,
            Some("agentId"),
        ),
        (
            register_event("a1", "N", &[], 1).tap_header("content-type", "text/plain"),
            415,
            None,
        ),
        (state_event("a1", "SLEEPING", None), 422, Some("state")),
        (
            state_event("a1", "AVAILABLE", None).tap_body(r#"{"state": 1}"#),
            422,
            Some("state"),
        ),
        (
            state_event("a1", "AVAILABLE", None).tap_header("idempotency-key", ""),
            422,
            Some("Idempotency-Key"),
        ),
        (
            state_event("never-registered", "AVAILABLE", None),
            404,
            None,
        ),
        (match_event("conv 1", &[]), 422, Some("conversationId")),
        (
            match_event("c1", &["billing"]).tap_body(r#"{"skills": []}"#),
            422,
            Some("body"),
        ),
        (
            api(
                "agents-api/get-agent-state.json",
                "/agents/nobody/state",
                None,
            ),
            404,
            None,
        ),
        (
            api(
                "agents-api/get-agent-state.json",
                "/agents/bad$id/state",
                None,
            ),
            404,
            None,
        ),
        (
            api("agents-api/get-agent-state.json", "/nowhere", None),
            404,
            None,
        ),
        // A route the API does not have never reaches the function on AWS (the gateway
        // answers it); a function that gets one anyway answers 404 too.
        (
            api("agents-api/get-agent-state.json", "/agents/a1", None),
            404,
            None,
        ),
    ];
    for (ev, want, field) in cases {
        let desc = format!(
            "{} {}",
            ev["requestContext"]["http"]["method"], ev["rawPath"]
        );
        let (status, body, headers) = call(&app, ev).await;
        system_tests::assert_problem(&desc, (status, &body, &headers), want, field);
    }
    assert_eq!(env.item_count("AgentsTable").await, 0, "nothing written");
    assert_eq!(
        env.depth(&env.queue_url("AgentsCommandQueue")).await,
        0,
        "nothing sent"
    );
}

#[tokio::test]
async fn an_unreachable_dependency_answers_503_fast() {
    // A port nothing listens on: connections are refused at once; the SDK gives up within
    // the short timeouts of `shared::aws::load`.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let sdk = shared::aws::configure(aws_config::defaults(aws_config::BehaviorVersion::latest()))
        .endpoint_url(&dead)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    let vars = shared::config::Vars::from(std::collections::BTreeMap::from([
        ("TABLE_NAME".to_owned(), "t".to_owned()),
        (
            "AGENTS_COMMAND_QUEUE_URL".to_owned(),
            format!("{dead}/123456789012/commands.fifo"),
        ),
        ("EVENT_BUS_NAME".to_owned(), "b".to_owned()),
    ]));
    let app = agents_api::init(&sdk, &vars).unwrap();
    for ev in [
        fixture("agents-api/get-agent-state.json"),
        fixture("agents-api/register-agent.json"),
        fixture("agents-api/match-agent.json"),
    ] {
        let started = Instant::now();
        let (status, body, _) = call(&app, ev).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            !body["detail"].as_str().unwrap().contains("127.0.0.1"),
            "no internals leak"
        );
    }
}

/// The emulator goes dark and comes back while commands keep arriving: during the outage the
/// API answers 503 quickly; every command that got a 202 is applied in the end.
#[tokio::test]
async fn an_outage_under_load_answers_503_fast_and_loses_no_accepted_command() {
    let env = Env::new().await;
    let proxy = system_tests::Proxy::start(system_tests::endpoint()).await;
    let sdk = shared::aws::configure(aws_config::defaults(aws_config::BehaviorVersion::latest()))
        .endpoint_url(&proxy.endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    let app = agents_api::init(&sdk, &env.vars("AgentsApiFunction")).unwrap();
    let worker = worker_app(&env, &env.bus());

    let mut accepted = Vec::new();
    let mut unavailable = 0;
    for round in 0..3 {
        proxy.set_up(round != 1);
        let app = &app;
        let results = futures::future::join_all((0..8).map(|i| async move {
            let id = format!("r{round}-{i}");
            let started = Instant::now();
            let (status, _, _) = call(app, register_event(&id, "Load", &[], 1)).await;
            (id, status, started.elapsed())
        }))
        .await;
        for (id, status, took) in results {
            match status {
                202 => accepted.push(id),
                503 => {
                    unavailable += 1;
                    assert!(took < Duration::from_secs(3), "503 took {took:?}");
                }
                other => panic!("{id}: unexpected {other}"),
            }
        }
    }
    assert!(
        unavailable >= 8,
        "the dark round answered 503: {unavailable}"
    );
    assert!(
        accepted.len() >= 16,
        "the two lit rounds were accepted: {accepted:?}"
    );

    proxy.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        drain(&env, &worker).await;
        let mut missing = Vec::new();
        for id in &accepted {
            if get_agent(&app, id).await.0 != 200 {
                missing.push(id.clone());
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "accepted but never applied: {missing:?}"
        );
    }
}

/// The API and worker of `env` on a transport whose faults the returned switches control.
async fn faulty_apps(env: &Env) -> (Api, Worker, std::sync::Arc<system_tests::faults::Faults>) {
    let (sdk, faults) = system_tests::faults::faulty_sdk(system_tests::endpoint()).await;
    let worker = worker_app_on(env, &sdk, &env.bus());
    (api_app_on(env, &sdk), worker, faults)
}

/// Sends `ev` to `api`: the answer must be a `503` with `Retry-After` within 3 s (never a hang
/// or a `500`).
async fn assert_503_fast(api: &Api, ev: &Value) {
    let started = Instant::now();
    let resp = agents_api::handle(api, request(ev)).await;
    assert_eq!(resp.status(), 503, "{}", body_json(&resp));
    assert!(resp.headers().contains_key("retry-after"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// The AgentRegistered events among `events`, as (agent, envelope id).
fn registrations(events: &[(String, Value)]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|(kind, _)| kind == "AgentRegistered")
        .map(|(_, e)| {
            let agent = e["data"]["agentId"].as_str().unwrap_or_default().to_owned();
            (agent, e["id"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// Asserts that `registrations` (as [`registrations`] lists them) hold exactly one envelope id
/// for agent `id`, however many times it was delivered: consumers deduplicate by envelope id,
/// so one id means one application.
fn assert_registered_once(registrations: &[(String, String)], id: &str) {
    let event_ids: std::collections::BTreeSet<&String> = registrations
        .iter()
        .filter(|(agent, _)| agent == id)
        .map(|(_, e)| e)
        .collect();
    assert_eq!(
        event_ids.len(),
        1,
        "{id}: exactly one AgentRegistered: {registrations:?}"
    );
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_and_applies_nothing_twice() {
    let env = Env::new().await;
    let app = api_app(&env);
    let ids: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    for id in &ids {
        let (status, body, _) = call(&app, register_event(id, "Kim", &["billing"], 2)).await;
        assert_eq!(status, 202, "{body}");
    }
    env.published().await;
    let url = env.queue_url("AgentsCommandQueue");
    let batch = env.receive(&url, 60).await;
    assert_eq!(batch.len(), 10, "the ten commands, in one batch");

    // The worker dies right after the emulator committed its 4th transaction: the rest of the
    // batch is in flight or not started, nothing is answered to SQS, nothing deleted.
    let (_, dying, faults) = faulty_apps(&env).await;
    faults.crash_after_transactions(4);
    tokio::select! {
        biased;
        () = faults.crashed() => {}
        resp = shared::worker::handle(&dying, system_tests::sqs_event(&batch)) => {
            panic!("the worker finished the batch instead of dying: {resp:?}")
        }
    }
    drop(dying);
    let mut written = 0;
    for id in &ids {
        written += usize::from(get_agent(&app, id).await.0 == 200);
    }
    let before = registrations(&env.published().await);
    assert!(
        written >= 4,
        "the crash came after 4 commits, saw {written}"
    );
    assert!(
        before.len() <= 4,
        "at most the committed ones published before dying: {before:?}"
    );

    // SQS redelivers the whole batch (the visibility timeout ends; made immediate here), to a
    // new worker, twice for good measure: every command applied once, every event published.
    env.retry_now(&url, &batch).await;
    let worker = worker_app(&env, &env.bus());
    let again = env.receive(&url, 60).await;
    assert_eq!(again.len(), 10, "nothing lost: all ten redelivered");
    let resp = shared::worker::handle(&worker, system_tests::sqs_event(&again)).await;
    assert!(resp.batch_item_failures.is_empty());
    let resp = shared::worker::handle(&worker, system_tests::sqs_event(&again)).await;
    assert!(
        resp.batch_item_failures.is_empty(),
        "a duplicate changes nothing"
    );
    env.delete(&url, &again).await;

    let after = registrations(&env.published().await);
    for id in &ids {
        let (status, agent) = get_agent(&app, id).await;
        assert_eq!(
            (status, &agent["name"]),
            (200, &json!("Kim")),
            "{id}: {agent}"
        );
        // Even where the crash makes the bus deliver the same event twice.
        assert_registered_once(&[before.as_slice(), &after].concat(), id);
    }
}

#[tokio::test]
async fn a_burst_of_duplicate_deliveries_applies_once() {
    let env = Env::new().await;
    let app = api_app(&env);
    call(&app, register_event("dup", "Dee", &["billing"], 3)).await;
    let url = env.queue_url("AgentsCommandQueue");
    let original = env.receive(&url, 60).await;
    assert_eq!(original.len(), 1);
    env.published().await;

    // Eight workers get the same message at once, three times in each batch.
    let workers: Vec<Worker> = (0..8).map(|_| worker_app(&env, &env.bus())).collect();
    let body = original[0].body().unwrap().to_owned();
    let results = futures::future::join_all(workers.iter().map(|w| {
        shared::worker::handle(w, sqs_bodies(&[body.clone(), body.clone(), body.clone()]))
    }))
    .await;
    for resp in results {
        assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    }
    env.delete(&url, &original).await;
    let (_, agent) = get_agent(&app, "dup").await;
    assert_eq!(
        (&agent["capacity"], &agent["version"]),
        (&json!(3), &json!(1)),
        "{agent}"
    );
    // One event, maybe delivered twice.
    let published = registrations(&env.published().await);
    assert!(
        published.iter().all(|(agent, _)| agent == "dup"),
        "{published:?}"
    );
    assert_registered_once(&published, "dup");
}

#[tokio::test]
async fn throttled_dynamodb_is_retried_with_backoff_then_the_message_goes_to_the_dlq() {
    let env = Env::new().await;
    let app = api_app(&env);
    let (api, worker, faults) = faulty_apps(&env).await;

    // A short burst of throttling: the SDK retries after a backoff, the message succeeds.
    call(&app, register_event("t1", "Tom", &[], 1)).await;
    faults.throttle(1);
    let failed = env
        .drain("AgentsCommandQueue", |e| shared::worker::handle(&worker, e))
        .await;
    assert!(failed.is_empty(), "retried within the invocation");
    assert_eq!(faults.throttled(), 1);
    assert_eq!(get_agent(&app, "t1").await.0, 200);

    // Sustained throttling: every attempt of every delivery is throttled, the message fails
    // each time (retryable), and after maxReceiveCount (5) SQS moves it to the DLQ.
    call(&app, register_event("t2", "Tim", &[], 1)).await;
    faults.throttle(usize::MAX);
    let mut deliveries = 0;
    let within = Duration::from_secs(120);
    let dlq = env
        .drain_until_dead_lettered("AgentsCommandQueue", within, async || {
            let before = faults.throttled();
            let failed = env
                .drain("AgentsCommandQueue", |e| shared::worker::handle(&worker, e))
                .await;
            if !failed.is_empty() {
                deliveries += 1;
                assert!(
                    faults.throttled() - before >= 2,
                    "the SDK retries a throttled call before the message fails"
                );
            }
        })
        .await;
    assert_eq!(deliveries, 5, "maxReceiveCount deliveries, then the DLQ");

    // Meanwhile a query answers 503 fast (with Retry-After), never hangs or 500s.
    assert_503_fast(&api, &get_state_event("t1")).await;

    // Once the throttling ends, the dead command redriven from the DLQ is applied.
    faults.throttle(0);
    let dead = env.receive(&dlq, 30).await;
    assert_eq!(dead.len(), 1);
    env.sqs
        .send_message()
        .queue_url(env.queue_url("AgentsCommandQueue"))
        .message_body(dead[0].body().unwrap())
        .message_group_id("t2")
        .message_deduplication_id("redriven")
        .send()
        .await
        .unwrap();
    env.delete(&dlq, &dead).await;
    assert!(drain(&env, &worker).await.is_empty());
    assert_eq!(get_agent(&app, "t2").await.0, 200, "nothing lost");
}

/// On real DynamoDB a transaction that touches an item another transaction holds is cancelled
/// with the reason `TransactionConflict` (the SDK does not retry it), and a single-item write
/// fails with `TransactionConflictException`. Both are retried with backoff; still contended,
/// they are a `503` with `Retry-After` (a failed message in a worker), never a `500`.
#[tokio::test]
async fn contended_writes_are_retried_then_answer_503_never_500() {
    let (env, app, _worker) = with_available_agents(&[("busy", &["billing"], 5)]).await;
    let (api, faulty_worker, faults) = faulty_apps(&env).await;

    // A match whose reservation transaction loses twice to contention: retried, reserved.
    faults.contend("TransactWriteItems", 2);
    let resp = agents_api::handle(&api, request(&match_event("c-retried", &["billing"]))).await;
    assert_eq!(resp.status(), 200, "{}", body_json(&resp));
    assert_eq!(faults.contended(), 2);

    // Sustained contention: a 503 with Retry-After, fast, and nothing reserved.
    faults.contend("TransactWriteItems", usize::MAX);
    assert_503_fast(&api, &match_event("c-contended", &["billing"])).await;
    assert!(faults.contended() >= 2 + 5, "retried before giving up");

    // A worker's transaction under sustained contention fails the message (SQS redelivers it);
    // once the contention ends, the redelivery applies it.
    let (status, _, _) = call(&app, state_event("busy", "AWAY", None)).await;
    assert_eq!(status, 202);
    let failed = env
        .drain("AgentsCommandQueue", |e| {
            shared::worker::handle(&faulty_worker, e)
        })
        .await;
    assert_eq!(
        failed.len(),
        1,
        "the contended message fails, to be redelivered"
    );
    faults.contend("TransactWriteItems", 0);
    assert!(drain(&env, &faulty_worker).await.is_empty());
    assert_eq!(get_agent(&app, "busy").await.1["state"], "AWAY");
    faults.contend("", 0);
    let resp = agents_api::handle(&api, request(&match_event("c-contended", &["billing"]))).await;
    assert_eq!(resp.status(), 409, "AWAY now: {}", body_json(&resp));
}

/// A state change whose hand-off lost its answer (the command reached the queue, the API saw a
/// timeout and answered `503`) and was then applied: the client's retry with the same key is
/// the same command, accepted (`202`, the same command id), not refused because the version
/// moved on, by that very command; and it is applied once.
#[tokio::test]
async fn a_retry_after_a_lost_hand_off_answer_is_the_same_command_even_with_a_version() {
    let env = Env::new().await;
    let app = api_app(&env);
    let worker = worker_app(&env, &env.bus());
    let (status, _, _) = call(&app, register_event("lost-1", "Lou", &["billing"], 2)).await;
    assert_eq!(status, 202);
    assert!(drain(&env, &worker).await.is_empty());
    assert_eq!(get_agent(&app, "lost-1").await.1["version"], 1);

    let (sdk, faults) = system_tests::faults::faulty_sdk(system_tests::endpoint()).await;
    let faulty = api_app_on(&env, &sdk);
    let mut ev = state_event("lost-1", "AVAILABLE", Some(1));
    ev["headers"]["idempotency-key"] = "lost-key".into();
    faults.lose_answers("SendMessage", 3);
    let (status, body, _) = call(&faulty, ev.clone()).await;
    assert_eq!(status, 503, "the API saw its send time out: {body}");
    assert!(drain(&env, &worker).await.is_empty());
    let applied = get_agent(&app, "lost-1").await.1;
    assert_eq!(
        (&applied["state"], &applied["version"]),
        (&json!("AVAILABLE"), &json!(2)),
        "the send went through and was applied"
    );

    let (status, retry, _) = call(&app, ev.clone()).await;
    assert_eq!(status, 202, "the same request, accepted: {retry}");
    assert!(drain(&env, &worker).await.is_empty());
    assert_eq!(
        get_agent(&app, "lost-1").await.1["version"],
        2,
        "applied once"
    );
    let (status, outcome) = command(&app, "lost-1", &retry["commandId"]).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        (&outcome["status"], &outcome["version"]),
        (&json!("APPLIED"), &json!(2)),
        "the lost attempt's command: {outcome}"
    );
    assert_eq!(call(&app, ev).await.1, retry, "and replayed from then on");
}
