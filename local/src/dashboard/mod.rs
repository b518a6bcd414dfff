//! The live dashboard of `local dev`, served by the gateway's listener under `/_local/`
//! (README.md §Dashboard): the routes and their functions, each function's instances and
//! recent invocations with their `REPORT` figures, the queues and DLQs with their depth (and a
//! redrive for each DLQ), and a trace of every invocation that carried one correlation id,
//! with its log lines.
//!
//! Layout: this module answers JSON (`/_local/api/...`) from the runtime's
//! [`Journal`](crate::runtime::journal::Journal) and from the emulator (queue depths, read
//! at most once per [`DEPTH_MAX_AGE`] however many pages poll); `page.html`, `dashboard.css`
//! and `dashboard.js` are static files compiled in, the script polling the state every second.
//! Nothing is fetched from elsewhere (no CDN, no build step).
//!
//! Every path under [`PREFIX`] is the dashboard's: [`check_routes`] refuses a template route
//! there, so the dashboard never shadows one. The one request that changes anything (a
//! redrive) must carry [`ACTION_HEADER`], which a cross-site form cannot send and a cross-site
//! script cannot without a CORS preflight this server never grants.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use serde::Serialize;
use serde_json::{Value, json};
use shared::dlq::{self, DeadLetterQueue, Target};

use crate::gateway::{Route, RouteTable};
use crate::provision::Stack;
use crate::runtime::Runtime;
use crate::template::{Access, Template};

/// The path prefix the dashboard owns.
pub const PREFIX: &str = "/_local";
/// The header (any value) a redrive request must carry.
pub const ACTION_HEADER: &str = "x-local-dashboard";
/// How long a read of the queue depths serves later requests.
pub const DEPTH_MAX_AGE: Duration = Duration::from_millis(500);
/// Messages one redrive moves at most.
pub const REDRIVE_LIMIT: usize = 1_000;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Refuses routes whose path starts with [`PREFIX`]: the dashboard would answer them.
/// Errors: one line naming every such route and its function.
pub fn check_routes(routes: &RouteTable) -> Result<(), String> {
    let taken: Vec<String> = routes
        .routes()
        .iter()
        .filter(|r| r.path.starts_with(PREFIX))
        .map(|r| format!("{} (function {})", r.key(), r.function))
        .collect();
    if taken.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "route {} starts with {PREFIX}, which is reserved for the local dashboard; give it another path",
            taken.join(", ")
        ))
    }
}

/// A queue of the stack as the dashboard lists it.
#[derive(Debug, Clone, PartialEq)]
struct QueueEntry {
    /// Logical id in the template.
    id: String,
    name: String,
    url: String,
    /// Functions it is an SQS event source of.
    consumers: Vec<String>,
    /// Logical id of its DLQ (its `RedrivePolicy`).
    dlq: Option<String>,
    /// What it is the DLQ of: queue logical ids, or `rule <id>` for a rule's target.
    dead_letters_of: Vec<String>,
    /// Where a redrive sends its messages, when it is a DLQ with one place to send them
    /// back to: the source queue's logical id or `bus <name>`, and the target.
    redrive: Option<(String, Target)>,
}

/// The dashboard's state; see the module documentation.
pub struct Dashboard {
    runtime: Arc<Runtime>,
    sqs: aws_sdk_sqs::Client,
    events: aws_sdk_eventbridge::Client,
    queues: RwLock<Vec<QueueEntry>>,
    started_at_ms: u64,
    /// The last read of the queue depths and when it was taken.
    depths: tokio::sync::Mutex<Option<(Instant, Depths)>>,
}

/// Each queue's depth (or why it could not be read), by logical id.
type Depths = BTreeMap<String, Result<dlq::Depth, String>>;

