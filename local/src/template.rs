//! Reads a SAM `template.yaml` into the few things the local runner needs.
//!
//! CloudFormation's short-form tags (`!Ref`, `!GetAtt`, `!Sub`, ...) are rewritten into their
//! long forms (`{"Ref": ..}`, `{"Fn::GetAtt": [..]}`, ...) while loading, so every later stage
//! sees one representation: a [`serde_json::Value`] tree in which intrinsic functions are
//! single-key objects. Resolution of those intrinsics belongs to [`crate::provision`], because
//! their values (queue URLs, ARNs) only exist once the resources do. [`auth`] reads who may
//! call each route.

mod auth;

pub use auth::{Access, AuthorizerId, IMPLICIT_API, JwtAuthorizer};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use serde_yaml::value::TaggedValue;

/// Lambda's default function timeout when neither the function nor `Globals` sets one.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3;
/// Lambda's default memory size when neither the function nor `Globals` sets one.
pub const DEFAULT_MEMORY_MB: u64 = 128;
/// Lambda's default SQS batch size.
pub const DEFAULT_SQS_BATCH_SIZE: u32 = 10;

/// Why a template could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file could not be read at all.
    #[error("cannot read template {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{path}: not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    /// The YAML is valid but is not a template this runner understands.
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// A template parameter: only its default matters locally (no overrides are passed).
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// `Default`, stringified (CloudFormation parameters are strings).
    pub default: Option<String>,
}

/// One resource of the template, properties still unresolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub logical_id: String,
    /// CloudFormation type, e.g. `AWS::SQS::Queue`.
    pub kind: String,
    /// `Properties`, an object (empty when absent).
    pub properties: Value,
}

/// An `HttpApi` event of a function: one route.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRoute {
    /// Name of the event in the function's `Events` map.
    pub event: String,
    /// Upper-case method, or `ANY`.
    pub method: String,
    /// Path with `{param}` and `{proxy+}` placeholders, e.g. `/agents/{agentId}`.
    pub path: String,
    /// Who may call it (its API's default authorizer applied).
    pub access: Access,
}

/// An `SQS` event source of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsSource {
    /// Name of the event in the function's `Events` map.
    pub event: String,
    /// The `Queue` expression (usually `{"Fn::GetAtt": [Queue, "Arn"]}`), resolved at provision.
    pub queue: Value,
    pub batch_size: u32,
    pub max_batching_window_secs: u32,
    /// True when `FunctionResponseTypes` contains `ReportBatchItemFailures`.
    pub report_batch_item_failures: bool,
}

/// Which EventBridge service runs a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// `Type: Schedule`: an EventBridge rule; the function gets a Scheduled Event.
    Rule,
    /// `Type: ScheduleV2`: an EventBridge Scheduler schedule; the function gets its `Input`.
    Scheduler,
}

/// A `Schedule` or `ScheduleV2` event of a function ([`crate::scheduler`] runs it).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSource {
    /// Name of the event in the function's `Events` map.
    pub event: String,
    pub kind: ScheduleKind,
    /// `Schedule` (a rule) or `ScheduleExpression` (a schedule): `rate(...)` or `cron(...)`,
    /// checked here when written as text, else an expression resolved (and checked) at start.
    pub expression: Value,
    /// `Input`: JSON text (or an expression giving it) sent instead of the default payload.
    pub input: Option<Value>,
    /// False for `Enabled: false` or `State: DISABLED`.
    pub enabled: bool,
    /// `Name`, unresolved, when set.
    pub name: Option<Value>,
    /// `ScheduleExpressionTimezone` (a schedule's), when set.
    pub timezone: Option<String>,
}

