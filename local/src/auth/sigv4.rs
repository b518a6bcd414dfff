//! `AWS_IAM` routes: a request passes when it is signed with Signature Version 4 by the
//! credentials the runner gives its functions ([`FunctionCredentials`]), as API Gateway lets
//! through a request signed by a principal allowed to `execute-api:Invoke` the route.
//!
//! The checks, in API Gateway's order and with its `403` texts:
//!
//! 1. an `Authorization` header (none → `Forbidden`) of the `AWS4-HMAC-SHA256` scheme with its
//!    `Credential`, `SignedHeaders` and `Signature`, and an `X-Amz-Date` header;
//! 2. the credential's access key is the functions' one and, when they have a session token,
//!    `X-Amz-Security-Token` is that token (else "the security token ... is invalid");
//! 3. the credential is scoped to the date of `X-Amz-Date`, the runner's region, the
//!    `execute-api` service and `aws4_request`;
//! 4. `X-Amz-Date` is within [`MAX_SKEW_SECS`] of now (else "Signature expired" / "not yet
//!    current");
//! 5. `host` is signed, and the signature recomputed over the method, the path (SigV4's
//!    normalized, double-encoded form, as every service but S3), the query, the headers named
//!    in `SignedHeaders` (with their values as received) and the SHA-256 of the body equals the
//!    request's.
//!
//! The recomputation is the `aws-sigv4` crate's signer (the AWS SDK's own), fed only the signed
//! headers and the request's own time, with no header excluded; the headers it adds itself
//! (`x-amz-date`, `x-amz-security-token`, `x-amz-content-sha256`) are left to it and enabled
//! exactly when the request signed them. The body is always covered: a request whose
//! `x-amz-content-sha256` is not its body's hash (`UNSIGNED-PAYLOAD` included) does not pass.
//! Not supported locally: presigned URLs (signature in the query string) and requests dated
//! by `Date` instead of `X-Amz-Date`; IAM policies are not evaluated (every function has the
//! same credentials here).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SessionTokenMode, SignableBody, SignableRequest,
    SigningParams, SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::http::{HeaderMap, HeaderName};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Value, json};

use crate::runtime::FunctionCredentials;

/// The service of API Gateway's data plane, which SigV4 credentials must be scoped to.
pub const SERVICE: &str = "execute-api";
/// How far `X-Amz-Date` may be from now, either way, in seconds.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
const AMZ_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Headers the signer adds to the canonical request itself (from its settings, credentials
/// and time), so they are not handed to it.
const SIGNER_HEADERS: [&str; 3] = ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];
const MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
const INVALID_TOKEN: &str = "The security token included in the request is invalid.";

/// What of a request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub method: &'a str,
    /// The path as received (still percent-encoded).
    pub path: &'a str,
    /// The query string as received, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Why an `AWS_IAM` route refuses a request; always a `403`.
#[derive(Debug, Clone, PartialEq)]
pub enum SignatureRefusal {
    /// No `Authorization` header.
    Missing,
    /// Not a SigV4 `Authorization` header, or one without all its parts.
    Malformed(String),
    /// An access key (or session token) the runner does not give its functions.
    InvalidToken,
    /// A credential scoped to another date, region or service.
    Scope(String),
    /// `X-Amz-Date` too far from now.
    Expired(String),
    /// The signature does not recompute.
    Mismatch,
}

impl SignatureRefusal {
    /// API Gateway's `message`.
    pub fn message(&self) -> &str {
        match self {
            SignatureRefusal::Missing => "Forbidden",
            SignatureRefusal::Malformed(m)
            | SignatureRefusal::Scope(m)
            | SignatureRefusal::Expired(m) => m,
            SignatureRefusal::InvalidToken => INVALID_TOKEN,
            SignatureRefusal::Mismatch => MISMATCH,
        }
    }
}

/// The `AWS_IAM` authorizer of the local API.
#[derive(Debug, Clone)]
pub struct IamVerifier {
    credentials: FunctionCredentials,
    region: String,
    account_id: String,
}

/// The parts of a SigV4 `Authorization` header.
struct Authorization<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

impl IamVerifier {
    /// Accepts requests signed with `credentials` for `region`; the events name `account_id`.
    pub fn new(credentials: FunctionCredentials, region: &str, account_id: &str) -> IamVerifier {
        IamVerifier {
            credentials,
            region: region.to_string(),
            account_id: account_id.to_string(),
        }
    }

