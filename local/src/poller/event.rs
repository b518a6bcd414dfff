//! Lambda's SQS event and the reading of a batch result.

use std::collections::BTreeSet;

use aws_sdk_sqs::types::Message;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::runtime::{InvokeError, InvokeOutcome};

/// The SQS event for a batch, as the Lambda event source mapping sends it.
pub fn sqs_event(messages: &[Message], queue_arn: &str, region: &str) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| record(m, queue_arn, region))
        .collect();
    json!({ "Records": records })
}

fn record(m: &Message, queue_arn: &str, region: &str) -> Value {
    let attributes: Map<String, Value> = m
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone())))
                .collect()
        })
        .unwrap_or_default();
    let message_attributes: Map<String, Value> = m
        .message_attributes()
        .map(|attrs| {
            attrs
                .iter()
                .map(|(name, a)| {
                    let binary = a.binary_value().map(|b| BASE64.encode(b.as_ref()));
                    let binaries: Vec<String> = a
                        .binary_list_values()
                        .iter()
                        .map(|b| BASE64.encode(b.as_ref()))
                        .collect();
                    let value = json!({
                        "stringValue": a.string_value(),
                        "binaryValue": binary,
                        "stringListValues": a.string_list_values(),
                        "binaryListValues": binaries,
                        "dataType": a.data_type(),
                    });
                    (name.clone(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut record = json!({
        "messageId": m.message_id(),
        "receiptHandle": m.receipt_handle(),
        "body": m.body().unwrap_or_default(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": m.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    });
    if let Some(md5) = m.md5_of_message_attributes() {
        record["md5OfMessageAttributes"] = json!(md5);
    }
    record
}

/// Message ids of the batch that must stay in the queue.
///
/// Everything stays when the invocation failed. Otherwise, with `ReportBatchItemFailures`,
/// the ids listed in `batchItemFailures` stay; as on Lambda, a malformed list or an id that is
/// not in the batch fails the whole batch, and a null or empty result fails nothing.
pub fn failed_ids(
    outcome: &Result<InvokeOutcome, InvokeError>,
    batch: &[String],
    report_batch_item_failures: bool,
) -> BTreeSet<String> {
    let all = || batch.iter().cloned().collect();
    let result = match outcome {
        Ok(InvokeOutcome::Response(v)) => v,
        Ok(InvokeOutcome::FunctionError(_)) | Err(_) => return all(),
    };
    if !report_batch_item_failures {
        return BTreeSet::new();
    }
    let failures = match result.get("batchItemFailures") {
        None | Some(Value::Null) => return BTreeSet::new(),
        Some(Value::Array(items)) => items,
        Some(_) => return all(),
    };
    let mut failed = BTreeSet::new();
    for item in failures {
        match item.get("itemIdentifier").and_then(Value::as_str) {
            Some(id) if batch.iter().any(|b| b == id) => {
                failed.insert(id.to_string());
            }
            _ => return all(),
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::FunctionError;
    use aws_lambda_events::sqs::SqsEvent;
    use aws_sdk_sqs::primitives::Blob;
    use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName as Attr};

    fn message(id: &str) -> Message {
        Message::builder()
            .message_id(id)
            .receipt_handle(format!("rh-{id}"))
            .body(r#"{"k":1}"#)
            .md5_of_body("abc")
            .attributes(Attr::ApproximateReceiveCount, "2")
            .attributes(Attr::SentTimestamp, "1583348638390")
            .attributes(Attr::SenderId, "AIDAIENQZJOLO23YVJ4VO")
            .attributes(Attr::ApproximateFirstReceiveTimestamp, "1583348638400")
            .message_attributes(
                "kind",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("cmd")
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                "raw",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(b"hi".to_vec()))
                    .build()
                    .unwrap(),
            )
            .build()
    }

    #[test]
    fn builds_an_event_lambda_events_understands() {
        let v = sqs_event(
            &[message("m1"), message("m2")],
            "arn:aws:sqs:us-east-1:123456789012:q",
            "us-east-1",
        );
        let e: SqsEvent = serde_json::from_value(v).expect("a valid SQS event");
        assert_eq!(e.records.len(), 2);
        let r = &e.records[0];
        assert_eq!(r.message_id.as_deref(), Some("m1"));
        assert_eq!(r.receipt_handle.as_deref(), Some("rh-m1"));
        assert_eq!(r.body.as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(r.md5_of_body.as_deref(), Some("abc"));
        assert_eq!(r.event_source.as_deref(), Some("aws:sqs"));
        assert_eq!(
            r.event_source_arn.as_deref(),
            Some("arn:aws:sqs:us-east-1:123456789012:q")
        );
        assert_eq!(r.aws_region.as_deref(), Some("us-east-1"));
        assert_eq!(r.attributes["ApproximateReceiveCount"], "2");
        assert_eq!(r.attributes["SentTimestamp"], "1583348638390");
        assert_eq!(r.attributes["SenderId"], "AIDAIENQZJOLO23YVJ4VO");
        assert_eq!(
            r.attributes["ApproximateFirstReceiveTimestamp"],
            "1583348638400"
        );
        assert_eq!(
            r.message_attributes["kind"].string_value.as_deref(),
            Some("cmd")
        );
        assert_eq!(
            r.message_attributes["kind"].data_type.as_deref(),
            Some("String")
        );
        assert_eq!(
            r.message_attributes["raw"]
                .binary_value
                .as_deref()
                .map(Vec::as_slice),
            Some(&b"hi"[..])
        );
    }

    #[test]
    fn reads_batch_results() {
        let batch: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let ok = |v: Value| Ok(InvokeOutcome::Response(v));
        let partial = ok(json!({"batchItemFailures": [{"itemIdentifier": "b"}]}));
        assert_eq!(failed_ids(&partial, &batch, true), ids(&["b"]));
        assert_eq!(
            failed_ids(&partial, &batch, false),
            ids(&[]),
            "ignored without ReportBatchItemFailures"
        );
        assert_eq!(
            failed_ids(&ok(json!({"batchItemFailures": []})), &batch, true),
            ids(&[])
        );
        assert_eq!(failed_ids(&ok(Value::Null), &batch, true), ids(&[]));
        let stranger = ok(json!({"batchItemFailures": [{"itemIdentifier": "zzz"}]}));
        assert_eq!(failed_ids(&stranger, &batch, true), ids(&["a", "b", "c"]));
        assert_eq!(
            failed_ids(&ok(json!({"batchItemFailures": "b"})), &batch, true),
            ids(&["a", "b", "c"])
        );
        let error = Ok(InvokeOutcome::FunctionError(FunctionError {
            error_type: "E".into(),
            error_message: "m".into(),
        }));
        assert_eq!(failed_ids(&error, &batch, true), ids(&["a", "b", "c"]));
        assert_eq!(
            failed_ids(&Err(InvokeError::ShuttingDown), &batch, false),
            ids(&["a", "b", "c"])
        );
    }
}
