//! `make bench-peers` (`bench --peers`): our agents-api state query and agents worker side by
//! side, in one run, with the peer baseline most teams would write instead: the same two
//! functions in Python with boto3 and Powertools for AWS Lambda (`bench/python`, installed into
//! a venv of their own by `bench/python/install.sh`), run by the Python runtime interface
//! client `awslambdaric` under the same local runner ([`local::runtime`]) against the same
//! emulator.
//!
//! Before measuring, [`check_parity`] makes sure both answer alike (the same partial batch
//! response to a batch holding a poison message, the same JSON for the same agent); a
//! difference fails the run. Then, per implementation:
//!
//! - init: process start → first `GET /runtime/invocation/next` on the harness's Runtime API
//!   stub (`cold`), cold starts of the four functions and of each language's hello-world
//!   interleaved round by round;
//! - warm query: `GET /agents/{agentId}/state` of one agent through the runner, p50 and p99,
//!   rounds of Rust and Python alternating (a bare `GetItem` to the emulator beside them);
//! - a batch of 10 `RegisterAgent` for new agents (one message group each) through the
//!   runner, p50, batches alternating; then batches of 1 and of 10 with every AWS call
//!   answered from memory after [`AWS_LATENCY`] ([`InMemoryAws`]: calls overlap as on AWS,
//!   where the emulator answers one at a time);
//! - CPU per event: utime + stime of the warm instance's process (`/proc/<pid>/stat`) over all
//!   the measured invocations, divided by their events (requests, or messages);
//! - peak RSS: `VmHWM` of each warm instance after all of that.
//!
//! The section it writes to BENCHMARKS.md lies between [`report::PEERS_BEGIN`] and
//! [`report::PEERS_END`]; `make bench` keeps that part as it is.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use local::runtime::{FunctionSpec, InvokeOutcome, Runtime, RuntimeOptions};
use serde_json::{Value, json};

use crate::cold::{self, Target};
use crate::proc::{cpu_time, max_rss_kib};
use crate::report;
use crate::stats::{median, ms, quantile};

/// Published hello-world cold starts on AWS (Init Duration, lambda-perf, 2026-08):
/// (runtime, ms).
pub const PUBLISHED: [(&str, f64); 3] = [
    ("Rust (provided.al2023)", 13.9),
    ("Python 3.13", 80.6),
    ("Node.js 24", 116.0),
];
const PUBLISHED_SOURCE: &str =
    "[lambda-perf](https://maxday.github.io/lambda-perf/), 2026-08 (hello-world, 128 MB)";

/// The fields of an agent as `GET /agents/{agentId}/state` answers it, in agents-api's order.
pub const AGENT_FIELDS: [&str; 8] = [
    "agentId",
    "name",
    "state",
    "skills",
    "capacity",
    "activeConversations",
    "version",
    "updatedAt",
];

/// What `bench --peers` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--quick`: few samples, for trying the mode; never written to BENCHMARKS.md.
    pub quick: bool,
    /// `--debug`: our debug binaries (`target/debug`) instead of the release ones; never
    /// written to BENCHMARKS.md.
    pub debug: bool,
    /// `--out DIR`: where `PEERS.md` goes (default `target/bench-peers`).
    pub out: Option<PathBuf>,
}

impl Options {
    pub fn parse(args: &[String]) -> Options {
        Options {
            quick: args.iter().any(|a| a == "--quick"),
            debug: args.iter().any(|a| a == "--debug"),
            out: args
                .iter()
                .position(|a| a == "--out")
                .and_then(|i| args.get(i + 1))
                .map(PathBuf::from),
        }
    }
}

/// Sample counts of a run.
struct Plan {
    cold_rounds: usize,
    query_rounds: usize,
    per_round: usize,
    batches: usize,
    /// Batches of 1 and of 10 each against the in-memory AWS endpoint.
    simulated: usize,
}

const FULL: Plan = Plan {
    cold_rounds: 21,
    query_rounds: 5,
    per_round: 200,
    batches: 30,
    simulated: 20,
};

const QUICK: Plan = Plan {
    cold_rounds: 3,
    query_rounds: 2,
    per_round: 20,
    batches: 3,
    simulated: 3,
};

/// The figures of one implementation.
#[derive(Default)]
struct Figures {
    hello_init: Vec<Duration>,
    api_init: Vec<Duration>,
    worker_init: Vec<Duration>,
    query: Vec<Duration>,
    /// CPU of the query instance's process over the measured requests, and their count.
    query_cpu: (Duration, usize),
    batch: Vec<Duration>,
    /// CPU of the worker instance's process over the measured batches, and their messages.
    event_cpu: (Duration, usize),
    api_rss_kib: Option<u64>,
    worker_rss_kib: Option<u64>,
    /// Batches of 1 and of 10 with every AWS call answered from memory after [`AWS_LATENCY`].
    sim_one: Vec<Duration>,
    sim_ten: Vec<Duration>,
    /// CPU of the worker's process over those batches, and their messages.
    sim_cpu: (Duration, usize),
}

/// Everything one run measured.
#[derive(Default)]
struct Peers {
    command: String,
    quick: bool,
    debug: bool,
    /// `Python 3.x.y, awslambdaric a, aws-lambda-powertools b, boto3 c`.
    python: String,
    rust: Figures,
    py: Figures,
    /// The bare `GetItem` the query makes, from the harness to the emulator.
    get_item: Vec<Duration>,
    checks: Vec<String>,
}

/// One implementation as the runner runs it: the logical ids of its two functions.
struct Side {
    api: &'static str,
    worker: &'static str,
}

