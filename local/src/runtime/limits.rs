//! Lambda's CPU share and memory limit for function instances (`local dev --lambda-limits`).
//!
//! Lambda gives a function CPU in proportion to its `MemorySize`: 1,769 MB is one vCPU, so
//! 128 MB is 7.2 % of one (docs/ARCHITECTURE.md, "The local runner"). Each instance runs in
//! cgroups of its own with
//!
//! - a CFS quota of `MemorySize / 1769` of one CPU per [`CPU_PERIOD`] (at least the kernel's
//!   1 ms minimum), written when the instance finishes init, unless the init burst is turned
//!   off ([`INIT_BURST_ENV`]: then as soon as the process has been executed): Lambda runs
//!   init with more CPU than the share;
//! - a memory limit of `MemorySize` MiB and no swap: going past it makes the kernel's OOM
//!   killer SIGKILL the process, which the runner reports as Lambda reports an out-of-memory
//!   kill ([`InstanceLimits::oom_kills`]).
//!
//! Layout: one directory per runner process, `local-<pid>`, below the runner's own cgroup (so
//! whatever limits the machine set above it still apply), and one per instance below that,
//! `<LogicalId>-<n>`:
//!
//! - cgroup v1: `/sys/fs/cgroup/cpu/<own>/local-<pid>/<instance>/` and
//!   `/sys/fs/cgroup/memory/<own>/local-<pid>/<instance>/`;
//! - cgroup v2 (`/sys/fs/cgroup` is cgroup2): `/sys/fs/cgroup/<own>/local-<pid>/<instance>/`,
//!   with the `cpu` and `memory` controllers enabled down to it.
//!
//! An instance's process joins its cgroups between fork and exec (it writes `0`, "myself", to
//! each `cgroup.procs`), so none of its code runs outside them. An instance's directories are
//! removed once its process has been reaped ([`InstanceLimits`] is dropped by the last holder);
//! the runner's when its last instance's are gone; directories left by runners that no longer
//! run are removed when the next one starts.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Environment variable: set to `1` (or `true`, `on`), `local dev` runs with the limits, as
/// with `--lambda-limits`.
pub const LIMITS_ENV: &str = "LOCAL_LAMBDA_LIMITS";
/// Environment variable: `0` (or `false`, `off`) applies the CPU quota from the process's
/// start instead of from the end of init.
pub const INIT_BURST_ENV: &str = "LOCAL_LAMBDA_INIT_BURST";
/// `MemorySize` that buys one vCPU.
pub const MB_PER_VCPU: u64 = 1769;
/// The CFS period the quota is a share of. Lambda does not publish its own; throttling of a
/// 128 MB function has been observed to pause it until the end of 20 ms slices.
pub const CPU_PERIOD: Duration = Duration::from_millis(20);
/// The smallest quota the kernel accepts.
const MIN_QUOTA_US: u64 = 1_000;
/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A CFS bandwidth limit: `quota_us` of CPU time per `period_us` of wall time (both in µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// Lambda's share for `memory_mb`: `memory_mb / 1769` of one CPU per [`CPU_PERIOD`], at
    /// least 1 ms per period.
    pub fn for_memory(memory_mb: u64) -> CpuQuota {
        let period_us = CPU_PERIOD.as_micros() as u64;
        CpuQuota {
            quota_us: (period_us * memory_mb / MB_PER_VCPU).max(MIN_QUOTA_US),
            period_us,
        }
    }
}

/// Why the limits cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error(
        "--lambda-limits needs cgroups with the cpu and memory controllers: found neither the \
         cgroup v1 `cpu` and `memory` hierarchies nor cgroup v2 under {0}"
    )]
    NoCgroups(PathBuf),
    #[error(
        "--lambda-limits cannot write the cgroup {path}: {source}; run `local dev` as root or \
         in a cgroup delegated to you (README, \"Local dev settings\"), or drop --lambda-limits"
    )]
    NotWritable { path: PathBuf, source: io::Error },
}

