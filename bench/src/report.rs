//! BENCHMARKS.md and the latency plot.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::cold::Figures;
use crate::stats::{median, ms, quantile, ratio};

/// docs/ARCHITECTURE.md §Budgets.
pub const INIT_BUDGET: f64 = 1.5;
pub const QUERY_BUDGET: f64 = 1.2;
pub const BATCH_BUDGET: f64 = 2.0;
pub const RSS_BUDGET_MB: f64 = 16.0;
pub const SIZE_BUDGET_MB: f64 = 8.0;
/// docs/ARCHITECTURE.md §Budgets: command → query-visible p50 locally.
pub const E2E_TARGET_MS: f64 = 100.0;
/// Warm queries one API instance serves per second: 5× the 1,000 req/s per instance usually
/// quoted for a REST service on a container.
pub const API_RPS_TARGET: u32 = 5_000;

/// Marks a target measured for reference only: shown, never judged against a budget.
pub const REFERENCE: &str = "(reference)";

fn is_reference(name: &str) -> bool {
    name.ends_with(REFERENCE)
}

/// Everything one run measured. The first target is the hello-world baseline.
#[derive(Default)]
pub struct Results {
    pub quick: bool,
    pub command: String,
    pub targets: Vec<(String, Figures)>,
    pub api1: Vec<Duration>,
    pub get1: Vec<Duration>,
    pub api16: Vec<Duration>,
    pub get16: Vec<Duration>,
    pub one: Vec<Duration>,
    pub ten: Vec<Duration>,
    /// The same with AWS calls answered after a fixed delay, in memory.
    pub sim_one: Vec<Duration>,
    pub sim_ten: Vec<Duration>,
    /// (CPU, wall) per event with canned AWS answers.
    pub cpu: Option<(Duration, Duration)>,
    /// (requests per second, CPU per request) of agents-api's warm query, canned AWS answers.
    pub api_rps: Option<(f64, Duration)>,
    pub e2e: Vec<Duration>,
    /// What did not run, and why.
    pub missing: Vec<String>,
}

impl Results {
    fn hello_init(&self) -> Duration {
        self.targets
            .first()
            .map_or(Duration::ZERO, |(_, f)| median(&f.init))
    }

    /// Worst init ratio over the functions.
    pub fn worst_init_ratio(&self) -> Option<f64> {
        let hello = self.hello_init();
        self.targets
            .iter()
            .skip(1)
            .filter(|(name, f)| !is_reference(name) && !f.init.is_empty())
            .map(|(_, f)| ratio(median(&f.init), hello))
            .reduce(f64::max)
    }

    /// p50 through the API over p50 of the bare GetItem, 1 client.
    pub fn query_ratio(&self) -> Option<f64> {
        (!self.api1.is_empty() && !self.get1.is_empty())
            .then(|| ratio(median(&self.api1), median(&self.get1)))
    }

    /// Batch of 10 over batch of 1 with simulated AWS latency (no emulator serialization).
    pub fn sim_batch_ratio(&self) -> Option<f64> {
        batch_ratio(&self.sim_one, &self.sim_ten)
    }
}

fn batch_ratio(one: &[Duration], ten: &[Duration]) -> Option<f64> {
    (!one.is_empty() && !ten.is_empty()).then(|| ratio(median(ten), median(one)))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "pass" } else { "**miss**" }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The machine: cores, CPU model, memory.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    format!("{cores} cores (`nproc`), {model}, {mem_gib:.1} GiB RAM, Linux")
}

/// First line of the part of BENCHMARKS.md that `make bench-peers` writes (the peer baseline);
/// `make bench` keeps the part from here to [`PEERS_END`] as it finds it ([`with_peers_part`]).
pub const PEERS_BEGIN: &str = "<!-- make bench-peers: begin (make bench keeps this part) -->";
/// Last line of that part.
pub const PEERS_END: &str = "<!-- make bench-peers: end -->";

/// The peer baseline's part of `doc`, markers included (each on a line of its own), if any.
pub fn peers_part(doc: &str) -> Option<&str> {
    let start = doc.find(PEERS_BEGIN)?;
    let end = doc[start..].find(PEERS_END)? + start + PEERS_END.len();
    Some(&doc[start..end])
}

/// `doc` with `part` (a peer baseline section, markers included) in place of its own one; a
/// `doc` without one gets it just before its notes (the first line of `notes`, bench/NOTES.md),
/// or at its end. A `doc` holding `notes`' first line gets `notes` as they are now from there
/// on, as `make bench` appends them.
pub fn with_peers_part(doc: &str, part: &str, notes: &str) -> String {
    let heading = notes.lines().next().filter(|l| !l.trim().is_empty());
    let (body, tail) = match heading.and_then(|h| doc.find(h)) {
        Some(at) => (&doc[..at], notes),
        None => (doc, ""),
    };
    let body = match peers_part(body) {
        Some(old) => body.replacen(old, part.trim_end(), 1),
        None => format!(
            "{}

{}
",
            body.trim_end(),
            part.trim_end()
        ),
    };
    if tail.is_empty() {
        body
    } else {
        format!(
            "{}

{tail}",
            body.trim_end()
        )
    }
}

