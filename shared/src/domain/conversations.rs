//! The conversation aggregate and its messages: the states they move through and the rules
//! that decide whether a command or event changes anything. Pure functions, no I/O.
//!
//! Every transition is a function `current -> Option<next>` (or an enum when the caller must
//! react), so duplicates and late arrivals are decided here, once, and the store only has to
//! write `next` if nothing changed since `current` was read (the `version` condition).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::agents::{AgentMatched, Skills};
use super::ids::{AgentId, ConversationId, CustomerId, MessageId};

/// Published when a conversation closes; the agents service frees the agent's slot.
///
/// `agentId` is the agent the conversation held (`None` when it never had one). The
/// conversations service may publish it once more for a conversation that was closed before
/// its match arrived, naming the matched agent, so that the slot reserved too late is freed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationClosed {
    pub conversation_id: ConversationId,
    pub agent_id: Option<AgentId>,
    pub closed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Chat,
    Voice,
    Email,
}

/// PENDING (accepted by the API) → QUEUED (no agent yet) → ASSIGNED → CLOSED; a conversation
/// may skip QUEUED and may close from any state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ConversationStatus {
    Pending,
    Queued,
    Assigned,
    Closed,
}

/// A conversation as stored and as `GET /conversations/{id}` shows it. `version` grows by one
/// with every write: the store writes only if it is unchanged since the read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub conversation_id: ConversationId,
    pub customer_id: CustomerId,
    pub channel: Channel,
    pub skills: Skills,
    pub status: ConversationStatus,
    pub agent_id: Option<AgentId>,
    pub created_at: DateTime<Utc>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub version: u64,
}

/// What an agent match means for a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// Write this (ASSIGNED).
    Assign(Conversation),
    /// Already assigned to this agent (the sync answer and the event both arrive): nothing to do.
    Unchanged,
    /// The conversation closed before the match arrived: the agent's slot must be freed again,
    /// by publishing this event.
    Release(ConversationClosed),
}

impl Conversation {
    /// A conversation just accepted by the API.
    pub fn start(cmd: &StartConversation) -> Conversation {
        Conversation {
            conversation_id: cmd.conversation_id.clone(),
            customer_id: cmd.customer_id.clone(),
            channel: cmd.channel,
            skills: cmd.skills.clone(),
            status: ConversationStatus::Pending,
            agent_id: None,
            created_at: cmd.created_at,
            assigned_at: None,
            closed_at: None,
            version: 0,
        }
    }

    /// Whether a match may still be asked for (PENDING or QUEUED).
    pub fn is_waiting(&self) -> bool {
        matches!(
            self.status,
            ConversationStatus::Pending | ConversationStatus::Queued
        )
    }

    fn next(&self) -> Conversation {
        Conversation {
            version: self.version + 1,
            ..self.clone()
        }
    }

    /// No agent could be found now: wait in the queue. `None` unless PENDING.
    pub fn queue(&self) -> Option<Conversation> {
        (self.status == ConversationStatus::Pending).then(|| Conversation {
            status: ConversationStatus::Queued,
            ..self.next()
        })
    }

    /// Applies a match, from the agents API's answer or its `AgentMatched` event, whichever
    /// comes first: both name the same agent (the agents service reserves once per
    /// conversation), so they converge on one ASSIGNED state.
    pub fn assign(&self, m: &AgentMatched) -> Assignment {
        match self.status {
            ConversationStatus::Pending | ConversationStatus::Queued => {
                Assignment::Assign(Conversation {
                    status: ConversationStatus::Assigned,
                    agent_id: Some(m.agent_id.clone()),
                    assigned_at: Some(m.matched_at),
                    ..self.next()
                })
            }
            ConversationStatus::Assigned => Assignment::Unchanged,
            ConversationStatus::Closed if self.agent_id.as_ref() == Some(&m.agent_id) => {
                Assignment::Unchanged
            }
            ConversationStatus::Closed => Assignment::Release(ConversationClosed {
                conversation_id: self.conversation_id.clone(),
                agent_id: Some(m.agent_id.clone()),
                closed_at: self.closed_at.unwrap_or(m.matched_at),
            }),
        }
    }

    /// Closes the conversation; `None` when it is closed already (closing twice is harmless).
    pub fn close(&self, now: DateTime<Utc>) -> Option<(Conversation, ConversationClosed)> {
        if self.status == ConversationStatus::Closed {
            return None;
        }
        let event = ConversationClosed {
            conversation_id: self.conversation_id.clone(),
            agent_id: self.agent_id.clone(),
            closed_at: now,
        };
        let next = Conversation {
            status: ConversationStatus::Closed,
            closed_at: Some(now),
            ..self.next()
        };
        Some((next, event))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    Customer,
    Agent,
}

/// ACCEPTED → SENT → DELIVERED → READ, never backwards. REJECTED is the end of a message sent
/// to a conversation that turned out to be closed or unknown when the worker applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MessageStatus {
    Accepted,
    Sent,
    Delivered,
    Read,
    Rejected,
}