/// An `AWS::Serverless::Function` with `Globals.Function` already merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub logical_id: String,
    /// Name of the cargo binary (`Metadata.BuildProperties.Binary`).
    pub binary: String,
    /// `FunctionName` when the template sets one (an expression), else `None`.
    pub function_name: Option<Value>,
    /// `Handler` (`bootstrap` for custom runtimes), passed as `_HANDLER`.
    pub handler: String,
    pub timeout_secs: u64,
    pub memory_mb: u64,
    /// `Globals` variables overlaid by the function's own; values unresolved.
    pub environment: BTreeMap<String, Value>,
    pub routes: Vec<HttpRoute>,
    pub sqs_sources: Vec<SqsSource>,
    pub schedules: Vec<ScheduleSource>,
}

/// A loaded template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub parameters: BTreeMap<String, Parameter>,
    /// Every resource, by logical id (functions included).
    pub resources: BTreeMap<String, Resource>,
    /// Every `AWS::Serverless::Function`, by logical id.
    pub functions: BTreeMap<String, Function>,
    /// Every JWT authorizer of every HTTP API, issuer and audience unresolved.
    pub authorizers: BTreeMap<AuthorizerId, JwtAuthorizer>,
}

impl Template {
    /// Reads and parses `path`. Errors name the file and what is wrong; never panics.
    pub fn load(path: impl AsRef<Path>) -> Result<Template, TemplateError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Template::parse(&text, path)
    }

    /// Parses template text; `path` is only used in error messages.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Template, TemplateError> {
        let path = path.as_ref().to_path_buf();
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|source| TemplateError::Yaml {
                path: path.clone(),
                source,
            })?;
        let invalid = |what: String| TemplateError::Invalid {
            path: path.clone(),
            what,
        };
        let root = to_json(yaml).map_err(invalid)?;
        build(&root, path.clone()).map_err(invalid)
    }

    /// The type of resource `logical_id`, if it exists.
    pub fn kind_of(&self, logical_id: &str) -> Option<&str> {
        self.resources.get(logical_id).map(|r| r.kind.as_str())
    }
}

/// Converts YAML to JSON, rewriting short-form intrinsic tags into their long forms.
fn to_json(yaml: serde_yaml::Value) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(&n).map_err(|e| format!("bad number {n}: {e}"))?,
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => {
            Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => short_form(*tagged)?,
    })
}

/// `!Name arg` → `{"Fn::Name": arg}` (`!Ref` → `Ref`, `!Condition` → `Condition`);
/// `!GetAtt A.B` becomes `["A", "B"]` like its long form.
fn short_form(tagged: TaggedValue) -> Result<Value, String> {
    let tag = tagged.tag.to_string();
    let name = tag.trim_start_matches('!');
    let arg = to_json(tagged.value)?;
    let (key, arg) = match name {
        "Ref" | "Condition" => (name.to_string(), arg),
        "GetAtt" => {
            let arg = match arg {
                Value::String(s) => match s.split_once('.') {
                    Some((res, att)) => Value::Array(vec![res.into(), att.into()]),
                    None => {
                        return Err(format!(
                            "!GetAtt {s:?} is not of the form Resource.Attribute"
                        ));
                    }
                },
                other => other,
            };
            ("Fn::GetAtt".to_string(), arg)
        }
        other => (format!("Fn::{other}"), arg),
    };
    let mut map = Map::new();
    map.insert(key, arg);
    Ok(Value::Object(map))
}

fn build(root: &Value, path: PathBuf) -> Result<Template, String> {
    let root = root.as_object().ok_or("the document is not a mapping")?;
    let parameters = match root.get("Parameters") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(params)) => params
            .iter()
            .map(|(name, p)| {
                let default = p.get("Default").map(scalar_string).transpose();
                default
                    .map(|default| (name.clone(), Parameter { default }))
                    .map_err(|e| format!("Parameters.{name}.Default: {e}"))
            })
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("Parameters is not a mapping".into()),
    };
    let all_globals = root.get("Globals").cloned().unwrap_or(Value::Null);
    let globals = all_globals.get("Function").cloned().unwrap_or(Value::Null);
    let resources_map = match root.get("Resources") {
        Some(Value::Object(r)) if !r.is_empty() => r,
        Some(_) => return Err("Resources must be a non-empty mapping".into()),
        None => return Err("no Resources section".into()),
    };
    let apis = auth::Apis::read(resources_map, &all_globals)?;
    let mut resources = BTreeMap::new();
    let mut functions = BTreeMap::new();
    for (id, res) in resources_map {
        let kind = res
            .get("Type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("resource {id} has no Type"))?;
        let properties = match res.get("Properties") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(format!("resource {id}: Properties is not a mapping")),
        };
        if kind == "AWS::Serverless::Function" {
            let f = function(id, res, &properties, &globals, &apis)
                .map_err(|e| format!("function {id}: {e}"))?;
            functions.insert(id.clone(), f);
        }
        resources.insert(
            id.clone(),
            Resource {
                logical_id: id.clone(),
                kind: kind.to_string(),
                properties,
            },
        );
    }
    Ok(Template {
        path,
        parameters,
        resources,
        functions,
        authorizers: apis.jwt_authorizers(),
    })
}

