//! Command line: `local dev` runs the whole template, `local provision` only creates its
//! resources. Every failure is a [`CliError`] printed as one clear line; the binary maps it to
//! a non-zero exit code.

mod dev;

pub use dev::EXIT_ON_STDIN_EOF_ENV;

use std::path::PathBuf;

use crate::provision::{DEFAULT_STACK_NAME, ProvisionError, ProvisionOptions};
use crate::template::{Template, TemplateError};
use crate::{emulator, provision};

const USAGE: &str = "usage:
  local dev [--template template.yaml] [--port 3000] [--release] [--no-build] [--stack cqrs-local]
  local provision [--template template.yaml] [--port 3000] [--stack cqrs-local]

environment: AWS_ENDPOINT_URL (emulator, default http://127.0.0.1:4566), PORT,
LOCAL_MAX_INSTANCES (instances per function, default 4), LOCAL_RETRY_DELAY_SECONDS,
LOCAL_EXIT_ON_STDIN_EOF (also stop when stdin closes; for harnesses that pipe it)";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub command: Command,
    pub template: PathBuf,
    pub port: u16,
    pub release: bool,
    pub build: bool,
    pub stack: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    Dev,
    Provision,
}

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("port {0} is already in use (choose another with --port or PORT)")]
    PortInUse(u16),
    #[error("cannot listen on 127.0.0.1:{0}: {1}")]
    Listen(u16, std::io::Error),
    #[error("`{0}` failed; fix the build or pass --no-build")]
    Build(String),
    #[error(
        "function binary {binary} not found (function {function}); run cargo build{release} or drop --no-build"
    )]
    MissingBinary {
        function: String,
        binary: PathBuf,
        release: &'static str,
    },
    #[error("emulator: {0}")]
    Emulator(#[from] emulator::EmulatorError),
    #[error(
        "nothing answers at {0}: start the emulator (python3 scripts/emulator.py) or use `local dev`"
    )]
    NoEmulator(String),
    #[error("provisioning failed: {0}")]
    Provision(#[from] ProvisionError),
    #[error("{0}")]
    Config(String),
}

impl CliError {
    /// 2 for a bad command line, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl Args {
    /// Parses the arguments after the program name. `PORT` is the default of `--port`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, CliError> {
        let mut args = args.into_iter();
        let command = match args.next().as_deref() {
            Some("dev") => Command::Dev,
            Some("provision") => Command::Provision,
            Some("-h" | "--help") | None => return Err(CliError::Usage("no command given".into())),
            Some(other) => return Err(CliError::Usage(format!("unknown command {other:?}"))),
        };
        let port_env = std::env::var("PORT").ok();
        let mut parsed = Args {
            command,
            template: PathBuf::from("template.yaml"),
            port: match port_env {
                Some(p) => parse_port(&p, "PORT")?,
                None => 3000,
            },
            release: false,
            build: true,
            stack: DEFAULT_STACK_NAME.to_string(),
        };
        while let Some(flag) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| CliError::Usage(format!("{name} needs a value")))
            };
            match flag.as_str() {
                "--template" => parsed.template = PathBuf::from(value("--template")?),
                "--port" => parsed.port = parse_port(&value("--port")?, "--port")?,
                "--stack" => parsed.stack = value("--stack")?,
                "--release" if command == Command::Dev => parsed.release = true,
                "--no-build" if command == Command::Dev => parsed.build = false,
                other => return Err(CliError::Usage(format!("unknown option {other:?}"))),
            }
        }
        Ok(parsed)
    }
}

fn parse_port(text: &str, what: &str) -> Result<u16, CliError> {
    text.trim()
        .parse()
        .map_err(|_| CliError::Usage(format!("{what} {text:?} is not a port number")))
}

/// Runs the parsed command to completion.
pub async fn run(args: Args) -> Result<(), CliError> {
    match args.command {
        Command::Dev => dev::run(&args).await,
        Command::Provision => provision_only(&args).await,
    }
}

fn provision_options(args: &Args) -> ProvisionOptions {
    ProvisionOptions {
        stack_name: args.stack.clone(),
        api_base_url: format!("http://127.0.0.1:{}", args.port),
    }
}

/// Provisions into an emulator that must already be running, then prints the physical names
/// as JSON (for scripts and tests).
async fn provision_only(args: &Args) -> Result<(), CliError> {
    let template = Template::load(&args.template)?;
    let endpoint = emulator::endpoint_from_env();
    if !emulator::is_up(&endpoint)? {
        return Err(CliError::NoEmulator(endpoint));
    }
    let sdk = emulator::sdk_config(&endpoint).await;
    let stack = provision::provision(&template, &sdk, &provision_options(args)).await?;
    let queues: serde_json::Map<String, serde_json::Value> = stack
        .queues()
        .iter()
        .map(|(id, q)| {
            let v = serde_json::json!({"name": q.name, "url": q.url, "arn": q.arn, "dlq": stack.dlq(id)});
            (id.clone(), v)
        })
        .collect();
    let functions: serde_json::Map<String, serde_json::Value> = template
        .functions
        .keys()
        .filter_map(|id| {
            stack.function(id).map(|f| {
                (
                    id.clone(),
                    serde_json::json!({"name": f.name, "env": f.env}),
                )
            })
        })
        .collect();
    let tables: serde_json::Map<String, serde_json::Value> = template
        .resources
        .keys()
        .filter_map(|id| stack.table_name(id).map(|n| (id.clone(), n.into())))
        .collect();
    let summary = serde_json::json!({
        "stack": stack.name,
        "endpoint": endpoint,
        "tables": tables,
        "queues": queues,
        "functions": functions,
        "warnings": stack.warnings,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, CliError> {
        Args::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let a = parse(&[
            "dev",
            "--template",
            "t.yaml",
            "--port",
            "4000",
            "--release",
            "--no-build",
            "--stack",
            "s",
        ])
        .unwrap();
        assert_eq!(a.command, Command::Dev);
        assert_eq!(a.template, PathBuf::from("t.yaml"));
        assert_eq!(
            (a.port, a.release, a.build, a.stack.as_str()),
            (4000, true, false, "s")
        );
        let p = parse(&["provision"]).unwrap();
        assert_eq!(
            (p.command, p.build, p.stack.as_str()),
            (Command::Provision, true, "cqrs-local")
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        for (args, expected) in [
            (&[][..], "no command given"),
            (&["serve"][..], "unknown command \"serve\""),
            (&["dev", "--port"][..], "--port needs a value"),
            (
                &["dev", "--port", "http"][..],
                "--port \"http\" is not a port number",
            ),
            (&["dev", "--fast"][..], "unknown option \"--fast\""),
            (
                &["provision", "--release"][..],
                "unknown option \"--release\"",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().starts_with(expected), "{err}");
        }
    }
}
