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

/// The outcome of a conditional write of an effect together with its inbox record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Done,
    /// The aggregate changed since it was read: read again and decide again.
    Conflict,
    /// The message was already processed (its inbox record exists).
    Duplicate,
}

impl Write {
    /// What the write means to [`crate::worker::exactly_once`]: `events` to publish when done,
    /// `None` when the caller must read again and decide again.
    pub fn applied(self, events: Vec<crate::events::Envelope>) -> Option<crate::worker::Applied> {
        use crate::worker::Applied;
        match self {
            Write::Done => Some(Applied::Done(events)),
            Write::Duplicate => Some(Applied::Duplicate),
            Write::Conflict => None,
        }
    }
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

pub fn decode_cursor(cursor: &str) -> Result<HashMap<String, AttributeValue>, Error> {
    let bad = || Error::invalid("cursor", "not a cursor returned by this API");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let plain: HashMap<String, String> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok(plain
        .into_iter()
        .map(|(k, v)| (k, AttributeValue::S(v)))
        .collect())
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
        assert_eq!(decode_cursor(&c).unwrap(), key);
        assert!(decode_cursor("!!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("[1]")).is_err());
    }
}
