//! The analytics HTTP API: reads the counters the analytics worker keeps.
//!
//! - `GET /analytics/summary`: conversations created / assigned / closed, messages, trades
//!   executed / rejected, and per symbol the executed quantity and notional (`Σ quantity ×
//!   price`) as exact decimal strings.
//! - `GET /analytics/agents/{agentId}`: conversations handled (matched to the agent), messages
//!   sent by the agent, and the mean time to assign: over the agent's conversations whose
//!   `ConversationStarted` and `AgentMatched` both arrived, the mean of `matchedAt −
//!   createdAt` in milliseconds (`null` while there is none). `404` for an agent no event
//!   named, or an id that is not an agent id.
//!
//! Counters are eventually consistent with the commands (they follow the events).

use aws_config::SdkConfig;
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    domain::ids::AgentId,
    http::{Route, json},
    store::analytics::{AgentStats, AnalyticsStore, DynamoAnalyticsStore},
};

/// The app of this function is its store.
pub type AwsApp = DynamoAnalyticsStore;

/// Builds the function from the template's environment: `TABLE_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    shared::store::open(sdk, vars)
}

/// `GET /analytics/agents/{agentId}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentView {
    agent_id: AgentId,
    conversations_handled: u64,
    messages_sent: u64,
    /// How many conversations the mean is taken over.
    assignments_timed: u64,
    /// Milliseconds, to the microsecond; `None` (JSON `null`) before the first timed one.
    mean_time_to_assign_ms: Option<f64>,
}

impl AgentView {
    fn new(agent_id: AgentId, s: &AgentStats) -> Self {
        let mean = (s.assignments_timed > 0).then(|| {
            let micros =
                (s.assign_millis_total as f64 * 1000.0 / s.assignments_timed as f64).round();
            micros / 1000.0
        });
        AgentView {
            agent_id,
            conversations_handled: s.conversations_handled,
            messages_sent: s.messages_sent,
            assignments_timed: s.assignments_timed,
            mean_time_to_assign_ms: mean,
        }
    }
}

pub async fn handle<S: AnalyticsStore>(app: &S, req: Request) -> Response<Body> {
    shared::http::serve(req, |req| route(app, req)).await
}

async fn route<S: AnalyticsStore>(app: &S, req: Request) -> Result<Response<Body>, Error> {
    let route = Route::of(&req);
    match route.key() {
        "GET /analytics/summary" => Ok(json(200, &app.summary().await?)),
        "GET /analytics/agents/{agentId}" => agent(app, route.lookup("agentId", "agent")?).await,
        _ => Err(route.unknown()),
    }
}

async fn agent<S: AnalyticsStore>(app: &S, agent_id: AgentId) -> Result<Response<Body>, Error> {
    let not_found = || Error::NotFound(format!("no analytics for agent {agent_id}"));
    let stats = app.agent(&agent_id).await?.ok_or_else(not_found)?;
    Ok(json(200, &AgentView::new(agent_id, &stats)))
}
