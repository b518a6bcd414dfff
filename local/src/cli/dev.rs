//! `local dev`: the whole template on this machine until Ctrl-C / SIGTERM (or, with
//! `LOCAL_EXIT_ON_STDIN_EOF=1`, until its stdin closes).
//!
//! Cheap checks come first (template, port, build, binaries) so bad input fails before an
//! emulator is started. Shutdown order: stop accepting (gateway, pollers), let in-flight
//! requests and batches finish, kill the function instances, then stop the emulator if this
//! process started it (its guard is dropped last).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::reload::{self, Live, Reloader};
use super::{Args, CliError, provision_options};
use crate::auth::{self, Authorizers};
use crate::chaos::{self, Chaos, Fault};
use crate::dashboard::{self, Dashboard};
use crate::gateway::{self, Gateway, RouteTable, Routing};
use crate::poller::{self, Pollers, SqsBinding};
use crate::provision::Stack;
use crate::runtime::limits::{self, Limits};
use crate::runtime::{FunctionSpec, Runtime, RuntimeOptions};
use crate::scheduler::Schedules;
use crate::template::{Access, Template};
use crate::tls::{LocalCa, TlsFront};
use crate::{emulator, provision};

pub(super) async fn run(args: &Args) -> Result<(), CliError> {
    let template = Template::load(&args.template)?;
    dashboard::check_routes(&RouteTable::from_template(&template)).map_err(CliError::Config)?;
    let chaos = Chaos::from_env().map_err(CliError::Config)?.map(Arc::new);
    let listener = match TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(CliError::PortInUse(args.port));
        }
        Err(e) => return Err(CliError::Listen(args.port, e)),
    };
    let root = workspace_root(&args.template);
    if args.build {
        build(&template, &root, args.release).await?;
    }
    let binaries = locate_binaries(&template, &root, args.release)?;
    let limits = lambda_limits(args)?;

    let endpoint = emulator::endpoint_from_env();
    let guard = {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || emulator::ensure(&endpoint))
            .await
            .map_err(|e| CliError::Config(format!("emulator start panicked: {e}")))??
    };
    // DynamoDB on an emulator process of its own, when asked for: its work then runs beside,
    // not under, the other services' (moto serves one request at a time per process).
    let dynamodb = match emulator::dynamodb_endpoint_from_env() {
        Some(dynamodb) => {
            let e = dynamodb.clone();
            let guard = tokio::task::spawn_blocking(move || emulator::ensure(&e))
                .await
                .map_err(|e| CliError::Config(format!("emulator start panicked: {e}")))??;
            Some((dynamodb, guard))
        }
        None => None,
    };
    // The SDK's default chain sends DynamoDB to `AWS_ENDPOINT_URL_DYNAMODB` when it is set.
    let sdk = emulator::sdk_config(&endpoint).await;
    let stack = provision::provision(&template, &sdk, &provision_options(args)).await?;
    for w in &stack.warnings {
        eprintln!("warning: {w}");
    }

    let (stop, stopped) = watch::channel(false);
    let specs = function_specs(&template, &stack, &binaries);
    let mut options = RuntimeOptions::new(&stack.region, &endpoint);
    options.limits = limits.clone();
    let mut emulator_pids: Vec<u32> = guard.pid().into_iter().collect();
    if let Some((dynamodb, dynamodb_guard)) = &dynamodb {
        options
            .service_endpoints
            .insert(emulator::DYNAMODB_ENDPOINT_ENV.into(), dynamodb.clone());
        emulator_pids.extend(dynamodb_guard.pid());
    }
    // Kept until the runner stops: the functions' endpoints while it runs.
    let _fronts = match args.tls {
        true => tls_fronts(&mut options, &endpoint, dynamodb.as_ref().map(|(d, _)| d)).await?,
        false => Vec::new(),
    };
    if let Some(chaos) = &chaos {
        start_chaos(chaos, &mut options, &endpoint, &emulator_pids, &stopped).await?;
    }
    // Instances run private copies of the binaries, which a rebuild never rewrites.
    let snapshots = target_dir(&root).join("local-dev");
    let runtime = Runtime::with_snapshots(specs, &options, &snapshots)
        .await
        .map_err(|e| CliError::Config(format!("cannot copy the function binaries: {e}")))?;
    let runtime = Arc::new(runtime);
    let bindings = sqs_bindings(&template, &stack)?;
    let schedules = Schedules::from_template(&template, &stack).map_err(CliError::Config)?;
    let routes = RouteTable::from_template(&template);
    let key_dir = auth::key_dir(&args.template);
    let authorizers = Authorizers::load(&template, &stack, &key_dir)?;
    print_table(
        &routes,
        &bindings,
        &schedules,
        &stack,
        &endpoint,
        guard.started(),
        args.port,
    );
    if let Some((dynamodb, dynamodb_guard)) = &dynamodb {
        println!(
            "DynamoDB  {dynamodb} ({})",
            if dynamodb_guard.started() {
                "its own emulator, started by local"
            } else {
                "already running"
            }
        );
    }
    if !template.authorizers.is_empty() {
        println!(
            "JWT auth  dev keys in {} (a token: make token ROLE=agent|supervisor|trader|operator)",
            key_dir.display()
        );
    }
    if routes.routes().iter().any(|r| r.access == Access::Iam) {
        let credentials = crate::runtime::FunctionCredentials::from_env();
        println!(
            "IAM auth  SigV4 for execute-api in {} with the functions' credentials (access key {})",
            stack.region, credentials.access_key_id
        );
    }

    let routing = Arc::new(ArcSwap::from_pointee(Routing {
        routes,
        authorizers,
    }));
    let dashboard = Arc::new(Dashboard::new(
        &template,
        &stack,
        &sdk,
        Arc::clone(&runtime),
    ));
    let gateway = Gateway {
        routing: Arc::clone(&routing),
        runtime: Arc::clone(&runtime),
        account_id: stack.account_id.clone(),
        dashboard: Some(Arc::clone(&dashboard)),
    };
    let mut gateway_stop = stopped.clone();
    let server = tokio::spawn(gateway::serve(listener, gateway, async move {
        let _ = gateway_stop.wait_for(|s| *s).await;
    }));
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let pollers = Pollers::start(
        bindings.clone(),
        &sqs,
        &runtime,
        chaos.clone(),
        stopped.clone(),
    );
    let scheduled = reload::start_schedules(schedules.clone(), &runtime, &stopped);
    let live = Arc::new(tokio::sync::Mutex::new(Live {
        template,
        bindings,
        pollers: vec![pollers],
        schedules,
        scheduled: vec![scheduled],
    }));
    let reloader = match args.watch {
        true => {
            let context = reload::Context {
                args: args.clone(),
                root,
                sdk,
                runtime: Arc::clone(&runtime),
                routing,
                dashboard,
                chaos: chaos.clone(),
                stopped,
                key_dir,
            };
            Some(
                Reloader::start(context, Arc::clone(&live))
                    .await
                    .map_err(CliError::Config)?,
            )
        }
        false => None,
    };
    println!("ready");

    wait_for_signal(exit_on_stdin_eof()).await;
    println!("shutting down: finishing in-flight requests and batches");
    let _ = stop.send(true);
    if let Some(reloader) = reloader {
        reloader.stop();
    }
    match server.await {
        Ok(Err(e)) => eprintln!("gateway: {e}"),
        Err(e) => eprintln!("gateway task: {e}"),
        Ok(Ok(())) => {}
    }
    // Pollers and schedule timers, those a reload retired included.
    live.lock().await.wait().await;
    runtime.shutdown();
    // Instances die as their handles drop; give the kill a moment before the emulator goes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if let Some(limits) = limits {
        let _ = tokio::task::spawn_blocking(move || limits.settle(Duration::from_secs(2))).await;
    }
    drop(guard);
    drop(dynamodb);
    if let Some(chaos) = &chaos {
        eprintln!("[chaos] injected {}", chaos.summary());
    }
    println!("stopped");
    Ok(())
}

