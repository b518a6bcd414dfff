//! The agents HTTP API: queries read the agents table; commands go to the agents FIFO command
//! queue (`202`), one message group per agent, so each agent's commands apply in the order they
//! were accepted; `POST /agents/match` reserves an agent synchronously and publishes
//! `AgentMatched`.
//!
//! # Who orders an agent's changes
//!
//! The server does. An agent's `version` counts the commands applied to it; the worker issues
//! each next version, in acceptance order. A client never supplies an ordering token: the
//! `version` it may send is a precondition ("apply only if the agent is still at the version I
//! saw", as `If-Match`), checked when the command is accepted (`409` when the agent has moved
//! on, `422` for a version the server never issued) and again when it is applied (a command
//! whose precondition no longer holds is rejected, and
//! `GET /agents/{agentId}/commands/{commandId}` says so).
//!
//! # Read your writes
//!
//! `PUT /agents/{agentId}` of a new agent writes it at once (version 0, OFFLINE: the
//! registration accepted, not yet applied), so a state change sent right after the `202` is
//! accepted too, and applied after the registration. How that record and the command stay
//! consistent when a write fails: `shared::command::Provisional`.

use aws_config::SdkConfig;
use chrono::Utc;
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    command::{
        self, Accepted, Checked, CommandTransport, Compensated, Guarded, Ids, NothingProvisional,
        Provisional, Provisioned,
    },
    domain::{
        Whole,
        agents::{
            Agent, AgentMatched, AgentName, AgentState, Capacity, ChangeAgentState, RegisterAgent,
            Skills, rank_candidates,
        },
        ids::{AgentId, ConversationId},
    },
    envelope::{Envelope, Payload},
    http::{Route, correlation_id, json, page_request, parse_command, parse_json, query},
    queue::SqsFifoQueue,
    store::{
        agents::{AgentFilter, AgentStore, DynamoAgentStore, Reservation, Reserve},
        idempotency::{DynamoIdempotency, Idempotency},
        inbox::OutcomeStatus,
    },
};
use uuid::Uuid;

/// The commands this API sends straight to its worker's FIFO queue (not through the bus, so
/// no rule routes them): checked against `template.yaml` with the worker's `HANDLES`.
pub const QUEUED_COMMANDS: &[&str] = &["RegisterAgent", "ChangeAgentState"];

pub struct App<S, C, B, I> {
    pub store: S,
    /// Where agent commands go: the agents FIFO command queue, one message group per agent.
    pub commands: C,
    /// Where `AgentMatched` goes.
    pub bus: B,
    pub idempotency: I,
}

pub type AwsApp = App<DynamoAgentStore, SqsFifoQueue, EventBridgeBus, DynamoIdempotency>;

/// Builds the function from the template's environment: `TABLE_NAME`, `EVENT_BUS_NAME`, `AGENTS_COMMAND_QUEUE_URL`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    let queue_url = vars.var("AGENTS_COMMAND_QUEUE_URL")?;
    let (store, idempotency) = shared::store::open_two(sdk, vars)?;
    Ok(App {
        store,
        commands: SqsFifoQueue::new(aws_sdk_sqs::Client::new(sdk), queue_url),
        bus: EventBridgeBus::open(sdk, vars)?,
        idempotency,
    })
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
    /// A precondition: the agent's version the client saw (0: not registered yet).
    version: Option<Whole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StateBody {
    state: AgentState,
    /// A precondition: the agent's version the client saw.
    version: Option<Whole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchBody {
    conversation_id: ConversationId,
    #[serde(default)]
    skills: Skills,
}

/// Handles one request; every error becomes a problem+json response here.
pub async fn handle<S, C, B, I>(app: &App<S, C, B, I>, req: Request) -> Response<Body>
where
    S: AgentStore,
    C: CommandTransport,
    B: EventBus,
    I: Idempotency,
{
    shared::http::serve(req, |req| app.route(req)).await
}

/// What became of an agent command, once the worker processed it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CommandView {
    command_id: Uuid,
    agent_id: AgentId,
    status: OutcomeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Checks a command's precondition against the agent as it is now (version 0: not
/// registered): `409` naming `version` when it does not hold, whether the agent has moved past
/// it or it is one the server never issued (a far-future value, or one in the wrong unit). (The
/// worker checks it again when the command's turn comes.)
fn check_version(expected: Option<u64>, agent: &AgentId, actual: u64) -> Result<(), Error> {
    match expected {
        Some(v) if v > actual => Err(Error::Precondition {
            field: "version".into(),
            detail: format!(
                "agent {agent} is at version {actual}, and never was at {v}: versions are issued \
                 by the server (GET /agents/{agent}/state), never chosen by the client"
            ),
        }),
        Some(v) if v < actual => Err(Error::Precondition {
            field: "version".into(),
            detail: format!("version {v} is stale: agent {agent} is at version {actual}"),
        }),
        _ => Ok(()),
    }
}

/// A command's `version` precondition ([`command::Precondition`]: checked after the
/// `Idempotency-Key` claim, with the request's derived command id, so the retry of a request
/// whose command was applied finds that command rather than the version it moved on). Holds
/// without a `version`.
struct AtVersion<'a, S> {
    store: &'a S,
    agent_id: AgentId,
    expected: Option<u64>,
    command: Uuid,
}

