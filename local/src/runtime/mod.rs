//! Runs functions as their real binaries behind the Lambda Runtime API.
//!
//! Each function has a pool of instances (child processes). An invocation takes an idle warm
//! instance, or starts one when all are busy and the pool is below its limit, or waits for a
//! permit beyond it. An instance that times out or crashes is dropped (killed) and never
//! reused; the next invocation starts a fresh one, as Lambda does.
//!
//! A pool runs one *generation* of its function at a time: a spec (binary, environment,
//! settings) and the instances started from it. [`Runtime::replace`] (hot reload) installs a
//! new generation: invocations from then on start instances of it, idle instances of the old
//! one are stopped at once, busy ones finish their invocation and are stopped then. The
//! instance limit is the pool's, across generations. With [`Runtime::with_snapshots`]
//! instances execute private copies of the binaries ([`snapshot`]), so a rebuild never
//! rewrites a file in use.

mod api;
mod instance;
pub mod journal;
pub mod limits;
mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::chaos::{Chaos, Fault};
use api::{Event, Invocation};
use instance::Instance;
use journal::Journal;
use limits::Limits;
pub use snapshot::Fingerprint;
use snapshot::{Executable, Snapshots};

/// Default number of concurrent instances per function.
pub const DEFAULT_MAX_INSTANCES: usize = 4;
/// Environment variable overriding [`DEFAULT_MAX_INSTANCES`].
pub const MAX_INSTANCES_ENV: &str = "LOCAL_MAX_INSTANCES";
/// Lambda gives a runtime 10 s to initialise.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to start instances of one function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Logical id in the template (log prefix, key for [`Runtime::invoke`]).
    pub logical_id: String,
    /// Physical name (`AWS_LAMBDA_FUNCTION_NAME`).
    pub name: String,
    /// ARN given to the runtime as the invoked function ARN.
    pub arn: String,
    /// The function's executable.
    pub binary: PathBuf,
    /// `_HANDLER`.
    pub handler: String,
    pub timeout: Duration,
    pub memory_mb: u64,
    /// Resolved template environment.
    pub env: BTreeMap<String, String>,
}

/// Settings shared by every function.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Instances per function at most; invocations beyond wait.
    pub max_instances: usize,
    /// `AWS_REGION` / `AWS_DEFAULT_REGION`.
    pub region: String,
    /// `AWS_ENDPOINT_URL` given to the functions.
    pub endpoint: String,
    /// `AWS_ENDPOINT_URL_<SERVICE>` variables given to the functions (a service on an
    /// emulator of its own, or behind the chaos proxy).
    pub service_endpoints: BTreeMap<String, String>,
    /// Faults to inject (`kill`), when `LOCAL_CHAOS` is set.
    pub chaos: Option<Arc<Chaos>>,
    /// Lambda's CPU share and memory limit per instance (`--lambda-limits`), when set.
    pub limits: Option<Arc<Limits>>,
    /// More variables every function gets (e.g. `AWS_CA_BUNDLE` with `--tls`).
    pub env: BTreeMap<String, String>,
}

impl RuntimeOptions {
    /// Options with the instance limit from `LOCAL_MAX_INSTANCES` (default 4).
    pub fn new(region: &str, endpoint: &str) -> Self {
        let max_instances = std::env::var(MAX_INSTANCES_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_INSTANCES);
        RuntimeOptions {
            max_instances,
            region: region.to_string(),
            endpoint: endpoint.to_string(),
            service_endpoints: BTreeMap::new(),
            chaos: None,
            limits: None,
            env: BTreeMap::new(),
        }
    }
}

/// What a completed invocation returned.
#[derive(Debug, Clone, PartialEq)]
pub enum InvokeOutcome {
    /// The runtime posted a response (a non-JSON body becomes a JSON string).
    Response(Value),
    /// The runtime posted an error for the invocation (`.../invocation/{id}/error`).
    FunctionError(FunctionError),
}

/// An error reported by the function, as Lambda shapes it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionError {
    pub error_type: String,
    pub error_message: String,
}

