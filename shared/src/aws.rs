//! AWS client configuration, built once per cold start.
//!
//! Fail fast: the SDK's defaults wait seconds for a connection and retry for longer, so an
//! outage would hang requests instead of answering `503`. Timeouts here are short and
//! overridable (`AWS_CONNECT_TIMEOUT_MS`, `AWS_OPERATION_TIMEOUT_MS`).
//!
//! Cheap to build (docs/ARCHITECTURE.md §Budgets: init ≤ 1.5× a hello-world binary): every SDK client of the
//! process shares one HTTP client ([`crate::http_client`], roots compiled in), and when the
//! environment says everything the clients need, as Lambda's always does (region and
//! credentials), the `SdkConfig` is built from it directly instead of running `aws-config`'s
//! default chain (which probes profile files and builds its provider chain: ≈ 0.7 ms here).
//! Without those variables, or with any setting that only the default chain understands, the
//! default chain runs as before.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::{
    BehaviorVersion, ConfigLoader, Region, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};

use crate::config::Vars;

pub async fn load() -> SdkConfig {
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    match from_vars(vars) {
        Some(sdk) => sdk,
        None => {
            configure(aws_config::defaults(BehaviorVersion::latest()))
                .load()
                .await
        }
    }
}

/// Applies our timeouts, retries and HTTP client to a loader (tests point it at a dead
/// endpoint).
pub fn configure(loader: ConfigLoader) -> ConfigLoader {
    let settings = Settings::from_env();
    loader
        .timeout_config(settings.timeouts())
        .retry_config(settings.retries())
        .http_client(crate::http_client::SdkHttpClient::shared(settings.connect))
}

struct Settings {
    connect: Duration,
    operation: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let vars = Vars::process();
        Settings {
            connect: Duration::from_millis(vars.var_or("AWS_CONNECT_TIMEOUT_MS", 500)),
            operation: Duration::from_millis(vars.var_or("AWS_OPERATION_TIMEOUT_MS", 2_000)),
        }
    }

    fn timeouts(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .read_timeout(self.operation)
            .operation_attempt_timeout(self.operation)
            .operation_timeout(self.operation)
            .build()
    }

    fn retries(&self) -> RetryConfig {
        RetryConfig::standard().with_max_attempts(3)
    }
}

/// Settings that `aws-config`'s default chain honours and [`from_env`] does not: when one is
/// set, the default chain runs.
const DEFAULT_CHAIN_ONLY: &[&str] = &[
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_SDK_UA_APP_ID",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
];

/// The `SdkConfig` from the environment (`vars`) alone, when it has a region and static
/// credentials (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
/// `AWS_SESSION_TOKEN`: what Lambda sets, and what the default chain would read first too)
/// and nothing in [`DEFAULT_CHAIN_ONLY`]. Endpoints are honoured as by the default chain:
/// `AWS_ENDPOINT_URL` for every service, `AWS_ENDPOINT_URL_<SERVICE>` (e.g.
/// `AWS_ENDPOINT_URL_DYNAMODB`) for one ([`ServiceEndpoints`]). `None` means: use the default
/// chain.
pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Option<SdkConfig> {
    let vars: BTreeMap<String, String> = vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    if DEFAULT_CHAIN_ONLY
        .iter()
        .any(|name| vars.contains_key(*name))
    {
        return None;
    }
    let var = |name: &str| vars.get(name).cloned();
    let region = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION"))?;
    let credentials = Credentials::new(
        var("AWS_ACCESS_KEY_ID")?,
        var("AWS_SECRET_ACCESS_KEY")?,
        var("AWS_SESSION_TOKEN"),
        None,
        "Environment",
    );
    let settings = Settings::from_env();
    let mut sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .timeout_config(settings.timeouts())
        .retry_config(settings.retries())
        .http_client(crate::http_client::SdkHttpClient::shared(settings.connect));
    if let Some(endpoint) = var("AWS_ENDPOINT_URL") {
        sdk = sdk.endpoint_url(endpoint);
    }
    Some(with_service_endpoints(sdk.build(), vars))
}

