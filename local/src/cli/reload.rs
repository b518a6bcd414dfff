//! Hot reload of `local dev`: watch the workspace, rebuild, swap what changed.
//!
//! The watcher ([`notify`]) covers the template's directory (its `Cargo.toml`, `Cargo.lock`
//! and the template file itself), each workspace member's directory (its `Cargo.toml`,
//! `build.rs`) and each member's `src/` tree, as `cargo metadata` lists them; `target/`,
//! `.git/` and editor scratch files are never looked at. Changes are collected until the
//! files have been quiet for [`QUIET`], then:
//!
//! - a source or manifest change runs the `cargo build` of the start again and swaps the
//!   functions whose binary that build rewrote ([`Fingerprint`]): new invocations start
//!   instances of the new build, in-flight ones finish on the old ([`Runtime::replace`]);
//! - a template change re-reads the template, builds, re-provisions the emulator
//!   (idempotent: existing resources are kept, new ones created), then swaps the route table
//!   the gateway reads, restarts the SQS pollers if their bindings changed (the old ones settle
//!   the batch in hand, [`Pollers::retire`]), restarts the schedules if they changed (the
//!   invocation a timer started finishes), and swaps the functions whose spec (environment,
//!   settings, binary) changed.
//!
//! Any failure (a build error, a template that does not parse or provision) is printed and
//! changes nothing: the running functions and configuration keep serving. The HTTP listener
//! and the emulator are never restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use super::dev::{build, function_specs, locate_binaries, sqs_bindings};
use super::{Args, provision_options};
use crate::auth::Authorizers;
use crate::chaos::Chaos;
use crate::dashboard::{self, Dashboard};
use crate::gateway::{RouteTable, Routing};
use crate::poller::{Pollers, SqsBinding};
use crate::runtime::{Fingerprint, FunctionSpec, Runtime};
use crate::scheduler::{Running, Schedules};
use crate::template::Template;

/// How long watched files must stay unchanged before a reload starts (an editor's save, a
/// `git checkout` or a formatter touches several files in a burst).
pub const QUIET: Duration = Duration::from_millis(300);

/// The parts of the running application a template reload replaces, shared by the reload
/// task and the runner's shutdown.
pub(super) struct Live {
    /// The template the running configuration was built from.
    pub template: Template,
    /// The SQS bindings the current pollers serve.
    pub bindings: Vec<SqsBinding>,
    /// Every poller set still running: the current one last, before it those retired by
    /// reloads that may still be settling a batch.
    pub pollers: Vec<Pollers>,
    /// The schedules the current timers run.
    pub schedules: Schedules,
    /// Every timer set still running, the same way: the current one last.
    pub scheduled: Vec<Scheduled>,
}

impl Live {
    /// Waits for every poller and timer set, retired ones included (after shutdown was
    /// signalled).
    pub async fn wait(&mut self) {
        for pollers in self.pollers.drain(..) {
            pollers.wait().await;
        }
        for scheduled in self.scheduled.drain(..) {
            scheduled.running.wait().await;
        }
    }
}

/// Timers started by [`start_schedules`]: stoppable alone (a reload) or with the runner.
pub(super) struct Scheduled {
    stop: watch::Sender<bool>,
    running: Running,
}

impl Scheduled {
    /// Stops the timers; an invocation they started finishes ([`Live::wait`] waits for it).
    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Starts `schedules`' timers with a stop signal of their own, which the runner's shutdown
/// (`stopped`) also sets, so a reload can stop them without stopping the runner.
pub(super) fn start_schedules(
    schedules: Schedules,
    runtime: &Arc<Runtime>,
    stopped: &watch::Receiver<bool>,
) -> Scheduled {
    let (stop, own) = watch::channel(false);
    let forward = stop.clone();
    let mut stopped = stopped.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => { let _ = forward.send(true); }
            // Every timer has ended (or none was started).
            _ = forward.closed() => {}
        }
    });
    Scheduled {
        stop,
        running: schedules.start(runtime, own),
    }
}

/// What reloads work with, fixed for the runner's life.
pub(super) struct Context {
    pub args: Args,
    /// The template's directory (canonical): where cargo runs.
    pub root: PathBuf,
    pub sdk: aws_config::SdkConfig,
    pub runtime: Arc<Runtime>,
    /// The gateway's routes, swapped whole.
    pub routing: Arc<ArcSwap<Routing>>,
    /// Told the new stack's queues after a template reload.
    pub dashboard: Arc<Dashboard>,
    pub chaos: Option<Arc<Chaos>>,
    /// The runner's shutdown signal, for the pollers a reload starts.
    pub stopped: watch::Receiver<bool>,
    /// Where the dev JWT keys live ([`crate::auth::key_dir`]).
    pub key_dir: PathBuf,
}