/// Why an invocation produced no outcome.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("no function {0} in the template")]
    UnknownFunction(String),
    #[error("the runner is shutting down")]
    ShuttingDown,
    #[error("{function}: cannot start {binary}: {source}")]
    Spawn {
        function: String,
        binary: PathBuf,
        source: std::io::Error,
    },
    /// The instance failed before asking for its first invocation.
    #[error("{function}: init failed: {message}")]
    InitFailed { function: String, message: String },
    /// The instance exited during the invocation.
    #[error("{function}: RequestId: {request_id} Error: Runtime exited with error: {status}")]
    Crashed {
        function: String,
        request_id: String,
        status: String,
    },
    #[error("{function}: RequestId: {request_id} Task timed out after {seconds}.00 seconds")]
    TimedOut {
        function: String,
        request_id: String,
        seconds: u64,
    },
    /// The instance went past its `MemorySize` (with `--lambda-limits`) and the kernel killed
    /// it: Lambda's words for it (the runtime exited, killed; error type `Runtime.ExitError`,
    /// `Error Type: Runtime.OutOfMemory` on the REPORT line).
    #[error("{function}: RequestId: {request_id} Error: Runtime exited with error: signal: killed")]
    OutOfMemory {
        function: String,
        request_id: String,
    },
}

impl InvokeError {
    /// The `Error Type` Lambda puts on the REPORT line of an invocation that ended this way:
    /// `Runtime.OutOfMemory`, `Runtime.ExitError` for another exit; `None` otherwise.
    pub fn error_type(&self) -> Option<&'static str> {
        match self {
            InvokeError::OutOfMemory { .. } => Some("Runtime.OutOfMemory"),
            InvokeError::Crashed { .. } => Some("Runtime.ExitError"),
            _ => None,
        }
    }

    /// The error document Lambda's `Invoke` answers for an instance that exited during the
    /// invocation (`Runtime.ExitError` and the message the runtime's log shows); `None` for
    /// the other errors.
    pub fn lambda_error(&self) -> Option<FunctionError> {
        let message = match self {
            InvokeError::OutOfMemory { request_id, .. } => {
                format!("RequestId: {request_id} Error: Runtime exited with error: signal: killed")
            }
            InvokeError::Crashed {
                request_id, status, ..
            } => format!("RequestId: {request_id} Error: Runtime exited with error: {status}"),
            _ => return None,
        };
        Some(FunctionError {
            error_type: "Runtime.ExitError".into(),
            error_message: message,
        })
    }
}

/// The pools of every function.
pub struct Runtime {
    /// By logical id. Read briefly per invocation; written by [`Runtime::replace`] and
    /// [`Runtime::remove`] only.
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    base_env: BTreeMap<String, String>,
    closed: AtomicBool,
    /// What the dashboard shows ([`journal`]).
    journal: Arc<Journal>,
    chaos: Option<Arc<Chaos>>,
    max_instances: usize,
    /// Where binaries are copied before they run; `None` runs them in place.
    snapshots: Option<Arc<Snapshots>>,
    /// Each instance's cgroups come from here (`--lambda-limits`).
    limits: Option<Arc<Limits>>,
}

struct Pool {
    /// The generation new invocations start instances of.
    current: Mutex<Arc<Generation>>,
    /// Instances of every generation together at most `max_instances`.
    permits: Semaphore,
}

/// One spec of a function and the instances started from it.
struct Generation {
    /// 1 for the spec the pool started with, then one more per [`Runtime::replace`].
    number: u64,
    spec: FunctionSpec,
    executable: Arc<Executable>,
    /// Warm instances; `None` once retired: instances ending an invocation are then dropped
    /// (killed) instead of parked.
    idle: Mutex<Option<Vec<Instance>>>,
}

impl Runtime {
    /// Pools for `functions`, executing their binaries in place; no process starts before its
    /// first invocation.
    pub fn new(functions: Vec<FunctionSpec>, opts: &RuntimeOptions) -> Runtime {
        let runtime = Runtime::empty(opts, None);
        {
            let mut pools = runtime.write_pools();
            for spec in functions {
                let executable = Arc::new(Executable::in_place(&spec.binary));
                pools.insert(spec.logical_id.clone(), runtime.pool(spec, executable));
            }
        }
        runtime
    }