    /// Checks `req` at `now` (seconds since the epoch); the event's `requestContext.authorizer`
    /// when it passes.
    pub fn check(&self, req: &Incoming<'_>, now: i64) -> Result<Value, SignatureRefusal> {
        let header = joined(req.headers, "authorization").ok_or(SignatureRefusal::Missing)?;
        let amz_date = joined(req.headers, "x-amz-date");
        let auth = parse_authorization(&header, amz_date.is_some())?;
        let amz_date = amz_date.unwrap_or_default();

        let scope: Vec<&str> = auth.credential.split('/').collect();
        let [access_key, scope_date, region, service, terminator] = scope[..] else {
            return Err(SignatureRefusal::Malformed(format!(
                "Credential should be <access key>/<YYYYMMDD>/<region>/{SERVICE}/{TERMINATOR}."
            )));
        };
        if access_key != self.credentials.access_key_id {
            return Err(SignatureRefusal::InvalidToken);
        }
        let token = joined(req.headers, "x-amz-security-token");
        if token != self.credentials.session_token {
            return Err(SignatureRefusal::InvalidToken);
        }
        let time = parse_amz_date(&amz_date).ok_or_else(|| {
            SignatureRefusal::Malformed(format!(
                "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601"
            ))
        })?;
        if scope_date != &amz_date[..8] {
            return Err(SignatureRefusal::Scope(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{scope_date}' != '{}', from '{amz_date}'.",
                &amz_date[..8]
            )));
        }
        if region != self.region {
            return Err(SignatureRefusal::Scope(format!(
                "Credential should be scoped to a valid region, not '{region}'."
            )));
        }
        if service != SERVICE {
            return Err(SignatureRefusal::Scope(format!(
                "Credential should be scoped to correct service: '{SERVICE}'."
            )));
        }
        if terminator != TERMINATOR {
            return Err(SignatureRefusal::Scope(format!(
                "Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{terminator}'."
            )));
        }
        check_skew(time, &amz_date, now)?;

        let signed: Vec<&str> = auth.signed_headers.split(';').collect();
        if !signed.contains(&"host") {
            return Err(SignatureRefusal::Malformed(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
            ));
        }
        let expected = self.signature(req, &signed, token.as_deref(), time)?;
        if !same(expected.as_bytes(), auth.signature.as_bytes()) {
            return Err(SignatureRefusal::Mismatch);
        }
        Ok(self.context())
    }

    /// The signature of `req` over the `signed` headers at `time`, as the SDK's signer makes
    /// it with its default settings for a service other than S3.
    fn signature(
        &self,
        req: &Incoming<'_>,
        signed: &[&str],
        token: Option<&str>,
        time: DateTime<Utc>,
    ) -> Result<String, SignatureRefusal> {
        let mut headers: Vec<(&str, &str)> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for &name in signed {
            if SIGNER_HEADERS.contains(&name) || seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let header =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| SignatureRefusal::Mismatch)?;
            for value in req.headers.get_all(&header) {
                let value = std::str::from_utf8(value.as_bytes())
                    .map_err(|_| SignatureRefusal::Mismatch)?;
                headers.push((name, value));
            }
        }
        // The signer takes the host from the URI when no header gives it (and panics without
        // one); the URI here has none.
        if !headers.iter().any(|(n, _)| *n == "host") {
            return Err(SignatureRefusal::Mismatch);
        }
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Double;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
        settings.excluded_headers = None;
        settings.payload_checksum_kind = if signed.contains(&"x-amz-content-sha256") {
            PayloadChecksumKind::XAmzSha256
        } else {
            PayloadChecksumKind::NoHeader
        };
        settings.session_token_mode = if signed.contains(&"x-amz-security-token") {
            SessionTokenMode::Include
        } else {
            SessionTokenMode::Exclude
        };
        let identity: Identity = Credentials::new(
            &self.credentials.access_key_id,
            &self.credentials.secret_access_key,
            token.map(str::to_string),
            None,
            "local",
        )
        .into();
        let params: SigningParams<'_> = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(SystemTime::from(time))
            .settings(settings)
            .build()
            .map_err(|_| SignatureRefusal::Mismatch)?
            .into();
        let uri = if req.query.is_empty() {
            req.path.to_string()
        } else {
            format!("{}?{}", req.path, req.query)
        };
        let signable = SignableRequest::new(
            req.method,
            uri,
            headers.into_iter(),
            SignableBody::Bytes(req.body),
        )
        .map_err(|_| SignatureRefusal::Mismatch)?;
        let output = sign(signable, &params).map_err(|_| SignatureRefusal::Mismatch)?;
        Ok(output.signature().to_string())
    }

    /// `requestContext.authorizer` of an authorized request, as API Gateway fills it for a
    /// caller with IAM user credentials.
    fn context(&self) -> Value {
        let key = &self.credentials.access_key_id;
        json!({"iam": {
            "accessKey": key,
            "accountId": self.account_id,
            "callerId": key,
            "cognitoIdentity": null,
            "principalOrgId": null,
            "userArn": format!("arn:aws:iam::{}:user/local", self.account_id),
            "userId": key,
        }})
    }
}

