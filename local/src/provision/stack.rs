//! The provisioned stack: physical names of what exists, and the resolver of intrinsic functions
//! (`Ref`, `Fn::GetAtt`, `Fn::Sub`, `Fn::Join`) against it.
//!
//! A reference to a resource that is created locally resolves only once that resource exists
//! (its URL or stream ARN comes from the emulator's answer); until then resolution reports
//! [`Unresolved::Wait`], which is how [`super::provision`] orders creation without a dependency
//! graph. Any string that mentions an `AWS::Serverless::HttpApi` becomes the local API base URL.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::template::Template;

/// The account id moto (and most emulators) use.
pub const ACCOUNT_ID: &str = "123456789012";

/// A DynamoDB table that exists in the emulator.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub name: String,
    pub arn: String,
    pub stream_arn: Option<String>,
}

/// An SQS queue that exists in the emulator.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueInfo {
    pub name: String,
    pub url: String,
    pub arn: String,
    /// `VisibilityTimeout` of the queue (SQS default 30).
    pub visibility_timeout_secs: u32,
    /// Dead-letter target ARN from `RedrivePolicy`.
    pub dlq_arn: Option<String>,
    /// `maxReceiveCount` from `RedrivePolicy`.
    pub max_receive_count: Option<u32>,
}

/// An EventBridge bus or rule that exists in the emulator.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedArn {
    pub name: String,
    pub arn: String,
}

/// A Lambda function as the runner knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionInfo {
    /// Physical name (`FunctionName`, else `{stack}-{LogicalId}`).
    pub name: String,
    pub arn: String,
    /// Template environment with every intrinsic resolved.
    pub env: BTreeMap<String, String>,
}

/// Why an expression did not resolve.
#[derive(Debug, Clone, PartialEq)]
pub enum Unresolved {
    /// It refers to this resource, which is not created yet.
    Wait(String),
    /// It can never resolve locally; the message says why.
    Fatal(String),
}

impl Unresolved {
    /// Why, in one line.
    pub fn describe(&self) -> String {
        match self {
            Unresolved::Wait(res) => format!("refers to {res}, which does not exist yet"),
            Unresolved::Fatal(why) => why.clone(),
        }
    }
}

/// Everything [`super::provision`] created, with the resolver of the template's expressions.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Stack name (`AWS::StackName`).
    pub name: String,
    pub region: String,
    pub account_id: String,
    /// What any reference to an `AWS::Serverless::HttpApi` resolves to.
    pub api_base_url: String,
    /// Non-fatal problems: unknown resource types, settings the emulator refused.
    pub warnings: Vec<String>,
    params: BTreeMap<String, String>,
    kinds: BTreeMap<String, String>,
    pub(crate) tables: BTreeMap<String, TableInfo>,
    pub(crate) queues: BTreeMap<String, QueueInfo>,
    pub(crate) buses: BTreeMap<String, NamedArn>,
    pub(crate) rules: BTreeMap<String, NamedArn>,
    pub(crate) functions: BTreeMap<String, FunctionInfo>,
}

impl Stack {
    /// An empty stack for `template`: parameters take their defaults.
    pub(crate) fn new(template: &Template, name: &str, region: &str, api_base_url: &str) -> Self {
        Stack {
            name: name.to_string(),
            region: region.to_string(),
            account_id: ACCOUNT_ID.to_string(),
            api_base_url: api_base_url.trim_end_matches('/').to_string(),
            warnings: Vec::new(),
            params: template
                .parameters
                .iter()
                .filter_map(|(k, p)| p.default.clone().map(|d| (k.clone(), d)))
                .collect(),
            kinds: template
                .resources
                .iter()
                .map(|(k, r)| (k.clone(), r.kind.clone()))
                .collect(),
            tables: BTreeMap::new(),
            queues: BTreeMap::new(),
            buses: BTreeMap::new(),
            rules: BTreeMap::new(),
            functions: BTreeMap::new(),
        }
    }

