//! The local HTTP API: the template's `HttpApi` routes, each request invoking its function
//! with a payload 2.0 event. Errors answer as API Gateway does: `404 {"message":"Not Found"}`
//! for an unknown route, `413` beyond 10 MB, `502 {"message":"Internal Server Error"}` when the
//! function fails or answers nonsense, `503 {"message":"Service Unavailable"}` when it times out.
//! A route with a JWT authorizer answers `401 {"message":"Unauthorized"}` or `403
//! {"message":"Forbidden"}` (with a `www-authenticate` challenge) without invoking its function
//! when the request's token does not pass; an `AWS_IAM` route answers `403` with API Gateway's
//! message when the request's SigV4 signature does not ([`crate::auth`]). Paths under
//! `/_local/` never reach a route: they are the dashboard's ([`crate::dashboard`]).

mod event;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

pub use event::{HttpResponse, response as convert_response};
pub use routes::{Route, RouteMatch, RouteTable};

use crate::auth::{Authorizers, Denial, Incoming};
use crate::runtime::{InvokeError, InvokeOutcome, Runtime};

/// API Gateway's payload limit.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// What the server needs: routes, their authorizers, the functions behind them, the account
/// for the events.
pub struct Gateway {
    /// Read once per request; a template reload stores a new [`Routing`] (requests already
    /// routed finish with the one they read).
    pub routing: Arc<ArcSwap<Routing>>,
    pub runtime: Arc<Runtime>,
    pub account_id: String,
    /// Served under [`crate::dashboard::PREFIX`] on the same listener, when set.
    pub dashboard: Option<Arc<crate::dashboard::Dashboard>>,
}

/// The routes of one version of the template and their authorizers, swapped together.
pub struct Routing {
    pub routes: RouteTable,
    pub authorizers: Authorizers,
}

/// The gateway and the address it serves on (its own `Host`, as API Gateway's is its domain).
struct Served {
    gateway: Gateway,
    local: SocketAddr,
}

/// Serves `gateway` on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let dashboard = gateway.dashboard.as_ref().map(|d| {
        let routing = Arc::clone(&gateway.routing);
        d.router(move || routing.load().routes.routes().to_vec())
    });
    let mut app = Router::new()
        .fallback(handle)
        .with_state(Arc::new(Served { gateway, local }));
    if let Some(dashboard) = dashboard {
        app = app.merge(dashboard);
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn handle(
    State(served): State<Arc<Served>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let mut response = answer(&served.gateway, served.local, peer, &request_id, req).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("apigw-requestid", v);
    }
    println!(
        "[gateway] {} \"{method} {path}\" {} {:.1} ms",
        peer.ip(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    response
}

async fn answer(
    gw: &Gateway,
    local: SocketAddr,
    peer: SocketAddr,
    request_id: &str,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    }
    let routing = gw.routing.load_full();
    let Some(matched) = routing.routes.find(parts.method.as_str(), parts.uri.path()) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    // Read before authorizing: a SigV4 signature covers the body.
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    };
    let now = chrono::Utc::now();
    let access = &matched.route.access;
    let incoming = Incoming {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        headers: &parts.headers,
        body: &body,
    };
    let authorizer = match routing
        .authorizers
        .check(access, &incoming, now.timestamp())
    {
        Ok(context) => context,
        Err(denial) => return refused(&denial, access.scopes()),
    };
    let headers = forwarded(&parts.headers, local, peer);
    let request = event::Request {
        http: Incoming {
            headers: &headers,
            ..incoming
        },
        source_ip: peer.ip().to_string(),
        request_id,
        account_id: &gw.account_id,
        time: now,
        authorizer,
    };
    let event = event::build(&request, &matched);
    let function = matched.route.function.clone();
    match gw.runtime.invoke(&function, event).await {
        Ok(InvokeOutcome::Response(result)) => match event::response(&result) {
            Ok(r) => {
                let mut out = Response::new(Body::from(r.body));
                *out.status_mut() = r.status;
                *out.headers_mut() = r.headers;
                out
            }
            Err(e) => {
                eprintln!("[gateway] {function} returned an invalid response: {e}");
                message(StatusCode::BAD_GATEWAY, "Internal Server Error")
            }
        },
        Ok(InvokeOutcome::FunctionError(_)) => {
            message(StatusCode::BAD_GATEWAY, "Internal Server Error")
        }
        Err(InvokeError::TimedOut { .. } | InvokeError::ShuttingDown) => {
            message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
        }
        Err(_) => message(StatusCode::BAD_GATEWAY, "Internal Server Error"),
    }
}

/// The headers the function sees: the client's, except those API Gateway sets itself whatever
/// the client sent. `Host` is the gateway's own address (on AWS, the API's domain name), and
/// `X-Forwarded-For`, `-Proto` and `-Port` say where the request came from and how it
/// reached the gateway (on AWS: the client's IP, `https`, `443`; here plain HTTP on the
/// local port). So a client can neither make a function build URLs for another host nor hand
/// it values it cannot parse (`X-Forwarded-Proto: a b`, `Host: bad host`).
fn forwarded(client: &HeaderMap, local: SocketAddr, peer: SocketAddr) -> HeaderMap {
    let mut headers = client.clone();
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        let value = HeaderValue::from_str(&value).expect("an address is a valid header value");
        headers.insert(name, value);
    };
    set(&mut headers, "host", local.to_string());
    set(&mut headers, "x-forwarded-for", peer.ip().to_string());
    set(&mut headers, "x-forwarded-proto", "http".into());
    set(&mut headers, "x-forwarded-port", local.port().to_string());
    headers
}

/// The `401`/`403` of a refused request; for a token, with its `www-authenticate` challenge
/// naming the route's `scopes`.
fn refused(denial: &Denial, scopes: &[String]) -> Response {
    let status = StatusCode::from_u16(denial.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = message(status, denial.message());
    if let Some(Ok(challenge)) = denial.challenge(scopes).map(|c| HeaderValue::from_str(&c)) {
        response.headers_mut().insert("www-authenticate", challenge);
    }
    response
}

/// API Gateway's own error shape.
fn message(status: StatusCode, text: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        serde_json::json!({ "message": text }).to_string(),
    )
        .into_response()
}
