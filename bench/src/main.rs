//! `make bench`: measures the budgets of docs/ARCHITECTURE.md side by side with their baselines in one
//! run and writes `BENCHMARKS.md` and `BENCHMARKS.png`. `--quick` (make bench-quick) takes
//! fewer samples, skips RSS, writes under `--out` and exits non-zero only when a ratio budget
//! is broken by a wide margin ([`MARGIN`]× the budget) or a ratio could not be measured at all,
//! never on an absolute time.

mod cold;
mod first_request;
mod inproc;
mod load;
mod local_api;
mod peers;
mod proc;
mod report;
mod soak;
mod stats;
mod stub;

use std::path::PathBuf;
use std::time::Duration;

use local::provision::{ProvisionOptions, Stack, provision};
use local::template::Template;

use crate::cold::Target;
use crate::report::{BATCH_BUDGET, INIT_BUDGET, QUERY_BUDGET, Results};

/// `--quick` fails when a ratio exceeds its budget by this factor.
const MARGIN: f64 = 2.0;
const STACK: &str = "bench";
/// Latency of each AWS call in the simulated batch (a DynamoDB round trip inside a region).
const SIMULATED_LATENCY: Duration = Duration::from_millis(5);

/// Sample counts of a run.
struct Plan {
    cold_rounds: usize,
    rss_invocations: usize,
    batch_reps: usize,
    cpu_batches: usize,
    e2e: usize,
    /// Rounds of (API, GetItem), alternating.
    query_rounds: usize,
    query_per_round: usize,
    per_client_16: usize,
}

const FULL: Plan = Plan {
    cold_rounds: 21,
    rss_invocations: 50,
    batch_reps: 20,
    cpu_batches: 2000,
    e2e: 50,
    query_rounds: 5,
    query_per_round: 100,
    per_client_16: 10,
};

const QUICK: Plan = Plan {
    cold_rounds: 7,
    rss_invocations: 0,
    batch_reps: 5,
    cpu_batches: 300,
    e2e: 10,
    query_rounds: 2,
    query_per_round: 50,
    per_client_16: 3,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if args.iter().any(|a| a == "--soak") {
        let outcome = match soak::Options::parse(&args) {
            Ok(options) => soak::run(&root, options).await,
            Err(e) => Err(e),
        };
        std::process::exit(match outcome {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("make soak: {e}");
                2
            }
        });
    }
    if args.iter().any(|a| a == "--cpu") {
        // Only our own cost, AWS answered from memory: what `make profile` samples.
        let seconds: u64 = args
            .iter()
            .position(|a| a == "--seconds")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(5);
        let until = std::time::Instant::now() + Duration::from_secs(seconds);
        while std::time::Instant::now() < until {
            let (cpu, _) = inproc::cpu_per_event(500).await;
            let (rps, per_request) = inproc::api_requests_per_second(5_000).await;
            eprintln!(
                "worker CPU per event {:.1} µs; agents-api {rps:.0} req/s, CPU per request {:.1} µs",
                cpu.as_secs_f64() * 1e6,
                per_request.as_secs_f64() * 1e6
            );
        }
        return;
    }
    if args.iter().any(|a| a == "--peers") {
        std::process::exit(
            match peers::run(&root, peers::Options::parse(&args)).await {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("make bench-peers: {e}");
                    2
                }
            },
        );
    }
    if args.iter().any(|a| a == "--first-request") {
        // `make bench-first-request`: not part of `make bench` or `make bench-quick`.
        let rounds = args
            .iter()
            .position(|a| a == "--rounds")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(11);
        let command =
            format!("make bench-first-request` (`bench --first-request --rounds {rounds}");
        match first_request::run(&root, rounds, &command).await {
            Ok(md) => {
                println!("{md}");
                let out = std::env::var_os("CARGO_TARGET_DIR")
                    .map_or_else(|| root.join("target"), PathBuf::from)
                    .join("first-request");
                let _ = std::fs::create_dir_all(&out);
                let _ = std::fs::write(out.join("FIRST_REQUEST.md"), md);
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("make bench-first-request: {e}");
                std::process::exit(2);
            }
        }
    }
    if args.iter().any(|a| a == "--load") {
        let clients = args
            .iter()
            .position(|a| a == "--clients")
            .and_then(|i| args.get(i + 1))
            .map_or_else(
                || vec![16, 64],
                |c| c.split(',').filter_map(|n| n.parse().ok()).collect(),
            );
        std::process::exit(match load_run(&root, &clients).await {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("make load: {e}");
                2
            }
        });
    }
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| root.clone(), PathBuf::from);
    let plan = if quick { QUICK } else { FULL };
    let mut r = Results {
        quick,
        command: format!(
            "make bench{}` (after the release build it runs `{}`)",
            if quick { "-quick" } else { "" },
            args.join(" ")
        ),
        ..Results::default()
    };
    if let Err(e) = run(&root, &plan, &mut r).await {
        r.missing.push(format!("run stopped early: {e}"));
    }
    std::fs::create_dir_all(&out).expect("output directory");
    let plot = out.join("BENCHMARKS.png");
    if let Err(e) = report::plot(&r, &plot) {
        r.missing.push(e);
    }
    let notes = std::fs::read_to_string(root.join("bench/NOTES.md")).unwrap_or_default();
    let md = report::markdown(&r, "BENCHMARKS.png", if quick { "" } else { &notes });
    // The peer baseline's section (`make bench-peers`) stays as it was.
    let previous = std::fs::read_to_string(out.join("BENCHMARKS.md")).unwrap_or_default();
    let md = match report::peers_part(&previous) {
        Some(part) => report::with_peers_part(&md, part, if quick { "" } else { &notes }),
        None => md,
    };
    std::fs::write(out.join("BENCHMARKS.md"), &md).expect("write BENCHMARKS.md");
    eprintln!("wrote {}", out.join("BENCHMARKS.md").display());
    if quick && broken(&r) {
        std::process::exit(1);
    }
}

