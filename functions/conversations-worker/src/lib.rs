//! The conversations worker: applies conversation commands, asks the agents API for an agent
//! synchronously, and keeps its projection of agents from their events. Every message is
//! applied once (its inbox entry is written in the same transaction as its effect) and its
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
//! - a QUEUED conversation whose agent event never arrives is matched by the [`sweeper`], a
//!   second binary of this crate run every minute, through the same path;
//! - a match that arrives after the conversation closed is released by publishing
//!   `ConversationClosed` again with the matched agent.

pub mod agents_client;
mod commands;
mod reactions;
pub mod resilience;
pub mod sweeper;

use aws_config::SdkConfig;
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    domain::{
        conversations::{Conversation, ConversationClosed},
        ids::ConversationId,
    },
    envelope::{Envelope, Payload},
    store::{
        conversations::{ConversationStore, DynamoConversationStore, Versioned},
        inbox::InboxEntry,
        read_decide_write,
    },
    worker::{Applied, Worker, exactly_once},
};

use agents_client::{AgentsClient, Policy, Signer};

/// The conversations worker: its store (the conversations table, with the inbox), the bus it
/// publishes to, and the agents API's client (matches, releases).
pub struct App<S, B> {
    pub store: S,
    pub bus: B,
    pub agents: AgentsClient,
}

/// The app as deployed: DynamoDB and EventBridge.
pub type AwsApp = App<DynamoConversationStore, EventBridgeBus>;

/// Builds the function from the template's environment: `TABLE_NAME`, `EVENT_BUS_NAME`, `AGENTS_API_URL`, and the agents client's policy (`AGENTS_TIMEOUT_MS`, ... : [`Policy::from_vars`]).
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, Error> {
    let missing = |e: MissingVar| Error::Internal(e.to_string());
    let agents_api_url = vars.var("AGENTS_API_URL").map_err(missing)?;
    let agents = AgentsClient::new(
        &agents_api_url,
        Signer::from_sdk(sdk)?,
        Policy::from_vars(vars),
    );
    let store = shared::store::open(sdk, vars).map_err(missing)?;
    Ok(App {
        store,
        bus: EventBridgeBus::open(sdk, vars).map_err(missing)?,
        agents,
    })
}

/// Applying a message. Everything about one conversation is applied in batch order (its start
/// before its messages, a message before its receipts); different conversations and agents
/// concurrently.
impl<S: ConversationStore, B: EventBus> Worker for App<S, B> {
    const NAME: &'static str = "the conversations worker";
    const HANDLES: &'static [&'static str] = &[
        "StartConversation",
        "SendMessage",
        "RecordReceipt",
        "CloseConversation",
        "AgentMatched",
        "AgentStateChanged",
        "ConversationClosed",
    ];

    fn order_key(env: &Envelope) -> String {
        match &env.payload {
            // `#` cannot occur in ids, so agent keys never collide with conversation keys.
            Payload::AgentStateChanged(e) => format!("agent#{}", e.agent_id),
            handled if Self::HANDLES.contains(&handled.detail_type()) => {
                handled.aggregate_id().to_owned()
            }
            _ => env.id.to_string(),
        }
    }

    async fn apply(&self, env: Envelope) -> Result<(), Error> {
        let (store, bus, env) = (&self.store, &self.bus, &env);
        match &env.payload {
            Payload::StartConversation(c) => {
                exactly_once(store, bus, env, || self.start(env, c)).await
            }
            Payload::SendMessage(c) => exactly_once(store, bus, env, || self.send(env, c)).await,
            Payload::RecordReceipt(c) => {
                exactly_once(store, bus, env, || self.receipt(env, c)).await
            }
            Payload::CloseConversation(c) => {
                exactly_once(store, bus, env, || self.close(env, c)).await
            }
            Payload::AgentMatched(e) => {
                exactly_once(store, bus, env, || self.matched(env, e)).await
            }
            Payload::AgentStateChanged(e) => {
                exactly_once(store, bus, env, || self.agent_changed(env, e)).await
            }
            Payload::ConversationClosed(e) => {
                exactly_once(store, bus, env, || self.slot_freed(env, e)).await
            }
            other => Err(Self::refuse(other)),
        }
    }
}

/// The writes that the commands' and the reactions' decisions share
/// (docs/ARCHITECTURE.md, §Commands and events): each records the message's inbox entry, with
/// the events it publishes, in the same conditional write as its effect.
impl<S: ConversationStore, B: EventBus> App<S, B> {
    /// Records a message whose effect is only `events` (possibly none).
    pub(crate) async fn inbox_only(
        &self,
        env: &Envelope,
        events: Vec<Envelope>,
    ) -> Result<Applied, Error> {
        let write = self
            .store
            .mark_processed(&InboxEntry::new(env.id, events.clone()))
            .await?;
        Ok(write.applied(events).unwrap_or(Applied::Duplicate))
    }

    /// [`App::inbox_only`] as the answer of a [`read_decide_write`] round:
    /// final, never read again.
    pub(crate) async fn decided(
        &self,
        env: &Envelope,
        events: Vec<Envelope>,
    ) -> Result<Option<Applied>, Error> {
        self.inbox_only(env, events).await.map(Some)
    }

    /// Writes `next` over the version `expected` (`None`: there is none yet) with the
    /// message's inbox entry, which publishes `events`. `None` when a concurrent write came
    /// first: read again and decide again.
    pub(crate) async fn save(
        &self,
        env: &Envelope,
        expected: Option<u64>,
        next: Versioned<'_>,
        events: Vec<Envelope>,
    ) -> Result<Option<Applied>, Error> {
        let record = Some(InboxEntry::new(env.id, events.clone()));
        let write = self.store.save(expected, next, record.as_ref()).await?;
        Ok(write.applied(events))
    }

    /// Changes an existing conversation as `decide` says, with the message's inbox entry (read,
    /// decided and written again when a concurrent write came first). An unknown conversation
    /// changes nothing.
    pub(crate) async fn change_conversation(
        &self,
        env: &Envelope,
        id: &ConversationId,
        decide: impl Fn(&Conversation) -> Change,
    ) -> Result<Applied, Error> {
        read_decide_write("the conversation", async || {
            let Some(current) = self.store.get(id).await? else {
                return self.decided(env, Vec::new()).await;
            };
            match decide(&current) {
                Change::To(next, events) => {
                    let next = Versioned::Conversation(&next);
                    self.save(env, Some(current.version), next, events).await
                }
                Change::Unchanged(events) => self.decided(env, events).await,
            }
        })
        .await
    }
}

/// A decision on an existing conversation, with the events it publishes.
pub(crate) enum Change {
    /// The conversation changes to this.
    To(Conversation, Vec<Envelope>),
    /// The conversation stays as it is.
    Unchanged(Vec<Envelope>),
}

pub(crate) fn release(env: &Envelope, closed: ConversationClosed) -> Envelope {
    release_in(&env.correlation_id, closed)
}

/// [`release`] for a caller without a message (the sweeper), under its correlation id.
pub(crate) fn release_in(correlation_id: &str, closed: ConversationClosed) -> Envelope {
    tracing::warn!(conversation_id = %closed.conversation_id, "match arrived after close; releasing the slot");
    Envelope::new(correlation_id, Payload::ConversationClosed(closed))
}
