//! Reactions to events: an agent matched (from the agents API's `AgentMatched`), an agent's
//! state changed (the worker's projection of agents, and queued conversations matched when it
//! becomes AVAILABLE), a conversation closed (its agent's slot is free: the oldest waiting
//! conversation it can take is matched).

use shared::{
    Error,
    bus::EventBus,
    domain::{
        agents::{AgentMatched, AgentState, AgentStateChanged, Skills},
        conversations::{Assignment, ConversationClosed, ConversationStatus},
        ids::ConversationId,
    },
    envelope::Envelope,
    store::{
        Write,
        conversations::{AgentView, ConversationStore},
        inbox::InboxEntry,
        read_decide_write,
    },
    worker::Applied,
};

use crate::agents_client::MatchOutcome;
use crate::{App, Change, release, release_in};
use shared::store::conversations::Versioned;

/// After a slot frees, the agents service frees it from its own copy of the same event: a `409`
/// right away may only mean it has not yet. Waits before asking again, then gives up (the
/// conversation stays QUEUED for the next agent event).
const SLOT_FREED_WAITS_MS: [u64; 3] = [200, 400, 800];

struct QueueRun {
    /// Releases of matches that arrived after their conversation closed.
    events: Vec<Envelope>,
    /// The agents API answered `409` for a conversation that is still waiting.
    refused: bool,
}

/// What [`App::rematch`] did with one conversation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rematch {
    /// It is not QUEUED (any more): assigned or closed meanwhile, or unknown. Nothing asked.
    NotQueued,
    /// The agents API has nobody for it now (`409`): it stays QUEUED.
    NoAgent,
    /// An agent was matched: the conversation is ASSIGNED to it now (by this write, or by a
    /// concurrent one), unless it closed between the read and the write; then `release` is the
    /// `ConversationClosed` to publish, so that the agent's slot is freed again.
    Matched { release: Option<Envelope> },
}

impl<S: ConversationStore, B: EventBus> App<S, B> {
    /// `AgentMatched` assigns too: whichever of it and the synchronous answer comes first. An
    /// unknown conversation: a match the agents API made for someone else's conversation id.
    pub(crate) async fn matched(
        &self,
        env: &Envelope,
        ev: &AgentMatched,
    ) -> Result<Applied, Error> {
        self.change_conversation(env, &ev.conversation_id, |current| {
            match current.assign(ev) {
                Assignment::Assign(next) => Change::To(next, Vec::new()),
                Assignment::Unchanged => Change::Unchanged(Vec::new()),
                Assignment::Release(closed) => Change::Unchanged(vec![release(env, closed)]),
            }
        })
        .await
    }

    /// Keeps the agent projection (in version order) and, when the agent becomes AVAILABLE with
    /// free slots, matches the oldest QUEUED conversations it has the skills for. The projection
    /// is written last, with the inbox entry: if the agents API is unavailable the event fails
    /// and is redelivered whole (assignments already made are not QUEUED any more, so not
    /// redone).
    pub(crate) async fn agent_changed(
        &self,
        env: &Envelope,
        ev: &AgentStateChanged,
    ) -> Result<Applied, Error> {
        let known = self.store.agent(&ev.agent_id).await?;
        if known.as_ref().is_some_and(|a| a.version >= ev.version) {
            return self.inbox_only(env, Vec::new()).await;
        }
        let events = if ev.state == AgentState::Available {
            let free = ev.capacity.get().saturating_sub(ev.active_conversations);
            self.match_queued(env, Some(&ev.skills), free).await?.events
        } else {
            Vec::new()
        };
        let view = AgentView {
            agent_id: ev.agent_id.clone(),
            state: ev.state,
            skills: ev.skills.clone(),
            version: ev.version,
        };
        let record = InboxEntry::new(env.id, events.clone());
        let write = self
            .store
            .save_agent(known.map(|a| a.version), &view, &record)
            .await?;
        match write.applied(events.clone()) {
            Some(applied) => Ok(applied),
            // Another event of this agent was written meanwhile: it decides the projection.
            None => self.inbox_only(env, events).await,
        }
    }

