//! Authorization of the local HTTP API, as API Gateway's HTTP API authorizers do it: JWT
//! authorizers and the built-in `AWS_IAM` one ([`sigv4`]: requests signed with the credentials
//! the runner gives its functions).
//!
//! For JWTs, on AWS the authorizer fetches the issuer's JWKS; locally the issuer is this runner: a dev
//! RSA key pair ([`keys`]) signs tokens ([`mint`], `local token`) and the gateway verifies them
//! ([`verify`]) against the issuer and audience the template configures (its parameters'
//! defaults), then hands the claims to the function ([`context`]). The key pair lives in
//! [`key_dir`]: `LOCAL_AUTH_DIR`, else `.dev/auth/` beside the template.

mod context;
mod keys;
mod mint;
pub mod sigv4;
mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use keys::{DevKeys, JWKS_FILE, PRIVATE_KEY_FILE};
pub use mint::{DEFAULT_TTL_SECS, Issuer, Role, TokenRequest, mint, sign};
pub use sigv4::{IamVerifier, Incoming, SignatureRefusal};
pub use verify::{Authorized, LEEWAY_SECS, Refusal, Verifier};

use crate::provision::Stack;
use crate::runtime::FunctionCredentials;
use crate::template::{Access, AuthorizerId, Template};

/// Environment variable: the directory of the dev key pair (default `.dev/auth/` beside the
/// template).
pub const DIR_ENV: &str = "LOCAL_AUTH_DIR";

/// Why tokens cannot be minted or checked.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key pair cannot be created or used.
    #[error("dev key pair: {0}")]
    Keys(String),
    /// The template's authorizers cannot be used locally.
    #[error("{0}")]
    Template(String),
    /// A token request that makes no sense.
    #[error("{0}")]
    Request(String),
}

impl AuthError {
    fn io(path: &Path, source: std::io::Error) -> AuthError {
        AuthError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The key directory for `template`: `LOCAL_AUTH_DIR` when set, else `<its dir>/.dev/auth`.
pub fn key_dir(template: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let dir = template
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .join(".dev")
        .join("auth")
}

/// The issuer and first audience of the template's JWT authorizers: what `local token` and the
/// tests sign for. Resolved as `local dev --stack <stack_name>` resolves them, which for an
/// issuer or audience means parameters' defaults and pseudo parameters (`AWS_REGION`, default
/// `us-east-1`). An error when the template has none, or several that differ.
pub fn issuer(template: &Template, stack_name: &str) -> Result<Issuer, AuthError> {
    let region = std::env::var("AWS_REGION")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".into());
    // Nothing is created here: a reference to a resource fails with a clear message.
    let stack = Stack::new(template, stack_name, &region, "");
    let mut found: Vec<Issuer> = Vec::new();
    for (id, a) in &template.authorizers {
        let (issuer, audiences) = resolve(id, &a.issuer, &a.audience, &stack)?;
        let first = Issuer {
            issuer,
            audience: audiences.into_iter().next().unwrap_or_default(),
        };
        if !found.contains(&first) {
            found.push(first);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(AuthError::Template(format!(
            "{} declares no JWT authorizer",
            template.path.display()
        ))),
        _ => Err(AuthError::Template(format!(
            "{} declares JWT authorizers of different issuers or audiences; local tokens need one",
            template.path.display()
        ))),
    }
}

/// Why a protected route refuses a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Denial {
    /// A JWT route: `401` or `403`, with a `www-authenticate` challenge.
    Token(Refusal),
    /// An `AWS_IAM` route: `403`.
    Signature(SignatureRefusal),
}

impl From<Refusal> for Denial {
    fn from(r: Refusal) -> Denial {
        Denial::Token(r)
    }
}

impl From<SignatureRefusal> for Denial {
    fn from(r: SignatureRefusal) -> Denial {
        Denial::Signature(r)
    }
}

impl Denial {
    pub fn status(&self) -> u16 {
        match self {
            Denial::Token(r) => r.status(),
            Denial::Signature(_) => 403,
        }
    }

    /// API Gateway's body `message`.
    pub fn message(&self) -> &str {
        match self {
            Denial::Token(r) => r.message(),
            Denial::Signature(r) => r.message(),
        }
    }

    /// The `www-authenticate` challenge naming the route's `scopes` (JWT routes only).
    pub fn challenge(&self, scopes: &[String]) -> Option<String> {
        match self {
            Denial::Token(r) => Some(r.challenge(scopes)),
            Denial::Signature(_) => None,
        }
    }
}

/// Every authorizer of a template, ready to check requests.
pub struct Authorizers {
    verifiers: BTreeMap<AuthorizerId, Verifier>,
    iam: IamVerifier,
}

impl Authorizers {
    /// The template's JWT authorizers, issuers and audiences resolved against `stack`,
    /// verifying with the dev key set of `dir` (created when absent), and the `AWS_IAM` one,
    /// accepting the functions' credentials ([`FunctionCredentials::from_env`]) for the
    /// stack's region. Without JWT authorizers in the template, no key is touched.
    pub fn load(template: &Template, stack: &Stack, dir: &Path) -> Result<Authorizers, AuthError> {
        let iam = IamVerifier::new(
            FunctionCredentials::from_env(),
            &stack.region,
            &stack.account_id,
        );
        if template.authorizers.is_empty() {
            return Ok(Authorizers {
                verifiers: BTreeMap::new(),
                iam,
            });
        }
        let keys = DevKeys::load_or_create(dir)?;
        let mut verifiers = BTreeMap::new();
        for (id, a) in &template.authorizers {
            let (issuer, audiences) = resolve(id, &a.issuer, &a.audience, stack)?;
            verifiers.insert(
                id.clone(),
                Verifier::new(&a.header, issuer, audiences, &keys.jwks),
            );
        }
        Ok(Authorizers { verifiers, iam })
    }

    /// Checks a request to a route of `access` at `now` (seconds since the epoch): `Ok(None)`
    /// for a public route, `Ok(Some(context))` with the event's `requestContext.authorizer` for
    /// an authorized one.
    pub fn check(
        &self,
        access: &Access,
        request: &Incoming<'_>,
        now: i64,
    ) -> Result<Option<Value>, Denial> {
        match access {
            Access::Public => Ok(None),
            Access::Iam => Ok(Some(self.iam.check(request, now)?)),
            Access::Jwt { authorizer, scopes } => {
                // Template::parse only lets routes name JWT authorizers it knows.
                let verifier = self
                    .verifiers
                    .get(authorizer)
                    .ok_or(Refusal::Invalid("the route's authorizer is not configured"))?;
                let authorized = verifier.check(request.headers, scopes, now)?;
                Ok(Some(context::authorizer(&authorized)))
            }
        }
    }
}

fn resolve(
    id: &AuthorizerId,
    issuer: &Value,
    audience: &[Value],
    stack: &Stack,
) -> Result<(String, Vec<String>), AuthError> {
    let one = |what: &str, v: &Value| {
        stack.resolve_string(v).map_err(|e| {
            AuthError::Template(format!(
                "authorizer {} of {}: {what}: {}",
                id.name,
                id.api,
                e.describe()
            ))
        })
    };
    let issuer = one("issuer", issuer)?;
    let audiences = audience
        .iter()
        .map(|a| one("audience", a))
        .collect::<Result<_, _>>()?;
    Ok((issuer, audiences))
}

#[cfg(test)]
mod tests;