fn function(
    id: &str,
    res: &Value,
    props: &Value,
    globals: &Value,
    apis: &auth::Apis,
) -> Result<Function, String> {
    let binary = res
        .pointer("/Metadata/BuildProperties/Binary")
        .and_then(Value::as_str)
        .ok_or("Metadata.BuildProperties.Binary (the cargo binary name) is missing")?
        .to_string();
    let setting = |key: &str| props.get(key).or_else(|| globals.get(key));
    let number = |key: &str, default: u64| -> Result<u64, String> {
        match setting(key) {
            None => Ok(default),
            Some(v) => as_u64(v).ok_or_else(|| format!("{key} is not a positive integer: {v}")),
        }
    };
    let mut environment = BTreeMap::new();
    for source in [globals, props] {
        match source.pointer("/Environment/Variables") {
            None | Some(Value::Null) => {}
            Some(Value::Object(vars)) => {
                environment.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())))
            }
            Some(_) => return Err("Environment.Variables is not a mapping".into()),
        }
    }
    let mut routes = Vec::new();
    let mut sqs_sources = Vec::new();
    let mut schedules = Vec::new();
    if let Some(events) = props.get("Events") {
        let events = events.as_object().ok_or("Events is not a mapping")?;
        for (name, event) in events {
            let ep = event.get("Properties").cloned().unwrap_or(Value::Null);
            match event.get("Type").and_then(Value::as_str) {
                Some("HttpApi") => routes.push(http_route(name, &ep, apis)?),
                Some("SQS") => sqs_sources.push(sqs_source(name, &ep)?),
                Some("Schedule") => schedules.push(schedule_source(name, &ep, ScheduleKind::Rule)?),
                Some("ScheduleV2") => {
                    schedules.push(schedule_source(name, &ep, ScheduleKind::Scheduler)?)
                }
                Some(other) => {
                    tracing::warn!(
                        function = id,
                        event = name,
                        "event type {other} is not run locally"
                    )
                }
                None => return Err(format!("event {name} has no Type")),
            }
        }
    }
    Ok(Function {
        logical_id: id.to_string(),
        binary,
        function_name: props.get("FunctionName").cloned(),
        handler: setting("Handler")
            .and_then(Value::as_str)
            .unwrap_or("bootstrap")
            .to_string(),
        timeout_secs: number("Timeout", DEFAULT_TIMEOUT_SECS)?,
        memory_mb: number("MemorySize", DEFAULT_MEMORY_MB)?,
        environment,
        routes,
        sqs_sources,
        schedules,
    })
}

/// An `HttpApi` event without `Method`/`Path` is the API's `$default` catch-all (`ANY /{proxy+}`).
fn http_route(name: &str, props: &Value, apis: &auth::Apis) -> Result<HttpRoute, String> {
    let field = |key: &str, default: &str| -> Result<String, String> {
        match props.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(format!("event {name}: {key} must be a string, got {v}")),
        }
    };
    let method = field("Method", "ANY")?.to_ascii_uppercase();
    let path = field("Path", "/{proxy+}")?;
    if !path.starts_with('/') {
        return Err(format!("event {name}: Path {path:?} must start with '/'"));
    }
    let access = apis
        .access(props)
        .map_err(|e| format!("event {name}: {e}"))?;
    Ok(HttpRoute {
        event: name.to_string(),
        method,
        path,
        access,
    })
}