/// The cgroups of one runner process: creates one set per instance ([`Limits::instance`]).
pub struct Limits {
    runner: Arc<RunnerDirs>,
    init_burst: bool,
}

/// Numbers instance directories, unique in the process (several runtimes of one process, as
/// in tests, share the runner's directory).
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("dirs", &self.runner.dirs())
            .field("init_burst", &self.init_burst)
            .finish()
    }
}

/// The runner's `local-<pid>` directories: v1 one per hierarchy (cpu, memory), v2 one.
struct RunnerDirs {
    version: Version,
    dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Limits {
    /// The limits under `/sys/fs/cgroup`, below this process's own cgroups
    /// (`/proc/self/cgroup`). `init_burst`: init runs without the CPU quota, which is written
    /// when it ends ([`InstanceLimits::throttle`]).
    ///
    /// # Errors
    /// No cgroup hierarchy with the controllers, or its directories cannot be created and
    /// written (not root, no delegation): the error names the path and what to do.
    pub fn new(init_burst: bool) -> Result<Limits, LimitsError> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Limits::under(Path::new(CGROUP_ROOT), &own, init_burst)
    }

    /// [`Limits::new`] with the mount point and the content of `/proc/self/cgroup` given.
    pub fn under(root: &Path, own: &str, init_burst: bool) -> Result<Limits, LimitsError> {
        let name = format!("local-{}", std::process::id());
        let runner = if root.join("cgroup.controllers").is_file() {
            let parent = existing_or_root(root, own_path(own, None));
            enable_controllers(&parent)?;
            let dir = parent.join(&name);
            remove_stale(&parent);
            create(&dir)?;
            enable_controllers(&dir)?;
            RunnerDirs {
                version: Version::V2,
                dirs: vec![dir],
            }
        } else if ["cpu", "memory"]
            .iter()
            .all(|c| root.join(c).join("cgroup.procs").is_file())
        {
            let mut dirs = Vec::new();
            for controller in ["cpu", "memory"] {
                let parent =
                    existing_or_root(&root.join(controller), own_path(own, Some(controller)));
                remove_stale(&parent);
                let dir = parent.join(&name);
                create(&dir)?;
                dirs.push(dir);
            }
            RunnerDirs {
                version: Version::V1,
                dirs,
            }
        } else {
            return Err(LimitsError::NoCgroups(root.to_path_buf()));
        };
        Ok(Limits {
            runner: Arc::new(runner),
            init_burst,
        })
    }

    /// Limits from the environment: `Some` when [`LIMITS_ENV`] is on, with the init burst
    /// unless [`INIT_BURST_ENV`] is off.
    ///
    /// # Errors
    /// As [`Limits::new`].
    pub fn from_env() -> Result<Option<Limits>, LimitsError> {
        if !env_flag(LIMITS_ENV).unwrap_or(false) {
            return Ok(None);
        }
        Limits::new(init_burst_from_env()).map(Some)
    }

    /// True when init runs without the quota.
    pub fn init_burst(&self) -> bool {
        self.init_burst
    }

    /// The runner's own directories (`local-<pid>`), one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        self.runner.dirs()
    }

    /// Waits up to `within` for the instances' cgroups to empty (their processes killed and
    /// gone), removing each as it does, then removes the runner's directories: the last step
    /// of a runner that stops, so that it leaves none behind. Blocks the calling thread.
    pub fn settle(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let mut left = 0;
            for dir in self.runner.dirs() {
                for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if child.path().is_dir() && std::fs::remove_dir(child.path()).is_err() {
                        left += 1;
                    }
                }
            }
            if left == 0 || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for dir in self.runner.dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// New cgroups for an instance of function `logical_id` with `memory_mb` of memory: the
    /// memory limit and no swap set, the CPU unlimited until [`InstanceLimits::throttle`]
    /// (the caller's, once the process has been executed, or when init ends with
    /// [`Limits::init_burst`]). A process joining a cgroup whose quota is already spent, between
    /// fork and exec, was seen to run its init unthrottled or barely at all, at random.
    ///
    /// # Errors
    /// A directory or a setting cannot be written (the directories made are removed).
    pub fn instance(
        &self,
        logical_id: &str,
        memory_mb: u64,
    ) -> Result<InstanceLimits, LimitsError> {
        let n = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let name: String = logical_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("{name}-{n}");
        let mut instance = InstanceLimits {
            dirs: Vec::new(),
            procs: Vec::new(),
            version: self.runner.version,
            memory_mb,
            quota: CpuQuota::for_memory(memory_mb),
            _runner: Arc::clone(&self.runner),
        };
        for parent in self.runner.dirs() {
            let dir = parent.join(&name);
            create(&dir)?;
            instance.dirs.push(dir.clone());
            let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(|e| not_writable(&dir, io::Error::other(e)))?;
            instance.procs.push(procs);
        }
        instance.limit_memory()?;
        instance.write_cpu(None)?;
        Ok(instance)
    }
}

