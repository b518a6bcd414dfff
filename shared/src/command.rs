//! Accepting a command at the HTTP edge: publish it to the bus and answer `202`, honouring an
//! `Idempotency-Key` so a retried request never becomes a second command.

use std::future::Future;

use lambda_http::{Body, Request, Response};
use serde_json::Value;

use crate::{
    Error,
    bus::EventBus,
    events::Envelope,
    store::idempotency::{Claim, Idempotency, StoredResponse},
};

/// A validated command ready to be accepted.
pub struct Accept<'a> {
    /// Idempotency keys are unique within a scope (e.g. one agent, one account).
    pub scope: &'a str,
    /// The parsed request body; two requests are "the same" when these are equal as JSON.
    pub request: &'a Value,
    pub envelope: Envelope,
    /// Where the caller can watch the outcome.
    pub location: String,
    /// The `202` body (ids of what was created).
    pub body: Value,
}

/// The `Idempotency-Key` header, if any: 1–128 printable ASCII characters.
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

/// A record the API writes before publishing a command, so that what the command creates is
/// visible at once (e.g. a PENDING conversation). Two writes that cannot share a transaction:
/// if publishing fails, [`Provisional::undo`] compensates; a record left behind when the undo
/// fails too must be harmless (it expires; the command was never accepted, so its id was never
/// returned) and the worker must accept a command whose record is missing (a publish reported
/// as failed may still have gone through).
pub trait Provisional: Send + Sync {
    /// Called only for a new command, never for a replay of an `Idempotency-Key`.
    fn write(&self) -> impl Future<Output = Result<(), Error>> + Send;
    fn undo(&self) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Nothing to write before publishing: plain [`accept`].
pub struct NoRecord;

impl Provisional for NoRecord {
    async fn write(&self) -> Result<(), Error> {
        Ok(())
    }
    async fn undo(&self) -> Result<(), Error> {
        Ok(())
    }
}

pub async fn accept<I: Idempotency, B: EventBus>(
    idempotency: &I,
    bus: &B,
    req: &Request,
    cmd: Accept<'_>,
) -> Result<Response<Body>, Error> {
    accept_with(idempotency, bus, req, cmd, &NoRecord).await
}

/// [`accept`], writing `record` after the idempotency claim and before publishing.
pub async fn accept_with<I: Idempotency, B: EventBus, P: Provisional>(
    idempotency: &I,
    bus: &B,
    req: &Request,
    cmd: Accept<'_>,
    record: &P,
) -> Result<Response<Body>, Error> {
    let key = idempotency_key(req)?;
    let response = StoredResponse {
        status: 202,
        body: serde_json::to_string(&cmd.body)?,
        location: Some(cmd.location),
    };
    if let Some(key) = key {
        // serde_json's maps are sorted, so this string is canonical for equal JSON.
        let fingerprint = cmd.request.to_string();
        match idempotency
            .claim(cmd.scope, key, &fingerprint, &response)
            .await?
        {
            Claim::New => {}
            Claim::Replay(stored) => return Ok(replay(&stored)),
            Claim::Mismatch => {
                return Err(Error::invalid(
                    "Idempotency-Key",
                    "this key was already used with a different request body",
                ));
            }
        }
        if let Err(e) = publish(bus, &cmd.envelope, record).await {
            // Not accepted: free the key so the client's retry is processed afresh.
            if let Err(release) = idempotency.release(cmd.scope, key).await {
                tracing::error!(error = %release, "could not release idempotency key");
            }
            return Err(e);
        }
    } else {
        publish(bus, &cmd.envelope, record).await?;
    }
    tracing::info!(
        command = cmd.envelope.message.detail_type(),
        command_id = %cmd.envelope.id,
        correlation_id = %cmd.envelope.correlation_id,
        "command accepted"
    );
    Ok(replay(&response))
}

async fn publish<B: EventBus, P: Provisional>(
    bus: &B,
    envelope: &Envelope,
    record: &P,
) -> Result<(), Error> {
    record.write().await?;
    if let Err(e) = bus.publish(std::slice::from_ref(envelope)).await {
        if let Err(undo) = record.undo().await {
            tracing::error!(error = %undo, "could not undo the provisional record; it expires");
        }
        return Err(e);
    }
    Ok(())
}

fn replay(stored: &StoredResponse) -> Response<Body> {
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
