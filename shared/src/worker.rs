//! Running an SQS batch the way DESIGN §3 requires:
//!
//! - each record is decoded on its own; one that cannot be decoded fails alone (poison);
//! - records are grouped by key (e.g. the agent id): groups run concurrently, records of one
//!   group in order, and after a failure the rest of its group fails too, so a later change
//!   is never applied before an earlier one that will be redelivered;
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
    events::Envelope,
    metrics::Unit,
    store::inbox::{Inbox, InboxRecord},
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

/// Processes a batch: `key` groups records that must stay in order, `handle` applies one.
pub async fn process_batch<K, H, F>(event: SqsEvent, key: K, handle: H) -> SqsBatchResponse
where
    K: Fn(&Envelope) -> String,
    H: Fn(Envelope) -> F,
    F: Future<Output = Result<(), Error>>,
{
    let mut failures = Vec::new();
    let mut groups: Vec<(String, Vec<(String, Envelope)>)> = Vec::new();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        match decode(&record) {
            Ok(env) => {
                let k = key(&env);
                match groups.iter_mut().find(|(gk, _)| *gk == k) {
                    Some((_, items)) => items.push((id, env)),
                    None => groups.push((k, vec![(id, env)])),
                }
            }
            Err(e) => {
                tracing::error!(message_id = %id, error = %e, "poison message: cannot decode");
                failures.push(id);
            }
        }
    }
    let started = std::time::Instant::now();
    let total = event_len(&groups) + failures.len();
    let handle = &handle;
    let results = join_all(groups.into_iter().map(|(_, items)| async move {
        let mut failed = Vec::new();
        let mut items = items.into_iter();
        for (id, env) in items.by_ref() {
            // Every line logged while handling the message carries its correlation id, so one
            // grep follows a request across services.
            let span = tracing::info_span!(
                "message",
                message_id = %id,
                message = env.message.detail_type(),
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
        failed.extend(items.map(|(id, _)| id));
        failed
    }))
    .await;
    failures.extend(results.into_iter().flatten());
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

fn event_len(groups: &[(String, Vec<(String, Envelope)>)]) -> usize {
    groups.iter().map(|(_, items)| items.len()).sum()
}

/// What applying a message did.
pub enum Applied {
    /// The effect and its inbox record were written; these events must now be published.
    Done(Vec<Envelope>),
    /// A concurrent delivery of the same message wrote its record first.
    Duplicate,
}

/// Applies `msg` at most once and publishes its events at least once.
///
/// A message with an inbox record was applied before: its events are published again if that
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
/// the message changes), read concurrently with the inbox record: one round trip less before
/// the write that makes the effect visible (DESIGN §4: command → query-visible).
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
        Some(InboxRecord {
            published: true, ..
        }) => return Ok(()),
        Some(record) => record.events,
        None => match apply(read?).await? {
            Applied::Done(events) => events,
            Applied::Duplicate => match inbox.processed(msg.id).await? {
                Some(record) if !record.published => record.events,
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