    /// Pools for `functions` whose instances execute private copies of the binaries, made in
    /// `<snapshot_dir>/<pid>/` now (and by [`Runtime::replace`] for later builds). The
    /// directories of runner processes that no longer run are cleared first.
    ///
    /// # Errors
    /// A binary cannot be copied, or the directory cannot be created.
    pub async fn with_snapshots(
        functions: Vec<FunctionSpec>,
        opts: &RuntimeOptions,
        snapshot_dir: &Path,
    ) -> std::io::Result<Runtime> {
        let dir = snapshot_dir.to_path_buf();
        let snapshots = tokio::task::spawn_blocking(move || Snapshots::new(&dir))
            .await
            .map_err(std::io::Error::other)??;
        let runtime = Runtime::empty(opts, Some(Arc::new(snapshots)));
        for spec in functions {
            let executable = runtime.executable(&spec.binary).await?;
            let pool = runtime.pool(spec, executable);
            let id = pool.current().spec.logical_id.clone();
            runtime.write_pools().insert(id, pool);
        }
        Ok(runtime)
    }

    fn empty(opts: &RuntimeOptions, snapshots: Option<Arc<Snapshots>>) -> Runtime {
        Runtime {
            pools: RwLock::new(BTreeMap::new()),
            base_env: base_env(opts),
            closed: AtomicBool::new(false),
            journal: Arc::default(),
            chaos: opts.chaos.clone(),
            max_instances: opts.max_instances.max(1),
            snapshots,
            limits: opts.limits.clone(),
        }
    }

    fn pool(&self, spec: FunctionSpec, executable: Arc<Executable>) -> Arc<Pool> {
        Arc::new(Pool {
            current: Mutex::new(Arc::new(Generation::new(1, spec, executable))),
            permits: Semaphore::new(self.max_instances),
        })
    }

    /// What `binary` is executed as: a snapshot of it as it is now, or itself.
    async fn executable(&self, binary: &Path) -> std::io::Result<Arc<Executable>> {
        match &self.snapshots {
            Some(snapshots) => {
                let (snapshots, binary) = (Arc::clone(snapshots), binary.to_path_buf());
                tokio::task::spawn_blocking(move || snapshots.take(&binary))
                    .await
                    .map_err(std::io::Error::other)?
            }
            None => Ok(Arc::new(Executable::in_place(binary))),
        }
    }

