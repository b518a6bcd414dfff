//! The conversations worker: applies conversation commands, asks the agents API for an agent
//! synchronously, and keeps its projection of agents from their events. Every message is
//! applied once (its inbox record is written in the same transaction as its effect) and its
//! events are published at least once (from that record, again on redelivery).
//!
//! Matching never double-books and never loses a conversation:
//! - the agents API reserves once per conversation, so a retried, repeated or concurrent match
//!   for one conversation always names the same agent;
//! - a conversation nobody can take now (`409`) is QUEUED and matched later, oldest first, when
//!   an agent becomes AVAILABLE (`AgentStateChanged`) or frees a slot (`ConversationClosed`);
//! - when the agents API is unreachable (or the breaker is open) the conversation is QUEUED and
//!   the command fails, so SQS redelivers it (and after `maxReceiveCount` keeps it in the DLQ,
//!   while the QUEUED conversation is still matched on the next agent event);
//! - a match that arrives after the conversation closed is released by publishing
//!   `ConversationClosed` again with the matched agent.

pub mod agents_client;
pub mod resilience;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    config,
    domain::{
        agents::{AgentMatched, AgentState, AgentStateChanged, Skills},
        conversations::{
            Assignment, CloseConversation, Conversation, ConversationClosed, ConversationStatus,
            Message as ChatMessage, MessageSent, MessageStatus, RecordReceipt, SendMessage,
            StartConversation,
        },
    },
    events::{Envelope, Message},
    store::{
        Write,
        conversations::{AgentView, ConversationStore, DynamoConversationStore},
        inbox::InboxRecord,
    },
    worker::{Applied, exactly_once, process_batch},
};

use agents_client::{AgentsClient, MatchOutcome, Policy, Signer};

pub struct Config {
    pub table_name: String,
    pub event_bus_name: String,
    /// Base URL of the HTTP API serving `POST /agents/match`.
    pub agents_api_url: String,
}

impl Config {
    pub fn from_env() -> Result<Self, config::MissingVar> {
        Ok(Config {
            table_name: config::var("TABLE_NAME")?,
            event_bus_name: config::var("EVENT_BUS_NAME")?,
            agents_api_url: config::var("AGENTS_API_URL")?,
        })
    }
}

pub struct App<S, B> {
    pub store: S,
    pub bus: B,
    pub agents: AgentsClient,
}

pub type AwsApp = App<DynamoConversationStore, EventBridgeBus>;

impl AwsApp {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config, policy: Policy) -> Result<Self, Error> {
        let signer = Signer::from_sdk(sdk)?;
        Ok(App {
            store: DynamoConversationStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                config.table_name,
            ),
            bus: EventBridgeBus::new(aws_sdk_eventbridge::Client::new(sdk), config.event_bus_name),
            agents: AgentsClient::new(&config.agents_api_url, signer, policy),
        })
    }
}

/// Optimistic-concurrency retries when an item changes between read and write.
const WRITE_ATTEMPTS: usize = 5;

/// After a slot frees, the agents service frees it from its own copy of the same event: a `409`
/// right away may only mean it has not yet. Waits before asking again, then gives up (the
/// conversation stays QUEUED for the next agent event).
const SLOT_FREED_WAITS_MS: [u64; 3] = [200, 400, 800];

pub async fn handle<S: ConversationStore, B: EventBus>(
    app: &App<S, B>,
    event: SqsEvent,
) -> SqsBatchResponse {
    process_batch(event, order_key, |env| apply(app, env)).await
}

/// Everything about one conversation is applied in batch order (its start before its messages,
/// a message before its receipts); different conversations and agents concurrently.
fn order_key(env: &Envelope) -> String {
    match &env.message {
        Message::StartConversation(c) => c.conversation_id.to_string(),
        Message::SendMessage(c) => c.conversation_id.to_string(),
        Message::RecordReceipt(c) => c.conversation_id.to_string(),
        Message::CloseConversation(c) => c.conversation_id.to_string(),
        Message::AgentMatched(e) => e.conversation_id.to_string(),
        Message::ConversationClosed(e) => e.conversation_id.to_string(),
        // `#` cannot occur in ids, so agent keys never collide with conversation keys.
        Message::AgentStateChanged(e) => format!("agent#{}", e.agent_id),
        _ => env.id.to_string(),
    }
}