    /// Physical name of table `logical_id`.
    pub fn table_name(&self, logical_id: &str) -> Option<&str> {
        self.tables.get(logical_id).map(|t| t.name.as_str())
    }

    /// Table `logical_id` with its ARNs.
    pub fn table(&self, logical_id: &str) -> Option<&TableInfo> {
        self.tables.get(logical_id)
    }

    /// URL of queue `logical_id` in the emulator.
    pub fn queue_url(&self, logical_id: &str) -> Option<&str> {
        self.queues.get(logical_id).map(|q| q.url.as_str())
    }

    /// ARN of queue `logical_id`.
    pub fn queue_arn(&self, logical_id: &str) -> Option<&str> {
        self.queues.get(logical_id).map(|q| q.arn.as_str())
    }

    /// Queue `logical_id` with its settings.
    pub fn queue(&self, logical_id: &str) -> Option<&QueueInfo> {
        self.queues.get(logical_id)
    }

    /// Every queue, by logical id.
    pub fn queues(&self) -> &BTreeMap<String, QueueInfo> {
        &self.queues
    }

    /// Logical id of the queue with this ARN.
    pub fn queue_by_arn(&self, arn: &str) -> Option<(&str, &QueueInfo)> {
        self.queues
            .iter()
            .find(|(_, q)| q.arn == arn)
            .map(|(k, q)| (k.as_str(), q))
    }

    /// Logical id of the dead-letter queue of queue `logical_id` (from its `RedrivePolicy`).
    pub fn dlq(&self, logical_id: &str) -> Option<&str> {
        let arn = self.queues.get(logical_id)?.dlq_arn.as_deref()?;
        self.queue_by_arn(arn).map(|(k, _)| k)
    }

    /// Physical name of event bus `logical_id`.
    pub fn bus_name(&self, logical_id: &str) -> Option<&str> {
        self.buses.get(logical_id).map(|b| b.name.as_str())
    }

    /// Physical name of rule `logical_id`.
    pub fn rule_name(&self, logical_id: &str) -> Option<&str> {
        self.rules.get(logical_id).map(|r| r.name.as_str())
    }

    /// Resolved template environment of function `logical_id` (Globals merged, function wins).
    pub fn function_env(&self, logical_id: &str) -> Option<&BTreeMap<String, String>> {
        self.functions.get(logical_id).map(|f| &f.env)
    }

    /// Function `logical_id`: physical name, ARN, environment.
    pub fn function(&self, logical_id: &str) -> Option<&FunctionInfo> {
        self.functions.get(logical_id)
    }