    fn read_pools(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Pool>>> {
        self.pools.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_pools(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Pool>>> {
        self.pools.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Invokes function `function` (logical id) with `payload`, as Lambda's synchronous
    /// `Invoke` does, printing `START`/`END`/`REPORT` lines. The invocation runs on an
    /// instance of the function's current generation.
    pub async fn invoke(
        &self,
        function: &str,
        payload: Value,
    ) -> Result<InvokeOutcome, InvokeError> {
        let pool = self
            .read_pools()
            .get(function)
            .cloned()
            .ok_or_else(|| InvokeError::UnknownFunction(function.to_string()))?;
        let _permit = pool
            .permits
            .acquire()
            .await
            .map_err(|_| InvokeError::ShuttingDown)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(InvokeError::ShuttingDown);
        }
        let generation = pool.current();
        let spec = &generation.spec;
        let idle = generation.take_idle();
        let mut instance = match idle {
            Some(i) => i,
            None => Instance::spawn(
                spec,
                &generation.executable.path,
                &self.base_env,
                &self.journal,
                self.limits.as_deref(),
            )
            .await
            .map_err(|source| InvokeError::Spawn {
                function: function.to_string(),
                binary: generation.executable.path.clone(),
                source,
            })?,
        };
        let result = run(
            spec,
            &mut instance,
            &payload,
            self.chaos.as_deref(),
            &self.journal,
        )
        .await;
        if result.is_ok() && !self.closed.load(Ordering::Acquire) {
            generation.park(instance);
        }
        result
    }

    /// Makes `spec` the function's new generation (or adds the function) and returns the
    /// generation's number. Invocations from now on start instances of it; idle instances of
    /// the previous generation are stopped now, busy ones when their invocation ends. The
    /// binary is snapshot first (when the runtime makes snapshots): a build of it equal to the
    /// one running ([`Fingerprint`]) shares that snapshot, so a change of environment alone
    /// copies nothing.
    ///
    /// # Errors
    /// The binary cannot be copied; the function keeps its current generation.
    pub async fn replace(&self, spec: FunctionSpec) -> std::io::Result<u64> {
        let executable = self.executable(&spec.binary).await?;
        let existing = self.read_pools().get(&spec.logical_id).cloned();
        let Some(pool) = existing else {
            let pool = self.pool(spec, executable);
            let id = pool.current().spec.logical_id.clone();
            self.write_pools().insert(id, pool);
            return Ok(1);
        };
        let old = {
            let mut current = pool.current.lock().unwrap_or_else(|e| e.into_inner());
            let next = Arc::new(Generation::new(current.number + 1, spec, executable));
            std::mem::replace(&mut *current, next)
        };
        old.retire();
        Ok(old.number + 1)
    }

    /// Removes function `logical_id` (gone from the template): unknown to invocations from
    /// now on, its idle instances stopped, busy ones stopped when their invocation ends.
    /// False when there was no such function.
    pub fn remove(&self, logical_id: &str) -> bool {
        let removed = self.write_pools().remove(logical_id);
        removed.inspect(|pool| pool.current().retire()).is_some()
    }

    /// Stops accepting invocations and kills idle instances; busy ones are killed when their
    /// invocation ends.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for pool in self.read_pools().values() {
            pool.permits.close();
            pool.current().retire();
        }
    }

    /// The current spec of every function, by logical id.
    pub fn functions(&self) -> Vec<FunctionSpec> {
        self.read_pools()
            .values()
            .map(|p| p.current().spec.clone())
            .collect()
    }

    /// Function `logical_id`'s current generation: its number (1, then one more per
    /// [`Runtime::replace`]) and the fingerprint of the build it runs (taken when it was
    /// installed; `None` if the binary could not be stat'ed then).
    pub fn generation(&self, logical_id: &str) -> Option<(u64, Option<Fingerprint>)> {
        let pool = self.read_pools().get(logical_id).cloned()?;
        let generation = pool.current();
        Some((generation.number, generation.executable.fingerprint))
    }
}

impl Pool {
    fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Generation {
    fn new(number: u64, spec: FunctionSpec, executable: Arc<Executable>) -> Generation {
        Generation {
            number,
            spec,
            executable,
            idle: Mutex::new(Some(Vec::new())),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Option<Vec<Instance>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_idle(&self) -> Option<Instance> {
        let mut idle = self.idle();
        while let Some(mut i) = idle.as_mut()?.pop() {
            if i.alive() {
                return Some(i);
            }
        }
        None
    }

    /// Keeps `instance` warm, unless the generation is retired (then it is dropped: killed).
    fn park(&self, instance: Instance) {
        if let Some(idle) = self.idle().as_mut() {
            idle.push(instance);
        }
    }

    /// Stops the idle instances and every later one that would be parked.
    fn retire(&self) {
        let idle = self.idle().take();
        drop(idle);
    }
}

/// The credentials every function gets: the runner's own `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` when set, else the emulator's `test`/`test`
/// (no token). The gateway verifies the SigV4 signatures of `AWS_IAM` routes against them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl FunctionCredentials {
    /// The credentials as this process's environment gives them.
    pub fn from_env() -> FunctionCredentials {
        let inherit = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        FunctionCredentials {
            access_key_id: inherit("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".into()),
            secret_access_key: inherit("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into()),
            session_token: inherit("AWS_SESSION_TOKEN"),
        }
    }
}

/// The environment every instance gets besides its template variables: `PATH`, region,
/// endpoint and [`FunctionCredentials`].
fn base_env(opts: &RuntimeOptions) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let inherit = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    env.insert(
        "PATH".into(),
        inherit("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    );
    env.insert("TZ".into(), ":UTC".into());
    env.insert("AWS_REGION".into(), opts.region.clone());
    env.insert("AWS_DEFAULT_REGION".into(), opts.region.clone());
    env.insert("AWS_ENDPOINT_URL".into(), opts.endpoint.clone());
    env.extend(opts.service_endpoints.clone());
    env.extend(opts.env.clone());
    let credentials = FunctionCredentials::from_env();
    env.insert("AWS_ACCESS_KEY_ID".into(), credentials.access_key_id);
    env.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        credentials.secret_access_key,
    );
    if let Some(token) = credentials.session_token {
        env.insert("AWS_SESSION_TOKEN".into(), token);
    }
    env
}

/// One invocation on `instance`: waits for init on a cold start, hands over the payload,
/// waits for the outcome until the function's timeout, prints the REPORT line. With the
/// `kill` fault drawn, the instance is killed 0–20 ms into the invocation.
async fn run(
    spec: &FunctionSpec,
    instance: &mut Instance,
    payload: &Value,
    chaos: Option<&Chaos>,
    journal: &Arc<Journal>,
) -> Result<InvokeOutcome, InvokeError> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut recording = journal.begin(spec, instance.journal_id, &request_id, payload);
    let init_duration = if instance.initialized {
        None
    } else {
        let init = wait_for_init(spec, instance).await;
        if let Err(e) = &init {
            println!(
                "[{}] INIT_REPORT Init Duration: {:.2} ms Phase: init Status: error",
                spec.logical_id,
                ms(instance.since_spawn())
            );
            eprintln!("[{}] {e}", spec.logical_id);
            recording.finish_init_error(instance.since_spawn(), e);
        }
        Some(init?)
    };
    println!(
        "[{}] START RequestId: {request_id} Version: $LATEST",
        spec.logical_id
    );
    let started = Instant::now();
    let deadline = started + spec.timeout;
    let invocation = Invocation {
        request_id: request_id.clone(),
        deadline_ms: epoch_ms(SystemTime::now() + spec.timeout),
        trace_id: trace_id(),
        body: serde_json::to_vec(payload).unwrap_or_default(),
    };
    let crashed = |status: String| InvokeError::Crashed {
        function: spec.logical_id.clone(),
        request_id: request_id.clone(),
        status,
    };
    let mut kill_at = chaos
        .filter(|c| c.inject(Fault::Kill, format!("{} {request_id}", spec.logical_id)))
        .map(|c| started + c.between(Duration::ZERO, Duration::from_millis(20)));
    let result = if instance.invocations.send(invocation).await.is_err() {
        Err(crashed("the Runtime API is gone".into()))
    } else {
        loop {
            let wake = kill_at.map_or(deadline, |at| at.min(deadline));
            match tokio::time::timeout_at(wake.into(), instance.events.recv()).await {
                Err(_) if kill_at.is_some() && wake < deadline => {
                    instance.kill();
                    kill_at = None;
                }
                Err(_) => {
                    break Err(InvokeError::TimedOut {
                        function: spec.logical_id.clone(),
                        request_id: request_id.clone(),
                        seconds: spec.timeout.as_secs(),
                    });
                }
                Ok(None) => break Err(crashed("the instance is gone".into())),
                Ok(Some(Event::OutOfMemory)) => {
                    break Err(InvokeError::OutOfMemory {
                        function: spec.logical_id.clone(),
                        request_id: request_id.clone(),
                    });
                }
                Ok(Some(Event::Exited(status))) => break Err(crashed(status)),
                Ok(Some(Event::Response {
                    request_id: id,
                    body,
                })) if id == request_id => {
                    break Ok(InvokeOutcome::Response(parse_body(&body)));
                }
                Ok(Some(Event::Error {
                    request_id: id,
                    body,
                })) if id == request_id => {
                    break Ok(InvokeOutcome::FunctionError(parse_error(&body)));
                }
                Ok(Some(_)) => continue,
            }
        }
    };
    let duration = started.elapsed();
    if let Err(e) = &result {
        eprintln!("[{}] {e}", spec.logical_id);
        // Lambda logs the error type of an exit on the line after its message.
        if let Some(error) = e.lambda_error() {
            eprintln!("[{}] {}", spec.logical_id, error.error_type);
        }
    }
    println!("[{}] END RequestId: {request_id}", spec.logical_id);
    let max_memory_mb = instance.max_memory_mb();
    recording.finish(&result, duration, init_duration, max_memory_mb);
    println!(
        "[{}] {}",
        spec.logical_id,
        report_line(
            &request_id,
            duration,
            spec.memory_mb,
            max_memory_mb,
            init_duration,
            result.as_ref().err()
        )
    );
    result
}

/// Waits for the instance's first `next` (end of init), its init error or its exit.
async fn wait_for_init(
    spec: &FunctionSpec,
    instance: &mut Instance,
) -> Result<Duration, InvokeError> {
    let failed = |message: String| InvokeError::InitFailed {
        function: spec.logical_id.clone(),
        message,
    };
    let deadline = instance.spawned_at + INIT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline.into(), instance.events.recv()).await {
            Err(_) => {
                return Err(failed(format!(
                    "no request for an invocation within {INIT_TIMEOUT:?}"
                )));
            }
            Ok(Some(Event::Next)) => {
                instance.initialized = true;
                let init = instance.since_spawn();
                // Init ran with the burst; invocations get the memory's share.
                if let Some(Err(e)) = instance.limits.as_ref().map(|l| l.throttle()) {
                    eprintln!("[{}] {e}", spec.logical_id);
                }
                return Ok(init);
            }
            Ok(Some(Event::OutOfMemory)) => {
                return Err(failed(
                    "Runtime.OutOfMemory: Runtime exited with error: signal: killed".into(),
                ));
            }
            Ok(Some(Event::InitError(body))) => {
                let e = parse_error(&body);
                return Err(failed(format!("{}: {}", e.error_type, e.error_message)));
            }
            Ok(Some(Event::Exited(status))) => {
                return Err(failed(format!(
                    "Runtime exited before init completed: {status}"
                )));
            }
            Ok(None) => return Err(failed("the instance is gone".into())),
            Ok(Some(_)) => continue,
        }
    }
}

/// Lambda's `REPORT` line.
fn report_line(
    request_id: &str,
    duration: Duration,
    memory_mb: u64,
    max_memory_mb: Option<u64>,
    init: Option<Duration>,
    error: Option<&InvokeError>,
) -> String {
    let mut line = format!(
        "REPORT RequestId: {request_id}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {memory_mb} MB\tMax Memory Used: {} MB",
        ms(duration),
        duration.as_nanos().div_ceil(1_000_000).max(1),
        max_memory_mb.unwrap_or(0),
    );
    if let Some(init) = init {
        line.push_str(&format!("\tInit Duration: {:.2} ms", ms(init)));
    }
    match error {
        Some(InvokeError::TimedOut { .. }) => line.push_str("\tStatus: timeout"),
        Some(e) => {
            line.push_str("\tStatus: error");
            if let Some(error_type) = e.error_type() {
                line.push_str(&format!("\tError Type: {error_type}"));
            }
        }
        None => {}
    }
    line
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An X-Ray style trace header (`Root=1-<epoch hex>-<24 hex>`), not sampled.
fn trace_id() -> String {
    let secs = epoch_ms(SystemTime::now()) / 1000;
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("Root=1-{secs:08x}-{};Sampled=0", &random[..24])
}

fn parse_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Lambda's error document: `{"errorType": .., "errorMessage": ..}`.
fn parse_error(body: &[u8]) -> FunctionError {
    let v = parse_body(body);
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    FunctionError {
        error_type: field("errorType").unwrap_or_else(|| "Unhandled".into()),
        error_message: field("errorMessage").unwrap_or_else(|| match &v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
    }
}

impl Runtime {
    /// The record of instances and recent invocations the dashboard reads.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }
}

/// utime + stime of process `pid` (`/proc/<pid>/stat`, every thread), at the kernel's clock
/// tick resolution (`_SC_CLK_TCK`, usually 10 ms).
///
/// # Errors
/// The process is gone (or its stat unreadable or malformed), or the tick rate is unknown.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command (which may hold spaces and parentheses) start at the state
    // (field 3); utime and stime are fields 14 and 15.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or("no command in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {n}"))
    };
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err("sysconf(_SC_CLK_TCK) failed".into());
    }
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Peak resident set size (`VmHWM` of `/proc/<pid>/status`) of process `pid`, in KiB; `None`
/// once the process is gone or when its status has no such line. What a `REPORT` line's
/// `Max Memory Used` and the benchmarks' peak RSS are read from.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests;
