//! Accepting a command at the HTTP edge: record what it makes visible at once, hand it off to
//! the worker that applies it, answer `202` — honouring an `Idempotency-Key`, so that a
//! retried request never becomes a second command and a `202` is never sent for a command
//! that was not handed off.
//!
//! One mechanism for every route ([`accept`]):
//!
//! 1. Without a key, the command gets fresh ids and is handed off.
//! 2. With a key, the key is claimed for (caller, route, key)
//!    ([`crate::store::idempotency`]): a completed claim replays its response; one still in
//!    progress is a `409` with `Retry-After`; the same key with another request a `422`.
//! 3. A new claim derives the command's ids from the key, the request and the claim's time
//!    ([`Ids`]), hands the command off, and only then completes the claim with the `202`. A
//!    failed hand-off releases the claim at once; a request that dies between claim and
//!    completion leaves a claim that is abandoned at the function's deadline. Either way the
//!    retry that takes the claim over keeps its time, so it derives the *same* ids: whatever an
//!    earlier attempt did before failing (a provisional record written, a command sent whose
//!    answer was lost or timed out) belongs to the same command, which the worker applies once.
//!
//! The hand-off has two parts, each behind a narrow trait: [`Provisional`], the record a
//! command makes visible at once (a PENDING conversation, trade or agent: read-your-writes),
//! written before sending and compensated when sending fails; and [`CommandTransport`], where
//! the command goes (EventBridge, or an SQS FIFO queue where order per aggregate matters).

use std::future::Future;

use chrono::{DateTime, TimeZone, Utc};
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    Error,
    auth::Caller,
    envelope::Envelope,
    http::Route,
    store::idempotency::{Claim, Idempotency, KeyScope, StoredResponse},
};

/// Where accepted commands go to be applied: EventBridge (`crate::bus::EventBridgeBus`) or an
/// SQS FIFO queue (`crate::queue::SqsFifoQueue`).
pub trait CommandTransport: Send + Sync {
    /// Sends `command`, or fails (nothing was sent, or it is unknown whether it was: the
    /// command's id lets its worker deduplicate a resend).
    fn send(&self, command: &Envelope) -> impl Future<Output = Result<(), Error>> + Send;
}

/// What writing a provisional record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// Written, or already there from an earlier attempt of the same request: send the command.
    Written,
    /// The command was applied already (an earlier attempt of the same request handed it off):
    /// nothing to send, the command is accepted.
    Applied,
}

/// What undoing a provisional record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compensated {
    /// Removed: the command was not accepted.
    Undone,
    /// The command reached its worker after all (a send reported as failed went through): it
    /// was accepted.
    Applied,
}

/// A record a command makes visible before it is applied (read-your-writes: `GET` on the
/// `Location` never answers `404` for something just accepted). The write and the send cannot
/// share a transaction, so:
/// - it is written after the `Idempotency-Key` claim (a replay writes nothing) and before the
///   command is sent;
/// - if sending fails, it is undone, unless its command was applied meanwhile;
/// - if undoing fails too, it must be harmless: it expires, or is overwritten by the worker;
/// - its worker must apply a command whose record is missing (a send reported as failed may
///   have gone through): every command carries every field of what it creates.
pub trait Provisional: Send + Sync {
    fn write(&self) -> impl Future<Output = Result<Provisioned, Error>> + Send;
    fn undo(&self) -> impl Future<Output = Result<Compensated, Error>> + Send;
}

/// No provisional record (the command changes something that exists already).
pub struct NothingProvisional;

impl Provisional for NothingProvisional {
    async fn write(&self) -> Result<Provisioned, Error> {
        Ok(Provisioned::Written)
    }
    async fn undo(&self) -> Result<Compensated, Error> {
        Ok(Compensated::Undone)
    }
}

/// What checking a [`Precondition`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// It holds: write the provisional record and send the command.
    Holds,
    /// This request's command was applied already (an earlier attempt handed it off and lost
    /// the answer): nothing to write or send, the command is accepted.
    Applied,
}

