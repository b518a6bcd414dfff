//! Commands sent straight to an SQS FIFO queue, for services whose commands must apply in the
//! order they were accepted, per aggregate.
//!
//! EventBridge can deliver to a FIFO queue, but a rule target's `MessageGroupId` is one fixed
//! string, which would serialize every aggregate behind one group. So these commands bypass
//! the bus: `MessageGroupId` is the command's aggregate ([`crate::envelope::Payload::aggregate_id`]:
//! order per aggregate, aggregates in parallel) and `MessageDeduplicationId` the command's id
//! (a resend within SQS's five-minute window is dropped; the worker's inbox covers the rest).

use crate::{Error, command::CommandTransport, envelope::Envelope};

/// An SQS FIFO queue of commands.
#[derive(Clone)]
pub struct SqsFifoQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsFifoQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        SqsFifoQueue { client, url }
    }
}

impl CommandTransport for SqsFifoQueue {
    async fn send(&self, command: &Envelope) -> Result<(), Error> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(serde_json::to_string(command)?)
            .message_group_id(command.payload.aggregate_id())
            .message_deduplication_id(command.id.to_string())
            .send()
            .await
            .map_err(|e| crate::aws::classify("SendMessage", e))?;
        Ok(())
    }
}
