//! The authorizer's rules, each refusal reason on its own, with tokens signed by real keys.

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use super::*;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "api";
const NOW: i64 = 1_700_000_000;

/// One key pair per test binary: RSA generation is the slow part.
fn keys() -> &'static DevKeys {
    static KEYS: OnceLock<DevKeys> = OnceLock::new();
    KEYS.get_or_init(|| DevKeys::load_or_create(&scratch("verify")).unwrap())
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "local-auth-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

fn verifier() -> Verifier {
    Verifier::new(
        "Authorization",
        ISSUER.into(),
        vec!["other".into(), AUDIENCE.into()],
        &keys().jwks,
    )
}

fn request(roles: &[Role]) -> TokenRequest {
    let mut r = TokenRequest::new(
        &Issuer {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
        },
        roles,
    );
    r.issued_at = NOW - 60;
    r
}

fn token(request: &TokenRequest) -> String {
    sign(keys(), request).unwrap()
}

/// A token of `claims` exactly (no defaults), signed by the dev key.
fn token_of(claims: Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(keys().kid.clone());
    jsonwebtoken::encode(&header, &claims, &keys().signing).unwrap()
}

fn authorization(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(value).unwrap());
    h
}

/// A `GET /` with `headers`, as the authorizers see it.
fn incoming(headers: &HeaderMap) -> Incoming<'_> {
    Incoming {
        method: "GET",
        path: "/",
        query: "",
        headers,
        body: b"",
    }
}

fn check(value: &str, scopes: &[&str]) -> Result<Authorized, Refusal> {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    verifier().check(&authorization(value), &scopes, NOW)
}

fn refused(value: &str, scopes: &[&str]) -> Refusal {
    check(value, scopes).expect_err("refused")
}

fn base_claims() -> Map<String, Value> {
    request(&[Role::Agent]).claims()
}

fn with(changes: Value) -> String {
    let mut claims = base_claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.remove(k);
        } else {
            claims.insert(k.clone(), v.clone());
        }
    }
    token_of(Value::Object(claims))
}

#[test]
fn a_valid_token_passes_with_or_without_the_bearer_prefix() {
    let t = token(&request(&[Role::Agent, Role::Supervisor]));
    for value in [format!("Bearer {t}"), format!("bearer  {t}"), t.clone()] {
        let ok = check(&value, &["supervisors"]).unwrap();
        assert_eq!(ok.claims["sub"], "dev-agent");
        assert_eq!(ok.claims["iss"], ISSUER);
        assert_eq!(
            ok.scopes,
            Some(vec!["agents".to_string(), "supervisors".to_string()])
        );
    }
}

#[test]
fn no_token_is_a_401_with_a_bare_challenge() {
    let empty = verifier().check(&HeaderMap::new(), &[], NOW);
    assert_eq!(empty, Err(Refusal::Missing));
    assert_eq!(refused("Bearer ", &[]), Refusal::Missing);
    assert_eq!(
        (Refusal::Missing.status(), Refusal::Missing.message()),
        (401, "Unauthorized")
    );
    assert_eq!(Refusal::Missing.challenge(&["agents".into()]), "Bearer");
}

#[test]
fn malformed_tokens_and_wrong_algorithms_are_401() {
    for garbage in ["x", "a.b.c", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"] {
        assert_eq!(
            refused(garbage, &[]),
            Refusal::Invalid("the token is not a valid JWT"),
            "{garbage}"
        );
    }
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(keys().kid.clone());
    let hmac = jsonwebtoken::encode(
        &hs,
        &base_claims(),
        &EncodingKey::from_secret(b"a shared secret"),
    )
    .unwrap();
    assert_eq!(
        refused(&hmac, &[]),
        Refusal::Invalid("the token is not signed with RS256")
    );
    let no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &base_claims(),
        &keys().signing,
    )
    .unwrap();
    assert_eq!(
        refused(&no_kid, &[]),
        Refusal::Invalid("the token's header has no kid")
    );
}