impl<S: AgentStore> command::Precondition for AtVersion<'_, S> {
    async fn check(&self) -> Result<Checked, Error> {
        if self.expected.is_none() {
            return Ok(Checked::Holds);
        }
        if self.store.processed(self.command).await?.is_some() {
            return Ok(Checked::Applied);
        }
        let current = self.store.get(&self.agent_id).await?;
        check_version(
            self.expected,
            &self.agent_id,
            current.map_or(0, |a| a.version),
        )?;
        Ok(Checked::Holds)
    }
}

/// The agent a registration writes at once, unless the agent exists.
struct ProvisionalAgent<'a, S> {
    store: &'a S,
    agent: Agent,
    command: Uuid,
}

impl<S: AgentStore> Provisional for ProvisionalAgent<'_, S> {
    async fn write(&self) -> Result<Provisioned, Error> {
        if !self
            .store
            .create_provisional(&self.agent, self.command)
            .await?
            && self.store.processed(self.command).await?.is_some()
        {
            // An earlier attempt of this request (same derived command id) was applied.
            return Ok(Provisioned::Applied);
        }
        Ok(Provisioned::Written)
    }

    async fn undo(&self) -> Result<Compensated, Error> {
        if self
            .store
            .withdraw_provisional(&self.agent.agent_id, self.command)
            .await?
            || self.store.processed(self.command).await?.is_none()
        {
            Ok(Compensated::Undone)
        } else {
            Ok(Compensated::Applied)
        }
    }
}

/// The routes, one handler method each, and the hand-off the command routes share.
impl<S: AgentStore, C: CommandTransport, B: EventBus, I: Idempotency> App<S, C, B, I> {
    async fn route(&self, req: Request) -> Result<Response<Body>, Error> {
        let route = Route::of(&req);
        match route.key() {
            "GET /agents" => self.list(&req).await,
            "POST /agents/match" => self.match_agent(&req).await,
            "PUT /agents/{agentId}" => self.register(&req, route.param("agentId")?).await,
            "POST /agents/{agentId}/state" => {
                self.change_state(&req, route.param("agentId")?).await
            }
            "GET /agents/{agentId}/state" => {
                self.get_state(route.lookup("agentId", "agent")?).await
            }
            "GET /agents/{agentId}/commands/{commandId}" => {
                let agent = route.lookup("agentId", "agent")?;
                self.get_command(agent, route.lookup("commandId", "command")?)
                    .await
            }
            _ => Err(route.unknown()),
        }
    }

    async fn get_state(&self, id: AgentId) -> Result<Response<Body>, Error> {
        match self.store.get(&id).await? {
            Some(agent) => Ok(json(200, &agent)),
            None => Err(Error::NotFound(format!("no agent {id}"))),
        }
    }