/// The running watcher and its reload task.
pub(super) struct Reloader {
    task: JoinHandle<()>,
}

impl Reloader {
    /// Lists what to watch (with `cargo metadata` unless `--no-build`: then only the template
    /// is watched, as nothing is built), starts watching and returns at once; reloads run on a
    /// task of their own. Prints one line saying what is watched.
    ///
    /// # Errors
    /// The watcher cannot start (e.g. the inotify watch limit is reached).
    pub async fn start(ctx: Context, live: Arc<Mutex<Live>>) -> Result<Reloader, String> {
        let set = WatchSet::list(&ctx.root, &ctx.args.template, ctx.args.build).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = set.watch(tx.clone())?;
        println!("Reload    {}", set.describe());
        let reloads = Reloads {
            lock_built: Fingerprint::of(&ctx.root.join("Cargo.lock")).ok(),
            ctx,
            live,
            set,
            watcher,
            tx,
            rx,
        };
        Ok(Reloader {
            task: tokio::spawn(reloads.run()),
        })
    }

    /// Stops watching. A reload under way is abandoned where it is (its `cargo build` is
    /// killed); call it once shutdown has begun.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// What a batch of changes asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Pending {
    template: bool,
    sources: bool,
    /// A `Cargo.toml`: the members (what is watched) may have changed too.
    manifest: bool,
}

impl Pending {
    fn any(&self) -> bool {
        self.template || self.sources || self.manifest
    }
}

/// What a changed path is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Template,
    Source,
    Manifest,
    /// `Cargo.lock`: cargo itself rewrites it during a build, which is no reason to build again.
    Lock,
}

/// The paths watched, from the template's directory and the workspace's members.
#[derive(Debug, Clone)]
struct WatchSet {
    root: PathBuf,
    template: PathBuf,
    /// Whether sources are watched (`local dev` builds).
    build: bool,
    /// Member package directories (not the root), watched without their subdirectories.
    members: Vec<PathBuf>,
    /// Each member's `src/`, watched recursively.
    sources: Vec<PathBuf>,
}

impl WatchSet {
    async fn list(root: &Path, template: &Path, build: bool) -> WatchSet {
        let template = root.join(template.file_name().unwrap_or(template.as_os_str()));
        let mut set = WatchSet {
            root: root.to_path_buf(),
            template,
            build,
            members: Vec::new(),
            sources: Vec::new(),
        };
        if !build {
            return set;
        }
        match workspace_members(root).await {
            Ok(members) => {
                for dir in members {
                    let src = dir.join("src");
                    if src.is_dir() {
                        set.sources.push(src);
                    }
                    if dir != root {
                        set.members.push(dir);
                    }
                }
            }
            Err(e) => eprintln!(
                "reload: cannot list the workspace's members ({e}); watching {} only",
                set.root.display()
            ),
        }
        set
    }

    /// A watcher sending every path it sees changed (not merely read) on `tx`.
    fn watch(&self, tx: mpsc::UnboundedSender<PathBuf>) -> Result<RecommendedWatcher, String> {
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_) | EventKind::Other) {
                return;
            }
            for path in event.paths {
                let _ = tx.send(path);
            }
        };
        let mut watcher = notify::recommended_watcher(handler)
            .map_err(|e| format!("cannot start the file watcher: {e}"))?;
        let dirs = std::iter::once((&self.root, RecursiveMode::NonRecursive))
            .chain(
                self.members
                    .iter()
                    .map(|m| (m, RecursiveMode::NonRecursive)),
            )
            .chain(self.sources.iter().map(|s| (s, RecursiveMode::Recursive)));
        for (dir, mode) in dirs {
            watcher
                .watch(dir, mode)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        }
        Ok(watcher)
    }

    fn describe(&self) -> String {
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let template = name(&self.template).unwrap_or_default();
        if !self.build {
            return format!("watching {template} (--no-build: sources are not watched)");
        }
        let crates: Vec<String> = self
            .sources
            .iter()
            .filter_map(|s| s.parent().and_then(|p| p.strip_prefix(&self.root).ok()))
            .map(|p| match p.as_os_str().is_empty() {
                true => ".".to_string(),
                false => p.display().to_string(),
            })
            .collect();
        format!(
            "watching {template}, Cargo.toml, Cargo.lock and the sources of {} (--no-watch to turn off)",
            match crates.len() {
                0 => "no crate".to_string(),
                1..=6 => crates.join(", "),
                n => format!("{n} crates"),
            }
        )
    }

    fn classify(&self, path: &Path) -> Option<Change> {
        let name = path.file_name()?.to_str()?;
        if is_scratch(name) {
            return None;
        }
        if path == self.template {
            return Some(Change::Template);
        }
        if !self.build {
            return None;
        }
        let parent = path.parent()?;
        if parent == self.root || self.members.iter().any(|m| m == parent) {
            return match name {
                "Cargo.toml" => Some(Change::Manifest),
                "Cargo.lock" if parent == self.root => Some(Change::Lock),
                "build.rs" => Some(Change::Source),
                _ if self.sources.iter().any(|s| path.starts_with(s)) => Some(Change::Source),
                _ => None,
            };
        }
        let source = self
            .sources
            .iter()
            .find_map(|s| path.strip_prefix(s).ok())?;
        let ignored = source.components().any(|c| {
            let c = c.as_os_str();
            c == "target" || c == ".git"
        });
        (!ignored).then_some(Change::Source)
    }
}