#[test]
fn a_token_of_another_key_is_401() {
    let dir = scratch("other");
    let other = DevKeys::load_or_create(&dir).unwrap();
    let foreign = sign(&other, &request(&[Role::Agent])).unwrap();
    assert_eq!(
        refused(&foreign, &[]),
        Refusal::Invalid("no key of the JWKS has the token's kid")
    );
    // The right kid, the wrong key: the signature does not verify.
    let forged = DevKeys {
        kid: keys().kid.clone(),
        signing: other.signing.clone(),
        jwks: other.jwks.clone(),
    };
    let forged = sign(&forged, &request(&[Role::Agent])).unwrap();
    assert_eq!(
        refused(&forged, &[]),
        Refusal::Invalid("the token's signature is invalid")
    );
    // A valid token whose payload was changed.
    let valid = token(&request(&[Role::Agent]));
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        token(&request(&[Role::Operator]))
            .split('.')
            .nth(1)
            .unwrap(),
        parts[2]
    );
    assert_eq!(
        refused(&tampered, &[]),
        Refusal::Invalid("the token's signature is invalid")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn issuer_and_audience_must_be_the_configured_ones() {
    let issuer = Refusal::Invalid("the token's issuer is not accepted");
    let audience = Refusal::Invalid("the token's audience is not accepted");
    assert_eq!(refused(&with(json!({"iss": "https://evil"})), &[]), issuer);
    assert_eq!(refused(&with(json!({"iss": null})), &[]), issuer);
    assert_eq!(refused(&with(json!({"aud": "nope"})), &[]), audience);
    assert_eq!(refused(&with(json!({"aud": null})), &[]), audience);
    assert!(check(&with(json!({"aud": ["x", AUDIENCE]})), &[]).is_ok());
    assert!(check(&with(json!({"aud": "other"})), &[]).is_ok());
    // Cognito access tokens: no aud, client_id instead.
    assert!(check(&with(json!({"aud": null, "client_id": AUDIENCE})), &[]).is_ok());
    assert_eq!(
        refused(&with(json!({"aud": null, "client_id": "nope"})), &[]),
        audience
    );
    // aud, when present, is what counts.
    assert_eq!(
        refused(&with(json!({"aud": "nope", "client_id": AUDIENCE})), &[]),
        audience
    );
}

#[test]
fn times_are_checked_with_a_small_leeway() {
    let expired = Refusal::Invalid("the token has expired");
    assert_eq!(refused(&with(json!({"exp": NOW - 60})), &[]), expired);
    assert_eq!(
        refused(&with(json!({"exp": NOW - LEEWAY_SECS})), &[]),
        expired
    );
    assert!(check(&with(json!({"exp": NOW - LEEWAY_SECS + 1})), &[]).is_ok());
    assert!(check(&with(json!({"exp": NOW as f64 + 10.5})), &[]).is_ok());
    assert_eq!(
        refused(&with(json!({"exp": null})), &[]),
        Refusal::Invalid("the token has no exp")
    );
    assert_eq!(
        refused(&with(json!({"exp": "tomorrow"})), &[]),
        Refusal::Invalid("a time claim of the token is not a number")
    );
    assert_eq!(
        refused(&with(json!({"nbf": NOW + 60})), &[]),
        Refusal::Invalid("the token is not valid yet")
    );
    assert!(check(&with(json!({"nbf": NOW + LEEWAY_SECS})), &[]).is_ok());
    assert_eq!(
        refused(&with(json!({"iat": NOW + 60})), &[]),
        Refusal::Invalid("the token was issued in the future")
    );
    assert!(check(&with(json!({"iat": null})), &[]).is_ok());
}

#[test]
fn one_of_the_routes_scopes_is_required_from_scope_or_scp() {
    let agent = token(&request(&[Role::Agent]));
    assert!(check(&agent, &["agents", "supervisors"]).is_ok());
    assert!(
        check(&agent, &[]).is_ok(),
        "a route without scopes takes any valid token"
    );
    let forbidden = refused(&agent, &["operators"]);
    assert_eq!(forbidden, Refusal::InsufficientScope);
    assert_eq!(
        (forbidden.status(), forbidden.message()),
        (403, "Forbidden")
    );
    assert_eq!(
        forbidden.challenge(&["operators".into()]),
        r#"Bearer scope="operators" error="insufficient_scope" error_description="the token has none of the scopes of the route""#
    );
    let unscoped = token(&request(&[]));
    assert_eq!(refused(&unscoped, &["agents"]), Refusal::InsufficientScope);
    assert_eq!(check(&unscoped, &[]).unwrap().scopes, None);
    let scp_list = with(json!({"scope": null, "scp": ["traders", "operators"]}));
    assert_eq!(
        check(&scp_list, &["operators"]).unwrap().scopes,
        Some(vec!["traders".to_string(), "operators".to_string()])
    );
    let scp_text = with(json!({"scope": null, "scp": "operators"}));
    assert!(check(&scp_text, &["operators"]).is_ok());
    // A scope is a whole word: `agents` does not grant `agent`.
    assert_eq!(refused(&agent, &["agent"]), Refusal::InsufficientScope);
    // 401 reasons come before 403.
    let expired_agent = with(json!({"exp": NOW - 60}));
    assert_eq!(refused(&expired_agent, &["operators"]).status(), 401);
}

#[test]
fn invalid_token_challenges_name_the_routes_scopes_and_the_reason() {
    let why = Refusal::Invalid("the token has expired");
    assert_eq!(
        why.challenge(&["agents".into(), "supervisors".into()]),
        r#"Bearer scope="agents supervisors" error="invalid_token" error_description="the token has expired""#
    );
}

#[test]
fn minted_tokens_carry_the_documented_claims() {
    let mut r = request(&[Role::Trader, Role::Operator]);
    r.accounts = vec!["ACC-1".into(), "ACC-2".into()];
    let claims = check(&token(&r), &["traders"]).unwrap().claims;
    assert_eq!(claims["sub"], "dev-trader");
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["scope"], "traders operators");
    assert_eq!(claims["accounts"], "ACC-1 ACC-2");
    assert_eq!(claims["iat"], NOW - 60);
    assert_eq!(claims["exp"], NOW - 60 + DEFAULT_TTL_SECS);
    assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
    assert!(!base_claims().contains_key("accounts"));
    assert_eq!(Role::parse("supervisor").unwrap(), Role::Supervisor);
    let err = Role::parse("admin").unwrap_err().to_string();
    assert!(err.contains("unknown role \"admin\""), "{err}");
}

