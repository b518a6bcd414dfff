//! Running an SQS batch so that no message is lost, none applied twice and none overtakes one
//! it must follow:
//!
//! - records are grouped: on a FIFO queue by their `MessageGroupId` (the SQS attribute, not
//!   anything decoded from the body: SQS orders by it, so must we), on a standard queue by a
//!   key of the decoded message (e.g. the agent id); groups run concurrently, records of one
//!   group in batch order;
//! - after a failure the rest of its group fails too, so a later change is never applied
//!   before an earlier one that will be redelivered. On a FIFO queue that includes a record
//!   that cannot even be decoded: it holds back every later record of its group, as SQS
//!   itself holds back the group until the message leaves it (applied, or moved to the DLQ
//!   after `maxReceiveCount`), like Powertools' `SqsFifoPartialProcessor` with
//!   `skip_group_on_error`. On a standard queue an undecodable record fails alone;
//! - failures are reported per item (`ReportBatchItemFailures`): SQS redelivers only those,
//!   and after `maxReceiveCount` moves them to the DLQ;
//! - [`exactly_once`] applies a message at most once and publishes its events at least once.

use std::future::Future;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::future::join_all;
use serde::Deserialize;
use tracing::Instrument;

use crate::{
    Error,
    bus::EventBus,
    envelope::{Envelope, Payload},
    metrics::Unit,
    store::inbox::{Inbox, InboxEntry},
};

/// EventBridge delivers `{ "detail-type": ..., "source": ..., "detail": <envelope> }` to SQS.
#[derive(Deserialize)]
struct EventBridgeEvent {
    detail: Envelope,
}

/// Decodes a record body: an EventBridge event whose detail is our envelope, or (for messages
/// sent straight to the queue, e.g. redriven by hand) the bare envelope.
pub fn decode(record: &SqsMessage) -> Result<Envelope, Error> {
    let body = record
        .body
        .as_deref()
        .ok_or_else(|| Error::invalid("body", "empty message"))?;
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| Error::Malformed(format!("not JSON: {e}")))?;
    let decoded = if value.get("detail").is_some() {
        serde_json::from_value::<EventBridgeEvent>(value).map(|e| e.detail)
    } else {
        serde_json::from_value::<Envelope>(value)
    };
    decoded.map_err(|e| Error::invalid("detail", e.to_string()))
}

/// The SQS attribute a FIFO queue's records carry, and order by.
const MESSAGE_GROUP_ID: &str = "MessageGroupId";

/// A record of the batch: its id and its message, or why it could not be decoded.
type Item = (String, Result<Envelope, Error>);

