//! One JWT authorizer, checking a request as API Gateway's HTTP API JWT authorizer does:
//!
//! 1. the token is the identity source header, with an optional `Bearer ` prefix; none → `401`;
//! 2. it is a JWT signed with RS256 (the only kind of key API Gateway fetches is RSA) by the
//!    key of the JWKS whose `kid` its header names;
//! 3. `iss` is the configured issuer; `aud` names one of the configured audiences or, only
//!    when the token has no `aud` (Cognito access tokens), `client_id` is one of them;
//! 4. `exp` is in the future, `nbf` and `iat` (when present) are not;
//! 5. when the route lists scopes, the token's `scope` (or `scp`) holds at least one of them,
//!    else `403`.
//!
//! Times allow [`LEEWAY_SECS`] of clock skew. Refusal descriptions are fixed texts: nothing of
//! the token is echoed back.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 5;

/// A JWT authorizer ready to check requests.
pub struct Verifier {
    /// Lower-case name of the header carrying the token.
    header: String,
    issuer: String,
    audiences: Vec<String>,
    /// Every RSA key of the JWKS that has a `kid`.
    keys: BTreeMap<String, DecodingKey>,
}

/// A request that passed: what the function's event carries in `requestContext.authorizer`.
#[derive(Debug, Clone, PartialEq)]
pub struct Authorized {
    /// Every claim of the token, as it decoded.
    pub claims: Map<String, Value>,
    /// The token's scopes; `None` when it has no `scope`/`scp` claim.
    pub scopes: Option<Vec<String>>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// `401`: no token in the identity source.
    Missing,
    /// `401`: the token is not valid; the text says why.
    Invalid(&'static str),
    /// `403`: a valid token without any of the route's scopes.
    InsufficientScope,
}

impl Refusal {
    /// `401` or `403`.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Missing | Refusal::Invalid(_) => 401,
            Refusal::InsufficientScope => 403,
        }
    }

    /// API Gateway's body message for the status.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::Missing | Refusal::Invalid(_) => "Unauthorized",
            Refusal::InsufficientScope => "Forbidden",
        }
    }

    /// The `www-authenticate` challenge (RFC 6750), naming the route's `scopes`.
    pub fn challenge(&self, scopes: &[String]) -> String {
        let scope = scopes.join(" ");
        match self {
            Refusal::Missing => "Bearer".to_string(),
            Refusal::Invalid(why) => {
                format!(r#"Bearer scope="{scope}" error="invalid_token" error_description="{why}""#)
            }
            Refusal::InsufficientScope => format!(
                r#"Bearer scope="{scope}" error="insufficient_scope" error_description="the token has none of the scopes of the route""#
            ),
        }
    }
}

impl Verifier {
    /// An authorizer reading the token from `header` and accepting tokens of `issuer` for any of
    /// `audiences`, signed by a key of `jwks`.
    pub fn new(header: &str, issuer: String, audiences: Vec<String>, jwks: &JwkSet) -> Verifier {
        let keys = jwks
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let rsa = matches!(
                    jwk.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
                );
                let key = DecodingKey::from_jwk(jwk).ok().filter(|_| rsa)?;
                Some((kid, key))
            })
            .collect();
        Verifier {
            header: header.to_ascii_lowercase(),
            issuer,
            audiences,
            keys,
        }
    }

    /// Checks the request's token at `now` (seconds since the epoch) against a route that needs
    /// one of `scopes` (any token when empty).
    pub fn check(
        &self,
        headers: &HeaderMap,
        scopes: &[String],
        now: i64,
    ) -> Result<Authorized, Refusal> {
        let token = self.token(headers).ok_or(Refusal::Missing)?;
        let claims = self.verified_claims(&token)?;
        self.check_claims(&claims, now)?;
        let granted = token_scopes(&claims);
        let allowed = scopes.is_empty()
            || granted
                .as_ref()
                .is_some_and(|g| g.iter().any(|s| scopes.contains(s)));
        if !allowed {
            return Err(Refusal::InsufficientScope);
        }
        Ok(Authorized {
            claims,
            scopes: granted,
        })
    }

    /// The identity source's value without its optional `Bearer ` prefix; `None` when absent.
    /// Repeated headers are comma-joined, as API Gateway passes them on (and so never valid).
    fn token(&self, headers: &HeaderMap) -> Option<String> {
        let values: Vec<&str> = headers
            .get_all(self.header.as_str())
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .collect();
        if values.is_empty() {
            return None;
        }
        let joined = values.join(",");
        let value = joined.trim();
        let token = match value.split_once(char::is_whitespace) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim_start(),
            _ if value.eq_ignore_ascii_case("bearer") => "",
            _ => value,
        };
        (!token.is_empty()).then(|| token.to_string())
    }

    /// The claims of `token` once its algorithm, key and signature are checked.
    fn verified_claims(&self, token: &str) -> Result<Map<String, Value>, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::Invalid("the token is not a valid JWT"))?;
        if header.alg != Algorithm::RS256 {
            return Err(Refusal::Invalid("the token is not signed with RS256"));
        }
        let kid = header
            .kid
            .ok_or(Refusal::Invalid("the token's header has no kid"))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or(Refusal::Invalid("no key of the JWKS has the token's kid"))?;
        // Only the signature here: the claims are checked below, by API Gateway's rules.
        let mut only_signature = Validation::new(Algorithm::RS256);
        only_signature.required_spec_claims.clear();
        only_signature.validate_exp = false;
        only_signature.validate_nbf = false;
        only_signature.validate_aud = false;
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &only_signature)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    Refusal::Invalid("the token's signature is invalid")
                }
                _ => Refusal::Invalid("the token is not a valid JWT"),
            })
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<(), Refusal> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(Refusal::Invalid("the token's issuer is not accepted"));
        }
        let accepted = |v: &Value| {
            v.as_str()
                .is_some_and(|a| self.audiences.iter().any(|x| x == a))
        };
        let audience_ok = match claims.get("aud") {
            Some(Value::Array(auds)) => auds.iter().any(accepted),
            Some(aud) => accepted(aud),
            None => claims.get("client_id").is_some_and(accepted),
        };
        if !audience_ok {
            return Err(Refusal::Invalid("the token's audience is not accepted"));
        }
        match time(claims, "exp")? {
            None => return Err(Refusal::Invalid("the token has no exp")),
            Some(exp) if exp + LEEWAY_SECS <= now => {
                return Err(Refusal::Invalid("the token has expired"));
            }
            Some(_) => {}
        }
        if time(claims, "nbf")?.is_some_and(|nbf| nbf - LEEWAY_SECS > now) {
            return Err(Refusal::Invalid("the token is not valid yet"));
        }
        if time(claims, "iat")?.is_some_and(|iat| iat - LEEWAY_SECS > now) {
            return Err(Refusal::Invalid("the token was issued in the future"));
        }
        Ok(())
    }
}

/// A NumericDate claim (seconds, possibly fractional), truncated; `None` when absent.
fn time(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(Refusal::Invalid(
                "a time claim of the token is not a number",
            )),
    }
}

/// The scopes of `scope` or else `scp`: a space-separated string or a list of strings.
pub fn token_scopes(claims: &Map<String, Value>) -> Option<Vec<String>> {
    let claim = claims.get("scope").or_else(|| claims.get("scp"))?;
    match claim {
        Value::String(s) => Some(s.split_whitespace().map(str::to_string).collect()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}
