//! The ledger worker: posts each `TradeExecuted` as two balanced journal lines, once.
//!
//! Deduplication is by the lines themselves: their keys derive from the trade (account,
//! sequence, line), and posting writes them only if absent, in one transaction with the balance
//! updates, so a duplicate changes nothing even if it arrives with another envelope id. Postings
//! commute, so late or early delivery changes nothing either: entries still list in trade
//! order (their keys sort by sequence number).

use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    domain::ledger::journal,
    envelope::{Envelope, Payload},
    store::{
        Write,
        ledger::{DynamoLedgerStore, LedgerStore},
    },
    worker::process_batch,
};

/// The command and event types (`detail-type`s) this worker applies; any other is refused as
/// a poison message. `template.yaml` must deliver exactly these to its queue (checked by
/// `every_message_type_reaches_exactly_the_workers_that_handle_it`; docs/ARCHITECTURE.md,
/// §Commands and events).
pub const HANDLES: &[&str] = &["TradeExecuted"];

/// The app of this function is its store.
pub type AwsApp = DynamoLedgerStore;

/// Builds the function from the template's environment: `TABLE_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    shared::store::open(sdk, vars)
}

pub async fn handle<S: LedgerStore>(app: &S, event: SqsEvent) -> SqsBatchResponse {
    process_batch(event, order_key, |env| apply(app, env)).await
}

/// One account's postings one at a time (they update the same balance items, and concurrent
/// transactions on one item would conflict); accounts concurrently.
fn order_key(env: &Envelope) -> String {
    match &env.payload {
        Payload::TradeExecuted(t) => t.account_id.to_string(),
        _ => env.id.to_string(),
    }
}

async fn apply<S: LedgerStore>(app: &S, env: Envelope) -> Result<(), Error> {
    let Payload::TradeExecuted(trade) = &env.payload else {
        return Err(Error::invalid(
            "detail-type",
            format!(
                "the ledger worker does not handle {}",
                env.payload.detail_type()
            ),
        ));
    };
    let lines = journal(trade).map_err(|e| Error::invalid("data", e.to_string()))?;
    if app.post(&lines).await? == Write::Duplicate {
        tracing::info!(trade_id = %trade.trade_id, "trade posted before; ignored");
    }
    Ok(())
}
