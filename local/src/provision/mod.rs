//! Creates the template's tables, queues, buses and rules in the emulator.
//!
//! Resources are created in an order found at run time: a resource whose properties refer to
//! one not created yet (e.g. a queue's `RedrivePolicy` naming its DLQ's ARN, which the emulator
//! checks) is set aside and retried after the others, until nothing is left or no progress is
//! made (a cycle, reported as an error). Every creation is idempotent, so provisioning an
//! emulator that already holds the stack reuses what is there.

mod dynamodb;
mod events;
mod sqs;
mod stack;

use aws_smithy_runtime_api::client::result::SdkError;
use serde_json::Value;

pub use stack::{ACCOUNT_ID, FunctionInfo, NamedArn, QueueInfo, Stack, TableInfo, Unresolved};

use crate::template::{Resource, Template};

/// Default stack name (`AWS::StackName`, prefix of generated physical names).
pub const DEFAULT_STACK_NAME: &str = "cqrs-local";
/// Default base URL of the local HTTP API.
pub const DEFAULT_API_BASE_URL: &str = "http://127.0.0.1:3000";

/// Resource types that exist only on AWS (permissions, alarms, the API itself, functions) and
/// are skipped silently: the runner plays their part or they have no local effect.
const SKIPPED_TYPES: &[&str] = &[
    "AWS::SQS::QueuePolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::Serverless::HttpApi",
    "AWS::Serverless::Api",
    "AWS::Serverless::Function",
    "AWS::Lambda::Permission",
    "AWS::Lambda::EventSourceMapping",
    "AWS::Logs::LogGroup",
];

/// Settings of a provisioning run.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// `AWS::StackName`; physical names default to `{stack_name}-{LogicalId}`.
    pub stack_name: String,
    /// What references to the template's `AWS::Serverless::HttpApi` resolve to.
    pub api_base_url: String,
}

impl Default for ProvisionOptions {
    fn default() -> Self {
        ProvisionOptions {
            stack_name: DEFAULT_STACK_NAME.to_string(),
            api_base_url: DEFAULT_API_BASE_URL.to_string(),
        }
    }
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A property or intrinsic function of the resource cannot be used locally.
    #[error("{logical_id}: {message}")]
    Invalid { logical_id: String, message: String },
    /// The emulator refused a call.
    #[error("{logical_id}: {operation} failed: {message}")]
    Aws {
        logical_id: String,
        operation: &'static str,
        message: String,
    },
    /// Resources wait for each other.
    #[error("cannot order resources: {0}")]
    Cycle(String),
}

/// Outcome of one attempt at a resource.
enum Attempt {
    Done,
    /// The resource refers to this not-yet-created one; retry later.
    Wait(String),
}

/// Creates every supported resource of `template` in the emulator `sdk` points at and returns
/// their physical names. Idempotent: existing resources are reused (and queues' attributes
/// updated). Unknown resource types become warnings in [`Stack::warnings`], not errors.
pub async fn provision(
    template: &Template,
    sdk: &aws_config::SdkConfig,
    opts: &ProvisionOptions,
) -> Result<Stack, ProvisionError> {
    let region = sdk.region().map_or("us-east-1", |r| r.as_ref());
    let mut stack = Stack::new(template, &opts.stack_name, region, &opts.api_base_url);
    let clients = Clients {
        dynamodb: aws_sdk_dynamodb::Client::new(sdk),
        sqs: aws_sdk_sqs::Client::new(sdk),
        events: aws_sdk_eventbridge::Client::new(sdk),
    };
    name_functions(template, &mut stack)?;

    let mut pending: Vec<&Resource> = Vec::new();
    for r in template.resources.values() {
        if is_created(&r.kind) {
            pending.push(r);
        } else if !SKIPPED_TYPES.contains(&r.kind.as_str()) && !r.kind.starts_with("AWS::IAM::") {
            let msg = format!(
                "{}: type {} is not supported locally; skipped",
                r.logical_id, r.kind
            );
            tracing::warn!("{msg}");
            stack.warnings.push(msg);
        }
    }
    while !pending.is_empty() {
        let before = pending.len();
        let mut waiting = Vec::new();
        for r in std::mem::take(&mut pending) {
            if let Attempt::Wait(dep) = create(&clients, &mut stack, r).await? {
                waiting.push((r, dep));
            }
        }
        if waiting.len() == before {
            let list: Vec<String> = waiting
                .iter()
                .map(|(r, dep)| format!("{} waits for {dep}", r.logical_id))
                .collect();
            return Err(ProvisionError::Cycle(list.join(", ")));
        }
        pending = waiting.into_iter().map(|(r, _)| r).collect();
    }
    resolve_function_envs(template, &mut stack)?;
    Ok(stack)
}