/// A condition on the aggregate as it is now ("the conversation is open", "the agent is at
/// version 3"), checked in the hand-off: after the `Idempotency-Key` claim, so with the
/// request's derived ids, before anything is written. Checked anywhere earlier, the retry of a
/// request whose command was applied while its answer was lost would be refused by the very
/// state that command (or a later one) brought about; checked here, it first looks for its
/// own command and is accepted. Errors are the refusal (`409`, `412`): nothing was written and
/// the claim is released, so a retry checks again.
pub trait Precondition: Send + Sync {
    fn check(&self) -> impl Future<Output = Result<Checked, Error>> + Send;
}

/// A provisional record (or [`NothingProvisional`]) written only when `precondition` holds:
/// the one way a command route refuses on current state.
pub struct Guarded<C, P> {
    pub precondition: C,
    pub record: P,
}

impl<C: Precondition, P: Provisional> Provisional for Guarded<C, P> {
    async fn write(&self) -> Result<Provisioned, Error> {
        match self.precondition.check().await? {
            Checked::Holds => self.record.write().await,
            Checked::Applied => Ok(Provisioned::Applied),
        }
    }

    async fn undo(&self) -> Result<Compensated, Error> {
        self.record.undo().await
    }
}

/// The ids of an accepted command and of what it creates, and the time it was accepted.
///
/// Without an `Idempotency-Key` they are fresh. With one, they are derived from the key's
/// scope, the request's fingerprint and the time the request was first claimed, so every
/// attempt of the same request names the same command; both ids are UUIDv7 (time-ordered: a
/// conversation's messages list in acceptance order) whose random bits come from that
/// derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// The command envelope's id, which its worker deduplicates on.
    pub command: Uuid,
    /// The id of what the command creates (a conversation, a message, a trade), if anything.
    pub created: Uuid,
    /// When the command was accepted.
    pub at: DateTime<Utc>,
}

/// Namespace of the UUIDv5 seeds of derived ids.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x8f1c_2a5e_7b3d_4c6f_9e0a_1b2c_3d4e_5f60);

impl Ids {
    fn fresh() -> Ids {
        Ids {
            command: Uuid::now_v7(),
            created: Uuid::now_v7(),
            at: Utc::now(),
        }
    }

    fn derived(scope: &KeyScope, fingerprint: &str, at: DateTime<Utc>) -> Ids {
        let seed = json!([scope.caller, scope.route, scope.key, fingerprint]).to_string();
        let v7 = |salt: &str| {
            let hash = Uuid::new_v5(&ID_NAMESPACE, format!("{salt}\n{seed}").as_bytes());
            let random: [u8; 10] = hash.as_bytes()[6..].try_into().expect("10 bytes");
            let millis = u64::try_from(at.timestamp_millis()).unwrap_or_default();
            uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
        };
        // The clock part is the claim time in milliseconds: `at` is read back at that
        // precision, so every attempt agrees on it.
        let at = Utc
            .timestamp_millis_opt(at.timestamp_millis())
            .single()
            .unwrap_or(at);
        Ids {
            command: v7("command"),
            created: v7("created"),
            at,
        }
    }
}

impl Ids {
    /// The envelope of the command `message`, with these ids' command id and time.
    pub fn envelope(&self, correlation_id: String, payload: crate::envelope::Payload) -> Envelope {
        Envelope {
            id: self.command,
            correlation_id,
            occurred_at: self.at,
            payload,
        }
    }

    /// [`Ids::created`] as a typed id (a conversation, message or trade id): a UUID is 36
    /// characters of hex digits and `-`, valid for every id type.
    pub fn created_id<T: std::str::FromStr>(&self) -> T
    where
        T::Err: std::fmt::Debug,
    {
        self.created
            .to_string()
            .parse()
            .expect("a UUID is a valid id: 36 characters of hex digits and '-'")
    }
}

