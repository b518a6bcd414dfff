//! `GET /health`: probes every dependency of the system concurrently, each with a short
//! timeout, and answers `200` when all are up, `503` naming the failing ones otherwise. Each
//! probe is one cheap data-plane call (GetItem of an absent key, GetQueueAttributes,
//! DescribeEventBus), so the route can be polled every few seconds.

use std::time::{Duration, Instant};

use futures::future::join_all;
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use shared::{
    config,
    http::{Route, json},
};

/// The dependencies to probe, from the template's environment.
pub struct Config {
    /// `HEALTH_TABLES`: comma-separated table names.
    pub tables: Vec<String>,
    /// `HEALTH_QUEUES`: comma-separated queue URLs.
    pub queues: Vec<String>,
    pub event_bus_name: String,
    /// `HEALTH_PROBE_TIMEOUT_MS` (default 1,000): the bound on each probe.
    pub probe_timeout: Duration,
}

fn list(vars: &config::Vars, name: &'static str) -> Result<Vec<String>, config::MissingVar> {
    Ok(vars
        .var(name)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

impl Config {
    pub fn from_vars(vars: &config::Vars) -> Result<Self, config::MissingVar> {
        Ok(Config {
            tables: list(vars, "HEALTH_TABLES")?,
            queues: list(vars, "HEALTH_QUEUES")?,
            event_bus_name: vars.var("EVENT_BUS_NAME")?,
            probe_timeout: Duration::from_millis(vars.var_or("HEALTH_PROBE_TIMEOUT_MS", 1_000)),
        })
    }
}

pub struct App {
    config: Config,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    events: aws_sdk_eventbridge::Client,
}

/// Builds the function from the template's environment ([`Config::from_vars`]).
pub fn init(sdk: &aws_config::SdkConfig, vars: &config::Vars) -> Result<App, config::MissingVar> {
    Ok(App::new(sdk, Config::from_vars(vars)?))
}

impl App {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        App {
            config,
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Check {
    name: String,
    kind: &'static str,
    status: &'static str,
    latency_ms: f64,
    /// A short reason when down (never SDK internals).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

#[derive(Serialize)]
struct Report {
    status: &'static str,
    failing: Vec<String>,
    checks: Vec<Check>,
}

pub async fn handle(app: &App, req: Request) -> Response<Body> {
    shared::http::serve(req, |req| async move {
        let route = Route::of(&req);
        if route.key() != "GET /health" {
            return Err(route.unknown());
        }
        let report = app.probe_all().await;
        let status = if report.failing.is_empty() { 200 } else { 503 };
        Ok(json(status, &report))
    })
    .await
}

impl App {
    async fn probe_all(&self) -> Report {
        // The key of no item: the GetItem reads nothing.
        let absent = aws_sdk_dynamodb::types::AttributeValue::S("HEALTH".into());
        let tables = self.config.tables.iter().map(|t| {
            let get = self.dynamodb.get_item().table_name(t);
            let call = get.key("pk", absent.clone()).key("sk", absent.clone());
            self.probe(t, "table", call.send())
        });
        let depth = aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages;
        let queues = self.config.queues.iter().map(|q| {
            let call = self.sqs.get_queue_attributes().queue_url(q);
            self.probe(q, "queue", call.attribute_names(depth.clone()).send())
        });
        let bus = &self.config.event_bus_name;
        let call = self.events.describe_event_bus().name(bus);
        let bus_check = self.probe(bus, "eventBus", call.send());
        let (mut checks, queue_checks, bus_check) =
            futures::join!(join_all(tables), join_all(queues), bus_check);
        checks.extend(queue_checks);
        checks.push(bus_check);
        let failing: Vec<String> = checks
            .iter()
            .filter(|c| c.status != "up")
            .map(|c| c.name.clone())
            .collect();
        Report {
            status: if failing.is_empty() { "up" } else { "down" },
            failing,
            checks,
        }
    }

    /// Awaits one probe's `call` (the request, sent when first polled) for at most the probe
    /// timeout: up when it answers without an error, whatever the answer.
    async fn probe<T, E>(
        &self,
        name: &str,
        kind: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Check {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.config.probe_timeout, call).await;
        let (status, error) = match outcome {
            Ok(Ok(_)) => ("up", None),
            Ok(Err(_)) => ("down", Some("request failed")),
            Err(_) => ("down", Some("timed out")),
        };
        Check {
            name: name.to_owned(),
            kind,
            status,
            latency_ms: (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            error,
        }
    }
}
