//! The traffic of a soak: seeded clients over every command route, each request retried with
//! the same `Idempotency-Key` and body on a `5xx`, a transport error or a `409` in progress,
//! every final answer recorded ([`Call`]); and a sampler that reads agents, conversations and
//! messages every [`SAMPLE_EVERY`] while the traffic runs ([`Sample`]).
//!
//! A client's choices come from its own [`Rng`] (seeded from the run's seed and the client's
//! number) and from which of its own requests were accepted; with every request accepted in
//! the end (the normal case, retries included), the same seed sends the same requests. How many
//! of them fit in the run's duration depends on the machine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::local_api::{Answer, LocalDev};

/// How often the sampler reads agents and a few conversations.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Attempts of one request (the first included) before its last answer is final …
const ATTEMPTS: usize = 30;
/// … or once retrying for this long: longer than any function's timeout (30 s), at which a key
/// whose request died is freed (`409` in progress until then).
const RETRY_FOR: Duration = Duration::from_secs(45);
/// Bound on one attempt (a function's timeout is 10 s; the gateway answers by then).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The agents of a run: id suffix and skills; all have capacity [`CAPACITY`].
pub const AGENTS: [(&str, &[&str]); 6] = [
    ("a0", &["billing"]),
    ("a1", &["billing"]),
    ("a2", &["billing", "spanish"]),
    ("a3", &["billing", "spanish"]),
    ("a4", &["billing", "tech"]),
    ("a5", &["billing", "tech"]),
];
/// Every agent's capacity (never changed, so `activeConversations ≤ capacity` must always hold).
pub const CAPACITY: u64 = 2;
/// The skills a conversation asks for: each set is held by at least two agents.
const SKILL_SETS: [&[&str]; 4] = [&["billing"], &["spanish"], &["tech"], &[]];
/// Trading accounts (id suffixes) and symbols.
pub const ACCOUNTS: [&str; 3] = ["acc1", "acc2", "acc3"];
const SYMBOLS: [&str; 3] = ["ACME", "GLOBX", "INITECH"];

/// SplitMix64, as `local::chaos` draws its faults: a fixed sequence per seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator of stream `stream` of `seed` (one per client).
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An element of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The command routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Register,
    State,
    Start,
    Message,
    Receipt,
    Close,
    Match,
    Trade,
}

impl Op {
    /// The route, as the spec names it.
    pub fn route(self) -> &'static str {
        match self {
            Op::Register => "PUT /agents/{agentId}",
            Op::State => "POST /agents/{agentId}/state",
            Op::Start => "POST /conversations",
            Op::Message => "POST /conversations/{id}/messages",
            Op::Receipt => "POST /conversations/{id}/messages/{mid}/receipts",
            Op::Close => "POST /conversations/{id}/close",
            Op::Match => "POST /agents/match",
            Op::Trade => "POST /trades",
        }
    }
}

/// One command request, with every attempt's status and its final answer.
#[derive(Debug, Clone)]
pub struct Call {
    pub op: Op,
    pub path: String,
    /// The request body.
    pub body: Value,
    /// `X-Correlation-Id` of every attempt (`<run>-<client>-<n>`, also its `Idempotency-Key`
    /// but for matches): `grep` it in the log.
    pub correlation: String,
    /// Each attempt's status (0: transport error or timeout).
    pub attempts: Vec<u16>,
    /// Microseconds from the run's start to the first attempt's send and to the final answer.
    pub sent_us: u64,
    pub done_us: u64,
    pub status: u16,
    pub answer: Value,
}

impl Call {
    /// True when the final answer is `status`.
    pub fn is(&self, status: u16) -> bool {
        self.status == status
    }

    /// A string field of the request body.
    pub fn arg(&self, field: &str) -> &str {
        self.body[field].as_str().unwrap_or_default()
    }

    /// A string field of the final answer (`commandId`, `conversationId`, `tradeId`, …).
    pub fn got(&self, field: &str) -> Option<&str> {
        self.answer[field].as_str()
    }

    /// The `i`-th segment of the path (`/agents/a0/state`: 1 is `a0`).
    pub fn segment(&self, i: usize) -> &str {
        self.path.split('/').nth(i + 1).unwrap_or_default()
    }

    /// The call as one JSON object (a line of `target/soak/calls.jsonl`).
    pub fn to_json(&self) -> Value {
        json!({
            "route": self.op.route(), "path": self.path, "body": self.body,
            "correlation": self.correlation, "attempts": self.attempts,
            "sentUs": self.sent_us, "doneUs": self.done_us,
            "status": self.status, "answer": self.answer,
        })
    }

