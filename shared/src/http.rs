//! HTTP edge helpers: strict JSON parsing with errors that name the field, problem+json
//! responses, and the one place where [`Error`] becomes a response.

use lambda_http::{Body, Request, RequestExt, Response, request::RequestContext};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::Error;

/// Commands are small; anything bigger is refused before parsing (`413`). Every body the spec
/// admits fits: the largest, a 4000-character message, is under 48 KB even with every
/// character escaped as a JSON surrogate pair (`\uD83D\uDE00`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Parses a JSON body: `415` unless the content type is JSON, `413` when too big, `400` when
/// not JSON, `422` naming the field (as a JSON path such as `skills[2]`) when a value is
/// missing, of the wrong type or invalid.
pub fn parse_json<T: DeserializeOwned>(req: &Request) -> Result<T, Error> {
    parse_command(req).map(|(_, typed)| typed)
}

/// Like [`parse_json`], also returning the body as JSON (to fingerprint it for idempotency).
pub fn parse_command<T: DeserializeOwned>(req: &Request) -> Result<(Value, T), Error> {
    let value = parse_body(req)?;
    if !value.is_object() {
        return Err(Error::invalid("body", "expected a JSON object"));
    }
    let typed = serde_path_to_error::deserialize(&value).map_err(invalid_field)?;
    Ok((value, typed))
}

/// Like [`parse_json`], deserializing straight from the body's bytes instead of through a
/// [`Value`], so that fields read as `serde_json::value::RawValue` (e.g.
/// [`crate::domain::money::Literal`]) see numbers exactly as sent: `0.1` stays one tenth and
/// `1e400` reaches the field's own validation (a `422` naming it) instead of failing the body.
pub fn parse_exact<T: DeserializeOwned>(req: &Request) -> Result<T, Error> {
    let bytes = body_bytes(req)?;
    // Syntax first, over the whole body (numbers are skipped, not converted), so malformed
    // JSON is a 400 whatever the types say.
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map_err(|e| Error::Malformed(format!("malformed JSON: {e}")))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::invalid("body", "expected a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(invalid_field)
}

/// The body of a JSON request: `415` unless the content type is JSON, `413` when too big,
/// `400` when empty.
fn body_bytes(req: &Request) -> Result<&[u8], Error> {
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(Error::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        ));
    }
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(Error::TooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Malformed("request body is empty".into()));
    }
    Ok(bytes)
}

fn parse_body(req: &Request) -> Result<Value, Error> {
    let bytes = body_bytes(req)?;
    serde_json::from_slice(bytes).map_err(|e| Error::Malformed(format!("malformed JSON: {e}")))
}

/// A type or validation error at a JSON path: `422` naming the field (`body` for the root).
fn invalid_field(e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    let field = if path == "." { "body".into() } else { path };
    Error::invalid(field, strip_position(&e.into_inner().to_string()))
}

/// serde's messages end in " at line 1 column 17", which means nothing to a caller who sent
/// the field name we already report.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// The route API Gateway matched for a request, and its path parameters: functions dispatch on
/// these, never on the raw path.
///
/// API Gateway matches the request to a route of the template and passes its key
/// (`requestContext.routeKey`, e.g. `GET /agents/{agentId}/state`) and the parameters it
/// extracted, percent-decoded (`pathParameters`). Parsing the raw path again would be a second,
/// different router: URI parsers normalise dot-segments (`/positions/%2E` would become the
/// list route), and `%2F` inside a parameter would split it. The gateway answers unknown
/// routes and methods itself (`404 {"message":"Not Found"}`), so a function only ever sees
/// the keys of its own routes.
///
/// ```ignore
/// let route = Route::of(&req);
/// match route.key() {
///     "GET /agents/{agentId}/state" => get_state(app, route.lookup("agentId", "agent")?).await,
///     "PUT /agents/{agentId}" => register(app, &req, route.param("agentId")?).await,
///     _ => Err(route.unknown()),
/// }
/// ```
pub struct Route<'r> {
    req: &'r Request,
    key: &'r str,
}

