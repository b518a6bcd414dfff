//! Finds or starts the AWS emulator (moto server, through `scripts/emulator.py`).
//!
//! The emulator is started through a tiny Python bootstrap that runs `emulator.py` and exits
//! as soon as its stdin reaches end-of-file. The guard holds the write end of that pipe, so the
//! emulator dies with the runner in every case: guard dropped, process exiting without running
//! destructors (a `static` guard in a test binary), or the runner killed with SIGKILL.
//! Everything here is blocking (std), so a guard works the same from any tokio runtime or none.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Endpoint used when `AWS_ENDPOINT_URL` is unset.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";
/// Overrides the workspace root used to find `scripts/emulator.py`.
pub const ROOT_ENV: &str = "LOCAL_WORKSPACE_ROOT";
/// How long a starting emulator may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the emulator's stderr kept to explain a failed start.
const KEPT_LINES: usize = 20;

/// Runs `scripts/emulator.py` with the given argv and exits when stdin closes.
const BOOTSTRAP: &str = r#"
import os, runpy, sys, threading
def _watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"#;

/// Why the emulator could not be reached or started.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("invalid endpoint {0:?}: expected http://HOST:PORT")]
    BadEndpoint(String),
    #[error("nothing answers at {0} and it is not a local address, so it cannot be started here")]
    NotLocal(String),
    #[error("cannot find {0} (set {ROOT_ENV} to the workspace root)")]
    NoScript(PathBuf),
    #[error("cannot run python3: {0}")]
    Python(std::io::Error),
    #[error("moto is not installed and `python3 -m pip install 'moto[server]'` failed: {0}")]
    Install(String),
    #[error("the emulator exited before answering at {endpoint} ({status}): {stderr}")]
    Exited {
        endpoint: String,
        status: String,
        stderr: String,
    },
    #[error("the emulator did not answer at {0} within {START_TIMEOUT:?}")]
    Timeout(String),
}

/// Keeps a started emulator alive; dropping it stops the emulator. An `EmulatorGuard` for an
/// emulator that was already running does nothing.
#[derive(Debug)]
pub struct EmulatorGuard {
    child: Option<(Child, ChildStdin)>,
}

impl EmulatorGuard {
    /// True when this process started the emulator (and will stop it).
    pub fn started(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for EmulatorGuard {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An emulator started for a test harness.
#[derive(Debug)]
pub struct Emulator {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub guard: EmulatorGuard,
}

/// Returns at once if something answers HTTP at `endpoint`; otherwise starts the emulator
/// there (installing moto with pip once if python cannot import it) and waits until it
/// answers. Only loopback endpoints can be started.
pub fn ensure(endpoint: &str) -> Result<EmulatorGuard, EmulatorError> {
    let addr = socket_addr(endpoint)?;
    if answers(addr) {
        return Ok(EmulatorGuard { child: None });
    }
    if !addr.ip().is_loopback() {
        return Err(EmulatorError::NotLocal(endpoint.to_string()));
    }
    start(endpoint, addr)
}

/// Starts a fresh emulator on a free loopback port (one per test binary is the intended use).
pub fn spawn_on_free_port() -> Result<Emulator, EmulatorError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(EmulatorError::Python)?
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let guard = start(&endpoint, SocketAddr::from(([127, 0, 0, 1], port)))?;
    Ok(Emulator { endpoint, guard })
}

/// The endpoint to use: `AWS_ENDPOINT_URL`, else [`DEFAULT_ENDPOINT`].
pub fn endpoint_from_env() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// True when an HTTP server answers at `endpoint` now.
pub fn is_up(endpoint: &str) -> Result<bool, EmulatorError> {
    Ok(answers(socket_addr(endpoint)?))
}

/// SDK configuration for the emulator at `endpoint`: region from `AWS_REGION` (default
/// `us-east-1`), credentials from the environment when set, else `test`/`test`.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".to_string());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        // The functions' HTTP client (the workspace builds the SDK without one of its own),
        // with the SDK's default connect timeout.
        .http_client(shared::http_client::SdkHttpClient::shared(
            std::time::Duration::from_millis(3_100),
        ))
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region));
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "local",
        ));
    }
    loader.load().await
}

