//! A short run of the real handlers on a moto server: every response validates against the
//! operation it answers.

use super::*;

// ------------------------------------------------------------------ a real run

/// Every response of the run, checked against the operation it answers.
struct Run {
    spec: Value,
    failures: Vec<String>,
    seen: BTreeSet<String>,
}

impl Run {
    fn new() -> Self {
        Run {
            spec: spec(),
            failures: Vec::new(),
            seen: BTreeSet::new(),
        }
    }

    /// Checks `resp` against `METHOD route` of the spec (status documented, content type
    /// documented, body valid, required headers present) and returns its body.
    fn check(&mut self, method: &str, route: &str, resp: &Response<Body>) -> (u16, Value) {
        let status = resp.status().as_u16();
        let name = format!("{method} {route} → {status}");
        self.seen.insert(name.clone());
        let body: Value = serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null);
        let spec = &self.spec;
        let op = &spec["paths"][route][method.to_lowercase()];
        let Some(documented) = op["responses"].get(status.to_string()) else {
            self.failures
                .push(format!("{name}: status not documented ({body})"));
            return (status, body);
        };
        let documented = resolve(spec, documented);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        match documented["content"].get(&content_type) {
            None => self.failures.push(format!(
                "{name}: content type {content_type:?} not documented"
            )),
            Some(media) => {
                let errors = Validator::new(spec).errors(&media["schema"], &body);
                if !errors.is_empty() {
                    self.failures
                        .push(format!("{name}: {} in {body}", errors.join("; ")));
                }
            }
        }
        for (header, h) in documented["headers"].as_object().into_iter().flatten() {
            let h = resolve(spec, h);
            let value = resp.headers().get(header.as_str());
            if h["required"] == true && value.is_none() {
                self.failures
                    .push(format!("{name}: required header {header} missing"));
            }
            if let Some(v) = value.and_then(|v| v.to_str().ok()) {
                let errors = Validator::new(spec).errors(&h["schema"], &json!(v));
                if !errors.is_empty() {
                    self.failures
                        .push(format!("{name}: header {header}: {errors:?}"));
                }
            }
        }
        (status, body)
    }
}