impl<'r> Route<'r> {
    /// The route of `req`; its key is empty when the event carries none (not an HTTP API
    /// event), which matches no route.
    pub fn of(req: &'r Request) -> Route<'r> {
        let key = match req.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(ctx)) => ctx.route_key.as_deref().unwrap_or(""),
            _ => "",
        };
        Route { req, key }
    }

    /// `METHOD /path/{param}` as written in the template.
    pub fn key(&self) -> &'r str {
        self.key
    }

    /// The raw text of path parameter `name` (already percent-decoded by the gateway).
    fn raw(&self, name: &str) -> Result<&'r str, Error> {
        self.req
            .path_parameters_ref()
            .and_then(|p| p.first(name))
            .ok_or_else(|| Error::Internal(format!("route {} has no parameter {name}", self.key)))
    }

    /// Path parameter `name` of a command: one that does not parse is the caller's mistake,
    /// a `422` naming it.
    pub fn param<T: std::str::FromStr<Err = String>>(&self, name: &str) -> Result<T, Error> {
        self.raw(name)?
            .parse()
            .map_err(|e: String| Error::invalid(name, e))
    }

    /// Path parameter `name` of a query: one that does not parse names no `what` that exists,
    /// a `404`.
    pub fn lookup<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<T, Error> {
        let raw = self.raw(name)?;
        raw.parse()
            .map_err(|_| Error::NotFound(format!("no {what} {raw}")))
    }

    /// The answer for a route key this function does not serve (a template that sends a route
    /// to the wrong function): `404`, as the gateway answers for a route it does not have.
    pub fn unknown(&self) -> Error {
        Error::NotFound(format!("no route {:?} in this function", self.key))
    }
}

/// A query-string parameter parsed with `FromStr`: `None` when absent; `422` naming it when it
/// does not parse, or is empty (`?skill=` names no skill: the spec gives every parameter a
/// non-empty schema, so an empty value is no more valid than a wrong one).
pub fn query<T: std::str::FromStr>(req: &Request, name: &str) -> Result<Option<T>, Error>
where
    T::Err: std::fmt::Display,
{
    match req
        .query_string_parameters_ref()
        .and_then(|q| q.first(name))
    {
        None => Ok(None),
        Some("") => Err(Error::invalid(name, "must not be empty")),
        Some(v) => v
            .parse::<T>()
            .map(Some)
            .map_err(|e| Error::invalid(name, e.to_string())),
    }
}

/// Page size: `limit` in 1..=100, 25 when absent.
pub fn limit(req: &Request) -> Result<i32, Error> {
    match query::<i32>(req, "limit")? {
        None => Ok(25),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(Error::invalid("limit", "limit must be between 1 and 100")),
    }
}

/// The page a list request asks for: [`limit`] and `cursor` from its query string.
pub fn page_request(req: &Request) -> Result<crate::store::PageRequest, Error> {
    Ok(crate::store::PageRequest {
        limit: limit(req)?,
        cursor: query::<String>(req, "cursor")?,
    })
}

/// The request header a caller names its correlation id in (lower-case, as API Gateway's
/// payload 2.0 event carries headers).
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// True when a caller's `X-Correlation-Id` value is taken as the correlation id: 1 to 128
/// visible ASCII characters (no spaces, no control characters).
pub fn usable_correlation_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}

/// The id that ties together everything one request causes: the caller's `X-Correlation-Id`
/// when it is sane ([`usable_correlation_id`]), else API Gateway's request id, else a fresh
/// one.
pub fn correlation_id(req: &Request) -> String {
    let from_header = req
        .headers()
        .get(CORRELATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable_correlation_id(v));
    if let Some(h) = from_header {
        return h.to_owned();
    }
    if let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref()
        && let Some(id) = &ctx.request_id
    {
        return id.clone();
    }
    uuid::Uuid::new_v4().to_string()
}

pub fn json<T: Serialize>(status: u16, value: &T) -> Response<Body> {
    let body = match serde_json::to_string(value) {
        Ok(b) => b,
        Err(e) => return problem(&Error::Internal(format!("serializing response: {e}"))),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::Text(body))
        .expect("static status and headers are valid")
}

#[derive(Serialize)]
struct Problem<'a> {
    r#type: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// The error as `application/problem+json` (RFC 9457). 5xx causes are logged here and replaced
