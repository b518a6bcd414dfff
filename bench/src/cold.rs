//! Per-function figures from the release binaries: init duration (cold starts against the
//! stub), peak RSS after warm invocations, binary size (stripped by the release profile) and
//! zipped size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::stub::Process;

/// A binary to measure and the environment it runs with.
pub struct Target {
    /// Function logical id, or `hello` for the baseline.
    pub name: String,
    pub binary: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Events for warm invocations (the `events/` fixtures of the function).
    pub events: Vec<Value>,
}

#[derive(Default)]
pub struct Figures {
    pub init: Vec<Duration>,
    pub max_rss_kib: Option<u64>,
    pub invocations: usize,
    pub size: Option<u64>,
    pub zipped: Option<u64>,
    pub error: Option<String>,
}

/// The environment of a function process on the stub besides its template variables: what
/// the local runner gives every function (endpoint `endpoint`, region `us-east-1`, the
/// emulator's `test` credentials, UTC, a system `PATH`).
pub fn stub_env(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("TZ", ":UTC"),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `rounds` cold starts of every target, interleaved (round by round) so that noise hits
/// every binary alike.
pub async fn cold_starts(targets: &[Target], rounds: usize) -> Vec<Figures> {
    let mut figures: Vec<Figures> = targets.iter().map(|_| Figures::default()).collect();
    for _ in 0..rounds {
        for (t, f) in targets.iter().zip(figures.iter_mut()) {
            if f.error.is_some() {
                continue;
            }
            match cold_start(t).await {
                Ok(d) => f.init.push(d),
                Err(e) => f.error = Some(e),
            }
        }
    }
    figures
}

async fn cold_start(t: &Target) -> Result<Duration, String> {
    let mut p = Process::spawn(&t.binary, &t.env).await?;
    let init = p.init().await;
    p.stop().await;
    init
}

/// One instance, `invocations` warm invocations cycling through the fixtures, then `VmHWM`.
pub async fn max_rss(t: &Target, invocations: usize, f: &mut Figures) {
    let run = async {
        let mut p = Process::spawn(&t.binary, &t.env).await?;
        p.init().await?;
        for i in 0..invocations {
            let event = fresh(&t.events[i % t.events.len()]);
            p.invoke(serde_json::to_vec(&event).map_err(|e| e.to_string())?)
                .await?;
        }
        let rss = p.max_rss_kib();
        p.stop().await;
        Ok::<_, String>(rss)
    };
    match run.await {
        Ok(rss) => {
            f.max_rss_kib = rss;
            f.invocations = invocations;
        }
        Err(e) => f.error = Some(e),
    }
}

/// The fixture with fresh message and envelope ids (workers would otherwise see duplicates).
fn fresh(event: &Value) -> Value {
    let text = event.to_string();
    let prefix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    serde_json::from_str(
        &text
            .replace("7d0f0a4e", prefix)
            .replace("00000000-0000", &format!("{prefix}-0000")),
    )
    .unwrap_or_else(|_| event.clone())
}

/// The `events/<binary>/*.json` fixtures; for API functions only the GET requests when any.
pub fn fixtures(root: &Path, binary: &str) -> Vec<Value> {
    let mut events: Vec<Value> = std::fs::read_dir(root.join("events").join(binary))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect();
    let gets: Vec<Value> = events
        .iter()
        .filter(|e| e.pointer("/requestContext/http/method") == Some(&Value::from("GET")))
        .cloned()
        .collect();
    if !gets.is_empty() {
        events = gets;
    }
    if events.is_empty() {
        events.push(Value::Object(Default::default()));
    }
    events
}

/// Size of the binary and of `zip -9` of it, in bytes.
pub fn sizes(binary: &Path, scratch: &Path, f: &mut Figures) {
    f.size = std::fs::metadata(binary).ok().map(|m| m.len());
    let zip = scratch.join("bootstrap.zip");
    let _ = std::fs::remove_file(&zip);
    let ok = std::process::Command::new("zip")
        .args(["-q", "-9", "-j"])
        .arg(&zip)
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        f.zipped = std::fs::metadata(&zip).ok().map(|m| m.len());
    }
}