/// Sets up the faults of `LOCAL_CHAOS` that live outside the runtime and the pollers: the
/// EventBridge proxy for `putevents` (the functions reach EventBridge through it) and the
/// emulator pauses for `pause` (only for the emulator processes this runner started, `pids`:
/// another one's process is not ours to stop).
async fn start_chaos(
    chaos: &Arc<Chaos>,
    options: &mut RuntimeOptions,
    endpoint: &str,
    pids: &[u32],
    stop: &watch::Receiver<bool>,
) -> Result<(), CliError> {
    options.chaos = Some(Arc::clone(chaos));
    if chaos.rate(Fault::PutEvents) > 0.0 {
        let events = std::env::var("AWS_ENDPOINT_URL_EVENTBRIDGE")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| endpoint.to_string());
        let proxy = chaos::event_bus_proxy(&events, Arc::clone(chaos))
            .await
            .map_err(|e| CliError::Config(format!("chaos proxy: {e}")))?;
        options
            .service_endpoints
            .insert("AWS_ENDPOINT_URL_EVENTBRIDGE".into(), proxy);
    }
    if chaos.rate(Fault::Pause) > 0.0 {
        match pids {
            [_, ..] => chaos::pause_processes(pids, Arc::clone(chaos), stop.clone()),
            [] => eprintln!(
                "warning: {}: pause applies only to an emulator this runner starts; none paused",
                chaos::CHAOS_ENV
            ),
        }
    }
    let rates: Vec<String> = Fault::ALL
        .iter()
        .filter(|f| chaos.rate(**f) > 0.0)
        .map(|f| format!("{}:{}", f.name(), chaos.rate(*f)))
        .collect();
    println!("chaos     {} seed {}", rates.join(","), chaos.seed());
    Ok(())
}