/// by a generic detail, so internals never leak to callers.
pub fn problem(err: &Error) -> Response<Body> {
    let status = err.status();
    let (kind, title) = match err {
        Error::Malformed(_) => ("malformed-request", "Malformed request"),
        Error::Invalid { .. } => ("validation", "Invalid request"),
        Error::NotFound(_) => ("not-found", "Not found"),
        Error::Forbidden(_) => ("forbidden", "Forbidden"),
        Error::Conflict(_) => ("conflict", "Conflict"),
        Error::Precondition { .. } => ("precondition-failed", "Precondition failed"),
        Error::InProgress(_) => ("in-progress", "Request in progress"),
        Error::TooLarge { .. } => ("payload-too-large", "Payload too large"),
        Error::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
        Error::Unavailable(_) => ("unavailable", "Service unavailable"),
        Error::Internal(_) => ("internal", "Internal server error"),
    };
    let detail = match err {
        Error::Unavailable(cause) => {
            tracing::warn!(error = %cause, "dependency unavailable");
            "a dependency is unavailable; retry later".to_owned()
        }
        Error::Internal(cause) => {
            tracing::error!(error = %cause, "internal error");
            "unexpected error; it has been logged".to_owned()
        }
        other => other.to_string(),
    };
    let field = match err {
        Error::Invalid { field, .. } | Error::Precondition { field, .. } => Some(field.as_str()),
        _ => None,
    };
    let r#type = format!("/problems/{kind}");
    let body = Problem {
        r#type: &r#type,
        title,
        status: status.as_u16(),
        detail,
        field,
    };
    let mut builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/problem+json");
    if matches!(err, Error::Unavailable(_) | Error::InProgress(_)) {
        builder = builder.header(http::header::RETRY_AFTER, "1");
    }
    builder
        .body(Body::Text(
            serde_json::to_string(&body).expect("problem serializes"),
        ))
        .expect("static status and headers are valid")
}

/// Serves one request the way every API function does: the route runs inside a span carrying
/// the correlation id (so every log line of the request has it), errors become problem+json,
/// and one EMF line records the outcome and latency.
pub async fn serve<F, Fut>(req: Request, route: F) -> Response<Body>
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, Error>>,
{
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        correlation_id = %correlation_id(&req),
    );
    let response = into_response(route(req).instrument(span.clone()).await);
    let status = response.status().as_u16();
    let latency = started.elapsed().as_secs_f64() * 1e3;
    span.in_scope(|| tracing::info!(status, latency_ms = latency, "request served"));
    use crate::metrics::Unit::{Count, Milliseconds};
    crate::metrics::emit(&[
        ("Requests", 1.0, Count),
        (
            "ClientErrors",
            f64::from(u8::from((400..500).contains(&status))),
            Count,
        ),
        ("ServerErrors", f64::from(u8::from(status >= 500)), Count),
        ("Latency", latency, Milliseconds),
    ]);
    response
}

/// Turns a handler result into a response, errors through [`problem`].
fn into_response(result: Result<Response<Body>, Error>) -> Response<Body> {
    result.unwrap_or_else(|e| problem(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(content_type: &str, body: &str) -> Request {
        http::Request::builder()
            .header("content-type", content_type)
            .body(Body::Text(body.into()))
            .unwrap()
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cmd {
        capacity: crate::domain::agents::Capacity,
        skills: crate::domain::agents::Skills,
    }

    #[test]
    fn json_errors_name_the_field_and_status() {
        let e = parse_json::<Cmd>(&req("application/json", r#"{"capacity": 0, "skills": []}"#))
            .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, .. } if field == "capacity"),
            "{e:?}"
        );
        let e = parse_json::<Cmd>(&req(
            "application/json",
            r#"{"capacity": 2, "skills": ["ok", "no way"]}"#,
        ))
        .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, .. } if field == "skills[1]"),
            "{e:?}"
        );
        let e = parse_json::<Cmd>(&req("application/json", r#"{"capacity": "#)).unwrap_err();
        assert_eq!(e.status(), 400);
        let e = parse_json::<Cmd>(&req("text/plain", "{}")).unwrap_err();
        assert_eq!(e.status(), 415);
        let big = format!(r#"{{"skills": ["{}"]}}"#, "a".repeat(MAX_BODY_BYTES));
        assert_eq!(
            parse_json::<Cmd>(&req("application/json", &big))
                .unwrap_err()
                .status(),
            413
        );
        let e = parse_json::<Cmd>(&req(
            "application/json; charset=utf-8",
            r#"{"capacity": 2, "skills": [], "x": 1}"#,
        ))
        .unwrap_err();
        assert_eq!(e.status(), 422);
    }

    #[test]
    fn internal_errors_are_opaque() {
        let resp = problem(&Error::Internal("secret table name".into()));
        assert_eq!(resp.status(), 500);
        let body = std::str::from_utf8(resp.body().as_ref())
            .unwrap()
            .to_owned();
        assert!(!body.contains("secret"));
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
}
