//! Reactions to events: an agent matched (from the agents API's `AgentMatched`), an agent's
//! state changed (the worker's projection of agents, and queued conversations matched when it
//! becomes AVAILABLE), a conversation closed (its agent's slot is free: the oldest waiting
//! conversation it can take is matched).

use shared::{
    Error,
    domain::{
        agents::{AgentMatched, AgentState, AgentStateChanged, Skills},
        conversations::{Assignment, ConversationClosed, ConversationStatus},
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
use crate::{App, inbox_only, release};

/// After a slot frees, the agents service frees it from its own copy of the same event: a `409`
/// right away may only mean it has not yet. Waits before asking again, then gives up (the
/// conversation stays QUEUED for the next agent event).
const SLOT_FREED_WAITS_MS: [u64; 3] = [200, 400, 800];

/// `AgentMatched` assigns too: whichever of it and the synchronous answer comes first.
pub(crate) async fn matched<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    ev: &AgentMatched,
) -> Result<Applied, Error> {
    read_decide_write("the conversation", async || {
        // Unknown: a match the agents API made for someone else's conversation id.
        let Some(current) = app.store.get(&ev.conversation_id).await? else {
            return inbox_only(&app.store, env, Vec::new()).await.map(Some);
        };
        let next = match current.assign(ev) {
            Assignment::Assign(next) => next,
            Assignment::Unchanged => {
                return inbox_only(&app.store, env, Vec::new()).await.map(Some);
            }
            Assignment::Release(closed) => {
                return inbox_only(&app.store, env, vec![release(env, closed)])
                    .await
                    .map(Some);
            }
        };
        let record = InboxEntry::new(env.id, Vec::new());
        let write = app
            .store
            .save(Some(current.version), &next, Some(&record))
            .await?;
        Ok(write.applied(Vec::new()))
    })
    .await
}

/// Keeps the agent projection (in version order) and, when the agent becomes AVAILABLE with
/// free slots, matches the oldest QUEUED conversations it has the skills for. The projection is
/// written last, with the inbox entry: if the agents API is unavailable the event fails and is
/// redelivered whole (assignments already made are not QUEUED any more, so not redone).
pub(crate) async fn agent_changed<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    ev: &AgentStateChanged,
) -> Result<Applied, Error> {
    let known = app.store.agent(&ev.agent_id).await?;
    if known.as_ref().is_some_and(|a| a.version >= ev.version) {
        return inbox_only(&app.store, env, Vec::new()).await;
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
    let record = InboxEntry::new(env.id, events.clone());
    let write = app
        .store
        .save_agent(known.map(|a| a.version), &view, &record)
        .await?;
    match write.applied(events.clone()) {
        Some(applied) => Ok(applied),
        // Another event of this agent was written meanwhile: it decides the projection.
        None => inbox_only(&app.store, env, events).await,
    }
}

/// A conversation closed: if it held an agent, that agent's slot is free (once the agents
/// service has processed the same event), so the oldest conversation it can take is matched.
pub(crate) async fn slot_freed<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    ev: &ConversationClosed,
) -> Result<Applied, Error> {
    let Some(agent_id) = &ev.agent_id else {
        return inbox_only(&app.store, env, Vec::new()).await;
    };
    let agent = app.store.agent(agent_id).await?;
    if agent
        .as_ref()
        .is_some_and(|a| a.state != AgentState::Available)
    {
        return inbox_only(&app.store, env, Vec::new()).await;
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
    inbox_only(&app.store, env, run.events).await
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

/// Writes a match (without an inbox entry: the caller's message records itself).
async fn assign<S: ConversationStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    m: &AgentMatched,
) -> Result<Option<Envelope>, Error> {
    read_decide_write("the conversation", async || {
        let Some(current) = app.store.get(&m.conversation_id).await? else {
            return Ok(Some(None));
        };
        Ok(match current.assign(m) {
            Assignment::Assign(next) => {
                let write = app.store.save(Some(current.version), &next, None).await?;
                (write != Write::Conflict).then_some(None)
            }
            Assignment::Unchanged => Some(None),
            Assignment::Release(closed) => Some(Some(release(env, closed))),
        })
    })
    .await
}