/// What a receipt reports (`POST .../receipts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Receipt {
    Delivered,
    Read,
}

impl From<Receipt> for MessageStatus {
    fn from(r: Receipt) -> MessageStatus {
        match r {
            Receipt::Delivered => MessageStatus::Delivered,
            Receipt::Read => MessageStatus::Read,
        }
    }
}

/// A message's text: 1–4000 characters, not only whitespace, no control characters other than
/// newlines and tabs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageText(String);

impl MessageText {
    pub const MAX_CHARS: usize = 4000;
}

impl TryFrom<String> for MessageText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad_char = s
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r');
        if super::is_blank(&s) || s.chars().count() > Self::MAX_CHARS || bad_char {
            Err(format!(
                "text must be 1 to {} characters, not only spaces, without control characters",
                Self::MAX_CHARS
            ))
        } else {
            Ok(MessageText(s))
        }
    }
}

impl From<MessageText> for String {
    fn from(t: MessageText) -> String {
        t.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub sender: Sender,
    pub text: MessageText,
    pub status: MessageStatus,
    /// Why the message was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub accepted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

impl ChatMessage {
    /// A message just accepted by the API.
    pub fn accept(cmd: &SendMessage) -> ChatMessage {
        ChatMessage {
            message_id: cmd.message_id.clone(),
            conversation_id: cmd.conversation_id.clone(),
            sender: cmd.sender,
            text: cmd.text.clone(),
            status: MessageStatus::Accepted,
            reason: None,
            accepted_at: cmd.accepted_at,
            updated_at: cmd.accepted_at,
            version: 0,
        }
    }

    fn advance(&self, status: MessageStatus, now: DateTime<Utc>) -> ChatMessage {
        ChatMessage {
            status,
            updated_at: now,
            version: self.version + 1,
            ..self.clone()
        }
    }

    /// The worker delivered the message to the conversation. `None` when it is past ACCEPTED
    /// already (a receipt overtook it) or was rejected.
    pub fn sent(&self, now: DateTime<Utc>) -> Option<ChatMessage> {
        (self.status == MessageStatus::Accepted).then(|| self.advance(MessageStatus::Sent, now))
    }

    /// The conversation is closed or unknown: the message ends REJECTED. `None` when it got
    /// further than ACCEPTED (then it was applied before the conversation closed).
    pub fn reject(&self, reason: &str, now: DateTime<Utc>) -> Option<ChatMessage> {
        (self.status == MessageStatus::Accepted).then(|| ChatMessage {
            reason: Some(reason.to_owned()),
            ..self.advance(MessageStatus::Rejected, now)
        })
    }

    /// Applies a receipt only if it moves the status forward: a late DELIVERED after READ, or
    /// a duplicate, changes nothing. A rejected message takes no receipts.
    pub fn receipt(&self, receipt: Receipt, now: DateTime<Utc>) -> Option<ChatMessage> {
        let status = MessageStatus::from(receipt);
        (self.status != MessageStatus::Rejected && status > self.status)
            .then(|| self.advance(status, now))
    }
}

/// `POST /conversations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartConversation {
    pub conversation_id: ConversationId,
    pub customer_id: CustomerId,
    pub channel: Channel,
    pub skills: Skills,
    pub created_at: DateTime<Utc>,
}

/// `POST /conversations/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub sender: Sender,
    pub text: MessageText,
    pub accepted_at: DateTime<Utc>,
}

/// `POST /conversations/{id}/messages/{messageId}/receipts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordReceipt {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub status: Receipt,
}

/// `POST /conversations/{id}/close`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseConversation {
    pub conversation_id: ConversationId,
}

/// Published once per conversation when the worker has applied its start (ASSIGNED, QUEUED, or
/// closed meanwhile): the conversation exists from then on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationStarted {
    pub conversation_id: ConversationId,
    pub customer_id: CustomerId,
    pub channel: Channel,
    pub skills: Skills,
    pub created_at: DateTime<Utc>,
}

/// Published once per message the worker delivered to its conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSent {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub sender: Sender,
    pub agent_id: Option<AgentId>,
    pub sent_at: DateTime<Utc>,
}

