//! Metrics in CloudWatch Embedded Metric Format: one JSON line on stdout, which CloudWatch Logs
//! turns into metrics. No API call on the request path, no extra IAM permission, no latency.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

const NAMESPACE: &str = "ServerlessCqrs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// The one dimension every metric has: the function (its Lambda name; `local` elsewhere).
fn function_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".into())
    })
}

/// The EMF document for these metrics.
pub fn document(metrics: &[(&str, f64, Unit)]) -> Value {
    let timestamp = chrono::Utc::now().timestamp_millis();
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, _, unit)| json!({ "Name": name, "Unit": unit.as_str() }))
        .collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": definitions,
            }]
        }),
    );
    doc.insert("Function".into(), function_name().into());
    for (name, value, _) in metrics {
        doc.insert((*name).to_owned(), json!(value));
    }
    Value::Object(doc)
}

/// Writes the metrics as one EMF line.
pub fn emit(metrics: &[(&str, f64, Unit)]) {
    println!("{}", document(metrics));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules CloudWatch applies to an EMF line: every dimension and metric it declares is
    /// a top-level member, metric values are numbers.
    #[test]
    fn documents_are_valid_emf() {
        let doc = document(&[
            ("CommandsAccepted", 1.0, Unit::Count),
            ("Latency", 3.5, Unit::Milliseconds),
        ]);
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_i64().unwrap() > 0);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        for dims in directive["Dimensions"].as_array().unwrap() {
            for d in dims.as_array().unwrap() {
                assert!(doc[d.as_str().unwrap()].is_string());
            }
        }
        for m in directive["Metrics"].as_array().unwrap() {
            assert!(doc[m["Name"].as_str().unwrap()].is_number());
            assert!(["Count", "Milliseconds"].contains(&m["Unit"].as_str().unwrap()));
        }
        assert_eq!(doc["Latency"], 3.5);
    }
}
