//! The agents worker: applies agent commands (`RegisterAgent`, `ChangeAgentState`) and frees
//! slots on `ConversationClosed`, each message exactly once, publishing the resulting events.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    config,
    domain::{
        agents::{Agent, ChangeAgentState, RegisterAgent},
        conversations::ConversationClosed,
    },
    events::{Envelope, Message},
    store::{
        Write,
        agents::{AgentStore, DynamoAgentStore},
        inbox::InboxRecord,
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

/// Optimistic-concurrency retries when the agent changes between read and write (another
/// command for the same agent in another batch, or a match taking a slot does not count: it
/// never touches the fields the condition checks).
const WRITE_ATTEMPTS: usize = 5;

pub async fn handle<S: AgentStore, B: EventBus>(
    app: &App<S, B>,
    event: SqsEvent,
) -> SqsBatchResponse {
    process_batch(event, order_key, |env| apply(app, env)).await
}

/// Messages about one agent are applied in batch order; different agents concurrently.
fn order_key(env: &Envelope) -> String {
    match &env.message {
        Message::RegisterAgent(c) => c.agent_id.to_string(),
        Message::ChangeAgentState(c) => c.agent_id.to_string(),
        Message::ConversationClosed(e) => e.conversation_id.to_string(),
        _ => env.id.to_string(),
    }
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

async fn nothing_to_do<S: AgentStore>(store: &S, env: &Envelope) -> Result<Applied, Error> {
    let write = store.record(&InboxRecord::new(env.id, Vec::new())).await?;
    Ok(write.applied(Vec::new()).unwrap_or(Applied::Duplicate))
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
        let Some((next, event)) = Agent::register(current.as_ref(), cmd, Utc::now()) else {
            tracing::info!(agent_id = %cmd.agent_id, version = cmd.version, "stale profile update ignored");
            return nothing_to_do(&app.store, env).await;
        };
        let events = vec![Envelope::caused_by(env, Message::AgentRegistered(event))];
        let record = InboxRecord::new(env.id, events.clone());
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
        // The API checked the agent exists; if its registration is still in flight, failing
        // lets SQS redeliver this command after it.
        let current = current.ok_or_else(|| {
            Error::Unavailable(format!("agent {} not registered yet", cmd.agent_id))
        })?;
        let Some((next, event)) = current.change_state(cmd, Utc::now()) else {
            tracing::info!(agent_id = %cmd.agent_id, version = cmd.version, "stale state change ignored");
            return nothing_to_do(&app.store, env).await;
        };
        let events: Vec<Envelope> = event
            .map(|e| Envelope::caused_by(env, Message::AgentStateChanged(e)))
            .into_iter()
            .collect();
        let record = InboxRecord::new(env.id, events.clone());
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
    let Some(r) = reservation.filter(|r| r.released_at.is_none()) else {
        return nothing_to_do(&app.store, env).await;
    };
    let record = InboxRecord::new(env.id, Vec::new());
    match app.store.release(&r, &record).await? {
        Write::Done => Ok(Applied::Done(Vec::new())),
        Write::Duplicate => Ok(Applied::Duplicate),
        // Released meanwhile by another delivery of an equivalent event.
        Write::Conflict => nothing_to_do(&app.store, env).await,
    }
}
