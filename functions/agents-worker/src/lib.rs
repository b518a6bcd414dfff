//! The agents worker: applies agent commands (`RegisterAgent`, `ChangeAgentState`, from the
//! agents FIFO command queue, in the order the API accepted them per agent) and frees slots on
//! `ConversationClosed` (from the event queue), each message exactly once, publishing the
//! resulting events and recording each command's outcome.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    config,
    domain::{
        agents::{Agent, ChangeAgentState, RegisterAgent, Rejection},
        conversations::ConversationClosed,
        ids::AgentId,
    },
    events::{Envelope, Message},
    store::{
        Write,
        agents::{AgentStore, DynamoAgentStore},
        inbox::{InboxRecord, Outcome},
    },
    worker::{Applied, exactly_once, exactly_once_after, process_batch},
};

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

pub struct App<S, B> {
    pub store: S,
    pub bus: B,
}

pub type AwsApp = App<DynamoAgentStore, EventBridgeBus>;

impl AwsApp {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        App {
            store: DynamoAgentStore::new(aws_sdk_dynamodb::Client::new(sdk), config.table_name),
            bus: EventBridgeBus::new(aws_sdk_eventbridge::Client::new(sdk), config.event_bus_name),
        }
    }
}

/// Optimistic-concurrency retries when the agent changes between read and write: only the
/// API's provisional write of a new agent can (a match taking a slot never touches the fields
/// the condition checks).
const WRITE_ATTEMPTS: usize = 5;

pub async fn handle<S: AgentStore, B: EventBus>(
    app: &App<S, B>,
    event: SqsEvent,
) -> SqsBatchResponse {
    process_batch(event, order_key, |env| apply(app, env)).await
}

/// Records of the event queue that concern one conversation apply in batch order. (Commands
/// come from the FIFO queue, grouped by its `MessageGroupId`: the agent.)
fn order_key(env: &Envelope) -> String {
    env.message.aggregate_id().to_owned()
}

async fn apply<S: AgentStore, B: EventBus>(app: &App<S, B>, env: Envelope) -> Result<(), Error> {
    match &env.message {
        // The agent is read concurrently with the inbox record (see `exactly_once_after`).
        Message::RegisterAgent(cmd) => {
            let read = app.store.get(&cmd.agent_id);
            exactly_once_after(&app.store, &app.bus, &env, read, |current| {
                register(app, &env, cmd, current)
            })
            .await
        }
        Message::ChangeAgentState(cmd) => {
            let read = app.store.get(&cmd.agent_id);
            exactly_once_after(&app.store, &app.bus, &env, read, |current| {
                change_state(app, &env, cmd, current)
            })
            .await
        }
        Message::ConversationClosed(ev) => {
            exactly_once(&app.store, &app.bus, &env, || release(app, &env, ev)).await
        }
        other => Err(Error::invalid(
            "detail-type",
            format!("the agents worker does not handle {}", other.detail_type()),
        )),
    }
}

async fn nothing_to_do<S: AgentStore>(store: &S, record: InboxRecord) -> Result<Applied, Error> {
    let write = store.record(&record).await?;
    Ok(write.applied(Vec::new()).unwrap_or(Applied::Duplicate))
}

/// A command that is not applied: its outcome says why, for
/// `GET /agents/{agentId}/commands/{commandId}`. Never retried: on the FIFO queue, a command
/// that failed would hold back every later command of its agent.
async fn rejected<S: AgentStore>(
    store: &S,
    env: &Envelope,
    agent: &AgentId,
    why: Rejection,
) -> Result<Applied, Error> {
    tracing::info!(agent_id = %agent, reason = %why, "command rejected");
    let record =
        InboxRecord::new(env.id, Vec::new()).with_outcome(Outcome::rejected(agent.as_str(), why));
    nothing_to_do(store, record).await
}

/// `read` is the agent as read before the first attempt; later attempts (after a conflicting
/// write) read it again.
async fn register<S: AgentStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &RegisterAgent,
    read: Option<Agent>,
) -> Result<Applied, Error> {
    let mut read = Some(read);
    for _ in 0..WRITE_ATTEMPTS {
        let current = match read.take() {
            Some(agent) => agent,
            None => app.store.get(&cmd.agent_id).await?,
        };
        let (next, event) = match Agent::register(current.as_ref(), cmd, Utc::now()) {
            Ok(applied) => applied,
            Err(why) => return rejected(&app.store, env, &cmd.agent_id, why).await,
        };
        let outcome = Outcome::applied(cmd.agent_id.as_str(), next.version);
        let events = vec![Envelope::caused_by(env, Message::AgentRegistered(event))];
        let record = InboxRecord::new(env.id, events.clone()).with_outcome(outcome);
        let write = app.store.save(current.as_ref(), &next, &record).await?;
        if let Some(applied) = write.applied(events) {
            return Ok(applied);
        }
    }
    Err(Error::Unavailable(
        "agent kept changing during the update".into(),
    ))
}

/// `read` is the agent as read before the first attempt; later attempts (after a conflicting
/// write) read it again.
async fn change_state<S: AgentStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &ChangeAgentState,
    read: Option<Agent>,
) -> Result<Applied, Error> {
    let mut read = Some(read);
    for _ in 0..WRITE_ATTEMPTS {
        let current = match read.take() {
            Some(agent) => agent,
            None => app.store.get(&cmd.agent_id).await?,
        };
        // The API accepted the command for an agent whose registration was accepted; commands
        // apply in acceptance order, so this one's registration was applied first, unless it
        // was never handed off after all.
        let Some(current) = current else {
            let why = Rejection::NoAgent(cmd.agent_id.clone());
            return rejected(&app.store, env, &cmd.agent_id, why).await;
        };
        let (next, event) = match current.change_state(cmd, Utc::now()) {
            Ok(applied) => applied,
            Err(why) => return rejected(&app.store, env, &cmd.agent_id, why).await,
        };
        let outcome = Outcome::applied(cmd.agent_id.as_str(), next.version);
        let events: Vec<Envelope> = event
            .map(|e| Envelope::caused_by(env, Message::AgentStateChanged(e)))
            .into_iter()
            .collect();
        let record = InboxRecord::new(env.id, events.clone()).with_outcome(outcome);
        let write = app.store.save(Some(&current), &next, &record).await?;
        if let Some(applied) = write.applied(events) {
            return Ok(applied);
        }
    }
    Err(Error::Unavailable(
        "agent kept changing during the update".into(),
    ))
}

/// Frees the slot a closed conversation held. Closing twice, or closing a conversation that
/// never had an agent, changes nothing.
async fn release<S: AgentStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    ev: &ConversationClosed,
) -> Result<Applied, Error> {
    let reservation = app.store.reservation(&ev.conversation_id).await?;
    let nothing = || InboxRecord::new(env.id, Vec::new());
    let Some(r) = reservation.filter(|r| r.released_at.is_none()) else {
        return nothing_to_do(&app.store, nothing()).await;
    };
    match app.store.release(&r, &nothing()).await? {
        Write::Done => Ok(Applied::Done(Vec::new())),
        Write::Duplicate => Ok(Applied::Duplicate),
        // Released meanwhile by another delivery of an equivalent event.
        Write::Conflict => nothing_to_do(&app.store, nothing()).await,
    }
}
