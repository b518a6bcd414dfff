//! The contract, checked both ways: `openapi.yaml` against the template (every route in both,
//! with its scopes: [`routes`]), against the code (documented errors: [`errors`]; documented
//! limits are the ones the handlers enforce: [`limits`]), against real responses (a short run
//! of the real handlers on a moto server validates against the spec: [`real_run`]); the
//! template against least privilege and message routing ([`template`]); and the README's
//! guarantees table against the tests it names.

mod errors;
mod limits;
mod real_run;
mod routes;
mod template;

use std::collections::{BTreeMap, BTreeSet};

use lambda_http::{Body, Response};
use local::template::Template;
use serde_json::{Value, json};
use system_tests::{Env, fixture, request};

fn spec() -> Value {
    docs_api::spec().expect("openapi.yaml parses")
}

fn template() -> Template {
    Template::load(system_tests::root().join("template.yaml")).expect("template.yaml loads")
}

const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

/// Every operation of the spec by `(METHOD, path)`.
fn operations(spec: &Value) -> BTreeMap<(String, String), Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                ops.insert((m.to_uppercase(), path.clone()), op.clone());
            }
        }
    }
    ops
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = spec
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(spec, target)
        }
        None => v,
    }
}

// ------------------------------------------------------------------ JSON Schema

/// Validates JSON against a schema of `openapi.yaml` (OpenAPI 3.1: JSON Schema 2020-12) with
/// the `jsonschema` crate, `format`s asserted (`uuid`, `date-time`).
struct Validator<'a> {
    spec: &'a Value,
}

impl<'a> Validator<'a> {
    fn new(spec: &'a Value) -> Self {
        Validator { spec }
    }

    /// `schema` (a fragment of the spec, whose `$ref`s point into it) compiled once, to
    /// validate many values.
    fn compile(&self, schema: &Value) -> jsonschema::Validator {
        let mut root = self.spec.clone();
        root["$defs"] = json!({ "target": schema });
        root["$ref"] = "#/$defs/target".into();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{schema} does not compile: {e}"))
    }

    fn errors(&self, schema: &Value, value: &Value) -> Vec<String> {
        self.compile(schema)
            .iter_errors(value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }
}

#[test]
fn the_validator_refuses_what_breaks_a_schema() {
    let spec = spec();
    let v = Validator::new(&spec);
    let problem = json!({"$ref": "#/components/schemas/FieldProblem"});
    let good = json!({"type": "/problems/validation", "title": "Invalid request", "status": 422,
                      "detail": "capacity: out of range", "field": "capacity"});
    assert_eq!(v.errors(&problem, &good), Vec::<String>::new());
    let mut no_field = good.clone();
    no_field.as_object_mut().unwrap().remove("field");
    assert!(!v.errors(&problem, &no_field).is_empty());
    let agent = json!({"$ref": "#/components/schemas/Agent"});
    let bad = json!({"agentId": "a b", "name": "A", "state": "BUSY", "skills": [], "capacity": 51,
                     "activeConversations": 0, "version": 1, "updatedAt": "yesterday"});
    let errors = v.errors(&agent, &bad);
    for what in ["a b", "BUSY", "maximum of 50", "date-time"] {
        assert!(
            errors.iter().any(|e| e.contains(what)),
            "{what}: {errors:?}"
        );
    }
}

/// Every test the README's guarantees table names exists: the table cannot point at a test
/// that was renamed or removed.
#[test]
fn every_test_the_readme_names_exists() {
    let readme = std::fs::read_to_string(system_tests::root().join("README.md")).unwrap();
    let start = readme
        .find("| guarantee | proven by |")
        .expect("the guarantees table");
    let table = &readme[start..start + readme[start..].find("\n\n").unwrap()];
    let mut sources = String::new();
    let mut dirs = vec![system_tests::root()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && name != "target" && name != ".git" {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut named = 0;
    for part in table.split('`').skip(1).step_by(2) {
        let is_test_name = part.len() > 12
            && part.contains('_')
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if is_test_name {
            named += 1;
            assert!(
                sources.contains(&format!("fn {part}(")),
                "the README names {part}, which is no test"
            );
        }
    }
    assert!(named > 50, "the table names the tests ({named} found)");
}