    /// True when some attempt failed in a way that leaves the outcome unknown (a `5xx` or a
    /// transport error): such a request may have been applied whatever its final answer.
    pub fn ambiguous(&self) -> bool {
        self.attempts.iter().any(|s| *s == 0 || *s >= 500)
    }
}

/// What a read showed, and when (microseconds from the run's start, request sent and answer
/// received: two reads are ordered only when one was answered before the other was sent).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub sent_us: u64,
    pub done_us: u64,
    pub seen: Seen,
}

/// One object as a read showed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Agent {
        id: String,
        version: u64,
        active: u64,
        capacity: u64,
    },
    Conversation {
        id: String,
        status: String,
        agent: Option<String>,
    },
    Message {
        conversation: String,
        id: String,
        status: String,
    },
}

/// What the clients and the sampler share: the API, the clock, the ids of the run.
pub struct Ctx<'a> {
    pub dev: &'a LocalDev,
    pub t0: Instant,
    pub seed: u64,
    /// Prefix of every id of the run (`s<seed>`), so runs on one stack never collide.
    pub run: String,
    /// Every conversation accepted so far (for the sampler and the drain).
    pub conversations: Mutex<Vec<String>>,
    pub samples: Mutex<Vec<Sample>>,
}

impl Ctx<'_> {
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn agent(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.run)
    }

    pub fn account(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.run)
    }

    /// Sends a command: `key` as `Idempotency-Key`, retried on `5xx`, transport errors and
    /// `409` in progress (after `Retry-After`) with the same key and body.
    pub async fn command(
        &self,
        op: Op,
        client: &str,
        n: usize,
        path: String,
        body: Value,
        keyed: bool,
    ) -> Call {
        let correlation = format!("{}-{client}-{n}", self.run);
        let key = keyed.then(|| format!("{}-{client}-{n}", self.run));
        let text = body.to_string();
        let method = if op == Op::Register { "PUT" } else { "POST" };
        let mut headers = vec![("x-correlation-id", correlation.as_str())];
        if let Some(k) = &key {
            headers.push(("idempotency-key", k.as_str()));
        }
        let sent_us = self.now_us();
        let mut attempts = Vec::new();
        let mut last = Answer {
            status: 0,
            body: Value::Null,
            retry_after: None,
        };
        for attempt in 0..ATTEMPTS {
            let answer = async {
                if op == Op::Match {
                    self.dev.call_signed(method, &path, &text, &headers).await
                } else {
                    self.dev.call(method, &path, Some(&text), &headers).await
                }
            };
            last = match tokio::time::timeout(ATTEMPT_TIMEOUT, answer).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => transport(e),
                Err(_) => transport("timed out".into()),
            };
            attempts.push(last.status);
            let elapsed = Duration::from_micros(self.now_us() - sent_us);
            if !retryable(&last) || attempt + 1 == ATTEMPTS || elapsed > RETRY_FOR {
                break;
            }
            tokio::time::sleep(backoff(attempt, last.retry_after)).await;
        }
        Call {
            op,
            path,
            body,
            correlation,
            attempts,
            sent_us,
            done_us: self.now_us(),
            status: last.status,
            answer: last.body,
        }
    }

    /// A read, retried like a command; `None` when it never answered but with a `5xx`.
    pub async fn read(&self, path: &str) -> Option<(u16, Value)> {
        self.fetch("GET", path).await
    }

    /// A request without a body, retried like a command.
    pub async fn fetch(&self, method: &str, path: &str) -> Option<(u16, Value)> {
        let started = Instant::now();
        for attempt in 0..ATTEMPTS {
            if started.elapsed() > RETRY_FOR {
                break;
            }
            let answer =
                tokio::time::timeout(ATTEMPT_TIMEOUT, self.dev.call(method, path, None, &[]))
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|a| a)
                    .unwrap_or_else(transport);
            if !retryable(&answer) {
                return Some((answer.status, answer.body));
            }
            tokio::time::sleep(backoff(attempt, answer.retry_after)).await;
        }
        None
    }

    /// A read whose result is recorded as samples.
    async fn sample(&self, path: &str) -> Option<Value> {
        let sent_us = self.now_us();
        let (status, body) = self.read(path).await?;
        let done_us = self.now_us();
        if status != 200 {
            return None;
        }
        let mut out = self.samples.lock().expect("samples");
        let items = body["items"].as_array().cloned();
        for item in items.unwrap_or_else(|| vec![body.clone()]) {
            if let Some(seen) = seen(&item) {
                out.push(Sample {
                    sent_us,
                    done_us,
                    seen,
                });
            }
        }
        Some(body)
    }
}

fn transport(e: String) -> Answer {
    Answer {
        status: 0,
        body: json!({ "transportError": e }),
        retry_after: None,
    }
}

