//! The ledger worker: posts each `TradeExecuted` as two balanced journal lines, once.
//!
//! Deduplication is by the lines themselves: their keys derive from the trade (account,
//! sequence, line), and posting writes them only if absent, in one transaction with the balance
//! updates, so a duplicate changes nothing even if it arrives with another envelope id. Postings
//! commute, so late or early delivery changes nothing either: entries still list in trade
//! order (their keys sort by sequence number).

use aws_config::SdkConfig;
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    domain::ledger::journal,
    envelope::{Envelope, Payload},
    store::{
        Write,
        ledger::{DynamoLedgerStore, LedgerStore},
    },
    worker::Worker,
};

/// The ledger worker: its store.
pub struct App<S>(pub S);

/// The app as deployed: its DynamoDB store.
pub type AwsApp = App<DynamoLedgerStore>;

/// Builds the function from the template's environment: `TABLE_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    shared::store::open(sdk, vars).map(App)
}

/// One account's postings apply one at a time (the default order key: the account; they
/// update the same balance items, and concurrent transactions on one item would conflict);
/// accounts concurrently.
impl<S: LedgerStore> Worker for App<S> {
    const NAME: &'static str = "the ledger worker";
    const HANDLES: &'static [&'static str] = &["TradeExecuted"];

    async fn apply(&self, env: Envelope) -> Result<(), Error> {
        let Payload::TradeExecuted(trade) = &env.payload else {
            return Err(Self::refuse(&env.payload));
        };
        let lines = journal(trade).map_err(|e| Error::invalid("data", e.to_string()))?;
        if self.0.post(&lines).await? == Write::Duplicate {
            tracing::info!(trade_id = %trade.order.trade_id, "trade posted before; ignored");
        }
        Ok(())
    }
}