/// Processes a batch: `key` groups the records of a standard queue that must stay in order
/// (FIFO records are grouped by their `MessageGroupId`), `sequence` orders a standard-queue
/// group when its messages carry one ([`Worker::sequence`]), `handle` applies one.
async fn process_batch<K, Q, H, F>(
    event: SqsEvent,
    key: K,
    sequence: Q,
    handle: H,
) -> SqsBatchResponse
where
    K: Fn(&Envelope) -> String,
    Q: Fn(&Envelope) -> Option<u64>,
    H: Fn(Envelope) -> F,
    F: Future<Output = Result<(), Error>>,
{
    let mut groups: Vec<(String, Vec<Item>)> = Vec::new();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let decoded = decode(&record);
        // `#` cannot occur in our keys, so FIFO groups, decoded keys and lone records never
        // share a group by accident.
        let group = match (record.attributes.get(MESSAGE_GROUP_ID), &decoded) {
            (Some(fifo), _) => format!("fifo#{fifo}"),
            (None, Ok(env)) => key(env),
            (None, Err(_)) => format!("poison#{id}"),
        };
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, items)) => items.push((id, decoded)),
            None => groups.push((group, vec![(id, decoded)])),
        }
    }
    for (group, items) in &mut groups {
        if !group.starts_with("fifo#") {
            // Stable: records without a sequence keep their batch order, after the others.
            items.sort_by_key(|(_, decoded)| {
                let n = decoded.as_ref().ok().and_then(&sequence);
                (n.is_none(), n)
            });
        }
    }
    let started = std::time::Instant::now();
    let total = groups.iter().map(|(_, items)| items.len()).sum::<usize>();
    let handle = &handle;
    let results = join_all(groups.into_iter().map(|(_, items)| async move {
        let mut failed = Vec::new();
        let mut items = items.into_iter();
        for (id, decoded) in items.by_ref() {
            let env = match decoded {
                Ok(env) => env,
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "poison message: cannot decode");
                    failed.push(id);
                    break;
                }
            };
            // Every line logged while handling the message carries its correlation id, so one
            // grep follows a request across services.
            let span = tracing::info_span!(
                "message",
                message_id = %id,
                message = env.payload.detail_type(),
                envelope_id = %env.id,
                correlation_id = %env.correlation_id,
            );
            match handle(env).instrument(span.clone()).await {
                Ok(()) => span.in_scope(|| tracing::info!("message processed")),
                Err(e) => {
                    span.in_scope(|| {
                        tracing::error!(
                            retryable = e.is_retryable(), error = %e,
                            "message failed; SQS will redeliver it (DLQ after maxReceiveCount)"
                        )
                    });
                    failed.push(id);
                    break;
                }
            }
        }
        // The rest of the group waits for the failed one: none may overtake it.
        failed.extend(items.map(|(id, _)| id));
        failed
    }))
    .await;
    let failures: Vec<String> = results.into_iter().flatten().collect();
    crate::metrics::emit(&[
        (
            "MessagesProcessed",
            (total - failures.len()) as f64,
            Unit::Count,
        ),
        ("MessagesFailed", failures.len() as f64, Unit::Count),
        (
            "BatchDuration",
            started.elapsed().as_secs_f64() * 1e3,
            Unit::Milliseconds,
        ),
    ]);
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures
        .into_iter()
        .map(|item_identifier| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = item_identifier;
            f
        })
        .collect();
    response
}

/// A queue worker: the message types it applies, which records of a batch must keep their
/// batch order, and how it applies one message. [`handle`] runs a whole batch through it, so
/// every worker groups, orders, fails and reports its batch the same way (the module docs).
pub trait Worker {
    /// How refusals name it: `"the agents worker"`.
    const NAME: &'static str;

    /// The command and event types (`detail-type`s) it applies; [`handle`] refuses any other
    /// as a poison message ([`Worker::refuse`]). `template.yaml` must deliver exactly these to
    /// its queue (checked by `every_message_type_reaches_exactly_the_workers_that_handle_it`;
    /// docs/ARCHITECTURE.md, §Commands and events).
    const HANDLES: &'static [&'static str];

    /// The key of the records of a standard queue that must apply in batch order (a FIFO
    /// queue's records are grouped by their `MessageGroupId` instead). By default a handled
    /// message's aggregate ([`crate::envelope::Payload::aggregate_id`]: its agent,
    /// conversation or account); a message it does not handle is keyed alone, so its refusal
    /// holds nothing back.
    fn order_key(env: &Envelope) -> String {
        if Self::HANDLES.contains(&env.payload.detail_type()) {
            env.payload.aggregate_id().to_owned()
        } else {
            env.id.to_string()
        }
    }

    /// The position of a message in its aggregate's own numbering, when it carries one (the
    /// positions worker: a trade's execution sequence). The records of one standard-queue
    /// group are then applied in that order rather than the batch's, so a batch holding 2 and
    /// 1 applies 1 then 2 instead of failing 2 and what follows it; records without one go
    /// last, in batch order. FIFO groups always keep the queue's order. None by default.
    fn sequence(env: &Envelope) -> Option<u64> {
        let _ = env;
        None
    }

    /// Applies one message of a type in [`Worker::HANDLES`]; an error fails the message (and
    /// the rest of its group), so SQS redelivers it.
    fn apply(&self, env: Envelope) -> impl Future<Output = Result<(), Error>>;

    /// The error for a message of a type it does not handle: invalid, so it is not retried
    /// in the batch and reaches the DLQ after `maxReceiveCount`.
    fn refuse(payload: &Payload) -> Error {
        Error::invalid(
            "detail-type",
            format!("{} does not handle {}", Self::NAME, payload.detail_type()),
        )
    }
}

