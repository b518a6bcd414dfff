//! The agents HTTP API: queries read the agents table, commands go to EventBridge (`202`), and
//! `POST /agents/match` reserves an agent synchronously and publishes `AgentMatched`.

use chrono::Utc;
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    command::{self, Accepted, CommandTransport, Ids, NoRecord},
    config,
    domain::{
        agents::{
            AgentMatched, AgentName, AgentState, Capacity, ChangeAgentState, RegisterAgent, Skills,
            rank_candidates,
        },
        ids::{AgentId, ConversationId},
    },
    events::{Envelope, Message},
    http::{Route, correlation_id, json, limit, parse_command, parse_json, query},
    store::{
        agents::{AgentFilter, AgentStore, DynamoAgentStore, Reservation, Reserve},
        idempotency::{DynamoIdempotency, Idempotency},
    },
};
use uuid::Uuid;

pub struct Config {
    pub table_name: String,
    pub event_bus_name: String,
}

impl Config {
    pub fn from_env() -> Result<Self, config::MissingVar> {
        Ok(Config {
            table_name: config::var("TABLE_NAME")?,
            event_bus_name: config::var("EVENT_BUS_NAME")?,
        })
    }
}

pub struct App<S, B, I> {
    pub store: S,
    pub bus: B,
    pub idempotency: I,
}

pub type AwsApp = App<DynamoAgentStore, EventBridgeBus, DynamoIdempotency>;

impl AwsApp {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        App {
            store: DynamoAgentStore::new(dynamodb.clone(), config.table_name.clone()),
            bus: EventBridgeBus::new(aws_sdk_eventbridge::Client::new(sdk), config.event_bus_name),
            idempotency: DynamoIdempotency::new(dynamodb, config.table_name),
        }
    }
}

