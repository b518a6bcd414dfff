//! The positions table: one item per account and symbol (`ACCOUNT#<id>` / `POSITION#<symbol>`)
//! and the account's cursor (`ACCOUNT#<id>` / `CURSOR`: the sequence number of the last trade
//! applied). A position changes only in the transaction that advances the cursor by exactly
//! one, so trades apply once each and in trade order, whatever order SQS delivers them in.

use std::future::Future;

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::items::{build_err, from_item, get, prefix_page, to_item, transact};
use super::{Page, PageRequest, Write, account_pk, n, s};
use crate::Error;
use crate::domain::ids::AccountId;
use crate::domain::positions::Position;
use crate::domain::trades::Symbol;

pub trait PositionStore: Send + Sync {
    fn get(
        &self,
        account: &AccountId,
        symbol: &Symbol,
    ) -> impl Future<Output = Result<Option<Position>, Error>> + Send;

    fn list(
        &self,
        account: &AccountId,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<Position>, Error>> + Send;

    /// The sequence number of the account's last applied trade (0: none yet).
    fn last_applied(&self, account: &AccountId) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Writes `next` and moves the account's cursor from `last` to `next.last_sequence`:
    /// `Done`, or `Conflict` when the cursor moved since it was read (a concurrent delivery
    /// applied this trade). Never `Duplicate`: the cursor is what deduplicates.
    fn advance(
        &self,
        last: u64,
        next: &Position,
    ) -> impl Future<Output = Result<Write, Error>> + Send;
}

#[derive(Clone)]
pub struct DynamoPositionStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

const POSITION: &str = "POSITION#";

impl super::Table for DynamoPositionStore {
    fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        DynamoPositionStore { client, table }
    }
}

impl PositionStore for DynamoPositionStore {
    async fn get(&self, account: &AccountId, symbol: &Symbol) -> Result<Option<Position>, Error> {
        get(
            &self.client,
            &self.table,
            account_pk(account),
            format!("{POSITION}{symbol}"),
            "GetItem position",
        )
        .await?
        .map(from_item)
        .transpose()
    }

    async fn list(&self, account: &AccountId, page: &PageRequest) -> Result<Page<Position>, Error> {
        let key = (account_pk(account), POSITION);
        prefix_page(&self.client, &self.table, key, page).await
    }

    async fn last_applied(&self, account: &AccountId) -> Result<u64, Error> {
        let item = get(
            &self.client,
            &self.table,
            account_pk(account),
            "CURSOR".into(),
            "GetItem cursor",
        )
        .await?;
        item.as_ref()
            .and_then(|i| i.get("lastSequence"))
            .and_then(|v| v.as_n().ok())
            .map_or(Ok(0), |v| v.parse())
            .map_err(|e| Error::Internal(format!("cursor: {e}")))
    }

    async fn advance(&self, last: u64, next: &Position) -> Result<Write, Error> {
        let pk = account_pk(&next.account_id);
        let mut cursor = Update::builder()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s("CURSOR"))
            .update_expression("SET lastSequence = :next")
            .expression_attribute_values(":next", n(next.last_sequence));
        cursor = if last == 0 {
            cursor.condition_expression("attribute_not_exists(lastSequence)")
        } else {
            cursor
                .condition_expression("lastSequence = :last")
                .expression_attribute_values(":last", n(last))
        };
        let position = Put::builder()
            .table_name(&self.table)
            .set_item(Some(to_item(
                next,
                pk,
                format!("{POSITION}{}", next.symbol),
            )?))
            .build()
            .map_err(build_err)?;
        let items = vec![
            TransactWriteItem::builder()
                .update(cursor.build().map_err(build_err)?)
                .build(),
            TransactWriteItem::builder().put(position).build(),
        ];
        Ok(match transact(&self.client, items).await? {
            None => Write::Done,
            Some(_) => Write::Conflict,
        })
    }
}
