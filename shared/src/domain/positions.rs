//! Positions: what an account holds of a symbol, at what average cost, and the profit or loss
//! its sales realized (weighted-average-cost method).
//!
//! - BUY `q` at `p`: `averagePrice ← (Q·avg + q·p) / (Q + q)` rounded half-to-even to 8
//!   places, `quantity ← Q + q`.
//! - SELL `q` at `p`: `realizedPnl ← realizedPnl + q·(p − averagePrice)` (exact), `quantity ←
//!   Q − q`; the average price is unchanged, and reset to 0 when the position is closed.
//!
//! Rules apply in trade order: the account's executed trades are numbered 1, 2, 3, … and the
//! position store keeps the last applied number per account ([`Cursor`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::AccountId;
use super::money::{Amount, Inexact, exact_add, exact_mul, exact_sub, weighted_average};
use super::trades::{Side, Symbol, TradeExecuted};

/// A position as stored and as `GET /accounts/{accountId}/positions/{symbol}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub account_id: AccountId,
    pub symbol: Symbol,
    /// Never negative: a sale beyond it is refused (the trades service never executes one).
    pub quantity: Amount,
    /// Weighted average cost of the open quantity; 0 when flat.
    pub average_price: Amount,
    pub realized_pnl: Amount,
    /// The account trade sequence number of the last trade applied to this position.
    pub last_sequence: u64,
    pub updated_at: DateTime<Utc>,
}

/// Why a trade cannot be applied to a position. Both mean the event is wrong for this state,
/// so retrying cannot help: the message belongs in the DLQ.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PositionError {
    #[error("selling {sold} exceeds the open quantity {open}")]
    Oversold { sold: Amount, open: Amount },
    #[error(transparent)]
    Inexact(#[from] Inexact),
}

/// Where an event stands relative to what the account has applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The next one: apply it.
    Next,
    /// Applied before (a duplicate or a redelivery): change nothing.
    Old,
    /// An earlier trade has not been applied yet: wait for it (fail, SQS redelivers).
    Early { expected: u64 },
}

/// Classifies trade `sequence` given the last applied one.
pub fn cursor(last_applied: u64, sequence: u64) -> Cursor {
    if sequence <= last_applied {
        Cursor::Old
    } else if sequence == last_applied + 1 {
        Cursor::Next
    } else {
        Cursor::Early {
            expected: last_applied + 1,
        }
    }
}

