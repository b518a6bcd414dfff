//! Every route of the template is in the spec and every operation of the spec in the
//! template, with the same scopes.

use super::*;

// ------------------------------------------------------------------ routes

#[test]
fn every_template_route_is_in_the_spec_and_every_spec_route_in_the_template() {
    let routes: BTreeSet<(String, String)> = template()
        .functions
        .values()
        .flat_map(|f| f.routes.iter().map(|r| (r.method.clone(), r.path.clone())))
        .collect();
    let documented: BTreeSet<(String, String)> = operations(&spec()).into_keys().collect();
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && phantom.is_empty(),
        "routes missing from openapi.yaml: {undocumented:?}; \
         operations of openapi.yaml that template.yaml does not route: {phantom:?}"
    );
    assert!(routes.len() >= 20, "{routes:?}");
}

/// How `template.yaml` protects a route, from its event's `Auth`: `None` when public, the
/// scopes of which a JWT needs one, or [`IAM`] for a SigV4-signed (service-to-service) route.
/// Marks an IAM-authorized route among scopes (no scope can be spelled like it).
pub(super) const IAM: &str = "<AWS_IAM>";

pub(super) fn template_scopes(
    t: &Template,
) -> BTreeMap<(String, String), Option<BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for f in t.functions.values() {
        let events = &t.resources[&f.logical_id].properties["Events"];
        for r in &f.routes {
            let auth = &events[&r.event]["Properties"]["Auth"];
            let scopes = if auth["Authorizer"] == "NONE" {
                None
            } else if auth["Authorizer"] == "AWS_IAM" {
                Some(BTreeSet::from([IAM.to_owned()]))
            } else {
                Some(
                    auth["AuthorizationScopes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect(),
                )
            };
            out.insert((r.method.clone(), r.path.clone()), scopes);
        }
    }
    out
}

/// Each route is as protected as the spec says: public exactly where the spec has
/// `security: []`, otherwise the same scopes (the spec lists them as alternatives, one
/// requirement each, which is how the JWT authorizer reads a route's `AuthorizationScopes`).
/// A route without scopes would let any valid token in, so none may lack them.
#[test]
fn every_route_requires_the_scopes_the_spec_documents() {
    let t = template();
    let api = &t.resources["HttpApi"].properties["Auth"];
    assert_eq!(
        api["DefaultAuthorizer"], "Jwt",
        "every route protected by default"
    );
    let jwt = &api["Authorizers"]["Jwt"];
    assert_eq!(jwt["IdentitySource"], "$request.header.Authorization");
    assert_eq!(
        jwt["JwtConfiguration"]["issuer"],
        json!({"Ref": "JwtIssuer"})
    );
    assert_eq!(
        jwt["JwtConfiguration"]["audience"],
        json!([{"Ref": "JwtAudience"}])
    );

    let spec = spec();
    let mut bad = Vec::new();
    for ((method, path), scopes) in template_scopes(&t) {
        let op = &operations(&spec)[&(method.clone(), path.clone())];
        let documented: Option<BTreeSet<String>> = match op["security"].as_array() {
            Some(reqs) if reqs.is_empty() => None,
            Some(reqs) if reqs.iter().any(|r| r.get("sigv4").is_some()) => {
                Some(BTreeSet::from([IAM.to_owned()]))
            }
            Some(reqs) => Some(
                reqs.iter()
                    .flat_map(|r| r["bearer"].as_array().into_iter().flatten())
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect(),
            ),
            None => Some(BTreeSet::from(["<missing security>".to_owned()])),
        };
        if scopes.as_ref().is_some_and(BTreeSet::is_empty) {
            bad.push(format!(
                "{method} {path}: protected but no AuthorizationScopes"
            ));
        }
        if scopes != documented {
            bad.push(format!(
                "{method} {path}: template {scopes:?}, openapi.yaml {documented:?}"
            ));
        }
    }
    let public: Vec<_> = template_scopes(&t)
        .into_iter()
        .filter(|(_, s)| s.is_none())
        .map(|((m, p), _)| format!("{m} {p}"))
        .collect();
    assert_eq!(public, ["GET /health", "GET /openapi.json"]);
    for (route, scope) in [
        ("/ops/dlq", "operators"),
        ("/trades", "traders"),
        ("/agents/match", IAM),
    ] {
        let wanted = BTreeSet::from([scope.to_owned()]);
        let got = template_scopes(&t)
            .into_iter()
            .find(|((_, p), _)| p == route)
            .and_then(|(_, s)| s);
        assert_eq!(got, Some(wanted), "{route}");
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