impl Dashboard {
    /// A dashboard of `runtime`'s functions and of the queues `stack` provisioned for
    /// `template`, reading the emulator through `sdk`.
    pub fn new(
        template: &Template,
        stack: &Stack,
        sdk: &aws_config::SdkConfig,
        runtime: Arc<Runtime>,
    ) -> Dashboard {
        Dashboard {
            runtime,
            sqs: aws_sdk_sqs::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
            queues: RwLock::new(queues(template, stack)),
            started_at_ms: epoch_ms(SystemTime::now()),
            depths: tokio::sync::Mutex::new(None),
        }
    }

    /// Lists the queues of `stack` (provisioned for `template`) from now on, as after a
    /// reload of the template.
    pub fn set_stack(&self, template: &Template, stack: &Stack) {
        *self.queues.write().unwrap_or_else(|e| e.into_inner()) = queues(template, stack);
    }

    fn queue_entries(&self) -> Vec<QueueEntry> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The dashboard's routes, all under [`PREFIX`], to merge into the gateway's router;
    /// `routes` gives the template's routes as they are at each request.
    pub fn router(
        self: &Arc<Self>,
        routes: impl Fn() -> Vec<Route> + Send + Sync + 'static,
    ) -> Router {
        let served = Arc::new(Served {
            dashboard: Arc::clone(self),
            routes: Box::new(routes),
        });
        Router::new()
            .route(PREFIX, get(|| async { Redirect::permanent("/_local/") }))
            .route("/_local/", get(page))
            .route("/_local/dashboard.js", get(script))
            .route("/_local/dashboard.css", get(style))
            .route("/_local/api/state", get(state))
            .route("/_local/api/trace/{correlation_id}", get(trace))
            .route("/_local/api/invocations/{request_id}", get(invocation))
            .route("/_local/api/queues/{queue}/redrive", post(redrive))
            .route("/_local/{*rest}", any(not_found))
            .with_state(served)
    }

    /// Visible and in-flight counts of every queue, by logical id; read again when older than
    /// [`DEPTH_MAX_AGE`] or when `fresh`.
    async fn depths(&self, queues: &[QueueEntry], fresh: bool) -> Depths {
        let mut cached = self.depths.lock().await;
        if let Some((at, depths)) = cached.as_ref()
            && !fresh
            && at.elapsed() < DEPTH_MAX_AGE
            && queues.iter().all(|q| depths.contains_key(&q.id))
        {
            return depths.clone();
        }
        let mut depths = BTreeMap::new();
        for q in queues {
            let depth = dlq::depth(&self.sqs, &q.url)
                .await
                .map_err(|e| e.to_string());
            depths.insert(q.id.clone(), depth);
        }
        *cached = Some((Instant::now(), depths.clone()));
        depths
    }
}

struct Served {
    dashboard: Arc<Dashboard>,
    routes: Box<dyn Fn() -> Vec<Route> + Send + Sync>,
}