/// A command ready to be handed off, as built from its [`Ids`].
pub struct Accepted<P> {
    /// The command, whose id is `ids.command`.
    pub command: Envelope,
    /// Where the caller can watch the outcome (the `Location` header).
    pub location: String,
    /// The `202` body: the ids of what was accepted and created.
    pub body: Value,
    /// What the command makes visible at once ([`NothingProvisional`] for nothing).
    pub provisional: P,
}

/// The `Idempotency-Key` header, if any: 1–128 printable ASCII characters (`422` otherwise).
pub fn idempotency_key(req: &Request) -> Result<Option<&str>, Error> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k))
        }
        _ => Err(Error::invalid(
            "Idempotency-Key",
            "must be 1 to 128 printable ASCII characters",
        )),
    }
}

/// How long a claim stays in progress when the request carries no Lambda context (a handler
/// called directly, as tests do): the `Timeout` `template.yaml` gives every function.
const FALLBACK_TIMEOUT_MS: i64 = 10_000;

/// When an in-progress claim of `req` is abandoned: the invocation's deadline (Lambda kills the
/// function then), at least a second from now (a deadline already past would make the claim
/// free for the taking while it is still being worked on).
fn in_progress_until(req: &Request) -> DateTime<Utc> {
    let now = Utc::now();
    let deadline = req
        .lambda_context_ref()
        .and_then(|c| i64::try_from(c.deadline).ok())
        .filter(|d| *d > 0)
        .unwrap_or(now.timestamp_millis() + FALLBACK_TIMEOUT_MS);
    let at_least = now.timestamp_millis() + 1_000;
    Utc.timestamp_millis_opt(deadline.max(at_least))
        .single()
        .unwrap_or(now)
}

/// What makes two requests "the same" for a key: the route's path parameters and the request
/// (`request`: the parsed body, or a canonical form of it), as canonical JSON (serde_json's
/// maps are sorted).
fn fingerprint(req: &Request, request: &Value) -> String {
    let path: serde_json::Map<String, Value> = req
        .path_parameters_ref()
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    json!({ "path": path, "request": request }).to_string()
}

/// Accepts a command (the module docs give the whole mechanism): `request` is what makes two
/// requests the same (the parsed body, or a canonical form of it), `build` makes the command
/// from its ids once they are known. Every validation of the request itself belongs before
/// this call; after it, only the hand-off can fail: `503`, or a precondition on current state
/// that a [`Provisional`] checks there, once the request's command id is known (so that a retry
/// finds its own earlier command applied rather than a state that command changed).
pub async fn accept<I, T, P, F>(
    idempotency: &I,
    transport: &T,
    req: &Request,
    request: &Value,
    build: F,
) -> Result<Response<Body>, Error>
where
    I: Idempotency,
    T: CommandTransport,
    P: Provisional,
    F: FnOnce(Ids) -> Accepted<P>,
{
    let Some(key) = idempotency_key(req)? else {
        let accepted = build(Ids::fresh());
        hand_off(transport, &accepted).await?;
        return Ok(respond(&stored(&accepted)?));
    };
    let scope = KeyScope {
        caller: Caller::principal(req)?,
        route: Route::of(req).key().to_owned(),
        key: key.to_owned(),
    };
    let fingerprint = fingerprint(req, request);
    let (token, claimed_at) = match idempotency
        .claim(&scope, &fingerprint, in_progress_until(req))
        .await?
    {
        Claim::New { token, claimed_at } => (token, claimed_at),
        Claim::Replay(stored) => return Ok(respond(&stored)),
        Claim::InProgress => {
            return Err(Error::InProgress(
                "a request with this Idempotency-Key is still being processed; retry shortly"
                    .into(),
            ));
        }
        Claim::Mismatch => {
            return Err(Error::invalid(
                "Idempotency-Key",
                "this key was already used with a different request",
            ));
        }
    };
    let accepted = build(Ids::derived(&scope, &fingerprint, claimed_at));
    let response = match stored(&accepted) {
        Ok(response) => response,
        Err(e) => {
            release(idempotency, &scope, token).await;
            return Err(e);
        }
    };
    if let Err(e) = hand_off(transport, &accepted).await {
        release(idempotency, &scope, token).await;
        return Err(e);
    }
    if let Err(e) = idempotency.complete(&scope, token, &response).await {
        // Accepted all the same. The claim stays in progress until its deadline; a retry after
        // that hands off the same command again, which its worker deduplicates.
        tracing::error!(error = %e, "could not complete the Idempotency-Key claim");
    }
    Ok(respond(&response))
}

