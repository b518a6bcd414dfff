//! `make bench-first-request` (`bench --first-request [--rounds N]`): the first request after a
//! cold start at Lambda's CPU share, with and without opening the DynamoDB connection in init.
//!
//! agents-api's `GET /agents/{id}/state` of an existing agent, its release binary under the
//! harness's Runtime API stub, in cgroups of its own as `local dev --lambda-limits` runs it
//! (`local::runtime::limits`: memory `MemorySize` MiB, CPU `MemorySize/1769` of one per 20 ms),
//! against the emulator over plain HTTP or through `local dev --tls`'s front (`local::tls`, the
//! functions trusting its CA through `AWS_CA_BUNDLE`), with the warm-up of
//! `shared::aws::warm_up` on or off (`WARM_UP_DYNAMODB`). Per cold start: init (the binary
//! executed → first `invocation/next`: joining the cgroups before `exec` is the sandbox's cost,
//! not counted), the first request (event handed over → response posted), the median of five
//! warm requests after it, whether the first request opened a TLS connection (the front's
//! handshake count) and the CFS periods the instance was throttled in. Configurations are
//! interleaved round by round; figures are medians over the rounds. Then one warm instance per
//! size answers requests back to back and spaced ([`SWEEP`]), for the cost of a `MemorySize`.
//!
//! Rows: every combination at 128 MB with init at full CPU (Lambda's init burst, as the runner
//! does by default) and with init at the share too; the same at 1,769 MB (one vCPU); the warmed
//! TLS case at 256, 512 and 1,024 MB; and a warmed TLS connection left idle past the front's
//! keep-alive timeout before the first request (the stale case).

use std::path::Path;
use std::time::{Duration, Instant};

use local::runtime::limits::{CpuQuota, Limits};
use local::tls::{LocalCa, TlsFront};
use serde_json::Value;

use crate::stats::{median, quantile};
use crate::stub::Process;

const STACK: &str = "first";
const FUNCTION: &str = "AgentsApiFunction";
const AGENT: &str = "first-1";
/// The stale case's keep-alive timeout, and how long its instance waits after init.
const STALE_IDLE: Duration = Duration::from_millis(300);
const STALE_WAIT: Duration = Duration::from_millis(800);
/// Warm requests after the first, per cold start.
const WARM: usize = 5;

/// One measured configuration.
#[derive(Debug, Clone, Copy)]
struct Config {
    memory_mb: u64,
    tls: bool,
    warm_up: bool,
    /// Init at full CPU (the quota written when init ends), else at the share throughout.
    init_burst: bool,
    /// The warmed connection left idle past the front's keep-alive timeout first.
    stale: bool,
}

impl Config {
    fn label(&self) -> String {
        format!(
            "{} MB, {}, {}{}{}",
            self.memory_mb,
            if self.tls { "TLS" } else { "plain" },
            if self.warm_up {
                "warm-up in init"
            } else {
                "no warm-up"
            },
            if self.init_burst {
                ""
            } else {
                ", init at the share"
            },
            if self.stale {
                ", idle past keep-alive"
            } else {
                ""
            },
        )
    }
}

fn configs() -> Vec<Config> {
    let c = |memory_mb, tls, warm_up, init_burst, stale| Config {
        memory_mb,
        tls,
        warm_up,
        init_burst,
        stale,
    };
    let mut all = Vec::new();
    for (memory, burst) in [(128, true), (128, false), (1769, true)] {
        for tls in [false, true] {
            for warm in [false, true] {
                all.push(c(memory, tls, warm, burst, false));
            }
        }
    }
    all.push(c(128, true, true, true, true));
    for memory in [256, 512, 1024] {
        all.push(c(memory, true, true, true, false));
    }
    all
}

#[derive(Default)]
struct Samples {
    init: Vec<Duration>,
    first: Vec<Duration>,
    warm: Vec<Duration>,
    /// TLS connections the first request opened.
    opened: Vec<u64>,
    /// CFS periods in which the instance was throttled: during init, then during the first
    /// request and the warm ones.
    throttled_init: Vec<u64>,
    throttled_after: Vec<u64>,
    error: Option<String>,
}

