//! `make soak` (`bench --soak`): randomized, seeded traffic over every command route through
//! `local dev` with faults injected (`LOCAL_CHAOS`, `local::chaos`), then a check of every
//! guarantee of docs/ARCHITECTURE.md that the API lets a client see.
//!
//! The run, in order:
//!
//! 1. **Start** `local dev` (debug binaries unless `--release`) with an `AWS_ENDPOINT_URL` on a
//!    free port where nothing answers, so that it starts the emulator itself (the `pause` fault
//!    can only stop an emulator it started) and stops it when it exits;
//!    `LOCAL_RETRY_DELAY_SECONDS=1`, so a failed message is retried within a second and reaches
//!    its DLQ after 5 receives within seconds.
//! 2. **Setup**: the agents of the run ([`traffic::AGENTS`], capacity 2) registered and made
//!    AVAILABLE.
//! 3. **Traffic** ([`traffic`]): `--clients` seeded clients for `--seconds`, every request
//!    retried with its `Idempotency-Key` as the contract says, every final answer recorded; a
//!    sampler reads the agents and some conversations every 200 ms meanwhile.
//! 4. **Drain**: every conversation closed, so that at the end no agent may hold a slot.
//! 5. **Quiet**: every source queue empty and every DLQ unchanged for 3 s ([`read::quiesce`]).
//! 6. **Check** ([`check`]) what the API shows ([`read::observe`]) against the calls and the
//!    samples.
//! 7. **Redrive** every non-empty DLQ (`POST /ops/dlq/{queue}/redrive`), wait for quiet again,
//!    check again.
//! 8. **Stop** `local dev` (stdin closed: it prints its `[chaos] injected …` summary), count the
//!    faults and digest the errors of its log, write the report ([`report`]) and every call
//!    (`target/soak/calls.jsonl`, one JSON object per request: the evidence behind a finding).
//!
//! Exit status (from `main`): 0 when every check holds, 1 on a violation, 2 when the run
//! could not complete.

mod check;
mod read;
mod report;
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use local::auth::Role;
use serde_json::json;

use crate::local_api::{DevOptions, LocalDev};
use check::Check;
use read::Observed;
use traffic::{AGENTS, CAPACITY, Call, Ctx, Op};

/// The faults `make soak` injects unless told otherwise.
pub const DEFAULT_CHAOS: &str =
    "kill:0.02,dup:0.05,reorder:0.2,delay:0.02,pause:0.02,putevents:0.02";
/// How long the queues may take to go quiet.
const QUIET_WITHIN: Duration = Duration::from_secs(240);

/// What `bench --soak` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: u64,
    pub seed: u64,
    /// `LOCAL_CHAOS` (empty: no faults).
    pub chaos: String,
    /// Release binaries (else debug).
    pub release: bool,
    pub clients: usize,
}

impl Options {
    /// `--seconds N --seed S --chaos SPEC --clients N --release`; the seed defaults to the
    /// clock (printed, so the run can be replayed), the chaos to [`DEFAULT_CHAOS`].
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .map(|i| {
                    args.get(i + 1)
                        .cloned()
                        .ok_or(format!("{name} needs a value"))
                })
                .transpose()
        };
        let number = |name: &str, default: u64| -> Result<u64, String> {
            value(name)?.map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("{name}: {v:?} is not a number"))
            })
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() % 1_000_000);
        Ok(Options {
            seconds: number("--seconds", 60)?,
            seed: number("--seed", clock)?,
            chaos: value("--chaos")?.unwrap_or_else(|| DEFAULT_CHAOS.into()),
            release: args.iter().any(|a| a == "--release"),
            clients: usize::try_from(number("--clients", 8)?).map_err(|e| e.to_string())?,
        })
    }

    /// The command line that replays this run.
    pub fn replay(&self) -> String {
        format!(
            "make soak SOAK_SECONDS={} SOAK_SEED={} SOAK_CHAOS='{}'{}",
            self.seconds,
            self.seed,
            self.chaos,
            if self.release { " RELEASE=1" } else { "" }
        )
    }
}