/// An API Gateway v2 event for `method path` with `body` (JSON) and extra headers.
/// A request of a trader owning `acc-1` (the account this run trades in).
fn event(method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Value {
    let mut ev = system_tests::as_trader(fixture("health-api/health.json"), "acc-1");
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    ev["rawPath"] = path.into();
    ev["requestContext"]["http"]["path"] = path.into();
    ev["requestContext"]["http"]["method"] = method.into();
    if !query.is_empty() {
        ev["rawQueryString"] = query.into();
        let params: serde_json::Map<String, Value> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        ev["queryStringParameters"] = params.into();
    }
    if let Some(b) = body {
        ev["body"] = b.into();
        ev["headers"]["content-type"] = "application/json".into();
    }
    for (k, v) in headers {
        ev["headers"][k.to_ascii_lowercase()] = (*v).into();
    }
    system_tests::route(&mut ev);
    ev
}

/// The functions of one run, each built from the template's environment for a fresh stack.
struct Apps {
    env: Env,
    agents: agents_api::AwsApp,
    agents_worker: agents_worker::AwsApp,
    conversations: conversations_api::AwsApp,
    trades: trades_api::AwsApp,
    trades_worker: trades_worker::AwsApp,
    positions: positions_api::AwsApp,
    positions_worker: positions_worker::AwsApp,
    ledger: ledger_api::AwsApp,
    ledger_worker: ledger_worker::AwsApp,
    health: health_api::App,
    ops: ops_api::App,
    analytics: analytics_api::AwsApp,
    docs: docs_api::App,
}

async fn apps() -> Apps {
    let env = Env::new().await;
    let vars = |f: &str| env.vars(f);
    Apps {
        agents: agents_api::init(&env.sdk, &vars("AgentsApiFunction")).unwrap(),
        agents_worker: agents_worker::init(&env.sdk, &vars("AgentsWorkerFunction")).unwrap(),
        conversations: conversations_api::init(&env.sdk, &vars("ConversationsApiFunction"))
            .unwrap(),
        trades: trades_api::init(&env.sdk, &vars("TradesApiFunction")).unwrap(),
        trades_worker: trades_worker::init(&env.sdk, &vars("TradesWorkerFunction")).unwrap(),
        positions: positions_api::init(&env.sdk, &vars("PositionsApiFunction")).unwrap(),
        positions_worker: positions_worker::init(&env.sdk, &vars("PositionsWorkerFunction"))
            .unwrap(),
        ledger: ledger_api::init(&env.sdk, &vars("LedgerApiFunction")).unwrap(),
        ledger_worker: ledger_worker::init(&env.sdk, &vars("LedgerWorkerFunction")).unwrap(),
        health: health_api::init(&env.sdk, &vars("HealthFunction")).unwrap(),
        ops: ops_api::init(&env.sdk, &vars("OpsFunction")).unwrap(),
        analytics: analytics_api::init(&env.sdk, &vars("AnalyticsApiFunction")).unwrap(),
        docs: docs_api::App::new().unwrap(),
        env,
    }
}

/// Calls `handler` with `method path` (the spec's `route`), checks the response in `run`.
macro_rules! call {
    ($run:ident, $handler:expr, $method:expr, $route:expr, $path:expr, $body:expr, $headers:expr) => {{
        let path: String = $path;
        let resp = $handler(request(&event($method, &path, $body, $headers))).await;
        $run.check($method, $route, &resp)
    }};
    ($run:ident, $handler:expr, $method:expr, $route:expr, $path:expr) => {
        call!($run, $handler, $method, $route, $path, None, &[])
    };
}

impl Run {
    /// Fails the test with every response that broke the spec; `at_least` responses seen.
    fn assert_valid(&self, at_least: usize) {
        assert!(
            self.failures.is_empty(),
            "responses that break openapi.yaml:\n{}",
            self.failures.join("\n")
        );
        assert!(self.seen.len() >= at_least, "{:?}", self.seen);
    }
}

/// Agents: register, apply, AVAILABLE, list, match (200, then 409 for lack of capacity), every refusal.
#[tokio::test]
async fn agent_responses_validate_against_the_spec() {
    let Apps {
        env,
        agents,
        agents_worker,
        ledger,
        ..
    } = apps().await;
    let mut run = Run::new();
    let agents_h = |r| agents_api::handle(&agents, r);
    // Agents: register, apply, AVAILABLE, list, match (200, then 409 for lack of capacity).
    let reg = r#"{"name": "Ada", "skills": ["billing"], "capacity": 1}"#;
    let route = "/agents/{agentId}";
    assert_eq!(
        call!(
            run,
            agents_h,
            "PUT",
            route,
            "/agents/ada".to_string(),
            Some(reg),
            &[]
        )
        .0,
        202
    );
    assert_eq!(
        call!(
            run,
            agents_h,
            "PUT",
            route,
            "/agents/a%20b".to_string(),
            Some(reg),
            &[]
        )
        .0,
        422
    );
    let too_big = format!(
        r#"{{"name": "{}"}}"#,
        "x".repeat(shared::http::MAX_BODY_BYTES)
    );
    assert_eq!(
        call!(
            run,
            agents_h,
            "PUT",
            route,
            "/agents/ada".to_string(),
            Some(&too_big),
            &[]
        )
        .0,
        413
    );
    assert_eq!(
        call!(
            run,
            agents_h,
            "PUT",
            route,
            "/agents/ada".to_string(),
            Some("{"),
            &[]
        )
        .0,
        400
    );
    let (s, b) = call!(
        run,
        agents_h,
        "PUT",
        route,
        "/agents/ada".to_string(),
        Some(r#"{"name": "A", "capacity": 51}"#),
        &[]
    );
    assert_eq!((s, &b["field"]), (422, &json!("capacity")));
    let (s, _) = call!(
        run,
        agents_h,
        "PUT",
        route,
        "/agents/ada".to_string(),
        Some(reg),
        &[("content-type", "text/plain")]
    );
    assert_eq!(s, 415);
    env.drain("AgentsCommandQueue", |e| {
        agents_worker::handle(&agents_worker, e)
    })
    .await;
    let route = "/agents/{agentId}/state";
    let (s, _) = call!(
        run,
        agents_h,
        "POST",
        route,
        "/agents/ada/state".to_string(),
        Some(r#"{"state": "AVAILABLE"}"#),
        &[("Idempotency-Key", "k1")]
    );
    assert_eq!(s, 202);
    let (s, _) = call!(
        run,
        agents_h,
        "POST",
        route,
        "/agents/ada/state".to_string(),
        Some(r#"{"state": "AWAY"}"#),
        &[("Idempotency-Key", "k1")]
    );
    assert_eq!(s, 422, "same key, other body");
    let (s, _) = call!(
        run,
        agents_h,
        "POST",
        route,
        "/agents/nobody/state".to_string(),
        Some(r#"{"state": "AWAY"}"#),
        &[]
    );
    assert_eq!(s, 404);
    let (s, _) = call!(
        run,
        agents_h,
        "POST",
        route,
        "/agents/ada/state".to_string(),
        Some(r#"{"state": "BUSY"}"#),
        &[]
    );
    assert_eq!(s, 422);
    env.drain("AgentsCommandQueue", |e| {
        agents_worker::handle(&agents_worker, e)
    })
    .await;
    let (s, agent) = call!(run, agents_h, "GET", route, "/agents/ada/state".to_string());
    assert_eq!((s, &agent["state"]), (200, &json!("AVAILABLE")));
    assert_eq!(
        call!(
            run,
            agents_h,
            "GET",
            route,
            "/agents/nobody/state".to_string()
        )
        .0,
        404
    );
    let route = "/agents";
    assert_eq!(
        call!(
            run,
            agents_h,
            "GET",
            route,
            "/agents?state=AVAILABLE&limit=10".to_string()
        )
        .0,
        200
    );
    assert_eq!(
        call!(run, agents_h, "GET", route, "/agents".to_string()).0,
        200
    );
    assert_eq!(
        call!(run, agents_h, "GET", route, "/agents?limit=0".to_string()).0,
        422
    );
    assert_eq!(
        call!(
            run,
            agents_h,
            "GET",
            route,
            "/agents?cursor=no!".to_string()
        )
        .0,
        422
    );
    // Cursors the spec admits (base64url) that name no page: `{}`, a foreign key, a non-string
    // value, text that is no base64 of JSON. Not found, never a 5xx.
    for cursor in ["e30", "eyJwayI6IngifQ", "eyJwayI6MX0", "abc"] {
        let path = format!("/agents?cursor={cursor}");
        assert_eq!(
            call!(run, agents_h, "GET", route, path).0,
            404,
            "cursor {cursor}"
        );
        let path = format!("/accounts/acc-1/ledger?cursor={cursor}");
        let resp = ledger_api::handle(&ledger, request(&event("GET", &path, None, &[]))).await;
        assert_eq!(
            run.check("GET", "/accounts/{accountId}/ledger", &resp).0,
            404,
            "{cursor}"
        );
    }
    let route = "/agents/match";
    let m = r#"{"conversationId": "c1", "skills": ["billing"]}"#;
    let (s, matched) = call!(
        run,
        agents_h,
        "POST",
        route,
        route.to_string(),
        Some(m),
        &[]
    );
    assert_eq!((s, &matched["agentId"]), (200, &json!("ada")));
    let m2 = r#"{"conversationId": "c2", "skills": ["billing"]}"#;
    assert_eq!(
        call!(
            run,
            agents_h,
            "POST",
            route,
            route.to_string(),
            Some(m2),
            &[]
        )
        .0,
        409
    );

    run.assert_valid(16);
}

/// Conversations: start, get, send, list, get message, receipt, close.
#[tokio::test]
async fn conversation_responses_validate_against_the_spec() {
    let Apps { conversations, .. } = apps().await;
    let mut run = Run::new();
    let conv_h = |r| conversations_api::handle(&conversations, r);
    // Conversations: start, get, send, list, get message, receipt, close.
    let route = "/conversations";
    let start = r#"{"customerId": "cust-1", "channel": "chat", "skills": ["billing"]}"#;
    let (s, started) = call!(
        run,
        conv_h,
        "POST",
        route,
        route.to_string(),
        Some(start),
        &[]
    );
    assert_eq!(s, 202);
    let id = started["conversationId"].as_str().unwrap().to_owned();
    assert_eq!(
        call!(
            run,
            conv_h,
            "POST",
            route,
            route.to_string(),
            Some(r#"{"customerId": "c", "channel": "fax"}"#),
            &[]
        )
        .0,
        422
    );
    let conv = format!("/conversations/{id}");
    assert_eq!(
        call!(
            run,
            conv_h,
            "GET",
            "/conversations/{conversationId}",
            conv.clone()
        )
        .0,
        200
    );
    assert_eq!(
        call!(
            run,
            conv_h,
            "GET",
            "/conversations/{conversationId}",
            "/conversations/nope".to_string()
        )
        .0,
        404
    );
    let route = "/conversations/{conversationId}/messages";
    let (s, sent) = call!(
        run,
        conv_h,
        "POST",
        route,
        format!("{conv}/messages"),
        Some(r#"{"sender": "customer", "text": "hi"}"#),
        &[]
    );
    assert_eq!(s, 202);
    assert_eq!(
        call!(
            run,
            conv_h,
            "POST",
            route,
            format!("{conv}/messages"),
            Some(r#"{"sender": "customer", "text": "  "}"#),
            &[]
        )
        .0,
        422
    );
    assert_eq!(
        call!(
            run,
            conv_h,
            "POST",
            route,
            "/conversations/nope/messages".to_string(),
            Some(r#"{"sender": "agent", "text": "x"}"#),
            &[]
        )
        .0,
        404
    );
    assert_eq!(
        call!(
            run,
            conv_h,
            "GET",
            route,
            format!("{conv}/messages?limit=5")
        )
        .0,
        200
    );
    let message = format!("{conv}/messages/{}", sent["messageId"].as_str().unwrap());
    let route = "/conversations/{conversationId}/messages/{messageId}";
    assert_eq!(call!(run, conv_h, "GET", route, message.clone()).0, 200);
    assert_eq!(
        call!(run, conv_h, "GET", route, format!("{conv}/messages/nope")).0,
        404
    );
    let route = "/conversations/{conversationId}/messages/{messageId}/receipts";
    assert_eq!(
        call!(
            run,
            conv_h,
            "POST",
            route,
            format!("{message}/receipts"),
            Some(r#"{"status": "READ"}"#),
            &[]
        )
        .0,
        202
    );
    assert_eq!(
        call!(
            run,
            conv_h,
            "POST",
            route,
            format!("{message}/receipts"),
            Some(r#"{"status": "SEEN"}"#),
            &[]
        )
        .0,
        422
    );
    let route = "/conversations/{conversationId}/close";
    assert_eq!(
        call!(run, conv_h, "POST", route, format!("{conv}/close")).0,
        202
    );
    assert_eq!(
        call!(
            run,
            conv_h,
            "POST",
            route,
            format!("{conv}/close"),
            Some(r#"{"x": 1}"#),
            &[]
        )
        .0,
        422
    );

    run.assert_valid(14);
}

/// Trades → worker → positions and ledger.
#[tokio::test]
async fn trading_responses_validate_against_the_spec() {
    let Apps {
        env,
        trades,
        trades_worker,
        positions,
        positions_worker,
        ledger,
        ledger_worker,
        ..
    } = apps().await;
    let mut run = Run::new();
    let trades_h = |r| trades_api::handle(&trades, r);
    let positions_h = |r| positions_api::handle(&positions, r);
    let ledger_h = |r| ledger_api::handle(&ledger, r);
    // Trades → worker → positions and ledger.
    let route = "/trades";
    // The smallest notional first: its ledger balance (1e-16) must still add exactly after.
    let tiny = r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": "0.00000001", "price": 1e-8}"#;
    assert_eq!(
        call!(
            run,
            trades_h,
            "POST",
            route,
            route.to_string(),
            Some(tiny),
            &[]
        )
        .0,
        202
    );
    let buy = r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": 10, "price": "12.5"}"#;
    let (s, accepted) = call!(
        run,
        trades_h,
        "POST",
        route,
        route.to_string(),
        Some(buy),
        &[("Idempotency-Key", "t1")]
    );
    assert_eq!(s, 202);
    let sell = r#"{"accountId": "acc-1", "symbol": "ACME", "side": "SELL", "quantity": "100", "price": 1}"#;
    assert_eq!(
        call!(
            run,
            trades_h,
            "POST",
            route,
            route.to_string(),
            Some(sell),
            &[]
        )
        .0,
        202
    );
    let huge =
        r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": 1e400, "price": 1}"#;
    let (s, b) = call!(
        run,
        trades_h,
        "POST",
        route,
        route.to_string(),
        Some(huge),
        &[]
    );
    assert_eq!((s, &b["field"]), (422, &json!("quantity")));
    let trade = format!("/trades/{}", accepted["tradeId"].as_str().unwrap());
    let route = "/trades/{tradeId}";
    assert_eq!(
        call!(run, trades_h, "GET", route, trade.clone()).0,
        200,
        "PENDING"
    );
    env.drain("TradesQueue", |e| trades_worker::handle(&trades_worker, e))
        .await;
    let (s, t) = call!(run, trades_h, "GET", route, trade.clone());
    assert_eq!((s, &t["status"]), (200, &json!("EXECUTED")));
    assert_eq!(
        call!(
            run,
            trades_h,
            "GET",
            route,
            "/trades/not-a-uuid".to_string()
        )
        .0,
        404
    );
    for _ in 0..20 {
        env.drain("PositionsQueue", |e| {
            positions_worker::handle(&positions_worker, e)
        })
        .await;
        env.drain("LedgerQueue", |e| ledger_worker::handle(&ledger_worker, e))
            .await;
        let resp = ledger_api::handle(
            &ledger,
            request(&event("GET", "/accounts/acc-1/ledger", None, &[])),
        )
        .await;
        let body = system_tests::body_json(&resp);
        if body["entries"].as_array().map(Vec::len) == Some(4) {
            break;
        }
    }
    let route = "/accounts/{accountId}/positions";
    assert_eq!(
        call!(
            run,
            positions_h,
            "GET",
            route,
            "/accounts/acc-1/positions".to_string()
        )
        .0,
        200
    );
    assert_eq!(
        call!(
            run,
            positions_h,
            "GET",
            route,
            "/accounts/a%23b/positions".to_string()
        )
        .0,
        422
    );
    let route = "/accounts/{accountId}/positions/{symbol}";
    assert_eq!(
        call!(
            run,
            positions_h,
            "GET",
            route,
            "/accounts/acc-1/positions/ACME".to_string()
        )
        .0,
        200
    );
    assert_eq!(
        call!(
            run,
            positions_h,
            "GET",
            route,
            "/accounts/acc-1/positions/NONE".to_string()
        )
        .0,
        404
    );
    let route = "/accounts/{accountId}/ledger";
    let (s, l) = call!(
        run,
        ledger_h,
        "GET",
        route,
        "/accounts/acc-1/ledger?limit=1".to_string()
    );
    assert_eq!((s, l["entries"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(
        call!(
            run,
            ledger_h,
            "GET",
            route,
            "/accounts/acc-1/ledger?limit=101".to_string()
        )
        .0,
        422
    );
    let route = "/accounts/{accountId}/balance";
    let (s, b) = call!(
        run,
        ledger_h,
        "GET",
        route,
        "/accounts/acc-1/balance".to_string()
    );
    assert_eq!((s, &b["total"]), (200, &json!("0")));
    assert_eq!(
        b["balances"],
        json!({"cash": "-125.0000000000000001", "securities:ACME": "125.0000000000000001"}),
        "both trades posted, exactly"
    );
    let (s, b) = call!(
        run,
        ledger_h,
        "GET",
        route,
        "/accounts/acc-2/balance".to_string()
    );
    assert_eq!(
        (s, &b["type"]),
        (403, &json!("/problems/forbidden")),
        "not the caller's"
    );

    run.assert_valid(12);
}

/// Health, operations, analytics, docs.
#[tokio::test]
async fn operation_responses_validate_against_the_spec() {
    let Apps {
        health,
        ops,
        analytics,
        docs,
        ..
    } = apps().await;
    let mut run = Run::new();
    // Health, operations, docs.
    let health_h = |r| health_api::handle(&health, r);
    assert_eq!(
        call!(run, health_h, "GET", "/health", "/health".to_string()).0,
        200
    );
    let ops_h = |r| ops_api::handle(&ops, r);
    assert_eq!(
        call!(run, ops_h, "GET", "/ops/dlq", "/ops/dlq".to_string()).0,
        200
    );
    let route = "/ops/dlq/{queue}/redrive";
    assert_eq!(
        call!(
            run,
            ops_h,
            "POST",
            route,
            "/ops/dlq/agents/redrive".to_string()
        )
        .0,
        200
    );
    assert_eq!(
        call!(
            run,
            ops_h,
            "POST",
            route,
            "/ops/dlq/nope/redrive".to_string()
        )
        .0,
        404
    );
    assert_eq!(
        call!(
            run,
            ops_h,
            "POST",
            route,
            "/ops/dlq/agents/redrive?limit=0".to_string()
        )
        .0,
        422
    );
    let analytics_h = |r| analytics_api::handle(&analytics, r);
    let route = "/analytics/summary";
    assert_eq!(
        call!(run, analytics_h, "GET", route, route.to_string()).0,
        200
    );
    let route = "/analytics/agents/{agentId}";
    assert_eq!(
        call!(
            run,
            analytics_h,
            "GET",
            route,
            "/analytics/agents/nobody".to_string()
        )
        .0,
        404
    );
    let docs_h = |r| docs_api::handle(&docs, r);
    assert_eq!(
        call!(
            run,
            docs_h,
            "GET",
            "/openapi.json",
            "/openapi.json".to_string()
        )
        .0,
        200
    );

    run.assert_valid(8);
}
