use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// The stand-in function tests/fixtures/fake_function.py as the function `id` (named
/// `cqrs-local-{id}`) with `timeout_secs`, `memory_mb` and `env`.
pub(super) fn fake_spec(
    id: &str,
    timeout_secs: u64,
    memory_mb: u64,
    env: BTreeMap<String, String>,
) -> FunctionSpec {
    FunctionSpec {
        logical_id: id.into(),
        name: format!("cqrs-local-{id}"),
        arn: format!("arn:aws:lambda:us-east-1:123456789012:function:cqrs-local-{id}"),
        binary: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fake_function.py"
        )
        .into(),
        handler: "bootstrap".into(),
        timeout: Duration::from_secs(timeout_secs),
        memory_mb,
        env,
    }
}

/// `Fake`: [`fake_spec`] with 128 MB, `TABLE_NAME=t` and `extra_env`.
fn spec(timeout_secs: u64, extra_env: &[(&str, &str)]) -> FunctionSpec {
    let mut env: BTreeMap<String, String> = [("TABLE_NAME".to_string(), "t".to_string())].into();
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    fake_spec("Fake", timeout_secs, 128, env)
}

fn runtime(spec: FunctionSpec, max_instances: usize) -> Runtime {
    let mut opts = RuntimeOptions::new("eu-west-1", "http://127.0.0.1:4566");
    opts.max_instances = max_instances;
    Runtime::new(vec![spec], &opts)
}