pub fn markdown(r: &Results, plot: &str, notes: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by the `bench` crate; every budget is docs/ARCHITECTURE.md's (§Budgets), every ratio is against a \
         baseline measured in the same run (the machine is shared and noisy: absolute times vary \
         between runs, ratios much less).\n"
    );
    let _ = writeln!(
        s,
        "- Date: {} UTC",
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    );
    let _ = writeln!(s, "- Machine: {}", machine());
    let _ = writeln!(s, "- Command: `{}", r.command);
    let _ = writeln!(
        s,
        "- Mode: {}\n",
        if r.quick {
            "quick (fewer samples, no RSS)"
        } else {
            "full"
        }
    );
    if !r.missing.is_empty() {
        let _ = writeln!(s, "Not measured in this run:\n");
        for m in &r.missing {
            let _ = writeln!(s, "- {m}");
        }
        s.push('\n');
    }

    // Cold start.
    let hello = r.hello_init();
    let n = r.targets.first().map_or(0, |(_, f)| f.init.len());
    let _ = writeln!(
        s,
        "## Cold start: init ≤ {INIT_BUDGET}× hello-world\n\nProcess start → first `GET \
         /runtime/invocation/next` on a Runtime API stub served by the harness (median of {n} \
         cold starts each, interleaved); release binaries; each function with its template \
         environment resolved against a provisioned emulator and `AWS_ENDPOINT_URL` pointing at \
         it, and the DynamoDB warm-up off (`WARM_UP_DYNAMODB=off`: its round trip is the \
         emulator's time; `make bench-first-request` measures it with the first request). \
         Baseline: `bench-hello` (hello-world `lambda_runtime` as its README writes it, \
         `#[tokio::main]`: the multi-thread runtime; same version and profile). The functions \
         run a current-thread runtime (`shared` crate docs: one invocation at a time, one vCPU); \
         the same hello-world on it is shown for reference, not judged.\n"
    );
    let _ = writeln!(
        s,
        "| binary | init p50 (ms) | init min (ms) | baseline p50 (ms) | ratio | budget | |\n|---|---:|---:|---:|---:|---:|---|"
    );
    for (name, f) in &r.targets {
        if f.init.is_empty() {
            let _ = writeln!(
                s,
                "| {name} | – | – | {:.2} | – | ≤ {INIT_BUDGET}× | not run: {} |",
                ms(hello),
                f.error.as_deref().unwrap_or("no sample")
            );
            continue;
        }
        let q = ratio(median(&f.init), hello);
        let _ = writeln!(
            s,
            "| {name} | {:.2} | {:.2} | {:.2} | {q:.2}× | ≤ {INIT_BUDGET}× | {} |",
            ms(median(&f.init)),
            ms(quantile(&f.init, 0.0)),
            ms(hello),
            if is_reference(name) {
                "reference"
            } else {
                verdict(q <= INIT_BUDGET)
            }
        );
    }

    // Warm query.
    let _ = writeln!(
        s,
        "\n## Warm query: through the local API ≤ {QUERY_BUDGET}× a bare `GetItem`\n\n`GET \
         /agents/{{id}}/state` of an existing agent through `local dev --release` (gateway → \
         Runtime API → agents-api → emulator) vs the same `GetItem` (consistent read) from \
         aws-sdk-dynamodb to the same emulator; each client sends its requests back to back, \
         keep-alive connections.\n"
    );
    let _ = writeln!(
        s,
        "| clients | API p50 (ms) | API p99 (ms) | GetItem p50 (ms) | GetItem p99 (ms) | ratio p50 | ratio p99 | budget | |\n|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for (c, api, get) in [(1, &r.api1, &r.get1), (16, &r.api16, &r.get16)] {
        if api.is_empty() || get.is_empty() {
            let _ = writeln!(
                s,
                "| {c} | – | – | – | – | – | – | ≤ {QUERY_BUDGET}× | not run |"
            );
            continue;
        }
        let q50 = ratio(median(api), median(get));
        let q99 = ratio(quantile(api, 0.99), quantile(get, 0.99));
        let _ = writeln!(
            s,
            "| {c} | {:.2} | {:.2} | {:.2} | {:.2} | {q50:.2}× | {q99:.2}× | ≤ {QUERY_BUDGET}× | {} |",
            ms(median(api)),
            ms(quantile(api, 0.99)),
            ms(median(get)),
            ms(quantile(get, 0.99)),
            verdict(q50 <= QUERY_BUDGET)
        );
    }

    // Batch.
    let _ = writeln!(
        s,
        "\n## Worker batch: 10 independent messages ≤ {BATCH_BUDGET}× one\n\nThe agents worker (`shared::worker::handle`) \
         in-process against the emulator, `RegisterAgent` for distinct new agents (each: inbox \
         GetItem, agent GetItem, TransactWriteItems, PutEvents, UpdateItem); batches of 1 and 10 \
         alternate, {} of each.\n",
        r.one.len()
    );
    let _ = writeln!(
        s,
        "| AWS calls answered by | batch of 1 p50 (ms) | batch of 10 p50 (ms) | ratio | budget | |\n|---|---:|---:|---:|---:|---|"
    );
    for (by, one, ten) in [
        ("the emulator (moto)", &r.one, &r.ten),
        (
            "memory, each after 5 ms, concurrently (as AWS would)",
            &r.sim_one,
            &r.sim_ten,
        ),
    ] {
        match batch_ratio(one, ten) {
            Some(q) => {
                let _ = writeln!(
                    s,
                    "| {by} | {:.2} | {:.2} | {q:.2}× | ≤ {BATCH_BUDGET}× | {} |",
                    ms(median(one)),
                    ms(median(ten)),
                    verdict(q <= BATCH_BUDGET)
                );
            }
            None => {
                let _ = writeln!(s, "| {by} | – | – | – | ≤ {BATCH_BUDGET}× | not run |");
            }
        }
    }

    // Memory and size.
    let _ = writeln!(
        s,
        "\n## Memory and size: max RSS ≤ {RSS_BUDGET_MB} MB, binary ≤ {SIZE_BUDGET_MB} MB stripped\n\n\
         Max RSS is `VmHWM` of the process after warm invocations through the stub (API functions: \
         their GET fixtures of `events/`; workers: their SQS fixtures with fresh ids, against the \
         provisioned emulator). Sizes: the release binary (the profile strips it) and `zip -9` of \
         it (the deployment package). MB = 2^20 bytes.\n"
    );
    let _ = writeln!(
        s,
        "| binary | invocations | max RSS (MB) | RSS vs hello | size (MB) | zipped (MB) | size vs hello | RSS | size |\n|---|---:|---:|---:|---:|---:|---:|---|---|"
    );
    let (hello_rss, hello_size) = r
        .targets
        .first()
        .map_or((None, None), |(_, f)| (f.max_rss_kib, f.size));
    for (name, f) in &r.targets {
        let rss = f.max_rss_kib.map(|k| k as f64 / 1024.0);
        let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
        let rel = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.invocations,
            cell(rss),
            rel(rss, hello_rss.map(|k| k as f64 / 1024.0)),
            cell(f.size.map(mb)),
            cell(f.zipped.map(mb)),
            rel(f.size.map(mb), hello_size.map(mb)),
            rss.map_or("–", |v| verdict(v <= RSS_BUDGET_MB)),
            f.size.map_or("–", |v| verdict(mb(v) <= SIZE_BUDGET_MB)),
        );
    }

    // CPU per event.
    let _ = writeln!(
        s,
        "\n## Our own cost per event\n\nThe agents worker (`shared::worker::handle`) on batches of 10 `RegisterAgent` \
         with every AWS call answered at once by an in-memory HTTP client (a custom smithy \
         `HttpClient`): SDK serialization, signing and parsing included, no network, no \
         emulator. No budget in docs/ARCHITECTURE.md; for reference.\n"
    );
    match r.cpu {
        Some((cpu, wall)) => {
            let _ = writeln!(
                s,
                "| CPU per event (µs) | wall per event (µs) |\n|---:|---:|\n| {:.1} | {:.1} |",
                cpu.as_secs_f64() * 1e6,
                wall.as_secs_f64() * 1e6
            );
        }
        None => {
            let _ = writeln!(s, "Not run.");
        }
    }
    let _ = writeln!(
        s,
        "\n`agents_api::handle` on warm `GET /agents/{{agentId}}/state` requests (the `events/` \
         fixture), one at a time, its `GetItem` answered at once from memory: what one instance \
         (one request at a time) serves, without the Runtime API's round trip. Target: ≥ {} \
         req/s (5× a typical REST service's 1,000 per instance).\n",
        API_RPS_TARGET
    );
    match r.api_rps {
        Some((rps, cpu)) => {
            let _ = writeln!(
                s,
                "| requests per second | CPU per request (µs) | target | |\n|---:|---:|---:|---|\n| {:.0} | {:.1} | ≥ {} | {} |",
                rps,
                cpu.as_secs_f64() * 1e6,
                API_RPS_TARGET,
                verdict(rps >= f64::from(API_RPS_TARGET))
            );
        }
        None => {
            let _ = writeln!(s, "Not run.");
        }
    }

    // End to end.
    let _ = writeln!(
        s,
        "\n## Command → query-visible (budget: p50 ≤ {E2E_TARGET_MS} ms locally)\n\n`PUT \
         /agents/{{id}}` (202) through `local dev --release`, then `GET /agents/{{id}}/state` every \
         2 ms until 200: API → PutEvents → moto's EventBridge → SQS → the runner's poller → \
         agents-worker → DynamoDB. {} commands, one at a time.\n",
        r.e2e.len()
    );
    if r.e2e.is_empty() {
        let _ = writeln!(s, "Not run.");
    } else {
        let p50 = ms(median(&r.e2e));
        let _ = writeln!(
            s,
            "| p50 (ms) | p99 (ms) | min (ms) | target p50 | |\n|---:|---:|---:|---:|---|\n| {p50:.1} | {:.1} | {:.1} | ≤ {E2E_TARGET_MS} ms | {} |",
            ms(quantile(&r.e2e, 0.99)),
            ms(quantile(&r.e2e, 0.0)),
            verdict(p50 <= E2E_TARGET_MS)
        );
    }

    let left = grid_step(x_max(
        [&r.api1, &r.get1, &r.api16, &r.get16]
            .into_iter()
            .map(Vec::as_slice),
    ));
    let right = grid_step(x_max(std::iter::once(r.e2e.as_slice())));
    let _ = writeln!(
        s,
        "\n## Plot\n\n![latency distributions]({plot})\n\nNo text in the image (plotters is built \
         without a font backend). Both panels are cumulative distributions: x = latency from 0 \
         (left edge) to 1.2 × the largest p99, y = fraction of requests from 0 to 1; the \
         horizontal grey lines are p50 and p99. Left panel, warm query, x grid every {left} ms \
         (darker every {}): blue = through the local API, 1 client; orange = bare `GetItem`, 1 \
         client; green = local API, 16 clients; red = bare `GetItem`, 16 clients. Right panel, \
         command → query-visible, x grid every {right} ms (darker every {}): black.\n",
        left * 5.0,
        right * 5.0
    );
    if !notes.is_empty() {
        s.push('\n');
        s.push_str(notes);
    }
    s
}

