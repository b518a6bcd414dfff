//! The PENDING trade written before its command is sent, so that `GET /trades/{id}` shows it
//! as soon as the `202` is sent (`shared::command::Provisional` gives the general contract).
//!
//! Every failure between the two writes is resolved explicitly:
//!
//! - **the send fails** → the PENDING trade is withdrawn *on condition that it is still
//!   PENDING* and the caller gets `503` (and may retry). If the condition fails, the worker
//!   already decided the trade, so the command did reach the queue after all (an ambiguous
//!   failure): accepted.
//! - **the send fails ambiguously and the withdrawal wins** → the trade is gone but the command
//!   is queued: the worker writes the whole decided trade (the command carries every field),
//!   so it reappears EXECUTED or REJECTED. A retry with the same `Idempotency-Key` derives the
//!   same trade and command ids, so nothing runs twice (the worker's inbox and FIFO
//!   deduplication drop the second send).
//! - **the withdrawal fails too** → the trade stays PENDING with no command behind it until the
//!   caller retries with the same key, which finds the PENDING trade and sends the command
//!   again.

use shared::{
    Error,
    command::{Compensated, Provisional, Provisioned},
    domain::trades::{Trade, TradeStatus},
    store::trades::{Created, TradeStore, Withdrawn},
};

/// A submitted trade, PENDING until the worker decides it.
pub struct ProvisionalTrade<'a, S> {
    pub store: &'a S,
    pub trade: Trade,
}

impl<S: TradeStore> Provisional for ProvisionalTrade<'_, S> {
    async fn write(&self) -> Result<Provisioned, Error> {
        Ok(match self.store.create_pending(&self.trade).await? {
            Created::Created => Provisioned::Written,
            // An earlier attempt of the same request (same derived id) got this far.
            Created::Exists(existing) if existing.status == TradeStatus::Pending => {
                Provisioned::Written
            }
            Created::Exists(_) => Provisioned::Applied,
        })
    }

    async fn undo(&self) -> Result<Compensated, Error> {
        Ok(
            match self.store.withdraw(self.trade.order.trade_id).await? {
                Withdrawn::Withdrawn => Compensated::Undone,
                Withdrawn::Decided => Compensated::Applied,
            },
        )
    }
}
