//! `Idempotency-Key` records: the first request with a key stores the response it will get; a
//! retry with the same key and body gets that response again, with another body a `422`.

use std::future::Future;

use aws_sdk_dynamodb::types::AttributeValue;

use super::{n, s};
use crate::{Error, aws::classify};

/// Kept well past the 24 h a client may retry within.
const RETENTION_SECS: i64 = 48 * 3600;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// First use of the key: go ahead (and `release` it if the command cannot be accepted).
    New,
    /// Same key, same request: answer with the stored response, do nothing else.
    Replay(StoredResponse),
    /// Same key, different request.
    Mismatch,
}

pub trait Idempotency: Send + Sync {
    /// Atomically claims `key` (unique within `scope`) for a request with `fingerprint`.
    fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        response: &StoredResponse,
    ) -> impl Future<Output = Result<Claim, Error>> + Send;
    fn release(&self, scope: &str, key: &str) -> impl Future<Output = Result<(), Error>> + Send;
}

#[derive(Clone)]
pub struct DynamoIdempotency {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoIdempotency {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        DynamoIdempotency { client, table }
    }
}

fn pk(scope: &str, key: &str) -> AttributeValue {
    s(format!("IDEMPOTENCY#{scope}#{key}"))
}

impl Idempotency for DynamoIdempotency {
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        response: &StoredResponse,
    ) -> Result<Claim, Error> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", pk(scope, key))
            .item("sk", s("IDEMPOTENCY"))
            .item("fingerprint", s(fingerprint))
            .item("status", n(response.status))
            .item("body", s(&response.body))
            .item(
                "expiresAt",
                n(chrono::Utc::now().timestamp() + RETENTION_SECS),
            )
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            );
        if let Some(loc) = &response.location {
            put = put.item("location", s(loc));
        }
        match put.send().await {
            Ok(_) => Ok(Claim::New),
            Err(e) => {
                use aws_sdk_dynamodb::operation::put_item::PutItemError;
                let Some(PutItemError::ConditionalCheckFailedException(_)) = e.as_service_error()
                else {
                    return Err(classify("PutItem idempotency", e));
                };
                // Read the winner's record rather than trusting the error's copy (not every
                // emulator returns the old item).
                self.existing(scope, key, fingerprint).await
            }
        }
    }

    async fn release(&self, scope: &str, key: &str) -> Result<(), Error> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", pk(scope, key))
            .key("sk", s("IDEMPOTENCY"))
            .send()
            .await
            .map_err(|e| classify("DeleteItem idempotency", e))?;
        Ok(())
    }
}

impl DynamoIdempotency {
    async fn existing(&self, scope: &str, key: &str, fingerprint: &str) -> Result<Claim, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk(scope, key))
            .key("sk", s("IDEMPOTENCY"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem idempotency", e))?;
        let item = out
            .item
            .ok_or_else(|| Error::Conflict("request with this Idempotency-Key in flight".into()))?;
        let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        if text("fingerprint").as_deref() != Some(fingerprint) {
            return Ok(Claim::Mismatch);
        }
        let status = item
            .get("status")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(202);
        Ok(Claim::Replay(StoredResponse {
            status,
            body: text("body").unwrap_or_default(),
            location: text("location"),
        }))
    }
}
