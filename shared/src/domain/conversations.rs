//! Conversation events other services react to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{AgentId, ConversationId};

/// Published when a conversation closes; the agents service frees the agent's slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationClosed {
    pub conversation_id: ConversationId,
    pub agent_id: Option<AgentId>,
    pub closed_at: DateTime<Utc>,
}
