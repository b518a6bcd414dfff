//! The double-entry journal: every executed trade posts two lines of equal size and opposite
//! sign, so a trade's lines, and therefore every balance sheet, sum to zero.
//!
//! Amounts are signed, debit `+` and credit `−`, at the trade's notional `quantity × price`
//! (exact; at most `1e12`):
//!
//! | trade | `securities:SYMBOL` | `cash` |
//! |-------|---------------------|--------|
//! | BUY   | `+notional`         | `−notional` |
//! | SELL  | `−notional`         | `+notional` |

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ids::AccountId;
use super::money::{Amount, Inexact, exact_mul};
use super::trades::{Side, Symbol, TradeExecuted};

/// The cash account of every trading account.
pub const CASH: &str = "cash";

/// A ledger account name: `cash` or `securities:<SYMBOL>`.
pub fn securities(symbol: &Symbol) -> String {
    format!("securities:{symbol}")
}

/// One journal line, as stored and as `GET /accounts/{accountId}/ledger` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// `<tradeId>-<line>`: stable, so reposting a trade can never create new lines.
    pub entry_id: String,
    pub trade_id: Uuid,
    pub account_id: AccountId,
    /// The account's trade sequence number: entries list in trade order.
    pub sequence: u64,
    /// The ledger account: `cash` or `securities:<SYMBOL>`.
    pub account: String,
    /// Signed: debit `+`, credit `−`.
    pub amount: Amount,
    pub posted_at: DateTime<Utc>,
}

/// The two lines an executed trade posts, debit first.
pub fn journal(trade: &TradeExecuted) -> Result<[Entry; 2], Inexact> {
    let notional = exact_mul(trade.order.quantity.get(), trade.order.price.get())?;
    let (debit, credit) = match trade.order.side {
        Side::Buy => (securities(&trade.order.symbol), CASH.to_owned()),
        Side::Sell => (CASH.to_owned(), securities(&trade.order.symbol)),
    };
    let line = |n: u8, account: String, amount| Entry {
        entry_id: format!("{}-{n}", trade.order.trade_id),
        trade_id: trade.order.trade_id,
        account_id: trade.order.account_id.clone(),
        sequence: trade.sequence,
        account,
        amount: Amount::new(amount),
        posted_at: trade.executed_at,
    };
    Ok([line(1, debit, notional), line(2, credit, -notional)])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;

    use super::*;
    use crate::domain::money::exact_add;
    use crate::domain::positions::tests::{Rng, dec, trade};

    #[test]
    fn a_buy_debits_securities_and_credits_cash() {
        let t = trade(Side::Buy, 10 * 100_000_000, 12_345_000_000, 1);
        let [debit, credit] = journal(&t).unwrap();
        assert_eq!(
            (debit.account.as_str(), debit.amount.to_string()),
            ("securities:ACME", "1234.5".to_owned())
        );
        assert_eq!(
            (credit.account.as_str(), credit.amount.to_string()),
            ("cash", "-1234.5".to_owned())
        );
        assert_eq!(debit.entry_id, format!("{}-1", t.order.trade_id));
        let [debit, _] = journal(&trade(Side::Sell, 1, 1, 2)).unwrap();
        assert_eq!(debit.account, CASH);
        assert_eq!(debit.amount.to_string(), "0.0000000000000001");
    }

    #[test]
    fn property_every_journal_and_every_ledger_balances() {
        for seed in 0..300u64 {
            let mut rng = Rng(seed);
            let mut balances: BTreeMap<String, Decimal> = BTreeMap::new();
            // reference: cash is minus the signed notional of every trade, in 10^-16 units
            let mut cash_units: i128 = 0;
            for seq in 1..=30 {
                let side = if rng.below(2) == 0 {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let (q, p) = (rng.units(100_000), rng.units(10_000));
                let lines = journal(&trade(side, q, p, seq)).unwrap();
                let sum = lines.iter().map(|l| l.amount.get()).sum::<Decimal>();
                assert_eq!(sum, Decimal::ZERO, "seed {seed}: a trade's lines sum to 0");
                for l in &lines {
                    let b = balances.entry(l.account.clone()).or_default();
                    *b = exact_add(*b, l.amount.get()).unwrap();
                }
                cash_units += if side == Side::Buy { -q * p } else { q * p };
                let total = balances.values().copied().sum::<Decimal>();
                assert_eq!(total, Decimal::ZERO, "seed {seed}: the ledger balances");
                assert_eq!(balances[CASH], dec(cash_units, 16), "seed {seed}");
            }
        }
    }
}
