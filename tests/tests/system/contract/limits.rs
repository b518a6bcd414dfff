//! The documented limits are the ones the code enforces: each edge accepted or refused by
//! both the spec and the handlers.

use super::*;

// ------------------------------------------------------------------ limits

fn schema<'a>(spec: &'a Value, name: &str) -> &'a Value {
    &spec["components"]["schemas"][name]
}

/// Whether `pattern` (a JSON Schema pattern: unanchored search) matches `s`.
fn matches(pattern: &str, s: &str) -> bool {
    let spec = json!({});
    Validator::new(&spec)
        .errors(&json!({ "type": "string", "pattern": pattern }), &json!(s))
        .is_empty()
}

fn accepts_string(spec: &Value, schema: &Value, s: &str) -> bool {
    Validator::new(spec).errors(schema, &json!(s)).is_empty()
}

#[test]
fn documented_limits_are_the_ones_the_code_enforces() {
    use shared::domain::{
        agents::{Capacity, Skill, Skills},
        conversations::MessageText,
        ids::AgentId,
        trades::Symbol,
    };
    let spec = spec();
    let description = spec["info"]["description"].as_str().unwrap();
    assert_eq!(shared::http::MAX_BODY_BYTES, 64 * 1024);
    assert!(description.contains("64 KiB (65536 bytes"));
    // Every schema-valid body fits: the largest, a 4000-character message whose every
    // character a client escapes as a JSON surrogate pair.
    let largest = json!({"sender": "customer", "text": "\u{1F600}".repeat(MessageText::MAX_CHARS)});
    let escaped = serde_json::to_string(&largest)
        .unwrap()
        .replace('\u{1F600}', "\\uD83D\\uDE00");
    assert!(
        escaped.len() < shared::http::MAX_BODY_BYTES,
        "{}",
        escaped.len()
    );

    let register = schema(&spec, "RegisterAgentRequest");
    assert_eq!(register["properties"]["capacity"]["minimum"], 1);
    assert_eq!(register["properties"]["capacity"]["maximum"], Capacity::MAX);
    for n in [0, 1, Capacity::MAX, Capacity::MAX + 1] {
        let documented = (1..=Capacity::MAX).contains(&n);
        assert_eq!(Capacity::try_from(n).is_ok(), documented, "capacity {n}");
    }
    assert_eq!(schema(&spec, "Skills")["maxItems"], Skills::MAX);
    let text = &schema(&spec, "SendMessageRequest")["properties"]["text"];
    assert_eq!(text["maxLength"], MessageText::MAX_CHARS);
    assert_eq!(
        spec["components"]["parameters"]["Limit"]["schema"],
        json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 25})
    );

    // Charset and length: the spec's schema accepts exactly what the parsers accept.
    let samples = [
        "a",
        "agent-1_A",
        "A.B",
        "brk.b",
        "x y",
        "a#b",
        "a/b",
        "é",
        "",
        "a:b",
        "UPPER",
        "%41",
        ".",
        "..",
        "...",
        ".a",
        "..a",
        "a..",
    ];
    let long = |n: usize| "x".repeat(n);
    let mut all: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
    all.extend([long(12), long(13), long(32), long(33), long(64), long(65)]);
    /// Whether `T` parses `s`.
    fn parses<T: std::str::FromStr>(s: &str) -> bool {
        s.parse::<T>().is_ok()
    }
    // Each string schema of the spec and whether the domain type it documents parses a string.
    let parsers = [
        ("Id", parses::<AgentId> as fn(&str) -> bool),
        ("Skill", parses::<Skill>),
        ("Symbol", parses::<Symbol>),
    ];
    for s in &all {
        for (name, parses) in parsers {
            assert_eq!(
                accepts_string(&spec, schema(&spec, name), s),
                parses(s),
                "{name} {s:?}"
            );
        }
    }
    // Skills: at most 20 as sent, duplicates or not.
    let skills = schema(&spec, "Skills");
    for n in [20, 21] {
        let same: Vec<Value> = (0..n).map(|_| json!("billing")).collect();
        let parsed: Result<Vec<Skill>, _> =
            same.iter().map(|s| s.as_str().unwrap().parse()).collect();
        assert_eq!(
            Validator::new(&spec)
                .errors(skills, &Value::Array(same.clone()))
                .is_empty(),
            Skills::try_from(parsed.unwrap()).is_ok(),
            "{n} skills"
        );
    }
    // Texts: what the spec admits, the parsers accept, and only that. White space is Unicode's
    // White_Space, which the patterns list one by one.
    let white: Vec<char> = (0..=0x3000u32)
        .filter_map(char::from_u32)
        .filter(|c| c.is_whitespace() && !c.is_control())
        .collect();
    let name = &schema(&spec, "RegisterAgentRequest")["properties"]["name"];
    let mut names: Vec<String> = [
        "Ada", "  Ada  ", "A d a", "", "   ", "A\u{1}", "A\u{85}B", "A\nB", "\u{feff}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend(white.iter().map(|c| c.to_string()));
    names.extend(white.iter().map(|c| format!("{c}x{c}")));
    names.extend([
        long(100),
        long(101),
        format!(" {} ", long(99)),
        format!(" {} ", long(100)),
    ]);
    for s in &names {
        assert_eq!(
            accepts_string(&spec, name, s),
            shared::domain::agents::AgentName::try_from(s.clone()).is_ok(),
            "name {s:?}"
        );
    }
    let mut texts: Vec<(String, bool)> = [
        ("hi", true),
        ("line\nbreak\ttab\r", true),
        ("\n x", true),
        ("", false),
        (" \n\t", false),
        ("a\u{1}", false),
        ("a\u{7f}", false),
        ("\u{feff}", true),
    ]
    .iter()
    .map(|(s, v)| (s.to_string(), *v))
    .collect();
    texts.extend(white.iter().map(|c| (format!("{c}\n{c}"), false)));
    texts.extend(white.iter().map(|c| (format!("{c}.{c}"), true)));
    for (s, valid) in &texts {
        let (s, valid) = (s.as_str(), *valid);
        assert_eq!(accepts_string(&spec, text, s), valid, "text {s:?}");
        assert_eq!(
            MessageText::try_from(s.to_owned()).is_ok(),
            valid,
            "text {s:?}"
        );
    }
    assert!(!accepts_string(&spec, text, &"x".repeat(4001)));
    assert!(accepts_string(&spec, text, &"x".repeat(4000)));
    // Idempotency keys: 1–128 printable ASCII.
    let key = &spec["components"]["parameters"]["IdempotencyKey"]["schema"];
    assert!(matches(key["pattern"].as_str().unwrap(), "abc-123_~!"));
    assert!(!matches(key["pattern"].as_str().unwrap(), "a b"));
    assert_eq!(key["maxLength"], 128);
}