/// `sdk` with the service-specific endpoints among `vars` (`AWS_ENDPOINT_URL_<SERVICE>`, see
/// [`ServiceEndpoints`]) in force: a client built from it takes its service's endpoint when one
/// is set, else `sdk`'s general one. Needed where the general endpoint was set in code (the
/// local runner's), which would otherwise win over every service's variable, as the SDK ranks
/// a programmatic endpoint above the environment.
pub fn with_service_endpoints(
    sdk: SdkConfig,
    vars: impl IntoIterator<Item = (String, String)>,
) -> SdkConfig {
    let endpoints: BTreeMap<String, String> = vars
        .into_iter()
        .filter(|(k, v)| k.starts_with(SERVICE_ENDPOINT_PREFIX) && !v.is_empty())
        .collect();
    if endpoints.is_empty() {
        return sdk;
    }
    let mut builder = sdk.into_builder();
    builder.insert_origin(
        "endpoint_url",
        aws_types::origin::Origin::shared_environment_variable(),
    );
    builder.service_config(ServiceEndpoints(endpoints)).build()
}

const SERVICE_ENDPOINT_PREFIX: &str = "AWS_ENDPOINT_URL_";

/// Service-specific endpoints (`AWS_ENDPOINT_URL_<SERVICE ID>`, the service id upper-cased with
/// spaces as `_`: `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ENDPOINT_URL_SQS`,
/// `AWS_ENDPOINT_URL_EVENTBRIDGE`), read as the SDK's default chain reads them: each service
/// client asks its config for `AWS_ENDPOINT_URL` and gets its own when one is set. The local
/// runner uses them to give DynamoDB an emulator process of its own.
#[derive(Debug)]
pub struct ServiceEndpoints(BTreeMap<String, String>);

impl aws_types::service_config::LoadServiceConfig for ServiceEndpoints {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        if key.env() != "AWS_ENDPOINT_URL" {
            return None;
        }
        let service = key.service_id().to_uppercase().replace(' ', "_");
        self.0
            .get(&format!("{SERVICE_ENDPOINT_PREFIX}{service}"))
            .cloned()
    }
}

/// Environment variable: `false` (or `0`, `off`, `no`) leaves opening the DynamoDB connection
/// to the first request instead of [`warm_up`]; on when unset.
pub const WARM_UP_ENV: &str = "WARM_UP_DYNAMODB";
/// Whether [`warm_up`] runs when [`WARM_UP_ENV`] is unset: yes (docs/ARCHITECTURE.md,
/// "Budgets": the first request after a cold start).
pub const WARM_UP_DEFAULT: bool = true;
/// The longest [`warm_up`] holds up init.
pub const WARM_UP_TIMEOUT: Duration = Duration::from_secs(1);

/// What [`warm_up`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmUp {
    /// Turned off ([`WARM_UP_ENV`]).
    Off,
    /// No `TABLE_NAME`: the function has no table.
    NoTable,
    /// DynamoDB answered: the connection is open in the process's pool.
    Done,
    /// DynamoDB answered with an error, or could not be reached (the message says which).
    Failed(String),
    /// No answer within [`WARM_UP_TIMEOUT`].
    TimedOut,
}

/// Opens the function's DynamoDB connection during init, so that no request pays its TCP and
/// TLS handshake (docs/ARCHITECTURE.md, "Budgets": first request after a cold start): one
/// `GetItem` of an absent key (`pk`/`sk` = `warm-up`; every table has string keys `pk`/`sk`)
/// on the table `TABLE_NAME` names, through the process's one HTTP client, whose pool keeps
/// the connection for the requests that follow. Waits at most [`WARM_UP_TIMEOUT`]; its
/// outcome is only reported (a failure here is no failure of init: the first request opens
/// the connection itself). Does nothing without `TABLE_NAME` or when [`WARM_UP_ENV`] is off.
pub async fn warm_up(sdk: &SdkConfig, vars: &Vars) -> WarmUp {
    let on = match vars.get(WARM_UP_ENV) {
        None => WARM_UP_DEFAULT,
        Some(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "off" | "no"
        ),
    };
    if !on {
        return WarmUp::Off;
    }
    let Some(table) = vars.get("TABLE_NAME") else {
        return WarmUp::NoTable;
    };
    let key = |v: &str| aws_sdk_dynamodb::types::AttributeValue::S(v.to_string());
    let request = aws_sdk_dynamodb::Client::new(sdk)
        .get_item()
        .table_name(table)
        .key("pk", key("warm-up"))
        .key("sk", key("warm-up"))
        .send();
    match tokio::time::timeout(WARM_UP_TIMEOUT, request).await {
        Ok(Ok(_)) => WarmUp::Done,
        Ok(Err(e)) => WarmUp::Failed(aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string()),
        Err(_) => WarmUp::TimedOut,
    }
}