/// The runtime's cgroup limits when `--lambda-limits` (or `LOCAL_LAMBDA_LIMITS`) asks for them,
/// with the line saying so printed; checked before anything starts.
fn lambda_limits(args: &Args) -> Result<Option<Arc<Limits>>, CliError> {
    let limits = match args.lambda_limits {
        true => Limits::new(limits::init_burst_from_env()).map(Some),
        false => Limits::from_env(),
    }
    .map_err(|e| CliError::Config(e.to_string()))?;
    if let Some(l) = &limits {
        println!(
            "Limits    per instance: memory MemorySize MiB (no swap), CPU MemorySize/{} of one per {} ms {} (cgroups in {})",
            limits::MB_PER_VCPU,
            limits::CPU_PERIOD.as_millis(),
            if l.init_burst() {
                "once init ends"
            } else {
                "from the start"
            },
            l.dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(limits.map(Arc::new))
}

/// `--tls`: an HTTPS front before the emulator (and one before DynamoDB's own, when it has
/// one), all with one local CA; the functions get the fronts as their endpoints and the CA as
/// `AWS_CA_BUNDLE`.
async fn tls_fronts(
    options: &mut RuntimeOptions,
    endpoint: &str,
    dynamodb: Option<&String>,
) -> Result<Vec<TlsFront>, CliError> {
    let failed = |e: crate::tls::TlsError| CliError::Config(format!("--tls: {e}"));
    let ca = LocalCa::new().map_err(failed)?;
    let front = TlsFront::start(endpoint, crate::tls::DEFAULT_IDLE_TIMEOUT, &ca)
        .await
        .map_err(failed)?;
    println!(
        "TLS       {} -> {endpoint} (CA {}, given to the functions as AWS_CA_BUNDLE)",
        front.endpoint(),
        front.ca_bundle().display()
    );
    options.endpoint = front.endpoint().to_string();
    options.env.insert(
        shared::http_client::CA_BUNDLE_ENV.into(),
        front.ca_bundle().display().to_string(),
    );
    let mut fronts = vec![front];
    if let Some(dynamodb) = dynamodb {
        let front = TlsFront::start(dynamodb, crate::tls::DEFAULT_IDLE_TIMEOUT, &ca)
            .await
            .map_err(failed)?;
        println!("TLS       {} -> {dynamodb} (DynamoDB)", front.endpoint());
        options.service_endpoints.insert(
            emulator::DYNAMODB_ENDPOINT_ENV.into(),
            front.endpoint().to_string(),
        );
        fronts.push(front);
    }
    Ok(fronts)
}

/// The template's directory: where `cargo build` runs and `target/` lives.
fn workspace_root(template: &Path) -> PathBuf {
    let dir = template
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// `cargo build [--release] --bin …` of every function binary of `template`, in `root`,
/// printing the command first; cargo's own output goes to the terminal. Killed if the future
/// is dropped (a reload abandoned at shutdown).
pub(super) async fn build(template: &Template, root: &Path, release: bool) -> Result<(), CliError> {
    let mut cmd =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build").current_dir(root).kill_on_drop(true);
    if release {
        cmd.arg("--release");
    }
    let mut bins: Vec<&str> = template
        .functions
        .values()
        .map(|f| f.binary.as_str())
        .collect();
    bins.sort_unstable();
    bins.dedup();
    for bin in &bins {
        cmd.args(["--bin", bin]);
    }
    let line = format!(
        "cargo build{} --bin {}",
        if release { " --release" } else { "" },
        bins.join(" --bin ")
    );
    println!("building: {line}");
    let status = cmd
        .status()
        .await
        .map_err(|e| CliError::Build(format!("{line} ({e})")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Build(line))
    }
}

/// `CARGO_TARGET_DIR` (relative to `root`), else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { root.join(t) } else { t })
        .unwrap_or_else(|| root.join("target"))
}

/// [`target_dir`] / `debug` or `release` / binary, per function (by logical id).
pub(super) fn locate_binaries(
    template: &Template,
    root: &Path,
    release: bool,
) -> Result<std::collections::BTreeMap<String, PathBuf>, CliError> {
    let dir = target_dir(root).join(if release { "release" } else { "debug" });
    template
        .functions
        .values()
        .map(|f| {
            let binary = dir.join(&f.binary);
            if binary.is_file() {
                Ok((f.logical_id.clone(), binary))
            } else {
                Err(CliError::MissingBinary {
                    function: f.logical_id.clone(),
                    binary,
                    release: if release { " --release" } else { "" },
                })
            }
        })
        .collect()
}

/// The runtime spec of each function of `template` that `stack` names and `binaries` has.
pub(super) fn function_specs(
    template: &Template,
    stack: &Stack,
    binaries: &std::collections::BTreeMap<String, PathBuf>,
) -> Vec<FunctionSpec> {
    template
        .functions
        .values()
        .filter_map(|f| {
            let info = stack.function(&f.logical_id)?;
            Some(FunctionSpec {
                logical_id: f.logical_id.clone(),
                name: info.name.clone(),
                arn: info.arn.clone(),
                binary: binaries.get(&f.logical_id)?.clone(),
                handler: f.handler.clone(),
                timeout: Duration::from_secs(f.timeout_secs),
                memory_mb: f.memory_mb,
                env: info.env.clone(),
            })
        })
        .collect()
}

/// Each SQS event of the template bound to its provisioned queue.
pub(super) fn sqs_bindings(
    template: &Template,
    stack: &Stack,
) -> Result<Vec<SqsBinding>, CliError> {
    let retry_delay_secs = poller::retry_delay_from_env();
    let mut out = Vec::new();
    for f in template.functions.values() {
        for src in &f.sqs_sources {
            let bad = |why: String| {
                CliError::Config(format!("{}: SQS event {}: {why}", f.logical_id, src.event))
            };
            let arn = stack
                .resolve_string(&src.queue)
                .map_err(|e| bad(format!("{e:?}")))?;
            let (_, queue) = stack
                .queue_by_arn(&arn)
                .ok_or_else(|| bad(format!("queue {arn} is not a queue of the template")))?;
            out.push(SqsBinding {
                function: f.logical_id.clone(),
                queue_url: queue.url.clone(),
                queue_arn: queue.arn.clone(),
                region: stack.region.clone(),
                batch_size: src.batch_size,
                max_batching_window: Duration::from_secs(u64::from(src.max_batching_window_secs)),
                report_batch_item_failures: src.report_batch_item_failures,
                retry_delay_secs,
            });
        }
    }
    Ok(out)
}

fn print_table(
    routes: &RouteTable,
    bindings: &[SqsBinding],
    schedules: &Schedules,
    stack: &Stack,
    endpoint: &str,
    started: bool,
    port: u16,
) {
    println!("HTTP API  http://127.0.0.1:{port}");
    for r in routes.routes() {
        let access = dashboard::access_label(&r.access);
        println!(
            "  {:<7} {:<40} -> {:<28} {access}",
            r.method, r.path, r.function
        );
    }
    println!("Dashboard http://127.0.0.1:{port}{}/", dashboard::PREFIX);
    println!("SQS event sources");
    for b in bindings {
        let Some((id, q)) = stack.queue_by_arn(&b.queue_arn) else {
            continue;
        };
        let dlq = stack
            .dlq(id)
            .and_then(|d| stack.queue(d).map(|dq| format!("{d} ({})", dq.name)))
            .unwrap_or_else(|| "none".into());
        println!(
            "  {id} ({}) -> {}  batch {}, window {}s, visibility {}s, DLQ {dlq}",
            q.name,
            b.function,
            b.batch_size,
            b.max_batching_window.as_secs(),
            q.visibility_timeout_secs
        );
    }
    for line in schedules.describe() {
        println!("{line}");
    }
    println!(
        "Emulator  {endpoint} ({})",
        if started {
            "started by local"
        } else {
            "already running"
        }
    );
}

/// Environment variable: when set (to anything but empty or `0`), `local dev` also shuts down
/// when its stdin reaches end-of-file. A parent that spawns the runner with a piped stdin
/// (a test harness) thereby stops it whenever the parent exits, even by SIGKILL or without
/// running destructors, as the emulator's guard does.
pub const EXIT_ON_STDIN_EOF_ENV: &str = "LOCAL_EXIT_ON_STDIN_EOF";

fn exit_on_stdin_eof() -> bool {
    std::env::var(EXIT_ON_STDIN_EOF_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Completes when stdin reaches end-of-file (or fails). Read on a plain thread, not tokio's
/// blocking pool, so a read still pending never holds up the runtime's shutdown.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut sink = [0u8; 1024];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Ctrl-C or SIGTERM, or the end of stdin when `watch_stdin` is set.
async fn wait_for_signal(watch_stdin: bool) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
        _ = async {
            if watch_stdin {
                stdin_closed().await;
                println!("stdin closed");
            } else {
                std::future::pending::<()>().await;
            }
        } => {}
    }
}
