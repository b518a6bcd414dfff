//! The template against least privilege and message routing.

use super::routes::{IAM, template_scopes};
use super::*;
use shared::worker::Worker;

// ------------------------------------------------------------------ least privilege

/// Logical ids an expression refers to (`Ref`, `Fn::GetAtt`, `${Name}` / `${Name.Attr}` in
/// `Fn::Sub`), anywhere inside it: the runner's own reading (`local::diagram::refs`), without
/// pseudo parameters (`AWS::Region`), which name no resource.
fn references(v: &Value, out: &mut BTreeSet<String>) {
    out.extend(
        local::diagram::refs(v)
            .into_iter()
            .filter(|id| !id.starts_with("AWS::")),
    );
}

fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        other => vec![other],
    }
}

/// Which resource type an action's service acts on.
fn service_kind(action: &str) -> Option<&'static str> {
    match action.split(':').next()? {
        "dynamodb" => Some("AWS::DynamoDB::Table"),
        "sqs" => Some("AWS::SQS::Queue"),
        "events" => Some("AWS::Events::EventBus"),
        "execute-api" => Some("AWS::Serverless::HttpApi"),
        _ => None,
    }
}

/// Least-privilege violations of `template`:
/// - a function policy must be an inline statement list (a managed policy or a SAM policy
///   template grants actions this file does not show);
/// - no `*` in any action or resource of any policy statement in the template;
/// - each resource is named by reference (`!GetAtt X.Arn`, `!Ref X`, `!Sub "${X.Arn}/index/I"`)
///   to a resource of the kind the action's service acts on, with `I` an index of table `X`;
/// - the function's environment names every resource it is granted (a function granted
///   `AgentsTable` must be told `TABLE_NAME: !Ref AgentsTable` or it has no use for it).
fn least_privilege_violations(t: &Template) -> Vec<String> {
    let mut bad = Vec::new();
    // Wildcards anywhere: function policies and resource policies (queue policies) alike.
    fn statements<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(o) => {
                if let Some(s) = o.get("Statement") {
                    out.extend(as_list(s));
                }
                o.values().for_each(|x| statements(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| statements(x, out)),
            _ => {}
        }
    }
    for (id, r) in &t.resources {
        let mut found = Vec::new();
        statements(&r.properties, &mut found);
        for s in found {
            for key in ["Action", "NotAction", "Resource", "NotResource"] {
                if ["NotAction", "NotResource"].contains(&key) && s.get(key).is_some() {
                    bad.push(format!("{id}: {key} grants everything else"));
                }
                for v in as_list(s.get(key).unwrap_or(&Value::Null)) {
                    if v.to_string().contains('*') {
                        bad.push(format!("{id}: wildcard {key} {v}"));
                    }
                }
            }
            if s["Principal"] == "*" || s["Principal"]["AWS"] == "*" {
                bad.push(format!("{id}: wildcard principal"));
            }
        }
    }
    let scopes = template_scopes(t);
    for (id, f) in &t.functions {
        let mut uses = BTreeSet::new();
        for v in f.environment.values() {
            references(v, &mut uses);
        }
        let props = &t.resources[id].properties;
        for policy in as_list(&props["Policies"]) {
            let Some(statement) = policy.get("Statement") else {
                bad.push(format!(
                    "{id}: policy {policy} is not an inline statement list"
                ));
                continue;
            };
            for s in as_list(statement) {
                if s["Effect"] != "Allow" {
                    continue;
                }
                let actions: Vec<&str> = as_list(&s["Action"])
                    .into_iter()
                    .filter_map(Value::as_str)
                    .collect();
                for resource in as_list(&s["Resource"]) {
                    let mut named = BTreeSet::new();
                    references(resource, &mut named);
                    let target = match (named.len(), named.iter().next()) {
                        (1, Some(t)) => t.clone(),
                        _ => {
                            bad.push(format!(
                                "{id}: resource {resource} does not name one template resource"
                            ));
                            continue;
                        }
                    };
                    let kind = t.kind_of(&target).unwrap_or("missing");
                    for a in &actions {
                        if service_kind(a) != Some(kind) {
                            bad.push(format!("{id}: {a} granted on {target}, a {kind}"));
                        }
                    }
                    let sub = resource.get("Fn::Sub").and_then(Value::as_str);
                    if let Some(sub) = sub.filter(|_| kind == "AWS::Serverless::HttpApi") {
                        // execute-api:Invoke on one IAM-authorized route of that API, by name.
                        let prefix = format!(
                            "arn:${{AWS::Partition}}:execute-api:${{AWS::Region}}:\
                             ${{AWS::AccountId}}:${{{target}}}/$default/"
                        );
                        let route = sub
                            .strip_prefix(&prefix)
                            .and_then(|r| r.split_once('/'))
                            .map(|(m, p)| (m.to_owned(), format!("/{p}")));
                        let iam = route
                            .as_ref()
                            .and_then(|r| scopes.get(r))
                            .is_some_and(|s| s.as_ref().is_some_and(|s| s.contains(IAM)));
                        if !iam {
                            bad.push(format!("{id}: {sub} is not an IAM-authorized route"));
                        }
                    } else if let Some(sub) = sub {
                        let index = sub.strip_prefix(&format!("${{{target}.Arn}}/index/"));
                        let indexes = &t.resources[&target].properties["GlobalSecondaryIndexes"];
                        let exists = index
                            .is_some_and(|i| as_list(indexes).iter().any(|g| g["IndexName"] == i));
                        if !exists {
                            bad.push(format!("{id}: {sub} is not an index of {target}"));
                        }
                    }
                    if !uses.contains(&target) {
                        bad.push(format!(
                            "{id}: granted {target} but its environment never names it"
                        ));
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn function_policies_grant_only_what_each_function_uses() {
    let t = template();
    let bad = least_privilege_violations(&t);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // The rule looked at real grants: most functions have some.
    let granted = t
        .functions
        .keys()
        .filter(|id| !as_list(&t.resources[*id].properties["Policies"]).is_empty())
        .count();
    assert!(granted >= 10, "{granted}");
}

#[test]
fn the_least_privilege_rule_catches_over_grants_and_wildcards() {
    let text = r#"
Globals:
  Function:
    Environment:
      Variables:
        EVENT_BUS_NAME: !Ref Bus
Resources:
  Bus: {Type: AWS::Events::EventBus}
  TableA: {Type: AWS::DynamoDB::Table}
  TableB: {Type: AWS::DynamoDB::Table}
  Queue: {Type: AWS::SQS::Queue}
  Api:
    Type: AWS::Serverless::HttpApi
    Properties: {Auth: {EnableIamAuthorizer: true}}
  Fn:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: fn}}
    Properties:
      Environment:
        Variables:
          TABLE_NAME: !Ref TableA
          API_URL: !Sub "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}"
      Events:
        Open: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: GET, Path: /open, Auth: {Authorizer: NONE}}}
        Signed: {Type: HttpApi, Properties: {ApiId: !Ref Api, Method: POST, Path: /signed, Auth: {Authorizer: AWS_IAM}}}
      Policies:
        - Statement:
            - Effect: Allow
              Action: [dynamodb:GetItem]
              Resource: [!GetAtt TableA.Arn, !GetAtt TableB.Arn, !Sub "${TableA.Arn}/index/nope"]
            - Effect: Allow
              Action: "sqs:*"
              Resource: !GetAtt Queue.Arn
            - Effect: Allow
              Action: dynamodb:Query
              Resource: "*"
            - Effect: Allow
              Action: events:PutEvents
              Resource: !GetAtt Bus.Arn
            - Effect: Allow
              Action: execute-api:Invoke
              Resource:
                - !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/$default/POST/signed"
                - !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/$default/GET/open"
        - AmazonDynamoDBFullAccess
"#;
    let t = Template::parse(text, "bad.yaml").unwrap();
    let bad = least_privilege_violations(&t);
    for expected in [
        "Fn: granted TableB but its environment never names it",
        "Fn: wildcard Action \"sqs:*\"",
        "Fn: wildcard Resource \"*\"",
        "Fn: ${TableA.Arn}/index/nope is not an index of TableA",
        "Fn: granted Queue but its environment never names it",
        "Fn: policy \"AmazonDynamoDBFullAccess\" is not an inline statement list",
        "Fn: arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/$default/GET/open is not an IAM-authorized route",
    ] {
        assert!(bad.iter().any(|b| b == expected), "{expected}: {bad:#?}");
    }
    assert!(
        !bad.iter()
            .any(|b| b.contains("TableA but") || b.contains("Bus but") || b.contains("/signed")),
        "{bad:#?}"
    );
}

// ------------------------------------------------------------------ message routing

/// The logical id a `{"Ref": id}` or `{"Fn::GetAtt": [id, ..]}` names.
fn referenced(v: &Value) -> Option<&str> {
    v.get("Ref")
        .and_then(Value::as_str)
        .or_else(|| v.get("Fn::GetAtt")?.get(0)?.as_str())
}

/// Every (source, detail-type) a payload type travels with, from the workers' sample events
/// (`events/*-worker/`: every type appears in one), through the decoder the workers use.
fn message_types() -> BTreeMap<String, String> {
    let mut types = BTreeMap::new();
    let dir = system_tests::root().join("events");
    for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
        if !entry.file_name().to_string_lossy().ends_with("-worker") {
            continue;
        }
        for file in std::fs::read_dir(entry.path()).unwrap().map(Result::unwrap) {
            let text = std::fs::read_to_string(file.path()).unwrap();
            let event: aws_lambda_events::event::sqs::SqsEvent =
                serde_json::from_str(&text).unwrap();
            for record in &event.records {
                let env = shared::worker::decode(record).expect("a sample decodes");
                let (kind, source) = (env.payload.detail_type(), env.payload.source());
                types.insert(kind.to_owned(), source.to_owned());
            }
        }
    }
    types
}

/// Who delivers what to each queue: the rules targeting it (every pair of their pattern's
/// sources and detail-types) and the functions that send to it straight (their
/// `QUEUED_COMMANDS`, with the commands' own source), as (source, detail-type) pairs.
fn deliveries(
    t: &Template,
    senders: &BTreeMap<&str, &[&str]>,
    types: &BTreeMap<String, String>,
) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut to: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for r in t
        .resources
        .values()
        .filter(|r| r.kind == "AWS::Events::Rule")
    {
        let pattern = &r.properties["EventPattern"];
        let strings = |k: &str| -> Vec<String> {
            as_list(&pattern[k])
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        for target in as_list(&r.properties["Targets"]) {
            let queue = referenced(&target["Arn"]).expect("a rule targets a resource");
            for source in strings("source") {
                for kind in strings("detail-type") {
                    to.entry(queue.to_owned())
                        .or_default()
                        .insert((source.clone(), kind));
                }
            }
        }
    }
    for f in t.functions.values() {
        let queues: Vec<&str> = f
            .environment
            .values()
            .filter_map(referenced)
            .filter(|id| t.kind_of(id) == Some("AWS::SQS::Queue"))
            .filter(|id| {
                t.functions.values().any(|w| {
                    w.sqs_sources
                        .iter()
                        .any(|s| referenced(&s.queue) == Some(*id))
                })
            })
            .collect();
        for queue in queues {
            let sent = senders.get(f.logical_id.as_str()).unwrap_or_else(|| {
                panic!(
                    "{} sends to {queue}: list its QUEUED_COMMANDS here",
                    f.logical_id
                )
            });
            for kind in *sent {
                let source = types[*kind].clone();
                to.entry(queue.to_owned())
                    .or_default()
                    .insert((source, (*kind).to_owned()));
            }
        }
    }
    to
}

/// What the template delivers to each worker's queue, against what each worker handles: a
/// type a worker handles but never receives is a feature that silently does nothing; a type
/// delivered to a worker that does not handle it is a poison message in its DLQ.
fn routing_violations(
    t: &Template,
    workers: &BTreeMap<&str, &[&str]>,
    senders: &BTreeMap<&str, &[&str]>,
) -> Vec<String> {
    let types = message_types();
    let delivered = deliveries(t, senders, &types);
    let mut violations = Vec::new();
    for f in t.functions.values().filter(|f| !f.sqs_sources.is_empty()) {
        let Some(handles) = workers.get(f.logical_id.as_str()) else {
            violations.push(format!("{}: a worker without HANDLES", f.logical_id));
            continue;
        };
        let mut handled = BTreeSet::new();
        for kind in *handles {
            match types.get(*kind) {
                Some(source) => handled.insert((source.clone(), (*kind).to_owned())),
                None => {
                    violations.push(format!("{kind}: no sample in events/*-worker/"));
                    continue;
                }
            };
        }
        let mut received = BTreeSet::new();
        for source in &f.sqs_sources {
            let queue = referenced(&source.queue).expect("an event source names its queue");
            let pairs = delivered.get(queue).cloned().unwrap_or_default();
            // A pattern's sources × detail-types may name pairs no payload has: not deliveries.
            received.extend(pairs.into_iter().filter(|(s, k)| types.get(k) == Some(s)));
        }
        for (source, kind) in handled.difference(&received) {
            violations.push(format!(
                "{}: handles {source}/{kind}, never delivered",
                f.logical_id
            ));
        }
        for (source, kind) in received.difference(&handled) {
            violations.push(format!(
                "{}: receives {source}/{kind}, does not handle it",
                f.logical_id
            ));
        }
    }
    violations
}

fn workers() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("AgentsWorkerFunction", agents_worker::AwsApp::HANDLES),
        (
            "ConversationsWorkerFunction",
            conversations_worker::AwsApp::HANDLES,
        ),
        ("TradesWorkerFunction", trades_worker::AwsApp::HANDLES),
        ("PositionsWorkerFunction", positions_worker::AwsApp::HANDLES),
        ("LedgerWorkerFunction", ledger_worker::AwsApp::HANDLES),
        ("AnalyticsWorkerFunction", analytics_worker::AwsApp::HANDLES),
    ])
}