fn is_created(kind: &str) -> bool {
    matches!(
        kind,
        "AWS::DynamoDB::Table"
            | "AWS::Serverless::SimpleTable"
            | "AWS::SQS::Queue"
            | "AWS::Events::EventBus"
            | "AWS::Events::Rule"
    )
}

pub(crate) struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub events: aws_sdk_eventbridge::Client,
}

async fn create(c: &Clients, stack: &mut Stack, r: &Resource) -> Result<Attempt, ProvisionError> {
    let props = match stack.resolve(&r.properties) {
        Ok(p) => p,
        Err(Unresolved::Wait(dep)) => return Ok(Attempt::Wait(dep)),
        Err(Unresolved::Fatal(message)) => return Err(invalid(&r.logical_id, message)),
    };
    match r.kind.as_str() {
        "AWS::DynamoDB::Table" => dynamodb::create_table(c, stack, &r.logical_id, &props).await?,
        "AWS::Serverless::SimpleTable" => {
            dynamodb::create_simple_table(c, stack, &r.logical_id, &props).await?
        }
        "AWS::SQS::Queue" => sqs::create_queue(c, stack, &r.logical_id, &props).await?,
        "AWS::Events::EventBus" => events::create_bus(c, stack, &r.logical_id, &props).await?,
        "AWS::Events::Rule" => events::create_rule(c, stack, &r.logical_id, &props).await?,
        other => unreachable!("is_created admitted {other}"),
    }
    Ok(Attempt::Done)
}

/// Physical names of functions are known before anything is created, so that rules or
/// environments may refer to them.
fn name_functions(template: &Template, stack: &mut Stack) -> Result<(), ProvisionError> {
    for (id, f) in &template.functions {
        let name = match &f.function_name {
            Some(expr) => stack
                .resolve_string(expr)
                .map_err(|e| unresolved(id, "FunctionName", e))?,
            None => format!("{}-{id}", stack.name),
        };
        let arn = format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            stack.region, stack.account_id
        );
        stack.functions.insert(
            id.clone(),
            FunctionInfo {
                name,
                arn,
                env: Default::default(),
            },
        );
    }
    Ok(())
}

fn resolve_function_envs(template: &Template, stack: &mut Stack) -> Result<(), ProvisionError> {
    for (id, f) in &template.functions {
        let mut env = std::collections::BTreeMap::new();
        for (key, expr) in &f.environment {
            let value = stack
                .resolve_string(expr)
                .map_err(|e| unresolved(id, &format!("Environment.Variables.{key}"), e))?;
            env.insert(key.clone(), value);
        }
        if let Some(info) = stack.functions.get_mut(id) {
            info.env = env;
        }
    }
    Ok(())
}

fn unresolved(logical_id: &str, what: &str, e: Unresolved) -> ProvisionError {
    let message = match e {
        Unresolved::Wait(dep) => format!("{what} refers to {dep}, which is not created locally"),
        Unresolved::Fatal(msg) => format!("{what}: {msg}"),
    };
    invalid(logical_id, message)
}

pub(crate) fn invalid(logical_id: &str, message: impl Into<String>) -> ProvisionError {
    ProvisionError::Invalid {
        logical_id: logical_id.to_string(),
        message: message.into(),
    }
}

/// The resource's own name property when set, else `{stack}-{LogicalId}` (plus `suffix`).
pub(crate) fn physical_name(
    stack: &Stack,
    logical_id: &str,
    props: &Value,
    key: &str,
    suffix: &str,
) -> String {
    match props.get(key).and_then(Value::as_str) {
        Some(name) => name.to_string(),
        None => format!("{}-{logical_id}{suffix}", stack.name),
    }
}

/// A create call's output, or `None` when the emulator says the resource exists already (the
/// runner provisioning again against an emulator that kept it): the caller then reads the
/// existing one. Any other failure is `operation`'s [`ProvisionError`].
pub(crate) fn created<T, E, R>(
    id: &str,
    operation: &'static str,
    result: Result<T, SdkError<E, R>>,
    exists: impl FnOnce(&E) -> bool,
) -> Result<Option<T>, ProvisionError>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.as_service_error().is_some_and(exists) => Ok(None),
        Err(e) => Err(aws(id, operation, e)),
    }
}

