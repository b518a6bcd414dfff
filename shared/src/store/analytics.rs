//! The analytics table: counters kept from other services' events, exactly once.
//!
//! Items (`pk` / `sk`):
//! - `SUMMARY` / `COUNTERS`: conversations created / assigned / closed, messages, trades
//!   executed / rejected;
//! - `SUMMARY` / `VOLUME#<symbol>`: executed quantity and notional (`quantity × price`) per
//!   symbol, exact decimals (DynamoDB numbers hold 38 significant digits);
//! - `AGENT#<id>` / `STATS`: conversations handled, messages sent, assignment time totals;
//! - `CONVERSATION#<id>` / `TIMELINE`: when the conversation was created, matched (and to whom)
//!   and whether it closed. Events about one conversation arrive in any order; the timeline is
//!   what lets the second of `ConversationStarted` / `AgentMatched` compute the time to assign,
//!   and makes each conversation count once as created, assigned and closed whatever the event
//!   ids (a conversation may be announced closed twice, with different event ids);
//! - the inbox (`INBOX#<event id>`).
//!
//! Every event is applied as **one transaction**: its inbox entry (condition: absent), the
//! timeline update (condition: the timeline is as it was read) and the `ADD`s. A redelivered
//! event fails on its inbox entry and changes nothing; two events of one conversation applied
//! concurrently cannot both miss each other: one fails its timeline condition and is retried.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::inbox::{DynamoInbox, Inbox, InboxEntry, InboxTable};
use super::items::{Item, build_err, failed, get, query_each, transact};
use super::{Write, n, s};
use crate::Error;
use crate::domain::ids::{AgentId, ConversationId};
use crate::domain::money::Amount;
use crate::domain::trades::Symbol;

const SUMMARY: &str = "SUMMARY";
const COUNTERS: &str = "COUNTERS";
const VOLUME: &str = "VOLUME#";
const STATS: &str = "STATS";
const TIMELINE: &str = "TIMELINE";

/// Which counters item an [`Increment`] adds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Summary,
    Agent(AgentId),
    Volume(Symbol),
}

/// `ADD`s to the attributes of one counters item (at most one increment per target in a
/// transaction: DynamoDB refuses two operations on one item).
#[derive(Debug, Clone, PartialEq)]
pub struct Increment {
    pub target: Target,
    /// Attribute name and exact amount to add.
    pub deltas: Vec<(&'static str, Decimal)>,
}

/// What the analytics service has seen of one conversation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// `ConversationStarted.createdAt`: when the conversations API accepted it.
    pub created_at: Option<DateTime<Utc>>,
    /// `AgentMatched`: the agent and when the agents service reserved it.
    pub matched: Option<(AgentId, DateTime<Utc>)>,
    pub closed: bool,
}

/// One fact recorded in a conversation's timeline. Recording a fact already there is a
/// conflict, so the caller decides from the timeline it read whether the fact is new.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Created(DateTime<Utc>),
    Matched(AgentId, DateTime<Utc>),
    Closed(DateTime<Utc>),
}

/// Records `fact` in the timeline of `conversation`, which must still be `seen`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineUpdate {
    pub conversation: ConversationId,
    pub seen: Timeline,
    pub fact: Fact,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Executed quantity (BUY and SELL alike).
    pub quantity: Amount,
    /// Σ quantity × price of the executed trades.
    pub notional: Amount,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub conversations_created: u64,
    pub conversations_assigned: u64,
    pub conversations_closed: u64,
    pub messages: u64,
    pub trades_executed: u64,
    pub trades_rejected: u64,
    pub volume_by_symbol: BTreeMap<String, Volume>,
}

/// The counters of one agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentStats {
    /// Conversations matched to the agent (each once).
    pub conversations_handled: u64,
    /// Messages sent by the agent (sender `agent`).
    pub messages_sent: u64,
    /// Of the handled conversations, those whose creation time is known too.
    pub assignments_timed: u64,
    /// Σ (matchedAt − createdAt) over those, in milliseconds.
    pub assign_millis_total: u64,
}