fn sqs_source(name: &str, props: &Value) -> Result<SqsSource, String> {
    let queue = props
        .get("Queue")
        .cloned()
        .ok_or_else(|| format!("event {name}: SQS event without Queue"))?;
    let small = |key: &str, default: u32| -> Result<u32, String> {
        match props.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => as_u64(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("event {name}: {key} is not a small integer: {v}")),
        }
    };
    let batch_size = small("BatchSize", DEFAULT_SQS_BATCH_SIZE)?;
    if batch_size == 0 {
        return Err(format!("event {name}: BatchSize must be at least 1"));
    }
    let types = props
        .get("FunctionResponseTypes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(SqsSource {
        event: name.to_string(),
        queue,
        batch_size,
        max_batching_window_secs: small("MaximumBatchingWindowInSeconds", 0)?,
        report_batch_item_failures: types.iter().any(|t| t == "ReportBatchItemFailures"),
    })
}

/// A `Schedule` (`Schedule`, `Input`, `Enabled` or `State`, `Name`) or `ScheduleV2`
/// (`ScheduleExpression`, `Input`, `State`, `Name`, `ScheduleExpressionTimezone`) event.
fn schedule_source(
    name: &str,
    props: &Value,
    kind: ScheduleKind,
) -> Result<ScheduleSource, String> {
    let bad = |why: String| format!("event {name}: {why}");
    let key = match kind {
        ScheduleKind::Rule => "Schedule",
        ScheduleKind::Scheduler => "ScheduleExpression",
    };
    let expression = props
        .get(key)
        .filter(|v| !v.is_null())
        .cloned()
        .ok_or_else(|| bad(format!("{key} is missing")))?;
    if let Value::String(text) = &expression {
        crate::scheduler::Expression::parse(text).map_err(bad)?;
    }
    let input = match props.get("Input") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            serde_json::from_str::<Value>(text)
                .map_err(|e| bad(format!("Input is not JSON text: {e}")))?;
            Some(Value::String(text.clone()))
        }
        Some(v) if is_intrinsic(v) => Some(v.clone()),
        Some(v) => return Err(bad(format!("Input must be JSON text (a string), got {v}"))),
    };
    let flag = |key: &str| -> Result<Option<bool>, String> {
        match props.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(bad(format!("{key} must be true or false, got {v}"))),
        }
    };
    let state = match props.get("State") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "ENABLED" => Some(true),
        Some(Value::String(s)) if s == "DISABLED" => Some(false),
        Some(Value::String(s))
            if kind == ScheduleKind::Rule
                && s == "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS" =>
        {
            Some(true)
        }
        Some(v) => return Err(bad(format!("State must be ENABLED or DISABLED, got {v}"))),
    };
    let enabled = match (kind, flag("Enabled")?, state) {
        (ScheduleKind::Rule, Some(_), Some(_)) => {
            return Err(bad("set Enabled or State, not both".into()));
        }
        (ScheduleKind::Rule, Some(enabled), None) => enabled,
        (_, _, state) => state.unwrap_or(true),
    };
    let timezone = match props.get("ScheduleExpressionTimezone") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(scalar_string(v).map_err(|e| bad(format!("ScheduleExpressionTimezone: {e}")))?)
        }
    };
    Ok(ScheduleSource {
        event: name.to_string(),
        kind,
        expression,
        input,
        enabled,
        name: props.get("Name").filter(|v| !v.is_null()).cloned(),
        timezone,
    })
}

/// `{"Ref": ..}` or `{"Fn::…": ..}`: an intrinsic function, resolved at provision.
fn is_intrinsic(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.keys().all(|k| k == "Ref" || k.starts_with("Fn::")))
}