const RUST: Side = Side {
    api: "RustAgentsApi",
    worker: "RustAgentsWorker",
};
const PYTHON: Side = Side {
    api: "PythonAgentsApi",
    worker: "PythonAgentsWorker",
};

/// Runs the mode: `Ok(true)` when every figure was measured and both implementations answered
/// alike, `Ok(false)` when they did not ([`check_parity`]), `Err` when the run could not
/// complete.
pub async fn run(root: &Path, options: Options) -> Result<bool, String> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let target = if target.is_relative() {
        root.join(target)
    } else {
        target
    };
    let bin = target.join(if options.debug { "debug" } else { "release" });
    let scratch = target.join("bench-peers");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let python = python_env(root)?;
    eprintln!("peer baseline: {}", python.display());
    let wrappers = Wrappers::write(root, &python, &scratch.join("bin"))?;
    let plan = if options.quick { QUICK } else { FULL };
    let mut r = Peers {
        command: format!(
            "make bench-peers` (after the release build it runs `bench --peers{}{}`)",
            if options.quick { " --quick" } else { "" },
            if options.debug { " --debug" } else { "" }
        ),
        quick: options.quick,
        debug: options.debug,
        python: python_versions(&python)?,
        ..Peers::default()
    };

    let Provisioned {
        emulator,
        sdk,
        api,
        worker,
        table,
    } = Provisioned::start(root, "peers").await?;
    let (api, worker) = (&api, &worker);

    // Cold starts first, while nothing else runs.
    let base = cold::stub_env(&emulator.endpoint);
    let with = |env: &std::collections::BTreeMap<String, String>| {
        let mut all = base.clone();
        all.extend(env.clone());
        all
    };
    let targets = [
        ("bench-hello", bin.join("bench-hello"), base.clone()),
        ("hello.py", wrappers.hello.clone(), base.clone()),
        ("agents-api", bin.join("agents-api"), with(&api.env)),
        ("agent_state.py", wrappers.api.clone(), with(&api.env)),
        (
            "agents-worker",
            bin.join("agents-worker"),
            with(&worker.env),
        ),
        (
            "agents_worker.py",
            wrappers.worker.clone(),
            with(&worker.env),
        ),
    ]
    .map(|(name, binary, env)| Target {
        name: name.into(),
        binary,
        env,
        events: Vec::new(),
    });
    eprintln!(
        "cold starts: {} rounds of {} processes",
        plan.cold_rounds,
        targets.len()
    );
    let cold = cold::cold_starts(&targets, plan.cold_rounds).await;
    if let Some((t, e)) = targets
        .iter()
        .zip(&cold)
        .find_map(|(t, f)| f.error.as_ref().map(|e| (t, e)))
    {
        return Err(format!("cold start of {}: {e}", t.binary.display()));
    }
    let mut cold = cold.into_iter().map(|f| f.init);
    let mut next = || cold.next().unwrap_or_default();
    (r.rust.hello_init, r.py.hello_init) = (next(), next());
    (r.rust.api_init, r.py.api_init) = (next(), next());
    (r.rust.worker_init, r.py.worker_init) = (next(), next());

    let mut runtime_options = RuntimeOptions::new("us-east-1", &emulator.endpoint);
    runtime_options.max_instances = 1;
    let runtime = Runtime::new(
        vec![
            spec(RUST.api, api, &bin.join("agents-api")),
            spec(RUST.worker, worker, &bin.join("agents-worker")),
            spec(PYTHON.api, api, &wrappers.api),
            spec(PYTHON.worker, worker, &wrappers.worker),
        ],
        &runtime_options,
    );
    let fixture = state_fixture(root)?;
    let ours = Runner::new(&runtime, &RUST);
    let peer = Runner::new(&runtime, &PYTHON);
    eprintln!("parity: poison batch, one agent's JSON");
    let parity = check_parity(&ours, &peer, &fixture).await;
    let (agent, checks) = match parity {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("make bench-peers: the implementations answer differently: {e}");
            runtime.shutdown();
            return Ok(false);
        }
    };
    r.checks = checks;

    let db = aws_sdk_dynamodb::Client::new(&sdk);
    let outcome = measure(&runtime, &db, &table, &fixture, &agent, &plan, &mut r).await;
    runtime.shutdown();
    drop(emulator);
    outcome?;

    // The workers again, every AWS call answered from memory after a DynamoDB-like round trip,
    // with no emulator serializing them: what a batch costs where calls overlap, as on AWS.
    let aws = InMemoryAws::start(AWS_LATENCY).await?;
    let mut runtime_options = RuntimeOptions::new("us-east-1", &aws.endpoint);
    runtime_options.max_instances = 1;
    let runtime = Runtime::new(
        vec![
            spec(RUST.worker, worker, &bin.join("agents-worker")),
            spec(PYTHON.worker, worker, &wrappers.worker),
        ],
        &runtime_options,
    );
    let outcome = simulated(&runtime, &plan, &mut r).await;
    runtime.shutdown();
    outcome?;

    let section = markdown(&r);
    let out = options.out.clone().unwrap_or_else(|| scratch.clone());
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("PEERS.md"), &section).map_err(|e| e.to_string())?;
    eprintln!("{section}");
    eprintln!("wrote {}", out.join("PEERS.md").display());
    if !options.quick && !options.debug && options.out.is_none() {
        let path = root.join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        let notes = std::fs::read_to_string(root.join("bench/NOTES.md")).unwrap_or_default();
        std::fs::write(&path, report::with_peers_part(&old, &section, &notes))
            .map_err(|e| e.to_string())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(true)
}

