//! `requestContext.authorizer` of a payload 2.0 event for an authorized request, as API
//! Gateway builds it: `{"jwt": {"claims": {...}, "scopes": [...] | null}}`, every claim's value
//! a string (the event's `claims` is a map of strings).
//!
//! Stringification follows API Gateway: strings as they are, numbers and booleans as their
//! text, lists as `[a b c]` (items stringified the same way, space-separated), objects and null
//! as JSON text. A claim that must survive unchanged (a trader's accounts) is therefore best
//! sent as one space-separated string.

use serde_json::{Map, Value, json};

use super::Authorized;

/// The `authorizer` object of the event.
pub fn authorizer(auth: &Authorized) -> Value {
    let claims: Map<String, Value> = auth
        .claims
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(stringify(v))))
        .collect();
    json!({ "jwt": { "claims": claims, "scopes": auth.scopes } })
}

fn stringify(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(stringify).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Null | Value::Object(_) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_become_strings_as_api_gateway_makes_them() {
        let claims = json!({
            "sub": "dev-trader",
            "exp": 1_700_000_000,
            "ratio": 1.5,
            "email_verified": true,
            "cognito:groups": ["a", "b", 3, ["c", "d"]],
            "address": {"city": "X"},
            "nothing": null,
            "accounts": "ACC-1 ACC-2"
        });
        let auth = Authorized {
            claims: claims.as_object().unwrap().clone(),
            scopes: Some(vec!["traders".into()]),
        };
        assert_eq!(
            authorizer(&auth),
            json!({"jwt": {
                "claims": {
                    "sub": "dev-trader",
                    "exp": "1700000000",
                    "ratio": "1.5",
                    "email_verified": "true",
                    "cognito:groups": "[a b 3 [c d]]",
                    "address": "{\"city\":\"X\"}",
                    "nothing": "null",
                    "accounts": "ACC-1 ACC-2"
                },
                "scopes": ["traders"]
            }})
        );
        let unscoped = Authorized {
            claims: Map::new(),
            scopes: None,
        };
        assert_eq!(
            authorizer(&unscoped),
            json!({"jwt": {"claims": {}, "scopes": null}})
        );
    }
}