/// An emulator refusal, with the SDK's full error chain as the message.
pub(crate) fn aws<E: std::error::Error>(id: &str, operation: &'static str, e: E) -> ProvisionError {
    ProvisionError::Aws {
        logical_id: id.to_string(),
        operation,
        message: aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator;

    #[tokio::test(flavor = "multi_thread")]
    async fn provisions_the_real_template_twice() {
        let emu = emulator::spawn_on_free_port().expect("emulator");
        let sdk = emulator::sdk_config(&emu.endpoint).await;
        let template = crate::template::tests::real_template();
        let opts = ProvisionOptions::default();
        let first = provision(&template, &sdk, &opts).await.expect("provision");
        // A second run over the same emulator reuses everything.
        let stack = provision(&template, &sdk, &opts).await.expect("idempotent");
        assert_eq!(first.queues, stack.queues);
        assert_eq!(first.tables, stack.tables);

        assert_eq!(
            stack.table_name("AgentsTable"),
            Some("cqrs-local-AgentsTable")
        );
        assert_eq!(stack.bus_name("EventBus"), Some("cqrs-local-bus"));
        assert_eq!(
            stack.queue_arn("AgentsQueue"),
            Some(
                format!(
                    "arn:aws:sqs:{}:123456789012:cqrs-local-AgentsQueue",
                    stack.region
                )
                .as_str()
            )
        );
        assert!(
            stack
                .queue_url("AgentsQueue")
                .unwrap()
                .ends_with("/cqrs-local-AgentsQueue")
        );
        assert_eq!(stack.dlq("AgentsQueue"), Some("AgentsDLQ"));
        assert_eq!(stack.dlq("AgentsDLQ"), None);
        let queue = stack.queue("AgentsQueue").unwrap();
        assert_eq!(
            (queue.visibility_timeout_secs, queue.max_receive_count),
            (60, Some(5))
        );
        assert!(stack.warnings.is_empty(), "{:?}", stack.warnings);

        let env = stack.function_env("AgentsWorkerFunction").unwrap();
        assert_eq!(env["TABLE_NAME"], "cqrs-local-AgentsTable");
        assert_eq!(env["EVENT_BUS_NAME"], "cqrs-local-bus");
        assert_eq!(env["RUST_LOG"], "info");

        // What the emulator now holds matches the template.
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let table = ddb
            .describe_table()
            .table_name("cqrs-local-AgentsTable")
            .send()
            .await
            .unwrap();
        let table = table.table().unwrap();
        assert_eq!(table.key_schema().len(), 2);
        assert_eq!(
            table.global_secondary_indexes()[0].index_name(),
            Some("byState")
        );
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(stack.queue_url("AgentsQueue").unwrap())
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attrs = attrs.attributes().unwrap();
        assert_eq!(
            attrs[&aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout],
            "60"
        );
        let redrive = &attrs[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy];
        assert!(redrive.contains("cqrs-local-AgentsDLQ"), "{redrive}");
        let events = aws_sdk_eventbridge::Client::new(&sdk);
        let targets = events
            .list_targets_by_rule()
            .rule(stack.rule_name("AgentsEventsRule").unwrap())
            .event_bus_name("cqrs-local-bus")
            .send()
            .await
            .unwrap();
        assert_eq!(
            Some(targets.targets()[0].arn()),
            stack.queue_arn("AgentsQueue")
        );
    }

    #[tokio::test]
    async fn unknown_types_are_warnings() {
        // No emulator is needed: nothing here is created.
        let sdk = emulator::sdk_config("http://127.0.0.1:9").await;
        let text =
            "Resources:\n  X:\n    Type: AWS::Made::Up\n  P:\n    Type: AWS::SQS::QueuePolicy\n";
        let t = Template::parse(text, "t.yaml").unwrap();
        let stack = provision(&t, &sdk, &ProvisionOptions::default())
            .await
            .unwrap();
        assert_eq!(
            stack.warnings,
            ["X: type AWS::Made::Up is not supported locally; skipped"]
        );
    }

    #[tokio::test]
    async fn resources_waiting_for_each_other_fail() {
        let sdk = emulator::sdk_config("http://127.0.0.1:9").await;
        let text = "Resources:\n  X:\n    Type: AWS::Made::Up\n  A:\n    Type: AWS::SQS::Queue\n    Properties: {QueueName: !GetAtt B.QueueName}\n  B:\n    Type: AWS::SQS::Queue\n    Properties: {QueueName: !GetAtt A.QueueName}\n";
        let t = Template::parse(text, "t.yaml").unwrap();
        let err = provision(&t, &sdk, &ProvisionOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ProvisionError::Cycle(_)), "{err}");
        assert!(err.to_string().contains("A waits for B"), "{err}");
    }
}
