//! Small DynamoDB helpers every store shares: typed items, transactions whose cancellation
//! reasons say which condition failed, and the one retry of writes that lost to contention.

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use serde::{Serialize, de::DeserializeOwned};

use super::{Page, PageRequest, cancellation_codes, encode_cursor, s};
use crate::{Error, aws::classify, retry::Backoff};

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
///
/// A transaction cancelled only by contention (another transaction holding one of its items,
/// or throttling of one of them: reasons the SDK does not retry) is retried by
/// [`retry_contention`]; still contended after that, it is [`Error::Unavailable`] (`503`, or a
/// failed message that SQS redelivers), never an internal error.
pub(crate) async fn transact(
    client: &aws_sdk_dynamodb::Client,
    items: Vec<TransactWriteItem>,
) -> Result<Option<Vec<String>>, Error> {
    let sent = retry_contention(
        |e| {
            let codes = cancellation_codes(e).unwrap_or_default();
            !codes.iter().any(|c| c == "ConditionalCheckFailed")
                && (codes.iter().any(|c| contended(c)) || error_code(e).is_some_and(contended))
        },
        || {
            client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
        },
    )
    .await;
    match sent {
        Ok(_) => Ok(None),
        Err(e) => match cancellation_codes(&e) {
            Some(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => Ok(Some(codes)),
            Some(codes) if codes.iter().any(|c| contended(c)) => Err(Error::Unavailable(format!(
                "TransactWriteItems: still contended after {CONTENTION_ATTEMPTS} attempts: {}",
                codes.join(", ")
            ))),
            _ => Err(classify("TransactWriteItems", e)),
        },
    }
}

/// How often a contended write is tried, and how long to wait in between: ≈ 10–20, 20–40,
/// 40–80 and 80–160 ms, at most ≈ 0.3 s in all, well inside a request's budget (guarantee 8
/// of the README: a `503` within a couple of seconds).
pub(crate) const CONTENTION_ATTEMPTS: u32 = 5;
pub(crate) const CONTENTION_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(20),
    max: Duration::from_millis(200),
};

/// Error and cancellation-reason codes that mean "another writer holds the item right now, or
/// the item is throttled": trying again shortly may succeed. DynamoDB answers single-item writes
/// that touch an item of an ongoing transaction with `TransactionConflictException`, and
/// cancels transactions with the reason `TransactionConflict`; the SDK retries neither.
pub(crate) fn contended(code: &str) -> bool {
    matches!(
        code,
        "TransactionConflict"
            | "TransactionConflictException"
            | "TransactionInProgressException"
            | "ThrottlingError"
            | "ThrottlingException"
            | "ProvisionedThroughputExceeded"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
    )
}

/// The service's error code, when the service answered with one.
pub(crate) fn error_code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    e.as_service_error().and_then(ProvideErrorMetadata::code)
}

