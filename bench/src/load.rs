//! `make load`: bursts through `local dev --release`, the way a team load-tests the stack on a
//! laptop, with the figures docs/ARCHITECTURE.md §Budgets sets for it:
//!
//! - command → applied, one at a time on an idle stack: `PUT /agents/{id}` then
//!   `GET /agents/{id}/state` every 2 ms until the agent's `version` is 1 (applied by the
//!   worker, not merely accepted): p50 ≤ 100 ms;
//! - a burst of 120 `PUT /agents/{id}` from 16 clients, then from 64: every request answered
//!   `202` (0 refused), and every accepted command applied (each agent at version 1);
//! - 40 concurrent `POST /agents/match` (SigV4-signed, as the conversations worker calls it)
//!   against agents with room for all of them: p50 within 3× that of one match alone.
//!
//! Each client sends its requests back to back (a closed loop, as `oha -c` does); latencies are
//! per request, from send to the last byte of the answer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::local_api::LocalDev;
use crate::stats::{ms, quantile};

/// What a burst did.
pub struct Burst {
    pub clients: usize,
    pub latencies: Vec<Duration>,
    /// Answers by status (a transport error counts as status 0).
    pub statuses: BTreeMap<u16, usize>,
    /// Accepted commands whose effect is visible (the agent at version 1).
    pub applied: usize,
    /// From the first request to the last command applied.
    pub drained_in: Duration,
}

impl Burst {
    pub fn sent(&self) -> usize {
        self.statuses.values().sum()
    }

    pub fn accepted(&self) -> usize {
        self.statuses.get(&202).copied().unwrap_or(0)
    }
}

/// Everything `make load` measures.
#[derive(Default)]
pub struct Load {
    pub to_applied: Vec<Duration>,
    pub bursts: Vec<Burst>,
    pub match_alone: Vec<Duration>,
    pub match_concurrent: Vec<Duration>,
    pub match_statuses: BTreeMap<u16, usize>,
    /// What the 40 concurrent matches cost the machine, from the first sent to the last
    /// answered.
    pub match_burst: Option<CpuUse>,
}

/// CPU spent over a stretch of wall time by every process of the run: the load generator
/// (this process), `local dev`, the functions' instances and the emulator's processes.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub wall: Duration,
    /// Every process of the run.
    pub stack: Duration,
    /// The emulator's processes (`scripts/emulator.py`) alone.
    pub emulator: Duration,
}

impl CpuUse {
    /// Measures `work`, counting this process's tree.
    async fn of<T>(work: impl std::future::Future<Output = T>) -> (T, CpuUse) {
        let root = std::process::id();
        let before = crate::proc::tree_cpu_time(root, "emulator.py");
        let started = Instant::now();
        let out = work.await;
        let wall = started.elapsed();
        let after = crate::proc::tree_cpu_time(root, "emulator.py");
        let used = CpuUse {
            wall,
            stack: after.0.saturating_sub(before.0),
            emulator: after.1.saturating_sub(before.1),
        };
        (out, used)
    }

