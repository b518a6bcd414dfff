//! DLQ operations: `GET /ops/dlq` lists every dead-letter queue of the template with its depth
//! and the age of its oldest message; `POST /ops/dlq/{queue}/redrive` moves messages back to
//! where they came from (receive → send → delete, so a crash mid-way duplicates at worst, which
//! every consumer tolerates, and never loses a message).
//!
//! SQS's own `StartMessageMoveTask` would do the move on AWS, but emulators lack it, and a
//! rule's target DLQ holds EventBridge events that must go back to the bus, not to a queue.

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use futures::future::join_all;
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use shared::{
    Error,
    aws::classify,
    config,
    http::{Route, json, query, serve},
};

/// Where a DLQ's messages go back to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Queue(String),
    /// The DLQ of an EventBridge rule target: its messages are events, re-put on this bus.
    Bus(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterQueue {
    pub name: String,
    pub url: String,
    pub target: Target,
}

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

async fn depth(app: &App, url: &str) -> Result<(i64, i64), Error> {
    let out = app
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| classify("GetQueueAttributes", e))?;
    let attr = |k: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        attr(QueueAttributeName::ApproximateNumberOfMessages),
        attr(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    ))
}

async fn status(app: &App, q: &DeadLetterQueue) -> Result<QueueStatus, Error> {
    let (depth, in_flight) = depth(app, &q.url).await?;
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

#[derive(Serialize, Default)]
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
    let mut report = RedriveReport {
        queue: q.name.clone(),
        ..Default::default()
    };
    while report.moved + report.failed < limit {
        let want = (limit - report.moved - report.failed).min(10) as i32;
        let out = app
            .sqs
            .receive_message()
            .queue_url(&q.url)
            .max_number_of_messages(want)
            .visibility_timeout(30)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in &messages {
            match move_one(app, q, m).await {
                Ok(()) => report.moved += 1,
                Err(e) => {
                    // Left in the DLQ: visible again after the visibility timeout.
                    tracing::error!(queue = %q.name, error = %e, "redrive of one message failed");
                    report.failed += 1;
                }
            }
        }
    }
    report.remaining = depth(app, &q.url).await?.0;
    tracing::info!(queue = %q.name, moved = report.moved, failed = report.failed, "redrive");
    Ok(json(200, &report))
}

#[derive(Deserialize)]
struct DeadEvent {
    source: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    detail: serde_json::Value,
}

async fn move_one(
    app: &App,
    q: &DeadLetterQueue,
    m: &aws_sdk_sqs::types::Message,
) -> Result<(), Error> {
    let body = m.body().unwrap_or_default();
    match &q.target {
        Target::Queue(url) => {
            let mut send = app
                .sqs
                .send_message()
                .queue_url(url)
                .message_body(body)
                .set_message_attributes(m.message_attributes().cloned());
            if url.ends_with(".fifo") {
                let group = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .cloned()
                    .unwrap_or_else(|| "redrive".into());
                let dedup = format!("redrive-{}", m.message_id().unwrap_or_default());
                send = send.message_group_id(group).message_deduplication_id(dedup);
            }
            send.send().await.map_err(|e| classify("SendMessage", e))?;
        }
        Target::Bus(bus) => {
            let event: DeadEvent = serde_json::from_str(body)
                .map_err(|e| Error::Internal(format!("not an EventBridge event: {e}")))?;
            let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .event_bus_name(bus)
                .source(event.source)
                .detail_type(event.detail_type)
                .detail(event.detail.to_string())
                .build();
            let out = app
                .events
                .put_events()
                .entries(entry)
                .send()
                .await
                .map_err(|e| classify("PutEvents", e))?;
            if out.failed_entry_count() > 0 {
                return Err(Error::Unavailable("PutEvents rejected the event".into()));
            }
        }
    }
    app.sqs
        .delete_message()
        .queue_url(&q.url)
        .receipt_handle(m.receipt_handle().unwrap_or_default())
        .send()
        .await
        .map_err(|e| classify("DeleteMessage", e))?;
    Ok(())
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
