//! The contract: `openapi.yaml` against the template (every route in both), against the code
//! (documented errors and limits are the ones the handlers enforce), against real responses
//! (a short run of the real handlers on a moto server validates against the spec), and the
//! template's IAM policies against least privilege.

use std::collections::{BTreeMap, BTreeSet};

use lambda_http::{Body, Response};
use local::template::Template;
use serde_json::{Value, json};
use system_tests::{Env, fixture, request};

fn spec() -> Value {
    docs_api::spec().expect("openapi.yaml parses")
}

fn template() -> Template {
    Template::load(system_tests::root().join("template.yaml")).expect("template.yaml loads")
}

const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

/// Every operation of the spec by `(METHOD, path)`.
fn operations(spec: &Value) -> BTreeMap<(String, String), Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                ops.insert((m.to_uppercase(), path.clone()), op.clone());
            }
        }
    }
    ops
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = spec
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(spec, target)
        }
        None => v,
    }
}

// ------------------------------------------------------------------ routes

#[test]
fn every_template_route_is_in_the_spec_and_every_spec_route_in_the_template() {
    let routes: BTreeSet<(String, String)> = template()
        .functions
        .values()
        .flat_map(|f| f.routes.iter().map(|r| (r.method.clone(), r.path.clone())))
        .collect();
    let documented: BTreeSet<(String, String)> = operations(&spec()).into_keys().collect();
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && phantom.is_empty(),
        "routes missing from openapi.yaml: {undocumented:?}; \
         operations of openapi.yaml that template.yaml does not route: {phantom:?}"
    );
    assert!(routes.len() >= 20, "{routes:?}");
}

/// How `template.yaml` protects a route, from its event's `Auth`: `None` when public, the
/// scopes of which a JWT needs one, or [`IAM`] for a SigV4-signed (service-to-service) route.
/// Marks an IAM-authorized route among scopes (no scope can be spelled like it).
const IAM: &str = "<AWS_IAM>";

fn template_scopes(t: &Template) -> BTreeMap<(String, String), Option<BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for f in t.functions.values() {
        let events = &t.resources[&f.logical_id].properties["Events"];
        for r in &f.routes {
            let auth = &events[&r.event]["Properties"]["Auth"];
            let scopes = if auth["Authorizer"] == "NONE" {
                None
            } else if auth["Authorizer"] == "AWS_IAM" {
                Some(BTreeSet::from([IAM.to_owned()]))
            } else {
                Some(
                    auth["AuthorizationScopes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect(),
                )
            };
            out.insert((r.method.clone(), r.path.clone()), scopes);
        }
    }
    out
}

