//! Configuration is read once, at cold start, from the environment the template sets. A missing
//! variable stops the function during init with its name, instead of failing every request.
//!
//! Every function reads it the same way: its `init(sdk, &Vars)`, which `main` calls through
//! [`crate::lambda`]. On Lambda and under `make dev` the variables are the process environment
//! ([`Vars::process`]); the system tests call the same `init` with the template's environment
//! as the local runner resolves it ([`Vars::from`] a map), so a variable the template forgets
//! fails a test, not a deployment. Stores read `TABLE_NAME` ([`crate::store::open`]) and the
//! bus `EVENT_BUS_NAME` ([`crate::bus::EventBridgeBus::open`]).

use std::collections::BTreeMap;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
#[error("missing environment variable {0}")]
pub struct MissingVar(pub &'static str);

/// A function's environment variables. An empty value counts as unset.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// `None`: the process environment.
    map: Option<BTreeMap<String, String>>,
}

impl Vars {
    /// The process environment (what Lambda sets from the template).
    pub fn process() -> Vars {
        Vars { map: None }
    }

    /// `name`'s value, unless unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        match &self.map {
            None => std::env::var(name).ok(),
            Some(map) => map.get(name).cloned(),
        }
        .filter(|v| !v.is_empty())
    }

    /// The value of a required variable.
    pub fn var(&self, name: &'static str) -> Result<String, MissingVar> {
        self.get(name).ok_or(MissingVar(name))
    }

    /// The value of an optional variable, `default` when unset or unparsable.
    pub fn var_or<T: FromStr>(&self, name: &str, default: T) -> T {
        self.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// These variables with `name` set to `value` (a test pointing one function elsewhere).
    pub fn with(self, name: &str, value: impl Into<String>) -> Vars {
        let mut map = match self.map {
            Some(map) => map,
            None => std::env::vars().collect(),
        };
        map.insert(name.to_owned(), value.into());
        Vars { map: Some(map) }
    }
}

impl From<BTreeMap<String, String>> for Vars {
    fn from(map: BTreeMap<String, String>) -> Vars {
        Vars { map: Some(map) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_read_as_the_environment_would_be() {
        let vars = Vars::from(BTreeMap::from([
            ("A".to_owned(), "x".to_owned()),
            ("EMPTY".to_owned(), String::new()),
            ("N".to_owned(), "7".to_owned()),
        ]));
        assert_eq!(vars.var("A").unwrap(), "x");
        assert_eq!(vars.var("EMPTY").unwrap_err().0, "EMPTY");
        assert_eq!(
            vars.var("MISSING").unwrap_err().to_string(),
            "missing environment variable MISSING"
        );
        assert_eq!(vars.var_or("N", 1), 7);
        assert_eq!(vars.var_or("A", 1), 1);
        assert_eq!(vars.clone().with("A", "y").var("A").unwrap(), "y");
    }
}