    /// A conversation closed: if it held an agent, that agent's slot is free (once the agents
    /// service has processed the same event), so the oldest conversation it can take is
    /// matched.
    pub(crate) async fn slot_freed(
        &self,
        env: &Envelope,
        ev: &ConversationClosed,
    ) -> Result<Applied, Error> {
        let Some(agent_id) = &ev.agent_id else {
            return self.inbox_only(env, Vec::new()).await;
        };
        let agent = self.store.agent(agent_id).await?;
        if agent
            .as_ref()
            .is_some_and(|a| a.state != AgentState::Available)
        {
            return self.inbox_only(env, Vec::new()).await;
        }
        let skills = agent.as_ref().map(|a| &a.skills);
        let mut run = self.match_queued(env, skills, 1).await?;
        for wait in SLOT_FREED_WAITS_MS {
            if !run.refused {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            let again = self.match_queued(env, skills, 1).await?;
            run.events.extend(again.events);
            run.refused = again.refused;
        }
        self.inbox_only(env, run.events).await
    }

    /// Matches up to `max` QUEUED conversations, oldest first, each through [`App::rematch`]:
    /// if this message fails midway and is redelivered, conversations already assigned are no
    /// longer QUEUED, and the match is idempotent per conversation anyway.
    async fn match_queued(
        &self,
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
        let candidates = self.store.queued(skills, max as usize + 5).await?;
        let mut assigned = 0;
        for candidate in candidates {
            if assigned >= max {
                break;
            }
            match self
                .rematch(&env.correlation_id, &candidate.conversation_id)
                .await?
            {
                Rematch::NotQueued => {}
                Rematch::NoAgent => {
                    run.refused = true;
                    break;
                }
                Rematch::Matched { release } => {
                    run.events.extend(release);
                    assigned += 1;
                }
            }
        }
        Ok(run)
    }

    /// Matches one QUEUED conversation: re-reads it (an index may list it after it left the
    /// queue), asks the agents API with its skills, and writes the assignment (without an inbox
    /// entry: the caller records its own message, if any). The agents API reserves once per
    /// conversation, so running this again, or concurrently, for the same conversation names
    /// the same agent and never takes a second slot; the write converges on one ASSIGNED state.
    /// `Err` when the agents API is unavailable or answered out of contract, or the store
    /// failed.
    pub(crate) async fn rematch(
        &self,
        correlation_id: &str,
        conversation: &ConversationId,
    ) -> Result<Rematch, Error> {
        let Some(current) = self.store.get(conversation).await? else {
            return Ok(Rematch::NotQueued);
        };
        if current.status != ConversationStatus::Queued {
            return Ok(Rematch::NotQueued);
        }
        match self
            .agents
            .match_agent(&current.conversation_id, &current.skills, correlation_id)
            .await?
        {
            MatchOutcome::NoAgent => Ok(Rematch::NoAgent),
            MatchOutcome::Matched(m) => {
                let release = self.assign(correlation_id, &m).await?;
                Ok(Rematch::Matched { release })
            }
        }
    }

    /// Writes a match (without an inbox entry: the caller's message records itself).
    async fn assign(
        &self,
        correlation_id: &str,
        m: &AgentMatched,
    ) -> Result<Option<Envelope>, Error> {
        read_decide_write("the conversation", async || {
            let Some(current) = self.store.get(&m.conversation_id).await? else {
                return Ok(Some(None));
            };
            Ok(match current.assign(m) {
                Assignment::Assign(next) => {
                    let write = self
                        .store
                        .save(Some(current.version), Versioned::Conversation(&next), None)
                        .await?;
                    (write != Write::Conflict).then_some(None)
                }
                Assignment::Unchanged => Some(None),
                Assignment::Release(closed) => Some(Some(release_in(correlation_id, closed))),
            })
        })
        .await
    }
}
