//! Command line: `local dev` runs the whole template, `local provision` only creates its
//! resources, `local token` prints a dev JWT for its authorizer, `local diagram` prints its
//! wiring as Graphviz DOT ([`crate::diagram`]). Every failure is a
//! [`CliError`] printed as one clear line; the binary maps it to a non-zero exit code.

mod dev;
mod reload;
mod token;

pub use dev::EXIT_ON_STDIN_EOF_ENV;

use std::path::PathBuf;

use crate::auth::Role;
use crate::provision::{DEFAULT_STACK_NAME, ProvisionError, ProvisionOptions};
use crate::template::{Template, TemplateError};
use crate::{emulator, provision};

const USAGE: &str = "usage:
  local dev [--template template.yaml] [--port 3000] [--release] [--no-build] [--no-watch]
            [--stack cqrs-local] [--lambda-limits] [--tls]
      hot reload is on: a change to the workspace's sources rebuilds and swaps the functions
      whose binary changed, a change to the template re-provisions and swaps routes, pollers
      and functions; --no-watch turns it off (with --no-build only the template is watched)
      --lambda-limits: each instance in cgroups of its own, with Lambda's CPU share
      (MemorySize/1769 of a CPU, after init) and MemorySize as its memory limit (needs root or
      a delegated cgroup); --tls: the functions reach the emulator through an HTTPS front
      with a local CA (AWS_ENDPOINT_URL=https://127.0.0.1:<port>, AWS_CA_BUNDLE)
  local provision [--template template.yaml] [--port 3000] [--stack cqrs-local]
  local token --role agent|supervisor|trader|operator [--role ...] [--accounts 'ACC-1 ACC-2']
              [--sub subject] [--ttl seconds] [--template template.yaml]
  local diagram [--template template.yaml]    (Graphviz DOT on stdout)

environment: AWS_ENDPOINT_URL (emulator, default http://127.0.0.1:4566), PORT,
LOCAL_MAX_INSTANCES (instances per function, default 4), LOCAL_RETRY_DELAY_SECONDS,
LOCAL_EXIT_ON_STDIN_EOF (also stop when stdin closes; for harnesses that pipe it),
LOCAL_AUTH_DIR (dev JWT key pair, default .dev/auth/ beside the template),
LOCAL_LAMBDA_LIMITS=1 (as --lambda-limits), LOCAL_LAMBDA_INIT_BURST=0 (the CPU share from the
process's start, init included)";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub command: Command,
    pub template: PathBuf,
    pub port: u16,
    pub release: bool,
    pub build: bool,
    /// `local dev` hot reload (on unless `--no-watch`).
    pub watch: bool,
    /// `local dev --lambda-limits`: Lambda's CPU share and memory limit per instance
    /// (`crate::runtime::limits`); also on with `LOCAL_LAMBDA_LIMITS=1`.
    pub lambda_limits: bool,
    /// `local dev --tls`: the functions reach the emulator over HTTPS ([`crate::tls`]).
    pub tls: bool,
    pub stack: String,
    /// What `local token` mints (empty for the other commands).
    pub token: TokenArgs,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    Dev,
    Provision,
    Token,
    /// Print the template's wiring as Graphviz DOT.
    Diagram,
}

/// The options of `local token`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenArgs {
    /// `--role`, repeatable, each a space- or comma-separated list; at least one.
    pub roles: Vec<Role>,
    /// `--accounts`, the same way: the trader's accounts.
    pub accounts: Vec<String>,
    /// `--sub`: the subject instead of `dev-<first role>`.
    pub subject: Option<String>,
    /// `--ttl`: seconds of validity instead of 12 hours.
    pub ttl_secs: Option<i64>,
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
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
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
    /// Parses the arguments after the program name (with `lexopt`: `--port 4000` or
    /// `--port=4000`). `PORT` is the default of `--port`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, CliError> {
        use lexopt::prelude::*;
        let usage = |e: lexopt::Error| CliError::Usage(e.to_string());
        let mut parser = lexopt::Parser::from_args(args);
        let command = match parser.next().map_err(usage)? {
            Some(Value(v)) if v == "dev" => Command::Dev,
            Some(Value(v)) if v == "provision" => Command::Provision,
            Some(Value(v)) if v == "token" => Command::Token,
            Some(Value(v)) if v == "diagram" => Command::Diagram,
            Some(Value(other)) => {
                return Err(CliError::Usage(format!("unknown command {other:?}")));
            }
            _ => return Err(CliError::Usage("no command given".into())),
        };
        let mut parsed = Args {
            command,
            template: PathBuf::from("template.yaml"),
            port: match std::env::var("PORT").ok() {
                Some(p) => parse_port(&p, "PORT")?,
                None => 3000,
            },
            release: false,
            build: true,
            watch: true,
            lambda_limits: false,
            tls: false,
            stack: DEFAULT_STACK_NAME.to_string(),
            token: TokenArgs::default(),
        };
        let (dev, token) = (command == Command::Dev, command == Command::Token);
        let diagram = command == Command::Diagram;
        while let Some(arg) = parser.next().map_err(usage)? {
            let option = match arg {
                Long(name) => format!("--{name}"),
                Short(c) => format!("-{c}"),
                Value(v) => return Err(CliError::Usage(format!("unexpected argument {v:?}"))),
            };
            let mut value = || -> Result<String, CliError> {
                let missing = || CliError::Usage(format!("{option} needs a value"));
                parser
                    .value()
                    .map_err(|_| missing())?
                    .into_string()
                    .map_err(|_| missing())
            };
            match option.as_str() {
                "--template" => parsed.template = PathBuf::from(value()?),
                "--port" if !diagram => parsed.port = parse_port(&value()?, "--port")?,
                "--stack" if !diagram => parsed.stack = value()?,
                "--release" if dev => parsed.release = true,
                "--no-build" if dev => parsed.build = false,
                "--no-watch" if dev => parsed.watch = false,
                "--lambda-limits" if dev => parsed.lambda_limits = true,
                "--tls" if dev => parsed.tls = true,
                "--role" if token => {
                    for name in words(&value()?) {
                        let role =
                            Role::parse(&name).map_err(|e| CliError::Usage(e.to_string()))?;
                        parsed.token.roles.push(role);
                    }
                }
                "--accounts" if token => parsed.token.accounts.extend(words(&value()?)),
                "--sub" if token => parsed.token.subject = Some(value()?),
                "--ttl" if token => {
                    let text = value()?;
                    let ttl = text.trim().parse().ok().filter(|t| *t > 0).ok_or_else(|| {
                        CliError::Usage(format!(
                            "--ttl {text:?} is not a positive number of seconds"
                        ))
                    })?;
                    parsed.token.ttl_secs = Some(ttl);
                }
                _ => return Err(CliError::Usage(format!("unknown option {option:?}"))),
            }
        }
        if token && parsed.token.roles.is_empty() {
            return Err(CliError::Usage("token needs at least one --role".into()));
        }
        Ok(parsed)
    }
}