pub trait AnalyticsStore: Inbox {
    fn timeline(
        &self,
        conversation: &ConversationId,
    ) -> impl Future<Output = Result<Timeline, Error>> + Send;

    /// One transaction: the inbox entry, the timeline update (if any) and the increments.
    /// `Duplicate` when the event was applied before; `Conflict` when the conversation's
    /// timeline changed since it was read (read again and decide again).
    fn apply(
        &self,
        record: &InboxEntry,
        timeline: Option<&TimelineUpdate>,
        increments: &[Increment],
    ) -> impl Future<Output = Result<Write, Error>> + Send;

    fn summary(&self) -> impl Future<Output = Result<Summary, Error>> + Send;

    /// `None` when no event ever named the agent.
    fn agent(&self, id: &AgentId)
    -> impl Future<Output = Result<Option<AgentStats>, Error>> + Send;
}

#[derive(Clone)]
pub struct DynamoAnalyticsStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    inbox: DynamoInbox,
}

impl super::Table for DynamoAnalyticsStore {
    fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        DynamoAnalyticsStore {
            inbox: DynamoInbox::new(client.clone(), table.clone()),
            client,
            table,
        }
    }
}

impl DynamoAnalyticsStore {
    fn increment(&self, inc: &Increment) -> Result<TransactWriteItem, Error> {
        let (pk, sk) = match &inc.target {
            Target::Summary => (SUMMARY.to_owned(), COUNTERS.to_owned()),
            Target::Agent(id) => (format!("AGENT#{id}"), STATS.to_owned()),
            Target::Volume(symbol) => (SUMMARY.to_owned(), format!("{VOLUME}{symbol}")),
        };
        let adds: Vec<String> = (0..inc.deltas.len())
            .map(|i| format!("#a{i} :a{i}"))
            .collect();
        let expression = match &inc.target {
            Target::Volume(_) => format!("SET symbol = :symbol ADD {}", adds.join(", ")),
            _ => format!("ADD {}", adds.join(", ")),
        };
        // Counters are only ever `ADD`ed (never read-modified-written), so concurrent events
        // never overwrite each other's counts.
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression(expression);
        for (i, (name, delta)) in inc.deltas.iter().enumerate() {
            update = update
                .expression_attribute_names(format!("#a{i}"), *name)
                .expression_attribute_values(format!(":a{i}"), n(delta.normalize()));
        }
        if let Target::Volume(symbol) = &inc.target {
            update = update.expression_attribute_values(":symbol", s(symbol.to_string()));
        }
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(build_err)?)
            .build())
    }

    /// Sets the fact's attributes, on condition that the fact is new and the other facts are
    /// as in `seen` (so increments computed from `seen` are still right).
    fn timeline_update(&self, t: &TimelineUpdate) -> Result<TransactWriteItem, Error> {
        let presence = |attr: &str, present: bool| {
            if present {
                format!("attribute_exists({attr})")
            } else {
                format!("attribute_not_exists({attr})")
            }
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(format!("CONVERSATION#{}", t.conversation)))
            .key("sk", s(TIMELINE));
        let (set, condition) = match &t.fact {
            Fact::Created(at) => {
                update = update.expression_attribute_values(":at", s(at.to_rfc3339()));
                (
                    "SET createdAt = :at",
                    format!(
                        "attribute_not_exists(createdAt) AND {}",
                        presence("matchedAt", t.seen.matched.is_some())
                    ),
                )
            }
            Fact::Matched(agent, at) => {
                update = update
                    .expression_attribute_values(":at", s(at.to_rfc3339()))
                    .expression_attribute_values(":agent", s(agent.to_string()));
                (
                    "SET matchedAt = :at, agentId = :agent",
                    format!(
                        "attribute_not_exists(matchedAt) AND {}",
                        presence("createdAt", t.seen.created_at.is_some())
                    ),
                )
            }
            Fact::Closed(at) => {
                update = update.expression_attribute_values(":at", s(at.to_rfc3339()));
                (
                    "SET closedAt = :at",
                    "attribute_not_exists(closedAt)".to_owned(),
                )
            }
        };
        let update = update
            .update_expression(set)
            .condition_expression(condition)
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

impl InboxTable for DynamoAnalyticsStore {
    fn inbox(&self) -> &DynamoInbox {
        &self.inbox
    }
}

fn text<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k)
        .and_then(|v| v.as_s().ok().or(v.as_n().ok()))
        .map(String::as_str)
}

