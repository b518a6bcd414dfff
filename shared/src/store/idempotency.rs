//! `Idempotency-Key` records, kept in each service's own table.
//!
//! A key belongs to the caller who sent it and the route it was sent to ([`KeyScope`]): two
//! callers never share a key, so one caller's stored response never answers another's
//! request (as the IETF `Idempotency-Key` draft and the payment APIs that popularised the
//! header scope it).
//!
//! A record has a lifecycle (as Powertools' idempotency utility keeps it):
//!
//! 1. **in progress**: [`Idempotency::claim`] writes it when a request with a new key arrives,
//!    with an expiry no later than the function's deadline (`inProgressUntil`). A duplicate
//!    that arrives meanwhile is told so ([`Claim::InProgress`]: `409` with `Retry-After`),
//!    never answered as if the command had been accepted.
//! 2. **completed**: [`Idempotency::complete`] stores the response, only once the command was
//!    handed off; a retry with the same key and request gets it again ([`Claim::Replay`]).
//! 3. **released**: [`Idempotency::release`] abandons the claim at once when the hand-off
//!    failed: the client's retry is processed, as the same request.
//!
//! A claim whose request died (the function was killed between claim and completion) is
//! abandoned at its `inProgressUntil`, a released one at once: the next request with the key
//! takes it over. When that request is the same (same fingerprint), it keeps the first claim's
//! time (`claimedAt`), from which the command's ids are derived (`crate::command`): should the
//! earlier attempt have handed its command off after all (a request that died after sending,
//! or a send that timed out or lost its answer but went through), the retry hands off the
//! *same* command again, which its worker deduplicates, and finds the provisional record its
//! earlier attempt wrote. Deleting a released claim instead would let the retry derive new
//! ids: two commands for one request. Every write is conditional on the claim's `token`, so a request never
//! completes or releases a claim that another has taken over.
//!
//! Attribute names avoid the tables' index keys (`state`, `agentId`): these records must never
//! appear in a sparse index.

use std::future::Future;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use super::items::{Item, get, write_if};
use super::{n, s};
use crate::Error;

/// Completed records are kept well past the 24 h within which clients retry (the IETF draft's
/// suggestion); DynamoDB's TTL (`expiresAt`) deletes them later.
const RETENTION_SECS: i64 = 48 * 3600;

/// How often a claim is attempted against records that change under it before giving up.
const CLAIM_ATTEMPTS: usize = 3;

const SK: &str = "IDEMPOTENCY";
const IN_PROGRESS: &str = "INPROGRESS";
const COMPLETED: &str = "COMPLETED";

/// What an `Idempotency-Key` is unique within: the caller who sent it (a verified principal,
/// e.g. `jwt:<issuer> <sub>`), the route it was sent to (API Gateway's route key, e.g. `POST
/// /conversations`) and the key itself (1–128 printable ASCII characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScope {
    pub caller: String,
    pub route: String,
    pub key: String,
}

impl KeyScope {
    /// The record's partition key: the three parts as a JSON array, so that no value of one
    /// part can pass for another's.
    fn pk(&self) -> String {
        let parts = serde_json::json!([self.caller, self.route, self.key]);
        format!("IDEMPOTENCY#{parts}")
    }
}

/// The response a completed request got, replayed to its retries.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// HTTP status (`202` for an accepted command).
    pub status: u16,
    /// The JSON body, as sent.
    pub body: String,
    /// The `Location` header, if any.
    pub location: Option<String>,
}

/// The outcome of [`Idempotency::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The request is ours to process: hand its command off, then [`Idempotency::complete`]
    /// (or [`Idempotency::release`] on failure) with `token`. `claimed_at` is when this
    /// request was first claimed: now, or the time of an abandoned claim of the same request
    /// that this one took over.
    New {
        token: Uuid,
        claimed_at: DateTime<Utc>,
    },
    /// Same key and request, completed before: answer with the stored response, do nothing
    /// else.
    Replay(StoredResponse),
    /// Same key and request, still being processed by another invocation: retry shortly.
    InProgress,
    /// Same key, another request: refused (`422`).
    Mismatch,
}