impl From<&StartConversation> for ConversationStarted {
    fn from(c: &StartConversation) -> Self {
        ConversationStarted {
            conversation_id: c.conversation_id.clone(),
            customer_id: c.customer_id.clone(),
            channel: c.channel,
            skills: c.skills.clone(),
            created_at: c.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> StartConversation {
        StartConversation {
            conversation_id: "c1".parse().unwrap(),
            customer_id: "cust-1".parse().unwrap(),
            channel: Channel::Chat,
            skills: Skills::default(),
            created_at: Utc::now(),
        }
    }

    fn matched(agent: &str) -> AgentMatched {
        AgentMatched {
            agent_id: agent.parse().unwrap(),
            conversation_id: "c1".parse().unwrap(),
            matched_at: Utc::now(),
        }
    }

    fn message() -> ChatMessage {
        ChatMessage::accept(&SendMessage {
            conversation_id: "c1".parse().unwrap(),
            message_id: "m1".parse().unwrap(),
            sender: Sender::Customer,
            text: MessageText::try_from("hi".to_owned()).unwrap(),
            accepted_at: Utc::now(),
        })
    }

    #[test]
    fn sync_answer_and_event_converge_on_one_assignment() {
        let c = Conversation::start(&start());
        let queued = c.queue().unwrap();
        assert_eq!(queued.status, ConversationStatus::Queued);
        assert!(queued.queue().is_none());
        let Assignment::Assign(a) = queued.assign(&matched("a1")) else {
            panic!("queued conversations take a match")
        };
        assert_eq!(a.status, ConversationStatus::Assigned);
        assert_eq!(a.agent_id.as_ref().unwrap().as_str(), "a1");
        assert_eq!(a.version, 2);
        assert_eq!(a.assign(&matched("a1")), Assignment::Unchanged);
    }

    #[test]
    fn a_match_for_a_closed_conversation_frees_the_slot_again() {
        let (closed, ev) = Conversation::start(&start()).close(Utc::now()).unwrap();
        assert!(ev.agent_id.is_none());
        assert!(
            closed.close(Utc::now()).is_none(),
            "closing twice is harmless"
        );
        let Assignment::Release(again) = closed.assign(&matched("a1")) else {
            panic!("a late match must be released")
        };
        assert_eq!(again.agent_id.unwrap().as_str(), "a1");

        let Assignment::Assign(assigned) = Conversation::start(&start()).assign(&matched("a2"))
        else {
            panic!()
        };
        let (closed, ev) = assigned.close(Utc::now()).unwrap();
        assert_eq!(ev.agent_id.unwrap().as_str(), "a2");
        assert_eq!(closed.assign(&matched("a2")), Assignment::Unchanged);
    }

    #[test]
    fn message_status_never_goes_backwards() {
        let m = message();
        let read = m.receipt(Receipt::Read, Utc::now()).unwrap();
        assert_eq!(read.status, MessageStatus::Read);
        assert!(read.receipt(Receipt::Delivered, Utc::now()).is_none());
        assert!(read.receipt(Receipt::Read, Utc::now()).is_none());
        assert!(
            read.sent(Utc::now()).is_none(),
            "SENT after READ changes nothing"
        );
        let sent = m.sent(Utc::now()).unwrap();
        let delivered = sent.receipt(Receipt::Delivered, Utc::now()).unwrap();
        assert_eq!(delivered.status, MessageStatus::Delivered);
        assert_eq!(delivered.version, 2);
    }

    #[test]
    fn only_accepted_messages_can_be_rejected_and_rejected_ones_take_no_receipts() {
        let m = message();
        let rejected = m.reject("conversation closed", Utc::now()).unwrap();
        assert_eq!(rejected.status, MessageStatus::Rejected);
        assert!(rejected.receipt(Receipt::Read, Utc::now()).is_none());
        assert!(rejected.sent(Utc::now()).is_none());
        assert!(
            m.sent(Utc::now())
                .unwrap()
                .reject("x", Utc::now())
                .is_none()
        );
    }

    #[test]
    fn text_and_enums_are_validated() {
        assert!(MessageText::try_from("   ".to_owned()).is_err());
        assert!(MessageText::try_from("a\u{0}b".to_owned()).is_err());
        assert!(MessageText::try_from("line\nline".to_owned()).is_ok());
        assert!(MessageText::try_from("x".repeat(4001)).is_err());
        assert!(serde_json::from_str::<Channel>("\"fax\"").is_err());
        assert!(serde_json::from_str::<Receipt>("\"SENT\"").is_err());
        assert_eq!(serde_json::to_string(&Sender::Agent).unwrap(), "\"agent\"");
    }
}
