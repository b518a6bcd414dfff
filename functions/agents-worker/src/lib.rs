//! The agents worker: applies agent commands (`RegisterAgent`, `ChangeAgentState`, from the
//! agents FIFO command queue, in the order the API accepted them per agent) and frees slots on
//! `ConversationClosed` (from the event queue), each message exactly once, publishing the
//! resulting events and recording each command's outcome.

use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    domain::{
        agents::{Agent, ChangeAgentState, RegisterAgent, Rejection},
        conversations::ConversationClosed,
        ids::AgentId,
    },
    envelope::{Envelope, Payload},
    store::{
        Write,
        agents::{AgentStore, DynamoAgentStore},
        inbox::{InboxEntry, Outcome},
        read_decide_write,
    },
    worker::{Applied, exactly_once, exactly_once_after, process_batch},
};

/// The command and event types (`detail-type`s) this worker applies; any other is refused as
/// a poison message. `template.yaml` must deliver exactly these to its queue (checked by
/// `every_message_type_reaches_exactly_the_workers_that_handle_it`; docs/ARCHITECTURE.md,
/// §Commands and events).
pub const HANDLES: &[&str] = &["RegisterAgent", "ChangeAgentState", "ConversationClosed"];

pub struct App<S, B> {
    pub store: S,
    pub bus: B,
}

pub type AwsApp = App<DynamoAgentStore, EventBridgeBus>;

/// Builds the function from the template's environment: `TABLE_NAME`, `EVENT_BUS_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    let (store, bus) = (
        shared::store::open(sdk, vars)?,
        EventBridgeBus::open(sdk, vars)?,
    );
    Ok(App { store, bus })
}

pub async fn handle<S: AgentStore, B: EventBus>(
    app: &App<S, B>,
    event: SqsEvent,
) -> SqsBatchResponse {
    process_batch(event, order_key, |env| apply(app, env)).await
}

/// Records of the event queue that concern one conversation apply in batch order. (Commands
/// come from the FIFO queue, grouped by its `MessageGroupId`: the agent.)
fn order_key(env: &Envelope) -> String {
    env.payload.aggregate_id().to_owned()
}

async fn apply<S: AgentStore, B: EventBus>(app: &App<S, B>, env: Envelope) -> Result<(), Error> {
    match &env.payload {
        // The agent is read concurrently with the inbox entry (see `exactly_once_after`).
        Payload::RegisterAgent(cmd) => {
            let read = app.store.get(&cmd.agent_id);
            exactly_once_after(&app.store, &app.bus, &env, read, |current| {
                register(app, &env, cmd, current)
            })
            .await
        }
        Payload::ChangeAgentState(cmd) => {
            let read = app.store.get(&cmd.agent_id);
            exactly_once_after(&app.store, &app.bus, &env, read, |current| {
                change_state(app, &env, cmd, current)
            })
            .await
        }
        Payload::ConversationClosed(ev) => {
            exactly_once(&app.store, &app.bus, &env, || release(app, &env, ev)).await
        }
        other => Err(Error::invalid(
            "detail-type",
            format!("the agents worker does not handle {}", other.detail_type()),
        )),
    }
}

async fn nothing_to_do<S: AgentStore>(store: &S, record: InboxEntry) -> Result<Applied, Error> {
    let write = store.mark_processed(&record).await?;
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
        InboxEntry::new(env.id, Vec::new()).with_outcome(Outcome::rejected(agent.as_str(), why));
    nothing_to_do(store, record).await
}

/// Registers (or re-registers) the agent; `read` is the agent as read before the first attempt.
async fn register<S: AgentStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &RegisterAgent,
    read: Option<Agent>,
) -> Result<Applied, Error> {
    apply_to_agent(app, env, &cmd.agent_id, read, |current| {
        let (next, event) = Agent::register(current, cmd, Utc::now())?;
        Ok((next, Some(Payload::AgentRegistered(event))))
    })
    .await
}

/// Changes the agent's state; `read` is the agent as read before the first attempt.
async fn change_state<S: AgentStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &ChangeAgentState,
    read: Option<Agent>,
) -> Result<Applied, Error> {
    apply_to_agent(app, env, &cmd.agent_id, read, |current| {
        // The API accepted the command for an agent whose registration was accepted; commands
        // apply in acceptance order, so this one's registration was applied first, unless it
        // was never handed off after all.
        let current = current.ok_or_else(|| Rejection::NoAgent(cmd.agent_id.clone()))?;
        let (next, event) = current.change_state(cmd, Utc::now())?;
        Ok((next, event.map(Payload::AgentStateChanged)))
    })
    .await
}

/// Applies a command to its agent: `decide` turns the agent as it is (`read` first, read again
/// after a write lost to a concurrent one) into the next agent and the event it publishes, or
/// rejects the command. The agent, the event and the command's outcome are written together.
async fn apply_to_agent<S: AgentStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    agent: &AgentId,
    read: Option<Agent>,
    decide: impl Fn(Option<&Agent>) -> Result<(Agent, Option<Payload>), Rejection>,
) -> Result<Applied, Error> {
    let mut read = Some(read);
    read_decide_write("the agent", async || {
        let current = match read.take() {
            Some(agent) => agent,
            None => app.store.get(agent).await?,
        };
        let (next, event) = match decide(current.as_ref()) {
            Ok(decided) => decided,
            Err(why) => return rejected(&app.store, env, agent, why).await.map(Some),
        };
        let outcome = Outcome::applied(agent.as_str(), next.version);
        let events: Vec<Envelope> = event
            .map(|p| Envelope::caused_by(env, p))
            .into_iter()
            .collect();
        let record = InboxEntry::new(env.id, events.clone()).with_outcome(outcome);
        let write = app.store.save(current.as_ref(), &next, &record).await?;
        Ok(write.applied(events))
    })
    .await
}

/// Frees the slot a closed conversation held. Closing twice, or closing a conversation that
/// never had an agent, changes nothing.
async fn release<S: AgentStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    ev: &ConversationClosed,
) -> Result<Applied, Error> {
    let reservation = app.store.reservation(&ev.conversation_id).await?;
    let nothing = || InboxEntry::new(env.id, Vec::new());
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