/// Editor and tool scratch files: swap and backup files, vim's `4913` probe, `.#` locks,
/// hidden files.
fn is_scratch(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name == "4913"
        || [".swp", ".swx", ".swo", ".tmp", ".bak", ".orig"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The package directories of the workspace at `root` (`cargo metadata --no-deps`).
async fn workspace_members(root: &Path) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = tokio::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err
            .lines()
            .next()
            .unwrap_or("cargo metadata failed")
            .to_string());
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    Ok(packages
        .iter()
        .filter_map(|p| p["manifest_path"].as_str())
        .filter_map(|m| Path::new(m).parent().map(Path::to_path_buf))
        .collect())
}

/// The reload task's state.
struct Reloads {
    ctx: Context,
    live: Arc<Mutex<Live>>,
    set: WatchSet,
    /// Kept alive while watching; replaced when the members change.
    watcher: RecommendedWatcher,
    tx: mpsc::UnboundedSender<PathBuf>,
    rx: mpsc::UnboundedReceiver<PathBuf>,
    /// `Cargo.lock` as the last build left it.
    lock_built: Option<Fingerprint>,
}

impl Reloads {
    async fn run(mut self) {
        while let Some(pending) = self.next_batch().await {
            if pending.template {
                self.reload_template().await;
            } else if pending.sources || pending.manifest {
                self.rebuild().await;
            }
            if pending.manifest {
                self.rewatch().await;
            }
        }
    }