/// Runs `rounds` rounds and returns the report (Markdown).
pub async fn run(root: &Path, rounds: usize, command: &str) -> Result<String, String> {
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from)
        .join("release");
    let binary = release.join("agents-api");
    if !binary.is_file() {
        return Err(format!(
            "{} not found: cargo build --release --workspace --bins",
            binary.display()
        ));
    }
    let template =
        local::template::Template::load(root.join("template.yaml")).map_err(|e| e.to_string())?;
    let emulator = local::emulator::spawn_on_free_port().map_err(|e| e.to_string())?;
    let sdk = local::emulator::sdk_config(&emulator.endpoint).await;
    let opts = local::provision::ProvisionOptions {
        stack_name: STACK.into(),
        ..Default::default()
    };
    let stack = local::provision::provision(&template, &sdk, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let function_env = stack
        .function_env(FUNCTION)
        .cloned()
        .ok_or("no AgentsApiFunction")?;
    let ca = LocalCa::new().map_err(|e| e.to_string())?;
    let front = TlsFront::start(&emulator.endpoint, local::tls::DEFAULT_IDLE_TIMEOUT, &ca)
        .await
        .map_err(|e| e.to_string())?;
    let stale_front = TlsFront::start(&emulator.endpoint, STALE_IDLE, &ca)
        .await
        .map_err(|e| e.to_string())?;
    let burst = Limits::new(true).map_err(|e| e.to_string())?;
    let throttled = Limits::new(false).map_err(|e| e.to_string())?;

    let env = |config: &Config| {
        let endpoint = match (config.tls, config.stale) {
            (false, _) => emulator.endpoint.as_str(),
            (true, false) => front.endpoint(),
            (true, true) => stale_front.endpoint(),
        };
        let mut env = crate::cold::stub_env(endpoint);
        env.insert(
            shared::aws::WARM_UP_ENV.into(),
            if config.warm_up { "on" } else { "off" }.into(),
        );
        env.extend(function_env.clone());
        if config.tls {
            env.insert(
                shared::http_client::CA_BUNDLE_ENV.into(),
                front.ca_bundle().display().to_string(),
            );
        }
        env
    };

    // The agent every GET reads: registered once, at full CPU (provisional record, version 0).
    let seed = Config {
        memory_mb: 1769,
        tls: false,
        warm_up: false,
        init_burst: true,
        stale: false,
    };
    let mut p = Process::spawn(&binary, &env(&seed)).await?;
    p.init().await?;
    let answer = p.invoke(event(root, "register-agent.json")?).await?;
    p.stop().await;
    let status = status_of(&answer);
    if status != Some(202) {
        return Err(format!(
            "registering {AGENT}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let get = event(root, "get-agent-state.json")?;

    let configs = configs();
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        eprintln!("first request: round {}/{rounds}", round + 1);
        for (config, s) in configs.iter().zip(samples.iter_mut()) {
            if s.error.is_some() {
                continue;
            }
            let limits = if config.init_burst {
                &burst
            } else {
                &throttled
            };
            let handshakes = || {
                if config.stale {
                    stale_front.handshakes()
                } else {
                    front.handshakes()
                }
            };
            let run = async {
                let cgroup = limits
                    .instance(FUNCTION, config.memory_mb)
                    .map_err(|e| e.to_string())?;
                let mut p =
                    Process::spawn_limited(&binary, &env(config), config.memory_mb, Some(&cgroup))
                        .await?;
                if !config.init_burst {
                    cgroup.throttle().map_err(|e| e.to_string())?;
                }
                let init = p.init().await?;
                let throttled_init = cgroup.throttled_periods();
                if config.init_burst {
                    cgroup.throttle().map_err(|e| e.to_string())?;
                }
                if config.stale {
                    tokio::time::sleep(STALE_WAIT).await;
                }
                let before = handshakes();
                let started = Instant::now();
                let answer = p.invoke(get.clone()).await?;
                let first = started.elapsed();
                let opened = handshakes() - before;
                check(&answer)?;
                let mut warm = Vec::with_capacity(WARM);
                for _ in 0..WARM {
                    let started = Instant::now();
                    check(&p.invoke(get.clone()).await?)?;
                    warm.push(started.elapsed());
                }
                let throttled_after = cgroup.throttled_periods() - throttled_init;
                p.stop().await;
                let throttled = (throttled_init, throttled_after);
                Ok::<_, String>((init, first, median(&warm), opened, throttled))
            };
            match run.await {
                Ok((init, first, warm, opened, (throttled_init, throttled_after))) => {
                    s.init.push(init);
                    s.first.push(first);
                    s.warm.push(warm);
                    s.opened.push(opened);
                    s.throttled_init.push(throttled_init);
                    s.throttled_after.push(throttled_after);
                }
                Err(e) => s.error = Some(e),
            }
        }
    }
    let mut md = markdown(&configs, &samples, rounds, command);

    // Warm instances of each size, TLS, warmed in init: requests back to back, then spaced.
    eprintln!("warm sweep");
    let tls_warm = |memory_mb| Config {
        memory_mb,
        tls: true,
        warm_up: true,
        init_burst: true,
        stale: false,
    };
    let mut warm = Vec::new();
    for memory_mb in SWEEP {
        let cgroup = burst
            .instance(FUNCTION, memory_mb)
            .map_err(|e| e.to_string())?;
        let mut p = Process::spawn_limited(
            &binary,
            &env(&tls_warm(memory_mb)),
            memory_mb,
            Some(&cgroup),
        )
        .await?;
        p.init().await?;
        cgroup.throttle().map_err(|e| e.to_string())?;
        check(&p.invoke(get.clone()).await?)?;
        warm.push((memory_mb, p, cgroup, Sweep::default()));
    }
    for round in 0..rounds {
        eprintln!("warm sweep: round {}/{rounds}", round + 1);
        for (_, p, cgroup, sweep) in warm.iter_mut() {
            let before = cgroup.throttled_periods();
            for _ in 0..SWEEP_REQUESTS {
                let started = Instant::now();
                check(&p.invoke(get.clone()).await?)?;
                sweep.back_to_back.push(started.elapsed());
            }
            for _ in 0..SWEEP_REQUESTS {
                tokio::time::sleep(SWEEP_GAP).await;
                let started = Instant::now();
                check(&p.invoke(get.clone()).await?)?;
                sweep.spaced.push(started.elapsed());
            }
            sweep.throttled += cgroup.throttled_periods() - before;
        }
    }
    let mut rows = Vec::new();
    for (memory_mb, p, cgroup, sweep) in warm {
        p.stop().await;
        drop(cgroup);
        rows.push((memory_mb, sweep));
    }
    drop(burst);
    drop(throttled);
    md.push_str(&sweep_markdown(&rows, rounds));
    Ok(md)
}

/// The warm sweep's sizes, requests per pattern per round, and the gap of the spaced pattern.
const SWEEP: [u64; 5] = [128, 256, 512, 1024, 1769];
const SWEEP_REQUESTS: usize = 20;
const SWEEP_GAP: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Sweep {
    back_to_back: Vec<Duration>,
    spaced: Vec<Duration>,
    throttled: u64,
}

/// The warm sweep's table: latency per pattern and the cost of a spaced request relative to
/// 128 MB (`MemorySize` × billed duration, each request rounded up to the next millisecond as
/// Lambda bills it; the per-request fee is the same at every size).
fn sweep_markdown(rows: &[(u64, Sweep)], rounds: usize) -> String {
    let billed = |memory_mb: u64, samples: &[Duration]| {
        let total: u64 = samples
            .iter()
            .map(|d| memory_mb * d.as_micros().div_ceil(1000) as u64)
            .sum();
        total as f64 / samples.len().max(1) as f64
    };
    let base = rows
        .first()
        .map(|(m, s)| billed(*m, &s.spaced))
        .unwrap_or(1.0);
    let mut md = format!(
        "\n### Warm requests by `MemorySize`\n\n         One warm instance per size (TLS, warmed in init), {rounds} rounds interleaved across          sizes; per round {SWEEP_REQUESTS} requests back to back, then {SWEEP_REQUESTS} each          {} ms after the previous answer. Cost: `MemorySize` × billed duration (each request          rounded up to the millisecond) of the spaced requests, relative to 128 MB.\n\n         | MemorySize | back to back p50 / p90 (ms) | spaced p50 / p90 (ms) | throttled periods per 100 requests | cost per spaced request vs 128 MB |\n         |---:|---:|---:|---:|---:|\n",
        SWEEP_GAP.as_millis()
    );
    for (memory_mb, s) in rows {
        let requests = (s.back_to_back.len() + s.spaced.len()).max(1) as f64;
        md.push_str(&format!(
            "| {memory_mb} MB | {} / {} | {} / {} | {:.0} | {:.2}× |\n",
            ms(median(&s.back_to_back)),
            ms(quantile(&s.back_to_back, 0.9)),
            ms(median(&s.spaced)),
            ms(quantile(&s.spaced, 0.9)),
            s.throttled as f64 * 100.0 / requests,
            billed(*memory_mb, &s.spaced) / base,
        ));
    }
    md
}

/// The fixture `events/agents-api/<name>` for agent [`AGENT`].
fn event(root: &Path, name: &str) -> Result<Vec<u8>, String> {
    let path = root.join("events/agents-api").join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = text.replace("agent-1", AGENT);
    let mut event: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    // A fresh Idempotency-Key, where the fixture has one: keys must not repeat in a table.
    if let Some(key) = event.pointer_mut("/headers/idempotency-key") {
        *key = uuid::Uuid::new_v4().to_string().into();
    }
    serde_json::to_vec(&event).map_err(|e| e.to_string())
}

fn status_of(answer: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(answer).ok()?["statusCode"].as_u64()
}

fn check(answer: &[u8]) -> Result<(), String> {
    match status_of(answer) {
        Some(200) => Ok(()),
        _ => Err(format!(
            "GET /agents/{AGENT}/state: {}",
            String::from_utf8_lossy(answer)
        )),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn markdown(configs: &[Config], samples: &[Samples], rounds: usize, command: &str) -> String {
    let quota = CpuQuota::for_memory(128);
    let mut md = format!(
        "## First request after a cold start, at Lambda's CPU share\n\n\
         agents-api `GET /agents/{{id}}/state` of an existing agent; release binary under the \
         harness's Runtime API stub, in cgroups of its own as `local dev --lambda-limits` runs \
         it (memory `MemorySize` MiB; CPU `MemorySize`/1769 of one per {} ms: {} µs at 128 MB); \
         plain HTTP to the emulator, or TLS through `local dev --tls`'s front (local CA as \
         `AWS_CA_BUNDLE`); the DynamoDB warm-up in init (`WARM_UP_DYNAMODB`) on or off. Init \
         at full CPU unless the row says \"init at the share\". Medians of {rounds} cold starts \
         per row, rows interleaved round by round. \"Opened\": TLS connections the first \
         request opened (of {rounds}). \"Throttled\": median CFS periods in which the instance \
         was throttled (`nr_throttled`), during init / during the first and the {WARM} warm \
         requests. Command: `{command}`.\n\n\
         | configuration | init p50 (ms) | first request p50 (ms) | first p90 (ms) | init + first p50 (ms) | warm p50 (ms) | opened | throttled |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        quota.period_us / 1000,
        quota.quota_us,
    );
    for (config, s) in configs.iter().zip(samples) {
        if let Some(e) = &s.error {
            md.push_str(&format!(
                "| {} | error: {e} | | | | | | |\n",
                config.label()
            ));
            continue;
        }
        let sums: Vec<Duration> = s.init.iter().zip(&s.first).map(|(i, f)| *i + *f).collect();
        let opened: u64 = s.opened.iter().sum();
        let throttled = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            config.label(),
            ms(median(&s.init)),
            ms(median(&s.first)),
            ms(quantile(&s.first, 0.9)),
            ms(median(&sums)),
            ms(median(&s.warm)),
            if config.tls {
                format!("{opened}/{}", s.opened.len())
            } else {
                "–".into()
            },
            throttled(&s.throttled_init),
            throttled(&s.throttled_after),
        ));
    }
    md
}
