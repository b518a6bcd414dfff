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
    worker::Worker,
};

/// The positions worker: its store.
pub struct App<S>(pub S);

/// The app as deployed: its DynamoDB store.
pub type AwsApp = App<DynamoPositionStore>;

/// Builds the function from the template's environment: `TABLE_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    shared::store::open(sdk, vars).map(App)
}

/// One account's trades apply in trade order (the default order key: the account; within a
/// batch, by their execution sequence); accounts concurrently.
impl<S: PositionStore> Worker for App<S> {
    const NAME: &'static str = "the positions worker";
    const HANDLES: &'static [&'static str] = &["TradeExecuted"];

    fn sequence(env: &Envelope) -> Option<u64> {
        match &env.payload {
            Payload::TradeExecuted(t) => Some(t.sequence),
            _ => None,
        }
    }

    async fn apply(&self, env: Envelope) -> Result<(), Error> {
        match &env.payload {
            Payload::TradeExecuted(trade) => apply_trade(&self.0, trade).await,
            other => Err(Self::refuse(other)),
        }
    }
}

async fn apply_trade<S: PositionStore>(app: &S, trade: &TradeExecuted) -> Result<(), Error> {
    read_decide_write("the account's positions", async || {
        let last = app.last_applied(&trade.order.account_id).await?;
        match cursor(last, trade.sequence) {
            Cursor::Next => {}
            Cursor::Old => {
                let (trade_id, sequence) = (trade.order.trade_id, trade.sequence);
                tracing::info!(%trade_id, sequence, "trade applied before; ignored");
                return Ok(Some(()));
            }
            Cursor::Early { expected } => {
                return Err(Error::Unavailable(format!(
                    "trade {} of account {} waits for trade {expected}",
                    trade.sequence, trade.order.account_id
                )));
            }
        }
        let (account, symbol) = (&trade.order.account_id, &trade.order.symbol);
        let current = app
            .get(account, symbol)
            .await?
            .unwrap_or_else(|| Position::flat(account.clone(), symbol.clone()));
        // A trade that cannot apply (a sale beyond the position) is a bug upstream: poison.
        let next = current
            .apply(trade)
            .map_err(|e| Error::invalid("data", e.to_string()))?;
        Ok((app.advance(last, &next).await? == Write::Done).then_some(()))
    })
    .await
}