    /// The next batch of relevant changes, once they have been quiet for [`QUIET`]; `None`
    /// when the watcher is gone.
    async fn next_batch(&mut self) -> Option<Pending> {
        let mut pending = Pending::default();
        loop {
            let path = self.rx.recv().await?;
            self.note(&path, &mut pending);
            if pending.any() {
                break;
            }
        }
        let mut quiet_from = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout_at(quiet_from + QUIET, self.rx.recv()).await {
                Ok(Some(path)) => {
                    self.note(&path, &mut pending);
                    if self.set.classify(&path).is_some() {
                        quiet_from = tokio::time::Instant::now();
                    }
                }
                Ok(None) => return None,
                Err(_) => return Some(pending),
            }
        }
    }

    fn note(&self, path: &Path, pending: &mut Pending) {
        match self.set.classify(path) {
            Some(Change::Template) => pending.template = true,
            Some(Change::Source) => pending.sources = true,
            Some(Change::Manifest) => {
                pending.sources = true;
                pending.manifest = true;
            }
            Some(Change::Lock) if Fingerprint::of(path).ok() != self.lock_built => {
                pending.sources = true;
            }
            Some(Change::Lock) | None => {}
        }
    }

    /// Lists the members again and watches what they now are.
    async fn rewatch(&mut self) {
        let set =
            WatchSet::list(&self.ctx.root, &self.ctx.args.template, self.ctx.args.build).await;
        match set.watch(self.tx.clone()) {
            Ok(watcher) => {
                self.watcher = watcher;
                self.set = set;
            }
            Err(e) => eprintln!("reload: {e}; watching as before"),
        }
    }

    /// Runs the build of `template`'s binaries; false (after saying so) when it fails.
    async fn build(&mut self, template: &Template) -> bool {
        if !self.ctx.args.build {
            return true;
        }
        let built = build(template, &self.ctx.root, self.ctx.args.release).await;
        self.lock_built = Fingerprint::of(&self.ctx.root.join("Cargo.lock")).ok();
        if built.is_err() {
            eprintln!(
                "reload: build failed (cargo's errors above); the functions keep serving their previous build"
            );
        }
        built.is_ok()
    }

    /// A source change: build, then swap the functions whose binary the build rewrote.
    async fn rebuild(&mut self) {
        let started = Instant::now();
        let template = self.live.lock().await.template.clone();
        if !self.build(&template).await {
            return;
        }
        let runtime = &self.ctx.runtime;
        let mut rebuilt = BTreeSet::new();
        let mut swapped = Vec::new();
        for spec in runtime.functions() {
            if !binary_changed(runtime, &spec) {
                continue;
            }
            let (id, binary) = (spec.logical_id.clone(), spec.binary.clone());
            match runtime.replace(spec).await {
                Ok(_) => {
                    rebuilt.insert(file_name(&binary));
                    swapped.push(id);
                }
                Err(e) => eprintln!("reload: {id}: {e}; it keeps serving its previous build"),
            }
        }
        let took = started.elapsed().as_secs_f64();
        if swapped.is_empty() {
            println!("reload: no function changed ({took:.1} s)");
        } else {
            println!(
                "reload: rebuilt {} in {took:.1} s; new instances for {}",
                rebuilt.into_iter().collect::<Vec<_>>().join(", "),
                swapped.join(", ")
            );
        }
    }

    /// A template change: everything that can fail first (read, build, provision, resolve),
    /// then the swaps.
    async fn reload_template(&mut self) {
        let started = Instant::now();
        let ctx = &self.ctx;
        let template = match Template::load(&ctx.args.template) {
            Ok(t) => t,
            Err(e) => return keep(&e),
        };
        let routes = RouteTable::from_template(&template);
        if let Err(e) = dashboard::check_routes(&routes) {
            return keep(&e);
        }
        if !self.build(&template).await {
            return;
        }
        let ctx = &self.ctx;
        let binaries = match locate_binaries(&template, &ctx.root, ctx.args.release) {
            Ok(b) => b,
            Err(e) => return keep(&e),
        };
        let stack =
            match crate::provision::provision(&template, &ctx.sdk, &provision_options(&ctx.args))
                .await
            {
                Ok(s) => s,
                Err(e) => return keep(&format!("provisioning failed: {e}")),
            };
        for w in &stack.warnings {
            eprintln!("warning: {w}");
        }
        let bindings = match sqs_bindings(&template, &stack) {
            Ok(b) => b,
            Err(e) => return keep(&e),
        };
        let authorizers = match Authorizers::load(&template, &stack, &ctx.key_dir) {
            Ok(a) => a,
            Err(e) => return keep(&e),
        };
        let schedules = match Schedules::from_template(&template, &stack) {
            Ok(s) => s,
            Err(e) => return keep(&e),
        };
        let specs = function_specs(&template, &stack, &binaries);

        let swapped = swap_functions(&ctx.runtime, specs).await;
        ctx.dashboard.set_stack(&template, &stack);
        let keys =
            |t: &RouteTable| -> BTreeSet<String> { t.routes().iter().map(|r| r.key()).collect() };
        let (old, new) = (keys(&ctx.routing.load().routes), keys(&routes));
        ctx.routing.store(Arc::new(Routing {
            routes,
            authorizers,
        }));
        let mut live = self.live.lock().await;
        let pollers = if live.bindings == bindings {
            "SQS pollers unchanged"
        } else {
            if let Some(current) = live.pollers.last() {
                current.retire();
            }
            let sqs = aws_sdk_sqs::Client::new(&ctx.sdk);
            let started = Pollers::start(
                bindings.clone(),
                &sqs,
                &ctx.runtime,
                ctx.chaos.clone(),
                ctx.stopped.clone(),
            );
            live.pollers.push(started);
            live.bindings = bindings;
            "SQS pollers restarted"
        };
        let timers = (live.schedules != schedules).then(|| {
            if let Some(current) = live.scheduled.last() {
                current.stop();
            }
            let started = start_schedules(schedules.clone(), &ctx.runtime, &ctx.stopped);
            live.scheduled.push(started);
            live.schedules = schedules;
            "schedules restarted"
        });
        live.template = template;
        drop(live);

        let mut parts = vec![format!("{} routes", new.len())];
        let added: Vec<&String> = new.difference(&old).collect();
        let removed: Vec<&String> = old.difference(&new).collect();
        if !added.is_empty() {
            parts.push(format!("added {}", join(&added)));
        }
        if !removed.is_empty() {
            parts.push(format!("removed {}", join(&removed)));
        }
        parts.push(match swapped.is_empty() {
            true => "no function changed".to_string(),
            false => format!("new instances for {}", swapped.join(", ")),
        });
        parts.push(pollers.to_string());
        parts.extend(timers.map(str::to_string));
        println!(
            "reload: {} applied in {:.1} s: {}",
            file_name(&ctx.args.template),
            started.elapsed().as_secs_f64(),
            parts.join("; ")
        );
    }
}