/// Sends a write (`send` builds and sends it anew each time), trying again with backoff and
/// jitter while `is_contended` says the failure was contention, at most
/// [`CONTENTION_ATTEMPTS`] times. The last answer is returned as it came, for the caller to
/// interpret (a failed condition) or [`classify`] (which maps contention to `503`).
pub(crate) async fn retry_contention<T, E, R, C, F, Fut>(
    is_contended: C,
    mut send: F,
) -> Result<T, SdkError<E, R>>
where
    C: Fn(&SdkError<E, R>) -> bool,
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
{
    let mut retry = 0;
    loop {
        match send().await {
            Err(e) if retry + 1 < CONTENTION_ATTEMPTS && is_contended(&e) => {
                let code = error_code(&e).unwrap_or("unknown");
                tracing::info!(retry, code, "contended write; retrying");
                CONTENTION_BACKOFF.wait(retry).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

/// [`retry_contention`] for single-item writes: contended when the error code says so.
pub(crate) async fn write_item<T, E, R, F, Fut>(send: F) -> Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
{
    retry_contention(|e| error_code(e).is_some_and(contended), send).await
}

/// Whether item `i` of a cancelled transaction failed its condition.
pub(crate) fn failed(codes: &[String], i: usize) -> bool {
    codes.get(i).is_some_and(|c| c == "ConditionalCheckFailed")
}

/// A conditional single-item write (`send` builds and sends it anew each time, contention
/// retried by [`write_item`]): `Ok(true)` when written, `Ok(false)` when its condition failed;
/// any other failure [`classify`]'d as `what`.
pub(crate) async fn write_if<T, E, R, F, Fut>(what: &str, send: F) -> Result<bool, Error>
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
{
    match write_item(send).await {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some("ConditionalCheckFailedException") => Ok(false),
        Err(e) => Err(classify(what, e)),
    }
}

/// The item at `(pk, sk)`, read consistently, decoded.
pub(crate) async fn get_as<T: DeserializeOwned>(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: (String, String),
    what: &str,
) -> Result<Option<T>, Error> {
    get(client, table, key.0, key.1, what)
        .await?
        .map(from_item)
        .transpose()
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

/// The query of partition `pk`'s items whose sort key starts with `prefix`, in key order.
pub(crate) fn prefix_query(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: String,
    prefix: &str,
) -> QueryFluentBuilder {
    client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
        .expression_attribute_values(":pk", s(pk))
        .expression_attribute_values(":prefix", s(prefix))
}

/// The `page` of partition `pk`'s items under `prefix` (its cursor checked by [`start_key`]: a
/// foreign cursor is a `400`), decoded as `T`.
pub(crate) async fn prefix_page<T: DeserializeOwned>(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    (pk, prefix): (String, &str),
    page: &PageRequest,
) -> Result<Page<T>, Error> {
    let start = start_key(page.cursor.as_deref(), &pk, prefix)?;
    let query = prefix_query(client, table, pk, prefix).limit(page.limit);
    query_page(query, "Query", start).await
}

/// One page of `query` from `start` (`None`: the first page), decoded as `T`, with the cursor
/// of the next page (`None` on the last).
pub(crate) async fn query_page<T: DeserializeOwned>(
    query: QueryFluentBuilder,
    what: &str,
    start: Option<Item>,
) -> Result<Page<T>, Error> {
    let out = query
        .set_exclusive_start_key(start)
        .send()
        .await
        .map_err(|e| classify(what, e))?;
    let items = out.items.unwrap_or_default().into_iter().map(from_item);
    Ok(Page {
        items: items.collect::<Result<_, _>>()?,
        next_cursor: encode_cursor(out.last_evaluated_key.as_ref()),
    })
}

/// Runs `query` page after page from the first, handing each item to `each` in key order
/// until `each` answers `Break` or the last page is done. `what` names the query in errors
/// (an outage is [`Error::Unavailable`], `crate::aws::classify`).
pub(crate) async fn query_each(
    query: QueryFluentBuilder,
    what: &str,
    mut each: impl FnMut(Item) -> Result<ControlFlow<()>, Error>,
) -> Result<(), Error> {
    let mut start = None;
    loop {
        let out = query
            .clone()
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| classify(what, e))?;
        for item in out.items.unwrap_or_default() {
            if each(item)?.is_break() {
                return Ok(());
            }
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            return Ok(());
        }
    }
}

/// Decodes a page cursor for a query of partition `pk` under `prefix` (`super::decode_cursor`):
/// one that points elsewhere names no page of it, since DynamoDB would answer a foreign start
/// key with an error.
pub(crate) fn start_key(
    cursor: Option<&str>,
    pk: &str,
    prefix: &str,
) -> Result<Option<Item>, Error> {
    cursor
        .map(|cursor| {
            super::decode_cursor(cursor, |key| {
                let text = |k: &str| key.get(k).and_then(|v| v.as_s().ok());
                key.len() == 2
                    && text("pk").is_some_and(|p| p == pk)
                    && text("sk").is_some_and(|s| s.starts_with(prefix))
            })
        })
        .transpose()
}