/// Not accepted: frees the key so the client's retry is processed afresh (if this fails, the
/// claim is abandoned at its deadline).
async fn release<I: Idempotency>(idempotency: &I, scope: &KeyScope, token: Uuid) {
    if let Err(e) = idempotency.release(scope, token).await {
        tracing::error!(error = %e, "could not release the Idempotency-Key claim");
    }
}

/// Writes the provisional record, sends the command, compensates when sending fails. A write
/// that failed is not undone: it was not made, or (a timeout, a lost answer) it was, under the
/// request's derived ids, which the client's retry adopts; without a retry it expires. Undoing
/// it would wait on the very dependency that just failed, doubling the time to the `503`.
async fn hand_off<T: CommandTransport, P: Provisional>(
    transport: &T,
    accepted: &Accepted<P>,
) -> Result<(), Error> {
    let command = &accepted.command;
    let written = accepted.provisional.write().await?;
    if written == Provisioned::Applied {
        tracing::info!(command_id = %command.id, "command applied by an earlier attempt");
        return Ok(());
    }
    if let Err(e) = transport.send(command).await {
        match accepted.provisional.undo().await {
            Ok(Compensated::Undone) => return Err(e),
            Ok(Compensated::Applied) => {
                tracing::warn!(command_id = %command.id, error = %e, "send reported a failure but the command was applied");
            }
            Err(undo) => {
                tracing::error!(error = %undo, "could not undo the provisional record; it expires");
                return Err(e);
            }
        }
    }
    tracing::info!(
        command = command.payload.detail_type(),
        command_id = %command.id,
        correlation_id = %command.correlation_id,
        "command accepted"
    );
    Ok(())
}

fn stored<P>(accepted: &Accepted<P>) -> Result<StoredResponse, Error> {
    Ok(StoredResponse {
        status: 202,
        body: serde_json::to_string(&accepted.body)?,
        location: Some(accepted.location.clone()),
    })
}

fn respond(stored: &StoredResponse) -> Response<Body> {
    let mut builder = Response::builder()
        .status(stored.status)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(loc) = &stored.location {
        builder = builder.header(http::header::LOCATION, loc);
    }
    builder
        .body(Body::Text(stored.body.clone()))
        .expect("stored status and headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(caller: &str) -> KeyScope {
        KeyScope {
            caller: caller.into(),
            route: "POST /conversations".into(),
            key: "k-1".into(),
        }
    }

    #[test]
    fn derived_ids_name_one_request_of_one_caller() {
        let at = Utc::now();
        let a = Ids::derived(&scope("sue"), "{}", at);
        assert_eq!(
            a,
            Ids::derived(&scope("sue"), "{}", at),
            "every attempt agrees"
        );
        assert_ne!(a.command, a.created);
        assert_eq!(a.command.get_version_num(), 7);
        assert_ne!(
            a.command,
            Ids::derived(&scope("sam"), "{}", at).command,
            "another caller"
        );
        assert_ne!(
            a.command,
            Ids::derived(&scope("sue"), "[]", at).command,
            "another request"
        );
        let later = at + chrono::Duration::milliseconds(5);
        assert!(
            Ids::derived(&scope("sue"), "{}", later).command > a.command,
            "time-ordered"
        );
        assert_eq!(a.at.timestamp_millis(), at.timestamp_millis());
    }
}