/// `5xx`, a transport error, or `409` in progress: the contract says retry with the same key.
fn retryable(a: &Answer) -> bool {
    a.status == 0
        || a.status >= 500
        || (a.status == 409
            && a.body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("in-progress")))
}

/// `Retry-After` (at most 3 s) when given, else 250 ms doubling up to 2 s.
fn backoff(attempt: usize, retry_after: Option<f64>) -> Duration {
    match retry_after {
        Some(s) if s > 0.0 => Duration::from_secs_f64(s.min(3.0)),
        _ => Duration::from_millis((250u64 << attempt.min(3)).min(2_000)),
    }
}

/// An agent, conversation or message as the API shows it, if `v` is one.
fn seen(v: &Value) -> Option<Seen> {
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    if let (Some(id), Some(version)) = (s("agentId"), v["version"].as_u64())
        && v.get("capacity").is_some()
    {
        return Some(Seen::Agent {
            id,
            version,
            active: v["activeConversations"].as_u64()?,
            capacity: v["capacity"].as_u64()?,
        });
    }
    if let Some(id) = s("messageId") {
        return Some(Seen::Message {
            conversation: s("conversationId")?,
            id,
            status: s("status")?,
        });
    }
    Some(Seen::Conversation {
        id: s("conversationId")?,
        status: s("status")?,
        agent: s("agentId"),
    })
}

/// One client: random operations until `until`; returns its calls.
pub async fn client(ctx: &Ctx<'_>, index: usize, until: Instant) -> Vec<Call> {
    let name = format!("c{index}");
    let mut c = Client {
        ctx,
        name,
        rng: Rng::new(ctx.seed, index as u64 + 1),
        n: 0,
        calls: Vec::new(),
        conversations: Vec::new(),
        messages: Vec::new(),
        holdings: BTreeMap::new(),
    };
    while Instant::now() < until {
        c.step().await;
    }
    c.calls
}

struct Client<'a, 'b> {
    ctx: &'a Ctx<'b>,
    name: String,
    rng: Rng,
    n: usize,
    calls: Vec<Call>,
    /// This client's accepted conversations and their skills.
    conversations: Vec<(String, Vec<&'static str>)>,
    /// This client's accepted messages (conversation, message).
    messages: Vec<(String, String)>,
    /// Per (account, symbol): what this client's accepted BUYs less SELLs hold, in cents of a
    /// unit; its SELLs stay within it, so most execute.
    holdings: BTreeMap<(usize, usize), u64>,
}

impl Client<'_, '_> {
    async fn send(&mut self, op: Op, path: String, body: Value) -> Call {
        self.n += 1;
        let call = self
            .ctx
            .command(op, &self.name, self.n, path, body, op != Op::Match)
            .await;
        self.calls.push(call.clone());
        call
    }

    /// A recent conversation of this client (the last 8 are the busy ones).
    fn recent_conversation(&mut self) -> Option<(String, Vec<&'static str>)> {
        let len = self.conversations.len() as u64;
        (len > 0).then(|| {
            let back = self.rng.below(len.min(8));
            self.conversations[(len - 1 - back) as usize].clone()
        })
    }

