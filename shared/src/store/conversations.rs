//! The conversations table: conversations (`CONV#<id>` / `CONVERSATION`), their messages
//! (`CONV#<id>` / `MSG#<messageId>`, so one query lists them in id order, which is acceptance
//! order), the service's projection of agents (`AGENT#<id>` / `AGENT`), the inbox and
//! idempotency keys.
//!
//! Writes are optimistic: every item carries a `version` and is replaced only if the stored
//! version is still the one read, together with the inbox entry of the message that caused it.
//! QUEUED conversations also carry `queue` and `queuedAt`, the keys of the sparse `byQueue`
//! index (oldest first). Records the API writes before publishing (PENDING conversations,
//! ACCEPTED messages) carry `expiresAt`, so one whose command never got published expires;
//! the worker's first write drops it.

use std::{future::Future, ops::ControlFlow};

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use serde::{Deserialize, Serialize};

use super::inbox::{DynamoInbox, Inbox, InboxEntry, InboxTable};
use super::items::{
    Item, failed, from_item, prefix_query, query_each, query_page, start_key, transact, write_if,
};
use super::{Page, PageRequest, Write, n, s};
use crate::domain::agents::{AgentState, Skills};
use crate::domain::conversations::{ChatMessage, Conversation, ConversationStatus, MessageStatus};
use crate::domain::ids::{AgentId, ConversationId, MessageId};
use crate::{Error, aws::classify};

/// What the conversations service knows of an agent, from `AgentStateChanged` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub agent_id: AgentId,
    pub state: AgentState,
    pub skills: Skills,
    /// The agents service's state version: events apply only in increasing order.
    pub version: u64,
}

/// How long a provisional record lives if its command was never published.
const PROVISIONAL_SECS: i64 = 24 * 3600;
/// Upper bound on queued conversations examined to find those an agent can take.
const MAX_QUEUED_SCAN: usize = 500;

