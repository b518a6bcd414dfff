//! The inbox, with each entry's outbox: one [`InboxEntry`] per processed command or event,
//! written **in the same transaction as the effect**. As an inbox it makes redelivery harmless
//! (a message with an entry is not applied again); as a transactional outbox it closes the
//! dual-write gap: the entry holds the events the effect must publish (`outbox`) and whether
//! they were published, and a redelivered message whose outbox is unpublished publishes it.
//! One item does both jobs because both are keyed by the message id and written by the same
//! transaction (docs/ARCHITECTURE.md, guarantees 2 and 6).

use std::future::Future;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Write;
use super::items::{transact, write_item};
use super::{n, s};
use crate::{Error, aws::classify, envelope::Envelope};

/// How long entries are kept: far longer than SQS retention (14 days) plus redrive time, so a
/// message can never outlive the entry that deduplicates it.
const RETENTION_SECS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    pub message_id: Uuid,
    /// The events the message's effect publishes (the outbox of that effect).
    pub outbox: Vec<Envelope>,
    pub published: bool,
    /// What the command did, for commands whose outcome clients can read.
    pub outcome: Option<Outcome>,
}

impl InboxEntry {
    /// The entry for a message whose effect publishes `events` (none: nothing to publish).
    pub fn new(message_id: Uuid, events: Vec<Envelope>) -> Self {
        let published = events.is_empty();
        InboxEntry {
            message_id,
            outbox: events,
            published,
            outcome: None,
        }
    }

    /// The entry, saying what the command did.
    pub fn with_outcome(self, outcome: Outcome) -> Self {
        InboxEntry {
            outcome: Some(outcome),
            ..self
        }
    }
}

/// What applying a command did: applied (leaving its aggregate at `version`) or rejected (with
/// the `reason`). Kept in the command's inbox entry, written in the same transaction as the
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
    ) -> impl Future<Output = Result<Option<InboxEntry>, Error>> + Send;
    fn mark_published(&self, message_id: Uuid) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A store whose table also holds its service's inbox: it is an [`Inbox`] through it.
pub trait InboxTable: Send + Sync {
    fn inbox(&self) -> &DynamoInbox;
}

impl<T: InboxTable> Inbox for T {
    fn processed(
        &self,
        message_id: Uuid,
    ) -> impl Future<Output = Result<Option<InboxEntry>, Error>> + Send {
        self.inbox().processed(message_id)
    }

    fn mark_published(&self, message_id: Uuid) -> impl Future<Output = Result<(), Error>> + Send {
        self.inbox().mark_published(message_id)
    }
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

    /// The transaction item that writes `record`; it fails its condition when the message was
    /// already processed, which makes the whole transaction (the effect) fail with it.
    pub fn put(&self, record: &InboxEntry) -> Result<TransactWriteItem, Error> {
        let expires = chrono::Utc::now().timestamp() + RETENTION_SECS;
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", key(record.message_id))
            .item("sk", s("INBOX"))
            .item("events", s(serde_json::to_string(&record.outbox)?))
            .item("published", AttributeValue::Bool(record.published))
            .item("expiresAt", n(expires))
            .condition_expression("attribute_not_exists(pk)");
        if let Some(outcome) = &record.outcome {
            put = put.item("outcome", s(serde_json::to_string(outcome)?));
        }
        let put = put.build().map_err(|e| Error::Internal(e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes `entry` alone, for a message processed with no effect: [`Write::Done`], or
    /// [`Write::Duplicate`] when the message was already processed.
    pub async fn write_alone(&self, entry: &InboxEntry) -> Result<Write, Error> {
        Ok(
            match transact(&self.client, vec![self.put(entry)?]).await? {
                None => Write::Done,
                Some(_) => Write::Duplicate,
            },
        )
    }
}

impl Inbox for DynamoInbox {
    async fn processed(&self, message_id: Uuid) -> Result<Option<InboxEntry>, Error> {
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
        Ok(Some(InboxEntry {
            message_id,
            outbox: events,
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
