//! Positions: what an account holds of a symbol, what it cost, and the profit or loss its
//! sales realized (weighted-average-cost method).
//!
//! The position keeps the exact **book cost** of its open quantity; nothing is ever computed
//! from a rounded value:
//!
//! - BUY `q` at `p`: `bookCost ← bookCost + q·p`, `quantity ← Q + q` (both exact).
//! - SELL `q` at `p`: the sale removes the book cost of what it sells, `removed = bookCost ×
//!   q / Q` (multiplied before divided, rounded once half-to-even to 16 places, and all of it
//!   when the position closes); `realizedPnl ← realizedPnl + q·p − removed`, `bookCost ←
//!   bookCost − removed`, `quantity ← Q − q`.
//! - `averagePrice` is derived for display only: `bookCost / quantity` rounded half-to-even to
//!   8 places, 0 when flat.
//!
//! So, exactly, whatever the trades: `realizedPnl − bookCost = Σ sells − Σ buys` (each `q·p`),
//! and a closed position has book cost 0. BUY 10 @ 100.50, BUY 5 @ 110, SELL 3 @ 120 realizes
//! 360 − 1555 × 3/15 = 49, where subtracting a rounded average (103.66666667) would give
//! 48.99999999.
//!
//! Rules apply in trade order: the account's executed trades are numbered 1, 2, 3, … and the
//! position store keeps the last applied number per account ([`Cursor`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::AccountId;
use super::money::{Amount, Inexact, exact_add, exact_mul, exact_sub, quotient, share};
use super::trades::{Side, Symbol, TradeExecuted};