/// Rounds of "read candidates, try to reserve each" before answering that agents are too
/// contended; each failed reservation means another request took a slot, so this is bounded.
const MATCH_ROUNDS: usize = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RegisterBody {
    name: AgentName,
    #[serde(default)]
    skills: Skills,
    capacity: Capacity,
    version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StateBody {
    state: AgentState,
    version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchBody {
    conversation_id: ConversationId,
    #[serde(default)]
    skills: Skills,
}

/// Handles one request; every error becomes a problem+json response here.
pub async fn handle<S: AgentStore, B: EventBus + CommandTransport, I: Idempotency>(
    app: &App<S, B, I>,
    req: Request,
) -> Response<Body> {
    shared::http::serve(req, |req| route(app, req)).await
}

async fn route<S: AgentStore, B: EventBus + CommandTransport, I: Idempotency>(
    app: &App<S, B, I>,
    req: Request,
) -> Result<Response<Body>, Error> {
    let route = Route::of(&req);
    match route.key() {
        "GET /agents" => list(app, &req).await,
        "POST /agents/match" => match_agent(app, &req).await,
        "PUT /agents/{agentId}" => register(app, &req, route.param("agentId")?).await,
        "POST /agents/{agentId}/state" => change_state(app, &req, route.param("agentId")?).await,
        "GET /agents/{agentId}/state" => get_state(app, route.lookup("agentId", "agent")?).await,
        _ => Err(route.unknown()),
    }
}

/// Versions order commands for the same agent. Callers may send their own (a counter they
/// keep); otherwise the acceptance time in microseconds orders them.
fn version_or(version: Option<u64>, ids: &Ids) -> u64 {
    version.unwrap_or_else(|| ids.at.timestamp_micros().unsigned_abs())
}

async fn get_state<S: AgentStore, B, I>(
    app: &App<S, B, I>,
    id: AgentId,
) -> Result<Response<Body>, Error> {
    match app.store.get(&id).await? {
        Some(agent) => Ok(json(200, &agent)),
        None => Err(Error::NotFound(format!("no agent {id}"))),
    }
}

async fn list<S: AgentStore, B, I>(
    app: &App<S, B, I>,
    req: &Request,
) -> Result<Response<Body>, Error> {
    let filter = AgentFilter {
        state: query(req, "state")?,
        skill: query(req, "skill")?,
    };
    let limit = limit(req)?;
    let cursor = query::<String>(req, "cursor")?;
    let page = app.store.list(&filter, limit, cursor.as_deref()).await?;
    Ok(json(200, &page))
}

async fn register<S: AgentStore, B: CommandTransport, I: Idempotency>(
    app: &App<S, B, I>,
    req: &Request,
    agent_id: AgentId,
) -> Result<Response<Body>, Error> {
    let (request, body): (Value, RegisterBody) = parse_command(req)?;
    command::accept(&app.idempotency, &app.bus, req, &request, |ids| {
        let cmd = RegisterAgent {
            agent_id: agent_id.clone(),
            name: body.name,
            skills: body.skills,
            capacity: body.capacity,
            version: version_or(body.version, &ids),
        };
        Accepted {
            location: format!("/agents/{agent_id}/state"),
            body: json!({ "commandId": ids.command, "agentId": agent_id }),
            command: ids.envelope(correlation_id(req), Message::RegisterAgent(cmd)),
            provisional: NoRecord,
        }
    })
    .await
}

async fn change_state<S: AgentStore, B: CommandTransport, I: Idempotency>(
    app: &App<S, B, I>,
    req: &Request,
    agent_id: AgentId,
) -> Result<Response<Body>, Error> {
    let (request, body): (Value, StateBody) = parse_command(req)?;
    // Every input error before the (costlier) existence check.
    command::idempotency_key(req)?;
    if app.store.get(&agent_id).await?.is_none() {
        return Err(Error::NotFound(format!("no agent {agent_id}")));
    }
    command::accept(&app.idempotency, &app.bus, req, &request, |ids| {
        let cmd = ChangeAgentState {
            agent_id: agent_id.clone(),
            state: body.state,
            version: version_or(body.version, &ids),
        };
        Accepted {
            location: format!("/agents/{agent_id}/state"),
            body: json!({ "commandId": ids.command, "agentId": agent_id }),
            command: ids.envelope(correlation_id(req), Message::ChangeAgentState(cmd)),
            provisional: NoRecord,
        }
    })
    .await
}

/// Reserves an agent for a conversation. The same conversation always gets the same agent: the
/// reservation is keyed by conversation and created in the same transaction that takes the
/// slot, so concurrent requests cannot both succeed and no agent exceeds its capacity.
async fn match_agent<S: AgentStore, B: EventBus, I>(
    app: &App<S, B, I>,
    req: &Request,
) -> Result<Response<Body>, Error> {
    let body: MatchBody = parse_json(req)?;
    let correlation = correlation_id(req);
    for _ in 0..MATCH_ROUNDS {
        if let Some(existing) = app.store.reservation(&body.conversation_id).await? {
            return matched(app, existing).await;
        }
        let candidates = rank_candidates(
            app.store.available().await?,
            &body.skills,
            &body.conversation_id,
        );
        if candidates.is_empty() {
            return Err(Error::Conflict(
                "no AVAILABLE agent has the skills and a free slot".into(),
            ));
        }
        for agent in candidates {
            let reservation = Reservation {
                conversation_id: body.conversation_id.clone(),
                agent_id: agent.agent_id,
                matched_at: Utc::now(),
                event_id: Uuid::new_v4(),
                correlation_id: correlation.clone(),
                released_at: None,
            };
            match app.store.reserve(&reservation).await? {
                Reserve::Reserved => return matched(app, reservation).await,
                Reserve::AlreadyReserved => break,
                Reserve::AgentUnavailable => continue,
            }
        }
    }
    Err(Error::Conflict(
        "every matching agent was taken by concurrent requests; retry".into(),
    ))
}

/// Publishes `AgentMatched` (again, with the same event id, on a repeated match: a publish that
/// failed the first time is completed by the caller's retry) and answers with the match.
async fn matched<S, B: EventBus, I>(
    app: &App<S, B, I>,
    r: Reservation,
) -> Result<Response<Body>, Error> {
    let result = AgentMatched {
        agent_id: r.agent_id,
        conversation_id: r.conversation_id,
        matched_at: r.matched_at,
    };
    let event = Envelope {
        id: r.event_id,
        correlation_id: r.correlation_id,
        occurred_at: r.matched_at,
        message: Message::AgentMatched(result.clone()),
    };
    app.bus.publish(std::slice::from_ref(&event)).await?;
    Ok(json(200, &result))
}
