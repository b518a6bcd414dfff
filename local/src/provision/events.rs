//! `AWS::Events::EventBus` and `AWS::Events::Rule` (with its targets).

use aws_sdk_eventbridge::types::{
    DeadLetterConfig, InputTransformer, RetryPolicy, RuleState, SqsParameters, Target,
};
use serde_json::Value;

use super::{Clients, NamedArn, ProvisionError, Stack, aws, created, invalid, physical_name};

/// Creates the bus, or finds the existing one.
pub(super) async fn create_bus(
    c: &Clients,
    stack: &mut Stack,
    id: &str,
    props: &Value,
) -> Result<(), ProvisionError> {
    let name = physical_name(stack, id, props, "Name", "");
    let create = c.events.create_event_bus().name(&name).send().await;
    let arn = match created(id, "CreateEventBus", create, |e| {
        e.is_resource_already_exists_exception()
    })? {
        Some(out) => out.event_bus_arn().map(str::to_string),
        None => c
            .events
            .describe_event_bus()
            .name(&name)
            .send()
            .await
            .map_err(|e| aws(id, "DescribeEventBus", e))?
            .arn()
            .map(str::to_string),
    };
    let arn = arn.unwrap_or_else(|| {
        format!(
            "arn:aws:events:{}:{}:event-bus/{name}",
            stack.region, stack.account_id
        )
    });
    stack.buses.insert(id.to_string(), NamedArn { name, arn });
    Ok(())
}

/// `PutRule` then `PutTargets`, both upserts. Target dead-letter and retry settings are dropped
/// (with a warning) when the emulator refuses them: moto does not implement them anyway.
pub(super) async fn create_rule(
    c: &Clients,
    stack: &mut Stack,
    id: &str,
    props: &Value,
) -> Result<(), ProvisionError> {
    let name = physical_name(stack, id, props, "Name", "");
    let bus = props
        .get("EventBusName")
        .and_then(Value::as_str)
        .map(|b| b.rsplit("event-bus/").next().unwrap_or(b).to_string());
    let pattern = match props.get("EventPattern") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(p) => Some(p.to_string()),
    };
    let out = c
        .events
        .put_rule()
        .name(&name)
        .set_event_bus_name(bus.clone())
        .set_event_pattern(pattern)
        .set_schedule_expression(text(props, "ScheduleExpression"))
        .set_description(text(props, "Description"))
        .state(RuleState::from(
            text(props, "State").as_deref().unwrap_or("ENABLED"),
        ))
        .send()
        .await
        .map_err(|e| aws(id, "PutRule", e))?;
    let arn = out.rule_arn().map(str::to_string).unwrap_or_else(|| {
        let bus_part = bus
            .as_deref()
            .filter(|b| *b != "default")
            .map(|b| format!("{b}/"));
        format!(
            "arn:aws:events:{}:{}:rule/{}{name}",
            stack.region,
            stack.account_id,
            bus_part.unwrap_or_default()
        )
    });

    let mut targets = Vec::new();
    for t in props
        .get("Targets")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        let arn = t.get("Arn").and_then(Value::as_str).unwrap_or_default();
        if arn.starts_with("arn:aws:lambda:") {
            let msg = format!(
                "{id}: target {arn} is a Lambda function; EventBridge does not invoke functions locally"
            );
            tracing::warn!("{msg}");
            stack.warnings.push(msg);
            continue;
        }
        targets.push(t);
    }
    if !targets.is_empty() {
        let full = build_targets(&targets, true).map_err(|e| invalid(id, e))?;
        let refused = match c
            .events
            .put_targets()
            .rule(&name)
            .set_event_bus_name(bus.clone())
            .set_targets(Some(full))
            .send()
            .await
        {
            Ok(out) => {
                (out.failed_entry_count() > 0).then(|| format!("{:?}", out.failed_entries()))
            }
            Err(e) => Some(aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string()),
        };
        if let Some(reason) = refused {
            let msg = format!("{id}: targets set without DeadLetterConfig/RetryPolicy ({reason})");
            tracing::warn!("{msg}");
            stack.warnings.push(msg);
            let plain = build_targets(&targets, false).map_err(|e| invalid(id, e))?;
            let out = c
                .events
                .put_targets()
                .rule(&name)
                .set_event_bus_name(bus)
                .set_targets(Some(plain))
                .send()
                .await
                .map_err(|e| aws(id, "PutTargets", e))?;
            if out.failed_entry_count() > 0 {
                return Err(invalid(
                    id,
                    format!("PutTargets failed: {:?}", out.failed_entries()),
                ));
            }
        }
    }
    stack.rules.insert(id.to_string(), NamedArn { name, arn });
    Ok(())
}

fn build_targets(targets: &[&Value], with_delivery_settings: bool) -> Result<Vec<Target>, String> {
    targets
        .iter()
        .map(|t| {
            let mut b = Target::builder()
                .set_id(text(t, "Id"))
                .set_arn(text(t, "Arn"))
                .set_input(text(t, "Input"))
                .set_input_path(text(t, "InputPath"));
            if let Some(it) = t.get("InputTransformer") {
                let paths = it.get("InputPathsMap").and_then(Value::as_object).map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                });
                b = b.input_transformer(
                    InputTransformer::builder()
                        .set_input_paths_map(paths)
                        .set_input_template(text(it, "InputTemplate"))
                        .build()
                        .map_err(|e| e.to_string())?,
                );
            }
            if let Some(group) = t
                .pointer("/SqsParameters/MessageGroupId")
                .and_then(Value::as_str)
            {
                b = b.sqs_parameters(SqsParameters::builder().message_group_id(group).build());
            }
            if with_delivery_settings {
                if let Some(dlq) = t.pointer("/DeadLetterConfig/Arn").and_then(Value::as_str) {
                    b = b.dead_letter_config(DeadLetterConfig::builder().arn(dlq).build());
                }
                if let Some(r) = t.get("RetryPolicy") {
                    let int = |k: &str| {
                        r.get(k)
                            .and_then(Value::as_i64)
                            .and_then(|n| i32::try_from(n).ok())
                    };
                    b = b.retry_policy(
                        RetryPolicy::builder()
                            .set_maximum_retry_attempts(int("MaximumRetryAttempts"))
                            .set_maximum_event_age_in_seconds(int("MaximumEventAgeInSeconds"))
                            .build(),
                    );
                }
            }
            b.build().map_err(|e| format!("target {t}: {e}"))
        })
        .collect()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}