fn template(auth: &str) -> Template {
    let text = format!(
        "Parameters:\n  Iss: {{Type: String, Default: '{ISSUER}'}}\nResources:\n  Api:\n    Type: AWS::Serverless::HttpApi\n    Properties:\n      Auth:\n        DefaultAuthorizer: Jwt\n        EnableIamAuthorizer: true\n        Authorizers:\n          Jwt:\n            JwtConfiguration: {{issuer: !Ref Iss, audience: [{AUDIENCE}]}}\n{auth}  F:\n    Type: AWS::Serverless::Function\n    Metadata: {{BuildProperties: {{Binary: f}}}}\n    Properties:\n      Events:\n        Ops: {{Type: HttpApi, Properties: {{ApiId: !Ref Api, Method: GET, Path: /ops, Auth: {{AuthorizationScopes: [operators]}}}}}}\n        Health: {{Type: HttpApi, Properties: {{ApiId: !Ref Api, Method: GET, Path: /health, Auth: {{Authorizer: NONE}}}}}}\n        Match: {{Type: HttpApi, Properties: {{ApiId: !Ref Api, Method: POST, Path: /match, Auth: {{Authorizer: AWS_IAM}}}}}}\n"
    );
    Template::parse(&text, "t.yaml").unwrap()
}

fn stack(t: &Template) -> Stack {
    Stack::new(t, "test", "us-east-1", "")
}

#[test]
fn authorizers_of_the_template_check_its_routes() {
    let t = template("");
    let dir = scratch("template");
    let authorizers = Authorizers::load(&t, &stack(&t), &dir).unwrap();
    let access = |path: &str| {
        t.functions["F"]
            .routes
            .iter()
            .find(|r| r.path == path)
            .unwrap()
            .access
            .clone()
    };
    assert_eq!(
        authorizers.check(&access("/health"), &incoming(&HeaderMap::new()), NOW),
        Ok(None)
    );
    assert_eq!(
        authorizers.check(&access("/ops"), &incoming(&HeaderMap::new()), NOW),
        Err(Denial::Token(Refusal::Missing))
    );
    let issuer = issuer(&t, "test").unwrap();
    assert_eq!(
        issuer,
        Issuer {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into()
        }
    );
    let mut r = TokenRequest::new(&issuer, &[Role::Operator]);
    r.issued_at = NOW;
    let t_op = mint(&dir, &r).unwrap();
    let context = authorizers
        .check(
            &access("/ops"),
            &incoming(&authorization(&format!("Bearer {t_op}"))),
            NOW,
        )
        .unwrap()
        .unwrap();
    assert_eq!(context["jwt"]["claims"]["sub"], "dev-operator");
    assert_eq!(
        context["jwt"]["claims"]["exp"],
        (NOW + DEFAULT_TTL_SECS).to_string()
    );
    assert_eq!(context["jwt"]["scopes"], json!(["operators"]));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `POST /match` with `body`, signed by the SDK's signer at `at` with `credentials` for
/// us-east-1 (unsigned when `None`), with the `host` header an HTTP client adds.
fn signed_match(credentials: Option<&FunctionCredentials>, at: i64, body: &[u8]) -> HeaderMap {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_smithy_runtime_api::client::identity::Identity;
    let mut req = axum::http::Request::builder()
        .method("POST")
        .uri("http://localhost:3000/match")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    if let Some(c) = credentials {
        let identity: Identity = aws_credential_types::Credentials::new(
            &c.access_key_id,
            &c.secret_access_key,
            c.session_token.clone(),
            None,
            "test",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("execute-api")
            .time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at as u64))
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            "POST",
            req.uri().to_string(),
            req.headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
    }
    req.headers_mut()
        .insert("host", HeaderValue::from_static("localhost:3000"));
    req.headers().clone()
}