/// A versioned item of the conversations table that [`ConversationStore::save`] writes.
#[derive(Debug, Clone, Copy)]
pub enum Versioned<'a> {
    /// A conversation (`pk` `CONV#{id}`, `sk` `CONVERSATION`), written at its `version`.
    Conversation(&'a Conversation),
    /// A chat message of a conversation (same `pk`, `sk` `MSG#{id}`), written at its `version`.
    Message(&'a ChatMessage),
}

pub trait ConversationStore: Inbox {
    fn get(
        &self,
        id: &ConversationId,
    ) -> impl Future<Output = Result<Option<Conversation>, Error>> + Send;

    fn message(
        &self,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> impl Future<Output = Result<Option<ChatMessage>, Error>> + Send;

    /// A conversation's messages in acceptance order.
    fn messages(
        &self,
        conversation: &ConversationId,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<ChatMessage>, Error>> + Send;

    /// Writes `next` if its stored version is still `expected` (absent when `None`), with the
    /// inbox entry when given (without one, the write is a step a redelivery may repeat).
    fn save(
        &self,
        expected: Option<u64>,
        next: Versioned<'_>,
        record: Option<&InboxEntry>,
    ) -> impl Future<Output = Result<Write, Error>> + Send;

    /// Deletes a provisional record (compensation when its command could not be published):
    /// `true` when deleted, `false` when the worker had taken it over (its command was
    /// applied after all) or it was not there.
    fn discard(
        &self,
        conversation: &ConversationId,
        message: Option<&MessageId>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Marks a message processed that changed nothing: writes only its inbox entry.
    fn mark_processed(
        &self,
        entry: &InboxEntry,
    ) -> impl Future<Output = Result<Write, Error>> + Send;

    fn agent(&self, id: &AgentId) -> impl Future<Output = Result<Option<AgentView>, Error>> + Send;

    fn save_agent(
        &self,
        expected: Option<u64>,
        next: &AgentView,
        record: &InboxEntry,
    ) -> impl Future<Output = Result<Write, Error>> + Send;

    /// Up to `max` QUEUED conversations, oldest first, that an agent with `skills` can take
    /// (any, when `None`). Read from an index, so possibly stale: re-read before acting.
    fn queued(
        &self,
        skills: Option<&Skills>,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Conversation>, Error>> + Send;
}

#[derive(Clone)]
pub struct DynamoConversationStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    inbox: DynamoInbox,
}

fn conversation_key(id: &ConversationId) -> AttributeValue {
    s(format!("CONV#{id}"))
}

const CONVERSATION_SK: &str = "CONVERSATION";

/// The sort-key prefix of a conversation's messages (`MSG#<message id>`).
const MESSAGE_PREFIX: &str = "MSG#";

fn message_sk(id: &MessageId) -> AttributeValue {
    s(format!("{MESSAGE_PREFIX}{id}"))
}

fn agent_key(id: &AgentId) -> AttributeValue {
    s(format!("AGENT#{id}"))
}

fn to_item<T: Serialize>(v: &T) -> Result<Item, Error> {
    serde_dynamo::to_item(v).map_err(|e| Error::Internal(format!("encoding item: {e}")))
}

fn expires() -> AttributeValue {
    n(chrono::Utc::now().timestamp() + PROVISIONAL_SECS)
}

/// The item of a conversation, with its index keys while QUEUED and its expiry while PENDING.
fn conversation_item(c: &Conversation) -> Result<Item, Error> {
    let mut item = to_item(c)?;
    item.insert("pk".into(), conversation_key(&c.conversation_id));
    item.insert("sk".into(), s(CONVERSATION_SK));
    match c.status {
        ConversationStatus::Queued => {
            item.insert("queue".into(), s("QUEUED"));
            // Zero-padded so that the string order is the time order.
            let at = c.created_at.timestamp_micros();
            item.insert(
                "queuedAt".into(),
                s(format!("{at:020}#{}", c.conversation_id)),
            );
        }
        ConversationStatus::Pending => {
            item.insert("expiresAt".into(), expires());
        }
        _ => {}
    }
    Ok(item)
}

fn message_item(m: &ChatMessage) -> Result<Item, Error> {
    let mut item = to_item(m)?;
    item.insert("pk".into(), conversation_key(&m.conversation_id));
    item.insert("sk".into(), message_sk(&m.message_id));
    if m.status == MessageStatus::Accepted {
        item.insert("expiresAt".into(), expires());
    }
    Ok(item)
}

impl super::Table for DynamoConversationStore {
    fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        let inbox = DynamoInbox::new(client.clone(), table.clone());
        DynamoConversationStore {
            client,
            table,
            inbox,
        }
    }
}

impl DynamoConversationStore {
    async fn get_item(
        &self,
        pk: AttributeValue,
        sk: AttributeValue,
    ) -> Result<Option<Item>, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem", e))?;
        Ok(out.item)
    }

    /// A conditional put of `item`: absent when `expected` is `None`, else at that version.
    fn put(&self, item: Item, expected: Option<u64>) -> Result<TransactWriteItem, Error> {
        let put = Put::builder().table_name(&self.table).set_item(Some(item));
        let put = match expected {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":expected", n(v)),
        };
        let put = put
            .build()
            .map_err(|e| Error::Internal(format!("building request: {e}")))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes `item` and the record in one transaction.
    async fn write(
        &self,
        item: TransactWriteItem,
        record: Option<&InboxEntry>,
    ) -> Result<Write, Error> {
        let mut items = vec![item];
        if let Some(r) = record {
            items.push(self.inbox.put(r)?);
        }
        Ok(match transact(&self.client, items).await? {
            None => Write::Done,
            Some(codes) if failed(&codes, 1) => Write::Duplicate,
            Some(_) => Write::Conflict,
        })
    }
}

impl InboxTable for DynamoConversationStore {
    fn inbox(&self) -> &DynamoInbox {
        &self.inbox
    }
}

impl ConversationStore for DynamoConversationStore {
    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, Error> {
        self.get_item(conversation_key(id), s(CONVERSATION_SK))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn message(
        &self,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Result<Option<ChatMessage>, Error> {
        self.get_item(conversation_key(conversation), message_sk(id))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn messages(
        &self,
        conversation: &ConversationId,
        page: &PageRequest,
    ) -> Result<Page<ChatMessage>, Error> {
        let pk = format!("CONV#{conversation}");
        let start = start_key(page.cursor.as_deref(), &pk, MESSAGE_PREFIX)?;
        let query = prefix_query(&self.client, &self.table, pk, MESSAGE_PREFIX)
            .consistent_read(true)
            .limit(page.limit);
        query_page(query, "Query messages", start).await
    }

    async fn save(
        &self,
        expected: Option<u64>,
        next: Versioned<'_>,
        record: Option<&InboxEntry>,
    ) -> Result<Write, Error> {
        let item = match next {
            Versioned::Conversation(c) => conversation_item(c)?,
            Versioned::Message(m) => message_item(m)?,
        };
        let put = self.put(item, expected)?;
        self.write(put, record).await
    }

    async fn discard(
        &self,
        conversation: &ConversationId,
        message: Option<&MessageId>,
    ) -> Result<bool, Error> {
        let (sk, provisional) = match message {
            Some(m) => (message_sk(m), "ACCEPTED"),
            None => (s(CONVERSATION_SK), "PENDING"),
        };
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", conversation_key(conversation))
            .key("sk", sk)
            .condition_expression("#status = :provisional AND #version = :zero")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":provisional", s(provisional))
            .expression_attribute_values(":zero", n(0));
        // `false`: the worker applied the command after all; its result stays.
        write_if("DeleteItem provisional", || delete.clone().send()).await
    }

    async fn mark_processed(&self, entry: &InboxEntry) -> Result<Write, Error> {
        self.inbox.write_alone(entry).await
    }

    async fn agent(&self, id: &AgentId) -> Result<Option<AgentView>, Error> {
        self.get_item(agent_key(id), s("AGENT"))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn save_agent(
        &self,
        expected: Option<u64>,
        next: &AgentView,
        record: &InboxEntry,
    ) -> Result<Write, Error> {
        let mut item = to_item(next)?;
        item.insert("pk".into(), agent_key(&next.agent_id));
        item.insert("sk".into(), s("AGENT"));
        let put = self.put(item, expected)?;
        self.write(put, Some(record)).await
    }

    async fn queued(
        &self,
        skills: Option<&Skills>,
        max: usize,
    ) -> Result<Vec<Conversation>, Error> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("byQueue")
            .key_condition_expression("#queue = :queued")
            .expression_attribute_names("#queue", "queue")
            .expression_attribute_values(":queued", s("QUEUED"))
            .scan_index_forward(true)
            .limit(50);
        let mut found = Vec::new();
        let mut examined = 0;
        query_each(query, "Query queued conversations", |item| {
            examined += 1;
            let c: Conversation = from_item(item)?;
            if skills.is_none_or(|have| have.contains_all(&c.skills)) {
                found.push(c);
            }
            Ok(if found.len() < max && examined < MAX_QUEUED_SCAN {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            })
        })
        .await?;
        Ok(found)
    }
}