/// Each route is as protected as the spec says: public exactly where the spec has
/// `security: []`, otherwise the same scopes (the spec lists them as alternatives, one
/// requirement each, which is how the JWT authorizer reads a route's `AuthorizationScopes`).
/// A route without scopes would let any valid token in, so none may lack them.
#[test]
fn every_route_requires_the_scopes_the_spec_documents() {
    let t = template();
    let api = &t.resources["HttpApi"].properties["Auth"];
    assert_eq!(
        api["DefaultAuthorizer"], "Jwt",
        "every route protected by default"
    );
    let jwt = &api["Authorizers"]["Jwt"];
    assert_eq!(jwt["IdentitySource"], "$request.header.Authorization");
    assert_eq!(
        jwt["JwtConfiguration"]["issuer"],
        json!({"Ref": "JwtIssuer"})
    );
    assert_eq!(
        jwt["JwtConfiguration"]["audience"],
        json!([{"Ref": "JwtAudience"}])
    );

    let spec = spec();
    let mut bad = Vec::new();
    for ((method, path), scopes) in template_scopes(&t) {
        let op = &operations(&spec)[&(method.clone(), path.clone())];
        let documented: Option<BTreeSet<String>> = match op["security"].as_array() {
            Some(reqs) if reqs.is_empty() => None,
            Some(reqs) if reqs.iter().any(|r| r.get("sigv4").is_some()) => {
                Some(BTreeSet::from([IAM.to_owned()]))
            }
            Some(reqs) => Some(
                reqs.iter()
                    .flat_map(|r| r["bearer"].as_array().into_iter().flatten())
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect(),
            ),
            None => Some(BTreeSet::from(["<missing security>".to_owned()])),
        };
        if scopes.as_ref().is_some_and(BTreeSet::is_empty) {
            bad.push(format!(
                "{method} {path}: protected but no AuthorizationScopes"
            ));
        }
        if scopes != documented {
            bad.push(format!(
                "{method} {path}: template {scopes:?}, openapi.yaml {documented:?}"
            ));
        }
    }
    let public: Vec<_> = template_scopes(&t)
        .into_iter()
        .filter(|(_, s)| s.is_none())
        .map(|((m, p), _)| format!("{m} {p}"))
        .collect();
    assert_eq!(public, ["GET /health", "GET /openapi.json"]);
    for (route, scope) in [
        ("/ops/dlq", "operators"),
        ("/trades", "traders"),
        ("/agents/match", IAM),
    ] {
        let wanted = BTreeSet::from([scope.to_owned()]);
        let got = template_scopes(&t)
            .into_iter()
            .find(|((_, p), _)| p == route)
            .and_then(|(_, s)| s);
        assert_eq!(got, Some(wanted), "{route}");
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ------------------------------------------------------------------ documented errors

/// What each operation must document, derived from what the shared HTTP edge can answer:
/// `500` everywhere; `503` wherever a dependency is called; with a JSON body `400` (not JSON),
/// `413` (over 64 KiB), `415` (not JSON), `422` (invalid, naming the field); with query or
/// header parameters `422`; with path parameters `404` or `422`; `202` with a `Location`.
fn contract_violations(spec: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let mut ids = BTreeSet::new();
    let by_id: BTreeMap<String, Value> = operations(spec)
        .into_values()
        .filter_map(|op| Some((op["operationId"].as_str()?.to_owned(), op)))
        .collect();
    for ((method, path), op) in operations(spec) {
        let name = format!("{method} {path}");
        let id = op["operationId"].as_str().unwrap_or_default().to_owned();
        if id.is_empty() || !ids.insert(id.clone()) {
            bad.push(format!("{name}: missing or duplicate operationId {id:?}"));
        }
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        let has = |code: &str| responses.contains_key(code);
        let params: Vec<&Value> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().map(|p| resolve(spec, p)).collect())
            .unwrap_or_default();
        let params_in = |place: &'static str| params.iter().filter(move |p| p["in"] == place);

        // Path placeholders and path parameters name each other.
        let placeholders: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let declared: BTreeSet<String> = params_in("path")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        if placeholders != declared {
            bad.push(format!(
                "{name}: path parameters {declared:?} differ from {placeholders:?}"
            ));
        }
        for p in params_in("path") {
            if p["required"] != true {
                bad.push(format!("{name}: path parameter {} not required", p["name"]));
            }
        }

        let mut required = vec!["500"];
        if id != "getOpenApi" {
            required.push("503");
        }
        if op.get("requestBody").is_some() {
            required.extend(["400", "413", "415", "422"]);
            let schema = resolve(
                spec,
                &op["requestBody"]["content"]["application/json"]["schema"],
            );
            if schema["type"] != "object" || schema["additionalProperties"] != false {
                bad.push(format!(
                    "{name}: request body must be an object without unknown fields \
                     (the handlers deny them)"
                ));
            }
        }
        if params_in("query").next().is_some() {
            required.push("422");
        }
        // The gateway's authorizers answer these before any function runs: the JWT one `401`
        // (no valid token) and `403` (no scope of the route), the IAM one `403`.
        let schemes: BTreeSet<&str> = op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_object())
            .flat_map(|r| r.keys().map(String::as_str))
            .collect();
        if schemes.contains("bearer") {
            required.extend(["401", "403"]);
        }
        if schemes.contains("sigv4") {
            required.push("403");
        }
        if params_in("header").any(|p| p["name"] == "Idempotency-Key") {
            required.push("422");
        }
        for code in required {
            if !has(code) {
                bad.push(format!("{name}: response {code} is not documented"));
            }
        }
        if !placeholders.is_empty() && !has("404") && !has("422") {
            bad.push(format!(
                "{name}: neither 404 nor 422 for a bad path parameter"
            ));
        }
        if !responses.keys().any(|c| c.starts_with('2')) {
            bad.push(format!("{name}: no success response"));
        }

        for (code, response) in &responses {
            let response = resolve(spec, response);
            // Links (for stateful fuzzing) lead to operations that exist, by their parameters.
            for (link, l) in response["links"].as_object().into_iter().flatten() {
                let target = l["operationId"].as_str().unwrap_or_default();
                let Some(target_op) = by_id.get(target) else {
                    bad.push(format!("{name}: link {link} to unknown operation {target}"));
                    continue;
                };
                for p in l["parameters"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(p, _)| p)
                {
                    let known = target_op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|tp| resolve(spec, tp)["name"] == p.as_str());
                    if !known {
                        bad.push(format!("{name}: link {link} sets unknown parameter {p}"));
                    }
                }
            }
            if code == "202" {
                let location = resolve(spec, &response["headers"]["Location"]);
                if location["required"] != true {
                    bad.push(format!("{name}: 202 without a required Location header"));
                }
            }
            // Refusals of the authorizers alone come in API Gateway's shape, not as problems.
            let gateway_only = code == "401"
                || (code == "403" && schemes.contains("sigv4") && !schemes.contains("bearer"));
            if gateway_only {
                let gateway = &response["content"]["application/json"]["schema"]["$ref"];
                if gateway != "#/components/schemas/GatewayMessage" {
                    bad.push(format!(
                        "{name}: {code} comes from the gateway, as a GatewayMessage"
                    ));
                }
            } else if code.starts_with('4') || code.starts_with('5') {
                // Health's 503 is its report; every other error is a problem.
                let problem = &response["content"]["application/problem+json"]["schema"];
                let problem_ref = problem["$ref"].as_str().unwrap_or_default();
                let expected = if code == "422" {
                    "#/components/schemas/FieldProblem"
                } else {
                    "#/components/schemas/Problem"
                };
                if problem_ref != expected {
                    bad.push(format!(
                        "{name}: {code} must be application/problem+json with {expected}, \
                         not {problem}"
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn every_operation_documents_the_errors_it_can_answer() {
    let bad = contract_violations(&spec());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let problem = resolve(&spec(), &json!({"$ref": "#/components/schemas/Problem"})).clone();
    assert_eq!(
        problem["required"],
        json!(["type", "title", "status", "detail"])
    );
    assert!(problem["properties"]["field"].is_object());
}

#[test]
fn the_error_rule_fails_on_an_undocumented_error() {
    let mut s = spec();
    let responses = s["paths"]["/trades"]["post"]["responses"]
        .as_object_mut()
        .unwrap();
    responses.remove("413");
    responses.insert("422".into(), json!({"description": "plain"}));
    let bad = contract_violations(&s);
    assert!(
        bad.iter()
            .any(|b| b == "POST /trades: response 413 is not documented"),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|b| b.starts_with("POST /trades: 422 must be application/problem+json")),
        "{bad:?}"
    );
}

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
    for s in &all {
        let id = schema(&spec, "Id");
        assert_eq!(
            accepts_string(&spec, id, s),
            s.parse::<AgentId>().is_ok(),
            "id {s:?}"
        );
        let skill = schema(&spec, "Skill");
        assert_eq!(
            accepts_string(&spec, skill, s),
            s.parse::<Skill>().is_ok(),
            "skill {s:?}"
        );
        let symbol = schema(&spec, "Symbol");
        assert_eq!(
            accepts_string(&spec, symbol, s),
            s.parse::<Symbol>().is_ok(),
            "symbol {s:?}"
        );
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

// ------------------------------------------------------------------ JSON Schema

/// Validates JSON against a schema of `openapi.yaml` (OpenAPI 3.1: JSON Schema 2020-12) with
/// the `jsonschema` crate, `format`s asserted (`uuid`, `date-time`).
struct Validator<'a> {
    spec: &'a Value,
}

impl<'a> Validator<'a> {
    fn new(spec: &'a Value) -> Self {
        Validator { spec }
    }

    /// `schema` (a fragment of the spec, whose `$ref`s point into it) compiled once, to
    /// validate many values.
    fn compile(&self, schema: &Value) -> jsonschema::Validator {
        let mut root = self.spec.clone();
        root["$defs"] = json!({ "target": schema });
        root["$ref"] = "#/$defs/target".into();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{schema} does not compile: {e}"))
    }

    fn errors(&self, schema: &Value, value: &Value) -> Vec<String> {
        self.compile(schema)
            .iter_errors(value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }
}

#[test]
fn the_validator_refuses_what_breaks_a_schema() {
    let spec = spec();
    let v = Validator::new(&spec);
    let problem = json!({"$ref": "#/components/schemas/FieldProblem"});
    let good = json!({"type": "/problems/validation", "title": "Invalid request", "status": 422,
                      "detail": "capacity: out of range", "field": "capacity"});
    assert_eq!(v.errors(&problem, &good), Vec::<String>::new());
    let mut no_field = good.clone();
    no_field.as_object_mut().unwrap().remove("field");
    assert!(!v.errors(&problem, &no_field).is_empty());
    let agent = json!({"$ref": "#/components/schemas/Agent"});
    let bad = json!({"agentId": "a b", "name": "A", "state": "BUSY", "skills": [], "capacity": 51,
                     "activeConversations": 0, "version": 1, "updatedAt": "yesterday"});
    let errors = v.errors(&agent, &bad);
    for what in ["a b", "BUSY", "maximum of 50", "date-time"] {
        assert!(
            errors.iter().any(|e| e.contains(what)),
            "{what}: {errors:?}"
        );
    }
}

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

#[tokio::test]
async fn responses_of_a_real_run_validate_against_the_spec() {
    let env = Env::new().await;
    let bus = env.bus();
    let agents = agents_api::AwsApp::new(
        &env.sdk,
        agents_api::Config {
            table_name: env.table("AgentsTable"),
            command_queue_url: env.queue_url("AgentsCommandQueue"),
            event_bus_name: bus.clone(),
        },
    );
    let agents_worker = agents_worker::AwsApp::new(
        &env.sdk,
        agents_worker::Config {
            table_name: env.table("AgentsTable"),
            event_bus_name: bus.clone(),
        },
    );
    let conversations = conversations_api::AwsApp::new(
        &env.sdk,
        conversations_api::Config {
            table_name: env.table("ConversationsTable"),
            event_bus_name: bus.clone(),
        },
    );
    let trades = trades_api::AwsApp::new(
        &env.sdk,
        trades_api::Config {
            table_name: env.table("TradesTable"),
            queue_url: env.queue_url("TradesQueue"),
        },
    );
    let trades_worker = trades_worker::AwsApp::new(
        &env.sdk,
        trades_worker::Config {
            table_name: env.table("TradesTable"),
            event_bus_name: bus.clone(),
        },
    );
    let positions = positions_api::AwsApp::new(
        &env.sdk,
        positions_api::Config {
            table_name: env.table("PositionsTable"),
        },
    );
    let positions_worker = positions_worker::AwsApp::new(
        &env.sdk,
        positions_worker::Config {
            table_name: env.table("PositionsTable"),
        },
    );
    let ledger = ledger_api::AwsApp::new(
        &env.sdk,
        ledger_api::Config {
            table_name: env.table("LedgerTable"),
        },
    );
    let ledger_worker = ledger_worker::AwsApp::new(
        &env.sdk,
        ledger_worker::Config {
            table_name: env.table("LedgerTable"),
        },
    );
    let health = health_api::App::new(
        &env.sdk,
        health_api::Config {
            tables: vec![env.table("AgentsTable"), env.table("TradesTable")],
            queues: vec![env.queue_url("AgentsQueue"), env.queue_url("AgentsDLQ")],
            event_bus_name: bus.clone(),
        },
    );
    let ops = ops_api::App::new(
        &env.sdk,
        ops_api::Config::parse(&format!(
            "agents|{}|{}",
            env.queue_url("AgentsDLQ"),
            env.queue_url("AgentsQueue")
        ))
        .unwrap(),
    );
    let docs = docs_api::App::new().unwrap();
    let mut run = Run::new();

    macro_rules! call {
        ($handler:expr, $method:expr, $route:expr, $path:expr, $body:expr, $headers:expr) => {{
            let path: String = $path;
            let resp = $handler(request(&event($method, &path, $body, $headers))).await;
            run.check($method, $route, &resp)
        }};
        ($handler:expr, $method:expr, $route:expr, $path:expr) => {
            call!($handler, $method, $route, $path, None, &[])
        };
    }
    let agents_h = |r| agents_api::handle(&agents, r);
    let conv_h = |r| conversations_api::handle(&conversations, r);
    let trades_h = |r| trades_api::handle(&trades, r);
    let positions_h = |r| positions_api::handle(&positions, r);
    let ledger_h = |r| ledger_api::handle(&ledger, r);

    // Agents: register, apply, AVAILABLE, list, match (200, then 409 for lack of capacity).
    let reg = r#"{"name": "Ada", "skills": ["billing"], "capacity": 1}"#;
    let route = "/agents/{agentId}";
    assert_eq!(
        call!(
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
        agents_h,
        "PUT",
        route,
        "/agents/ada".to_string(),
        Some(r#"{"name": "A", "capacity": 51}"#),
        &[]
    );
    assert_eq!((s, &b["field"]), (422, &json!("capacity")));
    let (s, _) = call!(
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
        agents_h,
        "POST",
        route,
        "/agents/ada/state".to_string(),
        Some(r#"{"state": "AVAILABLE"}"#),
        &[("Idempotency-Key", "k1")]
    );
    assert_eq!(s, 202);
    let (s, _) = call!(
        agents_h,
        "POST",
        route,
        "/agents/ada/state".to_string(),
        Some(r#"{"state": "AWAY"}"#),
        &[("Idempotency-Key", "k1")]
    );
    assert_eq!(s, 422, "same key, other body");
    let (s, _) = call!(
        agents_h,
        "POST",
        route,
        "/agents/nobody/state".to_string(),
        Some(r#"{"state": "AWAY"}"#),
        &[]
    );
    assert_eq!(s, 404);
    let (s, _) = call!(
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
    let (s, agent) = call!(agents_h, "GET", route, "/agents/ada/state".to_string());
    assert_eq!((s, &agent["state"]), (200, &json!("AVAILABLE")));
    assert_eq!(
        call!(agents_h, "GET", route, "/agents/nobody/state".to_string()).0,
        404
    );
    let route = "/agents";
    assert_eq!(
        call!(
            agents_h,
            "GET",
            route,
            "/agents?state=AVAILABLE&limit=10".to_string()
        )
        .0,
        200
    );
    assert_eq!(call!(agents_h, "GET", route, "/agents".to_string()).0, 200);
    assert_eq!(
        call!(agents_h, "GET", route, "/agents?limit=0".to_string()).0,
        422
    );
    assert_eq!(
        call!(agents_h, "GET", route, "/agents?cursor=no!".to_string()).0,
        422
    );
    // Cursors the spec admits (base64url) that name no page: `{}`, a foreign key, a non-string
    // value, text that is no base64 of JSON. Not found, never a 5xx.
    for cursor in ["e30", "eyJwayI6IngifQ", "eyJwayI6MX0", "abc"] {
        let path = format!("/agents?cursor={cursor}");
        assert_eq!(
            call!(agents_h, "GET", route, path).0,
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
    let (s, matched) = call!(agents_h, "POST", route, route.to_string(), Some(m), &[]);
    assert_eq!((s, &matched["agentId"]), (200, &json!("ada")));
    let m2 = r#"{"conversationId": "c2", "skills": ["billing"]}"#;
    assert_eq!(
        call!(agents_h, "POST", route, route.to_string(), Some(m2), &[]).0,
        409
    );

    // Conversations: start, get, send, list, get message, receipt, close.
    let route = "/conversations";
    let start = r#"{"customerId": "cust-1", "channel": "chat", "skills": ["billing"]}"#;
    let (s, started) = call!(conv_h, "POST", route, route.to_string(), Some(start), &[]);
    assert_eq!(s, 202);
    let id = started["conversationId"].as_str().unwrap().to_owned();
    assert_eq!(
        call!(
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
        call!(conv_h, "GET", route, format!("{conv}/messages?limit=5")).0,
        200
    );
    let message = format!("{conv}/messages/{}", sent["messageId"].as_str().unwrap());
    let route = "/conversations/{conversationId}/messages/{messageId}";
    assert_eq!(call!(conv_h, "GET", route, message.clone()).0, 200);
    assert_eq!(
        call!(conv_h, "GET", route, format!("{conv}/messages/nope")).0,
        404
    );
    let route = "/conversations/{conversationId}/messages/{messageId}/receipts";
    assert_eq!(
        call!(
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
    assert_eq!(call!(conv_h, "POST", route, format!("{conv}/close")).0, 202);
    assert_eq!(
        call!(
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

    // Trades → worker → positions and ledger.
    let route = "/trades";
    // The smallest notional first: its ledger balance (1e-16) must still add exactly after.
    let tiny = r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": "0.00000001", "price": 1e-8}"#;
    assert_eq!(
        call!(trades_h, "POST", route, route.to_string(), Some(tiny), &[]).0,
        202
    );
    let buy = r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": 10, "price": "12.5"}"#;
    let (s, accepted) = call!(
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
        call!(trades_h, "POST", route, route.to_string(), Some(sell), &[]).0,
        202
    );
    let huge =
        r#"{"accountId": "acc-1", "symbol": "ACME", "side": "BUY", "quantity": 1e400, "price": 1}"#;
    let (s, b) = call!(trades_h, "POST", route, route.to_string(), Some(huge), &[]);
    assert_eq!((s, &b["field"]), (422, &json!("quantity")));
    let trade = format!("/trades/{}", accepted["tradeId"].as_str().unwrap());
    let route = "/trades/{tradeId}";
    assert_eq!(
        call!(trades_h, "GET", route, trade.clone()).0,
        200,
        "PENDING"
    );
    env.drain("TradesQueue", |e| trades_worker::handle(&trades_worker, e))
        .await;
    let (s, t) = call!(trades_h, "GET", route, trade.clone());
    assert_eq!((s, &t["status"]), (200, &json!("EXECUTED")));
    assert_eq!(
        call!(trades_h, "GET", route, "/trades/not-a-uuid".to_string()).0,
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
        ledger_h,
        "GET",
        route,
        "/accounts/acc-1/ledger?limit=1".to_string()
    );
    assert_eq!((s, l["entries"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(
        call!(
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

    // Health, operations, docs.
    let health_h = |r| health_api::handle(&health, r);
    assert_eq!(
        call!(health_h, "GET", "/health", "/health".to_string()).0,
        200
    );
    let ops_h = |r| ops_api::handle(&ops, r);
    assert_eq!(
        call!(ops_h, "GET", "/ops/dlq", "/ops/dlq".to_string()).0,
        200
    );
    let route = "/ops/dlq/{queue}/redrive";
    assert_eq!(
        call!(ops_h, "POST", route, "/ops/dlq/agents/redrive".to_string()).0,
        200
    );
    assert_eq!(
        call!(ops_h, "POST", route, "/ops/dlq/nope/redrive".to_string()).0,
        404
    );
    assert_eq!(
        call!(
            ops_h,
            "POST",
            route,
            "/ops/dlq/agents/redrive?limit=0".to_string()
        )
        .0,
        422
    );
    let analytics = analytics_api::AwsApp::new(
        &env.sdk,
        analytics_api::Config {
            table_name: env.table("AnalyticsTable"),
        },
    );
    let analytics_h = |r| analytics_api::handle(&analytics, r);
    let route = "/analytics/summary";
    assert_eq!(call!(analytics_h, "GET", route, route.to_string()).0, 200);
    let route = "/analytics/agents/{agentId}";
    assert_eq!(
        call!(
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
        call!(docs_h, "GET", "/openapi.json", "/openapi.json".to_string()).0,
        200
    );

    assert!(
        run.failures.is_empty(),
        "responses that break openapi.yaml:\n{}",
        run.failures.join("\n")
    );
    assert!(run.seen.len() >= 40, "{:?}", run.seen);
}

// ------------------------------------------------------------------ least privilege

/// Logical ids an expression refers to (`Ref`, `Fn::GetAtt`, `${Name}` / `${Name.Attr}` in
/// `Fn::Sub`), anywhere inside it.
fn references(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, arg) in o {
                match (k.as_str(), arg) {
                    ("Ref", Value::String(id)) => {
                        out.insert(id.clone());
                    }
                    ("Fn::GetAtt", Value::Array(a)) => {
                        if let Some(id) = a.first().and_then(Value::as_str) {
                            out.insert(id.to_owned());
                        }
                    }
                    ("Fn::Sub", s) => {
                        let text = s
                            .as_str()
                            .or_else(|| s.get(0).and_then(Value::as_str))
                            .unwrap_or_default();
                        for part in text.split("${").skip(1) {
                            let name = part.split('}').next().unwrap_or_default();
                            let id = name.split('.').next().unwrap_or_default();
                            if !id.starts_with("AWS::") {
                                out.insert(id.to_owned());
                            }
                        }
                        references(s, out);
                    }
                    _ => references(arg, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        other => vec![other],
    }
}

/// Which resource type an action's service acts on.
fn service_kind(action: &str) -> Option<&'static str> {
    match action.split(':').next()? {
        "dynamodb" => Some("AWS::DynamoDB::Table"),
        "sqs" => Some("AWS::SQS::Queue"),
        "events" => Some("AWS::Events::EventBus"),
        "execute-api" => Some("AWS::Serverless::HttpApi"),
        _ => None,
    }
}

/// Least-privilege violations of `template`:
/// - a function policy must be an inline statement list (a managed policy or a SAM policy
///   template grants actions this file does not show);
/// - no `*` in any action or resource of any policy statement in the template;
/// - each resource is named by reference (`!GetAtt X.Arn`, `!Ref X`, `!Sub "${X.Arn}/index/I"`)
///   to a resource of the kind the action's service acts on, with `I` an index of table `X`;
/// - the function's environment names every resource it is granted (a function granted
///   `AgentsTable` must be told `TABLE_NAME: !Ref AgentsTable` or it has no use for it).
fn least_privilege_violations(t: &Template) -> Vec<String> {
    let mut bad = Vec::new();
    // Wildcards anywhere: function policies and resource policies (queue policies) alike.
    fn statements<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(o) => {
                if let Some(s) = o.get("Statement") {
                    out.extend(as_list(s));
                }
                o.values().for_each(|x| statements(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| statements(x, out)),
            _ => {}
        }
    }
    for (id, r) in &t.resources {
        let mut found = Vec::new();
        statements(&r.properties, &mut found);
        for s in found {
            for key in ["Action", "NotAction", "Resource", "NotResource"] {
                if ["NotAction", "NotResource"].contains(&key) && s.get(key).is_some() {
                    bad.push(format!("{id}: {key} grants everything else"));
                }
                for v in as_list(s.get(key).unwrap_or(&Value::Null)) {
                    if v.to_string().contains('*') {
                        bad.push(format!("{id}: wildcard {key} {v}"));
                    }
                }
            }
            if s["Principal"] == "*" || s["Principal"]["AWS"] == "*" {
                bad.push(format!("{id}: wildcard principal"));
            }
        }
    }
    let scopes = template_scopes(t);
    for (id, f) in &t.functions {
        let mut uses = BTreeSet::new();
        for v in f.environment.values() {
            references(v, &mut uses);
        }
        let props = &t.resources[id].properties;
        for policy in as_list(&props["Policies"]) {
            let Some(statement) = policy.get("Statement") else {
                bad.push(format!(
                    "{id}: policy {policy} is not an inline statement list"
                ));
                continue;
            };
            for s in as_list(statement) {
                if s["Effect"] != "Allow" {
                    continue;
                }
                let actions: Vec<&str> = as_list(&s["Action"])
                    .into_iter()
                    .filter_map(Value::as_str)
                    .collect();
                for resource in as_list(&s["Resource"]) {
                    let mut named = BTreeSet::new();
                    references(resource, &mut named);
                    let target = match (named.len(), named.iter().next()) {
                        (1, Some(t)) => t.clone(),
                        _ => {
                            bad.push(format!(
                                "{id}: resource {resource} does not name one template resource"
                            ));
                            continue;
                        }
                    };
                    let kind = t.kind_of(&target).unwrap_or("missing");
                    for a in &actions {
                        if service_kind(a) != Some(kind) {
                            bad.push(format!("{id}: {a} granted on {target}, a {kind}"));
                        }
                    }
                    let sub = resource.get("Fn::Sub").and_then(Value::as_str);
                    if let Some(sub) = sub.filter(|_| kind == "AWS::Serverless::HttpApi") {
                        // execute-api:Invoke on one IAM-authorized route of that API, by name.
                        let prefix = format!(
                            "arn:${{AWS::Partition}}:execute-api:${{AWS::Region}}:\
                             ${{AWS::AccountId}}:${{{target}}}/$default/"
                        );
                        let route = sub
                            .strip_prefix(&prefix)
                            .and_then(|r| r.split_once('/'))
                            .map(|(m, p)| (m.to_owned(), format!("/{p}")));
                        let iam = route
                            .as_ref()
                            .and_then(|r| scopes.get(r))
                            .is_some_and(|s| s.as_ref().is_some_and(|s| s.contains(IAM)));
                        if !iam {
                            bad.push(format!("{id}: {sub} is not an IAM-authorized route"));
                        }
                    } else if let Some(sub) = sub {
                        let index = sub.strip_prefix(&format!("${{{target}.Arn}}/index/"));
                        let indexes = &t.resources[&target].properties["GlobalSecondaryIndexes"];
                        let exists = index
                            .is_some_and(|i| as_list(indexes).iter().any(|g| g["IndexName"] == i));
                        if !exists {
                            bad.push(format!("{id}: {sub} is not an index of {target}"));
                        }
                    }
                    if !uses.contains(&target) {
                        bad.push(format!(
                            "{id}: granted {target} but its environment never names it"
                        ));
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn function_policies_grant_only_what_each_function_uses() {
    let t = template();
    let bad = least_privilege_violations(&t);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // The rule looked at real grants: most functions have some.
    let granted = t
        .functions
        .keys()
        .filter(|id| !as_list(&t.resources[*id].properties["Policies"]).is_empty())
        .count();
    assert!(granted >= 10, "{granted}");
}

#[test]
fn the_least_privilege_rule_catches_over_grants_and_wildcards() {
    let text = r#"
Globals:
  Function:
    Environment:
      Variables:
        EVENT_BUS_NAME: !Ref Bus
Resources:
  Bus: {Type: AWS::Events::EventBus}
  TableA: {Type: AWS::DynamoDB::Table}
  TableB: {Type: AWS::DynamoDB::Table}
  Queue: {Type: AWS::SQS::Queue}
  Api:
    Type: AWS::Serverless::HttpApi
    Properties: {Auth: {EnableIamAuthorizer: true}}
  Fn:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: fn}}
    Properties:
      Environment:
        Variables:
          TABLE_NAME: !Ref TableA
          API_URL: !Sub "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}"
      Events:
        Open: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: GET, Path: /open, Auth: {Authorizer: NONE}}}
        Signed: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: POST, Path: /signed, Auth: {Authorizer: AWS_IAM}}}
      Policies:
        - Statement:
            - Effect: Allow
              Action: [dynamodb:GetItem]
              Resource: [!GetAtt TableA.Arn, !GetAtt TableB.Arn, !Sub "${TableA.Arn}/index/nope"]
            - Effect: Allow
              Action: "sqs:*"
              Resource: !GetAtt Queue.Arn
            - Effect: Allow
              Action: dynamodb:Query
              Resource: "*"
            - Effect: Allow
              Action: events:PutEvents
              Resource: !GetAtt Bus.Arn
            - Effect: Allow
              Action: execute-api:Invoke
              Resource:
                - !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/$default/POST/signed"
                - !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/$default/GET/open"
        - AmazonDynamoDBFullAccess
"#;
    let t = Template::parse(text, "bad.yaml").unwrap();
    let bad = least_privilege_violations(&t);
    for expected in [
        "Fn: granted TableB but its environment never names it",
        "Fn: wildcard Action \"sqs:*\"",
        "Fn: wildcard Resource \"*\"",
        "Fn: ${TableA.Arn}/index/nope is not an index of TableA",
        "Fn: granted Queue but its environment never names it",
        "Fn: policy \"AmazonDynamoDBFullAccess\" is not an inline statement list",
        "Fn: arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/$default/GET/open is not an IAM-authorized route",
    ] {
        assert!(bad.iter().any(|b| b == expected), "{expected}: {bad:#?}");
    }
    assert!(
        !bad.iter()
            .any(|b| b.contains("TableA but") || b.contains("Bus but") || b.contains("/signed")),
        "{bad:#?}"
    );
}

/// Every test the README's guarantees table names exists: the table cannot point at a test
/// that was renamed or removed.
#[test]
fn every_test_the_readme_names_exists() {
    let readme = std::fs::read_to_string(system_tests::root().join("README.md")).unwrap();
    let start = readme
        .find("| guarantee | proven by |")
        .expect("the guarantees table");
    let table = &readme[start..start + readme[start..].find("\n\n").unwrap()];
    let mut sources = String::new();
    let mut dirs = vec![system_tests::root()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && name != "target" && name != ".git" {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut named = 0;
    for part in table.split('`').skip(1).step_by(2) {
        let is_test_name = part.len() > 12
            && part.contains('_')
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if is_test_name {
            named += 1;
            assert!(
                sources.contains(&format!("fn {part}(")),
                "the README names {part}, which is no test"
            );
        }
    }
    assert!(named > 50, "the table names the tests ({named} found)");
}