    async fn step(&mut self) {
        let roll = self.rng.below(100);
        let ctx = self.ctx;
        match roll {
            0..4 => {
                let (suffix, skills) = *self.rng.pick(&AGENTS);
                let name = format!("Agent {suffix} {}", self.rng.below(1000));
                let body = json!({ "name": name, "skills": skills, "capacity": CAPACITY });
                self.send(Op::Register, format!("/agents/{}", ctx.agent(suffix)), body)
                    .await;
            }
            4..22 => {
                let agent = ctx.agent(self.rng.pick(&AGENTS).0);
                let state = *self.rng.pick(&[
                    "AVAILABLE",
                    "AVAILABLE",
                    "AVAILABLE",
                    "AVAILABLE",
                    "AWAY",
                    "OFFLINE",
                ]);
                let mut body = json!({ "state": state });
                if self.rng.below(10) == 0 {
                    // A precondition: the version just read (often stale by the time it applies).
                    let read = ctx.sample(&format!("/agents/{agent}/state")).await;
                    if let Some(v) = read.and_then(|a| a["version"].as_u64()) {
                        body["version"] = json!(v);
                    }
                }
                self.send(Op::State, format!("/agents/{agent}/state"), body)
                    .await;
            }
            22..36 => self.start().await,
            36..58 => {
                let Some((conversation, _)) = self.recent_conversation() else {
                    return self.start().await;
                };
                let sender = *self.rng.pick(&["customer", "agent"]);
                let text = format!("message {} of {}", self.n + 1, self.name);
                let body = json!({ "sender": sender, "text": text });
                let call = self
                    .send(
                        Op::Message,
                        format!("/conversations/{conversation}/messages"),
                        body,
                    )
                    .await;
                if let (true, Some(id)) = (call.is(202), call.got("messageId")) {
                    self.messages.push((conversation, id.to_owned()));
                }
            }
            58..72 => {
                let len = self.messages.len() as u64;
                if len == 0 {
                    return;
                }
                let (conversation, message) =
                    self.messages[(len - 1 - self.rng.below(len.min(12))) as usize].clone();
                let status = *self.rng.pick(&["DELIVERED", "DELIVERED", "READ"]);
                // Only once the message was sent: a receipt may overtake its message's own
                // command otherwise, which analytics then never counts (see the report).
                let path = format!("/conversations/{conversation}/messages/{message}");
                let read = ctx.sample(&path).await;
                if read.is_none_or(|m| m["status"] == "ACCEPTED") {
                    return;
                }
                self.send(
                    Op::Receipt,
                    format!("{path}/receipts"),
                    json!({ "status": status }),
                )
                .await;
            }
            72..81 => {
                let Some((conversation, _)) = self.recent_conversation() else {
                    return;
                };
                self.send(
                    Op::Close,
                    format!("/conversations/{conversation}/close"),
                    json!({}),
                )
                .await;
            }
            81..85 => {
                let Some((conversation, skills)) = self.recent_conversation() else {
                    return;
                };
                let body = json!({ "conversationId": conversation, "skills": skills });
                self.send(Op::Match, "/agents/match".into(), body).await;
            }
            _ => self.trade().await,
        }
    }

    async fn start(&mut self) {
        let skills = *self.rng.pick(&SKILL_SETS);
        let channel = *self.rng.pick(&["chat", "voice", "email"]);
        let customer = format!("cust-{}", self.rng.below(50));
        let body = json!({ "customerId": customer, "channel": channel, "skills": skills });
        let call = self.send(Op::Start, "/conversations".into(), body).await;
        if let (true, Some(id)) = (call.is(202), call.got("conversationId")) {
            self.conversations.push((id.to_owned(), skills.to_vec()));
            self.ctx
                .conversations
                .lock()
                .expect("conversations")
                .push(id.to_owned());
        }
    }

    async fn trade(&mut self) {
        let (a, s) = (
            self.rng.below(ACCOUNTS.len() as u64) as usize,
            self.rng.below(SYMBOLS.len() as u64) as usize,
        );
        let held = self.holdings.get(&(a, s)).copied().unwrap_or(0);
        let oversell = self.rng.below(20) == 0;
        let sell = held >= 100 && self.rng.below(5) < 2 || oversell;
        // Cents of a unit: sometimes whole units, sometimes fractions.
        let mut cents = (1 + self.rng.below(20)) * 100;
        if self.rng.below(3) == 0 {
            cents += self.rng.below(100);
        }
        if sell && !oversell {
            cents = cents.min(held);
        } else if oversell {
            cents += held;
        }
        let price_cents = 1_000 + self.rng.below(20_000);
        let body = json!({
            "accountId": self.ctx.account(ACCOUNTS[a]),
            "symbol": SYMBOLS[s],
            "side": if sell { "SELL" } else { "BUY" },
            "quantity": hundredths(cents),
            "price": hundredths(price_cents),
        });
        let call = self.send(Op::Trade, "/trades".into(), body).await;
        if call.is(202) && !oversell {
            let entry = self.holdings.entry((a, s)).or_default();
            *entry = if sell {
                entry.saturating_sub(cents)
            } else {
                *entry + cents
            };
        }
    }
}

/// `n` hundredths as a plain decimal string (`1205` → `"12.05"`).
fn hundredths(n: u64) -> String {
    format!("{}.{:02}", n / 100, n % 100)
}

/// Reads the agents and two conversations (with their messages) every [`SAMPLE_EVERY`] until
/// `stop`.
pub async fn sampler(ctx: &Ctx<'_>, stop: Arc<AtomicBool>) {
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        ctx.sample("/agents?limit=100").await;
        for _ in 0..2 {
            let id = {
                let all = ctx.conversations.lock().expect("conversations");
                if all.is_empty() {
                    break;
                }
                next += 1;
                all[next % all.len()].clone()
            };
            ctx.sample(&format!("/conversations/{id}")).await;
            ctx.sample(&format!("/conversations/{id}/messages?limit=100"))
                .await;
        }
        tokio::time::sleep(SAMPLE_EVERY.saturating_sub(tick.elapsed())).await;
    }
}