/// Signs `req` (whose body is `body`) for `execute-api` in `region` with `credentials`, as the
/// AWS SDK's signer does with its default settings (`x-amz-date`, `authorization`, and
/// `x-amz-security-token` with a session token): what a client of an `AWS_IAM` route sends.
/// The system tests and `make load` sign `POST /agents/match` with it.
pub fn sign_request<B>(
    req: &mut axum::http::Request<B>,
    body: &[u8],
    credentials: &FunctionCredentials,
    region: &str,
) -> Result<(), String> {
    let identity: Identity = Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "local",
    )
    .into();
    let params: SigningParams = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("execute-api")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
        .collect();
    let signable = SignableRequest::new(
        req.method().as_str(),
        req.uri().to_string(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

/// Every value of header `name`, comma-joined as API Gateway passes them on.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The parts of `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`; API
/// Gateway's message naming every missing part otherwise (the header's value not echoed).
fn parse_authorization(value: &str, dated: bool) -> Result<Authorization<'_>, SignatureRefusal> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    if scheme == ALGORITHM {
        for part in rest.split(',') {
            let Some((key, v)) = part.split_once('=') else {
                continue;
            };
            let v = Some(v.trim()).filter(|v| !v.is_empty());
            match key.trim() {
                "Credential" => credential = v,
                "SignedHeaders" => signed_headers = v,
                "Signature" => signature = v,
                _ => {}
            }
        }
    }
    let mut missing = Vec::new();
    for (name, part) in [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed_headers),
    ] {
        if part.is_none() {
            missing.push(format!("Authorization header requires '{name}' parameter."));
        }
    }
    if !dated {
        missing.push(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .to_string(),
        );
    }
    match (credential, signed_headers, signature) {
        (Some(credential), Some(signed_headers), Some(signature)) if missing.is_empty() => {
            Ok(Authorization {
                credential,
                signed_headers,
                signature,
            })
        }
        _ => Err(SignatureRefusal::Malformed(missing.join(" "))),
    }
}

/// `YYYYMMDDTHHMMSSZ`, exactly.
fn parse_amz_date(value: &str) -> Option<DateTime<Utc>> {
    let time = NaiveDateTime::parse_from_str(value, AMZ_DATE_FORMAT)
        .ok()?
        .and_utc();
    (time.format(AMZ_DATE_FORMAT).to_string() == value).then_some(time)
}

fn check_skew(time: DateTime<Utc>, amz_date: &str, now: i64) -> Result<(), SignatureRefusal> {
    let now = DateTime::from_timestamp(now, 0).unwrap_or_default();
    let skew = chrono::Duration::seconds(MAX_SKEW_SECS);
    let minutes = MAX_SKEW_SECS / 60;
    let fmt = |t: DateTime<Utc>| t.format(AMZ_DATE_FORMAT).to_string();
    if time < now - skew {
        return Err(SignatureRefusal::Expired(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - {minutes} min.)",
            fmt(now - skew),
            fmt(now)
        )));
    }
    if time > now + skew {
        return Err(SignatureRefusal::Expired(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + {minutes} min.)",
            fmt(now + skew),
            fmt(now)
        )));
    }
    Ok(())
}

/// Equality that takes as long whatever the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