/// The agents functions of `template.yaml` provisioned on an emulator of their own.
struct Provisioned {
    /// Stops the emulator when dropped.
    emulator: local::emulator::Emulator,
    sdk: aws_config::SdkConfig,
    /// `AgentsApiFunction` and `AgentsWorkerFunction` as provisioned.
    api: local::provision::FunctionInfo,
    worker: local::provision::FunctionInfo,
    /// The physical name of `AgentsTable`.
    table: String,
}

impl Provisioned {
    /// Starts an emulator on a free port and provisions the template as stack `stack_name`.
    ///
    /// # Errors
    /// The template did not load, the emulator did not start (`make tools`), provisioning
    /// failed, or the template lacks one of the resources above.
    async fn start(root: &Path, stack_name: &str) -> Result<Provisioned, String> {
        let template = local::template::Template::load(root.join("template.yaml"))
            .map_err(|e| e.to_string())?;
        let emulator = local::emulator::spawn_on_free_port().map_err(|e| e.to_string())?;
        let sdk = local::emulator::sdk_config(&emulator.endpoint).await;
        let opts = local::provision::ProvisionOptions {
            stack_name: stack_name.into(),
            ..local::provision::ProvisionOptions::default()
        };
        let stack = local::provision::provision(&template, &sdk, &opts)
            .await
            .map_err(|e| e.to_string())?;
        let function = |id: &str| stack.function(id).cloned().ok_or(format!("no {id}"));
        Ok(Provisioned {
            api: function("AgentsApiFunction")?,
            worker: function("AgentsWorkerFunction")?,
            table: stack
                .table_name("AgentsTable")
                .ok_or("no AgentsTable")?
                .to_owned(),
            emulator,
            sdk,
        })
    }
}

/// How the runner runs `binary` as function `id` (a logical id of its own) provisioned as
/// `info`: its name, ARN and environment, a 10 s timeout and 128 MB.
fn spec(id: &str, info: &local::provision::FunctionInfo, binary: &Path) -> FunctionSpec {
    FunctionSpec {
        logical_id: id.into(),
        name: info.name.clone(),
        arn: info.arn.clone(),
        binary: binary.to_path_buf(),
        handler: "bootstrap".into(),
        timeout: Duration::from_secs(10),
        memory_mb: 128,
        env: info.env.clone(),
    }
}

/// The venv of the Python peer baseline, made (pip) when missing or stale: its interpreter.
///
/// # Errors
/// `bench/python/install.sh` failed (no Python, no network to the package index): what it said.
pub fn python_env(root: &Path) -> Result<PathBuf, String> {
    let out = std::process::Command::new("bash")
        .arg(root.join("bench/python/install.sh"))
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("bash bench/python/install.sh: {e}"))?;
    let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || python.is_empty() {
        return Err(format!(
            "bench/python/install.sh could not install the Python peer baseline ({}); see its \
             output above",
            out.status
        ));
    }
    Ok(PathBuf::from(python))
}

/// `Python x.y.z, awslambdaric …, aws-lambda-powertools …, boto3 …` of the venv.
fn python_versions(python: &Path) -> Result<String, String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, importlib.metadata as m; print('Python ' + sys.version.split()[0] + ', ' \
             + ', '.join(p + ' ' + m.version(p) for p in ('awslambdaric', \
             'aws-lambda-powertools', 'boto3')))",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The executables the runner starts for the Python functions (it runs a function's "binary"):
/// each a script run by the venv's interpreter doing what `python -m awslambdaric
/// <module>.handler` does, with `bench/python` on the module path.
pub struct Wrappers {
    pub api: PathBuf,
    pub worker: PathBuf,
    pub hello: PathBuf,
}

impl Wrappers {
    /// Writes the three wrappers into `dir` for `python`.
    pub fn write(root: &Path, python: &Path, dir: &Path) -> Result<Wrappers, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let code = root.join("bench/python");
        // `dont_write_bytecode`: nothing is written into the source tree; the handler modules
        // are compiled at each cold start, as on Lambda (read-only code), while the packages
        // load the bytecode pip compiled when it installed them.
        let write = |name: &str, handler: &str| -> Result<PathBuf, String> {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            let script = format!(
                "#!{}\n# Written by `bench --peers`: `python -m awslambdaric {handler}` with \
                 bench/python on the path.\nimport runpy, sys\nsys.dont_write_bytecode = True\n\
                 sys.path.insert(0, {:?})\nsys.argv = [\"awslambdaric\", {handler:?}]\n\
                 runpy.run_module(\"awslambdaric\", run_name=\"__main__\", alter_sys=True)\n",
                python.display(),
                code.display().to_string(),
            );
            // A new file each time (rename), so a process running the old one is unaffected.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, script).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            Ok(path)
        };
        Ok(Wrappers {
            api: write("agents-api-python", "agent_state.handler")?,
            worker: write("agents-worker-python", "agents_worker.handler")?,
            hello: write("hello-python", "hello.handler")?,
        })
    }
}

