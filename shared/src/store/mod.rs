//! Persistence: one trait per aggregate with its DynamoDB adapter beside it, plus the two
//! cross-cutting records every service keeps in its own table: the inbox (processed messages
//! and the events they must publish) and idempotency keys.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Serialize;

use crate::Error;

pub mod agents;
pub mod analytics;
pub mod conversations;
pub mod idempotency;
pub mod inbox;
mod items;

pub(crate) use items::contended;
pub mod ledger;
pub mod positions;
pub mod trades;

/// The outcome of every conditional write of an effect (with its inbox entry, or, where a
/// store deduplicates otherwise, with its own condition: a position's cursor, a ledger line's
/// key). Each store method documents which of the three it can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Done,
    /// The aggregate changed since it was read: read again and decide again
    /// ([`read_decide_write`]).
    Conflict,
    /// The message was already processed (its inbox entry, or its effect, exists).
    Duplicate,
}

impl Write {
    /// What the write means to [`crate::worker::exactly_once`]: `events` to publish when done,
    /// `None` when the caller must read again and decide again.
    pub fn applied(self, events: Vec<crate::envelope::Envelope>) -> Option<crate::worker::Applied> {
        use crate::worker::Applied;
        match self {
            Write::Done => Some(Applied::Done(events)),
            Write::Duplicate => Some(Applied::Duplicate),
            Write::Conflict => None,
        }
    }
}

/// A store kept in its service's own DynamoDB table.
pub trait Table: Sized {
    fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self;
}

/// Opens a store from the function's environment: its service's table is `TABLE_NAME`, the
/// one variable every function of a service with a table gets from the template.
pub fn open<T: Table>(
    sdk: &aws_config::SdkConfig,
    vars: &crate::config::Vars,
) -> Result<T, crate::config::MissingVar> {
    Ok(T::new(
        aws_sdk_dynamodb::Client::new(sdk),
        vars.var("TABLE_NAME")?,
    ))
}

/// Opens two stores of the same table (e.g. a service's store and its `Idempotency-Key`
/// records) on one DynamoDB client: [`open`] twice would build the client twice per cold start.
pub fn open_two<A: Table, B: Table>(
    sdk: &aws_config::SdkConfig,
    vars: &crate::config::Vars,
) -> Result<(A, B), crate::config::MissingVar> {
    let table = vars.var("TABLE_NAME")?;
    let client = aws_sdk_dynamodb::Client::new(sdk);
    Ok((A::new(client.clone(), table.clone()), B::new(client, table)))
}

/// How many times [`read_decide_write`] reads, decides and writes before giving up.
pub const WRITE_ATTEMPTS: u32 = 5;

/// Optimistic concurrency, the one loop of every read → decide → conditional write: runs
/// `attempt` until it answers `Some` (done: applied, a duplicate, or a decision not to write),
/// or an error. `None` means its write lost to a concurrent one ([`Write::Conflict`]), so the
/// item is read again and the decision made again, after a short jittered wait (the
/// contention schedule of [`crate::retry`]). After [`WRITE_ATTEMPTS`] lost writes:
/// [`Error::Unavailable`] naming `what` (a `503`, or a failed message that SQS redelivers),
/// never a `500` (docs/ARCHITECTURE.md, guarantee 12).
pub async fn read_decide_write<T>(
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<Option<T>, Error>,
) -> Result<T, Error> {
    for retry in 0..WRITE_ATTEMPTS {
        if retry > 0 {
            items::CONTENTION_BACKOFF.wait(retry - 1).await;
        }
        if let Some(done) = attempt().await? {
            return Ok(done);
        }
        tracing::info!(
            what,
            retry,
            "conditional write lost to a concurrent one; deciding again"
        );
    }
    Err(Error::Unavailable(format!(
        "{what} kept changing between read and write ({WRITE_ATTEMPTS} attempts)"
    )))
}

/// Which page of a list to read: at most `limit` items (1..=100), from `cursor` (the
/// `nextCursor` of the page before; `None`: the first page). A request's is
/// `crate::http::page_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i32,
    pub cursor: Option<String>,
}

/// One page of a list: `nextCursor` is absent on the last page.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Cursors are DynamoDB's `LastEvaluatedKey`, opaque to callers (base64 of its JSON). All our
/// key attributes are strings, which keeps the encoding trivial.
pub fn encode_cursor(key: Option<&HashMap<String, AttributeValue>>) -> Option<String> {
    let key = key?;
    let plain: HashMap<&str, &str> = key
        .iter()
        .filter_map(|(k, v)| v.as_s().ok().map(|s| (k.as_str(), s.as_str())))
        .collect();
    let json = serde_json::to_vec(&plain).ok()?;
    Some(URL_SAFE_NO_PAD.encode(json))
}

/// Reads a list's `cursor` parameter back into the key it encodes.
///
/// `422` naming `cursor` when it is not base64url text at all (what the spec's pattern
/// admits); `404` when it is, but names no page of this list: not a key this API encodes, or
/// one `ours` refuses (another list's or another partition's, which DynamoDB would fail the
/// query with). A cursor is the name of a page, so an unknown one is not found.
pub fn decode_cursor(
    cursor: &str,
    ours: impl Fn(&HashMap<String, AttributeValue>) -> bool,
) -> Result<HashMap<String, AttributeValue>, Error> {
    let base64url = !cursor.is_empty()
        && cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !base64url {
        return Err(Error::invalid(
            "cursor",
            "a cursor is the base64url text of a nextCursor this API returned",
        ));
    }
    let not_found = || Error::NotFound(format!("cursor {cursor} names no page of this list"));
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| not_found())?;
    let plain: HashMap<String, String> = serde_json::from_slice(&bytes).map_err(|_| not_found())?;
    let key = plain
        .into_iter()
        .map(|(k, v)| (k, AttributeValue::S(v)))
        .collect();
    if ours(&key) {
        Ok(key)
    } else {
        Err(not_found())
    }
}

/// The reason codes of a cancelled transaction, one per item (`"None"` for items that passed).
pub(crate) fn cancellation_codes(
    err: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        aws_sdk_dynamodb::config::http::HttpResponse,
    >,
) -> Option<Vec<String>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match err.as_service_error()? {
        E::TransactionCanceledException(e) => Some(
            e.cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None").to_owned())
                .collect(),
        ),
        _ => None,
    }
}

/// The partition key of everything kept per trading account (`ACCOUNT#<id>`): its trades'
/// sequence, its positions, its ledger lines and balances, each in its own table.
pub(crate) fn account_pk(account: &crate::domain::ids::AccountId) -> String {
    format!("ACCOUNT#{account}")
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let key = HashMap::from([("pk".to_owned(), s("AGENT#a")), ("sk".to_owned(), s("x"))]);
        let c = encode_cursor(Some(&key)).unwrap();
        assert_eq!(decode_cursor(&c, |_| true).unwrap(), key);
        let status = |c: &str| decode_cursor(c, |k| k.len() == 2).unwrap_err().status();
        assert_eq!(status("!!!"), 422, "not base64url: not a cursor at all");
        assert_eq!(status(""), 422);
        assert_eq!(status("abc"), 404, "base64url, but no page");
        assert_eq!(status(&URL_SAFE_NO_PAD.encode("[1]")), 404);
        assert_eq!(
            status(&URL_SAFE_NO_PAD.encode(r#"{"pk":"x"}"#)),
            404,
            "not ours"
        );
    }
}
