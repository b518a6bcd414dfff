//! Small DynamoDB helpers every store shares: typed items and
//! transactions whose cancellation reasons say which condition failed.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use serde::{Serialize, de::DeserializeOwned};

use super::{cancellation_codes, s};
use crate::{Error, aws::classify};

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn from_item<T: DeserializeOwned>(item: Item) -> Result<T, Error> {
    serde_dynamo::from_item(item).map_err(|e| Error::Internal(format!("decoding item: {e}")))
}

/// `value` as an item under key `(pk, sk)`.
pub(crate) fn to_item<T: Serialize>(value: &T, pk: String, sk: String) -> Result<Item, Error> {
    let mut item: Item =
        serde_dynamo::to_item(value).map_err(|e| Error::Internal(format!("encoding: {e}")))?;
    item.insert("pk".into(), s(pk));
    item.insert("sk".into(), s(sk));
    Ok(item)
}

pub(crate) fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> Error {
    Error::Internal(format!("building request: {e}"))
}

/// Runs a transaction. `Ok(None)`: written. `Ok(Some(codes))`: cancelled because a condition
/// failed, with one reason code per item (`"ConditionalCheckFailed"` or `"None"`).
pub(crate) async fn transact(
    client: &aws_sdk_dynamodb::Client,
    items: Vec<TransactWriteItem>,
) -> Result<Option<Vec<String>>, Error> {
    match client
        .transact_write_items()
        .set_transact_items(Some(items))
        .send()
        .await
    {
        Ok(_) => Ok(None),
        Err(e) => match cancellation_codes(&e) {
            Some(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => Ok(Some(codes)),
            _ => Err(classify("TransactWriteItems", e)),
        },
    }
}

/// Whether item `i` of a cancelled transaction failed its condition.
pub(crate) fn failed(codes: &[String], i: usize) -> bool {
    codes.get(i).is_some_and(|c| c == "ConditionalCheckFailed")
}

/// A consistent GetItem of `(pk, sk)`.
pub(crate) async fn get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: String,
    sk: String,
    what: &str,
) -> Result<Option<Item>, Error> {
    let out = client
        .get_item()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s(sk))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| classify(what, e))?;
    Ok(out.item)
}

/// One page of the items of partition `pk` whose sort key starts with `prefix`, in key order.
pub(crate) async fn query_prefix(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: String,
    prefix: &str,
    limit: Option<i32>,
    start: Option<Item>,
) -> Result<(Vec<Item>, Option<Item>), Error> {
    let out = client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
        .expression_attribute_values(":pk", s(pk))
        .expression_attribute_values(":prefix", s(prefix))
        .set_limit(limit)
        .set_exclusive_start_key(start)
        .send()
        .await
        .map_err(|e| classify("Query", e))?;
    Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
}

/// Decodes a page cursor for a query of partition `pk` under `prefix`, refusing (`422`) one
/// that points elsewhere: DynamoDB would answer a foreign start key with an error, not a page.
pub(crate) fn start_key(
    cursor: Option<&str>,
    pk: &str,
    prefix: &str,
) -> Result<Option<Item>, Error> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let key = super::decode_cursor(cursor)?;
    let text = |k: &str| key.get(k).and_then(|v| v.as_s().ok());
    let ours = key.len() == 2
        && text("pk").is_some_and(|p| p == pk)
        && text("sk").is_some_and(|s| s.starts_with(prefix));
    if !ours {
        return Err(Error::invalid(
            "cursor",
            "not a cursor returned by this API",
        ));
    }
    Ok(Some(key))
}