async fn apply<S: ConversationStore, B: EventBus>(
    app: &App<S, B>,
    env: Envelope,
) -> Result<(), Error> {
    let (store, bus, env) = (&app.store, &app.bus, &env);
    match &env.message {
        Message::StartConversation(c) => exactly_once(store, bus, env, || start(app, env, c)).await,
        Message::SendMessage(c) => exactly_once(store, bus, env, || send(app, env, c)).await,
        Message::RecordReceipt(c) => exactly_once(store, bus, env, || receipt(app, env, c)).await,
        Message::CloseConversation(c) => exactly_once(store, bus, env, || close(app, env, c)).await,
        Message::AgentMatched(e) => exactly_once(store, bus, env, || matched(app, env, e)).await,
        Message::AgentStateChanged(e) => {
            exactly_once(store, bus, env, || agent_changed(app, env, e)).await
        }
        Message::ConversationClosed(e) => {
            exactly_once(store, bus, env, || slot_freed(app, env, e)).await
        }
        other => Err(Error::invalid(
            "detail-type",
            format!(
                "the conversations worker does not handle {}",
                other.detail_type()
            ),
        )),
    }
}

/// Records a message whose effect is only `events` (possibly none).
async fn record_only<S: ConversationStore>(
    store: &S,
    env: &Envelope,
    events: Vec<Envelope>,
) -> Result<Applied, Error> {
    let write = store
        .record(&InboxRecord::new(env.id, events.clone()))
        .await?;
    Ok(write.applied(events).unwrap_or(Applied::Duplicate))
}

fn kept_changing() -> Error {
    Error::Unavailable("item kept changing during the update".into())
}

fn release(env: &Envelope, closed: ConversationClosed) -> Envelope {
    tracing::warn!(conversation_id = %closed.conversation_id, "match arrived after close; releasing the slot");
    Envelope::caused_by(env, Message::ConversationClosed(closed))
}