impl RunnerDirs {
    fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for RunnerDirs {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_soon(dir.clone());
        }
    }
}

/// The cgroups of one instance. Dropping it removes them (retrying for a moment while the
/// process is still being torn down).
pub struct InstanceLimits {
    /// v1: the cpu then the memory directory; v2: the one directory.
    dirs: Vec<PathBuf>,
    /// Each directory's `cgroup.procs`, ready for the child to write between fork and exec.
    procs: Vec<CString>,
    version: Version,
    memory_mb: u64,
    quota: CpuQuota,
    /// Keeps the runner's directories until the last instance's are gone.
    _runner: Arc<RunnerDirs>,
}

impl std::fmt::Debug for InstanceLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceLimits")
            .field("dirs", &self.dirs)
            .field("memory_mb", &self.memory_mb)
            .field("quota", &self.quota)
            .finish()
    }
}

impl InstanceLimits {
    /// The instance's cgroup directories (v1: cpu then memory; v2: one).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The CPU quota the instance runs under once [`InstanceLimits::throttle`]d.
    pub fn quota(&self) -> CpuQuota {
        self.quota
    }

    /// Makes the process `command` starts join these cgroups before it executes anything.
    pub fn attach(&self, command: &mut tokio::process::Command) {
        let procs = self.procs.clone();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it calls open/write/close on paths allocated
        // before the fork, and builds its error from errno without allocating.
        unsafe {
            command.pre_exec(move || procs.iter().try_for_each(|p| join(p)));
        }
    }

    /// Writes the CPU quota ([`CpuQuota::for_memory`] of the instance's memory).
    ///
    /// # Errors
    /// The cgroup's CPU settings cannot be written.
    pub fn throttle(&self) -> Result<(), LimitsError> {
        self.write_cpu(Some(self.quota))
    }

    /// The CPU quota in force, read back from the cgroup: `None` when unlimited.
    ///
    /// # Errors
    /// The settings cannot be read or parsed.
    pub fn cpu_quota(&self) -> io::Result<Option<CpuQuota>> {
        let bad = |text: &str| io::Error::other(format!("unexpected CPU setting {text:?}"));
        let (quota, period) = match self.version {
            Version::V1 => (
                read(&self.dirs[0].join("cpu.cfs_quota_us"))?,
                read(&self.dirs[0].join("cpu.cfs_period_us"))?,
            ),
            Version::V2 => {
                let max = read(&self.dirs[0].join("cpu.max"))?;
                let mut parts = max.split_whitespace();
                let quota = parts.next().unwrap_or_default().to_string();
                let period = parts.next().unwrap_or_default().to_string();
                (quota, period)
            }
        };
        if quota == "-1" || quota == "max" {
            return Ok(None);
        }
        Ok(Some(CpuQuota {
            quota_us: quota.parse().map_err(|_| bad(&quota))?,
            period_us: period.parse().map_err(|_| bad(&period))?,
        }))
    }

    /// How many CFS periods the instance was throttled in so far (`nr_throttled` of the CPU
    /// cgroup's `cpu.stat`); 0 when unreadable.
    pub fn throttled_periods(&self) -> u64 {
        counter(&self.dirs[0].join("cpu.stat"), "nr_throttled")
    }

