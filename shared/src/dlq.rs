//! Dead-letter queues: their depth, and the redrive that moves their messages back to where
//! they came from. One implementation for the ops API (`POST /ops/dlq/{queue}/redrive`) and
//! the local runner's dashboard (README.md §Dashboard).
//!
//! A redrive is receive → send → delete, one message at a time, so a crash mid-way
//! duplicates a message at worst (every consumer tolerates that, docs/ARCHITECTURE.md
//! §Guarantees and how each is kept) and never loses one. SQS's own `StartMessageMoveTask` would do the move on
//! AWS, but emulators lack it, and a rule target's DLQ holds EventBridge events that must go
//! back to the bus, not to a queue.

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use serde::Deserialize;

use crate::{Error, aws::classify};

/// Where a DLQ's messages go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The URL of the queue whose `RedrivePolicy` names the DLQ.
    Queue(String),
    /// The DLQ of an EventBridge rule target: its messages are events, re-put on this bus
    /// (its name).
    Bus(String),
}

/// A dead-letter queue and where its messages go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterQueue {
    /// The name callers use for it (the ops API's `{queue}`).
    pub name: String,
    pub url: String,
    pub target: Target,
}

/// A queue's approximate message counts, as `GetQueueAttributes` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    /// `ApproximateNumberOfMessages`: visible, waiting to be received.
    pub visible: i64,
    /// `ApproximateNumberOfMessagesNotVisible`: received and not yet deleted.
    pub in_flight: i64,
}

/// The depth of the queue at `url`. Errors: the queue cannot be read (`503` when the emulator
/// or the queue is gone, [`classify`]).
pub async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<Depth, Error> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| classify("GetQueueAttributes", e))?;
    let attr = |k: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Depth {
        visible: attr(QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: attr(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    })
}

/// What one [`redrive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Redriven {
    /// Messages now back at the target and deleted from the DLQ.
    pub moved: usize,
    /// Messages that could not be moved; they stay in the DLQ and become visible again after
    /// its visibility timeout (30 s here).
    pub failed: usize,
}

/// Moves up to `limit` messages of `dlq` back to its [`Target`]: a queue's keep their body,
/// message attributes and, for a FIFO target, their group (deduplicated on
/// `redrive-<messageId>`); a bus's are re-put with their `source`, `detail-type` and `detail`.
/// Stops early when the DLQ answers no message. Errors: receiving from the DLQ fails; a
/// message that fails to move is counted in [`Redriven::failed`] and logged, not an error.
pub async fn redrive(
    sqs: &aws_sdk_sqs::Client,
    events: &aws_sdk_eventbridge::Client,
    dlq: &DeadLetterQueue,
    limit: usize,
) -> Result<Redriven, Error> {
    let mut done = Redriven::default();
    while done.moved + done.failed < limit {
        let want = (limit - done.moved - done.failed).min(10) as i32;
        let out = sqs
            .receive_message()
            .queue_url(&dlq.url)
            .max_number_of_messages(want)
            .visibility_timeout(30)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in &messages {
            match move_one(sqs, events, dlq, m).await {
                Ok(()) => done.moved += 1,
                Err(e) => {
                    // Left in the DLQ: visible again after the visibility timeout.
                    tracing::error!(queue = %dlq.name, error = %e, "redrive of one message failed");
                    done.failed += 1;
                }
            }
        }
    }
    tracing::info!(queue = %dlq.name, moved = done.moved, failed = done.failed, "redrive");
    Ok(done)
}

#[derive(Deserialize)]
struct DeadEvent {
    source: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    detail: serde_json::Value,
}

async fn move_one(
    sqs: &aws_sdk_sqs::Client,
    events: &aws_sdk_eventbridge::Client,
    dlq: &DeadLetterQueue,
    m: &Message,
) -> Result<(), Error> {
    let body = m.body().unwrap_or_default();
    match &dlq.target {
        Target::Queue(url) => {
            let mut send = sqs
                .send_message()
                .queue_url(url)
                .message_body(body)
                .set_message_attributes(m.message_attributes().cloned());
            if url.ends_with(".fifo") {
                let group = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .cloned()
                    .unwrap_or_else(|| "redrive".into());
                let dedup = format!("redrive-{}", m.message_id().unwrap_or_default());
                send = send.message_group_id(group).message_deduplication_id(dedup);
            }
            send.send().await.map_err(|e| classify("SendMessage", e))?;
        }
        Target::Bus(bus) => {
            let event: DeadEvent = serde_json::from_str(body)
                .map_err(|e| Error::Internal(format!("not an EventBridge event: {e}")))?;
            let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .event_bus_name(bus)
                .source(event.source)
                .detail_type(event.detail_type)
                .detail(event.detail.to_string())
                .build();
            let out = events
                .put_events()
                .entries(entry)
                .send()
                .await
                .map_err(|e| classify("PutEvents", e))?;
            if out.failed_entry_count() > 0 {
                return Err(Error::Unavailable("PutEvents rejected the event".into()));
            }
        }
    }
    sqs.delete_message()
        .queue_url(&dlq.url)
        .receipt_handle(m.receipt_handle().unwrap_or_default())
        .send()
        .await
        .map_err(|e| classify("DeleteMessage", e))?;
    Ok(())
}