impl Position {
    pub fn flat(account_id: AccountId, symbol: Symbol) -> Position {
        Position {
            account_id,
            symbol,
            quantity: Amount::ZERO,
            average_price: Amount::ZERO,
            realized_pnl: Amount::ZERO,
            last_sequence: 0,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    /// The position after `trade` (which must be for this account and symbol).
    pub fn apply(&self, trade: &TradeExecuted) -> Result<Position, PositionError> {
        let (open, avg) = (self.quantity.get(), self.average_price.get());
        let (qty, price) = (trade.quantity.get(), trade.price.get());
        let mut next = Position {
            last_sequence: trade.sequence,
            updated_at: trade.executed_at,
            ..self.clone()
        };
        match trade.side {
            Side::Buy => {
                next.average_price = weighted_average(open, avg, qty, price)?.into();
                next.quantity = exact_add(open, qty)?.into();
            }
            Side::Sell => {
                if qty > open {
                    return Err(PositionError::Oversold {
                        sold: trade.quantity.get().into(),
                        open: self.quantity,
                    });
                }
                let pnl = exact_mul(qty, exact_sub(price, avg)?)?;
                next.realized_pnl = exact_add(self.realized_pnl.get(), pnl)?.into();
                next.quantity = exact_sub(open, qty)?.into();
                if next.quantity == Amount::ZERO {
                    next.average_price = Amount::ZERO;
                }
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::money::{Price, Quantity};
    use rust_decimal::Decimal;
    use uuid::Uuid;

    /// SplitMix64: a tiny seeded generator, so failures reproduce from the printed seed.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A positive decimal in units of 10^-8: sometimes whole, sometimes with cents,
        /// sometimes with all 8 places, so every scale is exercised.
        pub(crate) fn units(&mut self, max_whole: u64) -> i128 {
            let whole = i128::from(self.below(max_whole));
            let frac = match self.below(3) {
                0 => 0,
                1 => i128::from(self.below(100)) * 1_000_000,
                _ => i128::from(self.below(100_000_000)),
            };
            (whole * 100_000_000 + frac).max(1)
        }
    }

    pub(crate) fn dec(units: i128, scale: u32) -> Decimal {
        Decimal::from_i128_with_scale(units, scale).normalize()
    }

    pub(crate) fn trade(side: Side, qty: i128, price: i128, sequence: u64) -> TradeExecuted {
        TradeExecuted {
            trade_id: Uuid::new_v4(),
            account_id: "acc".parse().unwrap(),
            symbol: "ACME".parse().unwrap(),
            side,
            quantity: Quantity::try_from(dec(qty, 8)).unwrap(),
            price: Price::try_from(dec(price, 8)).unwrap(),
            sequence,
            executed_at: Utc::now(),
        }
    }

    /// The reference: the same rules written independently on 128-bit integers
    /// (quantities and prices in 10^-8, money in 10^-16).
    #[derive(Default, Debug)]
    struct Reference {
        qty: i128,
        avg: i128,
        pnl: i128,
    }

    impl Reference {
        fn apply(&mut self, side: Side, q: i128, p: i128) {
            match side {
                Side::Buy => {
                    let n = self.qty * self.avg + q * p;
                    let d = self.qty + q;
                    let (quo, rem) = (n / d, n % d);
                    self.avg = quo + i128::from(2 * rem > d || (2 * rem == d && quo % 2 == 1));
                    self.qty += q;
                }
                Side::Sell => {
                    self.pnl += q * (p - self.avg);
                    self.qty -= q;
                    if self.qty == 0 {
                        self.avg = 0;
                    }
                }
            }
        }
    }

    #[test]
    fn hand_calculation_buy_buy_sell() {
        let mut p = Position::flat("acc".parse().unwrap(), "ACME".parse().unwrap());
        for t in [
            trade(Side::Buy, 10 * 100_000_000, 100 * 100_000_000, 1),
            trade(Side::Buy, 5 * 100_000_000, 130 * 100_000_000, 2),
            trade(Side::Sell, 12 * 100_000_000, 150 * 100_000_000, 3),
        ] {
            p = p.apply(&t).unwrap();
        }
        // avg = (10·100 + 5·130) / 15 = 110; pnl = 12 · (150 − 110) = 480
        assert_eq!(p.quantity.to_string(), "3");
        assert_eq!(p.average_price.to_string(), "110");
        assert_eq!(p.realized_pnl.to_string(), "480");
        assert_eq!(p.last_sequence, 3);
        let over = trade(Side::Sell, 4 * 100_000_000, 1, 4);
        assert!(matches!(
            p.apply(&over),
            Err(PositionError::Oversold { .. })
        ));
    }

    #[test]
    fn property_random_sequences_match_the_reference_and_never_go_negative() {
        for seed in 0..300u64 {
            let mut rng = Rng(seed);
            let mut pos = Position::flat("acc".parse().unwrap(), "ACME".parse().unwrap());
            let mut reference = Reference::default();
            for seq in 1..=40 {
                let price = rng.units(10_000);
                let (side, qty) = if reference.qty > 0 && rng.below(2) == 0 {
                    // sell part or all of what is held
                    let q = if rng.below(4) == 0 {
                        reference.qty
                    } else {
                        (rng.units(1_000)).min(reference.qty)
                    };
                    (Side::Sell, q)
                } else {
                    (Side::Buy, rng.units(1_000))
                };
                pos = pos
                    .apply(&trade(side, qty, price, seq))
                    .unwrap_or_else(|e| panic!("seed {seed} trade {seq}: {e}"));
                reference.apply(side, qty, price);
                assert!(pos.quantity.get() >= Decimal::ZERO, "seed {seed}");
                assert_eq!(pos.quantity.get(), dec(reference.qty, 8), "seed {seed}");
                assert_eq!(
                    pos.average_price.get(),
                    dec(reference.avg, 8),
                    "seed {seed}"
                );
                assert_eq!(
                    pos.realized_pnl.get(),
                    dec(reference.pnl, 16),
                    "seed {seed}"
                );
            }
        }
    }

    #[test]
    fn events_are_classified_against_the_cursor() {
        assert_eq!(cursor(0, 1), Cursor::Next);
        assert_eq!(cursor(3, 3), Cursor::Old);
        assert_eq!(cursor(3, 1), Cursor::Old);
        assert_eq!(cursor(3, 5), Cursor::Early { expected: 4 });
    }
}
