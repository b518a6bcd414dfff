//! The positions worker: applies `TradeExecuted` events to positions, in trade order per
//! account, each once.
//!
//! The events come from a standard queue (EventBridge → SQS), which may deliver late,
//! early or twice. Each event carries the account's trade sequence number and the store keeps
//! the last one applied per account, so an event is applied only when it is the next one
//! (moving the cursor in the same transaction as the position), ignored when it is old (a
//! duplicate), and failed when it is early: SQS redelivers it after the missing one has
//! arrived. The cursor is the deduplication record, so no separate inbox is needed: nothing is
//! published, and even a republished copy with a new envelope id is recognised.

use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    domain::positions::{Cursor, Position, cursor},
    domain::trades::TradeExecuted,
    envelope::{Envelope, Payload},
    store::{
        Write,
        positions::{DynamoPositionStore, PositionStore},
        read_decide_write,
    },
    worker::{decode, process_batch},
};

/// The command and event types (`detail-type`s) this worker applies; any other is refused as
/// a poison message. `template.yaml` must deliver exactly these to its queue (checked by
/// `every_message_type_reaches_exactly_the_workers_that_handle_it`; docs/ARCHITECTURE.md,
/// §Commands and events).
pub const HANDLES: &[&str] = &["TradeExecuted"];

/// The app of this function is its store.
pub type AwsApp = DynamoPositionStore;

/// Builds the function from the template's environment: `TABLE_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    shared::store::open(sdk, vars)
}

pub async fn handle<S: PositionStore>(app: &S, event: SqsEvent) -> SqsBatchResponse {
    process_batch(in_trade_order(event), order_key, |env| apply(app, env)).await
}

/// Sorts a batch by account and trade sequence (undecodable records last), so a batch holding
/// trades 2 and 1 applies 1 then 2 instead of failing 2 and everything after it.
fn in_trade_order(mut event: SqsEvent) -> SqsEvent {
    event
        .records
        .sort_by_cached_key(|r| match decode(r).map(|e| e.payload) {
            Ok(Payload::TradeExecuted(t)) => (false, t.account_id.to_string(), t.sequence),
            _ => (true, String::new(), 0),
        });
    event
}

fn order_key(env: &Envelope) -> String {
    match &env.payload {
        Payload::TradeExecuted(t) => t.account_id.to_string(),
        _ => env.id.to_string(),
    }
}

async fn apply<S: PositionStore>(app: &S, env: Envelope) -> Result<(), Error> {
    match &env.payload {
        Payload::TradeExecuted(trade) => apply_trade(app, trade).await,
        other => Err(Error::invalid(
            "detail-type",
            format!(
                "the positions worker does not handle {}",
                other.detail_type()
            ),
        )),
    }
}

async fn apply_trade<S: PositionStore>(app: &S, trade: &TradeExecuted) -> Result<(), Error> {
    read_decide_write("the account's positions", async || {
        let last = app.last_applied(&trade.account_id).await?;
        match cursor(last, trade.sequence) {
            Cursor::Next => {}
            Cursor::Old => {
                tracing::info!(trade_id = %trade.trade_id, sequence = trade.sequence, "trade applied before; ignored");
                return Ok(Some(()));
            }
            Cursor::Early { expected } => {
                return Err(Error::Unavailable(format!(
                    "trade {} of account {} waits for trade {expected}",
                    trade.sequence, trade.account_id
                )));
            }
        }
        let current = app
            .get(&trade.account_id, &trade.symbol)
            .await?
            .unwrap_or_else(|| Position::flat(trade.account_id.clone(), trade.symbol.clone()));
        // A trade that cannot apply (a sale beyond the position) is a bug upstream: poison.
        let next = current
            .apply(trade)
            .map_err(|e| Error::invalid("data", e.to_string()))?;
        Ok((app.advance(last, &next).await? == Write::Done).then_some(()))
    })
    .await
}
