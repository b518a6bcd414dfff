//! Trades: the order a client submits, the rule that executes or rejects it against the
//! account's holdings, and the events that announce the outcome.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ids::AccountId;
use super::money::{Amount, Price, Quantity, exact_add, exact_sub};

/// A ticker such as `ACME` or `BRK.B`: 1–12 characters of `[A-Z0-9.-]`, upper-cased on input.
/// It appears in keys and in ledger account names (`securities:ACME`), so no `#` or `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Symbol(String);

impl TryFrom<String> for Symbol {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let s = s.to_ascii_uppercase();
        let ok = !s.is_empty()
            && s.len() <= 12
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !ok {
            return Err("symbol must be 1 to 12 characters of letters, digits, '.' and '-'".into());
        }
        // A symbol is a path segment (`/accounts/{accountId}/positions/{symbol}`); `.` and `..`
        // are dot-segments that URL parsers remove (RFC 3986 §5.2.4), so they could never be
        // asked for.
        if s == "." || s == ".." {
            return Err("symbol must not be '.' or '..' (it could not be used in a URL)".into());
        }
        Ok(Symbol(s))
    }
}

impl std::str::FromStr for Symbol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Symbol::try_from(s.to_owned())
    }
}

impl From<Symbol> for String {
    fn from(s: Symbol) -> String {
        s.0
    }
}

impl Symbol {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Symbol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TradeStatus {
    Pending,
    Executed,
    Rejected,
}

impl TradeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeStatus::Pending => "PENDING",
            TradeStatus::Executed => "EXECUTED",
            TradeStatus::Rejected => "REJECTED",
        }
    }
}

/// The largest holding of one symbol an account may have: a BUY beyond it is REJECTED. It
/// bounds every quantity the positions service computes with.
pub const MAX_HOLDING: Decimal = Decimal::from_parts(0xD4A5_1000, 0xE8, 0, false, 0);

/// What a trade orders, as the client submitted it: carried unchanged by the command, both
/// outcome events and the stored trade, each of which flattens it (their JSON is one flat
/// object: `tradeId`, `accountId`, `symbol`, `side`, `quantity`, `price`, then their own
/// fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub trade_id: Uuid,
    pub account_id: AccountId,
    pub symbol: Symbol,
    pub side: Side,
    pub quantity: Quantity,
    pub price: Price,
}

/// The command `POST /trades` accepts. Its envelope id is the trade id, so every copy of the
/// command (a retried send, an SQS redelivery) is deduplicated by the worker's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitTrade {
    #[serde(flatten)]
    pub order: Order,
    pub submitted_at: DateTime<Utc>,
}

/// A trade executed against the account's holdings. `sequence` numbers the account's executed
/// trades 1, 2, 3, … without gaps, so consumers can apply them in trade order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeExecuted {
    #[serde(flatten)]
    pub order: Order,
    pub sequence: u64,
    pub executed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeRejected {
    #[serde(flatten)]
    pub order: Order,
    pub reason: String,
    pub rejected_at: DateTime<Utc>,
}

/// A trade as stored and as `GET /trades/{tradeId}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trade {
    #[serde(flatten)]
    pub order: Order,
    pub status: TradeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The account's execution sequence number, once EXECUTED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    pub submitted_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
}

impl Trade {
    pub fn pending(cmd: &SubmitTrade) -> Trade {
        Trade {
            order: cmd.order.clone(),
            status: TradeStatus::Pending,
            reason: None,
            sequence: None,
            submitted_at: cmd.submitted_at,
            decided_at: None,
        }
    }
}

/// What the trades worker does with a submitted trade.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Execute: the holding becomes `holding`, the trade gets `sequence`.
    Execute {
        holding: Amount,
        sequence: u64,
    },
    Reject {
        reason: String,
    },
}

/// Decides a trade against the account's current holding of the symbol and the number of
/// trades it has executed so far. Trades of one account are decided one at a time, in
/// submission order, so `holding` is exactly what the earlier trades left.
pub fn decide(cmd: &SubmitTrade, holding: Amount, executed: u64) -> Decision {
    let (order, held) = (&cmd.order, holding.get());
    let qty = order.quantity.get();
    let next = match order.side {
        Side::Sell if qty > held => {
            return Decision::Reject {
                reason: format!(
                    "insufficient holdings: the account holds {held} {} and cannot sell {qty} \
                     (no short selling)",
                    order.symbol
                ),
            };
        }
        Side::Sell => exact_sub(held, qty),
        Side::Buy => exact_add(held, qty),
    };
    match next {
        Ok(h) if h <= MAX_HOLDING => Decision::Execute {
            holding: Amount::new(h),
            sequence: executed + 1,
        },
        _ => Decision::Reject {
            reason: format!(
                "holding limit: an account may hold at most {MAX_HOLDING} {}",
                order.symbol
            ),
        },
    }
}

impl Decision {
    /// The event announcing the decision and the trade as it is then stored.
    pub fn outcome(&self, cmd: &SubmitTrade, now: DateTime<Utc>) -> (Trade, Outcome) {
        let mut trade = Trade::pending(cmd);
        trade.decided_at = Some(now);
        match self {
            Decision::Execute { sequence, .. } => {
                trade.status = TradeStatus::Executed;
                trade.sequence = Some(*sequence);
                let event = TradeExecuted {
                    order: cmd.order.clone(),
                    sequence: *sequence,
                    executed_at: now,
                };
                (trade, Outcome::Executed(event))
            }
            Decision::Reject { reason } => {
                trade.status = TradeStatus::Rejected;
                trade.reason = Some(reason.clone());
                let event = TradeRejected {
                    order: cmd.order.clone(),
                    reason: reason.clone(),
                    rejected_at: now,
                };
                (trade, Outcome::Rejected(event))
            }
        }
    }
}