/// True when a ratio budget is broken by more than [`MARGIN`]×, or could not be measured at all
/// (the run stopped early: an error, not noise). Prints every check either way, for CI logs.
fn broken(r: &Results) -> bool {
    let checks = [
        ("init", r.worst_init_ratio(), INIT_BUDGET),
        ("warm query", r.query_ratio(), QUERY_BUDGET),
        ("batch of 10", r.sim_batch_ratio(), BATCH_BUDGET),
    ];
    let mut bad = false;
    for (what, ratio, budget) in checks {
        let limit = budget * MARGIN;
        match ratio {
            Some(q) if q > limit => {
                eprintln!("{what}: {q:.2}× is over {MARGIN}× its budget of {budget}× ({limit}×)");
                bad = true;
            }
            Some(q) if q > budget => eprintln!(
                "{what}: {q:.2}× (budget {budget}×, missed; fails above {limit}×){}",
                known_miss(what).map_or(String::new(), |why| format!(": {why}"))
            ),
            Some(q) => eprintln!("{what}: {q:.2}× (budget {budget}×; fails above {limit}×)"),
            None => {
                eprintln!("{what}: not measured");
                bad = true;
            }
        }
    }
    for m in &r.missing {
        eprintln!("not measured: {m}");
    }
    bad
}

/// Why a budget can be missed here (bench/NOTES.md has the measurements), so that a tolerated
/// miss says why in the output rather than passing silently.
fn known_miss(what: &str) -> Option<&'static str> {
    match what {
        "init" => Some(
            "met in full runs, so a miss here is most likely noise of quick mode's few \
             samples; what is left above hello-world is SDK client construction and PIE \
             relocation (bench/NOTES.md)",
        ),
        "warm query" => Some(
            "missed in full runs too: the gateway and Runtime API hops of `local dev` add a \
             fixed ≈ 0.7 ms to the emulator's GetItem, ≈ 1.9 ms now that it keeps connections \
             alive (bench/NOTES.md)",
        ),
        _ => None,
    }
}