/// Integers may be written as numbers or numeric strings in templates.
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A scalar as CloudFormation sees it: a string.
fn scalar_string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a scalar, got {other}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn real_template() -> Template {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        Template::load(path).expect("the repository's template.yaml loads")
    }

    #[test]
    fn loads_the_real_template() {
        let t = real_template();
        assert_eq!(t.parameters["LogLevel"].default.as_deref(), Some("info"));
        assert_eq!(t.kind_of("AgentsTable"), Some("AWS::DynamoDB::Table"));
        assert_eq!(t.kind_of("HttpApi"), Some("AWS::Serverless::HttpApi"));

        let api = &t.functions["AgentsApiFunction"];
        assert_eq!(api.binary, "agents-api");
        assert_eq!(api.handler, "bootstrap");
        assert_eq!(api.timeout_secs, 10);
        // API functions 256 MB (Globals), workers 128 (docs/ARCHITECTURE.md, "MemorySize and
        // the first request").
        assert_eq!(api.memory_mb, 256);
        assert_eq!(t.functions["AgentsWorkerFunction"].memory_mb, 128);
        assert_eq!(api.environment["RUST_LOG"], json!({"Ref": "LogLevel"}));
        assert_eq!(
            api.environment["EVENT_BUS_NAME"],
            json!({"Ref": "EventBus"})
        );
        assert_eq!(api.environment["TABLE_NAME"], json!({"Ref": "AgentsTable"}));
        let route = api
            .routes
            .iter()
            .find(|r| r.event == "RegisterAgent")
            .unwrap();
        assert_eq!(
            (route.method.as_str(), route.path.as_str()),
            ("PUT", "/agents/{agentId}")
        );
        assert_eq!(api.routes.len(), 6);
        assert!(api.sqs_sources.is_empty());

        let worker = &t.functions["AgentsWorkerFunction"];
        let queues: Vec<_> = worker.sqs_sources.iter().map(|s| &s.queue).collect();
        assert_eq!(
            queues,
            [
                &json!({"Fn::GetAtt": ["AgentsCommandQueue", "Arn"]}),
                &json!({"Fn::GetAtt": ["AgentsQueue", "Arn"]})
            ]
        );
        let src = &worker.sqs_sources[1];
        assert_eq!((src.batch_size, src.max_batching_window_secs), (10, 0));
        assert!(src.report_batch_item_failures);
    }

    #[test]
    fn short_and_long_forms_are_the_same() {
        let short = "Resources:\n  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      A: !Ref X\n      B: !GetAtt Y.Arn\n      C: !Sub 'x-${Y}'\n      D: !Sub ['${a}', {a: !Ref Z}]\n      E: !Join ['-', [a, !Ref X]]\n      F: !GetAtt [Y, Arn]\n";
        let long = "Resources:\n  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      A: {Ref: X}\n      B: {Fn::GetAtt: [Y, Arn]}\n      C: {Fn::Sub: 'x-${Y}'}\n      D: {Fn::Sub: ['${a}', {a: {Ref: Z}}]}\n      E: {Fn::Join: ['-', [a, {Ref: X}]]}\n      F: {Fn::GetAtt: [Y, Arn]}\n";
        let a = Template::parse(short, "short.yaml").unwrap();
        let b = Template::parse(long, "long.yaml").unwrap();
        assert_eq!(a.resources, b.resources);
    }

    #[test]
    fn defaults_and_overrides() {
        let text = "Globals:\n  Function:\n    Timeout: 5\n    Environment:\n      Variables: {A: g, B: g}\nResources:\n  F:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: f}}\n    Properties:\n      MemorySize: 256\n      Environment:\n        Variables: {B: f}\n      Events:\n        Q:\n          Type: SQS\n          Properties: {Queue: arn}\n        Any:\n          Type: HttpApi\n";
        let t = Template::parse(text, "t.yaml").unwrap();
        let f = &t.functions["F"];
        assert_eq!((f.timeout_secs, f.memory_mb), (5, 256));
        assert_eq!(f.environment["A"], "g");
        assert_eq!(f.environment["B"], "f");
        let q = &f.sqs_sources[0];
        assert_eq!((q.batch_size, q.max_batching_window_secs), (10, 0));
        assert!(!q.report_batch_item_failures);
        assert_eq!(f.routes[0].method, "ANY");
        assert_eq!(f.routes[0].path, "/{proxy+}");
    }

    #[test]
    fn schedule_events_are_read_and_checked() {
        let sweeper = &real_template().functions["ConversationsSweeperFunction"];
        assert_eq!(sweeper.binary, "conversations-sweeper");
        let sweep = &sweeper.schedules[0];
        assert_eq!(
            (
                sweep.event.as_str(),
                sweep.kind,
                &sweep.expression,
                sweep.enabled
            ),
            ("Sweep", ScheduleKind::Rule, &json!("rate(1 minute)"), true)
        );

        let head = "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: f}}\n    Properties:\n      Events:\n        E:\n";
        let ok = format!(
            "{head}          Type: ScheduleV2\n          Properties: {{ScheduleExpression: cron(0 12 * * ? *), State: DISABLED, Input: '{{\"a\": 1}}', ScheduleExpressionTimezone: UTC}}\n"
        );
        let t = Template::parse(&ok, "t.yaml").unwrap();
        let e = &t.functions["F"].schedules[0];
        assert_eq!(e.kind, ScheduleKind::Scheduler);
        assert!(!e.enabled);
        assert_eq!(e.input, Some(json!("{\"a\": 1}")));
        assert_eq!(e.timezone.as_deref(), Some("UTC"));

        let cases = [
            (
                "Type: Schedule\n          Properties: {Schedule: rate(5 minute)}",
                "event E: rate(5 minute): the unit must be plural",
            ),
            (
                "Type: Schedule\n          Properties: {Schedule: cron(0 12 * * *)}",
                "event E: cron(0 12 * * *): a cron has 6 fields",
            ),
            (
                "Type: Schedule\n          Properties: {Input: '{}'}",
                "event E: Schedule is missing",
            ),
            (
                "Type: ScheduleV2\n          Properties: {Schedule: rate(1 day)}",
                "event E: ScheduleExpression is missing",
            ),
            (
                "Type: Schedule\n          Properties: {Schedule: rate(1 day), Input: 'not json'}",
                "event E: Input is not JSON text",
            ),
            (
                "Type: Schedule\n          Properties: {Schedule: rate(1 day), Input: {a: 1}}",
                "Input must be JSON text",
            ),
            (
                "Type: Schedule\n          Properties: {Schedule: rate(1 day), Enabled: false, State: DISABLED}",
                "set Enabled or State, not both",
            ),
            (
                "Type: ScheduleV2\n          Properties: {ScheduleExpression: rate(1 day), State: PAUSED}",
                "State must be ENABLED or DISABLED",
            ),
        ];
        for (event, expected) in cases {
            let err = Template::parse(&format!("{head}          {event}\n"), "bad.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
            assert!(err.starts_with("bad.yaml: function F: event E: "), "{err}");
        }
    }

    #[test]
    fn malformed_templates_are_clear_errors() {
        let cases = [
            ("a: [unclosed", "not valid YAML"),
            ("- just\n- a list\n", "not a mapping"),
            ("Parameters: {}\n", "no Resources"),
            (
                "Resources:\n  X: {Properties: {}}\n",
                "resource X has no Type",
            ),
            (
                "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties: {}\n",
                "function F: Metadata.BuildProperties.Binary",
            ),
            (
                "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: f}}\n    Properties: {Timeout: soon}\n",
                "Timeout is not a positive integer",
            ),
            (
                "Resources:\n  X:\n    Type: T\n    Properties: {A: !GetAtt nodot}\n",
                "Resource.Attribute",
            ),
        ];
        for (text, expected) in cases {
            let err = Template::parse(text, "bad.yaml").unwrap_err().to_string();
            assert!(err.starts_with("bad.yaml: "), "{err}");
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
        let missing = Template::load("/nonexistent/template.yaml").unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("cannot read template /nonexistent/template.yaml")
        );
    }
}
