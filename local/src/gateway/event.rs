//! API Gateway HTTP API payload format 2.0: request → event, function result → response.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::routes::{RouteMatch, percent_decode};
use crate::auth::Incoming;

/// The parts of an HTTP request the event is built from.
pub struct Request<'a> {
    /// Method, path and query as received (still percent-encoded), body, and the headers the
    /// function is to see.
    pub http: Incoming<'a>,
    pub source_ip: String,
    pub request_id: &'a str,
    pub account_id: &'a str,
    pub time: DateTime<Utc>,
    /// `requestContext.authorizer` of an authorized request; `None` on a public route.
    pub authorizer: Option<Value>,
}

/// The payload 2.0 event for `req` matched to `route`. Headers are lower-cased and repeated
/// ones comma-joined; `Cookie` headers move to `cookies`; bodies of non-text content types
/// are base64-encoded. Absent parts (no query, no path parameters, no body) are omitted.
pub fn build(req: &Request<'_>, route: &RouteMatch<'_>) -> Value {
    let http = &req.http;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in http.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == "cookie" {
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
            );
            continue;
        }
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    // The gateway's own host (set by the gateway, never the client's), without the port, as
    // API Gateway's `domainName` is its bare domain.
    let domain = headers
        .get("host")
        .map(|h| {
            h.rsplit_once(':')
                .map_or(h.as_str(), |(host, _)| host)
                .to_owned()
        })
        .unwrap_or_else(|| "localhost".into());
    let route_key = route.route.key();
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": http.path,
        "rawQueryString": http.query,
        "headers": headers,
        "requestContext": {
            "accountId": req.account_id,
            "apiId": "local",
            "domainName": domain,
            "domainPrefix": domain.split('.').next().unwrap_or_default(),
            "http": {
                "method": http.method,
                "path": http.path,
                "protocol": "HTTP/1.1",
                "sourceIp": req.source_ip,
                "userAgent": http.headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default(),
            },
            "requestId": req.request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": req.time.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": req.time.timestamp_millis(),
        },
        "isBase64Encoded": false,
    });
    if let Some(authorizer) = &req.authorizer {
        event["requestContext"]["authorizer"] = authorizer.clone();
    }
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    let query = query_parameters(http.query);
    if !query.is_empty() {
        event["queryStringParameters"] = json!(query);
    }
    if !route.params.is_empty() {
        event["pathParameters"] = json!(route.params);
    }
    if !http.body.is_empty() {
        let content_type = http
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        match std::str::from_utf8(http.body) {
            Ok(text) if content_type.is_none_or(is_text) => event["body"] = json!(text),
            _ => {
                event["body"] = json!(BASE64.encode(http.body));
                event["isBase64Encoded"] = json!(true);
            }
        }
    }
    event
}

/// Query parameters, decoded; a repeated name gets its values comma-joined as API Gateway does.
fn query_parameters(raw: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v, true);
        out.entry(percent_decode(k, true))
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// Content types API Gateway passes as text; everything else is base64-encoded.
fn is_text(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
        )
}

/// An HTTP response decoded from a function result.
#[derive(Debug, PartialEq)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Converts a function's result as API Gateway does for payload 2.0: an object with
/// `statusCode` is a response (`headers`, `multiValueHeaders`, `cookies`, `body`,
/// `isBase64Encoded`); any other JSON is a `200` whose body is that JSON. An invalid response
/// is an error (a `502` for the client).
pub fn response(result: &Value) -> Result<HttpResponse, String> {
    let Some(obj) = result.as_object().filter(|o| o.contains_key("statusCode")) else {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        return Ok(HttpResponse {
            status: StatusCode::OK,
            headers,
            body: result.to_string().into_bytes(),
        });
    };
    let status = obj["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("invalid statusCode {}", obj["statusCode"]))?;
    let mut headers = HeaderMap::new();
    for (name, value) in object(obj, "headers")? {
        append(&mut headers, name, &scalar(value)?)?;
    }
    for (name, values) in object(obj, "multiValueHeaders")? {
        for value in values
            .as_array()
            .ok_or_else(|| format!("multiValueHeaders.{name} is not a list"))?
        {
            append(&mut headers, name, &scalar(value)?)?;
        }
    }
    for cookie in obj
        .get("cookies")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        append(&mut headers, "set-cookie", &scalar(cookie)?)?;
    }
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if obj.get("isBase64Encoded") == Some(&Value::Bool(true)) => BASE64
            .decode(s)
            .map_err(|e| format!("body is not valid base64: {e}"))?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn object<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Map<String, Value>, String> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match obj.get(key) {
        None | Some(Value::Null) => Ok(EMPTY.get_or_init(Map::new)),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("{key} is not an object")),
    }
}

fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("header value {other} is not a scalar")),
    }
}

fn append(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), String> {
    let name = HeaderName::try_from(name).map_err(|e| format!("header {name:?}: {e}"))?;
    let value = HeaderValue::try_from(value).map_err(|e| format!("header {name}: {e}"))?;
    headers.append(name, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::routes::RouteTable;
    use crate::template::Template;
    use aws_lambda_events::apigw::ApiGatewayV2httpRequest;

    fn routes() -> RouteTable {
        let text = "Resources:\n  A:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: a}}\n    Properties:\n      Events:\n        Put: {Type: HttpApi, Properties: {Method: PUT, Path: '/agents/{agentId}'}}\n        Any: {Type: HttpApi}\n";
        RouteTable::from_template(&Template::parse(text, "t.yaml").unwrap())
    }

    fn event(
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Value {
        authorized_event(method, path, query, headers, body, None)
    }

    fn authorized_event(
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        authorizer: Option<Value>,
    ) -> Value {
        let table = routes();
        let m = table.find(method, path).unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::try_from(*v).unwrap(),
            );
        }
        let req = Request {
            http: Incoming {
                method,
                path,
                query,
                headers: &map,
                body,
            },
            source_ip: "127.0.0.1".into(),
            request_id: "req-1",
            account_id: "123456789012",
            time: DateTime::from_timestamp(1_583_348_638, 390_000_000).unwrap(),
            authorizer,
        };
        build(&req, &m)
    }

    #[test]
    fn builds_an_event_lambda_events_understands() {
        let v = event(
            "PUT",
            "/agents/a%2D1",
            "x=1&y=a%20b&x=2",
            &[
                ("Host", "127.0.0.1:3000"),
                ("Content-Type", "application/json"),
                ("User-Agent", "curl/8"),
                ("Cookie", "a=1; b=2"),
                ("X-Multi", "1"),
                ("X-Multi", "2"),
            ],
            br#"{"name":"Ada"}"#,
        );
        let e: ApiGatewayV2httpRequest =
            serde_json::from_value(v.clone()).expect("a valid v2 event");
        assert_eq!(e.version.as_deref(), Some("2.0"));
        assert_eq!(e.route_key.as_deref(), Some("PUT /agents/{agentId}"));
        assert_eq!(e.raw_path.as_deref(), Some("/agents/a%2D1"));
        assert_eq!(e.raw_query_string.as_deref(), Some("x=1&y=a%20b&x=2"));
        assert_eq!(
            e.path_parameters.get("agentId").map(String::as_str),
            Some("a-1")
        );
        assert_eq!(e.query_string_parameters.first("x"), Some("1"));
        assert_eq!(v["queryStringParameters"]["x"], "1,2");
        assert_eq!(e.query_string_parameters.first("y"), Some("a b"));
        assert_eq!(e.cookies, Some(vec!["a=1".to_string(), "b=2".to_string()]));
        assert_eq!(e.headers.get("x-multi").unwrap(), "1,2");
        assert!(e.headers.get("cookie").is_none());
        assert_eq!(e.body.as_deref(), Some(r#"{"name":"Ada"}"#));
        assert!(!e.is_base64_encoded);
        let ctx = &e.request_context;
        assert_eq!(ctx.http.method, axum::http::Method::PUT);
        assert_eq!(ctx.http.path.as_deref(), Some("/agents/a%2D1"));
        assert_eq!(ctx.http.source_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(ctx.http.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(ctx.stage.as_deref(), Some("$default"));
        assert_eq!(ctx.request_id.as_deref(), Some("req-1"));
        assert_eq!(ctx.domain_name.as_deref(), Some("127.0.0.1"));
        assert_eq!(ctx.time.as_deref(), Some("04/Mar/2020:19:03:58 +0000"));
        assert_eq!(ctx.time_epoch, 1_583_348_638_390);
        assert_eq!(ctx.account_id.as_deref(), Some("123456789012"));
    }

    #[test]
    fn the_authorizer_context_is_the_one_lambda_events_reads() {
        let public = event("GET", "/x", "", &[], b"");
        assert!(public["requestContext"].get("authorizer").is_none());
        let context = json!({"jwt": {
            "claims": {"sub": "dev-trader", "exp": "1700000000", "accounts": "ACC-1 ACC-2"},
            "scopes": ["traders", "operators"]
        }});
        let v = authorized_event("GET", "/x", "", &[], b"", Some(context.clone()));
        assert_eq!(v["requestContext"]["authorizer"], context);
        let e: ApiGatewayV2httpRequest = serde_json::from_value(v).unwrap();
        let jwt = e.request_context.authorizer.unwrap().jwt.unwrap();
        assert_eq!(jwt.claims["sub"], "dev-trader");
        assert_eq!(jwt.claims["accounts"], "ACC-1 ACC-2");
        assert_eq!(
            jwt.scopes,
            Some(vec!["traders".to_string(), "operators".to_string()])
        );
        // An AWS_IAM route's context, as crate::auth::sigv4 makes it.
        let iam = json!({"iam": {
            "accessKey": "test",
            "accountId": "123456789012",
            "callerId": "test",
            "cognitoIdentity": null,
            "principalOrgId": null,
            "userArn": "arn:aws:iam::123456789012:user/local",
            "userId": "test"
        }});
        let v = authorized_event("POST", "/x", "", &[], b"", Some(iam));
        let e: ApiGatewayV2httpRequest = serde_json::from_value(v).unwrap();
        let authorizer = e.request_context.authorizer.unwrap();
        assert!(authorizer.jwt.is_none());
        let iam = authorizer.iam.unwrap();
        assert_eq!(iam.access_key.as_deref(), Some("test"));
        assert_eq!(iam.account_id.as_deref(), Some("123456789012"));
        assert_eq!(iam.caller_id.as_deref(), Some("test"));
        assert_eq!(iam.user_id.as_deref(), Some("test"));
        assert_eq!(
            iam.user_arn.as_deref(),
            Some("arn:aws:iam::123456789012:user/local")
        );
        assert_eq!(iam.cognito_identity, None);
        assert_eq!(iam.principal_org_id, None);
        let unscoped = json!({"jwt": {"claims": {"sub": "s"}, "scopes": null}});
        let v = authorized_event("GET", "/x", "", &[], b"", Some(unscoped));
        let e: ApiGatewayV2httpRequest = serde_json::from_value(v).unwrap();
        assert_eq!(
            e.request_context.authorizer.unwrap().jwt.unwrap().scopes,
            None
        );
    }

    #[test]
    fn binary_bodies_are_base64_and_absent_parts_omitted() {
        let v = event(
            "POST",
            "/upload",
            "",
            &[("content-type", "image/png")],
            &[0x89, b'P', b'N', b'G'],
        );
        let e: ApiGatewayV2httpRequest = serde_json::from_value(v.clone()).unwrap();
        assert!(e.is_base64_encoded);
        assert_eq!(
            BASE64.decode(e.body.unwrap()).unwrap(),
            [0x89, b'P', b'N', b'G']
        );
        assert_eq!(e.route_key.as_deref(), Some("ANY /{proxy+}"));
        assert_eq!(v["pathParameters"], json!({"proxy": "upload"}));
        let bare = event("GET", "/x", "", &[], b"");
        for absent in ["body", "queryStringParameters", "cookies"] {
            assert!(bare.get(absent).is_none(), "{absent}");
        }
        let text = event(
            "POST",
            "/x",
            "",
            &[("content-type", "application/problem+json; charset=utf-8")],
            b"{}",
        );
        assert_eq!(text["isBase64Encoded"], false);
    }

    #[test]
    fn converts_responses() {
        let r = response(&json!({
            "statusCode": 201,
            "headers": {"content-type": "application/json", "location": "/agents/a"},
            "multiValueHeaders": {"x-m": ["1", "2"]},
            "cookies": ["s=1; HttpOnly"],
            "body": "{\"ok\":true}",
            "isBase64Encoded": false
        }))
        .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers["location"], "/agents/a");
        assert_eq!(r.headers.get_all("x-m").iter().count(), 2);
        assert_eq!(r.headers["set-cookie"], "s=1; HttpOnly");
        assert_eq!(r.body, b"{\"ok\":true}");

        let b64 =
            response(&json!({"statusCode": 200, "body": "aGk=", "isBase64Encoded": true})).unwrap();
        assert_eq!(b64.body, b"hi");
        let bare = response(&json!({"hello": "x"})).unwrap();
        assert_eq!(
            (bare.status, bare.body.as_slice()),
            (StatusCode::OK, &br#"{"hello":"x"}"#[..])
        );
        assert_eq!(bare.headers["content-type"], "application/json");
        let empty = response(&json!({"statusCode": 204})).unwrap();
        assert!(empty.body.is_empty());

        assert!(response(&json!({"statusCode": "x"})).is_err());
        assert!(response(&json!({"statusCode": 200, "headers": {"bad name": "v"}})).is_err());
        assert!(
            response(&json!({"statusCode": 200, "body": "***", "isBase64Encoded": true})).is_err()
        );
    }
}