/// The checks of one stage (after the traffic, after the redrive).
pub struct Stage {
    pub title: String,
    pub quiet: Result<Duration, String>,
    pub checks: Vec<Check>,
    pub dead: Vec<read::Dead>,
}

/// Everything the report shows.
pub struct Soak {
    pub options: Options,
    pub calls: Vec<Call>,
    pub samples: usize,
    pub traffic: Duration,
    pub stages: Vec<Stage>,
    pub redrives: Vec<String>,
    /// Faults injected, by kind, and the runner's summary line when it printed one.
    pub faults: BTreeMap<String, u64>,
    pub summary: Option<String>,
    /// Errors and warnings of the log: (function, level, message) → count.
    pub log: BTreeMap<(String, String, String), usize>,
    pub log_path: PathBuf,
}

impl Soak {
    /// Distinct violations over every stage (one found before and after the redrive counts
    /// once), queues that never went quiet included.
    pub fn violations(&self) -> usize {
        let mut all = BTreeSet::new();
        for s in &self.stages {
            for c in &s.checks {
                all.extend(c.violations.iter().map(|v| (c.name, v.as_str())));
            }
            if let Err(e) = &s.quiet {
                all.insert(("quiet", e.as_str()));
            }
        }
        all.len()
    }
}

/// Runs a soak; `Ok(true)` when every check held. `Err`: it could not run to the end.
pub async fn run(root: &Path, options: Options) -> Result<bool, String> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let profile = target.join(if options.release { "release" } else { "debug" });
    let out = target.join("soak");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let log_path = out.join("local-dev.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let run_id = format!("s{}", options.seed);
    let env = [
        ("LOCAL_CHAOS", options.chaos.clone()),
        ("LOCAL_CHAOS_SEED", options.seed.to_string()),
        ("LOCAL_RETRY_DELAY_SECONDS", "1".into()),
    ];
    let dev_options = DevOptions {
        debug: !options.release,
        env: env.map(|(k, v)| (k.to_owned(), v)).to_vec(),
        roles: vec![Role::Supervisor, Role::Agent, Role::Trader, Role::Operator],
        accounts: traffic::ACCOUNTS
            .iter()
            .map(|a| format!("{run_id}-{a}"))
            .collect(),
    };
    eprintln!(
        "soak: seed {} for {} s, chaos {:?}; local dev log: {}",
        options.seed,
        options.seconds,
        options.chaos,
        log_path.display()
    );
    let mut dev = LocalDev::start_with(
        &profile.join("local"),
        root,
        &endpoint,
        "soak",
        &log_path,
        &dev_options,
    )
    .map_err(|e| format!("{e}; log: {}", log_path.display()))?;
    let sqs = aws_sdk_sqs::Client::new(&local::emulator::sdk_config(&endpoint).await);
    let ctx = Ctx {
        dev: &dev,
        t0: Instant::now(),
        seed: options.seed,
        run: run_id,
        conversations: Default::default(),
        samples: Default::default(),
    };

    let mut calls = setup(&ctx).await?;
    eprintln!("soak: traffic from {} clients", options.clients);
    let stop = Arc::new(AtomicBool::new(false));
    let dlqs: BTreeSet<String> = read::dead_letter_queues(&ctx)
        .await?
        .into_iter()
        .map(|(_, url, _)| url)
        .collect();
    let started = Instant::now();
    let ((), (traffic, quiet)) = futures::join!(traffic::sampler(&ctx, stop.clone()), async {
        let until = Instant::now() + Duration::from_secs(options.seconds);
        let clients = (0..options.clients).map(|i| traffic::client(&ctx, i, until));
        let mut all: Vec<Call> = futures::future::join_all(clients)
            .await
            .into_iter()
            .flatten()
            .collect();
        eprintln!("soak: closing every conversation, then waiting for quiet");
        all.extend(drain(&ctx).await);
        let quiet = read::quiesce(&sqs, &dlqs, QUIET_WITHIN).await;
        stop.store(true, Ordering::Relaxed);
        (all, quiet)
    });
    calls.extend(traffic);
    let traffic_time = started.elapsed();
    let samples = std::mem::take(&mut *ctx.samples.lock().expect("samples"));

    eprintln!("soak: checking");
    let first = observe(
        &ctx,
        &calls,
        &samples,
        &sqs,
        &BTreeSet::new(),
        quiet,
        "After the traffic",
    )
    .await;
    let mut stages = vec![first];
    let mut redrives = Vec::new();
    if !stages[0].dead.is_empty() {
        let redriven: BTreeSet<String> = stages[0]
            .dead
            .iter()
            .flat_map(|d| d.names.iter().cloned())
            .collect();
        eprintln!("soak: redriving the DLQs");
        for (name, _, depth) in read::dead_letter_queues(&ctx).await? {
            if depth == 0 {
                continue;
            }
            let path = format!("/ops/dlq/{name}/redrive?limit=1000");
            let answer = ctx.fetch("POST", &path).await;
            redrives.push(format!("{name} ({depth}): {answer:?}"));
        }
        let quiet = read::quiesce(&sqs, &dlqs, QUIET_WITHIN).await;
        stages.push(
            observe(
                &ctx,
                &calls,
                &samples,
                &sqs,
                &redriven,
                quiet,
                "After the redrive",
            )
            .await,
        );
    }

    eprintln!("soak: stopping local dev");
    drop(ctx);
    if !dev.stop(Duration::from_secs(60)) {
        eprintln!("soak: local dev did not stop within 60 s; killing it");
    }
    drop(dev);
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    for stage in &mut stages {
        for d in &mut stage.dead {
            d.reason = reason(&text, d);
        }
    }
    let (faults, summary) = faults(&text);
    let soak = Soak {
        options,
        calls,
        samples: samples.len(),
        traffic: traffic_time,
        stages,
        redrives,
        faults,
        summary,
        log: digest(&text),
        log_path,
    };
    let lines: Vec<String> = soak.calls.iter().map(|c| c.to_json().to_string()).collect();
    std::fs::write(out.join("calls.jsonl"), lines.join("\n") + "\n").map_err(|e| e.to_string())?;
    let md = report::markdown(&soak);
    println!("{md}");
    std::fs::write(out.join("SOAK.md"), &md).map_err(|e| e.to_string())?;
    eprintln!("soak: wrote {}", out.join("SOAK.md").display());
    Ok(soak.violations() == 0)
}

