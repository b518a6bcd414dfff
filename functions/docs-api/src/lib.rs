//! `GET /openapi.json`: the API's contract, `openapi.yaml` at the repository root, converted to
//! JSON at build time (build.rs) and embedded. No AWS access, so no IAM policy.

use lambda_http::{Body, Request, Response};
use shared::http::Route;

/// The spec as written (YAML).
pub const OPENAPI_YAML: &str = include_str!("../../../openapi.yaml");

/// The spec as served: `OPENAPI_YAML` as compact JSON, made by build.rs (a test checks it
/// matches).
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The spec as a JSON value.
pub fn spec() -> Result<serde_json::Value, serde_yaml::Error> {
    serde_yaml::from_str(OPENAPI_YAML)
}

pub struct App {
    /// The spec, serialized once.
    json: String,
}

impl App {
    /// Never fails now that the spec is converted at build time; the `Result` stays so that
    /// callers need not change if it can fail again.
    pub fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(App {
            json: OPENAPI_JSON.to_owned(),
        })
    }
}

pub async fn handle(app: &App, req: Request) -> Response<Body> {
    shared::http::serve(req, |req| async move {
        let route = Route::of(&req);
        match route.key() {
            "GET /openapi.json" => Ok(Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("cache-control", "max-age=300")
                .body(Body::Text(app.json.clone()))
                .expect("static status and headers are valid")),
            _ => Err(route.unknown()),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_json_is_the_yaml_spec() {
        let from_yaml = serde_json::to_string(&spec().expect("openapi.yaml parses")).unwrap();
        assert_eq!(OPENAPI_JSON, from_yaml);
    }

    #[tokio::test]
    async fn serves_the_spec_as_json() {
        let app = App::new().expect("openapi.yaml parses");
        let event = include_str!("../../../events/docs-api/get-openapi.json");
        let req = lambda_http::request::from_str(event).expect("an HTTP API event");
        let resp = handle(&app, req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        assert!(v["paths"]["/openapi.json"]["get"].is_object());
    }
}