    /// Resolves every intrinsic function inside `expr`.
    pub fn resolve(&self, expr: &Value) -> Result<Value, Unresolved> {
        match expr {
            Value::Array(items) => items.iter().map(|v| self.resolve(v)).collect(),
            Value::Object(map) if map.len() == 1 => {
                let (key, arg) = map.iter().next().expect("one entry");
                if key == "Ref" || key.starts_with("Fn::") {
                    self.intrinsic(key, arg)
                } else {
                    Ok(Value::Object(
                        [(key.clone(), self.resolve(arg)?)].into_iter().collect(),
                    ))
                }
            }
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| Ok((k.clone(), self.resolve(v)?)))
                .collect::<Result<_, _>>()
                .map(Value::Object),
            scalar => Ok(scalar.clone()),
        }
    }

    /// Resolves `expr` to a string (numbers and booleans are stringified as CloudFormation does).
    pub fn resolve_string(&self, expr: &Value) -> Result<String, Unresolved> {
        match self.resolve(expr)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(Unresolved::Fatal(format!("expected a string, got {other}"))),
        }
    }

    fn intrinsic(&self, key: &str, arg: &Value) -> Result<Value, Unresolved> {
        if self.mentions_http_api(key, arg) {
            return Ok(Value::String(self.api_base_url.clone()));
        }
        let fatal = |msg: String| Err(Unresolved::Fatal(msg));
        match (key, arg) {
            ("Ref", Value::String(name)) => self.reference(name).map(Value::String),
            ("Fn::GetAtt", Value::Array(parts)) if parts.len() == 2 => {
                let res = self.resolve_string(&parts[0])?;
                let att = self.resolve_string(&parts[1])?;
                self.attribute(&res, &att).map(Value::String)
            }
            ("Fn::Sub", Value::String(text)) => self.sub(text, &BTreeMap::new()).map(Value::String),
            ("Fn::Sub", Value::Array(parts)) if parts.len() == 2 => {
                let text = parts[0]
                    .as_str()
                    .ok_or_else(|| Unresolved::Fatal("Fn::Sub template is not a string".into()))?;
                let vars = match self.resolve(&parts[1])? {
                    Value::Object(m) => m
                        .into_iter()
                        .map(|(k, v)| Ok((k, self.resolve_string(&v)?)))
                        .collect::<Result<_, Unresolved>>()?,
                    other => return fatal(format!("Fn::Sub variables are not a mapping: {other}")),
                };
                self.sub(text, &vars).map(Value::String)
            }
            ("Fn::Join", Value::Array(parts)) if parts.len() == 2 => {
                let sep = self.resolve_string(&parts[0])?;
                let items = match self.resolve(&parts[1])? {
                    Value::Array(items) => items,
                    other => return fatal(format!("Fn::Join list is not a list: {other}")),
                };
                let strings = items
                    .iter()
                    .map(|v| self.resolve_string(v))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Value::String(strings.join(&sep)))
            }
            (key, arg) => fatal(format!("{key} {arg} is not supported locally")),
        }
    }

    /// True when the expression names an `AWS::Serverless::HttpApi` (or `Api`) resource.
    fn mentions_http_api(&self, key: &str, arg: &Value) -> bool {
        let is_api = |name: &str| {
            let res = name.split('.').next().unwrap_or(name);
            matches!(
                self.kinds.get(res).map(String::as_str),
                Some("AWS::Serverless::HttpApi" | "AWS::Serverless::Api")
            )
        };
        match (key, arg) {
            ("Ref", Value::String(name)) => is_api(name),
            ("Fn::GetAtt", Value::Array(parts)) => {
                parts.first().and_then(Value::as_str).is_some_and(is_api)
            }
            ("Fn::Sub", Value::String(text)) => sub_variables(text).iter().any(|v| is_api(v)),
            ("Fn::Sub", Value::Array(parts)) => {
                let text_mentions = parts
                    .first()
                    .and_then(Value::as_str)
                    .is_some_and(|t| sub_variables(t).iter().any(|v| is_api(v)));
                text_mentions
                    || parts
                        .get(1)
                        .is_some_and(|v| self.value_mentions_http_api(v))
            }
            (_, arg) => self.value_mentions_http_api(arg),
        }
    }

    fn value_mentions_http_api(&self, v: &Value) -> bool {
        match v {
            Value::Array(items) => items.iter().any(|i| self.value_mentions_http_api(i)),
            Value::Object(map) => map.iter().any(|(k, v)| {
                ((k == "Ref" || k.starts_with("Fn::")) && self.mentions_http_api(k, v))
                    || self.value_mentions_http_api(v)
            }),
            _ => false,
        }
    }

    /// `Ref name`: a parameter, a pseudo parameter or a resource.
    fn reference(&self, name: &str) -> Result<String, Unresolved> {
        if let Some(v) = self.params.get(name) {
            return Ok(v.clone());
        }
        let pseudo = match name {
            "AWS::StackName" => Some(self.name.clone()),
            "AWS::Region" => Some(self.region.clone()),
            "AWS::AccountId" => Some(self.account_id.clone()),
            "AWS::Partition" => Some("aws".to_string()),
            "AWS::URLSuffix" => Some("amazonaws.com".to_string()),
            "AWS::StackId" => Some(format!(
                "arn:aws:cloudformation:{}:{}:stack/{}/local",
                self.region, self.account_id, self.name
            )),
            _ => None,
        };
        if let Some(v) = pseudo {
            return Ok(v);
        }
        match self.kinds.get(name).map(String::as_str) {
            None => Err(Unresolved::Fatal(format!(
                "Ref {name}: no such parameter (with a Default) or resource"
            ))),
            Some("AWS::DynamoDB::Table" | "AWS::Serverless::SimpleTable") => {
                self.created(&self.tables, name, |t| t.name.clone())
            }
            Some("AWS::SQS::Queue") => self.created(&self.queues, name, |q| q.url.clone()),
            Some("AWS::Events::EventBus") => self.created(&self.buses, name, |b| b.name.clone()),
            Some("AWS::Events::Rule") => self.created(&self.rules, name, |r| r.name.clone()),
            Some("AWS::Serverless::Function") => {
                self.created(&self.functions, name, |f| f.name.clone())
            }
            Some(kind) => Err(Unresolved::Fatal(format!(
                "Ref {name}: resources of type {kind} are not created locally"
            ))),
        }
    }

    /// `Fn::GetAtt [res, att]`.
    fn attribute(&self, res: &str, att: &str) -> Result<String, Unresolved> {
        let unknown = || {
            Unresolved::Fatal(format!(
                "GetAtt {res}.{att}: not available locally for {}",
                self.kinds
                    .get(res)
                    .map_or("an unknown resource", String::as_str)
            ))
        };
        let pick = |v: Option<String>| v.ok_or_else(unknown);
        match (self.kinds.get(res).map(String::as_str), att) {
            (Some("AWS::DynamoDB::Table" | "AWS::Serverless::SimpleTable"), "Arn") => {
                self.created(&self.tables, res, |t| t.arn.clone())
            }
            (Some("AWS::DynamoDB::Table"), "StreamArn") => {
                pick(self.created(&self.tables, res, |t| t.stream_arn.clone())?)
            }
            (Some("AWS::SQS::Queue"), "Arn") => self.created(&self.queues, res, |q| q.arn.clone()),
            (Some("AWS::SQS::Queue"), "QueueName") => {
                self.created(&self.queues, res, |q| q.name.clone())
            }
            (Some("AWS::SQS::Queue"), "QueueUrl") => {
                self.created(&self.queues, res, |q| q.url.clone())
            }
            (Some("AWS::Events::EventBus"), "Arn") => {
                self.created(&self.buses, res, |b| b.arn.clone())
            }
            (Some("AWS::Events::EventBus"), "Name") => {
                self.created(&self.buses, res, |b| b.name.clone())
            }
            (Some("AWS::Events::Rule"), "Arn") => self.created(&self.rules, res, |r| r.arn.clone()),
            (Some("AWS::Serverless::Function"), "Arn") => {
                self.created(&self.functions, res, |f| f.arn.clone())
            }
            _ => Err(unknown()),
        }
    }

    fn created<T, R>(
        &self,
        map: &BTreeMap<String, T>,
        name: &str,
        get: impl Fn(&T) -> R,
    ) -> Result<R, Unresolved> {
        map.get(name)
            .map(get)
            .ok_or_else(|| Unresolved::Wait(name.to_string()))
    }

    /// `Fn::Sub`: `${Name}`, `${Res.Att}`, `${!Literal}`.
    fn sub(&self, text: &str, vars: &BTreeMap<String, String>) -> Result<String, Unresolved> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| Unresolved::Fatal(format!("Fn::Sub {text:?}: unclosed ${{")))?;
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(v) = vars.get(name) {
                out.push_str(v);
            } else if let Some((res, att)) = name.split_once('.') {
                out.push_str(&self.attribute(res, att)?);
            } else {
                out.push_str(&self.reference(name)?);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The variable names of a `Fn::Sub` template (escapes `${!x}` excluded).
fn sub_variables(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        if !after.starts_with('!') {
            names.push(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stack() -> Stack {
        let t = crate::template::tests::real_template();
        let mut s = Stack::new(&t, "cqrs-local", "eu-west-1", "http://127.0.0.1:3000/");
        s.queues.insert(
            "AgentsDLQ".into(),
            QueueInfo {
                name: "cqrs-local-AgentsDLQ".into(),
                url: "http://e/123456789012/cqrs-local-AgentsDLQ".into(),
                arn: "arn:aws:sqs:eu-west-1:123456789012:cqrs-local-AgentsDLQ".into(),
                visibility_timeout_secs: 30,
                dlq_arn: None,
                max_receive_count: None,
            },
        );
        s.tables.insert(
            "AgentsTable".into(),
            TableInfo {
                name: "cqrs-local-AgentsTable".into(),
                arn: "arn:table".into(),
                stream_arn: None,
            },
        );
        s
    }

    #[test]
    fn resolves_refs_getatts_subs_and_joins() {
        let s = stack();
        let ok = |v: Value| s.resolve(&v).unwrap();
        assert_eq!(ok(json!({"Ref": "LogLevel"})), "info");
        assert_eq!(ok(json!({"Ref": "AWS::Region"})), "eu-west-1");
        assert_eq!(ok(json!({"Ref": "AgentsTable"})), "cqrs-local-AgentsTable");
        assert_eq!(
            ok(json!({"Ref": "AgentsDLQ"})),
            "http://e/123456789012/cqrs-local-AgentsDLQ"
        );
        assert_eq!(
            ok(json!({"Fn::GetAtt": ["AgentsDLQ", "QueueName"]})),
            "cqrs-local-AgentsDLQ"
        );
        assert_eq!(
            ok(
                json!({"Fn::Sub": "${AWS::StackName}-bus:${AWS::AccountId}:${AWS::Partition}:${!Keep}"})
            ),
            "cqrs-local-bus:123456789012:aws:${Keep}"
        );
        assert_eq!(
            ok(json!({"Fn::Sub": "${AgentsTable.Arn}/index/byState"})),
            "arn:table/index/byState"
        );
        assert_eq!(
            ok(json!({"Fn::Sub": ["${a}-${AWS::URLSuffix}", {"a": {"Ref": "LogLevel"}}]})),
            "info-amazonaws.com"
        );
        assert_eq!(
            ok(json!({"Fn::Join": [":", ["a", {"Ref": "LogLevel"}, 3]]})),
            "a:info:3"
        );
        assert_eq!(
            ok(json!({"Nested": [{"Ref": "LogLevel"}], "Plain": 1})),
            json!({"Nested": ["info"], "Plain": 1})
        );
    }

    #[test]
    fn http_api_references_become_the_local_url() {
        let s = stack();
        let url = json!("http://127.0.0.1:3000");
        let api_sub =
            json!({"Fn::Sub": "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"});
        assert_eq!(s.resolve(&api_sub).unwrap(), url);
        assert_eq!(s.resolve(&json!({"Ref": "HttpApi"})).unwrap(), url);
        assert_eq!(
            s.resolve(&json!({"Fn::Join": ["", ["https://", {"Ref": "HttpApi"}]]}))
                .unwrap(),
            url
        );
    }

    #[test]
    fn missing_and_pending_references() {
        let s = stack();
        assert_eq!(
            s.resolve(&json!({"Fn::GetAtt": ["AgentsQueue", "Arn"]})),
            Err(Unresolved::Wait("AgentsQueue".into()))
        );
        assert_eq!(
            s.resolve(&json!({"Ref": "EventBus"})),
            Err(Unresolved::Wait("EventBus".into()))
        );
        let fatal = |v: Value| match s.resolve(&v) {
            Err(Unresolved::Fatal(msg)) => msg,
            other => panic!("expected a fatal error, got {other:?}"),
        };
        assert!(fatal(json!({"Ref": "Nope"})).contains("Ref Nope"));
        assert!(fatal(json!({"Ref": "AgentsQueuePolicy"})).contains("AWS::SQS::QueuePolicy"));
        assert!(
            fatal(json!({"Fn::GetAtt": ["AgentsTable", "Bogus"]})).contains("AgentsTable.Bogus")
        );
        assert!(fatal(json!({"Fn::If": ["c", 1, 2]})).contains("Fn::If"));
    }
}
