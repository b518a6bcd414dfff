//! Accepting a command at the HTTP edge: publish it to the bus and answer `202`, honouring an
//! `Idempotency-Key` so a retried request never becomes a second command.

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

pub async fn accept<I: Idempotency, B: EventBus>(
    idempotency: &I,
    bus: &B,
    req: &Request,
    cmd: Accept<'_>,
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
        if let Err(e) = bus.publish(std::slice::from_ref(&cmd.envelope)).await {
            // Not accepted: free the key so the client's retry is processed afresh.
            if let Err(release) = idempotency.release(cmd.scope, key).await {
                tracing::error!(error = %release, "could not release idempotency key");
            }
            return Err(e);
        }
    } else {
        bus.publish(std::slice::from_ref(&cmd.envelope)).await?;
    }
    tracing::info!(
        command = cmd.envelope.message.detail_type(),
        command_id = %cmd.envelope.id,
        correlation_id = %cmd.envelope.correlation_id,
        "command accepted"
    );
    Ok(replay(&response))
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