/// Maps an SDK error to our error. The dependency is unavailable (`503`, `Retry-After`; a
/// worker's message is redelivered) when it could not be reached, timed out, throttled, lost
/// to contention (another transaction held the item, [`crate::store`] retried it already) or
/// is not there (a deleted bus, table or queue: an outage of what the function was configured
/// with). Anything else is unexpected (`500`, cause logged).
pub fn classify<E, R>(what: &str, err: aws_sdk_dynamodb::error::SdkError<E, R>) -> crate::Error
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    let unavailable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(_) => true,
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or_default();
            code.contains("Throttl")
                || crate::store::contended(code)
                || code == "InternalServerError"
                || code == "ServiceUnavailable"
                || MISSING_RESOURCE.contains(&code)
        }
        _ => false,
    };
    let detail = match err.as_service_error() {
        Some(e) => format!(
            "{what}: {}: {}",
            e.code().unwrap_or("unknown"),
            e.message().unwrap_or_default()
        ),
        None => format!(
            "{what}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&err)
        ),
    };
    if unavailable {
        crate::Error::Unavailable(detail)
    } else {
        crate::Error::Internal(detail)
    }
}

/// The codes DynamoDB, EventBridge and SQS answer for a table, bus or queue that does not
/// exist.
const MISSING_RESOURCE: &[&str] = &[
    "ResourceNotFoundException",
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const LAMBDA: &[(&str, &str)] = &[
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_SESSION_TOKEN", "token"),
    ];

    #[test]
    fn lambda_environment_needs_no_default_chain() {
        let sdk = from_vars(vars(LAMBDA)).expect("built from the environment");
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert!(sdk.credentials_provider().is_some());
        assert!(sdk.http_client().is_some());
        assert_eq!(sdk.endpoint_url(), None);
        assert_eq!(
            sdk.timeout_config().and_then(|t| t.operation_timeout()),
            Some(Duration::from_millis(2_000))
        );
    }

    #[test]
    fn endpoint_url_is_honoured() {
        let mut env = vars(LAMBDA);
        env.push(("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:4566".into()));
        let sdk = from_vars(env).expect("built from the environment");
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:4566"));
    }

    #[test]
    fn a_service_endpoint_overrides_the_general_one_for_that_service_only() {
        let mut env = vars(LAMBDA);
        env.push(("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:4566".into()));
        env.push((
            "AWS_ENDPOINT_URL_DYNAMODB".into(),
            "http://127.0.0.1:4567".into(),
        ));
        let sdk = from_vars(env).expect("built from the environment");
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:4566"));
        // Each service client's config builder asks `service_config` for its own endpoint
        // first (`aws-sdk-*`'s `From<&SdkConfig>`), with this key.
        let endpoint = |service: &str| {
            let key = aws_types::service_config::ServiceConfigKey::builder()
                .service_id(service)
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .expect("complete key");
            sdk.service_config().and_then(|c| c.load_config(key))
        };
        assert_eq!(
            endpoint("DynamoDB").as_deref(),
            Some("http://127.0.0.1:4567")
        );
        assert_eq!(endpoint("SQS"), None);
        assert_eq!(endpoint("EventBridge"), None);
    }

    #[test]
    fn default_chain_when_region_or_credentials_are_missing() {
        for missing in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            let env = vars(LAMBDA).into_iter().filter(|(k, _)| k != missing);
            assert!(from_vars(env).is_none(), "{missing} unset");
        }
        let empty = vars(LAMBDA).into_iter().map(|(k, v)| {
            if k == "AWS_ACCESS_KEY_ID" {
                (k, String::new())
            } else {
                (k, v)
            }
        });
        assert!(from_vars(empty).is_none(), "empty key id");
    }

    #[test]
    fn default_chain_when_a_setting_only_it_understands_is_set() {
        for (name, value) in [("AWS_PROFILE", "dev"), ("AWS_USE_FIPS_ENDPOINT", "true")] {
            let mut env = vars(LAMBDA);
            env.push((name.into(), value.into()));
            assert!(from_vars(env).is_none(), "{name} set");
        }
    }
}
