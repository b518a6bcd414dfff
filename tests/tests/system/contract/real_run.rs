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

/// One request of a run and the status it must answer:
/// `(route, "METHOD path", body, headers, status)`: the spec's route the request is one of, the
/// path raw (percent-encoded, with its query), the body JSON text, the headers extra to the
/// trader's.
type Row<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a [(&'a str, &'a str)],
    u16,
);

impl Run {
    /// Sends `line` (`"METHOD path"`) with `body` and `headers` ([`event`]) to `handler`, checks
    /// the response against `METHOD route` of the spec ([`Run::check`]) and returns its status
    /// and body.
    async fn call<F: Future<Output = Response<Body>>>(
        &mut self,
        handler: &impl Fn(lambda_http::Request) -> F,
        route: &str,
        line: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (method, path) = line.split_once(' ').expect("a line is `METHOD path`");
        let resp = handler(request(&event(method, path, body, headers))).await;
        self.check(method, route, &resp)
    }

    /// Sends the `rows` to `handler` in order ([`Run::call`]); fails the test at the first that
    /// does not answer its status.
    async fn expect<F: Future<Output = Response<Body>>>(
        &mut self,
        handler: &impl Fn(lambda_http::Request) -> F,
        rows: &[Row<'_>],
    ) {
        for &(route, line, body, headers, status) in rows {
            let (got, answer) = self.call(handler, route, line, body, headers).await;
            assert_eq!(got, status, "{line}: {answer}");
        }
    }

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
    let apps = apps().await;
    let mut run = Run::new();
    let agents_h = |r| agents_api::handle(&apps.agents, r);
    let ledger_h = |r| ledger_api::handle(&apps.ledger, r);
    let drain = || {
        apps.env.drain("AgentsCommandQueue", |e| {
            shared::worker::handle(&apps.agents_worker, e)
        })
    };
    // Agents: register, apply, AVAILABLE, list, match (200, then 409 for lack of capacity).
    let reg = Some(r#"{"name": "Ada", "skills": ["billing"], "capacity": 1}"#);
    let too_big = format!(
        r#"{{"name": "{}"}}"#,
        "x".repeat(shared::http::MAX_BODY_BYTES)
    );
    let agent = "/agents/{agentId}";
    run.expect(
        &agents_h,
        &[
            (agent, "PUT /agents/ada", reg, &[], 202),
            (agent, "PUT /agents/a%20b", reg, &[], 422),
            (agent, "PUT /agents/ada", Some(&too_big), &[], 413),
            (agent, "PUT /agents/ada", Some("{"), &[], 400),
        ],
    )
    .await;
    let too_many = r#"{"name": "A", "capacity": 51}"#;
    let (s, b) = run
        .call(&agents_h, agent, "PUT /agents/ada", Some(too_many), &[])
        .await;
    assert_eq!((s, &b["field"]), (422, &json!("capacity")));
    let plain = [("content-type", "text/plain")];
    run.expect(&agents_h, &[(agent, "PUT /agents/ada", reg, &plain, 415)])
        .await;
    drain().await;
    let state = "/agents/{agentId}/state";
    let key = [("Idempotency-Key", "k1")];
    let available = Some(r#"{"state": "AVAILABLE"}"#);
    let away = Some(r#"{"state": "AWAY"}"#);
    let busy = Some(r#"{"state": "BUSY"}"#);
    run.expect(
        &agents_h,
        &[
            (state, "POST /agents/ada/state", available, &key, 202),
            // The same key with another body.
            (state, "POST /agents/ada/state", away, &key, 422),
            (state, "POST /agents/nobody/state", away, &[], 404),
            (state, "POST /agents/ada/state", busy, &[], 422),
        ],
    )
    .await;
    drain().await;
    let (s, agent) = run
        .call(&agents_h, state, "GET /agents/ada/state", None, &[])
        .await;
    assert_eq!((s, &agent["state"]), (200, &json!("AVAILABLE")));
    let list = "/agents";
    run.expect(
        &agents_h,
        &[
            (state, "GET /agents/nobody/state", None, &[], 404),
            (list, "GET /agents?state=AVAILABLE&limit=10", None, &[], 200),
            (list, "GET /agents", None, &[], 200),
            (list, "GET /agents?limit=0", None, &[], 422),
            (list, "GET /agents?cursor=no!", None, &[], 422),
        ],
    )
    .await;
    // Cursors the spec admits (base64url) that name no page: `{}`, a foreign key, a non-string
    // value, text that is no base64 of JSON. Not found, never a 5xx.
    let ledger = "/accounts/{accountId}/ledger";
    for cursor in ["e30", "eyJwayI6IngifQ", "eyJwayI6MX0", "abc"] {
        let agents_page = format!("GET /agents?cursor={cursor}");
        run.expect(&agents_h, &[(list, &agents_page, None, &[], 404)])
            .await;
        let ledger_page = format!("GET /accounts/acc-1/ledger?cursor={cursor}");
        run.expect(&ledger_h, &[(ledger, &ledger_page, None, &[], 404)])
            .await;
    }
    let to_match = "/agents/match";
    let m = r#"{"conversationId": "c1", "skills": ["billing"]}"#;
    let (s, matched) = run
        .call(&agents_h, to_match, "POST /agents/match", Some(m), &[])
        .await;
    assert_eq!((s, &matched["agentId"]), (200, &json!("ada")));
    let m2 = Some(r#"{"conversationId": "c2", "skills": ["billing"]}"#);
    run.expect(&agents_h, &[(to_match, "POST /agents/match", m2, &[], 409)])
        .await;

    run.assert_valid(16);
}

/// Conversations: start, get, send, list, get message, receipt, close.
#[tokio::test]
async fn conversation_responses_validate_against_the_spec() {
    let apps = apps().await;
    let mut run = Run::new();
    let conv_h = |r| conversations_api::handle(&apps.conversations, r);
    // Conversations: start, get, send, list, get message, receipt, close.
    let start = r#"{"customerId": "cust-1", "channel": "chat", "skills": ["billing"]}"#;
    let conversations = "/conversations";
    let (s, started) = run
        .call(
            &conv_h,
            conversations,
            "POST /conversations",
            Some(start),
            &[],
        )
        .await;
    assert_eq!(s, 202);
    let conv = format!(
        "/conversations/{}",
        started["conversationId"].as_str().unwrap()
    );
    let fax = Some(r#"{"customerId": "c", "channel": "fax"}"#);
    let one = "/conversations/{conversationId}";
    let messages = "/conversations/{conversationId}/messages";
    run.expect(
        &conv_h,
        &[
            (conversations, "POST /conversations", fax, &[], 422),
            (one, &format!("GET {conv}"), None, &[], 200),
            (one, "GET /conversations/nope", None, &[], 404),
        ],
    )
    .await;
    let hi = r#"{"sender": "customer", "text": "hi"}"#;
    let send = format!("POST {conv}/messages");
    let (s, sent) = run.call(&conv_h, messages, &send, Some(hi), &[]).await;
    assert_eq!(s, 202);
    let message = format!("{conv}/messages/{}", sent["messageId"].as_str().unwrap());
    let blank = Some(r#"{"sender": "customer", "text": "  "}"#);
    let x = Some(r#"{"sender": "agent", "text": "x"}"#);
    let list = format!("GET {conv}/messages?limit=5");
    let get = "/conversations/{conversationId}/messages/{messageId}";
    let receipts = "/conversations/{conversationId}/messages/{messageId}/receipts";
    let receipt = format!("POST {message}/receipts");
    let close = "/conversations/{conversationId}/close";
    let closing = format!("POST {conv}/close");
    run.expect(
        &conv_h,
        &[
            (messages, &send, blank, &[], 422),
            (messages, "POST /conversations/nope/messages", x, &[], 404),
            (messages, &list, None, &[], 200),
            (get, &format!("GET {message}"), None, &[], 200),
            (get, &format!("GET {conv}/messages/nope"), None, &[], 404),
            (receipts, &receipt, Some(r#"{"status": "READ"}"#), &[], 202),
            (receipts, &receipt, Some(r#"{"status": "SEEN"}"#), &[], 422),
            (close, &closing, None, &[], 202),
            (close, &closing, Some(r#"{"x": 1}"#), &[], 422),
        ],
    )
    .await;

    run.assert_valid(14);
}

/// Trades → worker → positions and ledger.
#[tokio::test]
async fn trading_responses_validate_against_the_spec() {
    let apps = apps().await;
    let env = &apps.env;
    let mut run = Run::new();
    let trades_h = |r| trades_api::handle(&apps.trades, r);
    let positions_h = |r| positions_api::handle(&apps.positions, r);
    let ledger_h = |r| ledger_api::handle(&apps.ledger, r);
    // Trades → worker → positions and ledger.
    let trades = "/trades";
    // The smallest notional first: its ledger balance (1e-16) must still add exactly after.
    let tiny = r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": "0.00000001", "price": 1e-8}"#;
    run.expect(&trades_h, &[(trades, "POST /trades", Some(tiny), &[], 202)])
        .await;
    let buy = r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": 10, "price": "12.5"}"#;
    let key = [("Idempotency-Key", "t1")];
    let (s, accepted) = run
        .call(&trades_h, trades, "POST /trades", Some(buy), &key)
        .await;
    assert_eq!(s, 202);
    let sell = r#"{"accountId": "acc-1", "symbol": "ACME", "side": "SELL", "quantity": "100", "price": 1}"#;
    run.expect(&trades_h, &[(trades, "POST /trades", Some(sell), &[], 202)])
        .await;
    let huge =
        r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": 1e400, "price": 1}"#;
    let (s, b) = run
        .call(&trades_h, trades, "POST /trades", Some(huge), &[])
        .await;
    assert_eq!((s, &b["field"]), (422, &json!("quantity")));
    let trade = format!("GET /trades/{}", accepted["tradeId"].as_str().unwrap());
    let one = "/trades/{tradeId}";
    // PENDING: not executed yet.
    run.expect(&trades_h, &[(one, &trade, None, &[], 200)])
        .await;
    env.drain("TradesQueue", |e| {
        shared::worker::handle(&apps.trades_worker, e)
    })
    .await;
    let (s, t) = run.call(&trades_h, one, &trade, None, &[]).await;
    assert_eq!((s, &t["status"]), (200, &json!("EXECUTED")));
    run.expect(
        &trades_h,
        &[(one, "GET /trades/not-a-uuid", None, &[], 404)],
    )
    .await;
    for _ in 0..20 {
        env.drain("PositionsQueue", |e| {
            shared::worker::handle(&apps.positions_worker, e)
        })
        .await;
        env.drain("LedgerQueue", |e| {
            shared::worker::handle(&apps.ledger_worker, e)
        })
        .await;
        let resp = ledger_h(request(&event("GET", "/accounts/acc-1/ledger", None, &[]))).await;
        let body = system_tests::body_json(&resp);
        if body["entries"].as_array().map(Vec::len) == Some(4) {
            break;
        }
    }
    let positions = "/accounts/{accountId}/positions";
    let position = "/accounts/{accountId}/positions/{symbol}";
    run.expect(
        &positions_h,
        &[
            (positions, "GET /accounts/acc-1/positions", None, &[], 200),
            (positions, "GET /accounts/a%23b/positions", None, &[], 422),
            (
                position,
                "GET /accounts/acc-1/positions/ACME",
                None,
                &[],
                200,
            ),
            (
                position,
                "GET /accounts/acc-1/positions/NONE",
                None,
                &[],
                404,
            ),
        ],
    )
    .await;
    let ledger = "/accounts/{accountId}/ledger";
    let (s, l) = run
        .call(
            &ledger_h,
            ledger,
            "GET /accounts/acc-1/ledger?limit=1",
            None,
            &[],
        )
        .await;
    assert_eq!((s, l["entries"].as_array().map(Vec::len)), (200, Some(1)));
    let too_long = "GET /accounts/acc-1/ledger?limit=101";
    run.expect(&ledger_h, &[(ledger, too_long, None, &[], 422)])
        .await;
    let balance = "/accounts/{accountId}/balance";
    let (s, b) = run
        .call(&ledger_h, balance, "GET /accounts/acc-1/balance", None, &[])
        .await;
    assert_eq!((s, &b["total"]), (200, &json!("0")));
    assert_eq!(
        b["balances"],
        json!({"cash": "-125.0000000000000001", "securities:ACME": "125.0000000000000001"}),
        "both trades posted, exactly"
    );
    let (s, b) = run
        .call(&ledger_h, balance, "GET /accounts/acc-2/balance", None, &[])
        .await;
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
    let apps = apps().await;
    let mut run = Run::new();
    // Health, operations, docs.
    let health_h = |r| health_api::handle(&apps.health, r);
    run.expect(&health_h, &[("/health", "GET /health", None, &[], 200)])
        .await;
    let ops_h = |r| ops_api::handle(&apps.ops, r);
    let redrive = "/ops/dlq/{queue}/redrive";
    run.expect(
        &ops_h,
        &[
            ("/ops/dlq", "GET /ops/dlq", None, &[], 200),
            (redrive, "POST /ops/dlq/agents/redrive", None, &[], 200),
            (redrive, "POST /ops/dlq/nope/redrive", None, &[], 404),
            (
                redrive,
                "POST /ops/dlq/agents/redrive?limit=0",
                None,
                &[],
                422,
            ),
        ],
    )
    .await;
    let analytics_h = |r| analytics_api::handle(&apps.analytics, r);
    let summary = "/analytics/summary";
    let agent = "/analytics/agents/{agentId}";
    run.expect(
        &analytics_h,
        &[
            (summary, "GET /analytics/summary", None, &[], 200),
            (agent, "GET /analytics/agents/nobody", None, &[], 404),
        ],
    )
    .await;
    let docs_h = |r| docs_api::handle(&apps.docs, r);
    run.expect(
        &docs_h,
        &[("/openapi.json", "GET /openapi.json", None, &[], 200)],
    )
    .await;

    run.assert_valid(8);
}
