//! Configuration is read once, at cold start, from the environment the template sets. A missing
//! variable stops the function during init with its name, instead of failing every request.

#[derive(Debug, thiserror::Error)]
#[error("missing environment variable {0}")]
pub struct MissingVar(pub &'static str);

/// The value of a required environment variable.
pub fn var(name: &'static str) -> Result<String, MissingVar> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(MissingVar(name))
}

/// The value of an optional numeric variable, falling back to `default` when unset or unparsable.
pub fn var_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