/// The event of a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Executed(TradeExecuted),
    Rejected(TradeRejected),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An order of account `acc` for `ACME` (the domain's unit tests).
    pub(crate) fn order(side: Side, quantity: Quantity, price: Price) -> Order {
        Order {
            trade_id: Uuid::new_v4(),
            account_id: "acc".parse().unwrap(),
            symbol: "ACME".parse().unwrap(),
            side,
            quantity,
            price,
        }
    }

    fn cmd(side: Side, qty: &str) -> SubmitTrade {
        SubmitTrade {
            order: order(side, qty.parse().unwrap(), "10".parse().unwrap()),
            submitted_at: Utc::now(),
        }
    }

    fn amount(s: &str) -> Amount {
        s.parse().unwrap()
    }

    #[test]
    fn buys_add_sells_subtract_and_number_executions() {
        assert_eq!(
            decide(&cmd(Side::Buy, "1.5"), amount("2"), 4),
            Decision::Execute {
                holding: amount("3.5"),
                sequence: 5
            }
        );
        assert_eq!(
            decide(&cmd(Side::Sell, "2"), amount("2"), 5),
            Decision::Execute {
                holding: Amount::ZERO,
                sequence: 6
            }
        );
    }

    #[test]
    fn no_short_selling_and_no_holding_beyond_the_limit() {
        let Decision::Reject { reason } = decide(&cmd(Side::Sell, "2.00000001"), amount("2"), 1)
        else {
            panic!("oversell executed");
        };
        assert!(reason.contains("insufficient holdings"), "{reason}");
        assert!(reason.contains("ACME"));
        let near_limit = Amount::new(MAX_HOLDING - Decimal::ONE);
        assert!(matches!(
            decide(&cmd(Side::Buy, "2"), near_limit, 1),
            Decision::Reject { .. }
        ));
        assert!(matches!(
            decide(&cmd(Side::Buy, "1"), near_limit, 1),
            Decision::Execute { .. }
        ));
    }

    #[test]
    fn outcomes_carry_the_decision() {
        let c = cmd(Side::Sell, "1");
        let now = Utc::now();
        let (trade, ev) = decide(&c, Amount::ZERO, 0).outcome(&c, now);
        assert_eq!(trade.status, TradeStatus::Rejected);
        assert!(trade.reason.is_some());
        assert!(matches!(ev, Outcome::Rejected(_)));
        let c = cmd(Side::Buy, "1");
        let (trade, ev) = decide(&c, Amount::ZERO, 7).outcome(&c, now);
        assert_eq!(
            (trade.status, trade.sequence),
            (TradeStatus::Executed, Some(8))
        );
        let Outcome::Executed(e) = ev else { panic!() };
        assert_eq!(e.sequence, 8);
    }

    #[test]
    fn symbols_are_upper_cased_and_key_safe() {
        assert_eq!("brk.b".parse::<Symbol>().unwrap().as_str(), "BRK.B");
        assert_eq!("..a".parse::<Symbol>().unwrap().as_str(), "..A");
        for bad in [
            "",
            "A#B",
            "A:B",
            "A B",
            "ABCDEFGHIJKLM",
            "É",
            ".",
            "..",
            "A/B",
        ] {
            assert!(bad.parse::<Symbol>().is_err(), "{bad}");
        }
    }

    /// The top-level keys of `v`'s JSON, sorted.
    fn keys<T: Serialize>(v: &T) -> Vec<String> {
        let json = serde_json::to_value(v).unwrap();
        let mut keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_order_is_flat_in_every_message_and_the_stored_trade() {
        let c = cmd(Side::Buy, "1.5");
        let (trade, executed) = Decision::Execute {
            holding: amount("1.5"),
            sequence: 1,
        }
        .outcome(&c, Utc::now());
        let (_, rejected) = Decision::Reject {
            reason: "no".into(),
        }
        .outcome(&c, Utc::now());
        let (Outcome::Executed(executed), Outcome::Rejected(rejected)) = (executed, rejected)
        else {
            panic!("outcomes swapped");
        };
        let order = [
            "accountId",
            "price",
            "quantity",
            "side",
            "symbol",
            "tradeId",
        ];
        let with = |own: &[&str]| {
            let mut all: Vec<String> = order.iter().chain(own).map(|k| k.to_string()).collect();
            all.sort();
            all
        };
        assert_eq!(keys(&c), with(&["submittedAt"]));
        assert_eq!(keys(&executed), with(&["executedAt", "sequence"]));
        assert_eq!(keys(&rejected), with(&["reason", "rejectedAt"]));
        assert_eq!(
            keys(&trade),
            with(&["decidedAt", "sequence", "status", "submittedAt"])
        );
        // Each reads back from its flat JSON as it was.
        let json = serde_json::to_string(&executed).unwrap();
        assert_eq!(
            serde_json::from_str::<TradeExecuted>(&json).unwrap(),
            executed
        );
        let json = serde_json::to_string(&trade).unwrap();
        assert_eq!(serde_json::from_str::<Trade>(&json).unwrap(), trade);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<SubmitTrade>(&json).unwrap(), c);
    }
}