    /// The memory limit in force, in bytes, read back from the cgroup.
    ///
    /// # Errors
    /// The setting cannot be read or parsed.
    pub fn memory_limit_bytes(&self) -> io::Result<u64> {
        let text = read(
            &self
                .memory_dir()
                .join(self.memory_file("memory.limit_in_bytes", "memory.max")),
        )?;
        text.parse()
            .map_err(|_| io::Error::other(format!("unexpected memory limit {text:?}")))
    }

    /// How many processes the kernel's OOM killer killed in the instance's memory cgroup
    /// (`oom_kill` of `memory.oom_control`, v1, or of `memory.events`, v2); 0 when unreadable.
    pub fn oom_kills(&self) -> u64 {
        let file = self.memory_file("memory.oom_control", "memory.events");
        counter(&self.memory_dir().join(file), "oom_kill")
    }

    /// The cgroup's peak memory use, in MB (rounded up), when the kernel reports it.
    pub fn peak_memory_mb(&self) -> Option<u64> {
        let file = self.memory_file("memory.max_usage_in_bytes", "memory.peak");
        let bytes: u64 = read(&self.memory_dir().join(file)).ok()?.parse().ok()?;
        Some(bytes.div_ceil(1 << 20))
    }

    fn memory_dir(&self) -> &Path {
        self.dirs.last().expect("at least one directory")
    }

    fn memory_file(&self, v1: &'static str, v2: &'static str) -> &'static str {
        match self.version {
            Version::V1 => v1,
            Version::V2 => v2,
        }
    }

    fn limit_memory(&self) -> Result<(), LimitsError> {
        let bytes = (self.memory_mb << 20).to_string();
        let dir = self.memory_dir();
        match self.version {
            Version::V1 => {
                write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                // Memory + swap at the same limit: no swap. Absent without swap accounting.
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &bytes)?;
                }
            }
            Version::V2 => {
                write(&dir.join("memory.max"), &bytes)?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            }
        }
        Ok(())
    }

    /// Writes `quota` (`None`: unlimited) with [`CPU_PERIOD`].
    fn write_cpu(&self, quota: Option<CpuQuota>) -> Result<(), LimitsError> {
        let period = CPU_PERIOD.as_micros().to_string();
        let dir = &self.dirs[0];
        match self.version {
            Version::V1 => {
                write(&dir.join("cpu.cfs_period_us"), &period)?;
                let quota = quota.map_or_else(|| "-1".to_string(), |q| q.quota_us.to_string());
                write(&dir.join("cpu.cfs_quota_us"), &quota)
            }
            Version::V2 => {
                let quota = quota.map_or_else(|| "max".to_string(), |q| q.quota_us.to_string());
                write(&dir.join("cpu.max"), &format!("{quota} {period}"))
            }
        }
    }
}

impl Drop for InstanceLimits {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_soon(dir.clone());
        }
    }
}

/// Whether `name` is set to an on (`1`, `true`, `on`, `yes`) or off (`0`, `false`, `off`,
/// `no`, empty) value; `None` when unset or anything else.
fn env_flag(name: &str) -> Option<bool> {
    let value = std::env::var(name).ok()?;
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Some(true),
        "" | "0" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// The init burst setting of [`INIT_BURST_ENV`] (on unless turned off).
pub fn init_burst_from_env() -> bool {
    env_flag(INIT_BURST_ENV).unwrap_or(true)
}

/// The process's cgroup path in the hierarchy of `controller` (v1), or the unified one (v2:
/// `None`), from `/proc/self/cgroup` lines `id:controllers:path`.
fn own_path(own: &str, controller: Option<&str>) -> String {
    own.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match controller {
                Some(c) => controllers.split(',').any(|x| x == c),
                None => controllers.is_empty(),
            };
            matches.then(|| path.to_string())
        })
        .next()
        .unwrap_or_default()
}