/// The spec's `DecimalInput` admits exactly the quantities and prices the API accepts, as
/// strings and as JSON numbers: a schema-valid request is never refused, a schema-invalid one
/// never accepted. Checked on the edges of every rule and on random strings of digits, dots,
/// signs and exponents.
#[test]
fn decimal_inputs_are_documented_exactly_as_the_api_reads_them() {
    use shared::domain::money::{Literal, Price, Quantity};
    /// What the trades API reads of an order's decimals.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Order {
        quantity: Literal<Quantity>,
        price: Literal<Price>,
    }
    let spec = spec();
    let documented = Validator::new(&spec).compile(schema(&spec, "DecimalInput"));
    // `json` is the value's JSON text, as a client sends it.
    let check = |json: &str| {
        let accepted =
            serde_json::from_str::<Order>(&format!(r#"{{"quantity": {json}, "price": {json}}}"#))
                .is_ok();
        // A number beyond f64 (`1e400`) is above the schema's maximum, whatever a validator
        // could hold of it.
        let documented = serde_json::from_str::<Value>(json).is_ok_and(|v| documented.is_valid(&v));
        assert_eq!(
            documented,
            accepted,
            "{json}: the spec {} it, the API {} it",
            if documented { "admits" } else { "refuses" },
            if accepted { "accepts" } else { "refuses" },
        );
        accepted
    };
    // The two of issue #18: "0" is refused by both, as is every way of writing 0.
    for zero in [r#""0""#, r#""0.0""#, r#""000.00000000""#, "0", "0.0", "0e5"] {
        assert!(!check(zero), "{zero}");
    }
    for edge in [
        r#""1""#,
        r#""0.00000001""#,
        r#""0.000000001""#,
        r#""0.000000010""#,
        r#""1000000""#,
        r#""1000000.000""#,
        r#""1000000.00000001""#,
        r#""999999.99999999""#,
        r#""007.5""#,
        r#"".5""#,
        r#""5.""#,
        r#""-1""#,
        r#""+1""#,
        r#""1e3""#,
        r#""1,5""#,
        r#""""#,
        "1",
        "0.5",
        "1e-8",
        "1.5e-8",
        "1.5e2",
        "1000000",
        "1000000.00000001",
        "999999.99999999",
        "0.30000000",
        "-1",
        "1e400",
    ] {
        check(edge);
    }
    // Random texts, each tried as a JSON string and (when it is a JSON number) as a number.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"0000123456789..e-+";
    let (mut accepted, mut tried) = (0, 0);
    for _ in 0..20_000 {
        let len = 1 + (next() % 13) as usize;
        let text: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
            .collect();
        accepted += usize::from(check(&format!("{text:?}")));
        tried += 1;
        if serde_json::from_str::<serde_json::Number>(&text).is_ok() {
            accepted += usize::from(check(&text));
            tried += 1;
        }
    }
    assert!(
        accepted > tried / 20,
        "the random texts reach both sides: {accepted} of {tried}"
    );
}

#[test]
fn page_sizes_outside_the_documented_range_are_refused() {
    for (raw, ok) in [
        ("1", true),
        ("100", true),
        ("0", false),
        ("101", false),
        ("x", false),
    ] {
        let mut ev = fixture("agents-api/list-agents.json");
        ev["rawQueryString"] = format!("limit={raw}").into();
        ev["queryStringParameters"] = json!({ "limit": raw });
        let got = shared::http::limit(&request(&ev));
        assert_eq!(got.is_ok(), ok, "limit={raw}: {got:?}");
        if let Err(e) = got {
            assert_eq!(e.status(), 422);
        }
    }
}