    /// Cores kept busy on average: the stack's CPU over the wall time.
    pub fn cores(&self) -> f64 {
        self.stack.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

const REGISTER: &str = r#"{"name": "Load", "skills": ["billing"], "capacity": 4}"#;

/// Runs every scenario against `dev`; `run` makes this run's ids unique.
pub async fn run(dev: &LocalDev, run: &str, commands: usize, clients: &[usize]) -> Load {
    let mut load = Load::default();
    eprintln!("command → applied, one at a time");
    for i in 0..30 {
        match to_applied(dev, &format!("{run}-v{i}")).await {
            Ok(d) => load.to_applied.push(d),
            Err(e) => eprintln!("command → applied: {e}"),
        }
    }
    for &c in clients {
        eprintln!("burst: {commands} commands from {c} clients");
        load.bursts
            .push(burst(dev, &format!("{run}-c{c}"), commands, c).await);
    }
    eprintln!("matches: one alone, then 40 at once");
    if let Err(e) = matches(dev, run, &mut load).await {
        eprintln!("matches: {e}");
    }
    load
}

/// `PUT` then poll until applied; the time from sending the command.
async fn to_applied(dev: &LocalDev, id: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let (status, _) = dev
        .request("PUT", &format!("/agents/{id}"), Some(REGISTER))
        .await?;
    if status != 202 {
        return Err(format!("PUT /agents/{id}: {status}"));
    }
    applied(dev, id, 1, Duration::from_secs(10)).await?;
    Ok(started.elapsed())
}

/// Polls `id`'s state every 2 ms until its version reaches `version`.
async fn applied(dev: &LocalDev, id: &str, version: u64, within: Duration) -> Result<(), String> {
    let started = Instant::now();
    let path = format!("/agents/{id}/state");
    while started.elapsed() < within {
        let (status, body) = dev.request("GET", &path, None).await?;
        if status == 200 && body["version"].as_u64() >= Some(version) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("{id} not at version {version} within {within:?}"))
}

/// `commands` registrations from `clients` clients at once, then waits for every accepted one
/// to be applied.
async fn burst(dev: &LocalDev, prefix: &str, commands: usize, clients: usize) -> Burst {
    let started = Instant::now();
    let per_client = commands.div_ceil(clients);
    let answers = futures::future::join_all((0..clients).map(|c| async move {
        let mut out = Vec::new();
        for i in 0..per_client {
            let n = c * per_client + i;
            if n >= commands {
                break;
            }
            let id = format!("{prefix}-{n}");
            let sent = Instant::now();
            let status = dev
                .request("PUT", &format!("/agents/{id}"), Some(REGISTER))
                .await
                .map_or(0, |(s, _)| s);
            out.push((id, status, sent.elapsed()));
        }
        out
    }))
    .await;
    let mut b = Burst {
        clients,
        latencies: Vec::new(),
        statuses: BTreeMap::new(),
        applied: 0,
        drained_in: Duration::ZERO,
    };
    let mut accepted = Vec::new();
    for (id, status, latency) in answers.into_iter().flatten() {
        *b.statuses.entry(status).or_default() += 1;
        b.latencies.push(latency);
        if status == 202 {
            accepted.push(id);
        }
    }
    for id in &accepted {
        match applied(dev, id, 1, Duration::from_secs(60)).await {
            Ok(()) => b.applied += 1,
            Err(e) => eprintln!("burst: {e}"),
        }
    }
    b.drained_in = started.elapsed();
    b
}

/// Registers agents with room for every match, makes them AVAILABLE, then measures matches one
/// at a time and 40 at once.
async fn matches(dev: &LocalDev, run: &str, load: &mut Load) -> Result<(), String> {
    const AGENTS: usize = 15; // × capacity 4 = 60 slots: 10 alone + 40 at once fit
    for i in 0..AGENTS {
        let id = format!("{run}-m{i}");
        dev.request("PUT", &format!("/agents/{id}"), Some(REGISTER))
            .await?;
        let state = r#"{"state": "AVAILABLE"}"#;
        dev.request("POST", &format!("/agents/{id}/state"), Some(state))
            .await?;
    }
    for i in 0..AGENTS {
        applied(dev, &format!("{run}-m{i}"), 2, Duration::from_secs(30)).await?;
    }
    let one = |n: String| async move {
        let body = format!(r#"{{"conversationId": "{n}", "skills": ["billing"]}}"#);
        let sent = Instant::now();
        let status = dev
            .call_signed("POST", "/agents/match", &body, &[])
            .await
            .map_or(0, |a| a.status);
        (status, sent.elapsed())
    };
    for i in 0..10 {
        let (status, latency) = one(format!("{run}-alone-{i}")).await;
        *load.match_statuses.entry(status).or_default() += 1;
        load.match_alone.push(latency);
    }
    let burst = futures::future::join_all((0..40).map(|i| one(format!("{run}-together-{i}"))));
    let (together, used) = CpuUse::of(burst).await;
    load.match_burst = Some(used);
    for (status, latency) in together {
        *load.match_statuses.entry(status).or_default() += 1;
        load.match_concurrent.push(latency);
    }
    Ok(())
}

/// The report: a table per topology, the targets beside the figures.
pub fn markdown(runs: &[(&str, Load)], command: &str) -> String {
    let mut md = format!(
        "## Load through `local dev --release`\n\n{command}. Closed-loop clients; latency from \
         send to the last byte. Targets (docs/ARCHITECTURE.md §Budgets): 0 refused and every \
         command applied; concurrent match p50 ≤ 3× one alone; command → applied p50 ≤ 100 ms.\n"
    );
    for (topology, load) in runs {
        md += &format!("\n### {topology}\n\n");
        md += &table(load);
    }
    md
}

fn table(load: &Load) -> String {
    let p = |s: &[Duration], q: f64| {
        if s.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.0}", ms(quantile(s, q)))
        }
    };
    let mut md = "| scenario | requests | refused (non-2xx) | p50 ms | p99 ms | applied | all applied in |\n\
         |---|---|---|---|---|---|---|\n"
        .to_owned();
    md += &format!(
        "| command → applied, one at a time | {} | – | {} | {} | {} | – |\n",
        load.to_applied.len(),
        p(&load.to_applied, 0.5),
        p(&load.to_applied, 0.99),
        load.to_applied.len()
    );
    for b in &load.bursts {
        let refused: Vec<String> = b
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(s, n)| format!("{n} × {s}"))
            .collect();
        md += &format!(
            "| {} `PUT /agents/{{id}}` from {} clients | {} | {} | {} | {} | {} of {} | {:.1} s |\n",
            b.sent(),
            b.clients,
            b.sent(),
            if refused.is_empty() {
                "0".to_owned()
            } else {
                refused.join(", ")
            },
            p(&b.latencies, 0.5),
            p(&b.latencies, 0.99),
            b.applied,
            b.accepted(),
            b.drained_in.as_secs_f64()
        );
    }
    let refused: usize = load
        .match_statuses
        .iter()
        .filter(|(s, _)| **s != 200)
        .map(|(_, n)| n)
        .sum();
    md += &format!(
        "| `POST /agents/match`, one at a time | {} | – | {} | {} | – | – |\n",
        load.match_alone.len(),
        p(&load.match_alone, 0.5),
        p(&load.match_alone, 0.99)
    );
    md += &format!(
        "| `POST /agents/match`, 40 at once | {} | {refused} (of all {} matches) | {} | {} | – | – |\n",
        load.match_concurrent.len(),
        load.match_alone.len() + load.match_concurrent.len(),
        p(&load.match_concurrent, 0.5),
        p(&load.match_concurrent, 0.99)
    );
    if !load.match_alone.is_empty() && !load.match_concurrent.is_empty() {
        md += &format!(
            "\nConcurrent match p50 / one alone: {:.2}× (target ≤ 3×).\n",
            ms(quantile(&load.match_concurrent, 0.5)) / ms(quantile(&load.match_alone, 0.5))
        );
    }
    if let Some(used) = load.match_burst {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        md += &format!(
            "The 40 matches at once: {:.0} ms from the first sent to the last answered; the \
             run's processes used {:.0} ms of CPU ({:.0} ms of it the emulator's), {:.2} of \
             the machine's {cores} cores on average, {:.1} ms of CPU per match.\n",
            ms(used.wall),
            ms(used.stack),
            ms(used.emulator),
            used.cores(),
            ms(used.stack) / 40.0
        );
    }
    md
}

/// True when a burst target is missed: a refusal, an accepted command never applied, a match
/// that was not `200` (the latency targets are reported beside the figures, not enforced: they
/// depend on the machine).
pub fn missed(load: &Load) -> bool {
    load.bursts
        .iter()
        .any(|b| b.accepted() != b.sent() || b.applied != b.accepted())
        || load.match_statuses.keys().any(|s| *s != 200)
        || load.to_applied.is_empty()
}

/// The JSON of an answer body, `Null` when it is not JSON.
pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}