/// The `GET /agents/{agentId}/state` event of `events/agents-api` (as the local gateway and
/// API Gateway build it).
pub fn state_fixture(root: &Path) -> Result<Value, String> {
    let path = root.join("events/agents-api/get-agent-state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The fixture asking for `agent`'s state.
pub fn state_request(fixture: &Value, agent: &str) -> Value {
    let mut event = fixture.clone();
    let path = format!("/agents/{agent}/state");
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event["requestContext"]["requestId"] = json!(uuid::Uuid::new_v4().to_string());
    event["pathParameters"] = json!({ "agentId": agent });
    event
}

/// An SQS record of the agents FIFO command queue: `body` in message group `group`.
pub fn record(body: String, group: &str) -> (String, Value) {
    let id = uuid::Uuid::new_v4().to_string();
    let record = json!({
        "messageId": id,
        "receiptHandle": format!("receipt-{id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1795629600000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1795629600001",
            "MessageGroupId": group,
            "MessageDeduplicationId": id,
            "SequenceNumber": "18849496460467696128"
        },
        "messageAttributes": {},
        "md5OfBody": "00000000000000000000000000000000",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:peers-AgentsCommandQueue.fifo",
        "awsRegion": "us-east-1"
    });
    (id, record)
}

/// A `RegisterAgent` of a new `agent` as EventBridge delivers it, in the agent's message group.
pub fn register(agent: &str) -> (String, Value) {
    let detail = json!({
        "id": uuid::Uuid::new_v4(),
        "correlationId": format!("peers-{agent}"),
        "occurredAt": chrono::Utc::now(),
        "type": "RegisterAgent",
        "data": {"agentId": agent, "name": "Peer", "skills": ["billing"], "capacity": 2},
    });
    let body = json!({"detail-type": "RegisterAgent", "source": "cqrs.agents.command",
                      "detail": detail});
    record(body.to_string(), agent)
}

/// An SQS event of `records`.
pub fn sqs_event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

/// The ids of a partial batch response's `batchItemFailures`, sorted.
pub fn failures(response: &Value) -> Vec<String> {
    let mut ids: Vec<String> = response["batchItemFailures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// An API Gateway response's status and JSON body (`Null` when the body is not JSON).
pub fn answer(response: &Value) -> (u64, Value) {
    let status = response["statusCode"].as_u64().unwrap_or(0);
    let body = response["body"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

/// One implementation, as [`check_parity`] reaches it: its worker and its query, each taking a
/// Lambda event and answering the Lambda response (errors: the invocation failed).
pub trait Peer {
    fn worker(&self, event: Value) -> impl Future<Output = Result<Value, String>>;
    fn query(&self, event: Value) -> impl Future<Output = Result<Value, String>>;
}

/// An implementation run by the local runner.
struct Runner<'a> {
    runtime: &'a Runtime,
    side: &'a Side,
}

impl<'a> Runner<'a> {
    fn new(runtime: &'a Runtime, side: &'a Side) -> Self {
        Runner { runtime, side }
    }
}

impl Peer for Runner<'_> {
    async fn worker(&self, event: Value) -> Result<Value, String> {
        invoke(self.runtime, self.side.worker, event).await
    }

    async fn query(&self, event: Value) -> Result<Value, String> {
        invoke(self.runtime, self.side.api, event).await
    }
}

async fn invoke(runtime: &Runtime, id: &str, event: Value) -> Result<Value, String> {
    match runtime.invoke(id, event).await.map_err(|e| e.to_string())? {
        InvokeOutcome::Response(v) => Ok(v),
        InvokeOutcome::FunctionError(e) => {
            Err(format!("{id}: {}: {}", e.error_type, e.error_message))
        }
    }
}

/// Checks that `peer` answers as `ours` does, on the same emulator and table:
///
/// - each worker, given a batch of `RegisterAgent` for new agents in three message groups where
///   one group starts with a poison record (not JSON), reports exactly the poison and the record
///   after it in its group as `batchItemFailures`, and applies the others; one of those
///   delivered again succeeds and changes nothing;
/// - both queries answer `200` with equal JSON (the fields of [`AGENT_FIELDS`], version 1,
///   OFFLINE) for an agent our worker registered and for one the peer's registered (the two
///   write the same item), and `404` for an agent that does not exist.
///
/// `Ok`: an agent both queries can read, and what was checked. `Err`: the first difference.
pub async fn check_parity(
    ours: &impl Peer,
    peer: &impl Peer,
    fixture: &Value,
) -> Result<(String, Vec<String>), String> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut registered = Vec::new();
    for (who, side) in [("ours", Either::Ours(ours)), ("peer", Either::Peer(peer))] {
        let agent = |n: &str| format!("p{run}-{who}-{n}");
        let (_, a) = register(&agent("a"));
        let (poison, poisoned) = record("this is not json".into(), &agent("p"));
        let (held, held_back) = register(&agent("p"));
        let (_, b) = register(&agent("b"));
        let event = sqs_event(vec![a.clone(), poisoned, held_back, b]);
        let response = side.worker(event).await?;
        let mut expected = vec![poison, held];
        expected.sort();
        if failures(&response) != expected {
            return Err(format!(
                "{who} worker: batchItemFailures {:?}, expected the poison and the record after \
                 it in its group {expected:?} (response {response})",
                failures(&response)
            ));
        }
        // A redelivery of an applied command changes nothing (its inbox entry is there): the
        // queries below still see version 1.
        let again = side.worker(sqs_event(vec![a])).await?;
        if !failures(&again).is_empty() {
            return Err(format!(
                "{who} worker: a redelivered command failed: {again}"
            ));
        }
        registered.push(agent("a"));
        registered.push(agent("b"));
    }
    for agent in &registered {
        let event = state_request(fixture, agent);
        let (status, body) = answer(&ours.query(event.clone()).await?);
        let (peer_status, peer_body) = answer(&peer.query(event).await?);
        if (status, &body) != (peer_status, &peer_body) {
            return Err(format!(
                "GET /agents/{agent}/state: ours {status} {body}, peer {peer_status} {peer_body}"
            ));
        }
        let keys: Vec<&str> = body
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut expected = AGENT_FIELDS.to_vec();
        expected.sort_unstable();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        if status != 200
            || sorted != expected
            || body["version"] != json!(1)
            || body["state"] != json!("OFFLINE")
        {
            return Err(format!(
                "GET /agents/{agent}/state: {status} {body}, expected 200 with {AGENT_FIELDS:?} \
                 at version 1, OFFLINE"
            ));
        }
    }
    let missing = state_request(fixture, &format!("p{run}-nobody"));
    let (status, _) = answer(&ours.query(missing.clone()).await?);
    let (peer_status, _) = answer(&peer.query(missing).await?);
    if (status, peer_status) != (404, 404) {
        return Err(format!(
            "an unknown agent: ours {status}, peer {peer_status}, expected 404 from both"
        ));
    }
    Ok((
        registered[0].clone(),
        vec![
            "a batch of 4 `RegisterAgent` in 3 message groups, the first of one group not JSON: \
             both workers report exactly that record and the one after it in its group \
             (`batchItemFailures`) and apply the other two; one of those delivered again \
             succeeds and changes nothing (version 1 below)"
                .into(),
            "`GET /agents/{agentId}/state` of 4 agents, 2 registered by each worker: the same \
             status and JSON from both queries (same item layout written and read), and `404` \
             from both for an unknown agent"
                .into(),
        ],
    ))
}

/// Which of the two [`check_parity`] is talking to (they may be different types).
enum Either<'a, O, P> {
    Ours(&'a O),
    Peer(&'a P),
}

impl<O: Peer, P: Peer> Either<'_, O, P> {
    async fn worker(&self, event: Value) -> Result<Value, String> {
        match self {
            Either::Ours(o) => o.worker(event).await,
            Either::Peer(p) => p.worker(event).await,
        }
    }
}

/// The warm measurements through the runner (see the module docs).
async fn measure(
    runtime: &Runtime,
    db: &aws_sdk_dynamodb::Client,
    table: &str,
    fixture: &Value,
    agent: &str,
    plan: &Plan,
    r: &mut Peers,
) -> Result<(), String> {
    let request = state_request(fixture, agent);
    eprintln!(
        "warm query: {} rounds of {} requests each",
        plan.query_rounds, plan.per_round
    );
    for side in [&RUST, &PYTHON] {
        for _ in 0..10 {
            query_ok(runtime, side, &request).await?;
        }
    }
    for _ in 0..10 {
        crate::local_api::get_item(db, table, agent).await?;
    }
    for round in 0..plan.query_rounds {
        for (side, f) in alternating(round, &mut r.rust, &mut r.py) {
            let cpu = Cpu::start(runtime, side.api)?;
            for _ in 0..plan.per_round {
                let started = Instant::now();
                query_ok(runtime, side, &request).await?;
                f.query.push(started.elapsed());
            }
            cpu.add_to(&mut f.query_cpu, plan.per_round)?;
        }
        for _ in 0..plan.per_round {
            let started = Instant::now();
            crate::local_api::get_item(db, table, agent).await?;
            r.get_item.push(started.elapsed());
        }
    }

    eprintln!("worker: {} batches of 10 each", plan.batches);
    for side in [&RUST, &PYTHON] {
        batch_ok(runtime, side).await?;
    }
    for i in 0..plan.batches {
        for (side, f) in alternating(i, &mut r.rust, &mut r.py) {
            let cpu = Cpu::start(runtime, side.worker)?;
            f.batch.push(batch_ok(runtime, side).await?);
            cpu.add_to(&mut f.event_cpu, 10)?;
        }
    }

    for (side, f) in [(&RUST, &mut r.rust), (&PYTHON, &mut r.py)] {
        f.api_rss_kib = max_rss_kib(pid(runtime, side.api)?);
        f.worker_rss_kib = max_rss_kib(pid(runtime, side.worker)?);
    }
    Ok(())
}

/// Batches of 1 and of 10 through each worker, alternating, against [`InMemoryAws`].
async fn simulated(runtime: &Runtime, plan: &Plan, r: &mut Peers) -> Result<(), String> {
    eprintln!(
        "worker, AWS answered from memory after {AWS_LATENCY:?}: {} batches of 1 and of 10 each",
        plan.simulated
    );
    for side in [&RUST, &PYTHON] {
        batch_of(runtime, side, 10).await?;
    }
    for i in 0..plan.simulated {
        for (side, f) in alternating(i, &mut r.rust, &mut r.py) {
            let cpu = Cpu::start(runtime, side.worker)?;
            f.sim_one.push(batch_of(runtime, side, 1).await?);
            f.sim_ten.push(batch_of(runtime, side, 10).await?);
            cpu.add_to(&mut f.sim_cpu, 11)?;
        }
    }
    Ok(())
}

/// What [`InMemoryAws`] waits before each answer: a DynamoDB round trip inside a region.
pub const AWS_LATENCY: Duration = Duration::from_millis(5);

/// An AWS endpoint answering every call from memory after a fixed delay, each call on its own
/// (calls overlap, as on AWS): `{}` to DynamoDB (no item; a write accepted) and a successful
/// `PutEvents`. Both SDKs take it as `AWS_ENDPOINT_URL`.
pub struct InMemoryAws {
    pub endpoint: String,
    server: tokio::task::JoinHandle<()>,
}

impl InMemoryAws {
    pub async fn start(delay: Duration) -> Result<InMemoryAws, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let endpoint = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| async move {
            tokio::time::sleep(delay).await;
            let target = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if target.ends_with("PutEvents") {
                (
                    [("content-type", "application/x-amz-json-1.1")],
                    r#"{"FailedEntryCount":0,"Entries":[{"EventId":"1"}]}"#,
                )
            } else {
                ([("content-type", "application/x-amz-json-1.0")], "{}")
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(InMemoryAws { endpoint, server })
    }
}

impl Drop for InMemoryAws {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn query_ok(runtime: &Runtime, side: &Side, request: &Value) -> Result<(), String> {
    match answer(&invoke(runtime, side.api, request.clone()).await?) {
        (200, _) => Ok(()),
        (status, body) => Err(format!("{}: {status} {body}", side.api)),
    }
}

/// A batch of 10 new agents through `side`'s worker: its latency; an error on any failure.
async fn batch_ok(runtime: &Runtime, side: &Side) -> Result<Duration, String> {
    batch_of(runtime, side, 10).await
}

/// A batch of `n` new agents (one message group each) through `side`'s worker: its latency;
/// an error on any failure.
async fn batch_of(runtime: &Runtime, side: &Side, n: usize) -> Result<Duration, String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let event = sqs_event(
        (0..n)
            .map(|i| register(&format!("b{}-{i}", &run[..12])).1)
            .collect(),
    );
    let started = Instant::now();
    let response = invoke(runtime, side.worker, event).await?;
    let took = started.elapsed();
    match failures(&response) {
        f if f.is_empty() => Ok(took),
        f => Err(format!("{}: {} of {n} failed", side.worker, f.len())),
    }
}

/// The process of the function's one warm instance.
fn pid(runtime: &Runtime, function: &str) -> Result<u32, String> {
    runtime
        .journal()
        .instances()
        .into_iter()
        .filter(|i| i.function == function && i.alive)
        .find_map(|i| i.pid)
        .ok_or_else(|| format!("{function}: no warm instance"))
}

/// The CPU time of a function's warm instance from [`Cpu::start`] on.
struct Cpu<'a> {
    runtime: &'a Runtime,
    function: &'a str,
    pid: u32,
    start: Duration,
}

impl<'a> Cpu<'a> {
    /// Starts counting the CPU of `function`'s one warm instance.
    ///
    /// # Errors
    /// No warm instance, or its CPU time unreadable.
    fn start(runtime: &'a Runtime, function: &'a str) -> Result<Cpu<'a>, String> {
        let pid = pid(runtime, function)?;
        Ok(Cpu {
            runtime,
            function,
            pid,
            start: cpu_time(pid)?,
        })
    }

    /// Adds the CPU used since the start and `events` to `total` (CPU, events).
    ///
    /// # Errors
    /// The instance was replaced while measured (its CPU would be lost), or its CPU time is
    /// unreadable.
    fn add_to(self, total: &mut (Duration, usize), events: usize) -> Result<(), String> {
        if pid(self.runtime, self.function)? != self.pid {
            return Err(format!(
                "{}: its instance was replaced while measured",
                self.function
            ));
        }
        total.0 += cpu_time(self.pid)?.saturating_sub(self.start);
        total.1 += events;
        Ok(())
    }
}

/// The two implementations with their figures, Rust first in even rounds and Python first in
/// odd ones, so that neither always runs on what the other left (caches, the emulator's state).
fn alternating<'a>(
    round: usize,
    rust: &'a mut Figures,
    py: &'a mut Figures,
) -> [(&'static Side, &'a mut Figures); 2] {
    if round.is_multiple_of(2) {
        [(&RUST, rust), (&PYTHON, py)]
    } else {
        [(&PYTHON, py), (&RUST, rust)]
    }
}

/// The section of BENCHMARKS.md, markers included.
fn markdown(r: &Peers) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}", report::PEERS_BEGIN);
    let _ = writeln!(
        s,
        "## Against what users would pick instead: Python with boto3 and Powertools\n"
    );
    let _ = writeln!(
        s,
        "Generated by `make bench-peers`, kept as it is by `make bench`. The peer baseline is the \
         agents-api state query and the agents worker written as a team would write them in \
         Python (`bench/python`: boto3, Powertools' Logger, Metrics, HTTP API event handler and \
         `SqsFifoPartialProcessor` for partial batch responses; the worker does the same AWS \
         calls per message as ours and the same inbox transaction), run by `awslambdaric` under \
         the same local runner (`local::runtime`, one instance per function) against the same \
         emulator, in the same run. Both first passed the parity checks below. Init is measured \
         on the harness's Runtime API stub like the cold-start table above; the rest through the \
         runner. Ratios are Python / Rust: above 1 means ours uses less.\n"
    );
    let _ = writeln!(
        s,
        "- Date: {} UTC",
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    );
    let _ = writeln!(s, "- Machine: {}", report::machine());
    let _ = writeln!(s, "- Command: `{}", r.command);
    let _ = writeln!(
        s,
        "- Ours: {} binaries of this workspace; peer: {}",
        if r.debug { "debug" } else { "release" },
        r.python
    );
    if r.quick || r.debug {
        let _ = writeln!(
            s,
            "- **{}: not for comparison** (never written to BENCHMARKS.md)",
            if r.quick {
                "quick mode"
            } else {
                "debug binaries"
            }
        );
    }
    let _ = writeln!(
        s,
        "\n| | Rust (ours) | Python (boto3 + Powertools) | Python / Rust | published, AWS |\n|---|---:|---:|---:|---|"
    );
    let published = format!(
        "{}: {:.1} ms, {}: {:.1} ms ({:.1}×), {}: {:.0} ms",
        PUBLISHED[0].0,
        PUBLISHED[0].1,
        PUBLISHED[1].0,
        PUBLISHED[1].1,
        PUBLISHED[1].1 / PUBLISHED[0].1,
        PUBLISHED[2].0,
        PUBLISHED[2].1
    );
    let (q, sim) = (r.rust.query.len(), r.rust.sim_one.len());
    let memory = format!(
        "AWS answered from memory after {} ms",
        AWS_LATENCY.as_millis()
    );
    let latencies = [
        Row {
            note: &published,
            ..in_ms(
                format!("hello-world init, p50 of {}", r.rust.api_init.len()),
                |f| p50(&f.hello_init),
            )
        },
        in_ms("agents-api init, p50", |f| p50(&f.api_init)),
        in_ms("agents-worker init, p50", |f| p50(&f.worker_init)),
        in_ms(format!("warm query p50 ({q} requests each)"), |f| {
            p50(&f.query)
        }),
        in_ms("warm query p99", |f| p99(&f.query)),
        in_ms(
            format!("worker batch of 10, p50 of {}", r.rust.batch.len()),
            |f| p50(&f.batch),
        ),
        in_ms(format!("CPU per query ({q} requests)"), |f| {
            per_event(f.query_cpu)
        }),
        in_ms(
            format!("CPU per message ({} messages)", r.rust.event_cpu.1),
            |f| per_event(f.event_cpu),
        ),
        in_ms(format!("worker batch of 1, {memory}, p50 of {sim}"), |f| {
            p50(&f.sim_one)
        }),
        in_ms(format!("worker batch of 10, {memory}, p50 of {sim}"), |f| {
            p50(&f.sim_ten)
        }),
    ];
    rows(&mut s, r, &latencies);
    let times = |f: &Figures| match (p50(&f.sim_one), p50(&f.sim_ten)) {
        (Some(one), Some(ten)) if one > 0.0 => format!("{:.2}×", ten / one),
        _ => "–".into(),
    };
    let _ = writeln!(
        s,
        "| batch of 10 ÷ batch of 1, {memory} | {} | {} | – | |",
        times(&r.rust),
        times(&r.py)
    );
    let resources = [
        in_ms(format!("CPU per message, {memory}"), |f| {
            per_event(f.sim_cpu)
        }),
        Row {
            unit: "MB",
            ..in_ms("agents-api peak RSS (`VmHWM`)", |f| mib(f.api_rss_kib))
        },
        Row {
            unit: "MB",
            ..in_ms(
                "agents-worker peak RSS (`VmHWM`)",
                |f| mib(f.worker_rss_kib),
            )
        },
    ];
    rows(&mut s, r, &resources);
    let _ = writeln!(
        s,
        "\nThe emulator's own `GetItem` of the same agent (harness → emulator, the query's one \
         AWS call): p50 {:.2} ms, p99 {:.2} ms; what each query adds to it: Rust {:.2} ms, \
         Python {:.2} ms (p50). Published hello-world cold starts on AWS ({PUBLISHED_SOURCE}): \
         {published}; they include what only AWS does (sandbox, code download), so compare \
         their ratio, not their times, with the rows above. CPU per event is utime + stime of \
         the function's process over every measured invocation (clock ticks of 10 ms, over \
         seconds of CPU); the emulator's CPU is not in it. MB = 2^20 bytes.\n",
        ms(median(&r.get_item)),
        ms(quantile(&r.get_item, 0.99)),
        ms(median(&r.rust.query)) - ms(median(&r.get_item)),
        ms(median(&r.py.query)) - ms(median(&r.get_item)),
    );
    let _ = writeln!(s, "Parity checks passed before measuring:\n");
    for c in &r.checks {
        let _ = writeln!(s, "- {c}");
    }
    let _ = writeln!(s, "\n{}", report::PEERS_END);
    s
}

