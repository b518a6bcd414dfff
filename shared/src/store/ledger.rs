//! The ledger table: journal lines (`ACCOUNT#<id>` / `ENTRY#<sequence>#<line>`, so an
//! account's entries list in trade order) and running balances per ledger account
//! (`ACCOUNT#<id>` / `BALANCE#<ledger account>`).
//!
//! A trade's lines are written with `attribute_not_exists` and the balances moved with atomic
//! `ADD`s in the same transaction: reposting a trade (a duplicate event) fails as a whole and
//! changes nothing, and trades of one account may post concurrently and in any order (sums
//! commute), with no read-modify-write. DynamoDB numbers are exact decimals of 38 digits.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::ControlFlow;

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::items::{build_err, prefix_page, prefix_query, query_each, to_item, transact};
use super::{Page, PageRequest, Write, account_pk, n, s};
use crate::Error;
use crate::domain::ids::AccountId;
use crate::domain::ledger::Entry;
use crate::domain::money::Amount;

pub trait LedgerStore: Send + Sync {
    /// Posts a trade's lines and moves the balances, once: `Done`, or `Duplicate` when they
    /// were posted before. Never `Conflict`: balances move by `ADD`, which commutes.
    fn post(&self, lines: &[Entry]) -> impl Future<Output = Result<Write, Error>> + Send;

    fn entries(
        &self,
        account: &AccountId,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<Entry>, Error>> + Send;

    /// Every ledger account's balance (absent: never posted to).
    fn balances(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<BTreeMap<String, Amount>, Error>> + Send;
}

#[derive(Clone)]
pub struct DynamoLedgerStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

const ENTRY: &str = "ENTRY#";
const BALANCE: &str = "BALANCE#";

/// Zero-padded so that the sort key orders entries by sequence number.
fn entry_sk(e: &Entry) -> String {
    let line = e.entry_id.rsplit('-').next().unwrap_or("0");
    format!("{ENTRY}{:020}#{line}", e.sequence)
}

impl super::Table for DynamoLedgerStore {
    fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        DynamoLedgerStore { client, table }
    }
}

impl LedgerStore for DynamoLedgerStore {
    async fn post(&self, lines: &[Entry]) -> Result<Write, Error> {
        let mut items = Vec::with_capacity(lines.len() * 2);
        for line in lines {
            let pk = account_pk(&line.account_id);
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(to_item(line, pk.clone(), entry_sk(line))?))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().put(put).build());
            let balance = Update::builder()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(format!("{BALANCE}{}", line.account)))
                .update_expression("SET #account = :account ADD balance :amount")
                .expression_attribute_names("#account", "account")
                .expression_attribute_values(":account", s(&line.account))
                .expression_attribute_values(":amount", n(line.amount))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().update(balance).build());
        }
        Ok(match transact(&self.client, items).await? {
            None => Write::Done,
            Some(_) => Write::Duplicate,
        })
    }

    async fn entries(&self, account: &AccountId, page: &PageRequest) -> Result<Page<Entry>, Error> {
        let key = (account_pk(account), ENTRY);
        prefix_page(&self.client, &self.table, key, page).await
    }

    async fn balances(&self, account: &AccountId) -> Result<BTreeMap<String, Amount>, Error> {
        let mut balances = BTreeMap::new();
        let query = prefix_query(&self.client, &self.table, account_pk(account), BALANCE);
        query_each(query, "Query balances", |item| {
            let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok().or(v.as_n().ok()));
            let (Some(name), Some(balance)) = (text("account"), text("balance")) else {
                return Err(Error::Internal(
                    "balance item without account or balance".into(),
                ));
            };
            balances.insert(name.clone(), balance.parse().map_err(Error::Internal)?);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(balances)
    }
}
