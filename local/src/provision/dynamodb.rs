//! `AWS::DynamoDB::Table` and `AWS::Serverless::SimpleTable`.

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    LocalSecondaryIndex, Projection, ProjectionType, ProvisionedThroughput, ScalarAttributeType,
    StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use serde_json::{Value, json};

use super::{Clients, ProvisionError, Stack, TableInfo, aws, created, invalid, physical_name};

/// Creates (or finds) the table, then applies its TTL setting.
pub(super) async fn create_table(
    c: &Clients,
    stack: &mut Stack,
    id: &str,
    props: &Value,
) -> Result<(), ProvisionError> {
    let bad = |what: String| invalid(id, what);
    let name = physical_name(stack, id, props, "TableName", "");
    let mut req = c
        .dynamodb
        .create_table()
        .table_name(&name)
        .set_attribute_definitions(Some(
            items(props, "AttributeDefinitions")
                .iter()
                .map(attribute_definition)
                .collect::<Result<_, _>>()
                .map_err(bad)?,
        ))
        .set_key_schema(Some(key_schema(props).map_err(bad)?));
    let provisioned = props.get("BillingMode").and_then(Value::as_str) == Some("PROVISIONED");
    if provisioned {
        req = req
            .billing_mode(BillingMode::Provisioned)
            .set_provisioned_throughput(throughput(props).map_err(bad)?);
    } else {
        req = req.billing_mode(BillingMode::PayPerRequest);
    }
    let gsis = items(props, "GlobalSecondaryIndexes")
        .iter()
        .map(|g| {
            GlobalSecondaryIndex::builder()
                .index_name(text(g, "IndexName")?)
                .set_key_schema(Some(key_schema(g)?))
                .projection(projection(g))
                .set_provisioned_throughput(if provisioned { throughput(g)? } else { None })
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if !gsis.is_empty() {
        req = req.set_global_secondary_indexes(Some(gsis));
    }
    let lsis = items(props, "LocalSecondaryIndexes")
        .iter()
        .map(|l| {
            LocalSecondaryIndex::builder()
                .index_name(text(l, "IndexName")?)
                .set_key_schema(Some(key_schema(l)?))
                .projection(projection(l))
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if !lsis.is_empty() {
        req = req.set_local_secondary_indexes(Some(lsis));
    }
    if let Some(view) = props
        .pointer("/StreamSpecification/StreamViewType")
        .and_then(Value::as_str)
    {
        let spec = StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(StreamViewType::from(view))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        req = req.stream_specification(spec);
    }
    let created = created(id, "CreateTable", req.send().await, |e| {
        e.is_resource_in_use_exception()
    })?;
    let existing;
    let d = match &created {
        Some(out) => out.table_description(),
        None => {
            existing = c
                .dynamodb
                .describe_table()
                .table_name(&name)
                .send()
                .await
                .map_err(|e| aws(id, "DescribeTable", e))?;
            existing.table()
        }
    };
    let info = table_info(
        stack,
        &name,
        d.and_then(|d| d.table_arn()),
        d.and_then(|d| d.latest_stream_arn()),
    );
    if let Some(ttl) = props.get("TimeToLiveSpecification")
        && ttl.get("Enabled").and_then(Value::as_bool) == Some(true)
    {
        enable_ttl(c, stack, id, &name, ttl).await?;
    }
    stack.tables.insert(id.to_string(), info);
    Ok(())
}

/// A SimpleTable is a table with a one-attribute key (`PrimaryKey`, default `id` String).
pub(super) async fn create_simple_table(
    c: &Clients,
    stack: &mut Stack,
    id: &str,
    props: &Value,
) -> Result<(), ProvisionError> {
    let key = props.get("PrimaryKey");
    let key_name = key
        .and_then(|k| k.get("Name"))
        .and_then(Value::as_str)
        .unwrap_or("id");
    let key_type = match key
        .and_then(|k| k.get("Type"))
        .and_then(Value::as_str)
        .unwrap_or("String")
    {
        "String" => "S",
        "Number" => "N",
        "Binary" => "B",
        other => {
            return Err(invalid(
                id,
                format!("PrimaryKey.Type {other:?} is not String, Number or Binary"),
            ));
        }
    };
    let mut table = json!({
        "AttributeDefinitions": [{"AttributeName": key_name, "AttributeType": key_type}],
        "KeySchema": [{"AttributeName": key_name, "KeyType": "HASH"}],
    });
    if let Some(name) = props.get("TableName") {
        table["TableName"] = name.clone();
    }
    if let Some(tp) = props.get("ProvisionedThroughput") {
        table["BillingMode"] = json!("PROVISIONED");
        table["ProvisionedThroughput"] = tp.clone();
    }
    create_table(c, stack, id, &table).await
}

async fn enable_ttl(
    c: &Clients,
    stack: &mut Stack,
    id: &str,
    table: &str,
    ttl: &Value,
) -> Result<(), ProvisionError> {
    let spec = TimeToLiveSpecification::builder()
        .attribute_name(text(ttl, "AttributeName").map_err(|e| invalid(id, e))?)
        .enabled(true)
        .build()
        .map_err(|e| invalid(id, e.to_string()))?;
    // Re-enabling TTL on an existing table is refused ("already enabled"): that is the
    // idempotent case, so any refusal is only a warning.
    if let Err(e) = c
        .dynamodb
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        let msg = DisplayErrorContext(&e).to_string();
        if !msg.contains("already enabled") {
            stack.warnings.push(format!("{id}: TTL not enabled: {msg}"));
        }
    }
    Ok(())
}

fn table_info(stack: &Stack, name: &str, arn: Option<&str>, stream_arn: Option<&str>) -> TableInfo {
    TableInfo {
        name: name.to_string(),
        arn: arn.map_or_else(
            || {
                format!(
                    "arn:aws:dynamodb:{}:{}:table/{name}",
                    stack.region, stack.account_id
                )
            },
            str::to_string,
        ),
        stream_arn: stream_arn.map(str::to_string),
    }
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn text<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{key} missing or not a string in {v}"))
}

fn attribute_definition(v: &Value) -> Result<AttributeDefinition, String> {
    AttributeDefinition::builder()
        .attribute_name(text(v, "AttributeName")?)
        .attribute_type(ScalarAttributeType::from(text(v, "AttributeType")?))
        .build()
        .map_err(|e| e.to_string())
}

fn key_schema(v: &Value) -> Result<Vec<KeySchemaElement>, String> {
    let keys = items(v, "KeySchema");
    if keys.is_empty() {
        return Err(format!("KeySchema missing in {v}"));
    }
    keys.iter()
        .map(|k| {
            KeySchemaElement::builder()
                .attribute_name(text(k, "AttributeName")?)
                .key_type(KeyType::from(text(k, "KeyType")?))
                .build()
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn projection(v: &Value) -> Projection {
    let p = v.get("Projection");
    let kind = p
        .and_then(|p| p.get("ProjectionType"))
        .and_then(Value::as_str)
        .unwrap_or("ALL");
    let non_key = p
        .map(|p| items(p, "NonKeyAttributes"))
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect::<Vec<_>>();
    Projection::builder()
        .projection_type(ProjectionType::from(kind))
        .set_non_key_attributes((!non_key.is_empty()).then_some(non_key))
        .build()
}

fn throughput(v: &Value) -> Result<Option<ProvisionedThroughput>, String> {
    let Some(tp) = v.get("ProvisionedThroughput") else {
        return Ok(None);
    };
    let units = |key: &str| -> Result<i64, String> {
        match tp.get(key) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("ProvisionedThroughput.{key} is not an integer"))
    };
    ProvisionedThroughput::builder()
        .read_capacity_units(units("ReadCapacityUnits")?)
        .write_capacity_units(units("WriteCapacityUnits")?)
        .build()
        .map(Some)
        .map_err(|e| e.to_string())
}
