//! Reading the system back after the traffic: everything the checks compare the calls with,
//! through the HTTP API (as a client sees it), plus the dead-letter queues' contents and the
//! queues' depths through the SDK against the emulator `local dev` started.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use futures::StreamExt;
use serde_json::Value;

use super::traffic::{ACCOUNTS, AGENTS, Call, Ctx, Op};

/// Reads in flight at once.
const READERS: usize = 8;

/// What the system shows once the queues are quiet.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// `GET /agents/{id}/state` of every agent of the run.
    pub agents: BTreeMap<String, Value>,
    /// Every accepted agent command's outcome (`None`: `404`, not processed).
    pub commands: BTreeMap<String, Option<Value>>,
    /// Every accepted conversation (`None`: `404`).
    pub conversations: BTreeMap<String, Option<Value>>,
    /// Every message each accepted conversation lists (all pages, as listed).
    pub messages: BTreeMap<String, Vec<Value>>,
    /// Every accepted trade (`None`: `404`).
    pub trades: BTreeMap<String, Option<Value>>,
    /// Per account: its positions, ledger entries and balance.
    pub positions: BTreeMap<String, Vec<Value>>,
    pub ledger: BTreeMap<String, Vec<Value>>,
    pub balances: BTreeMap<String, Value>,
    /// `GET /analytics/summary`, and `GET /analytics/agents/{id}` per agent (`None`: `404`).
    pub summary: Value,
    pub agent_analytics: BTreeMap<String, Option<Value>>,
    /// Every message of every dead-letter queue.
    pub dead: Vec<Dead>,
    /// Reads that never answered `200` or `404` (the checks needing them are incomplete).
    pub unread: Vec<String>,
}

/// A message in a dead-letter queue.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dead {
    /// The DLQ's name as `GET /ops/dlq` lists it.
    pub queue: String,
    /// The payload's type (`SubmitTrade`, `TradeExecuted`, …).
    pub kind: String,
    /// The envelope id (a command's id is its command id).
    pub id: String,
    /// The envelope id, its correlation id, and every string of its payload's data (the ids
    /// of what it concerns).
    pub names: BTreeSet<String>,
    pub correlation: String,
    /// Why it failed, from the log (its last error line), when found.
    pub reason: Option<String>,
}

impl Observed {
    /// The dead-letter messages naming `id` (a command, conversation, message or trade id).
    pub fn dead_for(&self, id: &str) -> Option<&Dead> {
        self.dead.iter().find(|d| d.names.contains(id))
    }
}

/// Reads everything the checks need for `calls`.
pub async fn observe(ctx: &Ctx<'_>, calls: &[Call], sqs: &aws_sdk_sqs::Client) -> Observed {
    let mut o = Observed::default();
    let agent_ids: Vec<String> = AGENTS.iter().map(|(a, _)| ctx.agent(a)).collect();
    let accepted = |op: Op| calls.iter().filter(move |c| c.op == op && c.is(202));

    for (id, v) in read_all(
        ctx,
        &mut o,
        agent_ids.iter().map(|a| format!("/agents/{a}/state")),
    )
    .await
    {
        if let Some(v) = v {
            o.agents.insert(id_at(&id, 2), v);
        }
    }
    let commands = accepted(Op::Register)
        .chain(accepted(Op::State))
        .filter_map(|c| {
            Some(format!(
                "/agents/{}/commands/{}",
                c.segment(1),
                c.got("commandId")?
            ))
        });
    for (path, v) in read_all(ctx, &mut o, commands).await {
        o.commands.insert(id_at(&path, 4), v);
    }
    let conversations: BTreeSet<String> = accepted(Op::Start)
        .filter_map(|c| c.got("conversationId").map(str::to_owned))
        .collect();
    let paths = conversations.iter().map(|c| format!("/conversations/{c}"));
    for (path, v) in read_all(ctx, &mut o, paths).await {
        o.conversations.insert(id_at(&path, 2), v);
    }
    let lists = futures::stream::iter(conversations.iter())
        .map(|c| async move {
            let path = format!("/conversations/{c}/messages");
            (c.clone(), pages(ctx, &path, "items").await)
        })
        .buffer_unordered(READERS)
        .collect::<Vec<_>>()
        .await;
    for (c, list) in lists {
        match list {
            Some(items) => {
                o.messages.insert(c, items);
            }
            None => o.unread.push(format!("/conversations/{c}/messages")),
        }
    }
    let trades = accepted(Op::Trade).filter_map(|c| Some(format!("/trades/{}", c.got("tradeId")?)));
    for (path, v) in read_all(ctx, &mut o, trades).await {
        o.trades.insert(id_at(&path, 2), v);
    }
    for account in ACCOUNTS.map(|a| ctx.account(a)) {
        let positions = format!("/accounts/{account}/positions");
        let ledger = format!("/accounts/{account}/ledger");
        match pages(ctx, &positions, "items").await {
            Some(p) => {
                o.positions.insert(account.clone(), p);
            }
            None => o.unread.push(positions),
        }
        match pages(ctx, &ledger, "entries").await {
            Some(p) => {
                o.ledger.insert(account.clone(), p);
            }
            None => o.unread.push(ledger),
        }
        match ctx.read(&format!("/accounts/{account}/balance")).await {
            Some((200, b)) => {
                o.balances.insert(account.clone(), b);
            }
            _ => o.unread.push(format!("/accounts/{account}/balance")),
        }
    }
    match ctx.read("/analytics/summary").await {
        Some((200, s)) => o.summary = s,
        _ => o.unread.push("/analytics/summary".into()),
    }
    let paths = agent_ids.iter().map(|a| format!("/analytics/agents/{a}"));
    for (path, v) in read_all(ctx, &mut o, paths).await {
        o.agent_analytics.insert(id_at(&path, 3), v);
    }
    match dead_letters(ctx, sqs).await {
        Ok(dead) => o.dead = dead,
        Err(e) => o.unread.push(format!("dead-letter queues: {e}")),
    }
    o
}