async fn page() -> Response {
    text("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    text("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    text("text/css; charset=utf-8", STYLE)
}

fn text(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "message": "no such dashboard resource" }),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteView {
    method: String,
    path: String,
    auth: String,
    function: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionView {
    id: String,
    name: String,
    memory_mb: u64,
    timeout_secs: u64,
    instances: Vec<crate::runtime::journal::InstanceView>,
    /// Newest first.
    invocations: Vec<crate::runtime::journal::Invocation>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueView {
    id: String,
    name: String,
    consumers: Vec<String>,
    dlq: Option<String>,
    dead_letters_of: Vec<String>,
    /// Where a redrive sends the messages: the source queue's logical id, or `bus <name>`;
    /// `None`: no redrive (not a DLQ, or the DLQ of several queues or buses).
    redrive_to: Option<String>,
    visible: Option<i64>,
    in_flight: Option<i64>,
    error: Option<String>,
}

/// `GET /_local/api/state`: everything the page shows except log lines.
async fn state(State(served): State<Arc<Served>>) -> Response {
    let d = &served.dashboard;
    let routes: Vec<RouteView> = (served.routes)()
        .into_iter()
        .map(|r| RouteView {
            auth: access_label(&r.access),
            method: r.method,
            path: r.path,
            function: r.function,
        })
        .collect();
    let journal = d.runtime.journal();
    let mut instances: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for i in journal.instances() {
        instances.entry(i.function.clone()).or_default().push(i);
    }
    let mut invocations: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for i in journal.invocations(false).into_iter().rev() {
        invocations.entry(i.function.clone()).or_default().push(i);
    }
    let functions: Vec<FunctionView> = d
        .runtime
        .functions()
        .into_iter()
        .map(|spec| FunctionView {
            instances: instances.remove(&spec.logical_id).unwrap_or_default(),
            invocations: invocations.remove(&spec.logical_id).unwrap_or_default(),
            id: spec.logical_id,
            name: spec.name,
            memory_mb: spec.memory_mb,
            timeout_secs: spec.timeout.as_secs(),
        })
        .collect();
    let entries = d.queue_entries();
    let depths = d.depths(&entries, false).await;
    let queues: Vec<QueueView> = entries
        .into_iter()
        .map(|q| {
            let depth = depths.get(&q.id);
            let ok = depth.and_then(|d| d.as_ref().ok());
            QueueView {
                visible: ok.map(|d| d.visible),
                in_flight: ok.map(|d| d.in_flight),
                error: depth.and_then(|d| d.as_ref().err().cloned()),
                redrive_to: q.redrive.as_ref().map(|(to, _)| to.clone()),
                id: q.id,
                name: q.name,
                consumers: q.consumers,
                dlq: q.dlq,
                dead_letters_of: q.dead_letters_of,
            }
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "now": epoch_ms(SystemTime::now()),
            "startedAt": d.started_at_ms,
            "routes": routes,
            "functions": functions,
            "queues": queues,
        }),
    )
}

/// `GET /_local/api/trace/{correlationId}`: every kept invocation that carried it, in start
/// order, with its log lines.
async fn trace(State(served): State<Arc<Served>>, Path(id): Path<String>) -> Response {
    let invocations = served.dashboard.runtime.journal().trace(&id);
    json_response(
        StatusCode::OK,
        &json!({ "correlationId": id, "invocations": invocations }),
    )
}

/// `GET /_local/api/invocations/{requestId}`: one invocation with its log lines.
async fn invocation(State(served): State<Arc<Served>>, Path(id): Path<String>) -> Response {
    match served.dashboard.runtime.journal().invocation(&id) {
        Some(i) => json_response(StatusCode::OK, &i),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": format!("no invocation {id} in the journal") }),
        ),
    }
}

/// `POST /_local/api/queues/{queue}/redrive` (with [`ACTION_HEADER`]): moves the DLQ's
/// messages back ([`shared::dlq::redrive`]); answers `{moved, failed, remaining}`.
async fn redrive(
    State(served): State<Arc<Served>>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !headers.contains_key(ACTION_HEADER) {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({ "message": format!("a redrive needs the {ACTION_HEADER} header") }),
        );
    }
    let d = &served.dashboard;
    let entries = d.queue_entries();
    let Some(q) = entries.iter().find(|q| q.id == queue) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": format!("no queue {queue} in the template") }),
        );
    };
    let Some((_, target)) = &q.redrive else {
        return json_response(
            StatusCode::CONFLICT,
            &json!({ "message": format!("{queue} is not the DLQ of exactly one queue or rule") }),
        );
    };
    let target_queue = DeadLetterQueue {
        name: q.id.clone(),
        url: q.url.clone(),
        target: target.clone(),
    };
    let done = match dlq::redrive(&d.sqs, &d.events, &target_queue, REDRIVE_LIMIT).await {
        Ok(done) => done,
        Err(e) => {
            return json_response(
                StatusCode::BAD_GATEWAY,
                &json!({ "message": e.to_string() }),
            );
        }
    };
    let depths = d.depths(&entries, true).await;
    let remaining = depths
        .get(&q.id)
        .and_then(|d| d.as_ref().ok())
        .map(|d| d.visible);
    json_response(
        StatusCode::OK,
        &json!({ "queue": q.id, "moved": done.moved, "failed": done.failed, "remaining": remaining }),
    )
}