/// Installs `specs` as the runtime's functions: a new generation for each function whose spec
/// or build differs from the running one, the new ones added, the ones gone removed. Returns
/// the logical ids given new instances.
async fn swap_functions(runtime: &Runtime, specs: Vec<FunctionSpec>) -> Vec<String> {
    let running: BTreeMap<String, FunctionSpec> = runtime
        .functions()
        .into_iter()
        .map(|s| (s.logical_id.clone(), s))
        .collect();
    let mut swapped = Vec::new();
    for id in running.keys() {
        if !specs.iter().any(|s| &s.logical_id == id) && runtime.remove(id) {
            swapped.push(format!("{id} (removed)"));
        }
    }
    for spec in specs {
        let id = spec.logical_id.clone();
        let label = match running.get(&id) {
            None => format!("{id} (new)"),
            Some(old) if *old != spec || binary_changed(runtime, &spec) => id.clone(),
            Some(_) => continue,
        };
        match runtime.replace(spec).await {
            Ok(_) => swapped.push(label),
            Err(e) => eprintln!("reload: {id}: {e}; it keeps its previous generation"),
        }
    }
    swapped
}

/// Whether `spec`'s binary is another build than the one its current generation runs.
fn binary_changed(runtime: &Runtime, spec: &FunctionSpec) -> bool {
    let Some((_, running)) = runtime.generation(&spec.logical_id) else {
        return true;
    };
    match Fingerprint::of(&spec.binary) {
        Ok(now) => Some(now) != running,
        // Missing now (a build removed it): keep what runs.
        Err(_) => false,
    }
}

/// Says a reload failed and changed nothing.
fn keep(error: &dyn std::fmt::Display) {
    eprintln!("reload: {error}");
    eprintln!("reload: the running configuration and functions keep serving");
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> WatchSet {
        WatchSet {
            root: "/w".into(),
            template: "/w/template.yaml".into(),
            build: true,
            members: vec!["/w/functions/a".into()],
            sources: vec!["/w/functions/a/src".into(), "/w/src".into()],
        }
    }

    #[test]
    fn classifies_watched_paths() {
        let s = set();
        let c = |p: &str| s.classify(Path::new(p));
        assert_eq!(c("/w/template.yaml"), Some(Change::Template));
        assert_eq!(c("/w/Cargo.toml"), Some(Change::Manifest));
        assert_eq!(c("/w/functions/a/Cargo.toml"), Some(Change::Manifest));
        assert_eq!(c("/w/Cargo.lock"), Some(Change::Lock));
        assert_eq!(c("/w/functions/a/build.rs"), Some(Change::Source));
        assert_eq!(c("/w/functions/a/src/lib.rs"), Some(Change::Source));
        assert_eq!(c("/w/functions/a/src/deep/x.sql"), Some(Change::Source));
        assert_eq!(c("/w/src/main.rs"), Some(Change::Source));
        for ignored in [
            "/w/README.md",
            "/w/target",
            "/w/functions/a/Cargo.lock",
            "/w/functions/a/README.md",
            "/w/functions/a/src/.lib.rs.swp",
            "/w/functions/a/src/lib.rs~",
            "/w/functions/a/src/4913",
            "/w/functions/a/src/.#lib.rs",
            "/w/src/target/x.rs",
            "/w/functions/b/src/lib.rs",
        ] {
            assert_eq!(c(ignored), None, "{ignored}");
        }
        let no_build = WatchSet {
            build: false,
            ..set()
        };
        assert_eq!(
            no_build.classify(Path::new("/w/template.yaml")),
            Some(Change::Template)
        );
        assert_eq!(no_build.classify(Path::new("/w/src/main.rs")), None);
    }
}
