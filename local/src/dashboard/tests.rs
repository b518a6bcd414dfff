use super::*;
use crate::emulator;
use crate::provision::{ProvisionOptions, provision};

fn routes(paths: &[&str]) -> RouteTable {
    let events: String = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!("        E{i}: {{Type: HttpApi, Properties: {{Method: GET, Path: '{p}'}}}}\n")
        })
        .collect();
    let text = format!(
        "Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n    Metadata: {{BuildProperties: {{Binary: fn}}}}\n    Properties:\n      Events:\n{events}"
    );
    RouteTable::from_template(&Template::parse(&text, "t.yaml").unwrap())
}

#[test]
fn routes_under_the_dashboard_prefix_are_refused() {
    assert_eq!(check_routes(&routes(&["/echo", "/local/x", "/"])), Ok(()));
    for taken in ["/_local", "/_local/api/state", "/_localx"] {
        let err = check_routes(&routes(&["/echo", taken])).unwrap_err();
        assert!(
            err.contains(&format!("GET {taken} (function Fn)")) && err.contains("reserved"),
            "{err}"
        );
    }
}

/// On the real template, provisioned in an emulator, every DLQ redrives to where the ops API
/// (`OPS_DLQS` of `OpsFunction`) sends it: its source queue, or the bus of the rule whose
/// target it is; and no other queue offers a redrive.
#[tokio::test(flavor = "multi_thread")]
async fn every_dlq_of_the_real_template_redrives_where_the_ops_api_does() {
    let emu = emulator::spawn_on_free_port().expect("emulator");
    let sdk = emulator::sdk_config(&emu.endpoint).await;
    let template = crate::template::tests::real_template();
    let stack = provision(&template, &sdk, &ProvisionOptions::default())
        .await
        .expect("provision");
    let listed = queues(&template, &stack);
    let ops = &stack.function_env("OpsFunction").unwrap()["OPS_DLQS"];
    let mut expected: BTreeMap<String, Target> = BTreeMap::new();
    for entry in ops.split(',') {
        let parts: Vec<&str> = entry.split('|').collect();
        let target = match parts[2].strip_prefix("bus:") {
            Some(bus) => Target::Bus(bus.to_string()),
            None => Target::Queue(parts[2].to_string()),
        };
        expected.insert(parts[1].to_string(), target);
    }
    let offered: BTreeMap<String, Target> = listed
        .iter()
        .filter_map(|q| Some((q.url.clone(), q.redrive.clone()?.1)))
        .collect();
    assert_eq!(offered, expected);
    let agents = listed.iter().find(|q| q.id == "AgentsQueue").unwrap();
    assert_eq!(agents.consumers, ["AgentsWorkerFunction"]);
    assert_eq!(agents.dlq.as_deref(), Some("AgentsDLQ"));
    let delivery = listed.iter().find(|q| q.id == "EventDeliveryDLQ").unwrap();
    assert!(
        delivery
            .dead_letters_of
            .iter()
            .all(|o| o.starts_with("rule ")),
        "{:?}",
        delivery.dead_letters_of
    );
}