/// A position as stored and as `GET /accounts/{accountId}/positions/{symbol}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub account_id: AccountId,
    pub symbol: Symbol,
    /// Never negative: a sale beyond it is refused (the trades service never executes one).
    pub quantity: Amount,
    /// What the open quantity cost, exactly (what its purchases paid, less the cost of what was
    /// sold since); 0 when flat.
    pub book_cost: Amount,
    /// `book_cost / quantity`, rounded half-to-even to 8 places, for display: never used in a
    /// computation. 0 when flat.
    pub average_price: Amount,
    /// Proceeds of the sales less the book cost they removed, exact.
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
            book_cost: Amount::ZERO,
            average_price: Amount::ZERO,
            realized_pnl: Amount::ZERO,
            last_sequence: 0,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    /// The position after `trade` (which must be for this account and symbol).
    pub fn apply(&self, trade: &TradeExecuted) -> Result<Position, PositionError> {
        let (open, cost) = (self.quantity.get(), self.book_cost.get());
        let (qty, price) = (trade.order.quantity.get(), trade.order.price.get());
        let notional = exact_mul(qty, price)?;
        let mut next = Position {
            last_sequence: trade.sequence,
            updated_at: trade.executed_at,
            ..self.clone()
        };
        match trade.order.side {
            Side::Buy => {
                next.quantity = exact_add(open, qty)?.into();
                next.book_cost = exact_add(cost, notional)?.into();
            }
            Side::Sell => {
                if qty > open {
                    return Err(PositionError::Oversold {
                        sold: trade.order.quantity.get().into(),
                        open: self.quantity,
                    });
                }
                let removed = share(cost, qty, open)?;
                let pnl = exact_sub(notional, removed)?;
                next.realized_pnl = exact_add(self.realized_pnl.get(), pnl)?.into();
                next.quantity = exact_sub(open, qty)?.into();
                next.book_cost = exact_sub(cost, removed)?.into();
            }
        }
        next.average_price = if next.quantity == Amount::ZERO {
            Amount::ZERO
        } else {
            quotient(next.book_cost.get(), next.quantity.get())?.into()
        };
        Ok(next)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::money::{Price, Quantity};
    use crate::domain::trades::tests::order;
    use rust_decimal::Decimal;

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
            order: order(
                side,
                Quantity::try_from(dec(qty, 8)).unwrap(),
                Price::try_from(dec(price, 8)).unwrap(),
            ),
            sequence,
            executed_at: Utc::now(),
        }
    }

    /// The reference: the same rules written independently on 128-bit integers
    /// (quantities and prices in 10^-8, money in 10^-16), multiplying then dividing directly
    /// (the small values of the property test cannot overflow).
    #[derive(Default, Debug)]
    struct Reference {
        qty: i128,
        cost: i128,
        pnl: i128,
    }

    /// `n / d` rounded half-to-even (`n >= 0`, `d > 0`).
    fn div_even(n: i128, d: i128) -> i128 {
        let (quo, rem) = (n / d, n % d);
        quo + i128::from(2 * rem > d || (2 * rem == d && quo % 2 == 1))
    }

    impl Reference {
        fn apply(&mut self, side: Side, q: i128, p: i128) {
            match side {
                Side::Buy => {
                    self.cost += q * p;
                    self.qty += q;
                }
                Side::Sell => {
                    let removed = div_even(self.cost * q, self.qty);
                    self.pnl += q * p - removed;
                    self.cost -= removed;
                    self.qty -= q;
                }
            }
        }

        fn avg(&self) -> i128 {
            if self.qty == 0 {
                0
            } else {
                div_even(self.cost, self.qty)
            }
        }
    }

    fn position() -> Position {
        Position::flat("acc".parse().unwrap(), "ACME".parse().unwrap())
    }

    fn apply_all(trades: &[(Side, &str, &str)]) -> Position {
        let mut p = position();
        for (i, (side, q, price)) in trades.iter().enumerate() {
            let units = |s: &str| {
                let d = Decimal::from_str_exact(s).unwrap();
                (d * Decimal::from(100_000_000)).normalize().mantissa()
            };
            p = p
                .apply(&trade(*side, units(q), units(price), i as u64 + 1))
                .unwrap();
        }
        p
    }

    #[test]
    fn hand_calculation_buy_buy_sell() {
        let mut p = apply_all(&[
            (Side::Buy, "10", "100"),
            (Side::Buy, "5", "130"),
            (Side::Sell, "12", "150"),
        ]);
        // book 1650 for 15: avg 110; the sale removes 1650 × 12/15 = 1320: pnl 1800 − 1320
        assert_eq!(p.quantity.to_string(), "3");
        assert_eq!(p.average_price.to_string(), "110");
        assert_eq!(p.book_cost.to_string(), "330");
        assert_eq!(p.realized_pnl.to_string(), "480");
        assert_eq!(p.last_sequence, 3);
        let over = trade(Side::Sell, 4 * 100_000_000, 1, 4);
        assert!(matches!(
            p.apply(&over),
            Err(PositionError::Oversold { .. })
        ));
        p = p
            .apply(&trade(Side::Sell, 3 * 100_000_000, 100 * 100_000_000, 4))
            .unwrap();
        assert_eq!(
            (p.quantity, p.book_cost, p.average_price),
            (Amount::ZERO, Amount::ZERO, Amount::ZERO),
            "closed: nothing left on the book"
        );
        assert_eq!(p.realized_pnl.to_string(), "450");
    }

    #[test]
    fn the_book_cost_is_exact_where_the_average_price_is_rounded() {
        // Book 1005 + 550 = 1555 for 15 (average 103.666…): selling 3 @ 120 realizes
        // 360 − 1555 × 3/15 = 49 exactly, not 3 × (120 − 103.66666667) = 48.99999999.
        let p = apply_all(&[
            (Side::Buy, "10", "100.50"),
            (Side::Buy, "5", "110"),
            (Side::Sell, "3", "120"),
        ]);
        assert_eq!(p.realized_pnl.to_string(), "49");
        assert_eq!(p.book_cost.to_string(), "1244");
        assert_eq!(p.quantity.to_string(), "12");
        assert_eq!(p.average_price.to_string(), "103.66666667", "display only");
        // A third of a 1-unit book: the removed cost rounds once, at 16 places, and what it
        // leaves stays on the book, so selling the rest realizes the remainder exactly.
        let p = apply_all(&[
            (Side::Buy, "3", "0.33333333"),
            (Side::Sell, "1", "1"),
            (Side::Sell, "2", "1"),
        ]);
        assert_eq!(p.book_cost, Amount::ZERO);
        assert_eq!(p.realized_pnl.to_string(), "2.00000001", "3 − 0.99999999");
    }

    #[test]
    fn property_random_sequences_match_the_reference_and_balance_exactly() {
        for seed in 0..300u64 {
            let mut rng = Rng(seed);
            let mut pos = position();
            let mut reference = Reference::default();
            let (mut sells, mut buys) = (Decimal::ZERO, Decimal::ZERO);
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
                let t = trade(side, qty, price, seq);
                pos = pos
                    .apply(&t)
                    .unwrap_or_else(|e| panic!("seed {seed} trade {seq}: {e}"));
                reference.apply(side, qty, price);
                let notional = t.order.quantity.get() * t.order.price.get();
                match side {
                    Side::Buy => buys += notional,
                    Side::Sell => sells += notional,
                }
                assert!(pos.quantity.get() >= Decimal::ZERO, "seed {seed}");
                assert_eq!(pos.quantity.get(), dec(reference.qty, 8), "seed {seed}");
                assert_eq!(pos.book_cost.get(), dec(reference.cost, 16), "seed {seed}");
                assert_eq!(
                    pos.average_price.get(),
                    dec(reference.avg(), 8),
                    "seed {seed}"
                );
                assert_eq!(
                    pos.realized_pnl.get(),
                    dec(reference.pnl, 16),
                    "seed {seed}"
                );
                // Nothing is lost or made by rounding: what was realized and what is still on
                // the book account for every sale and purchase, exactly.
                assert_eq!(
                    pos.realized_pnl.get() - pos.book_cost.get(),
                    sells - buys,
                    "seed {seed} trade {seq}"
                );
                if pos.quantity == Amount::ZERO {
                    assert_eq!(pos.book_cost, Amount::ZERO, "seed {seed}: closed at cost 0");
                }
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