/// A row of the table of [`markdown`].
struct Row<'a> {
    /// What it shows (the first column).
    what: String,
    /// The figure of one implementation; `None`: not measured.
    figure: fn(&Figures) -> Option<f64>,
    unit: &'a str,
    /// The last column.
    note: &'a str,
}

/// A row of a figure in ms, with no note.
fn in_ms(what: impl Into<String>, figure: fn(&Figures) -> Option<f64>) -> Row<'static> {
    Row {
        what: what.into(),
        figure,
        unit: "ms",
        note: "",
    }
}

/// Writes `rows` as lines of the table: each figure of Rust and of Python to two decimals with
/// its unit, their ratio Python / Rust (`–` when either is missing or Rust's is zero), the note.
fn rows(s: &mut String, r: &Peers, rows: &[Row]) {
    use std::fmt::Write as _;
    for Row {
        what,
        figure,
        unit,
        note,
    } in rows
    {
        let (a, b) = (figure(&r.rust), figure(&r.py));
        let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2} {unit}"));
        let q = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.1}×", b / a),
            _ => "–".into(),
        };
        let _ = writeln!(s, "| {what} | {} | {} | {q} | {note} |", cell(a), cell(b));
    }
}

/// The median of `v`, in ms; `None` when nothing was measured.
fn p50(v: &[Duration]) -> Option<f64> {
    (!v.is_empty()).then(|| ms(median(v)))
}

