//! Property tests of everything that reads untrusted input: the request-body parsers
//! ([`crate::http`]), the SQS record decoder ([`crate::worker::decode`]) and the decimal parser
//! ([`crate::domain::money`]). On any input they return, never panic, and a request is never
//! refused with a 5xx (docs/ARCHITECTURE.md, guarantee 7). Case counts are bounded so `cargo test` stays quick.

use lambda_http::{Body, Request};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::{
    agents::{AgentName, AgentState, Capacity, Skills},
    conversations::{Channel, MessageText, Receipt, Sender},
    ids::{AccountId, AgentId, ConversationId, CustomerId},
    money::{Literal, MAX_PRICE, PRICE_SCALE, Price, Quantity, parse_bounded},
    trades::{Side, Symbol},
};
use crate::http::{MAX_BODY_BYTES, parse_command, parse_exact, parse_json};

/// Every validated field type of every request body, so a value reaching any of them is tried.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct AnyCommand {
    agent_id: Option<AgentId>,
    name: Option<AgentName>,
    skills: Option<Skills>,
    capacity: Option<Capacity>,
    state: Option<AgentState>,
    version: Option<u64>,
    conversation_id: Option<ConversationId>,
    customer_id: Option<CustomerId>,
    channel: Option<Channel>,
    sender: Option<Sender>,
    text: Option<MessageText>,
    status: Option<Receipt>,
}

/// The trade body, read with [`parse_exact`] (decimals from their literal text).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Trade {
    account_id: AccountId,
    symbol: Symbol,
    side: Side,
    quantity: Literal<Quantity>,
    price: Literal<Price>,
}

fn request(content_type: &str, body: Vec<u8>) -> Request {
    http::Request::builder()
        .header("content-type", content_type)
        .body(Body::Binary(body))
        .expect("valid request")
}

/// Runs every parser on `body` and checks each outcome is a success or a 4xx.
fn parse_all(content_type: &str, body: &[u8]) -> Result<(), TestCaseError> {
    let check = |what: &str, status: Option<u16>| {
        if let Some(s) = status {
            prop_assert!(
                (400..500).contains(&s),
                "{what} answered {s} for {:?}",
                String::from_utf8_lossy(body)
            );
        }
        Ok(())
    };
    let req = request(content_type, body.to_vec());
    let status = |e: crate::Error| e.status().as_u16();
    check(
        "parse_json",
        parse_json::<AnyCommand>(&req).err().map(status),
    )?;
    check(
        "parse_command",
        parse_command::<AnyCommand>(&req).err().map(status),
    )?;
    check("parse_exact", parse_exact::<Trade>(&req).err().map(status))?;
    check(
        "parse_exact(any)",
        parse_exact::<AnyCommand>(&req).err().map(status),
    )
}