/// `hierarchy/own` when that directory exists, else the hierarchy's root (a cgroup path from
/// outside this mount namespace).
fn existing_or_root(hierarchy: &Path, own: String) -> PathBuf {
    let dir = hierarchy.join(own.trim_start_matches('/'));
    if dir.is_dir() {
        dir
    } else {
        hierarchy.to_path_buf()
    }
}

/// v2: makes the `cpu` and `memory` controllers available to `dir`'s children.
fn enable_controllers(dir: &Path) -> Result<(), LimitsError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    if ["cpu", "memory"].iter().all(|c| enabled.contains(c)) {
        return Ok(());
    }
    write(&control, "+cpu +memory")
}

/// Removes the `local-<pid>` directories below `parent` of runners that no longer run.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("local-")) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(children) = std::fs::read_dir(&dir) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

fn create(dir: &Path) -> Result<(), LimitsError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(not_writable(dir, e)),
    }
}

fn write(path: &Path, value: &str) -> Result<(), LimitsError> {
    std::fs::write(path, value).map_err(|e| not_writable(path, e))
}

/// The value of `key` in the cgroup file of `key value` lines at `path` (`cpu.stat`,
/// `memory.events`, …); 0 when the file or the key cannot be read.
fn counter(path: &Path, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn read(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

fn not_writable(path: &Path, source: io::Error) -> LimitsError {
    LimitsError::NotWritable {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes the cgroup directory `dir` now, or, while it still holds an exiting process, from
/// a thread that retries for up to 2 s.
fn remove_soon(dir: PathBuf) {
    if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
        return;
    }
    std::thread::spawn(move || {
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(20));
            if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                return;
            }
        }
    });
}

/// Writes `0` to the `cgroup.procs` at `path`: moves the calling process into that cgroup.
fn join(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string; the descriptor is closed on every path.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let result = if written == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_the_memory_share_of_one_cpu_per_period() {
        let period = CPU_PERIOD.as_micros() as u64;
        assert_eq!(
            CpuQuota::for_memory(128),
            CpuQuota {
                quota_us: period * 128 / 1769,
                period_us: period
            }
        );
        assert_eq!(CpuQuota::for_memory(1769).quota_us, period, "one vCPU");
        assert_eq!(CpuQuota::for_memory(3538).quota_us, 2 * period, "two vCPUs");
        assert_eq!(
            CpuQuota::for_memory(64).quota_us,
            MIN_QUOTA_US,
            "the kernel's minimum"
        );
    }

    #[test]
    fn own_cgroup_paths_are_read_per_controller() {
        let own = "12:cpu,cpuacct:/a/b\n4:memory:/m\n0::/unified\n";
        assert_eq!(own_path(own, Some("cpu")), "/a/b");
        assert_eq!(own_path(own, Some("memory")), "/m");
        assert_eq!(own_path(own, None), "/unified");
        assert_eq!(own_path(own, Some("pids")), "");
    }

    /// No hierarchy: the error says what is missing; a hierarchy whose directories cannot be
    /// made: the error names the path and what to do.
    #[test]
    fn unusable_cgroups_are_clear_errors() {
        let root = std::env::temp_dir().join(format!("limits-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root).unwrap();
        let err = Limits::under(&root, "", true).unwrap_err();
        assert!(matches!(err, LimitsError::NoCgroups(_)), "{err}");
        assert!(err.to_string().contains("cpu and memory"), "{err}");

        for controller in ["cpu", "memory"] {
            std::fs::create_dir_all(root.join(controller)).unwrap();
            std::fs::write(root.join(controller).join("cgroup.procs"), "").unwrap();
        }
        // Where the runner's directory should go there is a file.
        let blocked = root
            .join("cpu")
            .join(format!("local-{}", std::process::id()));
        std::fs::write(&blocked, "").unwrap();
        let err = Limits::under(&root, "1:cpu:/\n2:memory:/\n", true).unwrap_err();
        assert!(matches!(err, LimitsError::NotWritable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&blocked.display().to_string()), "{text}");
        assert!(
            text.contains("as root or in a cgroup delegated to you"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