/// The words of a space- or comma-separated list.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split([' ', ',', '\t'])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
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
        Command::Token => token::run(&args),
        Command::Diagram => {
            let template = Template::load(&args.template)?;
            print!("{}", crate::diagram::render(&template));
            Ok(())
        }
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
            "--no-watch",
            "--stack",
            "s",
        ])
        .unwrap();
        assert_eq!(a.command, Command::Dev);
        assert_eq!(a.template, PathBuf::from("t.yaml"));
        assert_eq!(
            (a.port, a.release, a.build, a.watch, a.stack.as_str()),
            (4000, true, false, false, "s")
        );
        assert!(
            parse(&["dev"]).unwrap().watch,
            "hot reload is on by default"
        );
        let d = parse(&["dev", "--lambda-limits", "--tls"]).unwrap();
        assert!(d.lambda_limits && d.tls);
        let d = parse(&["dev"]).unwrap();
        assert!(!d.lambda_limits && !d.tls, "both off by default");
        let t = parse(&[
            "token",
            "--role",
            "trader, operator",
            "--role",
            "agent",
            "--accounts",
            "ACC-1 ACC-2",
            "--accounts",
            "ACC-3",
            "--sub",
            "me",
            "--ttl",
            "60",
        ])
        .unwrap();
        assert_eq!(
            t.token,
            TokenArgs {
                roles: vec![Role::Trader, Role::Operator, Role::Agent],
                accounts: vec!["ACC-1".into(), "ACC-2".into(), "ACC-3".into()],
                subject: Some("me".into()),
                ttl_secs: Some(60),
            }
        );
        // POSIX forms too: `--option=value`.
        assert_eq!(parse(&["dev", "--port=4001"]).unwrap().port, 4001);
        let d = parse(&["diagram", "--template", "t.yaml"]).unwrap();
        assert_eq!(
            (d.command, d.template),
            (Command::Diagram, PathBuf::from("t.yaml"))
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
            (&["token"][..], "token needs at least one --role"),
            (&["token", "--role", "admin"][..], "unknown role \"admin\""),
            (
                &["token", "--role", "agent", "--ttl", "-5"][..],
                "--ttl \"-5\" is not a positive",
            ),
            (&["dev", "--role", "agent"][..], "unknown option \"--role\""),
            (
                &["provision", "--no-watch"][..],
                "unknown option \"--no-watch\"",
            ),
            (
                &["provision", "--lambda-limits"][..],
                "unknown option \"--lambda-limits\"",
            ),
            (&["provision", "--tls"][..], "unknown option \"--tls\""),
            (&["diagram", "--port", "1"][..], "unknown option \"--port\""),
            (&["dev", "extra"][..], "unexpected argument \"extra\""),
            (
                &["dev", "--release=yes"][..],
                "unexpected argument for option '--release'",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().starts_with(expected), "{err}");
        }
    }
}