#[test]
fn an_iam_route_takes_requests_signed_with_the_functions_credentials() {
    let t = template("");
    let dir = scratch("iam");
    let st = stack(&t);
    let authorizers = Authorizers::load(&t, &st, &dir).unwrap();
    let route = &t.functions["F"]
        .routes
        .iter()
        .find(|r| r.path == "/match")
        .unwrap()
        .access;
    assert_eq!(route, &Access::Iam);
    let body = br#"{"conversationId":"c"}"#;
    let post = |headers: &HeaderMap| {
        let req = Incoming {
            method: "POST",
            path: "/match",
            query: "",
            headers,
            body,
        };
        authorizers.check(route, &req, NOW)
    };
    let credentials = FunctionCredentials::from_env();
    let context = post(&signed_match(Some(&credentials), NOW, body))
        .unwrap()
        .unwrap();
    assert_eq!(context["iam"]["accessKey"], credentials.access_key_id);
    assert_eq!(context["iam"]["accountId"], st.account_id);

    let unsigned = post(&signed_match(None, NOW, body)).unwrap_err();
    assert_eq!(unsigned, Denial::Signature(SignatureRefusal::Missing));
    assert_eq!((unsigned.status(), unsigned.message()), (403, "Forbidden"));
    assert_eq!(unsigned.challenge(&[]), None, "no challenge for IAM");
    // A valid JWT is no signature.
    let mut r = TokenRequest::new(&issuer(&t, "test").unwrap(), &Role::ALL);
    r.issued_at = NOW;
    let token = mint(&dir, &r).unwrap();
    let bearer = post(&authorization(&format!("Bearer {token}"))).unwrap_err();
    assert!(
        matches!(&bearer, Denial::Signature(SignatureRefusal::Malformed(_))),
        "{bearer:?}"
    );
    assert_eq!(bearer.status(), 403);
    let wrong = FunctionCredentials {
        secret_access_key: format!("{}x", credentials.secret_access_key),
        ..credentials.clone()
    };
    let mismatch = post(&signed_match(Some(&wrong), NOW, body)).unwrap_err();
    assert_eq!(mismatch, Denial::Signature(SignatureRefusal::Mismatch));
    let expired = post(&signed_match(Some(&credentials), NOW - 3600, body)).unwrap_err();
    assert!(
        expired.message().starts_with("Signature expired: "),
        "{expired:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_template_without_authorizers_needs_no_keys() {
    let t = Template::parse(
        "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: f}}\n    Properties:\n      Events:\n        A: {Type: HttpApi, Properties: {Method: GET, Path: /a}}\n",
        "t.yaml",
    )
    .unwrap();
    let dir = scratch("none");
    let authorizers = Authorizers::load(&t, &stack(&t), &dir).unwrap();
    assert!(!dir.exists());
    let access = &t.functions["F"].routes[0].access;
    assert_eq!(
        authorizers.check(access, &incoming(&HeaderMap::new()), NOW),
        Ok(None)
    );
    let err = issuer(&t, "test").unwrap_err().to_string();
    assert!(err.contains("declares no JWT authorizer"), "{err}");
}

#[test]
fn the_real_templates_issuer_is_its_parameters_defaults() {
    let t = crate::template::tests::real_template();
    assert_eq!(
        issuer(&t, "test").unwrap(),
        Issuer {
            issuer: "https://issuer.local.invalid".into(),
            audience: "cqrs-api".into()
        }
    );
}

#[test]
fn key_dir_defaults_beside_the_template() {
    // LOCAL_AUTH_DIR is read from the environment; only assert the default when it is unset.
    if std::env::var_os(DIR_ENV).is_none() {
        let dir = key_dir(Path::new("/nonexistent/x/template.yaml"));
        assert_eq!(dir, Path::new("/nonexistent/x/.dev/auth"));
    }
}
