//! HTTP API route matching: `{param}` segments, a trailing greedy `{proxy+}`, `ANY` methods.
//!
//! When several routes match, API Gateway picks the most specific one: segment by segment a
//! literal beats a `{param}`, which beats a greedy `{proxy+}`; then an exact method beats `ANY`.

use std::collections::BTreeMap;

use crate::template::{Access, Template};

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

/// A route of the template, bound to its function.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Upper-case method or `ANY`.
    pub method: String,
    /// Path as written in the template.
    pub path: String,
    /// Logical id of the function serving it.
    pub function: String,
    /// Who may call it.
    pub access: Access,
    segments: Vec<Segment>,
}

impl Route {
    /// `METHOD /path`, as in the event's `routeKey`.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Per-segment rank (lower is more specific), then the method's.
    fn specificity(&self) -> (Vec<u8>, bool) {
        let ranks = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 0,
                Segment::Param(_) => 1,
                Segment::Greedy(_) => 2,
            })
            .collect();
        (ranks, self.method == "ANY")
    }

    /// Path parameters when `segments` (of the request path) match this route.
    fn params(&self, segments: &[&str]) -> Option<BTreeMap<String, String>> {
        let mut params = BTreeMap::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Greedy(name) => {
                    let rest = segments.get(i..).filter(|r| !r.is_empty())?;
                    params.insert(name.clone(), percent_decode(&rest.join("/"), false));
                    return Some(params);
                }
                Segment::Literal(lit) => {
                    if segments.get(i) != Some(&lit.as_str()) {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = segments.get(i).filter(|v| !v.is_empty())?;
                    params.insert(name.clone(), percent_decode(value, false));
                }
            }
        }
        (segments.len() == self.segments.len()).then_some(params)
    }
}

/// A matched route with its path parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
    pub params: BTreeMap<String, String>,
}

/// Every `HttpApi` route of the template.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// The routes of every function of `template`, sorted by path then method.
    pub fn from_template(template: &Template) -> RouteTable {
        let mut routes: Vec<Route> = template
            .functions
            .values()
            .flat_map(|f| {
                f.routes.iter().map(|r| Route {
                    method: r.method.clone(),
                    path: r.path.clone(),
                    function: f.logical_id.clone(),
                    access: r.access.clone(),
                    segments: parse(&r.path),
                })
            })
            .collect();
        routes.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
        RouteTable { routes }
    }

    /// Every route.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route matching `method` and the raw request `path`.
    pub fn find(&self, method: &str, path: &str) -> Option<RouteMatch<'_>> {
        let segments = split(path);
        self.routes
            .iter()
            .filter(|r| r.method == "ANY" || r.method.eq_ignore_ascii_case(method))
            .filter_map(|r| {
                r.params(&segments)
                    .map(|params| RouteMatch { route: r, params })
            })
            .min_by(|a, b| a.route.specificity().cmp(&b.route.specificity()))
    }
}

fn split(path: &str) -> Vec<&str> {
    match path.strip_prefix('/') {
        Some("") | None => Vec::new(),
        Some(rest) => rest.split('/').collect(),
    }
}

fn parse(path: &str) -> Vec<Segment> {
    split(path)
        .into_iter()
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => match name.strip_suffix('+') {
                    Some(greedy) => Segment::Greedy(greedy.to_string()),
                    None => Segment::Param(name.to_string()),
                },
                None => Segment::Literal(s.to_string()),
            },
        )
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, for query strings).
/// Invalid escapes are kept as written.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let text = "Resources:\n  A:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: a}}\n    Properties:\n      Events:\n        Get: {Type: HttpApi, Properties: {Method: get, Path: '/agents/{agentId}/state'}}\n        Match: {Type: HttpApi, Properties: {Method: POST, Path: /agents/match}}\n        Post: {Type: HttpApi, Properties: {Method: POST, Path: '/agents/{agentId}'}}\n        List: {Type: HttpApi, Properties: {Method: GET, Path: /agents}}\n  B:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: b}}\n    Properties:\n      Events:\n        Files: {Type: HttpApi, Properties: {Method: ANY, Path: '/files/{proxy+}'}}\n        FilesGet: {Type: HttpApi, Properties: {Method: GET, Path: '/files/{proxy+}'}}\n        Root: {Type: HttpApi, Properties: {Method: GET, Path: /}}\n";
        RouteTable::from_template(&Template::parse(text, "t.yaml").unwrap())
    }

    fn found(method: &str, path: &str) -> Option<(String, String, BTreeMap<String, String>)> {
        let t = table();
        t.find(method, path)
            .map(|m| (m.route.key(), m.route.function.clone(), m.params))
    }

    /// What [`found`] gives for the route `key` of `function` with the path parameters `pairs`.
    fn route(
        key: &str,
        function: &str,
        pairs: &[(&str, &str)],
    ) -> Option<(String, String, BTreeMap<String, String>)> {
        Some((key.into(), function.into(), params(pairs)))
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matches_literals_and_params() {
        assert_eq!(
            found("GET", "/agents/a%201/state"),
            route("GET /agents/{agentId}/state", "A", &[("agentId", "a 1")])
        );
        assert_eq!(found("GET", "/agents").unwrap().0, "GET /agents");
        assert_eq!(found("GET", "/").unwrap().0, "GET /");
        // A literal segment beats a parameter.
        assert_eq!(
            found("POST", "/agents/match").unwrap().0,
            "POST /agents/match"
        );
        assert_eq!(
            found("POST", "/agents/m2").unwrap().2,
            params(&[("agentId", "m2")])
        );
    }

    #[test]
    fn rejects_wrong_methods_and_shapes() {
        assert_eq!(found("DELETE", "/agents/a/state"), None);
        assert_eq!(found("GET", "/agents/a/state/x"), None);
        assert_eq!(found("GET", "/agents/"), None);
        assert_eq!(found("GET", "/agents//state"), None);
        assert_eq!(found("GET", "/nope"), None);
    }

    #[test]
    fn greedy_paths_take_the_rest_and_exact_methods_win() {
        assert_eq!(
            found("GET", "/files/a/b/c.txt"),
            route("GET /files/{proxy+}", "B", &[("proxy", "a/b/c.txt")])
        );
        assert_eq!(found("PUT", "/files/x").unwrap().0, "ANY /files/{proxy+}");
        assert_eq!(
            found("GET", "/files"),
            None,
            "greedy needs at least one segment"
        );
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%2Fb%zz%4", false), "a/b%zz%4");
        assert_eq!(percent_decode("a+b%2B", true), "a b+");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%", true), "%");
    }
}