fn time(item: &Item, k: &str) -> Result<Option<DateTime<Utc>>, Error> {
    text(item, k)
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| Error::Internal(format!("timeline {k}: {e}")))
        })
        .transpose()
}

/// A counter (absent: 0). `ADD` of integers keeps them integers.
fn count(item: &Item, k: &str) -> Result<u64, Error> {
    text(item, k).map_or(Ok(0), |t| {
        t.parse()
            .map_err(|_| Error::Internal(format!("counter {k} is not a count: {t}")))
    })
}

fn amount(item: &Item, k: &str) -> Result<Amount, Error> {
    text(item, k).map_or(Ok(Amount::new(Decimal::ZERO)), |t| {
        t.parse().map_err(Error::Internal)
    })
}

impl AnalyticsStore for DynamoAnalyticsStore {
    async fn timeline(&self, conversation: &ConversationId) -> Result<Timeline, Error> {
        let Some(item) = get(
            &self.client,
            &self.table,
            format!("CONVERSATION#{conversation}"),
            TIMELINE.to_owned(),
            "GetItem timeline",
        )
        .await?
        else {
            return Ok(Timeline::default());
        };
        let matched = match (text(&item, "agentId"), time(&item, "matchedAt")?) {
            (Some(agent), Some(at)) => Some((agent.parse().map_err(Error::Internal)?, at)),
            _ => None,
        };
        Ok(Timeline {
            created_at: time(&item, "createdAt")?,
            matched,
            closed: item.contains_key("closedAt"),
        })
    }

    async fn apply(
        &self,
        record: &InboxEntry,
        timeline: Option<&TimelineUpdate>,
        increments: &[Increment],
    ) -> Result<Write, Error> {
        let mut items = vec![self.inbox.put(record)?];
        if let Some(t) = timeline {
            items.push(self.timeline_update(t)?);
        }
        for inc in increments {
            items.push(self.increment(inc)?);
        }
        Ok(match transact(&self.client, items).await? {
            None => Write::Done,
            Some(codes) if failed(&codes, 0) => Write::Duplicate,
            Some(_) => Write::Conflict,
        })
    }

    async fn summary(&self) -> Result<Summary, Error> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(SUMMARY))
            .consistent_read(true);
        let mut summary = Summary::default();
        query_each(query, "Query summary", |item| {
            match text(&item, "sk") {
                Some(COUNTERS) => {
                    summary.conversations_created = count(&item, "conversationsCreated")?;
                    summary.conversations_assigned = count(&item, "conversationsAssigned")?;
                    summary.conversations_closed = count(&item, "conversationsClosed")?;
                    summary.messages = count(&item, "messages")?;
                    summary.trades_executed = count(&item, "tradesExecuted")?;
                    summary.trades_rejected = count(&item, "tradesRejected")?;
                }
                Some(sk) if sk.starts_with(VOLUME) => {
                    summary.volume_by_symbol.insert(
                        sk[VOLUME.len()..].to_owned(),
                        Volume {
                            quantity: amount(&item, "quantity")?,
                            notional: amount(&item, "notional")?,
                        },
                    );
                }
                _ => {}
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(summary)
    }

    async fn agent(&self, id: &AgentId) -> Result<Option<AgentStats>, Error> {
        let item = get(
            &self.client,
            &self.table,
            format!("AGENT#{id}"),
            STATS.to_owned(),
            "GetItem agent stats",
        )
        .await?;
        item.map(|item| {
            Ok(AgentStats {
                conversations_handled: count(&item, "conversationsHandled")?,
                messages_sent: count(&item, "messagesSent")?,
                assignments_timed: count(&item, "assignmentsTimed")?,
                assign_millis_total: count(&item, "assignMillisTotal")?,
            })
        })
        .transpose()
    }
}
