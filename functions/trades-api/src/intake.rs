//! Handing a trade to the worker: record it PENDING, then enqueue the command.
//!
//! # The dual write (trade record + queue), and why it cannot diverge
//!
//! `GET /trades/{id}` must show PENDING as soon as the `202` is sent, so the API writes the
//! trade before sending the command; the two writes are not atomic, so every failure between
//! them is resolved explicitly:
//!
//! - **send fails** → the PENDING trade is deleted *on condition that it is still PENDING* and
//!   the caller gets `503` (and may retry). If the condition fails, the worker already decided
//!   the trade, so the command did reach the queue after all (an ambiguous failure): accepted.
//! - **send fails ambiguously and the delete wins** → the trade is gone but the command is
//!   queued: the worker writes the whole decided trade (the command carries every field), so it
//!   reappears EXECUTED or REJECTED. A retry with the same `Idempotency-Key` names the same
//!   trade id (see `submit`) and finds it, so nothing runs twice.
//! - **the delete fails too** → the trade stays PENDING with no command behind it until the
//!   caller retries with the same key, which finds the PENDING trade and sends the command again
//!   (the worker's inbox and FIFO deduplication make extra sends harmless).
//!
//! A trade found PENDING or decided under the same id with the same order is a replay: it is
//! re-sent if still PENDING, and accepted. The same id with another order is refused.

use std::future::Future;

use shared::{
    Error,
    bus::EventBus,
    domain::trades::{Trade, TradeStatus},
    events::{Envelope, Message},
    store::trades::{Created, TradeStore, Withdrawn},
};

/// Where trade commands wait for the worker: ordered per account.
pub trait CommandQueue: Send + Sync {
    /// Sends `envelope` in message group `group`, deduplicated by `dedup_id`.
    fn send(
        &self,
        envelope: &Envelope,
        group: &str,
        dedup_id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The trades SQS FIFO queue.
pub struct FifoQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl FifoQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        FifoQueue { client, url }
    }
}

impl CommandQueue for FifoQueue {
    async fn send(&self, envelope: &Envelope, group: &str, dedup_id: &str) -> Result<(), Error> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(serde_json::to_string(envelope)?)
            .message_group_id(group)
            .message_deduplication_id(dedup_id)
            .send()
            .await
            .map_err(|e| shared::aws::classify("SendMessage", e))?;
        Ok(())
    }
}

/// "Publishing" a `SubmitTrade` through [`shared::command::accept`]: recording the trade and
/// enqueueing its command, so `accept`'s `Idempotency-Key` handling (claim, replay, release on
/// failure) applies unchanged.
pub struct Intake<'a, S, Q> {
    pub store: &'a S,
    pub queue: &'a Q,
}

impl<S: TradeStore, Q: CommandQueue> EventBus for Intake<'_, S, Q> {
    async fn publish(&self, events: &[Envelope]) -> Result<(), Error> {
        for envelope in events {
            let Message::SubmitTrade(cmd) = &envelope.message else {
                return Err(Error::Internal(format!(
                    "the trade intake takes SubmitTrade, not {}",
                    envelope.message.detail_type()
                )));
            };
            match self.store.create_pending(&Trade::pending(cmd)).await? {
                Created::Created => {}
                Created::Exists(existing) if !cmd.same_order(&existing) => {
                    return Err(Error::invalid(
                        "Idempotency-Key",
                        "this key was already used for a different trade",
                    ));
                }
                Created::Exists(existing) if existing.status != TradeStatus::Pending => continue,
                Created::Exists(_) => {}
            }
            let trade_id = cmd.trade_id.to_string();
            if let Err(e) = self
                .queue
                .send(envelope, cmd.account_id.as_str(), &trade_id)
                .await
            {
                match self.store.withdraw(cmd.trade_id).await {
                    Ok(Withdrawn::Withdrawn) => return Err(e),
                    Ok(Withdrawn::Decided) => {
                        tracing::warn!(trade_id, error = %e, "send reported failure but the trade was decided");
                    }
                    Err(withdraw) => {
                        tracing::error!(trade_id, error = %withdraw, "could not withdraw the PENDING trade");
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}
