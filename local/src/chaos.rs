//! Opt-in fault injection for `make soak`: the failures Lambda, SQS and EventBridge are allowed
//! to produce, at rates the user sets, so a run shows whether the guarantees hold when they do.
//!
//! `LOCAL_CHAOS` lists `fault:probability` pairs, e.g.
//! `LOCAL_CHAOS=kill:0.02,dup:0.05,reorder:0.2,delay:0.02,pause:0.01,putevents:0.02`;
//! `LOCAL_CHAOS_SEED` (a number, default 1) seeds the draws. Unset or empty: no faults, and none
//! of this code runs. Each fault is drawn where it happens:
//!
//! | fault | where | what happens | what it stands for |
//! |---|---|---|---|
//! | `kill` | [`crate::runtime`], per invocation | the instance is SIGKILLed 0–20 ms into the invocation | a crashed or OOM-killed function; the request gets a 5xx, the batch is retried |
//! | `dup` | [`crate::poller`], per batch | the batch is invoked a second time before its messages are deleted | SQS's at-least-once delivery, a lost delete |
//! | `reorder` | [`crate::poller`], per batch of a standard queue | the batch's records are shuffled | a standard queue's best-effort order (FIFO queues keep theirs: that is their guarantee) |
//! | `delay` | [`crate::poller`], per batch | the batch's visibility timeout ends now and its invocation waits 0.2–1 s, so another poller can take the same messages meanwhile | a function that outlived its visibility timeout |
//! | `pause` | the runner, drawn each second | the emulator is stopped (SIGSTOP) for 1–3 s | an AWS brown-out: calls time out and answer 503 |
//! | `putevents` | a proxy in front of EventBridge (`AWS_ENDPOINT_URL_EVENTBRIDGE` of the functions) | a `PutEvents` is answered with every entry failed (`InternalFailure`) | EventBridge's partial failure, which the SDK does not retry |
//!
//! Every injected fault is logged as `[chaos] <fault> <where>` and counted; the runner prints the
//! counts (`[chaos] injected kill=… dup=…`) when it stops. The seed makes the draws a fixed
//! sequence; which request or batch draws which number still depends on timing, so a seed
//! replays the traffic of a soak exactly and its faults in kind and number, not one by one.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

/// The settings variable: `fault:probability[,fault:probability…]`.
pub const CHAOS_ENV: &str = "LOCAL_CHAOS";
/// The seed variable (an unsigned number).
pub const SEED_ENV: &str = "LOCAL_CHAOS_SEED";

/// A kind of fault (module docs: where each is drawn and what it does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Kill,
    Dup,
    Reorder,
    Delay,
    Pause,
    PutEvents,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Kill,
        Fault::Dup,
        Fault::Reorder,
        Fault::Delay,
        Fault::Pause,
        Fault::PutEvents,
    ];

    /// Its name in `LOCAL_CHAOS` and in the log.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Dup => "dup",
            Fault::Reorder => "reorder",
            Fault::Delay => "delay",
            Fault::Pause => "pause",
            Fault::PutEvents => "putevents",
        }
    }
}

/// The faults of one run: their rates, the seeded draws, and what was injected.
#[derive(Debug)]
pub struct Chaos {
    rates: BTreeMap<Fault, f64>,
    seed: u64,
    state: Mutex<u64>,
    injected: BTreeMap<Fault, AtomicU64>,
}

