//! The trades worker: executes or rejects submitted trades against the account's holdings,
//! in submission order per account, each exactly once, and publishes `TradeExecuted` /
//! `TradeRejected`.
//!
//! Order: commands arrive from the trades FIFO queue, one message group per account, so SQS
//! hands over an account's trades in order and never the next before the previous one is
//! done; within a batch, [`shared::worker::handle`] keeps an account's trades in order and
//! fails the rest of the account's trades after a failure (so none overtakes one that will be
//! retried).
//! Once: the decision, the holding, the account's execution count and the inbox entry (with
//! the events to publish) are one transaction, conditional on the count read before deciding.

use aws_config::SdkConfig;
use chrono::Utc;
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    domain::trades::{Decision, Outcome, SubmitTrade, decide},
    envelope::{Envelope, Payload},
    store::{
        inbox::InboxEntry,
        read_decide_write,
        trades::{DynamoTradeStore, TradeStore},
    },
    worker::{Applied, Worker, exactly_once},
};

/// The trades worker: its store (the trades table, with the inbox) and the bus it publishes to.
pub struct App<S, B> {
    pub store: S,
    pub bus: B,
}

/// The app as deployed: DynamoDB and EventBridge.
pub type AwsApp = App<DynamoTradeStore, EventBridgeBus>;

/// Builds the function from the template's environment: `TABLE_NAME`, `EVENT_BUS_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    let bus = EventBridgeBus::open(sdk, vars)?;
    Ok(App {
        bus,
        store: shared::store::open(sdk, vars)?,
    })
}

/// Trades of one account apply in batch (= submission) order (the default order key: the
/// account); accounts concurrently.
impl<S: TradeStore, B: EventBus> Worker for App<S, B> {
    const NAME: &'static str = "the trades worker";
    const HANDLES: &'static [&'static str] = &["SubmitTrade"];

    async fn apply(&self, env: Envelope) -> Result<(), Error> {
        match &env.payload {
            Payload::SubmitTrade(cmd) => {
                exactly_once(&self.store, &self.bus, &env, || self.execute(&env, cmd)).await
            }
            other => Err(Self::refuse(other)),
        }
    }
}

impl<S: TradeStore, B: EventBus> App<S, B> {
    async fn execute(&self, env: &Envelope, cmd: &SubmitTrade) -> Result<Applied, Error> {
        read_decide_write("the account's book", async || {
            let book = self
                .store
                .book(&cmd.order.account_id, &cmd.order.symbol)
                .await?;
            let decision = decide(cmd, book.holding, book.executed);
            let (trade, outcome) = decision.outcome(cmd, Utc::now());
            let holding = match &decision {
                Decision::Execute { holding, .. } => Some(*holding),
                Decision::Reject { .. } => None,
            };
            let message = match outcome {
                Outcome::Executed(e) => Payload::TradeExecuted(e),
                Outcome::Rejected(e) => {
                    let trade_id = cmd.order.trade_id;
                    tracing::info!(%trade_id, reason = %e.reason, "trade rejected");
                    Payload::TradeRejected(e)
                }
            };
            let events = vec![Envelope::caused_by(env, message)];
            let record = InboxEntry::new(env.id, events.clone());
            let write = self
                .store
                .decide(book.executed, &trade, holding, &record)
                .await?;
            Ok(write.applied(events))
        })
        .await
    }
}