/// Arbitrary JSON: scalars of every kind (huge and tiny numbers, odd strings), nested.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "[a-zA-Z0-9_#: -]{0,70}".prop_map(Value::String),
        prop_oneof![
            Just("AVAILABLE"),
            Just("chat"),
            Just("READ"),
            Just("BUY"),
            Just("1e400"),
            Just("-0"),
            Just("0.000000001")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mostly the names the bodies know, so values reach the field validators.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "agentId", "name", "skills", "capacity", "state", "version", "conversationId",
            "customerId", "channel", "sender", "text", "status", "accountId", "symbol", "side",
            "quantity", "price",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

/// JSON number literals as a caller may type them, including absurd exponents and lengths.
fn number_literal() -> impl Strategy<Value = String> {
    "-?[0-9]{1,30}(\\.[0-9]{1,30})?([eE][-+]?[0-9]{1,12})?"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn request_parsers_never_panic_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_all("application/json", &body)?;
    }

    #[test]
    fn request_parsers_never_panic_on_arbitrary_json(value in any_json()) {
        parse_all("application/json", value.to_string().as_bytes())?;
        // The same value inside an object, where the typed fields are.
        let wrapped = json!({ "capacity": value.clone(), "skills": [value.clone()], "quantity": value });
        parse_all("application/json; charset=utf-8", wrapped.to_string().as_bytes())?;
    }

    #[test]
    fn trade_bodies_with_any_numbers_are_accepted_or_refused_with_a_4xx(
        q in number_literal(), p in number_literal(), quote_q in any::<bool>(), symbol in "[a-zA-Z.#-]{0,14}",
    ) {
        let q = if quote_q { format!("\"{q}\"") } else { q };
        let body = format!(
            r#"{{"accountId": "acc-1", "symbol": {}, "side": "BUY", "quantity": {q}, "price": {p}}}"#,
            json!(symbol)
        );
        parse_all("application/json", body.as_bytes())?;
    }

    #[test]
    fn content_types_and_sizes_are_refused_with_a_4xx(
        content_type in "[ -~]{0,40}", extra in 0usize..64, json_type in any::<bool>(),
    ) {
        let ct = if json_type { "application/json".to_owned() } else { content_type };
        let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(MAX_BODY_BYTES + extra));
        let req = request(&ct, big.into_bytes());
        let status = parse_json::<AnyCommand>(&req).unwrap_err().status().as_u16();
        prop_assert!(status == 413 || status == 415, "{status}");
    }

    #[test]
    fn the_decimal_parser_never_panics_and_respects_its_bounds(s in prop_oneof![number_literal(), ".{0,40}"]) {
        if let Ok(d) = parse_bounded(&s, PRICE_SCALE, MAX_PRICE) {
            prop_assert!(d.abs() <= MAX_PRICE, "{s} -> {d}");
            prop_assert!(d.normalize().scale() <= PRICE_SCALE, "{s} -> {d}");
            // Exact: the value is the literal (compared as decimals, without rounding).
            let plain = !s.contains(['e', 'E']);
            if let (true, Ok(r)) = (plain, rust_decimal::Decimal::from_str_exact(&s)) {
                prop_assert_eq!(r.normalize(), d.normalize());
            }
        }
        let _ = s.parse::<Quantity>();
        let _ = s.parse::<Price>();
        let _ = s.parse::<crate::domain::money::Amount>();
    }

    #[test]
    fn the_sqs_decoder_never_panics_on_arbitrary_bodies(body in prop::option::of(".{0,200}")) {
        let _ = crate::worker::decode(&sqs(body));
    }

    #[test]
    fn the_sqs_decoder_never_panics_on_mutated_real_messages(
        seed in 0usize..64, path in prop::collection::vec(any::<prop::sample::Index>(), 1..5),
        replacement in any_json(), cut in any::<prop::sample::Index>(), truncate in any::<bool>(),
    ) {
        let bodies = fixture_bodies();
        let mut value: Value = serde_json::from_str(&bodies[seed % bodies.len()]).expect("fixture JSON");
        replace_at(&mut value, &path, replacement);
        let mut text = value.to_string();
        if truncate {
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
        let _ = crate::worker::decode(&sqs(Some(text)));
    }
}

fn sqs(body: Option<String>) -> aws_lambda_events::event::sqs::SqsMessage {
    let mut m = aws_lambda_events::event::sqs::SqsMessage::default();
    m.message_id = Some("m0".into());
    m.body = body;
    m
}

/// Record bodies of every worker's sample event (`events/*-worker/sqs-batch.json`).
fn fixture_bodies() -> Vec<String> {
    let files = [
        include_str!("../../events/agents-worker/sqs-batch.json"),
        include_str!("../../events/agents-worker/sqs-events.json"),
        include_str!("../../events/conversations-worker/sqs-batch.json"),
        include_str!("../../events/trades-worker/sqs-batch.json"),
        include_str!("../../events/positions-worker/sqs-batch.json"),
        include_str!("../../events/ledger-worker/sqs-batch.json"),
    ];
    let bodies: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let v: Value = serde_json::from_str(f).expect("fixture JSON");
            v["Records"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| r["body"].as_str().map(str::to_owned))
        })
        .collect();
    assert!(bodies.len() >= 5);
    bodies
}

/// Replaces the value found by walking `path` (each step picks a child) with `new`.
fn replace_at(v: &mut Value, path: &[prop::sample::Index], new: Value) {
    let Some((step, rest)) = path.split_first() else {
        *v = new;
        return;
    };
    let child = match v {
        Value::Object(o) if !o.is_empty() => {
            let i = step.index(o.len());
            o.values_mut().nth(i)
        }
        Value::Array(a) if !a.is_empty() => {
            let i = step.index(a.len());
            a.get_mut(i)
        }
        _ => None,
    };
    match child {
        Some(c) => replace_at(c, rest, new),
        None => *v = new,
    }
}

#[test]
fn real_worker_messages_decode() {
    for body in fixture_bodies() {
        crate::worker::decode(&sqs(Some(body.clone()))).unwrap_or_else(|e| panic!("{e}: {body}"));
    }
}
