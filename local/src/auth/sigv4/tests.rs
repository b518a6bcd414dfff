//! Requests signed by the AWS SDK's signer (`aws-sigv4`, its default settings unless a test
//! says otherwise), then checked as the gateway receives them.

use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::http::{HeaderMap, HeaderValue, Request};

use super::*;

const NOW: i64 = 1_700_000_000;
const KEY: &str = "AKIDLOCAL";
const SECRET: &str = "local-secret";
const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "123456789012";
const HOST: &str = "127.0.0.1:3000";

fn verifier(token: Option<&str>) -> IamVerifier {
    IamVerifier::new(
        FunctionCredentials {
            access_key_id: KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: token.map(str::to_string),
        },
        REGION,
        ACCOUNT,
    )
}

/// How a test request is signed.
struct Signer {
    key: &'static str,
    secret: &'static str,
    token: Option<&'static str>,
    region: &'static str,
    service: &'static str,
    at: i64,
    settings: SigningSettings,
    /// What is signed as the body; `None`: the request's body.
    body: Option<SignableBody<'static>>,
}

impl Default for Signer {
    fn default() -> Self {
        Signer {
            key: KEY,
            secret: SECRET,
            token: None,
            region: REGION,
            service: "execute-api",
            at: NOW - 30,
            settings: SigningSettings::default(),
            body: None,
        }
    }
}

