//! The agents worker: applies agent commands (`RegisterAgent`, `ChangeAgentState`, from the
//! agents FIFO command queue, in the order the API accepted them per agent) and frees slots on
//! `ConversationClosed` (from the event queue), each message exactly once, publishing the
//! resulting events and recording each command's outcome.

use aws_config::SdkConfig;
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
    worker::{Applied, Worker, exactly_once, exactly_once_after},
};

/// The agents worker: its store (the agents table, with the inbox) and the bus it publishes to.
pub struct App<S, B> {
    pub store: S,
    pub bus: B,
}

/// The app as deployed: DynamoDB and EventBridge.
pub type AwsApp = App<DynamoAgentStore, EventBridgeBus>;

/// Builds the function from the template's environment: `TABLE_NAME`, `EVENT_BUS_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    let (store, bus) = (
        shared::store::open(sdk, vars)?,
        EventBridgeBus::open(sdk, vars)?,
    );
    Ok(App { store, bus })
}

/// What a command makes of its agent, decided from the agent as it is (`None`: not
/// registered): the next agent and the event to publish, or why the command is rejected.
type Decision = Result<(Agent, Option<Payload>), Rejection>;

/// Registers (or re-registers) the agent.
fn register(current: Option<&Agent>, cmd: &RegisterAgent) -> Decision {
    let (next, event) = Agent::register(current, cmd, Utc::now())?;
    Ok((next, Some(Payload::AgentRegistered(event))))
}

/// Changes the agent's state.
fn change_state(current: Option<&Agent>, cmd: &ChangeAgentState) -> Decision {
    // The API accepted the command for an agent whose registration was accepted; commands
    // apply in acceptance order, so this one's registration was applied first, unless it was
    // never handed off after all.
    let current = current.ok_or_else(|| Rejection::NoAgent(cmd.agent_id.clone()))?;
    let (next, event) = current.change_state(cmd, Utc::now())?;
    Ok((next, event.map(Payload::AgentStateChanged)))
}

/// Applying a message: an agent command (decided by `register` or `change_state`, written
/// with its event and outcome at once) or a slot's release. Records of the event queue that
/// concern one conversation apply in batch order (the default order key: its aggregate);
/// commands come from the FIFO queue, grouped by its `MessageGroupId`: the agent.
impl<S: AgentStore, B: EventBus> Worker for App<S, B> {
    const NAME: &'static str = "the agents worker";
    const HANDLES: &'static [&'static str] =
        &["RegisterAgent", "ChangeAgentState", "ConversationClosed"];

    async fn apply(&self, env: Envelope) -> Result<(), Error> {
        match &env.payload {
            Payload::RegisterAgent(cmd) => {
                self.command(&env, &cmd.agent_id, |current| register(current, cmd))
                    .await
            }
            Payload::ChangeAgentState(cmd) => {
                self.command(&env, &cmd.agent_id, |current| change_state(current, cmd))
                    .await
            }
            Payload::ConversationClosed(ev) => {
                exactly_once(&self.store, &self.bus, &env, || self.release(&env, ev)).await
            }
            other => Err(Self::refuse(other)),
        }
    }
}

impl<S: AgentStore, B: EventBus> App<S, B> {
    /// Applies a command to `agent` exactly once, as `decide` says. The agent is read
    /// concurrently with the inbox entry (see `exactly_once_after`).
    async fn command(
        &self,
        env: &Envelope,
        agent: &AgentId,
        decide: impl Fn(Option<&Agent>) -> Decision,
    ) -> Result<(), Error> {
        let read = self.store.get(agent);
        exactly_once_after(&self.store, &self.bus, env, read, |current| {
            self.apply_to_agent(env, agent, current, decide)
        })
        .await
    }

    async fn nothing_to_do(&self, record: InboxEntry) -> Result<Applied, Error> {
        let write = self.store.mark_processed(&record).await?;
        Ok(write.applied(Vec::new()).unwrap_or(Applied::Duplicate))
    }

    /// A command that is not applied: its outcome says why, for
    /// `GET /agents/{agentId}/commands/{commandId}`. Never retried: on the FIFO queue, a
    /// command that failed would hold back every later command of its agent.
    async fn rejected(
        &self,
        env: &Envelope,
        agent: &AgentId,
        why: Rejection,
    ) -> Result<Applied, Error> {
        tracing::info!(agent_id = %agent, reason = %why, "command rejected");
        let record = InboxEntry::new(env.id, Vec::new())
            .with_outcome(Outcome::rejected(agent.as_str(), why));
        self.nothing_to_do(record).await
    }

    /// Applies a command to its agent: `decide` turns the agent as it is (`read` first, read
    /// again after a write lost to a concurrent one) into the next agent and the event it
    /// publishes, or rejects the command. The agent, the event and the command's outcome are
    /// written together.
    async fn apply_to_agent(
        &self,
        env: &Envelope,
        agent: &AgentId,
        read: Option<Agent>,
        decide: impl Fn(Option<&Agent>) -> Decision,
    ) -> Result<Applied, Error> {
        let mut read = Some(read);
        read_decide_write("the agent", async || {
            let current = match read.take() {
                Some(agent) => agent,
                None => self.store.get(agent).await?,
            };
            let (next, event) = match decide(current.as_ref()) {
                Ok(decided) => decided,
                Err(why) => return self.rejected(env, agent, why).await.map(Some),
            };
            let outcome = Outcome::applied(agent.as_str(), next.version);
            let events: Vec<Envelope> = event
                .map(|p| Envelope::caused_by(env, p))
                .into_iter()
                .collect();
            let record = InboxEntry::new(env.id, events.clone()).with_outcome(outcome);
            let write = self.store.save(current.as_ref(), &next, &record).await?;
            Ok(write.applied(events))
        })
        .await
    }

    /// Frees the slot a closed conversation held. Closing twice, or closing a conversation that
    /// never had an agent, changes nothing.
    async fn release(&self, env: &Envelope, ev: &ConversationClosed) -> Result<Applied, Error> {
        let reservation = self.store.reservation(&ev.conversation_id).await?;
        let nothing = || InboxEntry::new(env.id, Vec::new());
        let Some(r) = reservation.filter(|r| r.released_at.is_none()) else {
            return self.nothing_to_do(nothing()).await;
        };
        match self.store.release(&r, &nothing()).await? {
            Write::Done => Ok(Applied::Done(Vec::new())),
            Write::Duplicate => Ok(Applied::Duplicate),
            // Released meanwhile by another delivery of an equivalent event.
            Write::Conflict => self.nothing_to_do(nothing()).await,
        }
    }
}
