//! Who may call a route: the `Auth` of the `AWS::Serverless::HttpApi` resources and of the
//! `HttpApi` events of functions, read as SAM reads them.
//!
//! A route is protected when its API has a `DefaultAuthorizer` or the route names an
//! `Authorizer`, unless the route says `Authorizer: NONE`. The route's `AuthorizationScopes`
//! replace the authorizer's own `AuthorizationScopes`; any one of them suffices. A route
//! without `ApiId` belongs to SAM's implicit API, which only `Globals.HttpApi` configures.
//!
//! `AWS_IAM` names SAM's built-in IAM authorizer when the API's `Auth` has
//! `EnableIamAuthorizer: true` (as the route's `Authorizer` or the API's `DefaultAuthorizer`);
//! without it, SAM looks `AWS_IAM` up among the API's `Authorizers` like any other name.
//!
//! JWT and IAM authorizers run locally. A route that uses another kind (a Lambda authorizer)
//! or names an authorizer that does not exist makes the template invalid: the runner must
//! never serve openly a route the template protects.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Logical id SAM gives the implicit HTTP API of `HttpApi` events without `ApiId`.
pub const IMPLICIT_API: &str = "ServerlessHttpApi";

/// The name of SAM's built-in IAM authorizer.
pub const IAM_AUTHORIZER: &str = "AWS_IAM";

/// The identity source SAM uses when a JWT authorizer names none.
const DEFAULT_IDENTITY_SOURCE: &str = "$request.header.Authorization";

/// An authorizer of one API.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuthorizerId {
    /// Logical id of the API (or [`IMPLICIT_API`]).
    pub api: String,
    /// Its name in the API's `Auth.Authorizers`.
    pub name: String,
}

/// A JWT authorizer (`Auth.Authorizers.<name>` with a `JwtConfiguration`).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAuthorizer {
    /// Lower-case name of the header carrying the token (`$request.header.<Name>`).
    pub header: String,
    /// `JwtConfiguration.issuer`, unresolved (usually `!Ref` of a parameter).
    pub issuer: Value,
    /// `JwtConfiguration.audience`, unresolved; a token for any one of them is accepted.
    pub audience: Vec<Value>,
}

/// How a route is authorized.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Anyone may call it; its events carry no authorizer context.
    Public,
    /// A valid token of `authorizer` is required and, when `scopes` is not empty, one of them.
    Jwt {
        authorizer: AuthorizerId,
        scopes: Vec<String>,
    },
    /// A request signed with Signature Version 4 (SAM's `AWS_IAM`); its events carry
    /// `requestContext.authorizer.iam`.
    Iam,
}

impl Access {
    /// The scopes of which a token needs one (none for a public route or any token).
    pub fn scopes(&self) -> &[String] {
        match self {
            Access::Public | Access::Iam => &[],
            Access::Jwt { scopes, .. } => scopes,
        }
    }
}

/// What one API's `Auth` declares.
#[derive(Debug, Default)]
struct ApiAuth {
    default: Option<String>,
    /// `EnableIamAuthorizer: true`: `AWS_IAM` is the built-in IAM authorizer.
    iam: bool,
    /// Every authorizer by name: `Some` for JWT authorizers, `None` for kinds not run locally.
    authorizers: BTreeMap<String, Option<JwtAuthorizer>>,
    /// Each authorizer's own `AuthorizationScopes`, the default of its routes.
    scopes: BTreeMap<String, Vec<String>>,
}

/// The `Auth` of every HTTP API of a template, the implicit one included.
#[derive(Debug, Default)]
pub(super) struct Apis {
    apis: BTreeMap<String, ApiAuth>,
}

impl Apis {
    /// Reads the `Auth` of every `AWS::Serverless::HttpApi` of `resources` and of the implicit
    /// API, each merged over `Globals.HttpApi.Auth` as SAM merges globals (mappings key by key,
    /// the resource's value winning).
    pub(super) fn read(resources: &Map<String, Value>, globals: &Value) -> Result<Apis, String> {
        let global = globals.pointer("/HttpApi/Auth");
        let mut apis = BTreeMap::new();
        let explicit = resources
            .iter()
            .filter(|(_, r)| {
                r.get("Type").and_then(Value::as_str) == Some("AWS::Serverless::HttpApi")
            })
            .map(|(id, r)| (id.as_str(), r.pointer("/Properties/Auth")));
        for (id, own) in explicit.chain([(IMPLICIT_API, None)]) {
            let mut auth = Value::Object(Map::new());
            for layer in [global, own].into_iter().flatten() {
                match layer {
                    Value::Object(_) => merge(&mut auth, layer),
                    Value::Null => {}
                    _ => return Err(format!("{id}: Auth is not a mapping")),
                }
            }
            let auth = auth.as_object().expect("merged mappings");
            let parsed = api_auth(auth).map_err(|e| format!("{id}: Auth: {e}"))?;
            apis.insert(id.to_string(), parsed);
        }
        Ok(Apis { apis })
    }

