//! Who is calling, as API Gateway's JWT authorizer verified it.
//!
//! The authorizer (template: `HttpApi` `Auth`, one scope list per route) has already checked
//! the signature, issuer, audience, expiry and that the token holds one of the route's scopes
//! before a function runs, and it passes the token's claims in
//! `requestContext.authorizer.jwt`. What a scope cannot express is checked here: which
//! trading accounts a caller may see and trade, from the `accounts` claim.
//!
//! API Gateway hands every claim over as a string (arrays become `[a b]`), so `accounts` is
//! read as a list of ids separated by spaces or commas, brackets tolerated; an identity
//! provider should issue it as one space-separated string (e.g. a Cognito pre-token-generation
//! trigger), like `scope`.

use lambda_http::{Request, RequestExt, request::RequestContext};

use crate::Error;
use crate::domain::ids::AccountId;

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The token's `sub`, for the log.
    pub subject: String,
    accounts: Vec<String>,
}

impl Caller {
    /// The caller of `req`. A request without verified claims never reached us through the
    /// authorizer (a route deployed without it, or a hand-made event): it is refused rather
    /// than trusted, so a template mistake cannot open an account to everyone.
    pub fn of(req: &Request) -> Result<Caller, Error> {
        let jwt = match req.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(ctx)) => {
                ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref())
            }
            _ => None,
        };
        let Some(jwt) = jwt else {
            return Err(Error::Forbidden(
                "no verified identity: the request did not pass the JWT authorizer".into(),
            ));
        };
        let claim = |name: &str| jwt.claims.get(name).map(String::as_str).unwrap_or("");
        Ok(Caller {
            subject: claim("sub").to_owned(),
            accounts: claim("accounts")
                .split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']'))
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// The verified principal of `req`, as the scope of its `Idempotency-Key`s: the token's
    /// issuer and subject (`jwt:<iss> <sub>`), or the IAM identity that signed it (`iam:<ARN>`).
    /// A request with neither is refused (`403`): its keys could not be told from another
    /// caller's.
    pub fn principal(req: &Request) -> Result<String, Error> {
        let authorizer = match req.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(ctx)) => ctx.authorizer.as_ref(),
            _ => None,
        };
        let claim = |name: &str| {
            authorizer
                .and_then(|a| a.jwt.as_ref())
                .and_then(|jwt| jwt.claims.get(name))
                .filter(|v| !v.is_empty())
        };
        if let Some(sub) = claim("sub") {
            return Ok(format!(
                "jwt:{} {sub}",
                claim("iss").map_or("", String::as_str)
            ));
        }
        let iam = authorizer.and_then(|a| a.iam.as_ref());
        if let Some(arn) = iam.and_then(|i| i.user_arn.as_ref().or(i.caller_id.as_ref())) {
            return Ok(format!("iam:{arn}"));
        }
        Err(Error::Forbidden(
            "no verified caller identity to scope the Idempotency-Key to".into(),
        ))
    }

    /// Whether the caller may see and trade `account`.
    pub fn owns(&self, account: &AccountId) -> bool {
        self.accounts.iter().any(|a| a == account.as_str())
    }

    /// The account of a request's path (`accountId`: `422` when not an id) once the caller of
    /// `req` is known to own it (`403` otherwise).
    pub fn own_account(req: &Request) -> Result<AccountId, Error> {
        let account = crate::http::Route::of(req).param("accountId")?;
        Caller::of(req)?.require_account(&account)?;
        Ok(account)
    }

    /// `403` unless the caller owns `account`.
    pub fn require_account(&self, account: &AccountId) -> Result<(), Error> {
        if self.owns(account) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "account {account} is not one of the caller's accounts"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(authorizer: serde_json::Value) -> Request {
        let mut event = json!({
            "version": "2.0", "routeKey": "GET /x", "rawPath": "/x", "rawQueryString": "",
            "headers": {}, "isBase64Encoded": false,
            "requestContext": {"http": {"method": "GET", "path": "/x"}, "stage": "$default"},
        });
        if !authorizer.is_null() {
            event["requestContext"]["authorizer"] = authorizer;
        }
        lambda_http::request::from_str(&event.to_string()).expect("valid event")
    }

    fn account(id: &str) -> AccountId {
        id.parse().unwrap()
    }

    #[test]
    fn reads_the_accounts_claim_in_every_shape_api_gateway_may_pass() {
        for claim in [
            "ACC-1 ACC-2",
            "[ACC-1 ACC-2]",
            "ACC-1,ACC-2",
            " ACC-2  ACC-1 ",
        ] {
            let caller = Caller::of(&request(json!({"jwt": {
                "claims": {"sub": "t-1", "accounts": claim}, "scopes": ["traders"]
            }})))
            .unwrap();
            assert_eq!(caller.subject, "t-1");
            assert!(caller.owns(&account("ACC-1")), "{claim}");
            assert!(caller.owns(&account("ACC-2")), "{claim}");
            assert!(!caller.owns(&account("ACC-3")), "{claim}");
            assert!(!caller.owns(&account("ACC")), "{claim}: no prefix match");
        }
    }

    #[test]
    fn a_caller_without_accounts_owns_none_and_gets_403() {
        let caller = Caller::of(&request(json!({"jwt": {"claims": {"sub": "s"}}}))).unwrap();
        let err = caller.require_account(&account("ACC-1")).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_request_that_skipped_the_authorizer_is_refused() {
        for authorizer in [serde_json::Value::Null, json!({})] {
            let err = Caller::of(&request(authorizer)).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
        }
    }
}
