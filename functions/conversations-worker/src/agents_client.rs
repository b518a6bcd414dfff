//! The agents API as the conversations worker calls it: `POST /agents/match`, synchronously,
//! with a short timeout per attempt, retries of server errors and timeouts (exponential backoff
//! with jitter) and a circuit breaker shared by every call of this warm instance.
//!
//! The match is idempotent per conversation on the agents side (one reservation per
//! conversation), so retrying a request whose answer was lost can never book a second agent.
//!
//! The route is IAM-authorized (service to service, no person's token): every attempt is
//! signed with SigV4 for `execute-api` with this function's role credentials, freshly per
//! attempt because a signature is only valid for a few minutes and credentials rotate.

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::json;
use shared::{
    Error,
    config::Vars,
    domain::{
        agents::{AgentMatched, Skills},
        ids::ConversationId,
    },
};

use crate::resilience::{Breaker, BreakerConfig, BreakerState};
use shared::retry::{Backoff, random_unit};

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// How calls are made; [`Policy::from_vars`] reads the template's overrides.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Bound on one attempt: connect, send, and read the whole answer.
    pub attempt_timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub breaker: BreakerConfig,
}

impl Policy {
    /// Defaults fit a worker with a 10 s timeout: at most 3 × 1 s + 0.1 s + 0.2 s per call.
    pub fn from_vars(vars: &Vars) -> Self {
        let ms = |name: &str, default: u64| Duration::from_millis(vars.var_or(name, default));
        Policy {
            attempt_timeout: ms("AGENTS_TIMEOUT_MS", 1_000),
            max_attempts: vars.var_or("AGENTS_MAX_ATTEMPTS", 3),
            backoff: Backoff {
                base: ms("AGENTS_BACKOFF_MS", 100),
                max: ms("AGENTS_BACKOFF_MAX_MS", 1_000),
            },
            breaker: BreakerConfig {
                failure_threshold: vars.var_or("AGENTS_BREAKER_FAILURES", 5),
                cool_down: ms("AGENTS_BREAKER_COOLDOWN_MS", 5_000),
            },
        }
    }
}

/// The answer of a match.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchOutcome {
    Matched(AgentMatched),
    /// `409`: no AVAILABLE agent has the skills and a free slot now.
    NoAgent,
}

/// What one attempt gave.
enum Attempt {
    Answer(MatchOutcome),
    /// Worth retrying: 5xx, 429, timeout, connection failure.
    Failed(String),
}

pub struct AgentsClient {
    base_url: String,
    http: Client<Https, Full<Bytes>>,
    signer: Signer,
    policy: Policy,
    breaker: Breaker,
}

/// Who signs the calls: the function's credentials and region, from its SDK configuration.
pub struct Signer {
    pub credentials: SharedCredentialsProvider,
    pub region: String,
}

impl Signer {
    /// The SDK configuration's credentials and region; `Internal` when it has none (a
    /// deployment without a role cannot call an IAM-authorized route anyway).
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Result<Signer, Error> {
        Ok(Signer {
            credentials: sdk
                .credentials_provider()
                .ok_or_else(|| Error::Internal("no AWS credentials to sign with".into()))?,
            region: sdk
                .region()
                .ok_or_else(|| Error::Internal("no AWS region to sign for".into()))?
                .to_string(),
        })
    }

    /// Adds the SigV4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` for
    /// temporary credentials) for `execute-api` to `request`, whose body is `body`.
    async fn sign(
        &self,
        request: &mut http::Request<Full<Bytes>>,
        body: &str,
    ) -> Result<(), Error> {
        let identity = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| Error::Unavailable(format!("credentials: {e}")))?
            .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("execute-api")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Error::Internal(format!("signing parameters: {e}")))?
            .into();
        let headers = request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable = SignableRequest::new(
            request.method().as_str(),
            request.uri().to_string(),
            headers,
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| Error::Internal(format!("signing the match request: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Error::Internal(format!("signing the match request: {e}")))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

impl AgentsClient {
    /// Builds the client (TLS configuration from `shared::http_client`, connection pool ready) once
    /// per cold start, so the first request pays for neither.
    pub fn new(base_url: &str, signer: Signer, policy: Policy) -> Self {
        // Bounds the TCP connect and the TLS handshake, each.
        let https = shared::http_client::connector(policy.attempt_timeout);
        AgentsClient {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                // The idle timeout is enforced by a timer (hyper-util needs one set for it).
                .pool_timer(TokioTimer::new())
                .build(https),
            signer,
            policy,
            breaker: Breaker::new(policy.breaker),
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The longest one [`AgentsClient::match_agent`] call can take: every attempt timing out,
    /// with the longest backoff before each retry. A caller with a deadline (the sweeper) starts
    /// a call only when this much time is left.
    pub fn max_call_time(&self) -> Duration {
        let attempts = self.policy.max_attempts.max(1);
        let backoffs = (0..attempts - 1)
            .map(|retry| self.policy.backoff.delay(retry, 1.0))
            .sum::<Duration>();
        self.policy.attempt_timeout * attempts + backoffs
    }

    /// Asks for an agent for `conversation`. `Err(Unavailable)` when the agents service did not
    /// answer after the retries, or the breaker is open (then at once, without a request).
    pub async fn match_agent(
        &self,
        conversation: &ConversationId,
        skills: &Skills,
        correlation_id: &str,
    ) -> Result<MatchOutcome, Error> {
        let body = json!({ "conversationId": conversation, "skills": skills }).to_string();
        let mut last = String::new();
        for attempt in 0..self.policy.max_attempts.max(1) {
            if attempt > 0 {
                let delay = self.policy.backoff.delay(attempt - 1, random_unit());
                tracing::info!(%conversation, attempt, delay_ms = delay.as_millis() as u64, error = %last, "retrying match");
                tokio::time::sleep(delay).await;
            }
            if self.breaker.acquire(Instant::now()).is_err() {
                return Err(Error::Unavailable(
                    "agents API: circuit breaker open".into(),
                ));
            }
            match self.attempt(&body, correlation_id).await {
                Ok(Attempt::Answer(outcome)) => {
                    self.breaker.succeeded();
                    return Ok(outcome);
                }
                Ok(Attempt::Failed(why)) => {
                    self.breaker.failed(Instant::now());
                    last = why;
                }
                Err(e) => {
                    // The service answered, but not as agreed: a bug, not an outage.
                    self.breaker.succeeded();
                    return Err(e);
                }
            }
        }
        Err(Error::Unavailable(format!("agents API: {last}")))
    }

    async fn attempt(&self, body: &str, correlation_id: &str) -> Result<Attempt, Error> {
        let mut request = http::Request::post(format!("{}/agents/match", self.base_url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-correlation-id", correlation_id)
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| Error::Internal(format!("building match request: {e}")))?;
        self.signer.sign(&mut request, body).await?;
        let call = async {
            let response = self.http.request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(self.policy.attempt_timeout, call).await {
            Err(_) => return Ok(Attempt::Failed("timed out".into())),
            Ok(Err(e)) => return Ok(Attempt::Failed(format!("request failed: {e}"))),
            Ok(Ok(answer)) => answer,
        };
        match status.as_u16() {
            200 => serde_json::from_slice(&bytes)
                .map(|m| Attempt::Answer(MatchOutcome::Matched(m)))
                .map_err(|e| Error::Internal(format!("agents API: unexpected match body: {e}"))),
            409 => Ok(Attempt::Answer(MatchOutcome::NoAgent)),
            429 | 500..=599 => Ok(Attempt::Failed(format!("status {status}"))),
            _ => Err(Error::Internal(format!(
                "agents API answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }
}