/// Reads the system back and checks it.
async fn observe(
    ctx: &Ctx<'_>,
    calls: &[Call],
    samples: &[traffic::Sample],
    sqs: &aws_sdk_sqs::Client,
    redriven: &BTreeSet<String>,
    quiet: Result<Duration, String>,
    title: &str,
) -> Stage {
    let o: Observed = read::observe(ctx, calls, sqs).await;
    let checks = check::check(calls, samples, &o, redriven);
    Stage {
        title: title.into(),
        quiet,
        checks,
        dead: o.dead,
    }
}

/// Registers the agents and makes them AVAILABLE; waits until both are applied.
async fn setup(ctx: &Ctx<'_>) -> Result<Vec<Call>, String> {
    let mut calls = Vec::new();
    for (n, (suffix, skills)) in AGENTS.iter().enumerate() {
        let agent = ctx.agent(suffix);
        let body =
            json!({ "name": format!("Agent {suffix}"), "skills": skills, "capacity": CAPACITY });
        calls.push(
            ctx.command(
                Op::Register,
                "setup",
                2 * n,
                format!("/agents/{agent}"),
                body,
                true,
            )
            .await,
        );
        let body = json!({ "state": "AVAILABLE" });
        let path = format!("/agents/{agent}/state");
        calls.push(
            ctx.command(Op::State, "setup", 2 * n + 1, path, body, true)
                .await,
        );
    }
    if let Some(c) = calls.iter().find(|c| !c.is(202)) {
        return Err(format!(
            "setup: {} {} → {}: {}",
            c.op.route(),
            c.path,
            c.status,
            c.answer
        ));
    }
    let started = Instant::now();
    for (suffix, _) in AGENTS {
        let path = format!("/agents/{}/state", ctx.agent(suffix));
        loop {
            if ctx
                .read(&path)
                .await
                .is_some_and(|(_, a)| a["version"].as_u64() >= Some(2))
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!("setup: {path} not applied within 120 s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(calls)
}

/// Closes every accepted conversation (closing a closed one is accepted and changes nothing).
async fn drain(ctx: &Ctx<'_>) -> Vec<Call> {
    let all = ctx.conversations.lock().expect("conversations").clone();
    futures::stream::iter(all.into_iter().enumerate())
        .map(|(n, id)| {
            let path = format!("/conversations/{id}/close");
            ctx.command(Op::Close, "drain", n, path, json!({}), true)
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// The faults the log shows, by kind, and the runner's `[chaos] injected …` line.
fn faults(log: &str) -> (BTreeMap<String, u64>, Option<String>) {
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut summary = None;
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("[chaos] ") else {
            continue;
        };
        if let Some(s) = rest.strip_prefix("injected ") {
            summary = Some(s.to_owned());
        } else if let Some(kind) = rest.split_whitespace().next()
            // A fault's name (a line of another writer may have been spliced into this one).
            && kind.bytes().all(|b| b.is_ascii_lowercase())
        {
            *counted.entry(kind.to_owned()).or_default() += 1;
        }
    }
    if let Some(s) = &summary {
        for pair in s.split_whitespace().filter(|p| !p.starts_with("seed=")) {
            if let Some((k, v)) = pair.split_once('=') {
                counted.insert(k.to_owned(), v.parse().unwrap_or(0));
            }
        }
    }
    (counted, summary)
}

/// A function's log line: `[Function] {json}`.
fn log_line(line: &str) -> Option<(&str, serde_json::Value)> {
    let rest = line.strip_prefix('[')?;
    let (function, json) = rest.split_once("] {")?;
    let value = serde_json::from_str(&format!("{{{json}")).ok()?;
    Some((function, value))
}

/// The log's errors and warnings, counted by function, level and message (errors carry their
/// `error` field too, cut short), and its panics (with the line that follows, the message);
/// those logged once `local dev` began to shut down are marked so.
fn digest(log: &str) -> BTreeMap<(String, String, String), usize> {
    let mut out = BTreeMap::new();
    let mut shutdown = "";
    let mut lines = log.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("shutting down") {
            shutdown = " (while shutting down)";
        }
        if let Some((function, rest)) = line.split_once("] thread '")
            && rest.contains("panicked at")
        {
            let at = rest.split("panicked at ").nth(1).unwrap_or_default();
            let at = at.rsplit('/').next().unwrap_or(at);
            let why = lines
                .peek()
                .and_then(|l| l.split_once("] "))
                .map_or("", |(_, w)| w);
            let key = (
                function.trim_start_matches('[').to_owned(),
                format!("PANIC{shutdown}"),
                format!("{at} {why}"),
            );
            *out.entry(key).or_default() += 1;
            continue;
        }
        let Some((function, v)) = log_line(line) else {
            continue;
        };
        let level = v["level"].as_str().unwrap_or_default();
        if level != "ERROR" && level != "WARN" {
            continue;
        }
        let mut message = v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(e) = v["fields"]["error"].as_str() {
            let e: String = e.chars().take(120).collect();
            message = format!("{message}: {e}");
        }
        *out.entry((function.to_owned(), format!("{level}{shutdown}"), message))
            .or_default() += 1;
    }
    out
}

/// Why a DLQ message failed: the `error` of the last error line naming its envelope id.
fn reason(log: &str, dead: &read::Dead) -> Option<String> {
    if dead.id.is_empty() {
        return None;
    }
    log.lines()
        .rev()
        .filter(|l| l.contains("\"ERROR\"") && l.contains(dead.id.as_str()))
        .find_map(|l| {
            let (function, v) = log_line(l)?;
            let error = v["fields"]["error"].as_str().unwrap_or_default();
            Some(format!("{function}: {error}"))
        })
}
