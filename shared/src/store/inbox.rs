//! The inbox: one record per processed command or event, written **in the same transaction as
//! the effect**. It makes redelivery harmless (a message with a record is not applied again) and
//! closes the dual-write gap: the record holds the events the effect must publish and whether
//! they were published; a redelivered message whose events are unpublished publishes them.

use std::future::Future;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::items::write_item;
use super::{n, s};
use crate::{Error, aws::classify, events::Envelope};

/// How long records are kept: far longer than SQS retention (14 days) plus redrive time, so a
/// message can never outlive the record that deduplicates it.
const RETENTION_SECS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, PartialEq)]
pub struct InboxRecord {
    pub message_id: Uuid,
    /// The events the message's effect publishes (the outbox of that effect).
    pub events: Vec<Envelope>,
    pub published: bool,
    /// What the command did, for commands whose outcome clients can read.
    pub outcome: Option<Outcome>,
}

impl InboxRecord {
    /// The record for a message whose effect publishes `events` (none: nothing to publish).
    pub fn new(message_id: Uuid, events: Vec<Envelope>) -> Self {
        let published = events.is_empty();
        InboxRecord {
            message_id,
            events,
            published,
            outcome: None,
        }
    }

    /// The record, saying what the command did.
    pub fn with_outcome(self, outcome: Outcome) -> Self {
        InboxRecord {
            outcome: Some(outcome),
            ..self
        }
    }
}

/// What applying a command did: applied (leaving its aggregate at `version`) or rejected (with
/// the `reason`). Kept in the command's inbox record, written in the same transaction as the
/// effect, so it is there exactly when the command was processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The aggregate the command was for (e.g. the agent id).
    pub aggregate_id: String,
    pub status: OutcomeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OutcomeStatus {
    Applied,
    Rejected,
}

impl Outcome {
    pub fn applied(aggregate_id: impl Into<String>, version: u64) -> Outcome {
        Outcome {
            aggregate_id: aggregate_id.into(),
            status: OutcomeStatus::Applied,
            version: Some(version),
            reason: None,
        }
    }

    pub fn rejected(aggregate_id: impl Into<String>, reason: impl ToString) -> Outcome {
        Outcome {
            aggregate_id: aggregate_id.into(),
            status: OutcomeStatus::Rejected,
            version: None,
            reason: Some(reason.to_string()),
        }
    }
}

pub trait Inbox: Send + Sync {
    fn processed(
        &self,
        message_id: Uuid,
    ) -> impl Future<Output = Result<Option<InboxRecord>, Error>> + Send;
    fn mark_published(&self, message_id: Uuid) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The inbox kept in a service's own table (`pk = INBOX#<id>`).
#[derive(Clone)]
pub struct DynamoInbox {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn key(id: Uuid) -> AttributeValue {
    s(format!("INBOX#{id}"))
}

impl DynamoInbox {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        DynamoInbox { client, table }
    }

    /// The transaction item that records `record`; it fails its condition when the message was
    /// already processed, which makes the whole transaction (the effect) fail with it.
    pub fn put(&self, record: &InboxRecord) -> Result<TransactWriteItem, Error> {
        let expires = chrono::Utc::now().timestamp() + RETENTION_SECS;
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", key(record.message_id))
            .item("sk", s("INBOX"))
            .item("events", s(serde_json::to_string(&record.events)?))
            .item("published", AttributeValue::Bool(record.published))
            .item("expiresAt", n(expires))
            .condition_expression("attribute_not_exists(pk)");
        if let Some(outcome) = &record.outcome {
            put = put.item("outcome", s(serde_json::to_string(outcome)?));
        }
        let put = put.build().map_err(|e| Error::Internal(e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}

impl Inbox for DynamoInbox {
    async fn processed(&self, message_id: Uuid) -> Result<Option<InboxRecord>, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", key(message_id))
            .key("sk", s("INBOX"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem inbox", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let events = match item.get("events").and_then(|v| v.as_s().ok()) {
            Some(json) => serde_json::from_str(json)?,
            None => Vec::new(),
        };
        let published = matches!(item.get("published"), Some(AttributeValue::Bool(true)));
        let outcome = match item.get("outcome").and_then(|v| v.as_s().ok()) {
            Some(json) => Some(serde_json::from_str(json)?),
            None => None,
        };
        Ok(Some(InboxRecord {
            message_id,
            events,
            published,
            outcome,
        }))
    }

    async fn mark_published(&self, message_id: Uuid) -> Result<(), Error> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", key(message_id))
            .key("sk", s("INBOX"))
            .update_expression("SET published = :t")
            .expression_attribute_values(":t", AttributeValue::Bool(true));
        write_item(|| update.clone().send())
            .await
            .map_err(|e| classify("UpdateItem inbox", e))?;
        Ok(())
    }
}