/// Creates the conversation (unless the API's PENDING record is there) and matches it.
async fn start<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &StartConversation,
) -> Result<Applied, Error> {
    let mut events = vec![Envelope::caused_by(
        env,
        Message::ConversationStarted(cmd.into()),
    )];
    let mut matched: Option<AgentMatched> = None;
    for _ in 0..WRITE_ATTEMPTS {
        let stored = app.store.get(&cmd.conversation_id).await?;
        let expected = stored.as_ref().map(|c| c.version);
        let current = stored.unwrap_or_else(|| Conversation::start(cmd));
        if !current.is_waiting() {
            // Assigned by an `AgentMatched` meanwhile, or closed. A match this call made for a
            // conversation that closed meanwhile must be released.
            if let Some(Assignment::Release(closed)) = matched.as_ref().map(|m| current.assign(m)) {
                events.push(release(env, closed));
            }
            return record_only(&app.store, env, events).await;
        }
        let answer = app
            .agents
            .match_agent(
                &current.conversation_id,
                &current.skills,
                &env.correlation_id,
            )
            .await;
        let next = match answer {
            Ok(MatchOutcome::Matched(m)) => {
                let next = match current.assign(&m) {
                    Assignment::Assign(next) => next,
                    _ => unreachable!("a waiting conversation takes a match"),
                };
                matched = Some(m);
                next
            }
            Ok(MatchOutcome::NoAgent) => match current.queue() {
                Some(next) => next,
                None => return record_only(&app.store, env, events).await,
            },
            Err(e @ Error::Unavailable(_)) => {
                // Visible as QUEUED (and matchable by agent events) while SQS redelivers this.
                if let Some(queued) = current.queue() {
                    app.store.save(expected, &queued, None).await?;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let record = InboxRecord::new(env.id, events.clone());
        let write = app.store.save(expected, &next, Some(&record)).await?;
        if let Some(applied) = write.applied(events.clone()) {
            return Ok(applied);
        }
    }
    Err(kept_changing())
}

/// Delivers a message to its conversation, or rejects it when the conversation is closed or
/// unknown (recorded, not retried: retrying cannot change the answer).
async fn send<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &SendMessage,
) -> Result<Applied, Error> {
    for _ in 0..WRITE_ATTEMPTS {
        let stored = app
            .store
            .message(&cmd.conversation_id, &cmd.message_id)
            .await?;
        let expected = stored.as_ref().map(|m| m.version);
        let current = stored.unwrap_or_else(|| ChatMessage::accept(cmd));
        let conversation = app.store.get(&cmd.conversation_id).await?;
        let now = Utc::now();
        let (next, events) = match conversation {
            Some(c) if c.status != ConversationStatus::Closed => {
                let sent = vec![Envelope::caused_by(
                    env,
                    Message::MessageSent(MessageSent {
                        conversation_id: cmd.conversation_id.clone(),
                        message_id: cmd.message_id.clone(),
                        sender: cmd.sender,
                        agent_id: c.agent_id.clone(),
                        sent_at: now,
                    }),
                )];
                match current.sent(now) {
                    Some(next) => (next, sent),
                    // A receipt overtook this command: the message was delivered already.
                    None if current.status != MessageStatus::Rejected => {
                        return record_only(&app.store, env, sent).await;
                    }
                    None => return record_only(&app.store, env, Vec::new()).await,
                }
            }
            other => {
                let reason = if other.is_some() {
                    "the conversation is closed"
                } else {
                    "no such conversation"
                };
                tracing::info!(conversation_id = %cmd.conversation_id, message_id = %cmd.message_id, reason, "message rejected");
                match current.reject(reason, now) {
                    Some(next) => (next, Vec::new()),
                    None => return record_only(&app.store, env, Vec::new()).await,
                }
            }
        };
        let record = InboxRecord::new(env.id, events.clone());
        let write = app
            .store
            .save_message(expected, &next, Some(&record))
            .await?;
        if let Some(applied) = write.applied(events) {
            return Ok(applied);
        }
    }
    Err(kept_changing())
}

/// Moves a message's status forward; a receipt that would move it back changes nothing.
async fn receipt<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &RecordReceipt,
) -> Result<Applied, Error> {
    for _ in 0..WRITE_ATTEMPTS {
        let Some(current) = app
            .store
            .message(&cmd.conversation_id, &cmd.message_id)
            .await?
        else {
            return record_only(&app.store, env, Vec::new()).await;
        };
        let Some(next) = current.receipt(cmd.status, Utc::now()) else {
            return record_only(&app.store, env, Vec::new()).await;
        };
        let record = InboxRecord::new(env.id, Vec::new());
        let write = app
            .store
            .save_message(Some(current.version), &next, Some(&record))
            .await?;
        if let Some(applied) = write.applied(Vec::new()) {
            return Ok(applied);
        }
    }
    Err(kept_changing())
}

/// Closes the conversation and publishes `ConversationClosed` (once: closing twice changes
/// nothing the second time).
async fn close<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &CloseConversation,
) -> Result<Applied, Error> {
    for _ in 0..WRITE_ATTEMPTS {
        let Some(current) = app.store.get(&cmd.conversation_id).await? else {
            return record_only(&app.store, env, Vec::new()).await;
        };
        let Some((next, closed)) = current.close(Utc::now()) else {
            return record_only(&app.store, env, Vec::new()).await;
        };
        let events = vec![Envelope::caused_by(
            env,
            Message::ConversationClosed(closed),
        )];
        let record = InboxRecord::new(env.id, events.clone());
        let write = app
            .store
            .save(Some(current.version), &next, Some(&record))
            .await?;
        if let Some(applied) = write.applied(events) {
            return Ok(applied);
        }
    }
    Err(kept_changing())
}

/// `AgentMatched` assigns too: whichever of it and the synchronous answer comes first.
async fn matched<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    ev: &AgentMatched,
) -> Result<Applied, Error> {
    for _ in 0..WRITE_ATTEMPTS {
        // Unknown: a match the agents API made for someone else's conversation id.
        let Some(current) = app.store.get(&ev.conversation_id).await? else {
            return record_only(&app.store, env, Vec::new()).await;
        };
        let next = match current.assign(ev) {
            Assignment::Assign(next) => next,
            Assignment::Unchanged => return record_only(&app.store, env, Vec::new()).await,
            Assignment::Release(closed) => {
                return record_only(&app.store, env, vec![release(env, closed)]).await;
            }
        };
        let record = InboxRecord::new(env.id, Vec::new());
        let write = app
            .store
            .save(Some(current.version), &next, Some(&record))
            .await?;
        if let Some(applied) = write.applied(Vec::new()) {
            return Ok(applied);
        }
    }
    Err(kept_changing())
}