/// Handles one SQS batch with `worker` (the `handle` of every worker function): the records in
/// groups of [`Worker::order_key`] (each in [`Worker::sequence`] order), a type outside
/// [`Worker::HANDLES`] refused, the rest [`Worker::apply`]d; the failures are the partial batch
/// response.
pub async fn handle<W: Worker>(worker: &W, batch: SqsEvent) -> SqsBatchResponse {
    process_batch(batch, W::order_key, W::sequence, |env| async move {
        if W::HANDLES.contains(&env.payload.detail_type()) {
            worker.apply(env).await
        } else {
            Err(W::refuse(&env.payload))
        }
    })
    .await
}

/// What applying a message did.
pub enum Applied {
    /// The effect and its inbox entry were written; these events must now be published.
    Done(Vec<Envelope>),
    /// A concurrent delivery of the same message wrote its record first.
    Duplicate,
}

/// Applies `msg` at most once and publishes its events at least once.
///
/// A message with an inbox entry was applied before: its events are published again if that
/// did not complete (the dual-write gap), and nothing else happens. Otherwise `apply` writes
/// the effect together with the record. A publish failure fails the message, so SQS redelivers
/// it and the next attempt publishes from the record.
pub async fn exactly_once<I, B, A, F>(
    inbox: &I,
    bus: &B,
    msg: &Envelope,
    apply: A,
) -> Result<(), Error>
where
    I: Inbox,
    B: EventBus,
    A: FnOnce() -> F,
    F: Future<Output = Result<Applied, Error>>,
{
    exactly_once_after(inbox, bus, msg, async { Ok(()) }, |()| apply()).await
}

