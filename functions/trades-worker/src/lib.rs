//! The trades worker: executes or rejects submitted trades against the account's holdings,
//! in submission order per account, each exactly once, and publishes `TradeExecuted` /
//! `TradeRejected`.
//!
//! Order: commands arrive from the trades FIFO queue, one message group per account, so SQS
//! hands over an account's trades in order and never the next before the previous one is
//! done; within a batch, [`process_batch`] keeps an account's trades in order and fails the
//! rest of the account's trades after a failure (so none overtakes one that will be retried).
//! Once: the decision, the holding, the account's execution count and the inbox record (with
//! the events to publish) are one transaction, conditional on the count read before deciding.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    config,
    domain::trades::{Decision, Outcome, SubmitTrade, decide},
    events::{Envelope, Message},
    store::{
        inbox::InboxRecord,
        trades::{Decided, DynamoTradeStore, TradeStore},
    },
    worker::{Applied, exactly_once, process_batch},
};

pub struct Config {
    pub table_name: String,
    pub event_bus_name: String,
}

impl Config {
    pub fn from_env() -> Result<Self, config::MissingVar> {
        Ok(Config {
            table_name: config::var("TABLE_NAME")?,
            event_bus_name: config::var("EVENT_BUS_NAME")?,
        })
    }
}

pub struct App<S, B> {
    pub store: S,
    pub bus: B,
}

pub type AwsApp = App<DynamoTradeStore, EventBridgeBus>;

impl AwsApp {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        App {
            store: DynamoTradeStore::new(aws_sdk_dynamodb::Client::new(sdk), config.table_name),
            bus: EventBridgeBus::new(aws_sdk_eventbridge::Client::new(sdk), config.event_bus_name),
        }
    }
}

/// Optimistic-concurrency retries when the account's book moves between read and write (only
/// when a redelivered copy of an earlier trade races this one).
const WRITE_ATTEMPTS: usize = 5;

pub async fn handle<S: TradeStore, B: EventBus>(
    app: &App<S, B>,
    event: SqsEvent,
) -> SqsBatchResponse {
    process_batch(event, order_key, |env| apply(app, env)).await
}

/// Trades of one account in batch (= submission) order; accounts concurrently.
fn order_key(env: &Envelope) -> String {
    match &env.message {
        Message::SubmitTrade(cmd) => cmd.account_id.to_string(),
        _ => env.id.to_string(),
    }
}

async fn apply<S: TradeStore, B: EventBus>(app: &App<S, B>, env: Envelope) -> Result<(), Error> {
    match &env.message {
        Message::SubmitTrade(cmd) => {
            exactly_once(&app.store, &app.bus, &env, || execute(app, &env, cmd)).await
        }
        other => Err(Error::invalid(
            "detail-type",
            format!("the trades worker does not handle {}", other.detail_type()),
        )),
    }
}

async fn execute<S: TradeStore, B>(
    app: &App<S, B>,
    env: &Envelope,
    cmd: &SubmitTrade,
) -> Result<Applied, Error> {
    for _ in 0..WRITE_ATTEMPTS {
        let book = app.store.book(&cmd.account_id, &cmd.symbol).await?;
        let decision = decide(cmd, book.holding, book.executed);
        let (trade, outcome) = decision.outcome(cmd, Utc::now());
        let holding = match &decision {
            Decision::Execute { holding, .. } => Some(*holding),
            Decision::Reject { .. } => None,
        };
        let message = match outcome {
            Outcome::Executed(e) => Message::TradeExecuted(e),
            Outcome::Rejected(e) => {
                tracing::info!(trade_id = %cmd.trade_id, reason = %e.reason, "trade rejected");
                Message::TradeRejected(e)
            }
        };
        let events = vec![Envelope::caused_by(env, message)];
        let record = InboxRecord::new(env.id, events.clone());
        match app
            .store
            .decide(book.executed, &trade, holding, &record)
            .await?
        {
            Decided::Done => return Ok(Applied::Done(events)),
            Decided::Duplicate => return Ok(Applied::Duplicate),
            Decided::Conflict => continue,
        }
    }
    Err(Error::Unavailable(
        "the account's book kept changing during the trade".into(),
    ))
}