/// The `n`-th segment of `path` (`/agents/a/state`: 2 is `a`).
fn id_at(path: &str, n: usize) -> String {
    path.split('/').nth(n).unwrap_or_default().to_owned()
}

/// Reads `paths` concurrently: `Some(body)` for `200`, `None` for `404`; any other outcome
/// goes to `o.unread` and is left out.
async fn read_all(
    ctx: &Ctx<'_>,
    o: &mut Observed,
    paths: impl Iterator<Item = String>,
) -> Vec<(String, Option<Value>)> {
    let answers = futures::stream::iter(paths)
        .map(|p| async move {
            let a = ctx.read(&p).await;
            (p, a)
        })
        .buffer_unordered(READERS)
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::new();
    for (path, answer) in answers {
        match answer {
            Some((200, v)) => out.push((path, Some(v))),
            Some((404, _)) => out.push((path, None)),
            other => o.unread.push(format!(
                "{path}: {}",
                other.map_or("no answer".into(), |(s, _)| s.to_string())
            )),
        }
    }
    out
}

/// Every item of a paginated list (`field` holds a page's items); `None` when a page could not
/// be read.
async fn pages(ctx: &Ctx<'_>, path: &str, field: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let page = match &cursor {
            Some(c) => format!("{path}?limit=100&cursor={c}"),
            None => format!("{path}?limit=100"),
        };
        let (status, body) = ctx.read(&page).await?;
        if status != 200 {
            return None;
        }
        out.extend(body[field].as_array().cloned().unwrap_or_default());
        match body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Some(out),
        }
    }
    None
}

/// `GET /ops/dlq`: every DLQ's name, URL and depth.
pub async fn dead_letter_queues(ctx: &Ctx<'_>) -> Result<Vec<(String, String, u64)>, String> {
    match ctx.read("/ops/dlq").await {
        Some((200, body)) => Ok(body["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|q| {
                let s = |k: &str| q[k].as_str().unwrap_or_default().to_owned();
                (s("name"), s("url"), q["depth"].as_u64().unwrap_or(0))
            })
            .collect()),
        other => Err(format!("GET /ops/dlq: {other:?}")),
    }
}

/// Peeks at every message of every non-empty DLQ (visibility 0: they stay where they are).
async fn dead_letters(ctx: &Ctx<'_>, sqs: &aws_sdk_sqs::Client) -> Result<Vec<Dead>, String> {
    let mut out = Vec::new();
    for (queue, url, depth) in dead_letter_queues(ctx).await? {
        if depth == 0 {
            continue;
        }
        let mut bodies = BTreeMap::new();
        for _ in 0..(depth / 5 + 5).min(100) {
            let got = sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .send()
                .await
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
            for m in got.messages() {
                bodies.insert(
                    m.message_id().unwrap_or_default().to_owned(),
                    m.body().unwrap_or_default().to_owned(),
                );
            }
            if bodies.len() as u64 >= depth {
                break;
            }
        }
        out.extend(bodies.values().map(|body| dead(&queue, body)));
    }
    Ok(out)
}

/// A DLQ message body: an EventBridge event whose `detail` is an envelope, or an envelope.
pub fn dead(queue: &str, body: &str) -> Dead {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let env = if value.get("detail").is_some() {
        &value["detail"]
    } else {
        &value
    };
    let mut names: BTreeSet<String> = [&env["id"], &env["correlationId"]]
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if let Some(data) = env["data"].as_object() {
        names.extend(data.values().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    Dead {
        queue: queue.to_owned(),
        kind: env["type"].as_str().unwrap_or("undecodable").to_owned(),
        id: env["id"].as_str().unwrap_or_default().to_owned(),
        names,
        correlation: env["correlationId"].as_str().unwrap_or_default().to_owned(),
        reason: None,
    }
}

/// Every queue's URL, and how many messages it holds (visible, in flight, delayed).
async fn depths(sqs: &aws_sdk_sqs::Client) -> Result<BTreeMap<String, u64>, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let urls = sqs
        .list_queues()
        .max_results(1000)
        .send()
        .await
        .map_err(|e| err(&aws_sdk_sqs::error::DisplayErrorContext(&e)))?
        .queue_urls
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for url in urls {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| err(&aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
        let n: u64 = attrs
            .attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        out.insert(url, n);
    }
    Ok(out)
}

/// Waits until every queue is quiet: the source queues empty (nothing visible, in flight or
/// delayed) and the DLQs unchanged, over 3 polls a second apart. `Err` after `max`, naming what
/// was still busy.
pub async fn quiesce(
    sqs: &aws_sdk_sqs::Client,
    dlqs: &BTreeSet<String>,
    max: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last: Option<BTreeMap<String, u64>> = None;
    let mut quiet = 0;
    let mut busy = String::new();
    while started.elapsed() < max {
        match depths(sqs).await {
            Ok(now) => {
                let sources: Vec<String> = now
                    .iter()
                    .filter(|(url, n)| !dlqs.contains(*url) && **n > 0)
                    .map(|(url, n)| format!("{} ({n})", url.rsplit('/').next().unwrap_or(url)))
                    .collect();
                let stable = last.as_ref().is_some_and(|l| *l == now);
                quiet = if sources.is_empty() && stable {
                    quiet + 1
                } else {
                    0
                };
                busy = sources.join(", ");
                last = Some(now);
                if quiet >= 3 {
                    return Ok(started.elapsed());
                }
            }
            Err(e) => busy = e,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("not quiet after {max:?}: {busy}"))
}
