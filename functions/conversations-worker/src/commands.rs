//! The conversation commands the API accepted: start (and match at once), send a message,
//! record a receipt, close. Each reads what it changes, decides with the domain rules of
//! `shared::domain::conversations`, and writes the result with the message's inbox entry in
//! one conditional write ([`read_decide_write`] again when it lost to a concurrent one).

use chrono::Utc;
use shared::{
    Error,
    bus::EventBus,
    domain::{
        agents::AgentMatched,
        conversations::{
            Assignment, ChatMessage, CloseConversation, Conversation, ConversationStatus,
            MessageSent, MessageStatus, RecordReceipt, SendMessage, StartConversation,
        },
    },
    envelope::{Envelope, Payload},
    store::{conversations::ConversationStore, read_decide_write},
    worker::Applied,
};

use crate::agents_client::MatchOutcome;
use crate::{App, Change, release};
use shared::store::conversations::Versioned;

impl<S: ConversationStore, B: EventBus> App<S, B> {
    /// Creates the conversation (unless the API's PENDING record is there) and matches it.
    pub(crate) async fn start(
        &self,
        env: &Envelope,
        cmd: &StartConversation,
    ) -> Result<Applied, Error> {
        let started = Envelope::caused_by(env, Payload::ConversationStarted(cmd.into()));
        let mut matched: Option<AgentMatched> = None;
        read_decide_write("the conversation", async || {
            let stored = self.store.get(&cmd.conversation_id).await?;
            let expected = stored.as_ref().map(|c| c.version);
            let current = stored.unwrap_or_else(|| Conversation::start(cmd));
            if !current.is_waiting() {
                // Assigned by an `AgentMatched` meanwhile, or closed. A match this call made for
                // a conversation that closed meanwhile must be released.
                let mut events = vec![started.clone()];
                if let Some(Assignment::Release(closed)) =
                    matched.as_ref().map(|m| current.assign(m))
                {
                    events.push(release(env, closed));
                }
                return self.decided(env, events).await;
            }
            let answer = self
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
                    None => return self.decided(env, vec![started.clone()]).await,
                },
                Err(e @ Error::Unavailable(_)) => {
                    // Visible as QUEUED (and matchable by agent events) while SQS redelivers
                    // this.
                    if let Some(queued) = current.queue() {
                        self.store
                            .save(expected, Versioned::Conversation(&queued), None)
                            .await?;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            let next = Versioned::Conversation(&next);
            self.save(env, expected, next, vec![started.clone()]).await
        })
        .await
    }

    /// Delivers a message to its conversation, or rejects it when the conversation is closed
    /// or unknown (recorded, not retried: retrying cannot change the answer).
    pub(crate) async fn send(&self, env: &Envelope, cmd: &SendMessage) -> Result<Applied, Error> {
        read_decide_write("the message", async || {
            let stored = self
                .store
                .message(&cmd.conversation_id, &cmd.message_id)
                .await?;
            let expected = stored.as_ref().map(|m| m.version);
            let current = stored.unwrap_or_else(|| ChatMessage::accept(cmd));
            let conversation = self.store.get(&cmd.conversation_id).await?;
            let now = Utc::now();
            let (next, events) = match conversation {
                Some(c) if c.status != ConversationStatus::Closed => {
                    let sent = vec![Envelope::caused_by(
                        env,
                        Payload::MessageSent(MessageSent {
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
                            return self.decided(env, sent).await;
                        }
                        None => return self.decided(env, Vec::new()).await,
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
                        None => return self.decided(env, Vec::new()).await,
                    }
                }
            };
            self.save(env, expected, Versioned::Message(&next), events).await
        })
        .await
    }

    /// Moves a message's status forward; a receipt that would move it back changes nothing.
    pub(crate) async fn receipt(
        &self,
        env: &Envelope,
        cmd: &RecordReceipt,
    ) -> Result<Applied, Error> {
        read_decide_write("the message", async || {
            let Some(current) = self
                .store
                .message(&cmd.conversation_id, &cmd.message_id)
                .await?
            else {
                return self.decided(env, Vec::new()).await;
            };
            let Some(next) = current.receipt(cmd.status, Utc::now()) else {
                return self.decided(env, Vec::new()).await;
            };
            let next = Versioned::Message(&next);
            self.save(env, Some(current.version), next, Vec::new())
                .await
        })
        .await
    }

    /// Closes the conversation and publishes `ConversationClosed` (once: closing twice changes
    /// nothing the second time).
    pub(crate) async fn close(
        &self,
        env: &Envelope,
        cmd: &CloseConversation,
    ) -> Result<Applied, Error> {
        self.change_conversation(env, &cmd.conversation_id, |current| {
            match current.close(Utc::now()) {
                Some((next, closed)) => {
                    let closed = Envelope::caused_by(env, Payload::ConversationClosed(closed));
                    Change::To(next, vec![closed])
                }
                None => Change::Unchanged(Vec::new()),
            }
        })
        .await
    }
}