impl Chaos {
    /// Parses `LOCAL_CHAOS`'s syntax. Errors name the bad pair: an unknown fault, a
    /// probability that is not a number in 0..=1, or a pair without `:`.
    pub fn parse(spec: &str, seed: u64) -> Result<Chaos, String> {
        let mut rates = BTreeMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, rate) = pair
                .split_once(':')
                .ok_or_else(|| format!("{CHAOS_ENV}: {pair:?} is not fault:probability"))?;
            let fault = Fault::ALL
                .into_iter()
                .find(|f| f.name() == name.trim())
                .ok_or_else(|| {
                    let known: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
                    format!(
                        "{CHAOS_ENV}: unknown fault {name:?} (known: {})",
                        known.join(", ")
                    )
                })?;
            let rate: f64 = rate
                .trim()
                .parse()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!("{CHAOS_ENV}: {pair:?}: the probability must be in 0..=1")
                })?;
            rates.insert(fault, rate);
        }
        Ok(Chaos {
            rates,
            seed,
            state: Mutex::new(seed),
            injected: Fault::ALL
                .into_iter()
                .map(|f| (f, AtomicU64::new(0)))
                .collect(),
        })
    }

    /// From `LOCAL_CHAOS` and `LOCAL_CHAOS_SEED`; `Ok(None)` when no fault has a rate above 0.
    pub fn from_env() -> Result<Option<Chaos>, String> {
        let spec = std::env::var(CHAOS_ENV).unwrap_or_default();
        let seed = match std::env::var(SEED_ENV) {
            Ok(s) if !s.trim().is_empty() => s
                .trim()
                .parse()
                .map_err(|_| format!("{SEED_ENV}: {s:?} is not an unsigned number"))?,
            _ => 1,
        };
        let chaos = Chaos::parse(&spec, seed)?;
        Ok(chaos.any().then_some(chaos))
    }

    /// True when some fault has a rate above 0.
    pub fn any(&self) -> bool {
        self.rates.values().any(|r| *r > 0.0)
    }

    /// The seed of the draws.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The rate of `fault` (0 when not set).
    pub fn rate(&self, fault: Fault) -> f64 {
        self.rates.get(&fault).copied().unwrap_or(0.0)
    }

    /// Draws `fault`: when it is to happen, counts and logs it (`[chaos] <fault> <what>`) and
    /// returns true.
    pub fn inject(&self, fault: Fault, what: impl Display) -> bool {
        let rate = self.rate(fault);
        if rate <= 0.0 || self.unit() >= rate {
            return false;
        }
        self.injected[&fault].fetch_add(1, Ordering::Relaxed);
        eprintln!("[chaos] {} {what}", fault.name());
        true
    }

    /// A duration drawn uniformly from `from..to`.
    pub fn between(&self, from: Duration, to: Duration) -> Duration {
        from + (to.saturating_sub(from)).mul_f64(self.unit())
    }

    /// A seeded shuffle (Fisher–Yates).
    pub fn shuffle<T>(&self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }

    /// How many of each fault were injected so far.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.injected
            .iter()
            .map(|(f, n)| (*f, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// `seed=… kill=3 dup=5 …`: the line the runner prints when it stops.
    pub fn summary(&self) -> String {
        let counts: Vec<String> = self
            .injected()
            .into_iter()
            .map(|(f, n)| format!("{}={n}", f.name()))
            .collect();
        format!("seed={} {}", self.seed, counts.join(" "))
    }

    /// A number in `0..1`.
    fn unit(&self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// SplitMix64 (Steele, Lea and Flood 2014): a fixed sequence per seed on every platform
    /// and every version of this crate's dependencies, which a replayable seed needs.
    fn next(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Serves a proxy to `upstream` (an EventBridge endpoint) on a free loopback port and returns
/// its endpoint. Everything is forwarded as is, except that a `PutEvents` that draws the
/// `putevents` fault is answered `200` with every entry failed (`InternalFailure`), as
/// EventBridge reports a partial failure: nothing is delivered, and the caller must notice.
pub async fn event_bus_proxy(upstream: &str, chaos: Arc<Chaos>) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let proxy = Arc::new(Proxy {
        upstream: upstream.trim_end_matches('/').to_string(),
        client: Client::builder(TokioExecutor::new()).build_http(),
        chaos,
    });
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(endpoint)
}

struct Proxy {
    upstream: String,
    client: Client<HttpConnector, Body>,
    chaos: Arc<Chaos>,
}

/// EventBridge's largest `PutEvents` request is 1 MiB.
const MAX_BODY: usize = 1 << 20;

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return status(413, "request body over 1 MiB");
    };
    let put_events = parts
        .headers
        .get("x-amz-target")
        .is_some_and(|t| t == "AWSEvents.PutEvents");
    if put_events {
        let entries = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["Entries"].as_array().map(Vec::len))
            .unwrap_or(0);
        if proxy
            .chaos
            .inject(Fault::PutEvents, format!("PutEvents of {entries} entries"))
        {
            let failed = serde_json::json!({
                "ErrorCode": "InternalFailure",
                "ErrorMessage": "injected by LOCAL_CHAOS",
            });
            let answer = serde_json::json!({
                "FailedEntryCount": entries,
                "Entries": vec![failed; entries],
            });
            return Response::builder()
                .header("content-type", "application/x-amz-json-1.1")
                .body(Body::from(answer.to_string()))
                .unwrap_or_default();
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{path}", proxy.upstream).parse() else {
        return status(400, "bad request target");
    };
    parts.uri = uri;
    match proxy
        .client
        .request(Request::from_parts(parts, Body::from(body)))
        .await
    {
        Ok(answer) => answer.map(Body::new),
        Err(e) => status(502, &format!("chaos proxy: upstream: {e}")),
    }
}

fn status(code: u16, message: &str) -> Response {
    Response::builder()
        .status(code)
        .body(Body::from(message.to_string()))
        .unwrap_or_default()
}

/// Draws `pause` once a second until `stop`: the processes `pids` (the emulator's) are stopped
/// with SIGSTOP for 1–3 s, then continued (and continued on `stop` in any case).
pub fn pause_processes(pids: &[u32], chaos: Arc<Chaos>, mut stop: watch::Receiver<bool>) {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let what = format!("emulator (pid {})", pids.join(", "));
    let signal = move |sig: &str| {
        let _ = std::process::Command::new("kill")
            .arg(sig)
            .args(&pids)
            .status();
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if !chaos.inject(Fault::Pause, &what) {
                continue;
            }
            signal("-STOP");
            let pause = chaos.between(Duration::from_secs(1), Duration::from_secs(3));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            signal("-CONT");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_names_what_is_wrong() {
        let chaos = Chaos::parse("kill:0.5, dup:1,putevents:0", 7).unwrap();
        assert_eq!(chaos.rate(Fault::Kill), 0.5);
        assert_eq!(chaos.rate(Fault::Dup), 1.0);
        assert_eq!(chaos.rate(Fault::Pause), 0.0);
        assert!(chaos.any());
        assert!(!Chaos::parse("", 1).unwrap().any());
        assert!(!Chaos::parse("kill:0", 1).unwrap().any());
        for (bad, says) in [
            ("explode:0.1", "unknown fault"),
            ("kill", "fault:probability"),
            ("kill:2", "0..=1"),
            ("kill:x", "0..=1"),
        ] {
            let err = Chaos::parse(bad, 1).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_seed_fixes_the_draws_and_the_rate_holds() {
        let draws = |seed| {
            let chaos = Chaos::parse("dup:0.25", seed).unwrap();
            (0..4000)
                .map(|i| chaos.inject(Fault::Dup, i))
                .collect::<Vec<bool>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
        let hits = draws(42).iter().filter(|h| **h).count();
        assert!((900..1100).contains(&hits), "{hits} of 4000 at 0.25");
        let chaos = Chaos::parse("dup:1,kill:0", 3).unwrap();
        assert!(chaos.inject(Fault::Dup, "batch"));
        assert!(!chaos.inject(Fault::Kill, "invocation"));
        assert_eq!(chaos.injected()[&Fault::Dup], 1);
        assert_eq!(chaos.injected()[&Fault::Kill], 0);
        assert_eq!(
            chaos.summary(),
            "seed=3 kill=0 dup=1 reorder=0 delay=0 pause=0 putevents=0"
        );
    }

    /// State letter of a process (`R`, `S`, `T` for stopped, …) from `/proc/<pid>/stat`.
    fn process_state(pid: u32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit_once(") ").unwrap().1.chars().next().unwrap()
    }

    /// Polls until `pid`'s state satisfies `want`, for at most `within`.
    async fn wait_state(pid: u32, want: impl Fn(char) -> bool, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if want(process_state(pid)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pause_fault_stops_the_emulator_for_seconds_then_resumes_it() {
        let emulator = crate::emulator::spawn_on_free_port().expect("moto starts");
        let pid = emulator.guard.pid().expect("started here");
        let chaos = Arc::new(Chaos::parse("pause:1", 2).unwrap());
        let (stop, stopped) = watch::channel(false);
        pause_processes(&[pid], Arc::clone(&chaos), stopped);
        assert!(
            wait_state(pid, |s| s == 'T', Duration::from_millis(1_500)).await,
            "stopped within a second"
        );
        let paused = std::time::Instant::now();
        assert!(
            wait_state(pid, |s| s != 'T', Duration::from_secs(4)).await,
            "continued after at most 3 s"
        );
        assert!(
            paused.elapsed() >= Duration::from_millis(900),
            "paused for seconds"
        );
        assert_eq!(chaos.injected()[&Fault::Pause], 1);
        let _ = stop.send(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_ne!(process_state(pid), 'T', "never left stopped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_putevents_fault_fails_every_entry_and_the_bus_reports_it() {
        use shared::bus::{EventBridgeBus, EventBus};
        let emulator = crate::emulator::spawn_on_free_port().expect("moto starts");
        let sdk = crate::emulator::sdk_config(&emulator.endpoint).await;
        aws_sdk_eventbridge::Client::new(&sdk)
            .create_event_bus()
            .name("bus")
            .send()
            .await
            .unwrap();
        let through = |proxy: String| {
            let config = aws_sdk_eventbridge::config::Builder::from(&sdk)
                .endpoint_url(proxy)
                .build();
            aws_sdk_eventbridge::Client::from_conf(config)
        };
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name("bus")
            .source("test")
            .detail_type("Ping")
            .detail("{}")
            .build();

        let calm = Arc::new(Chaos::parse("putevents:0", 1).unwrap());
        let events = through(event_bus_proxy(&emulator.endpoint, calm).await.unwrap());
        let out = events
            .put_events()
            .entries(entry.clone())
            .send()
            .await
            .expect("forwarded");
        assert_eq!(out.failed_entry_count(), 0);
        assert!(
            out.entries()[0].event_id().is_some(),
            "the emulator took it"
        );

        let chaos = Arc::new(Chaos::parse("putevents:1", 1).unwrap());
        let events = through(
            event_bus_proxy(&emulator.endpoint, Arc::clone(&chaos))
                .await
                .unwrap(),
        );
        let out = events
            .put_events()
            .entries(entry.clone())
            .entries(entry)
            .send()
            .await
            .expect("answered 200");
        assert_eq!(out.failed_entry_count(), 2);
        assert_eq!(out.entries()[1].error_code(), Some("InternalFailure"));
        let command = shared::envelope::Envelope::new(
            "corr-1",
            shared::envelope::Payload::ChangeAgentState(shared::domain::agents::ChangeAgentState {
                agent_id: "a1".parse().unwrap(),
                state: shared::domain::agents::AgentState::Away,
                expected_version: None,
            }),
        );
        let err = EventBridgeBus::new(events, "bus".into())
            .publish(std::slice::from_ref(&command))
            .await
            .unwrap_err();
        assert!(matches!(err, shared::Error::Unavailable(_)), "{err:?}");
        assert_eq!(chaos.injected()[&Fault::PutEvents], 2);
    }

    #[test]
    fn shuffles_are_permutations() {
        let chaos = Chaos::parse("reorder:1", 5).unwrap();
        let mut items: Vec<u32> = (0..10).collect();
        chaos.shuffle(&mut items);
        assert_ne!(items, (0..10).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..10).collect::<Vec<_>>());
        let d = chaos.between(Duration::from_millis(200), Duration::from_secs(1));
        assert!(d >= Duration::from_millis(200) && d < Duration::from_secs(1));
    }
}