/// The store of `Idempotency-Key` records (the module docs give the lifecycle).
pub trait Idempotency: Send + Sync {
    /// Claims `scope` for a request whose canonical form is `fingerprint`, in progress until
    /// `until` (at the latest the function's deadline).
    fn claim(
        &self,
        scope: &KeyScope,
        fingerprint: &str,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Claim, Error>> + Send;

    /// Marks the claim `token` completed with `response`. A claim taken over meanwhile (ours
    /// had expired) is left alone.
    fn complete(
        &self,
        scope: &KeyScope,
        token: Uuid,
        response: &StoredResponse,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Abandons the claim `token` now (its request could not be handed off, or it is unknown
    /// whether it was), keeping its `claimedAt` for the retry. A claim taken over meanwhile is
    /// left alone.
    fn release(
        &self,
        scope: &KeyScope,
        token: Uuid,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The records in a service's DynamoDB table (`pk = IDEMPOTENCY#[caller, route, key]`).
#[derive(Clone)]
pub struct DynamoIdempotency {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl super::Table for DynamoIdempotency {
    fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        DynamoIdempotency { client, table }
    }
}

/// A record as read back.
struct Record {
    token: String,
    fingerprint: String,
    completed: bool,
    claimed_at: DateTime<Utc>,
    in_progress_until_ms: i64,
    expires_at: i64,
    response: StoredResponse,
}

impl Record {
    fn from_item(item: &Item) -> Record {
        let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        let number = |k: &str| {
            item.get(k)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        Record {
            token: text("token").unwrap_or_default(),
            fingerprint: text("fingerprint").unwrap_or_default(),
            completed: text("lifecycle").as_deref() == Some(COMPLETED),
            claimed_at: Utc
                .timestamp_millis_opt(number("claimedAt"))
                .single()
                .unwrap_or_default(),
            in_progress_until_ms: number("inProgressUntil"),
            expires_at: number("expiresAt"),
            response: StoredResponse {
                status: u16::try_from(number("responseStatus")).unwrap_or(202),
                body: text("responseBody").unwrap_or_default(),
                location: text("location"),
            },
        }
    }
}

impl DynamoIdempotency {
    /// Writes a new in-progress claim, on condition that the key is free (`replacing: None`)
    /// or still holds the claim `replacing` (a dead record being taken over). `false` when the
    /// condition failed.
    async fn put_claim(
        &self,
        scope: &KeyScope,
        fingerprint: &str,
        token: Uuid,
        claimed_at: DateTime<Utc>,
        until: DateTime<Utc>,
        replacing: Option<&str>,
    ) -> Result<bool, Error> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(scope.pk()))
            .item("sk", s(SK))
            .item("lifecycle", s(IN_PROGRESS))
            .item("token", s(token.to_string()))
            .item("fingerprint", s(fingerprint))
            .item("claimedAt", n(claimed_at.timestamp_millis()))
            .item("inProgressUntil", n(until.timestamp_millis()))
            .item("expiresAt", n(Utc::now().timestamp() + RETENTION_SECS));
        let put = match replacing {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(old) => put
                .condition_expression("#token = :old")
                .expression_attribute_names("#token", "token")
                .expression_attribute_values(":old", s(old)),
        };
        write_if("PutItem idempotency", || put.clone().send()).await
    }

    async fn read(&self, scope: &KeyScope) -> Result<Option<Record>, Error> {
        let item = get(
            &self.client,
            &self.table,
            scope.pk(),
            SK.into(),
            "GetItem idempotency",
        )
        .await?;
        Ok(item.as_ref().map(Record::from_item))
    }
}

impl Idempotency for DynamoIdempotency {
    async fn claim(
        &self,
        scope: &KeyScope,
        fingerprint: &str,
        until: DateTime<Utc>,
    ) -> Result<Claim, Error> {
        let now = Utc::now();
        let token = Uuid::new_v4();
        for _ in 0..CLAIM_ATTEMPTS {
            // The common case first: a key never seen.
            if self
                .put_claim(scope, fingerprint, token, now, until, None)
                .await?
            {
                return Ok(Claim::New {
                    token,
                    claimed_at: now,
                });
            }
            let Some(old) = self.read(scope).await? else {
                continue; // released meanwhile: claim it afresh
            };
            // DynamoDB's TTL deletes expired records within days, not at once: until then
            // they are as good as gone.
            let expired = old.expires_at <= now.timestamp();
            let abandoned = !old.completed && old.in_progress_until_ms <= now.timestamp_millis();
            if !expired && !abandoned {
                return Ok(if old.fingerprint != fingerprint {
                    Claim::Mismatch
                } else if old.completed {
                    Claim::Replay(old.response)
                } else {
                    Claim::InProgress
                });
            }
            let claimed_at = if !expired && old.fingerprint == fingerprint {
                old.claimed_at
            } else {
                now
            };
            if self
                .put_claim(
                    scope,
                    fingerprint,
                    token,
                    claimed_at,
                    until,
                    Some(&old.token),
                )
                .await?
            {
                tracing::warn!(
                    key = %scope.key, abandoned,
                    "took over an Idempotency-Key whose request never completed"
                );
                return Ok(Claim::New { token, claimed_at });
            }
        }
        // Other requests with this key keep claiming and releasing it.
        Ok(Claim::InProgress)
    }

    async fn complete(
        &self,
        scope: &KeyScope,
        token: Uuid,
        response: &StoredResponse,
    ) -> Result<(), Error> {
        let mut set = "SET lifecycle = :completed, responseStatus = :status, \
                       responseBody = :body, expiresAt = :expires"
            .to_owned();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(scope.pk()))
            .key("sk", s(SK))
            .condition_expression("#token = :token")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token.to_string()))
            .expression_attribute_values(":completed", s(COMPLETED))
            .expression_attribute_values(":status", n(response.status))
            .expression_attribute_values(":body", s(&response.body))
            .expression_attribute_values(":expires", n(Utc::now().timestamp() + RETENTION_SECS));
        if let Some(location) = &response.location {
            set.push_str(", #location = :location");
            update = update
                .expression_attribute_names("#location", "location")
                .expression_attribute_values(":location", s(location));
        }
        let update = update.update_expression(format!("{set} REMOVE inProgressUntil"));
        if !write_if("UpdateItem idempotency", || update.clone().send()).await? {
            tracing::warn!(key = %scope.key, "the claim expired and was taken over before it completed");
        }
        Ok(())
    }

    async fn release(&self, scope: &KeyScope, token: Uuid) -> Result<(), Error> {
        let abandon = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(scope.pk()))
            .key("sk", s(SK))
            .update_expression("SET inProgressUntil = :now")
            .condition_expression("#token = :token AND lifecycle = :in_progress")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token.to_string()))
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .expression_attribute_values(":now", n(0));
        // Not released when another request has taken the key over since: its claim stays.
        write_if("UpdateItem idempotency", || abandon.clone().send()).await?;
        Ok(())
    }
}