/// A request as a client sends it: signed with `signer`, then given the `host` header an HTTP
/// client adds.
fn signed(
    signer: Signer,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Request<Vec<u8>> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{HOST}{path_and_query}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(body.to_vec()).unwrap();
    let identity: Identity = Credentials::new(
        signer.key,
        signer.secret,
        signer.token.map(str::to_string),
        None,
        "test",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(signer.region)
        .name(signer.service)
        .time(UNIX_EPOCH + Duration::from_secs(signer.at as u64))
        .settings(signer.settings)
        .build()
        .unwrap()
        .into();
    let body = signer.body.unwrap_or(SignableBody::Bytes(body));
    let uri = req.uri().to_string();
    let signable = SignableRequest::new(
        method,
        uri,
        req.headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
        body,
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut req);
    req.headers_mut()
        .insert("host", HeaderValue::from_static(HOST));
    req
}

fn check_at(v: &IamVerifier, req: &Request<Vec<u8>>, now: i64) -> Result<Value, SignatureRefusal> {
    let incoming = Incoming {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or_default(),
        headers: req.headers(),
        body: req.body(),
    };
    v.check(&incoming, now)
}

fn check(req: &Request<Vec<u8>>) -> Result<Value, SignatureRefusal> {
    check_at(&verifier(None), req, NOW)
}

/// Asserts that the request each signer signs is refused as given.
fn assert_refused<const N: usize>(cases: [(Signer, SignatureRefusal); N]) {
    for (signer, refusal) in cases {
        assert_eq!(check(&match_request(signer)), Err(refusal));
    }
}

fn match_request(signer: Signer) -> Request<Vec<u8>> {
    signed(
        signer,
        "POST",
        "/agents/match?dry=1&note=a%20b&tag=x&tag=y",
        &[("content-type", "application/json")],
        br#"{"conversationId":"c-1","skills":["fx"]}"#,
    )
}

#[test]
fn a_request_signed_as_the_sdk_signs_passes_with_the_iam_context() {
    let context = check(&match_request(Signer::default())).unwrap();
    assert_eq!(
        context,
        json!({"iam": {
            "accessKey": KEY,
            "accountId": ACCOUNT,
            "callerId": KEY,
            "cognitoIdentity": null,
            "principalOrgId": null,
            "userArn": "arn:aws:iam::123456789012:user/local",
            "userId": KEY
        }})
    );
    // GET without a body or query, and a path with escapes the SDK's double encoding covers.
    for path in [
        "/agents/a%2D1/state",
        "/agents/a%20b%2Fc/state",
        "/agents/%C3%A9t%C3%A9/state",
        "/agents/x:y@z$/state",
        "/",
    ] {
        let req = signed(Signer::default(), "GET", path, &[], b"");
        assert!(check(&req).is_ok(), "{path}");
    }
}

#[test]
fn headers_the_sdk_adds_or_leaves_out_still_verify() {
    // A session token (signed, the SDK's default), the body's hash as a signed header (S3's
    // way), and headers sent but not signed (user-agent, a trace id).
    let v = verifier(Some("session-token"));
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let mut req = match_request(Signer {
        token: Some("session-token"),
        settings,
        ..Signer::default()
    });
    assert!(req.headers().contains_key("x-amz-content-sha256"));
    req.headers_mut()
        .insert("user-agent", HeaderValue::from_static("worker/1"));
    req.headers_mut()
        .insert("x-amzn-trace-id", HeaderValue::from_static("Root=1-abc"));
    assert!(check_at(&v, &req, NOW).is_ok());
    // A client may send the same header twice; both values are signed, comma-joined.
    let req = signed(
        Signer::default(),
        "GET",
        "/agents",
        &[("x-multi", "1"), ("x-multi", "  2   3 ")],
        b"",
    );
    assert!(check(&req).is_ok());
}

#[test]
fn without_an_authorization_header_the_answer_is_forbidden() {
    let mut req = match_request(Signer::default());
    req.headers_mut().remove("authorization");
    assert_eq!(check(&req), Err(SignatureRefusal::Missing));
    assert_eq!(SignatureRefusal::Missing.message(), "Forbidden");
}

#[test]
fn a_bearer_token_or_a_partial_signature_is_malformed() {
    let mut req = match_request(Signer::default());
    req.headers_mut()
        .insert("authorization", HeaderValue::from_static("Bearer eyJ.x.y"));
    let Err(SignatureRefusal::Malformed(m)) = check(&req) else {
        panic!("a bearer token passed");
    };
    assert_eq!(
        m,
        "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter."
    );
    assert!(!m.contains("eyJ"), "the header is not echoed");

    let mut req = match_request(Signer::default());
    let auth = req.headers()["authorization"].to_str().unwrap().to_string();
    let (without_signature, _) = auth.split_once(", Signature=").unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(without_signature).unwrap(),
    );
    req.headers_mut().remove("x-amz-date");
    let Err(SignatureRefusal::Malformed(m)) = check(&req) else {
        panic!("passed");
    };
    assert_eq!(
        m,
        "Authorization header requires 'Signature' parameter. Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    );
}

#[test]
fn another_key_or_session_token_is_an_invalid_security_token() {
    let other_key = match_request(Signer {
        key: "AKIDOTHER",
        ..Signer::default()
    });
    assert_eq!(check(&other_key), Err(SignatureRefusal::InvalidToken));
    assert_eq!(
        SignatureRefusal::InvalidToken.message(),
        "The security token included in the request is invalid."
    );
    let token = match_request(Signer {
        token: Some("other-token"),
        ..Signer::default()
    });
    assert_eq!(check(&token), Err(SignatureRefusal::InvalidToken));
    assert_eq!(
        check_at(&verifier(Some("session-token")), &token, NOW),
        Err(SignatureRefusal::InvalidToken)
    );
    let no_token = match_request(Signer::default());
    assert_eq!(
        check_at(&verifier(Some("session-token")), &no_token, NOW),
        Err(SignatureRefusal::InvalidToken)
    );
}

#[test]
fn a_wrong_secret_or_a_changed_request_does_not_match() {
    let mismatch = Err(SignatureRefusal::Mismatch);
    let wrong_secret = match_request(Signer {
        secret: "guessed",
        ..Signer::default()
    });
    assert_eq!(check(&wrong_secret), mismatch);
    assert_eq!(
        SignatureRefusal::Mismatch.message(),
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    );

    let original = match_request(Signer::default());
    let (parts, body) = original.into_parts();
    let rebuild = |uri: &str, method: &str, body: &[u8], headers: &HeaderMap| {
        let mut r = Request::builder()
            .method(method)
            .uri(uri)
            .body(body.to_vec())
            .unwrap();
        *r.headers_mut() = headers.clone();
        r
    };
    let uri = parts.uri.to_string();
    let m = parts.method.as_str();
    assert!(check(&rebuild(&uri, m, &body, &parts.headers)).is_ok());
    let other_body = br#"{"conversationId":"c-2","skills":["fx"]}"#;
    assert_eq!(
        check(&rebuild(&uri, m, other_body, &parts.headers)),
        mismatch
    );
    let other_query = uri.replace("dry=1", "dry=0");
    assert_eq!(
        check(&rebuild(&other_query, m, &body, &parts.headers)),
        mismatch
    );
    let extra_query = format!("{uri}&more=1");
    assert_eq!(
        check(&rebuild(&extra_query, m, &body, &parts.headers)),
        mismatch
    );
    let other_path = uri.replace("/agents/match", "/agents/matcH");
    assert_eq!(
        check(&rebuild(&other_path, m, &body, &parts.headers)),
        mismatch
    );
    assert_eq!(
        check(&rebuild(&uri, "PUT", &body, &parts.headers)),
        mismatch
    );
    let mut headers = parts.headers.clone();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    assert_eq!(check(&rebuild(&uri, m, &body, &headers)), mismatch);
    let mut headers = parts.headers.clone();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:3001"));
    assert_eq!(check(&rebuild(&uri, m, &body, &headers)), mismatch);
    let mut headers = parts.headers.clone();
    headers.remove("content-type");
    assert_eq!(check(&rebuild(&uri, m, &body, &headers)), mismatch);
}

#[test]
fn the_path_is_double_encoded_and_the_body_always_covered() {
    // Signed with single encoding (S3's way): the escapes of the path differ.
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    let single = signed(
        Signer {
            settings,
            ..Signer::default()
        },
        "GET",
        "/agents/a%2D1/state",
        &[],
        b"",
    );
    assert_eq!(check(&single), Err(SignatureRefusal::Mismatch));
    // An unsigned payload leaves the body uncovered, which API Gateway's IAM routes do not
    // take here.
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let unsigned = match_request(Signer {
        settings,
        body: Some(SignableBody::UnsignedPayload),
        ..Signer::default()
    });
    assert_eq!(
        unsigned.headers()["x-amz-content-sha256"],
        "UNSIGNED-PAYLOAD"
    );
    assert_eq!(check(&unsigned), Err(SignatureRefusal::Mismatch));
}

#[test]
fn the_credential_is_scoped_to_the_runners_region_and_execute_api() {
    assert_refused([
        (
            Signer {
                region: "us-east-1",
                ..Signer::default()
            },
            SignatureRefusal::Scope(
                "Credential should be scoped to a valid region, not 'us-east-1'.".into(),
            ),
        ),
        (
            Signer {
                service: "lambda",
                ..Signer::default()
            },
            SignatureRefusal::Scope(
                "Credential should be scoped to correct service: 'execute-api'.".into(),
            ),
        ),
    ]);
    // A credential dated another day than X-Amz-Date.
    let mut req = match_request(Signer::default());
    let date = req.headers()["x-amz-date"].to_str().unwrap().to_string();
    let auth = req.headers()["authorization"].to_str().unwrap().to_string();
    let forged = auth.replace(&format!("/{}/", &date[..8]), "/20231113/");
    assert_ne!(auth, forged);
    req.headers_mut()
        .insert("authorization", HeaderValue::from_str(&forged).unwrap());
    let Err(SignatureRefusal::Scope(m)) = check(&req) else {
        panic!("passed");
    };
    assert!(
        m.starts_with("Date in Credential scope does not match"),
        "{m}"
    );
    // Not a date at all.
    let mut req = match_request(Signer::default());
    req.headers_mut().insert(
        "x-amz-date",
        HeaderValue::from_static("2023-11-14T22:13:20Z"),
    );
    let Err(SignatureRefusal::Malformed(m)) = check(&req) else {
        panic!("passed");
    };
    assert!(
        m.starts_with("Date must be in ISO-8601 'basic format'"),
        "{m}"
    );
}

#[test]
fn a_signature_older_or_newer_than_15_minutes_has_expired() {
    // NOW is 2023-11-14T22:13:20Z.
    assert_refused([
        (
            Signer {
                at: NOW - MAX_SKEW_SECS - 1,
                ..Signer::default()
            },
            SignatureRefusal::Expired(
                "Signature expired: 20231114T215819Z is now earlier than 20231114T215820Z (20231114T221320Z - 15 min.)".into(),
            ),
        ),
        (
            Signer {
                at: NOW + MAX_SKEW_SECS + 1,
                ..Signer::default()
            },
            SignatureRefusal::Expired(
                "Signature not yet current: 20231114T222821Z is still later than 20231114T222820Z (20231114T221320Z + 15 min.)".into(),
            ),
        ),
    ]);
    for at in [NOW - MAX_SKEW_SECS, NOW + MAX_SKEW_SECS] {
        let edge = match_request(Signer {
            at,
            ..Signer::default()
        });
        assert!(check(&edge).is_ok(), "{at}");
    }
    // The signature is recomputed at the request's own time, not the verifier's.
    let req = match_request(Signer::default());
    assert!(check_at(&verifier(None), &req, NOW + 600).is_ok());
}

#[test]
fn the_host_must_be_signed() {
    // A hand-made header that signs only x-amz-date.
    let mut req = match_request(Signer::default());
    let auth = req.headers()["authorization"].to_str().unwrap().to_string();
    let start = auth.find("SignedHeaders=").unwrap() + "SignedHeaders=".len();
    let end = start + auth[start..].find(',').unwrap();
    let only_date = format!("{}x-amz-date{}", &auth[..start], &auth[end..]);
    req.headers_mut()
        .insert("authorization", HeaderValue::from_str(&only_date).unwrap());
    assert_eq!(
        check(&req),
        Err(SignatureRefusal::Malformed(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into()
        ))
    );
}

#[test]
fn a_request_signed_by_another_sdk_passes() {
    // Signed by botocore 1.43 (`SigV4Auth(Credentials(KEY, SECRET), "execute-api", REGION)`,
    // the Python SDK) at NOW - 30: an independent implementation of the same canonical form
    // (path double-encoded, query sorted).
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", HOST),
        ("content-type", "application/json"),
        ("x-amz-date", "20231114T221250Z"),
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDLOCAL/20231114/eu-west-1/execute-api/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=97255f30bb2e10812e1cba5dd0af8b5e5dd2e46aab6642644c9b4cdbfae056f0",
        ),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    let mut req = Request::builder()
        .method("POST")
        .uri("/agents/a%2D1%20x/match?note=a%20b&tag=y&tag=x&dry=1")
        .body(br#"{"conversationId":"c-1","skills":["fx"]}"#.to_vec())
        .unwrap();
    *req.headers_mut() = headers;
    assert!(check(&req).is_ok());
}
