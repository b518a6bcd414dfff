//! Dev tokens (`local token`, `make token`, the tests): RS256 JWTs signed with the dev key, for
//! the issuer and audience the template's authorizer accepts.
//!
//! Claims: `iss`, `aud`, `sub`, `scope` (space-separated, absent when empty), `iat`, `exp`,
//! `jti`, and `accounts` when accounts are given: the ids as one space-separated string,
//! because API Gateway passes every claim to the function as a string and a string survives
//! that unchanged (a list would become `[a b]`).

use std::path::Path;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{Map, Value, json};

use super::{AuthError, DevKeys};

/// How long a token from `local token` lives unless told otherwise: a working day.
pub const DEFAULT_TTL_SECS: i64 = 12 * 3600;

/// A role of the API and the scope that grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Supervisor,
    Trader,
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Agent, Role::Supervisor, Role::Trader, Role::Operator];

    /// The role called `name` (`agent`, `supervisor`, `trader`, `operator`).
    pub fn parse(name: &str) -> Result<Role, AuthError> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| {
                AuthError::Request(format!(
                    "unknown role {name:?}: one of agent, supervisor, trader, operator"
                ))
            })
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Trader => "trader",
            Role::Operator => "operator",
        }
    }

    /// The scope of the template's `AuthorizationScopes` that this role holds.
    pub fn scope(self) -> &'static str {
        match self {
            Role::Agent => "agents",
            Role::Supervisor => "supervisors",
            Role::Trader => "traders",
            Role::Operator => "operators",
        }
    }
}

/// Who a token is from and for: the authorizer's `issuer` and one of its audiences.
#[derive(Debug, Clone, PartialEq)]
pub struct Issuer {
    pub issuer: String,
    pub audience: String,
}

/// What goes into a token. Every field is public so tests can mint the wrong ones too.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRequest {
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    pub scopes: Vec<String>,
    /// Trader accounts; the `accounts` claim when not empty.
    pub accounts: Vec<String>,
    /// `iat`, seconds since the epoch.
    pub issued_at: i64,
    /// `exp` - `iat`.
    pub ttl_secs: i64,
}

impl TokenRequest {
    /// A token of `issuer` for `roles`, issued now, valid [`DEFAULT_TTL_SECS`], subject
    /// `dev-<first role>` (`dev` without roles), no accounts.
    pub fn new(issuer: &Issuer, roles: &[Role]) -> TokenRequest {
        TokenRequest {
            issuer: issuer.issuer.clone(),
            audience: issuer.audience.clone(),
            subject: roles
                .first()
                .map_or_else(|| "dev".to_string(), |r| format!("dev-{}", r.name())),
            scopes: roles.iter().map(|r| r.scope().to_string()).collect(),
            accounts: Vec::new(),
            issued_at: chrono::Utc::now().timestamp(),
            ttl_secs: DEFAULT_TTL_SECS,
        }
    }

    /// The claims of the token.
    pub fn claims(&self) -> Map<String, Value> {
        let mut claims = Map::new();
        let mut put = |name: &str, value: Value| claims.insert(name.to_string(), value);
        put("iss", json!(self.issuer));
        put("aud", json!(self.audience));
        put("sub", json!(self.subject));
        put("iat", json!(self.issued_at));
        put("exp", json!(self.issued_at + self.ttl_secs));
        put("jti", json!(uuid::Uuid::new_v4().to_string()));
        if !self.scopes.is_empty() {
            put("scope", json!(self.scopes.join(" ")));
        }
        if !self.accounts.is_empty() {
            put("accounts", json!(self.accounts.join(" ")));
        }
        claims
    }
}

/// A token for `request`, signed with the dev key of `dir` (created when absent).
pub fn mint(dir: &Path, request: &TokenRequest) -> Result<String, AuthError> {
    sign(&DevKeys::load_or_create(dir)?, request)
}

/// A token for `request`, signed with `keys`.
pub fn sign(keys: &DevKeys, request: &TokenRequest) -> Result<String, AuthError> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(keys.kid.clone());
    jsonwebtoken::encode(&header, &request.claims(), &keys.signing)
        .map_err(|e| AuthError::Keys(format!("signing the token failed: {e}")))
}
