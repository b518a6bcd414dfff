//! DLQ operations: `GET /ops/dlq` lists every dead-letter queue of the template with its depth
//! and the age of its oldest message; `POST /ops/dlq/{queue}/redrive` moves messages back to
//! where they came from with [`shared::dlq::redrive`] (its doc says how and why).

use aws_sdk_sqs::types::MessageSystemAttributeName;
use futures::future::join_all;
use lambda_http::{Body, Request, Response};
use serde::Serialize;
pub use shared::dlq::{DeadLetterQueue, Target};
use shared::{
    Error,
    aws::classify,
    config, dlq,
    http::{Route, json, query, serve},
};

pub struct Config {
    pub dlqs: Vec<DeadLetterQueue>,
}

impl Config {
    /// `OPS_DLQS`: comma-separated `name|dlqUrl|target`, where target is the source queue's URL
    /// or `bus:<event bus name>`.
    pub fn from_vars(vars: &config::Vars) -> Result<Self, String> {
        let raw = vars.var("OPS_DLQS").map_err(|e| e.to_string())?;
        Self::parse(&raw).map_err(|e| format!("OPS_DLQS: {e}"))
    }

    fn parse(raw: &str) -> Result<Self, String> {
        let dlqs = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                let mut parts = entry.split('|');
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(name), Some(url), Some(target), None) => Ok(DeadLetterQueue {
                        name: name.to_owned(),
                        url: url.to_owned(),
                        target: match target.strip_prefix("bus:") {
                            Some(bus) => Target::Bus(bus.to_owned()),
                            None => Target::Queue(target.to_owned()),
                        },
                    }),
                    _ => Err(format!("{entry:?} is not name|dlqUrl|target")),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Config { dlqs })
    }
}

pub struct App {
    pub config: Config,
    sqs: aws_sdk_sqs::Client,
    events: aws_sdk_eventbridge::Client,
}

/// Builds the function from the template's environment ([`Config::from_vars`]).
pub fn init(sdk: &aws_config::SdkConfig, vars: &config::Vars) -> Result<App, String> {
    Ok(App::new(sdk, Config::from_vars(vars)?))
}

impl App {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        App {
            config,
            sqs: aws_sdk_sqs::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
        }
    }
}

pub async fn handle(app: &App, req: Request) -> Response<Body> {
    serve(req, |req| async move { route(app, &req).await }).await
}

async fn route(app: &App, req: &Request) -> Result<Response<Body>, Error> {
    let route = Route::of(req);
    match route.key() {
        "GET /ops/dlq" => list(app).await,
        "POST /ops/dlq/{queue}/redrive" => {
            redrive(app, req, &route.lookup::<String>("queue", "queue")?).await
        }
        _ => Err(route.unknown()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueStatus {
    name: String,
    url: String,
    depth: i64,
    in_flight: i64,
    /// From the oldest of (at most 10) peeked messages; `null` when empty.
    oldest_message_age_seconds: Option<i64>,
}

async fn list(app: &App) -> Result<Response<Body>, Error> {
    let statuses = join_all(app.config.dlqs.iter().map(|q| status(app, q))).await;
    let queues = statuses.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(json(200, &serde_json::json!({ "queues": queues })))
}

async fn status(app: &App, q: &DeadLetterQueue) -> Result<QueueStatus, Error> {
    let dlq::Depth {
        visible: depth,
        in_flight,
    } = dlq::depth(&app.sqs, &q.url).await?;
    let oldest = if depth == 0 {
        None
    } else {
        // A peek: visibility 0 leaves the messages where they are.
        let out = app
            .sqs
            .receive_message()
            .queue_url(&q.url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        out.messages()
            .iter()
            .filter_map(|m| {
                m.attributes()?
                    .get(&MessageSystemAttributeName::SentTimestamp)
            })
            .filter_map(|t| t.parse::<i64>().ok())
            .min()
            .map(|sent_ms| (chrono::Utc::now().timestamp_millis() - sent_ms).max(0) / 1000)
    };
    Ok(QueueStatus {
        name: q.name.clone(),
        url: q.url.clone(),
        depth,
        in_flight,
        oldest_message_age_seconds: oldest,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RedriveReport {
    queue: String,
    moved: usize,
    failed: usize,
    remaining: i64,
}

/// At most this many messages per call (`limit`, default 100): a Lambda invocation has a
/// deadline, and an operator can call again.
const MAX_LIMIT: usize = 1_000;

async fn redrive(app: &App, req: &Request, name: &str) -> Result<Response<Body>, Error> {
    let q = app
        .config
        .dlqs
        .iter()
        .find(|q| q.name == name)
        .ok_or_else(|| Error::NotFound(format!("no dead-letter queue named {name}")))?;
    let limit = match query::<usize>(req, "limit")? {
        None => 100,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return Err(Error::invalid("limit", "limit must be between 1 and 1000")),
    };
    let done = dlq::redrive(&app.sqs, &app.events, q, limit).await?;
    let report = RedriveReport {
        queue: q.name.clone(),
        moved: done.moved,
        failed: done.failed,
        remaining: dlq::depth(&app.sqs, &q.url).await?.visible,
    };
    Ok(json(200, &report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dlq_list() {
        let c =
            Config::parse("agents|http://q/dlq|http://q/src, events|http://q/ev|bus:b").unwrap();
        assert_eq!(c.dlqs.len(), 2);
        assert_eq!(c.dlqs[0].target, Target::Queue("http://q/src".into()));
        assert_eq!(c.dlqs[1].target, Target::Bus("b".into()));
        assert!(Config::parse("agents|http://q/dlq").is_err());
    }
}