async fn run(root: &std::path::Path, plan: &Plan, r: &mut Results) -> Result<(), String> {
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("release");
    let scratch = release.join("bench-scratch");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let template = Template::load(root.join("template.yaml")).map_err(|e| e.to_string())?;

    // One emulator with the stack provisioned: functions init and run against it.
    let emulator = local::emulator::spawn_on_free_port().map_err(|e| e.to_string())?;
    let sdk = local::emulator::sdk_config(&emulator.endpoint).await;
    let stack = provision_stack(&template, &sdk).await?;
    let mut base = cold::stub_env(&emulator.endpoint);
    // The init budget is the process's own work: the DynamoDB warm-up's round trip is the
    // emulator's time, measured with the first request by `make bench-first-request`.
    base.insert(shared::aws::WARM_UP_ENV.into(), "off".into());

    let hello = |name: &str, binary: &str| Target {
        name: name.into(),
        binary: release.join(binary),
        env: base.clone(),
        events: vec![serde_json::json!({"hello": "world"})],
    };
    let mut targets = vec![
        hello("bench-hello (baseline)", "bench-hello"),
        hello(
            &format!("bench-hello, current-thread {}", report::REFERENCE),
            "bench-hello-current-thread",
        ),
    ];
    for f in template.functions.values() {
        let mut env = base.clone();
        env.extend(
            stack
                .function_env(&f.logical_id)
                .cloned()
                .unwrap_or_default(),
        );
        targets.push(Target {
            name: f.binary.clone(),
            binary: release.join(&f.binary),
            env,
            events: cold::fixtures(root, &f.binary),
        });
    }

    eprintln!(
        "cold starts: {} rounds of {} binaries",
        plan.cold_rounds,
        targets.len()
    );
    let mut figures = cold::cold_starts(&targets, plan.cold_rounds).await;
    for (t, f) in targets.iter().zip(figures.iter_mut()) {
        cold::sizes(&t.binary, &scratch, f);
        if plan.rss_invocations > 0 && f.error.is_none() {
            eprintln!("max RSS: {}", t.name);
            let n = if t.name.ends_with("-worker") {
                plan.rss_invocations / 5
            } else {
                plan.rss_invocations
            };
            cold::max_rss(t, n, f).await;
        }
    }
    r.targets = targets.into_iter().map(|t| t.name).zip(figures).collect();
    if plan.rss_invocations == 0 {
        r.missing
            .push("max RSS (quick mode: absolute figures are never checked there)".into());
    }

    eprintln!("worker batch of 10 vs 1");
    let worker = stack
        .function("AgentsWorkerFunction")
        .ok_or("no AgentsWorkerFunction")?;
    let app = agents_worker::init(&sdk, &shared::config::Vars::from(worker.env.clone()))
        .map_err(|e| e.to_string())?;
    (r.one, r.ten) = inproc::batch_vs_one(&app, plan.batch_reps).await;

    eprintln!("worker batch of 10 vs 1, AWS calls answered in {SIMULATED_LATENCY:?}");
    let simulated = inproc::canned_app(SIMULATED_LATENCY).await;
    (r.sim_one, r.sim_ten) = inproc::batch_vs_one(&simulated, plan.batch_reps).await;

    eprintln!("CPU per event");
    r.cpu = Some(inproc::cpu_per_event(plan.cpu_batches).await);
    eprintln!("API requests per second, one instance");
    r.api_rps = Some(inproc::api_requests_per_second(plan.cpu_batches * 10).await);
    drop(emulator);

    local_latency(root, &release, &template, plan, r).await
}

async fn provision_stack(
    template: &Template,
    sdk: &aws_config::SdkConfig,
) -> Result<Stack, String> {
    let opts = ProvisionOptions {
        stack_name: STACK.into(),
        ..ProvisionOptions::default()
    };
    provision(template, sdk, &opts)
        .await
        .map_err(|e| e.to_string())
}