/// Keeps the agent projection (in version order) and, when the agent becomes AVAILABLE with
/// free slots, matches the oldest QUEUED conversations it has the skills for. The projection is
/// written last, with the inbox record: if the agents API is unavailable the event fails and is
/// redelivered whole (assignments already made are not QUEUED any more, so not redone).
async fn agent_changed<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    ev: &AgentStateChanged,
) -> Result<Applied, Error> {
    let known = app.store.agent(&ev.agent_id).await?;
    if known.as_ref().is_some_and(|a| a.version >= ev.version) {
        return record_only(&app.store, env, Vec::new()).await;
    }
    let events = if ev.state == AgentState::Available {
        let free = ev.capacity.get().saturating_sub(ev.active_conversations);
        match_queued(app, env, Some(&ev.skills), free).await?.events
    } else {
        Vec::new()
    };
    let view = AgentView {
        agent_id: ev.agent_id.clone(),
        state: ev.state,
        skills: ev.skills.clone(),
        version: ev.version,
    };
    let record = InboxRecord::new(env.id, events.clone());
    let write = app
        .store
        .save_agent(known.map(|a| a.version), &view, &record)
        .await?;
    match write.applied(events.clone()) {
        Some(applied) => Ok(applied),
        // Another event of this agent was written meanwhile: it decides the projection.
        None => record_only(&app.store, env, events).await,
    }
}

/// A conversation closed: if it held an agent, that agent's slot is free (once the agents
/// service has processed the same event), so the oldest conversation it can take is matched.
async fn slot_freed<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    ev: &ConversationClosed,
) -> Result<Applied, Error> {
    let Some(agent_id) = &ev.agent_id else {
        return record_only(&app.store, env, Vec::new()).await;
    };
    let agent = app.store.agent(agent_id).await?;
    if agent
        .as_ref()
        .is_some_and(|a| a.state != AgentState::Available)
    {
        return record_only(&app.store, env, Vec::new()).await;
    }
    let skills = agent.as_ref().map(|a| &a.skills);
    let mut run = match_queued(app, env, skills, 1).await?;
    for wait in SLOT_FREED_WAITS_MS {
        if !run.refused {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        let again = match_queued(app, env, skills, 1).await?;
        run.events.extend(again.events);
        run.refused = again.refused;
    }
    record_only(&app.store, env, run.events).await
}

struct QueueRun {
    /// Releases of matches that arrived after their conversation closed.
    events: Vec<Envelope>,
    /// The agents API answered `409` for a conversation that is still waiting.
    refused: bool,
}

/// Matches up to `max` QUEUED conversations, oldest first. Each assignment is its own
/// conditional write: if this message fails midway and is redelivered, conversations already
/// assigned are no longer QUEUED and the match is idempotent per conversation anyway.
async fn match_queued<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    skills: Option<&Skills>,
    max: u32,
) -> Result<QueueRun, Error> {
    let mut run = QueueRun {
        events: Vec::new(),
        refused: false,
    };
    if max == 0 {
        return Ok(run);
    }
    // A few more than needed: the index may still list conversations assigned a moment ago.
    let candidates = app.store.queued(skills, max as usize + 5).await?;
    let mut assigned = 0;
    for candidate in candidates {
        if assigned >= max {
            break;
        }
        let Some(current) = app.store.get(&candidate.conversation_id).await? else {
            continue;
        };
        if current.status != ConversationStatus::Queued {
            continue;
        }
        match app
            .agents
            .match_agent(
                &current.conversation_id,
                &current.skills,
                &env.correlation_id,
            )
            .await?
        {
            MatchOutcome::NoAgent => {
                run.refused = true;
                break;
            }
            MatchOutcome::Matched(m) => {
                run.events.extend(assign(app, env, &m).await?);
                assigned += 1;
            }
        }
    }
    Ok(run)
}

/// Writes a match (without an inbox record: the caller's message records itself).
async fn assign<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    m: &AgentMatched,
) -> Result<Option<Envelope>, Error> {
    for _ in 0..WRITE_ATTEMPTS {
        let Some(current) = app.store.get(&m.conversation_id).await? else {
            return Ok(None);
        };
        match current.assign(m) {
            Assignment::Assign(next) => {
                match app.store.save(Some(current.version), &next, None).await? {
                    Write::Conflict => continue,
                    _ => return Ok(None),
                }
            }
            Assignment::Unchanged => return Ok(None),
            Assignment::Release(closed) => return Ok(Some(release(env, closed))),
        }
    }
    Err(kept_changing())
}
