//! The event bus: publishing commands and events. EventBridge on AWS and on the emulator.

use std::future::Future;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use crate::{Error, command::CommandTransport, envelope::Envelope};

pub trait EventBus: Send + Sync {
    /// Publishes every envelope or fails: a partial failure is an error, so the caller retries
    /// (ids are stable, consumers deduplicate).
    fn publish(&self, events: &[Envelope]) -> impl Future<Output = Result<(), Error>> + Send;
}

#[derive(Clone)]
pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
    bus_name: String,
}

impl EventBridgeBus {
    pub fn new(client: aws_sdk_eventbridge::Client, bus_name: String) -> Self {
        EventBridgeBus { client, bus_name }
    }

    /// The bus the template names in every function's environment (`EVENT_BUS_NAME`, set in
    /// `Globals`).
    pub fn open(
        sdk: &aws_config::SdkConfig,
        vars: &crate::config::Vars,
    ) -> Result<Self, crate::config::MissingVar> {
        let client = aws_sdk_eventbridge::Client::new(sdk);
        Ok(EventBridgeBus::new(client, vars.var("EVENT_BUS_NAME")?))
    }

    fn entry(&self, e: &Envelope) -> Result<PutEventsRequestEntry, Error> {
        Ok(PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(e.payload.source())
            .detail_type(e.payload.detail_type())
            .detail(serde_json::to_string(e)?)
            .build())
    }
}

impl EventBus for EventBridgeBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), Error> {
        // PutEvents takes at most 10 entries per call.
        for chunk in events.chunks(10) {
            let entries = chunk
                .iter()
                .map(|e| self.entry(e))
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| crate::aws::classify("PutEvents", e))?;
            if out.failed_entry_count() > 0 {
                let why = out
                    .entries()
                    .iter()
                    .filter_map(|e| e.error_message())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(Error::Unavailable(format!(
                    "PutEvents: {} entries failed: {why}",
                    out.failed_entry_count()
                )));
            }
        }
        Ok(())
    }
}

/// Commands go on the bus too; a rule routes each to its service's queue.
impl CommandTransport for EventBridgeBus {
    async fn send(&self, command: &Envelope) -> Result<(), Error> {
        self.publish(std::slice::from_ref(command)).await
    }
}
