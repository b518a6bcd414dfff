//! The trades table: trades (`TRADE#<id>`), each account's book (`ACCOUNT#<id>` / `BOOK`: how
//! many trades it executed) and holdings (`ACCOUNT#<id>` / `HOLDING#<symbol>`), the inbox and
//! idempotency keys.
//!
//! The book's `executed` counter is the account's version: holdings change only when it
//! advances, and every decision is written on condition that it did not move since it was read,
//! so two deliveries of trades of one account can never both decide on the same holdings.

use std::future::Future;

use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem, Update};
use uuid::Uuid;

use super::inbox::{DynamoInbox, Inbox, InboxEntry, InboxTable};
use super::items::{build_err, failed, from_item, get, to_item, transact, write_if, write_item};
use super::{Write, account_pk, n, s};
use crate::Error;
use crate::aws::classify;
use crate::domain::ids::AccountId;
use crate::domain::money::Amount;
use crate::domain::trades::{Symbol, Trade, TradeStatus};

/// What an account holds of one symbol, and how many trades it has executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Book {
    pub executed: u64,
    pub holding: Amount,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    Created,
    /// A trade with this id exists already (a retried request with the same key).
    Exists(Box<Trade>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    Withdrawn,
    /// The trade is no longer PENDING: the worker received the command after all.
    Decided,
}

pub trait TradeStore: Inbox {
    fn get(&self, id: Uuid) -> impl Future<Output = Result<Option<Trade>, Error>> + Send;

    /// Records a PENDING trade unless one with its id exists.
    fn create_pending(&self, trade: &Trade) -> impl Future<Output = Result<Created, Error>> + Send;

    /// Deletes a trade if it is still PENDING (its command could not be sent).
    fn withdraw(&self, id: Uuid) -> impl Future<Output = Result<Withdrawn, Error>> + Send;

    fn book(
        &self,
        account: &AccountId,
        symbol: &Symbol,
    ) -> impl Future<Output = Result<Book, Error>> + Send;

    /// Writes the decided `trade`, the new `holding` when it executed, the book's new count and
    /// the inbox entry, in one transaction conditional on the book still counting `executed`.
    fn decide(
        &self,
        executed: u64,
        trade: &Trade,
        holding: Option<Amount>,
        record: &InboxEntry,
    ) -> impl Future<Output = Result<Write, Error>> + Send;
}

#[derive(Clone)]
pub struct DynamoTradeStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    inbox: DynamoInbox,
}

fn trade_pk(id: Uuid) -> String {
    format!("TRADE#{id}")
}

fn holding_sk(symbol: &Symbol) -> String {
    format!("HOLDING#{symbol}")
}

const BOOK: &str = "BOOK";

impl super::Table for DynamoTradeStore {
    fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        let inbox = DynamoInbox::new(client.clone(), table.clone());
        DynamoTradeStore {
            client,
            table,
            inbox,
        }
    }
}

impl DynamoTradeStore {
    fn trade_item(&self, trade: &Trade) -> Result<super::items::Item, Error> {
        to_item(trade, trade_pk(trade.order.trade_id), "TRADE".into())
    }
}

impl InboxTable for DynamoTradeStore {
    fn inbox(&self) -> &DynamoInbox {
        &self.inbox
    }
}

impl TradeStore for DynamoTradeStore {
    async fn get(&self, id: Uuid) -> Result<Option<Trade>, Error> {
        get(
            &self.client,
            &self.table,
            trade_pk(id),
            "TRADE".into(),
            "GetItem trade",
        )
        .await?
        .map(from_item)
        .transpose()
    }