/// How the route table prints a route's access: `public`, `AWS_IAM`, `any token` or
/// `scopes a|b`.
pub fn access_label(access: &Access) -> String {
    match access {
        Access::Public => "public".to_string(),
        Access::Iam => "AWS_IAM".to_string(),
        Access::Jwt { scopes, .. } if scopes.is_empty() => "any token".to_string(),
        Access::Jwt { scopes, .. } => format!("scopes {}", scopes.join("|")),
    }
}

/// Every queue of `stack` with its consumers, its DLQ, what it is the DLQ of and where a
/// redrive of it goes: the one queue whose `RedrivePolicy` names it, or the one bus of the
/// rules whose targets' `DeadLetterConfig` names it.
fn queues(template: &Template, stack: &Stack) -> Vec<QueueEntry> {
    let mut consumers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in template.functions.values() {
        for src in &f.sqs_sources {
            if let Ok(arn) = stack.resolve_string(&src.queue) {
                consumers.entry(arn).or_default().push(f.logical_id.clone());
            }
        }
    }
    // (DLQ ARN, rule logical id, bus name) of every rule target with a DeadLetterConfig.
    let mut rule_dlqs: Vec<(String, String, String)> = Vec::new();
    for r in template
        .resources
        .values()
        .filter(|r| r.kind == "AWS::Events::Rule")
    {
        let bus = r
            .properties
            .get("EventBusName")
            .and_then(|b| stack.resolve_string(b).ok())
            .unwrap_or_else(|| "default".into());
        let targets = r.properties.get("Targets").and_then(Value::as_array);
        for t in targets.map_or(&[][..], Vec::as_slice) {
            if let Some(arn) = t
                .pointer("/DeadLetterConfig/Arn")
                .and_then(|a| stack.resolve_string(a).ok())
            {
                rule_dlqs.push((arn, r.logical_id.clone(), bus.clone()));
            }
        }
    }
    let all = stack.queues();
    let mut listed: Vec<QueueEntry> = all
        .iter()
        .map(|(id, q)| {
            let sources: Vec<(&String, &String)> = all
                .iter()
                .filter(|(_, s)| s.dlq_arn.as_deref() == Some(q.arn.as_str()))
                .map(|(sid, s)| (sid, &s.url))
                .collect();
            let rules: Vec<&(String, String, String)> =
                rule_dlqs.iter().filter(|(arn, ..)| *arn == q.arn).collect();
            let mut buses: Vec<&String> = rules.iter().map(|(.., bus)| bus).collect();
            buses.sort_unstable();
            buses.dedup();
            let redrive = match (sources.as_slice(), buses.as_slice()) {
                ([(sid, url)], []) => Some(((*sid).clone(), Target::Queue((*url).clone()))),
                ([], [bus]) => Some((format!("bus {bus}"), Target::Bus((*bus).clone()))),
                _ => None,
            };
            let mut dead_letters_of: Vec<String> =
                sources.iter().map(|(sid, _)| (*sid).clone()).collect();
            dead_letters_of.extend(rules.iter().map(|(_, rule, _)| format!("rule {rule}")));
            QueueEntry {
                id: id.clone(),
                name: q.name.clone(),
                url: q.url.clone(),
                consumers: consumers.get(&q.arn).cloned().unwrap_or_default(),
                dlq: stack.dlq(id).map(str::to_string),
                dead_letters_of,
                redrive,
            }
        })
        .collect();
    // Each DLQ right after the queue it is the DLQ of.
    listed.sort_by_cached_key(|q| match q.dead_letters_of.first() {
        Some(source) if all.contains_key(source) => (source.clone(), 1),
        _ => (q.id.clone(), 0),
    });
    listed
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