    /// `200` with the outcome of an agent command: APPLIED (with the version it left the agent
    /// at) or REJECTED (with the reason). `404` until the worker has processed it (within
    /// moments of its `202`), and for ids of no command of this agent.
    async fn get_command(
        &self,
        agent_id: AgentId,
        command_id: Uuid,
    ) -> Result<Response<Body>, Error> {
        let outcome = self
            .store
            .processed(command_id)
            .await?
            .and_then(|r| r.outcome)
            .filter(|o| o.aggregate_id == agent_id.as_str())
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no processed command {command_id} of agent {agent_id}"
                ))
            })?;
        Ok(json(
            200,
            &CommandView {
                command_id,
                agent_id,
                status: outcome.status,
                version: outcome.version,
                reason: outcome.reason,
            },
        ))
    }

    async fn list(&self, req: &Request) -> Result<Response<Body>, Error> {
        let filter = AgentFilter {
            state: query(req, "state")?,
            skill: query(req, "skill")?,
        };
        let page = self.store.list(&filter, &page_request(req)?).await?;
        Ok(json(200, &page))
    }

    /// Hands an agent command off (`202`, `Location` the agent's state): `build` gives, from
    /// the command's ids, its payload and the record it writes at once, written only while the
    /// command's `version` precondition ([`AtVersion`]) holds.
    async fn accept<R: Provisional>(
        &self,
        req: &Request,
        request: &Value,
        agent_id: &AgentId,
        version: Option<u64>,
        build: impl FnOnce(Ids) -> (Payload, R),
    ) -> Result<Response<Body>, Error> {
        command::accept(&self.idempotency, &self.commands, req, request, |ids| {
            let (payload, record) = build(ids);
            Accepted {
                location: format!("/agents/{agent_id}/state"),
                body: json!({ "commandId": ids.command, "agentId": agent_id }),
                command: ids.envelope(correlation_id(req), payload),
                provisional: Guarded {
                    precondition: AtVersion {
                        store: &self.store,
                        agent_id: agent_id.clone(),
                        expected: version,
                        command: ids.command,
                    },
                    record,
                },
            }
        })
        .await
    }

    async fn register(&self, req: &Request, agent_id: AgentId) -> Result<Response<Body>, Error> {
        let (request, body): (Value, RegisterBody) = parse_command(req)?;
        let version = body.version.map(|v| v.0);
        command::idempotency_key(req)?;
        self.accept(req, &request, &agent_id, version, |ids| {
            let cmd = RegisterAgent {
                agent_id: agent_id.clone(),
                name: body.name,
                skills: body.skills,
                capacity: body.capacity,
                expected_version: version,
            };
            let record = ProvisionalAgent {
                store: &self.store,
                agent: Agent::provisional(&cmd, ids.at),
                command: ids.command,
            };
            (Payload::RegisterAgent(cmd), record)
        })
        .await
    }

    /// Accepted for an agent whose registration was accepted (it exists, provisionally at
    /// least); applied after everything accepted before it for that agent.
    async fn change_state(
        &self,
        req: &Request,
        agent_id: AgentId,
    ) -> Result<Response<Body>, Error> {
        let (request, body): (Value, StateBody) = parse_command(req)?;
        let version = body.version.map(|v| v.0);
        // Every input error before the (costlier) existence check.
        command::idempotency_key(req)?;
        if self.store.get(&agent_id).await?.is_none() {
            return Err(Error::NotFound(format!("no agent {agent_id}")));
        }
        self.accept(req, &request, &agent_id, version, |_| {
            let cmd = ChangeAgentState {
                agent_id: agent_id.clone(),
                state: body.state,
                expected_version: version,
            };
            (Payload::ChangeAgentState(cmd), NothingProvisional)
        })
        .await
    }

    /// Reserves an agent for a conversation. The same conversation always gets the same agent:
    /// the reservation is keyed by conversation and created in the same transaction that takes
    /// the slot, so concurrent requests cannot both succeed and no agent exceeds its capacity.
    async fn match_agent(&self, req: &Request) -> Result<Response<Body>, Error> {
        let body: MatchBody = parse_json(req)?;
        let correlation = correlation_id(req);
        // The reservation is tried first and read only when the write finds one: a first
        // match (the common case) costs no read of it; a repeated one finds it either way.
        for _ in 0..MATCH_ROUNDS {
            let candidates = rank_candidates(
                self.store.available().await?,
                &body.skills,
                &body.conversation_id,
            );
            if candidates.is_empty() {
                return match self.store.reservation(&body.conversation_id).await? {
                    Some(existing) => self.matched(existing).await,
                    None => Err(Error::Conflict(
                        "no AVAILABLE agent has the skills and a free slot".into(),
                    )),
                };
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
                match self.store.reserve(&reservation).await? {
                    Reserve::Reserved => return self.matched(reservation).await,
                    Reserve::AlreadyReserved => {
                        if let Some(existing) =
                            self.store.reservation(&body.conversation_id).await?
                        {
                            return self.matched(existing).await;
                        }
                        break;
                    }
                    Reserve::AgentUnavailable => continue,
                }
            }
        }
        Err(Error::Conflict(
            "every matching agent was taken by concurrent requests; retry".into(),
        ))
    }

    /// Publishes `AgentMatched` (again, with the same event id, on a repeated match: a publish
    /// that failed the first time is completed by the caller's retry) and answers with the
    /// match.
    async fn matched(&self, r: Reservation) -> Result<Response<Body>, Error> {
        let result = AgentMatched {
            agent_id: r.agent_id,
            conversation_id: r.conversation_id,
            matched_at: r.matched_at,
        };
        let event = Envelope {
            id: r.event_id,
            correlation_id: r.correlation_id,
            occurred_at: r.matched_at,
            payload: Payload::AgentMatched(result.clone()),
        };
        self.bus.publish(std::slice::from_ref(&event)).await?;
        Ok(json(200, &result))
    }
}