    async fn create_pending(&self, trade: &Trade) -> Result<Created, Error> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.trade_item(trade)?))
            .condition_expression("attribute_not_exists(pk)");
        let put = write_item(|| put.clone().send()).await;
        match put {
            Ok(_) => Ok(Created::Created),
            Err(e) => {
                use aws_sdk_dynamodb::operation::put_item::PutItemError;
                let Some(PutItemError::ConditionalCheckFailedException(_)) = e.as_service_error()
                else {
                    return Err(classify("PutItem trade", e));
                };
                let existing = self.get(trade.order.trade_id).await?.ok_or_else(|| {
                    Error::Unavailable("trade being withdrawn concurrently; retry".into())
                })?;
                Ok(Created::Exists(Box::new(existing)))
            }
        }
    }

    async fn withdraw(&self, id: Uuid) -> Result<Withdrawn, Error> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(trade_pk(id)))
            .key("sk", s("TRADE"))
            .condition_expression("#status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(TradeStatus::Pending.as_str()));
        let withdrawn = write_if("DeleteItem trade", || delete.clone().send()).await?;
        Ok(if withdrawn {
            Withdrawn::Withdrawn
        } else {
            Withdrawn::Decided
        })
    }

    async fn book(&self, account: &AccountId, symbol: &Symbol) -> Result<Book, Error> {
        // The count first, then the holding: a trade executed in between makes the count
        // stale, so the decision's condition fails and it is made again. (The other order
        // could pair a stale holding with a fresh count.)
        let book = get(
            &self.client,
            &self.table,
            account_pk(account),
            BOOK.into(),
            "GetItem book",
        )
        .await?;
        let executed = book
            .as_ref()
            .and_then(|i| i.get("executed"))
            .and_then(|v| v.as_n().ok())
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|e| Error::Internal(format!("book count: {e}")))?
            .unwrap_or(0);
        let holding = get(
            &self.client,
            &self.table,
            account_pk(account),
            holding_sk(symbol),
            "GetItem holding",
        )
        .await?;
        let holding = match holding.as_ref().and_then(|i| i.get("quantity")) {
            None => Amount::ZERO,
            Some(v) => v
                .as_s()
                .map_err(|_| Error::Internal("holding quantity is not a string".into()))?
                .parse()
                .map_err(Error::Internal)?,
        };
        Ok(Book { executed, holding })
    }

    async fn decide(
        &self,
        executed: u64,
        trade: &Trade,
        holding: Option<Amount>,
        record: &InboxEntry,
    ) -> Result<Write, Error> {
        let pk = account_pk(&trade.order.account_id);
        let unchanged = if executed == 0 {
            "attribute_not_exists(executed)"
        } else {
            "executed = :prev"
        };
        let book = match holding {
            // Executed: advance the count.
            Some(_) => {
                let mut u = Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(&pk))
                    .key("sk", s(BOOK))
                    .update_expression("SET executed = :next")
                    .condition_expression(unchanged)
                    .expression_attribute_values(":next", n(executed + 1));
                if executed > 0 {
                    u = u.expression_attribute_values(":prev", n(executed));
                }
                TransactWriteItem::builder()
                    .update(u.build().map_err(build_err)?)
                    .build()
            }
            // Rejected: the count stays, but the holdings it was judged on must not have moved.
            None => {
                let mut c = ConditionCheck::builder()
                    .table_name(&self.table)
                    .key("pk", s(&pk))
                    .key("sk", s(BOOK))
                    .condition_expression(unchanged);
                if executed > 0 {
                    c = c.expression_attribute_values(":prev", n(executed));
                }
                TransactWriteItem::builder()
                    .condition_check(c.build().map_err(build_err)?)
                    .build()
            }
        };
        let trade_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.trade_item(trade)?))
            .condition_expression("attribute_not_exists(pk) OR #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(TradeStatus::Pending.as_str()))
            .build()
            .map_err(build_err)?;
        let mut items = vec![
            self.inbox.put(record)?,
            book,
            TransactWriteItem::builder().put(trade_put).build(),
        ];
        if let Some(h) = holding {
            let put = Put::builder()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("sk", s(holding_sk(&trade.order.symbol)))
                .item("quantity", s(h.to_string()))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        Ok(match transact(&self.client, items).await? {
            None => Write::Done,
            Some(codes) if failed(&codes, 1) && !failed(&codes, 0) => Write::Conflict,
            Some(_) => Write::Duplicate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::trades::{Order, Side, SubmitTrade};

    /// A stored trade reads back as written: its flattened order, numbers (`sequence`) and
    /// optional fields, with the item's own attributes (`pk`, `sk`) beside them.
    #[test]
    fn a_trade_item_reads_back_as_the_trade() {
        let cmd = SubmitTrade {
            order: Order {
                trade_id: Uuid::new_v4(),
                account_id: "acc-1".parse().unwrap(),
                symbol: "ACME".parse().unwrap(),
                side: Side::Sell,
                quantity: "0.00000001".parse().unwrap(),
                price: "999999.99999999".parse().unwrap(),
            },
            submitted_at: chrono::Utc::now(),
        };
        let mut trade = Trade::pending(&cmd);
        trade.status = TradeStatus::Executed;
        trade.sequence = Some(7);
        let item = to_item(&trade, "TRADE#1".into(), "TRADE".into()).unwrap();
        assert!(item.contains_key("tradeId") && !item.contains_key("order"));
        assert_eq!(from_item::<Trade>(item).unwrap(), trade);
    }
}