/// [`exactly_once`] whose `apply` starts from the result of `read` (typically the aggregate
/// the message changes), read concurrently with the inbox entry: one round trip less before
/// the write that makes the effect visible (docs/ARCHITECTURE.md §Budgets: command → query-visible).
///
/// Safe because the read only informs the write: the write is still conditioned on the inbox
/// record being absent (and on the aggregate's version), so a message found in the inbox is
/// never applied twice; its `read` is then wasted (and a failed `read` ignored), which only
/// happens on redeliveries.
pub async fn exactly_once_after<I, B, R, T, A, F>(
    inbox: &I,
    bus: &B,
    msg: &Envelope,
    read: R,
    apply: A,
) -> Result<(), Error>
where
    I: Inbox,
    B: EventBus,
    R: Future<Output = Result<T, Error>>,
    A: FnOnce(T) -> F,
    F: Future<Output = Result<Applied, Error>>,
{
    let (record, read) = futures::join!(inbox.processed(msg.id), read);
    let events = match record? {
        Some(InboxEntry {
            published: true, ..
        }) => return Ok(()),
        Some(record) => record.outbox,
        None => match apply(read?).await? {
            Applied::Done(events) => events,
            Applied::Duplicate => match inbox.processed(msg.id).await? {
                Some(record) if !record.published => record.outbox,
                _ => return Ok(()),
            },
        },
    };
    if events.is_empty() {
        return Ok(());
    }
    bus.publish(&events).await?;
    if let Err(e) = inbox.mark_published(msg.id).await {
        // Published already; a redelivery would publish again, which consumers deduplicate.
        tracing::warn!(error = %e, "could not mark events published");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::agents::{AgentState, ChangeAgentState};

    fn change(agent: &str) -> String {
        let env = Envelope::new(
            "c",
            Payload::ChangeAgentState(ChangeAgentState {
                agent_id: agent.parse().unwrap(),
                state: AgentState::Away,
                expected_version: None,
            }),
        );
        serde_json::to_string(&env).unwrap()
    }

    /// A batch of `(body, MessageGroupId)` records, ids `m0`, `m1`, ….
    fn batch(records: &[(&str, Option<&str>)]) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = records
            .iter()
            .enumerate()
            .map(|(i, (body, group))| {
                let mut r = SqsMessage::default();
                r.message_id = Some(format!("m{i}"));
                r.body = Some((*body).to_owned());
                if let Some(g) = group {
                    r.attributes.insert(MESSAGE_GROUP_ID.into(), (*g).into());
                }
                r
            })
            .collect();
        event
    }

    /// Runs `event`, failing the records whose agent is `fail`: (failed ids, applied agents).
    async fn run(event: SqsEvent, fail: &str) -> (Vec<String>, Vec<String>) {
        let applied = Mutex::new(Vec::new());
        let agent = |env: &Envelope| match &env.payload {
            Payload::ChangeAgentState(c) => c.agent_id.to_string(),
            _ => unreachable!(),
        };
        let resp = process_batch(
            event,
            agent,
            |_| None,
            |env| {
                let a = agent(&env);
                let result = if a == fail {
                    Err(Error::Unavailable("injected".into()))
                } else {
                    applied.lock().unwrap().push(a);
                    Ok(())
                };
                async move { result }
            },
        )
        .await;
        let failed = resp
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        (failed, applied.into_inner().unwrap())
    }

    #[tokio::test]
    async fn on_a_fifo_queue_an_undecodable_record_holds_back_its_group_only() {
        let event = batch(&[
            ("this is not json", Some("acc-q1")),
            (&change("a1"), Some("acc-q1")),
            (&change("a2"), Some("acc-q2")),
        ]);
        let (failed, applied) = run(event, "").await;
        assert_eq!(
            failed,
            ["m0", "m1"],
            "the poison and its group's later record"
        );
        assert_eq!(applied, ["a2"], "another group goes on");
    }

    #[tokio::test]
    async fn on_a_fifo_queue_the_group_is_the_attribute_not_the_body() {
        // Two agents' commands in one message group: a failure of the first holds back the
        // second, whatever the decoded key says.
        let event = batch(&[(&change("a1"), Some("g")), (&change("a2"), Some("g"))]);
        let (failed, applied) = run(event, "a1").await;
        assert_eq!(failed, ["m0", "m1"]);
        assert!(applied.is_empty());
    }

    #[tokio::test]
    async fn on_a_standard_queue_an_undecodable_record_fails_alone() {
        let event = batch(&[
            (&change("a1"), None),
            ("this is not json", None),
            (&change("a1"), None),
            (&change("a2"), None),
        ]);
        let (failed, applied) = run(event, "").await;
        assert_eq!(failed, ["m1"]);
        assert_eq!(applied.len(), 3);
        // A failure holds back the rest of its key's records, and only those.
        let event = batch(&[
            (&change("a1"), None),
            (&change("a2"), None),
            (&change("a1"), None),
        ]);
        let (failed, applied) = run(event, "a1").await;
        assert_eq!(failed, ["m0", "m2"]);
        assert_eq!(applied, ["a2"]);
    }

    /// A worker that applies `ChangeAgentState` only, failing agent `fail`'s.
    struct AgentStates {
        fail: &'static str,
        applied: Mutex<Vec<String>>,
    }

    impl Worker for AgentStates {
        const NAME: &'static str = "the test worker";
        const HANDLES: &'static [&'static str] = &["ChangeAgentState"];

        async fn apply(&self, env: Envelope) -> Result<(), Error> {
            let Payload::ChangeAgentState(c) = &env.payload else {
                panic!("apply was given a {}", env.payload.detail_type());
            };
            if c.agent_id.as_str() == self.fail {
                return Err(Error::Unavailable("injected".into()));
            }
            self.applied.lock().unwrap().push(c.agent_id.to_string());
            Ok(())
        }
    }

    /// Runs `records` through [`handle`]: (failed ids, applied agents).
    async fn handled(records: &[&str], fail: &'static str) -> (Vec<String>, Vec<String>) {
        let worker = AgentStates {
            fail,
            applied: Mutex::new(Vec::new()),
        };
        let event = batch(&records.iter().map(|r| (*r, None)).collect::<Vec<_>>());
        let failed = handle(&worker, event)
            .await
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        (failed, worker.applied.into_inner().unwrap())
    }

    #[tokio::test]
    async fn a_type_the_worker_does_not_handle_is_refused_alone_without_reaching_apply() {
        // A conversation command whose aggregate id equals agent a1's: keyed by its aggregate,
        // its refusal would hold back the a1 change after it.
        let close = Payload::CloseConversation(crate::domain::conversations::CloseConversation {
            conversation_id: "a1".parse().unwrap(),
        });
        let refusal = AgentStates::refuse(&close).to_string();
        let close = serde_json::to_string(&Envelope::new("c", close)).unwrap();
        let (failed, applied) =
            handled(&[&change("a1"), &close, &change("a1"), &change("a2")], "").await;
        assert_eq!(failed, ["m1"]);
        assert_eq!(applied, ["a1", "a1", "a2"]);
        assert!(
            refusal.contains("the test worker does not handle CloseConversation"),
            "{refusal}"
        );
    }

    #[tokio::test]
    async fn by_default_one_aggregate_applies_in_batch_order() {
        let (failed, applied) = handled(&[&change("a1"), &change("a2"), &change("a1")], "a1").await;
        assert_eq!(
            failed,
            ["m0", "m2"],
            "a1's second change waits for its first"
        );
        assert_eq!(applied, ["a2"]);
    }

    /// Applies `ChangeAgentState` in the order of its `expectedVersion`, recording
    /// `agent@version`.
    struct Versions(Mutex<Vec<String>>);

    impl Worker for Versions {
        const NAME: &'static str = "the versions worker";
        const HANDLES: &'static [&'static str] = &["ChangeAgentState"];

        fn sequence(env: &Envelope) -> Option<u64> {
            match &env.payload {
                Payload::ChangeAgentState(c) => c.expected_version,
                _ => None,
            }
        }

        async fn apply(&self, env: Envelope) -> Result<(), Error> {
            if let Payload::ChangeAgentState(c) = &env.payload {
                let v = c.expected_version.unwrap_or(0);
                self.0.lock().unwrap().push(format!("{}@{v}", c.agent_id));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_group_applies_in_its_sequence_on_a_standard_queue_and_in_queue_order_on_fifo() {
        let versioned = |agent: &str, v: u64| {
            serde_json::to_string(&Envelope::new(
                "c",
                Payload::ChangeAgentState(ChangeAgentState {
                    agent_id: agent.parse().unwrap(),
                    state: AgentState::Away,
                    expected_version: Some(v),
                }),
            ))
            .unwrap()
        };
        let (a3, a1, b2, a2) = (
            versioned("a", 3),
            versioned("a", 1),
            versioned("b", 2),
            versioned("a", 2),
        );
        let worker = Versions(Mutex::new(Vec::new()));
        let standard = batch(&[(&a3, None), (&a1, None), (&b2, None), (&a2, None)]);
        assert!(
            handle(&worker, standard)
                .await
                .batch_item_failures
                .is_empty()
        );
        let applied = worker.0.lock().unwrap().clone();
        let of_a: Vec<&String> = applied.iter().filter(|r| r.starts_with("a@")).collect();
        assert_eq!(of_a, ["a@1", "a@2", "a@3"]);
        assert!(applied.contains(&"b@2".to_owned()));
        let worker = Versions(Mutex::new(Vec::new()));
        let fifo = batch(&[(&a3, Some("g")), (&a1, Some("g"))]);
        assert!(handle(&worker, fifo).await.batch_item_failures.is_empty());
        assert_eq!(*worker.0.lock().unwrap(), ["a@3", "a@1"]);
    }
}