fn senders() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("AgentsApiFunction", agents_api::QUEUED_COMMANDS),
        ("TradesApiFunction", trades_api::QUEUED_COMMANDS),
        // Redrive moves messages back to the queue they failed on: it adds no type.
        ("OpsFunction", &[][..]),
        // Probes queues' attributes; sends nothing.
        ("HealthFunction", &[][..]),
    ])
}

#[test]
fn every_message_type_reaches_exactly_the_workers_that_handle_it() {
    let t = template();
    let violations = routing_violations(&t, &workers(), &senders());
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(message_types().len(), 15, "every payload type has a sample");
}

#[test]
fn the_routing_rule_catches_a_missing_and_a_stray_delivery() {
    let t = template();
    let mut workers = workers();
    // The positions worker forgets TradeExecuted; the ledger worker claims TradeRejected.
    workers.insert("PositionsWorkerFunction", &[]);
    workers.insert("LedgerWorkerFunction", &["TradeExecuted", "TradeRejected"]);
    let violations = routing_violations(&t, &workers, &senders());
    assert!(
        violations
            .iter()
            .any(|v| v.contains("PositionsWorkerFunction: receives cqrs.trades/TradeExecuted")),
        "{violations:#?}"
    );
    assert!(
        violations.iter().any(|v| v
            .contains("LedgerWorkerFunction: handles cqrs.trades/TradeRejected, never delivered")),
        "{violations:#?}"
    );
    // A rule that stops delivering agent commands' events: the analytics worker misses one.
    let mut text = std::fs::read_to_string(system_tests::root().join("template.yaml")).unwrap();
    text = text.replacen("          - AgentRegistered\n", "", 1);
    let edited = Template::parse(&text, system_tests::root().join("template.yaml")).unwrap();
    let violations = routing_violations(&edited, &self::workers(), &senders());
    assert_eq!(
        violations,
        vec!["AnalyticsWorkerFunction: handles cqrs.agents/AgentRegistered, never delivered"]
    );
}