/// Through `local dev --release` with an emulator of its own.
async fn local_latency(
    root: &std::path::Path,
    release: &std::path::Path,
    template: &Template,
    plan: &Plan,
    r: &mut Results,
) -> Result<(), String> {
    let emulator = local::emulator::spawn_on_free_port().map_err(|e| e.to_string())?;
    eprintln!("local dev --release");
    if let Some(dir) = std::env::var_os(local_api::TARGET_DIR_ENV) {
        r.missing.push(format!(
            "`local dev` ran with its binaries from {} ({} set): see the notes",
            PathBuf::from(dir).display(),
            local_api::TARGET_DIR_ENV
        ));
    }
    let log = release.join("bench-scratch/local-dev.log");
    let dev = local_api::LocalDev::start(
        &release.join("local"),
        root,
        &emulator.endpoint,
        STACK,
        &log,
    )
    .map_err(|e| format!("{e}; log: {}", log.display()))?;
    let sdk = local::emulator::sdk_config(&emulator.endpoint).await;
    // Idempotent: the names `local dev` created.
    let stack = provision_stack(template, &sdk).await?;
    let table = stack.table_name("AgentsTable").ok_or("no AgentsTable")?;

    eprintln!("command → visible: {}", plan.e2e);
    let run = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..plan.e2e {
        let id = format!("b{}-{i}", &run[..8]);
        r.e2e.push(
            dev.command_to_visible(&id, Duration::from_millis(2))
                .await?,
        );
    }
    let id = format!("b{}-0", &run[..8]);
    let path = format!("/agents/{id}/state");
    let db = aws_sdk_dynamodb::Client::new(&sdk);
    let api = || async {
        match dev.send("GET", &path, None).await? {
            200 => Ok(()),
            s => Err(format!("GET {path}: {s}")),
        }
    };
    let get = || local_api::get_item(&db, table, &id);
    eprintln!("warm query, 1 and 16 clients");
    // Warm both paths (instances, connections) before measuring.
    local_api::concurrent(16, 2, api).await;
    local_api::concurrent(16, 2, get).await;
    for _ in 0..plan.query_rounds {
        r.api1
            .extend(local_api::concurrent(1, plan.query_per_round, api).await);
        r.get1
            .extend(local_api::concurrent(1, plan.query_per_round, get).await);
        r.api16
            .extend(local_api::concurrent(16, plan.per_client_16, api).await);
        r.get16
            .extend(local_api::concurrent(16, plan.per_client_16, get).await);
    }
    Ok(())
}

/// `make load` (`bench --load [--clients 16,64]`): the load scenarios through `local dev
/// --release`, on an emulator of its own and then with DynamoDB on a second one; prints the table and writes it to
/// `target/load/LOAD.md`. `Ok(false)` when a burst target is missed ([`load::missed`]).
async fn load_run(root: &std::path::Path, clients: &[usize]) -> Result<bool, String> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let release = target.join("release");
    let out = target.join("load");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    for split in [false, true] {
        let emulator = local::emulator::spawn_on_free_port().map_err(|e| e.to_string())?;
        let dynamodb = if split {
            Some(local::emulator::spawn_on_free_port().map_err(|e| e.to_string())?)
        } else {
            None
        };
        let options = local_api::DevOptions {
            env: dynamodb
                .iter()
                .map(|d| {
                    (
                        local::emulator::DYNAMODB_ENDPOINT_ENV.to_owned(),
                        d.endpoint.clone(),
                    )
                })
                .collect(),
            ..Default::default()
        };
        let log = out.join(if split {
            "local-dev-split.log"
        } else {
            "local-dev.log"
        });
        let dev = local_api::LocalDev::start_with(
            &release.join("local"),
            root,
            &emulator.endpoint,
            "load",
            &log,
            &options,
        )
        .map_err(|e| format!("{e}; log: {}", log.display()))?;
        let topology = if split {
            "DynamoDB on an emulator process of its own (`AWS_ENDPOINT_URL_DYNAMODB`)"
        } else {
            "One emulator process (`make dev`'s default)"
        };
        eprintln!("{topology}");
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        runs.push((topology, load::run(&dev, &run, 120, clients).await));
    }
    let command = format!(
        "`make load` (after the release build, `bench --load --clients {}`)",
        clients
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let md = load::markdown(&runs, &command);
    println!("{md}");
    std::fs::write(out.join("LOAD.md"), &md).map_err(|e| e.to_string())?;
    Ok(!runs.iter().any(|(_, l)| load::missed(l)))
}
