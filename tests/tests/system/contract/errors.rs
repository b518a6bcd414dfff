//! Every operation documents the errors its handler can answer.

use super::*;

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
