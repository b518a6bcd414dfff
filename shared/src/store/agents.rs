//! The agents table: agent profiles (`AGENT#<id>`), reservations (`RESERVATION#<conversation>`),
//! the inbox and idempotency keys. Agents are also in the sparse `byState` index.

use std::future::Future;
use std::ops::ControlFlow;

use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::inbox::{DynamoInbox, Inbox, InboxEntry, InboxTable};
use super::items::{
    build_err, failed, from_item, get_as, query_each, query_page, transact, write_if,
};
use super::{Page, PageRequest, Write, decode_cursor, encode_cursor, n, s};
use crate::domain::agents::{Agent, AgentState, Skill};
use crate::domain::ids::{AgentId, ConversationId};
use crate::{Error, aws::classify};

/// A conversation's claim on one of an agent's slots. Its `eventId` is fixed when the
/// reservation is made, so every (re)publication of its `AgentMatched` carries the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub conversation_id: ConversationId,
    pub agent_id: AgentId,
    pub matched_at: DateTime<Utc>,
    pub event_id: Uuid,
    pub correlation_id: String,
    /// Absent (not NULL) until released: the release condition is `attribute_not_exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Reserved,
    /// The agent is no longer AVAILABLE or has no free slot.
    AgentUnavailable,
    /// Another request reserved an agent for this conversation first.
    AlreadyReserved,
}

#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    pub state: Option<AgentState>,
    pub skill: Option<Skill>,
}

pub trait AgentStore: Inbox {
    fn get(&self, id: &AgentId) -> impl Future<Output = Result<Option<Agent>, Error>> + Send;

    fn list(
        &self,
        filter: &AgentFilter,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<Agent>, Error>> + Send;

    /// Writes the provisional agent of a registration whose command `command` is being handed
    /// off, unless the agent exists: `true` when written.
    fn create_provisional(
        &self,
        agent: &Agent,
        command: Uuid,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Deletes the provisional agent written for `command` if it is still that (its command
    /// could not be handed off): `true` when deleted.
    fn withdraw_provisional(
        &self,
        id: &AgentId,
        command: Uuid,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Writes `next`'s profile and state if the stored agent is still at `expected`'s version
    /// (absent when `None`), together with the inbox entry. Never touches
    /// `activeConversations`.
    fn save(
        &self,
        expected: Option<&Agent>,
        next: &Agent,
        record: &InboxEntry,
    ) -> impl Future<Output = Result<Write, Error>> + Send;

    /// Marks a message processed that changed nothing: writes only its inbox entry (stale, duplicate by version, nothing to free).
    fn mark_processed(
        &self,
        entry: &InboxEntry,
    ) -> impl Future<Output = Result<Write, Error>> + Send;

    /// Every AVAILABLE agent (the match ranks and filters them).
    fn available(&self) -> impl Future<Output = Result<Vec<Agent>, Error>> + Send;

    fn reservation(
        &self,
        conversation: &ConversationId,
    ) -> impl Future<Output = Result<Option<Reservation>, Error>> + Send;

    /// Atomically creates the reservation and takes one of the agent's slots, only if the agent
    /// is AVAILABLE with a free slot and the conversation has no reservation yet.
    fn reserve(&self, r: &Reservation) -> impl Future<Output = Result<Reserve, Error>> + Send;

    /// Atomically marks the reservation released, frees the slot and records the message.
    /// `Write::Conflict` means it was already released.
    fn release(
        &self,
        r: &Reservation,
        record: &InboxEntry,
    ) -> impl Future<Output = Result<Write, Error>> + Send;
}

#[derive(Clone)]
pub struct DynamoAgentStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    inbox: DynamoInbox,
}

/// Upper bound on agents considered by one match; a bigger fleet would shard the index by skill.
const MAX_CANDIDATES: usize = 1_000;

fn agent_key(id: &AgentId) -> AttributeValue {
    s(format!("AGENT#{id}"))
}

/// A list cursor is a `byState` position: the index key (`state`, `agentId`) of an agent
/// profile and its table key, in the state the list is filtered by. Anything else would make
/// DynamoDB fail the request, so it names no page of this list (`decode_cursor`).
fn is_list_cursor(
    key: &std::collections::HashMap<String, AttributeValue>,
    filter: &AgentFilter,
) -> bool {
    let text = |k: &str| key.get(k).and_then(|v| v.as_s().ok());
    let state = text("state").and_then(|v| v.parse::<AgentState>().ok());
    let agent = text("agentId").and_then(|v| v.parse::<AgentId>().ok());
    key.len() == 4
        && state.is_some_and(|st| filter.state.is_none_or(|f| f == st))
        && agent.is_some_and(|a| key.get("pk") == Some(&agent_key(&a)))
        && text("sk").is_some_and(|v| v == "PROFILE")
}

fn reservation_key(id: &ConversationId) -> AttributeValue {
    s(format!("RESERVATION#{id}"))
}

fn to_av<T: Serialize>(v: &T) -> Result<AttributeValue, Error> {
    serde_dynamo::to_attribute_value(v).map_err(|e| Error::Internal(format!("encoding: {e}")))
}

impl super::Table for DynamoAgentStore {
    fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        let inbox = DynamoInbox::new(client.clone(), table.clone());
        DynamoAgentStore {
            client,
            table,
            inbox,
        }
    }
}

impl DynamoAgentStore {
    /// The query of the `byState` index for the agents in `state`, in agent id order.
    fn by_state(&self, state: AgentState) -> QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .index_name("byState")
            .key_condition_expression("#s = :s")
            .expression_attribute_names("#s", "state")
            .expression_attribute_values(":s", s(state.as_str()))
    }

    /// An update of agent `id`'s profile moving `activeConversations` by one (`sign`: `+` takes
    /// a slot, `-` frees one); the caller adds the condition that keeps it within
    /// `0..=capacity`.
    fn move_slot(&self, id: &AgentId, sign: char) -> UpdateBuilder {
        Update::builder()
            .table_name(&self.table)
            .key("pk", agent_key(id))
            .key("sk", s("PROFILE"))
            .update_expression(format!(
                "SET activeConversations = activeConversations {sign} :one"
            ))
            .expression_attribute_values(":one", n(1))
    }
}

impl InboxTable for DynamoAgentStore {
    fn inbox(&self) -> &DynamoInbox {
        &self.inbox
    }
}

impl AgentStore for DynamoAgentStore {
    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, Error> {
        let key = (format!("AGENT#{id}"), "PROFILE".to_owned());
        get_as(&self.client, &self.table, key, "GetItem agent").await
    }