/// The 99th percentile of `v`, in ms; `None` when nothing was measured.
fn p99(v: &[Duration]) -> Option<f64> {
    (!v.is_empty()).then(|| ms(quantile(v, 0.99)))
}

/// CPU time over events, per event, in ms; `None` for no events.
fn per_event((cpu, n): (Duration, usize)) -> Option<f64> {
    (n > 0).then(|| ms(cpu) / n as f64)
}

/// KiB in MiB.
fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::{PEERS_BEGIN, PEERS_END};

    /// Our two functions in-process (their library crates), against the emulator: what the
    /// release binaries run, without needing them built.
    struct InProcess {
        worker: agents_worker::AwsApp,
        api: agents_api::AwsApp,
    }

    impl Peer for InProcess {
        async fn worker(&self, event: Value) -> Result<Value, String> {
            let event = serde_json::from_value(event).map_err(|e| e.to_string())?;
            let response = shared::worker::handle(&self.worker, event).await;
            serde_json::to_value(response).map_err(|e| e.to_string())
        }

        async fn query(&self, event: Value) -> Result<Value, String> {
            let request =
                lambda_http::request::from_str(&event.to_string()).map_err(|e| e.to_string())?;
            let response = agents_api::handle(&self.api, request).await;
            let body = match response.body() {
                lambda_http::Body::Text(t) => t.clone(),
                lambda_http::Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            Ok(json!({"statusCode": response.status().as_u16(), "body": body}))
        }
    }

    /// A peer whose worker reports no failure whatever happened: the check must see it.
    struct NoFailures<'a, P>(&'a P);

    impl<P: Peer> Peer for NoFailures<'_, P> {
        async fn worker(&self, event: Value) -> Result<Value, String> {
            self.0.worker(event).await?;
            Ok(json!({"batchItemFailures": []}))
        }

        async fn query(&self, event: Value) -> Result<Value, String> {
            self.0.query(event).await
        }
    }

    /// The Python peer (installed with pip by `bench/python/install.sh` when missing: the test
    /// fails, never skips, without it) run by the local runner through awslambdaric, against
    /// our functions in-process, on one emulator: the same partial batch response for a batch
    /// with a poison message, the same JSON for the same agents ([`check_parity`]); and a
    /// worker that hides its failures is caught.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_python_peer_answers_a_poison_batch_and_a_query_as_ours_do() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = python_env(&root).unwrap_or_else(|e| {
            panic!("the Python peer baseline could not be installed (pip, PyPI): {e}")
        });
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let dir = target.join(format!("bench-peers-test-{}", std::process::id()));
        let wrappers = Wrappers::write(&root, &python, &dir).expect("wrappers");

        let Provisioned {
            emulator,
            sdk,
            api,
            worker,
            ..
        } = Provisioned::start(&root, "peers-test")
            .await
            .unwrap_or_else(|e| panic!("emulator (make tools), provisioned: {e}"));
        let vars = |env: &BTreeMap<String, String>| shared::config::Vars::from(env.clone());
        let ours = InProcess {
            worker: agents_worker::init(&sdk, &vars(&worker.env)).unwrap(),
            api: agents_api::init(&sdk, &vars(&api.env)).unwrap(),
        };
        let runtime = Runtime::new(
            vec![
                spec(PYTHON.api, &api, &wrappers.api),
                spec(PYTHON.worker, &worker, &wrappers.worker),
            ],
            &RuntimeOptions::new("us-east-1", &emulator.endpoint),
        );
        let peer = Runner::new(&runtime, &PYTHON);
        let fixture = state_fixture(&root).unwrap();

        let (agent, checks) = check_parity(&ours, &peer, &fixture)
            .await
            .unwrap_or_else(|e| panic!("the Python peer answers differently: {e}"));
        assert_eq!(checks.len(), 2);
        let (status, body) = answer(&peer.query(state_request(&fixture, &agent)).await.unwrap());
        assert_eq!((status, &body["agentId"]), (200, &json!(agent)));

        let hidden = check_parity(&ours, &NoFailures(&peer), &fixture).await;
        let e = hidden.expect_err("a worker reporting no failure for a poison batch");
        assert!(e.contains("peer worker: batchItemFailures []"), "{e}");

        runtime.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_peers_part_is_replaced_or_placed_before_the_notes() {
        let notes = "## Notes: where budgets are missed\n\nnew notes\n";
        let part = |x: &str| format!("{PEERS_BEGIN}\n## Peers {x}\n{PEERS_END}\n");
        let (one, two) = (part("one"), part("two"));
        let doc = "# Benchmarks\n\n## Cold start\n\n## Notes: where budgets are missed\n\nold\n";

        let with = report::with_peers_part(doc, &one, notes);
        assert_eq!(
            with,
            format!(
                "# Benchmarks\n\n## Cold start\n\n{}\n\n{notes}",
                one.trim_end()
            )
        );
        assert_eq!(report::peers_part(&with), Some(one.trim_end()));
        // `make bench` regenerates the document and keeps the part; a second peers run
        // replaces it.
        let again = report::with_peers_part(doc, report::peers_part(&with).unwrap(), notes);
        assert_eq!(again, with);
        let replaced = report::with_peers_part(&with, &two, notes);
        assert_eq!(replaced.matches(PEERS_BEGIN).count(), 1);
        assert!(replaced.contains("## Peers two") && !replaced.contains("## Peers one"));
        // No notes: at the end.
        assert!(report::with_peers_part("# B\n", &one, "").ends_with(&format!("# B\n\n{one}")));
    }
}