fn response(outcome: Result<InvokeOutcome, InvokeError>) -> Value {
    match outcome {
        Ok(InvokeOutcome::Response(v)) => v,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[tokio::test]
async fn passes_the_event_headers_and_environment() {
    let rt = runtime(spec(5, &[]), 4);
    let answer = response(rt.invoke("Fake", json!({"hello": "world"})).await);
    assert_eq!(answer["event"], json!({"hello": "world"}));
    let headers = &answer["headers"];
    assert_eq!(
        uuid::Uuid::parse_str(headers["lambda-runtime-aws-request-id"].as_str().unwrap())
            .map(|_| ()),
        Ok(())
    );
    assert_eq!(
        headers["lambda-runtime-invoked-function-arn"],
        "arn:aws:lambda:us-east-1:123456789012:function:cqrs-local-Fake"
    );
    assert!(
        headers["lambda-runtime-trace-id"]
            .as_str()
            .unwrap()
            .starts_with("Root=1-")
    );
    let deadline: u64 = headers["lambda-runtime-deadline-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = epoch_ms(SystemTime::now());
    assert!(
        deadline > now && deadline <= now + 5_000,
        "{deadline} vs {now}"
    );
    let env = &answer["env"];
    for (key, expected) in [
        ("TABLE_NAME", "t"),
        ("AWS_LAMBDA_FUNCTION_NAME", "cqrs-local-Fake"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        ("_HANDLER", "bootstrap"),
        (
            "LAMBDA_TASK_ROOT",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"),
        ),
    ] {
        assert_eq!(env[key], expected, "{key}");
    }
    assert!(
        env["AWS_LAMBDA_RUNTIME_API"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(env["AWS_ACCESS_KEY_ID"].is_string() && env["AWS_SECRET_ACCESS_KEY"].is_string());
}

#[tokio::test]
async fn reuses_warm_instances_and_scales_out_when_busy() {
    let rt = runtime(spec(5, &[]), 4);
    let cold = Instant::now();
    let first = response(rt.invoke("Fake", json!({})).await)["pid"].clone();
    let cold_start = cold.elapsed();
    let second = response(rt.invoke("Fake", json!({})).await)["pid"].clone();
    assert_eq!(first, second, "a warm instance is reused");

    let started = Instant::now();
    let calls = (0..3).map(|_| rt.invoke("Fake", json!({"sleep": 0.6})));
    let pids: std::collections::BTreeSet<String> = futures_join(calls)
        .await
        .into_iter()
        .map(|r| response(r)["pid"].to_string())
        .collect();
    assert_eq!(
        pids.len(),
        3,
        "overlapping invocations run on separate instances"
    );
    // Side by side: one cold start and one sleep, plus slack; one after another would take
    // three of each. (Against the cold start measured here, so a loaded machine's slower
    // process start does not count against the runtime.)
    let elapsed = started.elapsed();
    assert!(
        elapsed < cold_start + Duration::from_millis(1100),
        "{elapsed:?} with a cold start of {cold_start:?}"
    );
}

#[tokio::test]
async fn queues_beyond_the_instance_limit() {
    let rt = runtime(spec(5, &[]), 1);
    let calls = (0..2).map(|_| rt.invoke("Fake", json!({"sleep": 0.2})));
    let pids: Vec<Value> = futures_join(calls)
        .await
        .into_iter()
        .map(|r| response(r)["pid"].clone())
        .collect();
    assert_eq!(
        pids[0], pids[1],
        "one instance serves both, one after the other"
    );
}

#[tokio::test]
async fn a_timeout_kills_the_instance_and_the_next_call_gets_a_fresh_one() {
    let rt = runtime(spec(1, &[]), 4);
    let pid = response(rt.invoke("Fake", json!({})).await)["pid"].clone();
    let started = Instant::now();
    let err = rt.invoke("Fake", json!({"sleep": 3})).await.unwrap_err();
    assert!(
        matches!(err, InvokeError::TimedOut { seconds: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("Task timed out after 1.00 seconds"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(1800));
    let next = response(rt.invoke("Fake", json!({})).await)["pid"].clone();
    assert_ne!(pid, next);
}

#[tokio::test]
async fn function_errors_and_crashes() {
    let rt = runtime(spec(5, &[]), 4);
    let outcome = rt
        .invoke("Fake", json!({"fail": "bad input"}))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        InvokeOutcome::FunctionError(FunctionError {
            error_type: "Boom".into(),
            error_message: "bad input".into()
        })
    );
    let err = rt.invoke("Fake", json!({"exit": 3})).await.unwrap_err();
    assert!(matches!(err, InvokeError::Crashed { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("Runtime exited with error: exit status: 3"),
        "{err}"
    );
    assert_eq!(
        response(rt.invoke("Fake", json!({"respond": "ok"})).await),
        "ok"
    );
    assert!(matches!(
        rt.invoke("Nope", json!({})).await,
        Err(InvokeError::UnknownFunction(_))
    ));
}

/// `LOCAL_CHAOS=kill:…`: the instance is SIGKILLed during the invocation, which ends as a
/// crash (a 5xx for a request, a retried batch).
#[tokio::test]
async fn the_kill_fault_crashes_the_invocation() {
    let mut opts = RuntimeOptions::new("eu-west-1", "http://127.0.0.1:4566");
    opts.chaos = Some(Arc::new(Chaos::parse("kill:1", 9).unwrap()));
    let rt = Runtime::new(vec![spec(5, &[])], &opts);
    let started = Instant::now();
    let err = rt.invoke("Fake", json!({"sleep": 2})).await.unwrap_err();
    assert!(matches!(err, InvokeError::Crashed { .. }), "{err}");
    assert!(err.to_string().contains("signal: 9"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "killed, not finished"
    );
    let chaos = opts.chaos.as_ref().unwrap();
    assert_eq!(chaos.injected()[&Fault::Kill], 1);
    let err = rt.invoke("Fake", json!({"sleep": 1})).await.unwrap_err();
    assert!(matches!(err, InvokeError::Crashed { .. }), "{err}");
    assert_eq!(chaos.injected()[&Fault::Kill], 2, "each invocation draws");
}

#[tokio::test]
async fn init_failures_are_reported() {
    let rt = runtime(spec(5, &[("FAKE_INIT_ERROR", "no config")]), 4);
    let err = rt.invoke("Fake", json!({})).await.unwrap_err();
    assert!(
        err.to_string().contains("Runtime.InitError: no config"),
        "{err}"
    );
    let rt = runtime(spec(5, &[("FAKE_EXIT_AT_INIT", "1")]), 4);
    let err = rt.invoke("Fake", json!({})).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("exited before init completed: exit status: 7"),
        "{err}"
    );
    let mut missing = spec(5, &[]);
    missing.binary = "/nonexistent/bootstrap".into();
    let err = runtime(missing, 4)
        .invoke("Fake", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, InvokeError::Spawn { .. }), "{err}");
}

#[tokio::test]
async fn shutdown_refuses_new_invocations() {
    let rt = runtime(spec(5, &[]), 4);
    response(rt.invoke("Fake", json!({})).await);
    rt.shutdown();
    assert!(matches!(
        rt.invoke("Fake", json!({})).await,
        Err(InvokeError::ShuttingDown)
    ));
}

#[test]
fn report_lines_look_like_lambdas() {
    let line = report_line(
        "r1",
        Duration::from_micros(12_345),
        128,
        Some(9),
        Some(Duration::from_micros(2_500)),
        None,
    );
    assert_eq!(
        line,
        "REPORT RequestId: r1\tDuration: 12.35 ms\tBilled Duration: 13 ms\tMemory Size: 128 MB\tMax Memory Used: 9 MB\tInit Duration: 2.50 ms"
    );
    let timeout = InvokeError::TimedOut {
        function: "F".into(),
        request_id: "r2".into(),
        seconds: 3,
    };
    let line = report_line(
        "r2",
        Duration::from_secs(3),
        256,
        None,
        None,
        Some(&timeout),
    );
    assert!(
        line.ends_with(
            "Billed Duration: 3000 ms\tMemory Size: 256 MB\tMax Memory Used: 0 MB\tStatus: timeout"
        ),
        "{line}"
    );
}

/// Runs futures concurrently on the current task (no extra dependency for `join_all`).
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("all ready")).collect()
}

/// Hot reload's swap: a new generation gets new instances (with its new environment), the
/// old generation's idle instance is stopped at once and its busy one finishes its invocation
/// and is stopped then; snapshots are shared by equal builds and removed with their last
/// generation; a removed function is unknown.
#[tokio::test]
async fn replace_starts_a_new_generation_and_lets_the_old_one_finish() {
    let dir = std::env::temp_dir().join(format!("local-snapshots-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("fake-fn");
    std::fs::copy(spec(5, &[]).binary, &binary).unwrap();
    let first = FunctionSpec {
        binary: binary.clone(),
        ..spec(5, &[])
    };
    let opts = RuntimeOptions::new("eu-west-1", "http://127.0.0.1:4566");
    let rt = Arc::new(
        Runtime::with_snapshots(vec![first.clone()], &opts, &dir.join("snapshots"))
            .await
            .unwrap(),
    );
    let own = dir.join("snapshots").join(std::process::id().to_string());
    let snapshots = || {
        let mut names: Vec<String> = std::fs::read_dir(&own)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(snapshots(), ["fake-fn-1"]);
    let pid = |v: &Value| v["pid"].as_u64().unwrap();
    let gone = |pid: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "instance {pid} still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    // Generation 1: one instance busy for a second, one idle.
    let warm = pid(&response(rt.invoke("Fake", json!({})).await));
    let slow = tokio::spawn({
        let rt = Arc::clone(&rt);
        async move { rt.invoke("Fake", json!({"sleep": 1})).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let idle = pid(&response(rt.invoke("Fake", json!({})).await));
    assert_ne!(idle, warm, "the busy instance is not shared");

    // Generation 2: another environment, the same build (its snapshot is shared).
    let second = FunctionSpec {
        env: BTreeMap::from([("GENERATION".to_string(), "2".to_string())]),
        ..first.clone()
    };
    assert_eq!(rt.replace(second.clone()).await.unwrap(), 2);
    assert_eq!(rt.generation("Fake").unwrap().0, 2);
    assert_eq!(rt.functions(), vec![second.clone()]);
    gone(idle).await;
    let answer = response(rt.invoke("Fake", json!({})).await);
    assert_eq!(answer["env"]["GENERATION"], "2");
    let fresh = pid(&answer);
    assert!(fresh != warm && fresh != idle, "a new instance answers");
    assert_eq!(snapshots(), ["fake-fn-1"]);
    // The busy generation-1 instance finished normally, then was stopped.
    let slow = response(slow.await.unwrap());
    assert_eq!(pid(&slow), warm);
    gone(warm).await;

    // Generation 3: a new build gets a snapshot of its own; the old one goes with the last
    // generation that ran it.
    std::fs::write(
        &binary,
        std::fs::read_to_string(&binary).unwrap() + "\n# rebuilt\n",
    )
    .unwrap();
    assert_eq!(rt.replace(second).await.unwrap(), 3);
    gone(fresh).await;
    assert_eq!(snapshots(), ["fake-fn-2"]);
    assert_eq!(
        response(rt.invoke("Fake", json!({})).await)["env"]["GENERATION"],
        "2"
    );

    assert!(rt.remove("Fake"));
    assert!(matches!(
        rt.invoke("Fake", json!({})).await,
        Err(InvokeError::UnknownFunction(_))
    ));
    drop(rt);
    assert!(!own.exists(), "the runtime's snapshots go with it");
    let _ = std::fs::remove_dir_all(dir);
}

/// A runtime whose instances run under `--lambda-limits` (init burst on, as by default).
fn limited_runtime(spec: FunctionSpec) -> Runtime {
    let mut opts = RuntimeOptions::new("eu-west-1", "http://127.0.0.1:4566");
    let limits = limits::Limits::new(true).expect("cgroups writable: the tests run as root");
    opts.limits = Some(Arc::new(limits));
    Runtime::new(vec![spec], &opts)
}

/// The CPU quota (`None`: unlimited) and memory limit (bytes) of the cgroups process `pid` is
/// in, read from the kernel's files as `/proc/<pid>/cgroup` names them (v1 or v2).
fn cgroup_settings(pid: u64) -> (Vec<PathBuf>, Option<limits::CpuQuota>, u64) {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = |controller: &str| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.trim_start_matches('/').to_string())
        })
    };
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_string();
    let root = Path::new("/sys/fs/cgroup");
    let (dirs, quota, period, memory) = match (line("cpu"), line("memory")) {
        (Some(cpu), Some(memory)) => {
            let (cpu, memory) = (root.join("cpu").join(cpu), root.join("memory").join(memory));
            let quota = read(cpu.join("cpu.cfs_quota_us"));
            let period = read(cpu.join("cpu.cfs_period_us"));
            let limit = read(memory.join("memory.limit_in_bytes"));
            (vec![cpu, memory], quota, period, limit)
        }
        _ => {
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            let dir = root.join(path.trim_start_matches('/'));
            let max = read(dir.join("cpu.max"));
            let (quota, period) = max.split_once(' ').unwrap();
            let (quota, period) = (quota.to_string(), period.to_string());
            let limit = read(dir.join("memory.max"));
            (vec![dir], quota, period, limit)
        }
    };
    let quota = (quota != "-1" && quota != "max").then(|| limits::CpuQuota {
        quota_us: quota.parse().unwrap(),
        period_us: period.parse().unwrap(),
    });
    (dirs, quota, memory.parse().unwrap())
}

/// `--lambda-limits`: the instance runs in cgroups of its own from its first instruction,
/// has 128 MB's share of a CPU once init has ended and 128 MiB of memory, as the kernel's
/// files say; the cgroups go with the instance.
#[tokio::test]
async fn lambda_limits_give_each_instance_its_cpu_share_and_memory_limit() {
    let rt = limited_runtime(spec(5, &[]));
    let answer = response(rt.invoke("Fake", json!({})).await);
    let pid = answer["pid"].as_u64().unwrap();
    let (dirs, quota, memory) = cgroup_settings(pid);
    let name = format!("local-{}", std::process::id());
    for dir in &dirs {
        let parent = dir.parent().unwrap().file_name().unwrap();
        assert_eq!(parent.to_str(), Some(name.as_str()), "{}", dir.display());
        let instance = dir.file_name().unwrap().to_str().unwrap();
        assert!(instance.starts_with("Fake-"), "{instance}");
    }
    let expected = limits::CpuQuota::for_memory(128);
    assert_eq!(quota, Some(expected));
    assert_eq!(
        (expected.quota_us, expected.period_us),
        (20_000 * 128 / 1769, 20_000),
        "7.2 % of one CPU per 20 ms"
    );
    assert_eq!(memory, 128 << 20);

    rt.shutdown();
    drop(rt);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dirs.iter().any(|d| d.exists()) {
        assert!(Instant::now() < deadline, "cgroups left behind: {dirs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An instance that goes past its `MemorySize` is killed by the kernel and reported as Lambda
/// reports it: the runtime exited, `signal: killed`, `Runtime.ExitError` to the invoker,
/// `Error Type: Runtime.OutOfMemory` on the REPORT line; the next invocation gets a fresh
/// instance, and one that stays under the limit is untouched.
#[tokio::test]
async fn an_instance_past_its_memory_size_is_killed_and_reported_out_of_memory() {
    let rt = limited_runtime(spec(10, &[]));
    let first = response(rt.invoke("Fake", json!({})).await)["pid"].clone();
    let err = rt
        .invoke("Fake", json!({"allocate_mb": 256}))
        .await
        .unwrap_err();
    assert!(matches!(err, InvokeError::OutOfMemory { .. }), "{err}");
    assert!(
        err.to_string()
            .ends_with("Error: Runtime exited with error: signal: killed"),
        "{err}"
    );
    assert_eq!(err.error_type(), Some("Runtime.OutOfMemory"));
    let answered = err.lambda_error().unwrap();
    assert_eq!(answered.error_type, "Runtime.ExitError");
    assert!(
        answered.error_message.starts_with("RequestId: ")
            && answered
                .error_message
                .ends_with(" Error: Runtime exited with error: signal: killed"),
        "{}",
        answered.error_message
    );
    let line = report_line(
        "r",
        Duration::from_millis(5),
        128,
        Some(128),
        None,
        Some(&err),
    );
    assert!(
        line.ends_with("Max Memory Used: 128 MB\tStatus: error\tError Type: Runtime.OutOfMemory"),
        "{line}"
    );

    let next = response(rt.invoke("Fake", json!({"allocate_mb": 32})).await)["pid"].clone();
    assert_ne!(first, next, "a fresh instance");
    assert_eq!(
        response(rt.invoke("Fake", json!({})).await)["pid"],
        next,
        "under the limit the instance lives on"
    );
}
