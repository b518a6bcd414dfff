//! What travels on the bus: an envelope (id, correlation id, time) around a typed message.
//!
//! Commands and domain events are one tagged enum shared by producers and consumers, so a
//! renamed field or a new variant is a compile error on both sides, not a poison message. On
//! EventBridge the envelope is the event's `detail`, `type` is its `detail-type` and
//! [`Payload::source`] its `source`: rules route on those two.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::agents::{
    AgentMatched, AgentRegistered, AgentStateChanged, ChangeAgentState, RegisterAgent,
};
use crate::domain::conversations::{
    CloseConversation, ConversationClosed, ConversationStarted, MessageSent, RecordReceipt,
    SendMessage, StartConversation,
};
use crate::domain::trades::{SubmitTrade, TradeExecuted, TradeRejected};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique per command or event; consumers deduplicate on it. A republished event keeps its
    /// id, so redelivery after a failed publish is still deduplicated downstream.
    pub id: Uuid,
    /// Follows one request through every command and event it causes.
    pub correlation_id: String,
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Payload {
    // commands
    RegisterAgent(RegisterAgent),
    ChangeAgentState(ChangeAgentState),
    StartConversation(StartConversation),
    SendMessage(SendMessage),
    RecordReceipt(RecordReceipt),
    CloseConversation(CloseConversation),
    /// Sent by the trades API straight to the trades FIFO queue, never via EventBridge.
    SubmitTrade(SubmitTrade),
    // events
    AgentRegistered(AgentRegistered),
    AgentStateChanged(AgentStateChanged),
    AgentMatched(AgentMatched),
    ConversationClosed(ConversationClosed),
    ConversationStarted(ConversationStarted),
    MessageSent(MessageSent),
    TradeExecuted(TradeExecuted),
    TradeRejected(TradeRejected),
}

impl Payload {
    /// The EventBridge `source`: commands come from `<service>.command`, events from the
    /// service that owns them.
    pub fn source(&self) -> &'static str {
        match self {
            Payload::RegisterAgent(_) | Payload::ChangeAgentState(_) => "cqrs.agents.command",
            Payload::StartConversation(_)
            | Payload::SendMessage(_)
            | Payload::RecordReceipt(_)
            | Payload::CloseConversation(_) => "cqrs.conversations.command",
            Payload::SubmitTrade(_) => "cqrs.trades.command",
            Payload::TradeExecuted(_) | Payload::TradeRejected(_) => "cqrs.trades",
            Payload::AgentRegistered(_)
            | Payload::AgentStateChanged(_)
            | Payload::AgentMatched(_) => "cqrs.agents",
            Payload::ConversationClosed(_)
            | Payload::ConversationStarted(_)
            | Payload::MessageSent(_) => "cqrs.conversations",
        }
    }

    /// The aggregate the message is about, whose messages must apply in order: an agent, a
    /// conversation, or a trading account (whose book every trade of it changes). A FIFO
    /// queue's `MessageGroupId`.
    pub fn aggregate_id(&self) -> &str {
        match self {
            Payload::RegisterAgent(c) => c.agent_id.as_str(),
            Payload::ChangeAgentState(c) => c.agent_id.as_str(),
            Payload::AgentRegistered(e) => e.agent_id.as_str(),
            Payload::AgentStateChanged(e) => e.agent_id.as_str(),
            Payload::AgentMatched(e) => e.conversation_id.as_str(),
            Payload::StartConversation(c) => c.conversation_id.as_str(),
            Payload::SendMessage(c) => c.conversation_id.as_str(),
            Payload::RecordReceipt(c) => c.conversation_id.as_str(),
            Payload::CloseConversation(c) => c.conversation_id.as_str(),
            Payload::ConversationStarted(e) => e.conversation_id.as_str(),
            Payload::ConversationClosed(e) => e.conversation_id.as_str(),
            Payload::MessageSent(e) => e.conversation_id.as_str(),
            Payload::SubmitTrade(c) => c.order.account_id.as_str(),
            Payload::TradeExecuted(e) => e.order.account_id.as_str(),
            Payload::TradeRejected(e) => e.order.account_id.as_str(),
        }
    }

    /// The EventBridge `detail-type`: the variant name, the same string as the `type` tag.
    pub fn detail_type(&self) -> &'static str {
        match self {
            Payload::RegisterAgent(_) => "RegisterAgent",
            Payload::ChangeAgentState(_) => "ChangeAgentState",
            Payload::AgentRegistered(_) => "AgentRegistered",
            Payload::AgentStateChanged(_) => "AgentStateChanged",
            Payload::AgentMatched(_) => "AgentMatched",
            Payload::ConversationClosed(_) => "ConversationClosed",
            Payload::StartConversation(_) => "StartConversation",
            Payload::SendMessage(_) => "SendMessage",
            Payload::RecordReceipt(_) => "RecordReceipt",
            Payload::CloseConversation(_) => "CloseConversation",
            Payload::ConversationStarted(_) => "ConversationStarted",
            Payload::MessageSent(_) => "MessageSent",
            Payload::SubmitTrade(_) => "SubmitTrade",
            Payload::TradeExecuted(_) => "TradeExecuted",
            Payload::TradeRejected(_) => "TradeRejected",
        }
    }
}

impl Envelope {
    pub fn new(correlation_id: impl Into<String>, payload: Payload) -> Self {
        Envelope {
            id: Uuid::new_v4(),
            correlation_id: correlation_id.into(),
            occurred_at: Utc::now(),
            payload,
        }
    }

    /// An event caused by `cause`, carrying its correlation id along.
    pub fn caused_by(cause: &Envelope, payload: Payload) -> Self {
        Envelope::new(cause.correlation_id.clone(), payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::agents::AgentState;

    #[test]
    fn envelope_round_trips_with_type_tag_matching_detail_type() {
        let env = Envelope::new(
            "corr-1",
            Payload::ChangeAgentState(ChangeAgentState {
                agent_id: "a1".parse().unwrap(),
                state: AgentState::Away,
                expected_version: Some(3),
            }),
        );
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["type"], env.payload.detail_type());
        assert_eq!(json["data"]["state"], "AWAY");
        assert_eq!(json["correlationId"], "corr-1");
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn unknown_type_is_rejected() {
        let json = serde_json::json!({
            "id": Uuid::new_v4(), "correlationId": "c", "occurredAt": Utc::now(),
            "type": "DropTables", "data": {}
        });
        assert!(serde_json::from_value::<Envelope>(json).is_err());
    }
}