    async fn list(&self, filter: &AgentFilter, page: &PageRequest) -> Result<Page<Agent>, Error> {
        let start = (page.cursor.as_deref())
            .map(|c| decode_cursor(c, |key| is_list_cursor(key, filter)))
            .transpose()?;
        let mut found: Page<Agent> = match filter.state {
            Some(state) => {
                query_page(
                    self.by_state(state).limit(page.limit),
                    "Query agents",
                    start,
                )
                .await?
            }
            None => {
                let out = self
                    .client
                    .scan()
                    .table_name(&self.table)
                    .index_name("byState")
                    .limit(page.limit)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| classify("Scan agents", e))?;
                let items = out.items.unwrap_or_default().into_iter().map(from_item);
                Page {
                    items: items.collect::<Result<_, _>>()?,
                    next_cursor: encode_cursor(out.last_evaluated_key.as_ref()),
                }
            }
        };
        // Filtering after the page is read, as a FilterExpression would: a page may hold fewer
        // than `limit` items while `nextCursor` is still set.
        if let Some(skill) = &filter.skill {
            found.items.retain(|a| a.skills.iter().any(|s| s == skill));
        }
        Ok(found)
    }

    async fn save(
        &self,
        expected: Option<&Agent>,
        next: &Agent,
        record: &InboxEntry,
    ) -> Result<Write, Error> {
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", agent_key(&next.agent_id))
            .key("sk", s("PROFILE"))
            .update_expression(
                "SET agentId = :id, #name = :name, #skills = :skills, #capacity = :cap, \
                 #state = :state, #version = :v, updatedAt = :at, \
                 activeConversations = if_not_exists(activeConversations, :zero) \
                 REMOVE pendingCommand",
            )
            .expression_attribute_names("#name", "name")
            .expression_attribute_names("#skills", "skills")
            .expression_attribute_names("#capacity", "capacity")
            .expression_attribute_names("#version", "version")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":id", s(next.agent_id.as_str()))
            .expression_attribute_values(":name", to_av(&next.name)?)
            .expression_attribute_values(":skills", to_av(&next.skills)?)
            .expression_attribute_values(":cap", n(next.capacity.get()))
            .expression_attribute_values(":state", s(next.state.as_str()))
            .expression_attribute_values(":v", n(next.version))
            .expression_attribute_values(":at", to_av(&next.updated_at)?)
            .expression_attribute_values(":zero", n(0));
        update = match expected {
            None => update.condition_expression("attribute_not_exists(pk)"),
            Some(old) => update
                .condition_expression("#version = :oldv")
                .expression_attribute_values(":oldv", n(old.version)),
        };
        let items = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_err)?)
                .build(),
            self.inbox.put(record)?,
        ];
        Ok(match transact(&self.client, items).await? {
            None => Write::Done,
            Some(codes) if failed(&codes, 1) => Write::Duplicate,
            Some(_) => Write::Conflict,
        })
    }

    async fn create_provisional(&self, agent: &Agent, command: Uuid) -> Result<bool, Error> {
        let mut item =
            super::items::to_item(agent, format!("AGENT#{}", agent.agent_id), "PROFILE".into())?;
        item.insert("pendingCommand".into(), s(command.to_string()));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)");
        write_if("PutItem provisional agent", || put.clone().send()).await
    }

    async fn withdraw_provisional(&self, id: &AgentId, command: Uuid) -> Result<bool, Error> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", agent_key(id))
            .key("sk", s("PROFILE"))
            .condition_expression("pendingCommand = :command AND #version = :zero")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":command", s(command.to_string()))
            .expression_attribute_values(":zero", n(0));
        write_if("DeleteItem provisional agent", || delete.clone().send()).await
    }

    async fn mark_processed(&self, entry: &InboxEntry) -> Result<Write, Error> {
        self.inbox.write_alone(entry).await
    }

    async fn available(&self) -> Result<Vec<Agent>, Error> {
        let query = self.by_state(AgentState::Available);
        let mut agents = Vec::new();
        query_each(query, "Query available agents", |item| {
            agents.push(from_item::<Agent>(item)?);
            Ok(if agents.len() < MAX_CANDIDATES {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            })
        })
        .await?;
        Ok(agents)
    }

    async fn reservation(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<Reservation>, Error> {
        let key = (
            format!("RESERVATION#{conversation}"),
            "RESERVATION".to_owned(),
        );
        get_as(&self.client, &self.table, key, "GetItem reservation").await
    }

    async fn reserve(&self, r: &Reservation) -> Result<Reserve, Error> {
        let mut item: std::collections::HashMap<String, AttributeValue> =
            serde_dynamo::to_item(r).map_err(|e| Error::Internal(format!("encoding: {e}")))?;
        item.insert("pk".into(), reservation_key(&r.conversation_id));
        item.insert("sk".into(), s("RESERVATION"));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_err)?;
        let take_slot = self
            .move_slot(&r.agent_id, '+')
            .condition_expression("#state = :available AND activeConversations < #capacity")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#capacity", "capacity")
            .expression_attribute_values(":available", s(AgentState::Available.as_str()))
            .build()
            .map_err(build_err)?;
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(take_slot).build(),
        ];
        Ok(match transact(&self.client, items).await? {
            None => Reserve::Reserved,
            Some(codes) if failed(&codes, 0) => Reserve::AlreadyReserved,
            Some(_) => Reserve::AgentUnavailable,
        })
    }

    async fn release(&self, r: &Reservation, record: &InboxEntry) -> Result<Write, Error> {
        let released = Update::builder()
            .table_name(&self.table)
            .key("pk", reservation_key(&r.conversation_id))
            .key("sk", s("RESERVATION"))
            .update_expression("SET releasedAt = :at")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(releasedAt)")
            .expression_attribute_values(":at", to_av(&Utc::now())?)
            .build()
            .map_err(build_err)?;
        let free_slot = self
            .move_slot(&r.agent_id, '-')
            .condition_expression("activeConversations > :zero")
            .expression_attribute_values(":zero", n(0))
            .build()
            .map_err(build_err)?;
        let items = vec![
            TransactWriteItem::builder().update(released).build(),
            TransactWriteItem::builder().update(free_slot).build(),
            self.inbox.put(record)?,
        ];
        Ok(match transact(&self.client, items).await? {
            None => Write::Done,
            Some(codes) if failed(&codes, 2) => Write::Duplicate,
            Some(_) => Write::Conflict,
        })
    }
}