/// Empirical CDF points of `samples` in ms.
fn cdf(samples: &[Duration]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect()
}

/// The x range of a panel: 1.2 × the largest p99 (the slowest 1 % run off the right edge).
fn x_max<'a>(series: impl Iterator<Item = &'a [Duration]>) -> f64 {
    series.map(|s| ms(quantile(s, 0.99))).fold(1.0, f64::max) * 1.2
}

/// A round grid step (1, 2 or 5 × 10^n ms) giving at most 20 lines.
fn grid_step(xmax: f64) -> f64 {
    let mut step = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if xmax / (step * m) <= 20.0 {
                return step * m;
            }
        }
        step *= 10.0;
    }
}

/// Two CDF panels, no text (see [`markdown`] for the legend).
pub fn plot(r: &Results, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Debug| format!("plot: {e:?}");
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(800);
    let grey = RGBColor(225, 225, 225);
    let dark = RGBColor(160, 160, 160);

    let series = [
        (&r.api1, RGBColor(31, 119, 180)),
        (&r.get1, RGBColor(255, 127, 14)),
        (&r.api16, RGBColor(44, 160, 44)),
        (&r.get16, RGBColor(214, 39, 40)),
    ];
    // (area, CDFs with their colours, x grid step in ms)
    let panels = [(&left, series.to_vec()), (&right, vec![(&r.e2e, BLACK)])];
    for (area, lines) in panels {
        let xmax = x_max(lines.iter().map(|(s, _)| s.as_slice()));
        let step = grid_step(xmax);
        let mut chart = ChartBuilder::on(area)
            .margin(25)
            .build_cartesian_2d(0f64..xmax, 0f64..1.02f64)
            .map_err(|e| err(&e))?;
        let ticks = (xmax / step) as usize;
        for i in 0..=ticks {
            let x = i as f64 * step;
            let color = if i % 5 == 0 { dark } else { grey };
            chart
                .draw_series(LineSeries::new([(x, 0.0), (x, 1.0)], &color))
                .map_err(|e| err(&e))?;
        }
        for y in [0.0, 0.5, 0.99, 1.0] {
            chart
                .draw_series(LineSeries::new([(0.0, y), (xmax, y)], &dark))
                .map_err(|e| err(&e))?;
        }
        for (samples, color) in lines {
            chart
                .draw_series(LineSeries::new(cdf(samples), color.stroke_width(2)))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