/// `scripts/emulator.py` under the workspace root (`LOCAL_WORKSPACE_ROOT`, else the parent
/// of this crate's directory at compile time).
pub fn script_path() -> PathBuf {
    let root = std::env::var_os(ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    root.join("scripts").join("emulator.py")
}

fn start(endpoint: &str, addr: SocketAddr) -> Result<EmulatorGuard, EmulatorError> {
    let script = script_path();
    if !script.is_file() {
        return Err(EmulatorError::NoScript(script));
    }
    ensure_moto()?;
    let mut child = Command::new("python3")
        .args(["-c", BOOTSTRAP])
        .arg(&script)
        .args(["-H", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(EmulatorError::Python)?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stderr = keep_tail(child.stderr.take().expect("stderr is piped"));
    let mut guard = EmulatorGuard {
        child: Some((child, stdin)),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answers(addr) {
            return Ok(guard);
        }
        let (child, _) = guard.child.as_mut().expect("set above");
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            let stderr = stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
            return Err(EmulatorError::Exited {
                endpoint: endpoint.to_string(),
                status: status.to_string(),
                stderr,
            });
        }
        if Instant::now() > deadline {
            return Err(EmulatorError::Timeout(endpoint.to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Installs moto when python cannot import it (once per process: pip is slow even when idle).
fn ensure_moto() -> Result<(), EmulatorError> {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import moto.server, jsonpath_ng"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .map_err(EmulatorError::Python)
    };
    if importable()? {
        return Ok(());
    }
    tracing::info!("moto is not installed; running python3 -m pip install 'moto[server]'");
    let mut last = String::new();
    // Debian's python refuses plain pip installs (PEP 668); the second form is what works there.
    for extra in [&[][..], &["--break-system-packages"][..]] {
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "moto[server]"])
            .args(extra)
            .output()
            .map_err(EmulatorError::Python)?;
        if out.status.success() && importable()? {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(EmulatorError::Install(last))
}

/// Drains `stream` on a thread (a full pipe would block the emulator) keeping its last lines.
fn keep_tail(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let tail = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&tail);
    let echo = std::env::var_os("LOCAL_EMULATOR_LOG").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[emulator] {line}");
            }
            if let Ok(mut tail) = sink.lock() {
                if tail.len() == KEPT_LINES {
                    tail.remove(0);
                }
                tail.push(line);
            }
        }
    });
    tail
}

/// True when an HTTP server answers at `addr` (any status: moto answers 404 on `/`).
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// `http://host:port[/...]` → a socket address.
fn socket_addr(endpoint: &str) -> Result<SocketAddr, EmulatorError> {
    let bad = || EmulatorError::BadEndpoint(endpoint.to_string());
    let rest = endpoint.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()
        .map_err(|_| bad())?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            socket_addr("http://127.0.0.1:4566").unwrap(),
            "127.0.0.1:4566".parse().unwrap()
        );
        assert_eq!(socket_addr("http://localhost:5000/").unwrap().port(), 5000);
        assert!(matches!(
            socket_addr("https://x:1"),
            Err(EmulatorError::BadEndpoint(_))
        ));
        assert!(matches!(
            socket_addr("http://"),
            Err(EmulatorError::BadEndpoint(_))
        ));
    }

    #[test]
    fn finds_the_launcher_script() {
        assert!(script_path().is_file(), "{}", script_path().display());
    }

    #[test]
    fn starts_answers_and_stops() {
        let emulator = spawn_on_free_port().expect("moto starts");
        assert!(emulator.guard.started());
        let addr = socket_addr(&emulator.endpoint).unwrap();
        assert!(answers(addr));
        // Something answers now, so `ensure` reuses it and owns nothing.
        assert!(!ensure(&emulator.endpoint).unwrap().started());
        drop(emulator);
        assert!(!answers(addr), "the emulator stops with its guard");
    }
}