    /// The JWT authorizers of every API.
    pub(super) fn jwt_authorizers(&self) -> BTreeMap<AuthorizerId, JwtAuthorizer> {
        self.apis
            .iter()
            .flat_map(|(api, auth)| {
                auth.authorizers.iter().filter_map(move |(name, a)| {
                    let id = AuthorizerId {
                        api: api.clone(),
                        name: name.clone(),
                    };
                    a.clone().map(|a| (id, a))
                })
            })
            .collect()
    }

    /// The access of the route whose `HttpApi` event properties are `props`.
    pub(super) fn access(&self, props: &Value) -> Result<Access, String> {
        let api = match props.get("ApiId") {
            None | Some(Value::Null) => IMPLICIT_API.to_string(),
            Some(v) => match v.get("Ref").and_then(Value::as_str) {
                Some(id) => id.to_string(),
                None => return Err(format!("ApiId must be a !Ref to an HttpApi, got {v}")),
            },
        };
        let auth = self
            .apis
            .get(&api)
            .ok_or_else(|| format!("ApiId {api} is not an AWS::Serverless::HttpApi"))?;
        let route_auth = props.get("Auth").unwrap_or(&Value::Null);
        let named = match route_auth.get("Authorizer") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(v) => return Err(format!("Auth.Authorizer must be a string, got {v}")),
        };
        let route_scopes = match route_auth.get("AuthorizationScopes") {
            None | Some(Value::Null) => None,
            Some(v) => Some(strings(v).map_err(|e| format!("Auth.AuthorizationScopes: {e}"))?),
        };
        let name = match named.or(auth.default.as_deref()) {
            Some("NONE") | None if route_scopes.as_ref().is_some_and(|s| !s.is_empty()) => {
                return Err("AuthorizationScopes on a route without an authorizer".into());
            }
            Some("NONE") | None => return Ok(Access::Public),
            Some(name) => name,
        };
        if name == IAM_AUTHORIZER && auth.iam {
            if route_scopes.is_some_and(|s| !s.is_empty()) {
                return Err(
                    "AuthorizationScopes on an AWS_IAM route: only JWT authorizers have scopes"
                        .into(),
                );
            }
            return Ok(Access::Iam);
        }
        match auth.authorizers.get(name) {
            Some(Some(_)) => {}
            Some(None) => {
                return Err(format!(
                    "authorizer {name} of {api} is neither a JWT authorizer nor AWS_IAM; only those run locally"
                ));
            }
            None if name == IAM_AUTHORIZER => {
                return Err(format!(
                    "{api} has no authorizer {name}: the built-in IAM authorizer needs EnableIamAuthorizer: true in the API's Auth"
                ));
            }
            None => return Err(format!("{api} has no authorizer {name}")),
        }
        let scopes = route_scopes
            .or_else(|| auth.scopes.get(name).cloned())
            .unwrap_or_default();
        Ok(Access::Jwt {
            authorizer: AuthorizerId {
                api,
                name: name.to_string(),
            },
            scopes,
        })
    }
}

/// Overlays `over` on `base`: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn api_auth(auth: &Map<String, Value>) -> Result<ApiAuth, String> {
    let mut out = ApiAuth {
        default: match auth.get("DefaultAuthorizer") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(format!("DefaultAuthorizer must be a string, got {v}")),
        },
        iam: match auth.get("EnableIamAuthorizer") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(format!("EnableIamAuthorizer must be a boolean, got {v}")),
        },
        ..ApiAuth::default()
    };
    let authorizers = match auth.get("Authorizers") {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("Authorizers is not a mapping".into()),
    };
    for (name, a) in authorizers {
        let bad = |e: String| format!("authorizer {name}: {e}");
        if let Some(scopes) = a.get("AuthorizationScopes") {
            out.scopes
                .insert(name.clone(), strings(scopes).map_err(bad)?);
        }
        let jwt = match a.get("JwtConfiguration") {
            None | Some(Value::Null) => None,
            Some(config) => Some(jwt_authorizer(a, config).map_err(bad)?),
        };
        out.authorizers.insert(name.clone(), jwt);
    }
    Ok(out)
}

