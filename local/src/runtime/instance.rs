//! One running instance of a function: its process, its Runtime API listener, its logs.
//!
//! An `Instance` is owned by exactly one invoker at a time (or sits idle in its pool), so no
//! locking is needed around an invocation. Dropping it kills the process and stops its server.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::FunctionSpec;
use super::api::{self, ApiState, Event, Invocation};
use super::journal::{InstanceId, Journal};
use super::limits::{InstanceLimits, Limits};

pub(crate) struct Instance {
    pub pid: Option<u32>,
    pub spawned_at: Instant,
    /// Set once the runtime first asked for an invocation (init finished).
    pub initialized: bool,
    pub invocations: mpsc::Sender<Invocation>,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Its entry in the runtime's journal (its lines are recorded there too).
    pub journal_id: InstanceId,
    /// Its cgroups, with `--lambda-limits`: the watcher holds them too, so they are removed
    /// once the process is reaped and this handle is gone.
    pub limits: Option<Arc<InstanceLimits>>,
    /// Sending on it or dropping it makes the watcher kill the process, then stop its Runtime
    /// API server (in that order, so the process never sees its API vanish while alive).
    kill: Option<oneshot::Sender<()>>,
}

impl Instance {
    /// Starts the function's process from `executable` (its binary or a snapshot of it) with
    /// its own Runtime API listener. `LAMBDA_TASK_ROOT` is the directory of
    /// [`FunctionSpec::binary`] either way. With `limits`, the process runs in cgroups of its
    /// own ([`super::limits`]) from its first instruction.
    pub async fn spawn(
        spec: &FunctionSpec,
        executable: &Path,
        base_env: &BTreeMap<String, String>,
        journal: &Arc<Journal>,
        runtime_limits: Option<&Limits>,
    ) -> std::io::Result<Instance> {
        let limits = runtime_limits
            .map(|l| l.instance(&spec.logical_id, spec.memory_mb))
            .transpose()
            .map_err(std::io::Error::other)?
            .map(Arc::new);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = listener.local_addr()?;
        let (invocations, invocations_rx) = mpsc::channel(1);
        let (events_tx, events) = mpsc::unbounded_channel();
        let state = Arc::new(ApiState {
            invocations: Mutex::new(invocations_rx),
            events: events_tx.clone(),
            function_arn: spec.arn.clone(),
        });
        let app = api::router(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let task_root = spec
            .binary
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let spawned_at = Instant::now();
        let mut command = Command::new(executable);
        command
            .env_clear()
            .envs(base_env)
            .envs(&spec.env)
            .env("AWS_LAMBDA_RUNTIME_API", api_addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            )
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", spec.name),
            )
            .env("_HANDLER", &spec.handler)
            .env("LAMBDA_TASK_ROOT", task_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(limits) = &limits {
            limits.attach(&mut command);
        }
        let mut child = spawn_retrying_busy(&mut command)
            .await
            .inspect_err(|_| server.abort())?;
        // Joining the cgroups (between fork and exec, which `spawn` waits for) can wait for a
        // grace period of the kernel's RCU: the sandbox's cost, not the function's init.
        let spawned_at = match limits {
            Some(_) => Instant::now(),
            None => spawned_at,
        };
        // Without the init burst the share applies from here, the binary executed.
        if let (Some(cgroups), Some(false)) = (&limits, runtime_limits.map(Limits::init_burst)) {
            cgroups
                .throttle()
                .map_err(std::io::Error::other)
                .inspect_err(|_| server.abort())?;
        }
        let pid = child.id();
        let journal_id = journal.instance_started(&spec.logical_id, pid);
        let tap = |stream| Tap {
            journal: Arc::clone(journal),
            instance: journal_id,
            stream,
        };
        if let Some(out) = child.stdout.take() {
            forward_lines(out, spec.logical_id.clone(), tap("stdout"));
        }
        if let Some(err) = child.stderr.take() {
            forward_lines(err, spec.logical_id.clone(), tap("stderr"));
        }
        let exits = Arc::clone(journal);
        let (kill, kill_rx) = oneshot::channel::<()>();
        let cgroups = limits.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            server.abort();
            // A SIGKILL with the OOM killer's count up: out of memory, not another kill.
            let killed = status.as_ref().is_ok_and(|s| {
                std::os::unix::process::ExitStatusExt::signal(s) == Some(libc::SIGKILL)
            });
            if killed && cgroups.as_ref().is_some_and(|c| c.oom_kills() > 0) {
                let _ = events_tx.send(Event::OutOfMemory);
            }
            drop(cgroups);
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            exits.instance_exited(journal_id, &status);
            let _ = events_tx.send(Event::Exited(status));
        });
        Ok(Instance {
            pid,
            spawned_at,
            initialized: false,
            invocations,
            events,
            journal_id,
            limits,
            kill: Some(kill),
        })
    }

    /// SIGKILLs the process now (as a crash would end it); its [`Event::Exited`] follows.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }

    /// False when the process has exited since it was last used.
    pub fn alive(&mut self) -> bool {
        loop {
            match self.events.try_recv() {
                Ok(Event::Exited(_)) | Err(mpsc::error::TryRecvError::Disconnected) => {
                    return false;
                }
                Ok(_) => continue,
                Err(mpsc::error::TryRecvError::Empty) => return true,
            }
        }
    }

    /// Peak resident memory of the process, in MB (`VmHWM` of `/proc/<pid>/status`); once
    /// the process is gone, its memory cgroup's peak (with `--lambda-limits`).
    pub fn max_memory_mb(&self) -> Option<u64> {
        self.vm_hwm_mb()
            .or_else(|| self.limits.as_ref()?.peak_memory_mb())
    }

    fn vm_hwm_mb(&self) -> Option<u64> {
        Some(super::peak_rss_kib(self.pid?)?.div_ceil(1024))
    }

    /// Time since spawn, for the init duration of a cold start.
    pub fn since_spawn(&self) -> Duration {
        self.spawned_at.elapsed()
    }
}

/// Spawns `command`, retrying briefly on `ETXTBSY`: a snapshot just written by this process
/// can still be open for writing in a child another thread forked at that moment, until
/// that child's own exec closes it.
async fn spawn_retrying_busy(command: &mut Command) -> std::io::Result<tokio::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Where an instance's output stream is recorded besides being printed.
struct Tap {
    journal: Arc<Journal>,
    instance: InstanceId,
    /// `stdout` or `stderr`: printed to the runner's own stream of that name.
    stream: &'static str,
}

/// Prints each line of a function's output prefixed with `[LogicalId]` and records it in the
/// journal.
fn forward_lines(stream: impl AsyncRead + Unpin + Send + 'static, id: String, tap: Tap) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tap.stream == "stderr" {
                eprintln!("[{id}] {line}");
            } else {
                println!("[{id}] {line}");
            }
            tap.journal.line(tap.instance, tap.stream, &line);
        }
    });
}
