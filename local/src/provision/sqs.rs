//! `AWS::SQS::Queue`.

use std::collections::HashMap;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use super::{Clients, ProvisionError, QueueInfo, Stack, aws, created, invalid, physical_name};

/// SQS's default visibility timeout.
const DEFAULT_VISIBILITY_TIMEOUT: u32 = 30;

/// Creates the queue, or updates the attributes of the existing one.
pub(super) async fn create_queue(
    c: &Clients,
    stack: &mut Stack,
    id: &str,
    props: &Value,
) -> Result<(), ProvisionError> {
    let fifo = props.get("FifoQueue").is_some_and(is_true);
    let name = physical_name(
        stack,
        id,
        props,
        "QueueName",
        if fifo { ".fifo" } else { "" },
    );
    let attributes = attributes(props).map_err(|e| invalid(id, e))?;
    let create = c
        .sqs
        .create_queue()
        .queue_name(&name)
        .set_attributes(Some(attributes.clone()))
        .send()
        .await;
    let url = match created(id, "CreateQueue", create, |e| e.is_queue_name_exists())? {
        Some(out) => out.queue_url().unwrap_or_default().to_string(),
        None => {
            let url = c
                .sqs
                .get_queue_url()
                .queue_name(&name)
                .send()
                .await
                .map_err(|e| aws(id, "GetQueueUrl", e))?
                .queue_url()
                .unwrap_or_default()
                .to_string();
            // FifoQueue is fixed at creation and cannot be set again.
            let mut update = attributes;
            update.remove(&QueueAttributeName::FifoQueue);
            c.sqs
                .set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(update))
                .send()
                .await
                .map_err(|e| aws(id, "SetQueueAttributes", e))?;
            url
        }
    };
    if url.is_empty() {
        return Err(invalid(id, "the emulator returned no queue URL"));
    }
    let arn = c
        .sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| aws(id, "GetQueueAttributes", e))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_else(|| format!("arn:aws:sqs:{}:{}:{name}", stack.region, stack.account_id));
    let redrive = props.get("RedrivePolicy");
    stack.queues.insert(
        id.to_string(),
        QueueInfo {
            name,
            url,
            arn,
            visibility_timeout_secs: props
                .get("VisibilityTimeout")
                .and_then(number)
                .unwrap_or(DEFAULT_VISIBILITY_TIMEOUT),
            dlq_arn: redrive
                .and_then(|r| r.get("deadLetterTargetArn"))
                .and_then(Value::as_str)
                .map(str::to_string),
            max_receive_count: redrive
                .and_then(|r| r.get("maxReceiveCount"))
                .and_then(number),
        },
    );
    Ok(())
}

/// Queue properties are SQS attribute names already; policies are JSON documents in strings.
fn attributes(props: &Value) -> Result<HashMap<QueueAttributeName, String>, String> {
    let Some(map) = props.as_object() else {
        return Ok(HashMap::new());
    };
    map.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "QueueName" | "Tags"))
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Object(_) => v.to_string(),
                other => return Err(format!("{k}: unsupported value {other}")),
            };
            Ok((QueueAttributeName::from(k.as_str()), value))
        })
        .collect()
}

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true) || v.as_str() == Some("true")
}

fn number(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_properties_become_attributes() {
        let attrs = attributes(&json!({
            "QueueName": "q",
            "VisibilityTimeout": 60,
            "FifoQueue": true,
            "RedrivePolicy": {"deadLetterTargetArn": "arn:dlq", "maxReceiveCount": 5},
            "Tags": [{"Key": "a", "Value": "b"}]
        }))
        .unwrap();
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs[&QueueAttributeName::VisibilityTimeout], "60");
        assert_eq!(attrs[&QueueAttributeName::FifoQueue], "true");
        let redrive: Value =
            serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).unwrap();
        assert_eq!(
            redrive,
            json!({"deadLetterTargetArn": "arn:dlq", "maxReceiveCount": 5})
        );
        assert!(attributes(&json!({"DelaySeconds": [1]})).is_err());
    }
}