fn jwt_authorizer(a: &Value, config: &Value) -> Result<JwtAuthorizer, String> {
    let source = match a.get("IdentitySource") {
        None | Some(Value::Null) => DEFAULT_IDENTITY_SOURCE,
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("IdentitySource must be a string, got {v}")),
    };
    let header = source
        .strip_prefix("$request.header.")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            format!("IdentitySource {source:?}: only $request.header.<Name> is supported")
        })?;
    let issuer = config
        .get("issuer")
        .cloned()
        .ok_or("JwtConfiguration.issuer is missing")?;
    let audience = match config.get("audience") {
        Some(Value::Array(items)) if !items.is_empty() => items.clone(),
        _ => return Err("JwtConfiguration.audience must be a non-empty list".into()),
    };
    Ok(JwtAuthorizer {
        header: header.to_ascii_lowercase(),
        issuer,
        audience,
    })
}

fn strings(v: &Value) -> Result<Vec<String>, String> {
    v.as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect()
        })
        .ok_or_else(|| format!("expected a list of strings, got {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Template;
    use serde_json::json;

    const API: &str = "  Api:\n    Type: AWS::Serverless::HttpApi\n    Properties:\n      Auth:\n        DefaultAuthorizer: Jwt\n        Authorizers:\n          Jwt:\n            IdentitySource: $request.header.X-Token\n            AuthorizationScopes: [readers]\n            JwtConfiguration: {issuer: !Ref Iss, audience: [a, !Ref Aud]}\n          Other:\n            JwtConfiguration: {issuer: https://other, audience: [b]}\n          Lambda:\n            FunctionArn: arn:aws:lambda:us-east-1:123456789012:function:authz\n";

    /// A template with `API` and one function whose single route has `route` as properties.
    fn parse(globals: &str, route: &str) -> Result<Template, String> {
        let text = format!(
            "{globals}Resources:\n{API}  F:\n    Type: AWS::Serverless::Function\n    Metadata: {{BuildProperties: {{Binary: f}}}}\n    Properties:\n      Events:\n        R: {{Type: HttpApi, Properties: {{Method: GET, Path: /r, {route}}}}}\n"
        );
        Template::parse(&text, "t.yaml").map_err(|e| e.to_string())
    }

    fn access(route: &str) -> Access {
        parse("", route).unwrap().functions["F"].routes[0]
            .access
            .clone()
    }

    fn jwt(api: &str, name: &str, scopes: &[&str]) -> Access {
        Access::Jwt {
            authorizer: AuthorizerId {
                api: api.into(),
                name: name.into(),
            },
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn routes_get_the_default_authorizer_their_own_or_none() {
        assert_eq!(access("ApiId: !Ref Api"), jwt("Api", "Jwt", &["readers"]));
        assert_eq!(
            access("ApiId: !Ref Api, Auth: {AuthorizationScopes: [agents, supervisors]}"),
            jwt("Api", "Jwt", &["agents", "supervisors"])
        );
        assert_eq!(
            access("ApiId: !Ref Api, Auth: {Authorizer: Other}"),
            jwt("Api", "Other", &[])
        );
        assert_eq!(
            access("ApiId: !Ref Api, Auth: {Authorizer: NONE}"),
            Access::Public
        );
        // The implicit API has no authorizer unless Globals.HttpApi gives it one.
        assert_eq!(access("Auth: {}"), Access::Public);
        let global = "Globals:\n  HttpApi:\n    Auth:\n      DefaultAuthorizer: G\n      Authorizers:\n        G: {JwtConfiguration: {issuer: https://g, audience: [g]}}\n";
        let t = parse(global, "Auth: {}").unwrap();
        assert_eq!(
            t.functions["F"].routes[0].access,
            jwt(IMPLICIT_API, "G", &[])
        );
        // Globals are merged under every API's own Auth.
        assert!(t.authorizers.contains_key(&AuthorizerId {
            api: "Api".into(),
            name: "G".into()
        }));
    }

    #[test]
    fn jwt_authorizers_are_read_with_their_identity_source() {
        let t = parse("", "ApiId: !Ref Api").unwrap();
        let a = &t.authorizers[&AuthorizerId {
            api: "Api".into(),
            name: "Jwt".into(),
        }];
        assert_eq!(a.header, "x-token");
        assert_eq!(a.issuer, json!({"Ref": "Iss"}));
        assert_eq!(a.audience, vec![json!("a"), json!({"Ref": "Aud"})]);
        let names: Vec<&str> = t.authorizers.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            ["Jwt", "Other"],
            "the Lambda authorizer is not a JWT one"
        );
    }

    #[test]
    fn a_protected_route_that_cannot_be_protected_locally_is_an_error() {
        for (route, expected) in [
            (
                "ApiId: !Ref Api, Auth: {Authorizer: Lambda}",
                "authorizer Lambda of Api is neither a JWT authorizer nor AWS_IAM",
            ),
            (
                "ApiId: !Ref Api, Auth: {Authorizer: AWS_IAM}",
                "Api has no authorizer AWS_IAM: the built-in IAM authorizer needs EnableIamAuthorizer: true",
            ),
            (
                "ApiId: !Ref Api, Auth: {Authorizer: Nope}",
                "Api has no authorizer Nope",
            ),
            (
                "Auth: {AuthorizationScopes: [agents]}",
                "AuthorizationScopes on a route without an authorizer",
            ),
            (
                "ApiId: !Ref F",
                "ApiId F is not an AWS::Serverless::HttpApi",
            ),
            ("ApiId: api-id", "ApiId must be a !Ref to an HttpApi"),
            (
                "ApiId: !Ref Api, Auth: {AuthorizationScopes: agents}",
                "Auth.AuthorizationScopes: expected a list of strings",
            ),
        ] {
            let err = parse("", route).unwrap_err();
            assert!(
                err.contains("function F: event R: ") && err.contains(expected),
                "{route}: {err}"
            );
        }
        let bad_source = "Globals:\n  HttpApi:\n    Auth:\n      Authorizers:\n        Q: {IdentitySource: $request.querystring.t, JwtConfiguration: {issuer: i, audience: [a]}}\n";
        let err = parse(bad_source, "ApiId: !Ref Api").unwrap_err();
        assert!(
            err.contains("Api: Auth: authorizer Q: IdentitySource \"$request.querystring.t\""),
            "{err}"
        );
    }

    #[test]
    fn aws_iam_is_the_built_in_authorizer_when_the_api_enables_it() {
        let enabled = "Globals:\n  HttpApi:\n    Auth:\n      EnableIamAuthorizer: true\n";
        let access = |globals: &str, route: &str| {
            parse(globals, route).map(|t| t.functions["F"].routes[0].access.clone())
        };
        assert_eq!(
            access(enabled, "ApiId: !Ref Api, Auth: {Authorizer: AWS_IAM}"),
            Ok(Access::Iam)
        );
        // The implicit API, enabled and defaulted in Globals; NONE still opts out.
        let default = "Globals:\n  HttpApi:\n    Auth:\n      EnableIamAuthorizer: true\n      DefaultAuthorizer: AWS_IAM\n";
        assert_eq!(access(default, "Auth: {}"), Ok(Access::Iam));
        assert_eq!(
            access(default, "Auth: {Authorizer: NONE}"),
            Ok(Access::Public)
        );
        // Api's own DefaultAuthorizer (Jwt) wins over the global one; its routes may pick IAM.
        assert_eq!(
            access(default, "ApiId: !Ref Api"),
            Ok(jwt("Api", "Jwt", &["readers"]))
        );
        assert_eq!(Access::Iam.scopes(), &[] as &[String]);
        let err = access(
            enabled,
            "ApiId: !Ref Api, Auth: {Authorizer: AWS_IAM, AuthorizationScopes: [a]}",
        )
        .unwrap_err();
        assert!(err.contains("only JWT authorizers have scopes"), "{err}");
        let err = access(
            "Globals:\n  HttpApi:\n    Auth:\n      EnableIamAuthorizer: yes please\n",
            "ApiId: !Ref Api",
        )
        .unwrap_err();
        assert!(
            err.contains("EnableIamAuthorizer must be a boolean"),
            "{err}"
        );
    }

    #[test]
    fn the_real_template_protects_every_route_but_health_and_the_docs() {
        let t = crate::template::tests::real_template();
        let mut public = Vec::new();
        let mut iam = Vec::new();
        for f in t.functions.values() {
            for r in &f.routes {
                match &r.access {
                    Access::Public => public.push(r.path.as_str()),
                    Access::Iam => iam.push(format!("{} {}", r.method, r.path)),
                    Access::Jwt { authorizer, scopes } => {
                        assert_eq!(authorizer.name, "Jwt", "{}", r.path);
                        assert!(!scopes.is_empty(), "{} has no scopes", r.path);
                        for s in scopes {
                            assert!(
                                ["agents", "supervisors", "traders", "operators"]
                                    .contains(&s.as_str()),
                                "{}: {s}",
                                r.path
                            );
                        }
                    }
                }
            }
        }
        public.sort_unstable();
        assert_eq!(public, ["/health", "/openapi.json"]);
        // Service to service: the conversations worker signs its match requests.
        assert_eq!(iam, ["POST /agents/match"]);
        let ops = t.functions["OpsFunction"]
            .routes
            .iter()
            .find(|r| r.path == "/ops/dlq")
            .unwrap();
        assert_eq!(ops.access, jwt("HttpApi", "Jwt", &["operators"]));
        assert_eq!(t.authorizers.len(), 1);
        let a = t.authorizers.values().next().unwrap();
        assert_eq!(a.header, "authorization");
    }
}
