//! Scaffolding the `local` binary's end-to-end tests share (cli.rs, dashboard.rs, reload.rs):
//! throw-away workspaces, a running `local dev` whose output is collected line by line, raw
//! HTTP/1.1 requests to it, and the queues of the emulator it starts.
//!
//! Every test binary compiles this module on its own and uses only part of it, hence
//! `dead_code` is allowed here.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `local` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_local");

/// A fresh, empty directory `local-{name}-{pid}` in the system's temporary directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("local-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh directory with `template.yaml` and `target/debug/`, holding the stand-in function
/// tests/fixtures/fake_function.py as `target/debug/fake-fn` when `with_binary`.
pub fn workspace(name: &str, template: &str, with_binary: bool) -> PathBuf {
    let dir = scratch_dir(name);
    std::fs::create_dir_all(dir.join("target/debug")).unwrap();
    std::fs::write(dir.join("template.yaml"), template).unwrap();
    if with_binary {
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_function.py");
        std::fs::copy(fake, dir.join("target/debug/fake-fn")).unwrap();
    }
    dir
}

/// `local {args}` run in `dir`, building into `dir/target`, with none of the environment
/// variables that would change what it does from the caller's shell (`PORT`,
/// `LOCAL_AUTH_DIR`, `LOCAL_CHAOS`).
pub fn local(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("PORT")
        .env_remove("LOCAL_AUTH_DIR")
        .env_remove("LOCAL_CHAOS");
    cmd
}

/// Runs `local {args}` in `dir` (see [`local`]), asserts that it exits with status 1, and
/// returns what it wrote to stderr.
pub fn failure(dir: &Path, args: &[&str]) -> String {
    let out = local(dir, args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A TCP port free on 127.0.0.1 when asked.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP answer read off a raw socket.
#[derive(Debug)]
pub struct Answer {
    /// The status code; 0 when the status line is not one.
    pub status: u16,
    /// Status line and headers, lower-cased.
    pub head: String,
    pub body: String,
}

/// One HTTP/1.1 request to `127.0.0.1:port` over a raw socket, with `Connection: close`,
/// `headers` (a `Host: 127.0.0.1:{port}` unless they hold a `Host`) and `Content-Length`;
/// `Err` when the connection or the exchange fails.
pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    head.push_str("Connection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(head.as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok(Answer {
        status: text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// [`try_request`], panicking when the exchange fails.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    try_request(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `GET path`: status and body, or status 0 and the error when the exchange fails.
pub fn get(port: u16, path: &str) -> (u16, String) {
    match try_request(port, "GET", path, &[], "") {
        Ok(a) => (a.status, a.body),
        Err(e) => (0, e.to_string()),
    }
}

/// An SQS client of the emulator at `endpoint`.
pub async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&local::emulator::sdk_config(endpoint).await)
}

/// The URL of the queue `name`.
pub async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string()
}

/// A running `local dev` with an emulator of its own. What it prints (stdout and stderr) is
/// collected line by line and echoed with a `| ` prefix. It runs with
/// `LOCAL_EXIT_ON_STDIN_EOF=1` on a piped stdin held here, so it shuts down, emulator included,
/// when dropped or when the test process exits (a `static` one is never dropped).
pub struct Dev {
    /// The directory it runs in.
    pub dir: PathBuf,
    /// The port of its HTTP API.
    pub port: u16,
    /// The URL of its emulator (`AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// Everything it printed, line by line.
    output: Arc<Mutex<Vec<String>>>,
    stdin: Option<ChildStdin>,
    pub child: Child,
}

impl Dev {
    /// `local dev --port <free port> {args}` in `dir`, its emulator on another free port, with
    /// `env` added; returns once it printed `ready`, and panics if it exits or 180 s pass
    /// first.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Dev {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let port_arg = port.to_string();
        let mut all = vec!["dev", "--port", &port_arg];
        all.extend_from_slice(args);
        let mut child = local(dir, &all)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("LOCAL_EXIT_ON_STDIN_EOF", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    println!("| {line}");
                    output.lock().unwrap().push(line);
                }
            });
        }
        let mut dev = Dev {
            dir: dir.to_path_buf(),
            port,
            endpoint,
            output,
            stdin: child.stdin.take(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while !dev.lines().iter().any(|l| l == "ready") {
            if let Ok(Some(status)) = dev.child.try_wait() {
                panic!("local dev exited ({status}): {:#?}", dev.lines());
            }
            assert!(Instant::now() < deadline, "not ready: {:#?}", dev.lines());
            std::thread::sleep(Duration::from_millis(50));
        }
        dev
    }

    /// [`Dev::start`] `--no-build --stack {stack} {args}` on a fresh [`workspace`] `name`
    /// holding `template` and the stand-in function.
    pub fn fake(
        name: &str,
        template: &str,
        stack: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Dev {
        let dir = workspace(name, template, true);
        let mut all = vec!["--no-build", "--stack", stack];
        all.extend_from_slice(args);
        Dev::start(&dir, &all, env)
    }

    /// Everything printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// How many printed lines contain every one of `parts`.
    pub fn count(&self, parts: &[&str]) -> usize {
        self.output
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Waits until more than `before` printed lines contain every one of `parts` (output is
    /// asynchronous), and returns the one after the first `before`; panics after `timeout`.
    pub fn wait_for_more(&self, parts: &[&str], before: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let matching: Vec<String> = self
                .lines()
                .into_iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .collect();
            if matching.len() > before {
                return matching[before].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {parts:?} within {timeout:?} in {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first printed line containing every one of `parts`, waiting up to `timeout`.
    pub fn wait_for_within(&self, parts: &[&str], timeout: Duration) -> String {
        self.wait_for_more(parts, 0, timeout)
    }

    /// [`Dev::wait_for_within`] 10 s.
    pub fn wait_for(&self, parts: &[&str]) -> String {
        self.wait_for_within(parts, Duration::from_secs(10))
    }

    /// [`Dev::wait_for`] each of `lines`, a line's parts each.
    pub fn wait_for_each(&self, lines: &[&[&str]]) {
        for parts in lines {
            self.wait_for(parts);
        }
    }

    /// Waits up to 10 s until `n` printed lines contain every one of `parts` (a REPORT line
    /// may follow the answer it reports on); returns how many do then.
    pub fn wait_for_count(&self, parts: &[&str], n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count(parts) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.count(parts)
    }

    /// `GET path` on its HTTP API: see [`get`].
    pub fn get(&self, path: &str) -> (u16, String) {
        get(self.port, path)
    }

    /// `POST path` of a JSON `body` on its HTTP API: status and body.
    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        let a = request(
            self.port,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body,
        );
        (a.status, a.body)
    }

    /// An SQS client of its emulator.
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        sqs_client(&self.endpoint).await
    }

    /// Sends it SIGTERM and asserts that it exits cleanly.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }

    /// Closes its stdin and asserts that it then exits cleanly within 60 s.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "local dev exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "local dev did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    /// Closes stdin and gives it 10 s to stop before killing it.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
