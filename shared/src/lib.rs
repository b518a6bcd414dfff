//! Everything the functions share: domain types and rules (no AWS imports in `domain`), the
//! verified caller, the event envelope, the store and event-bus traits with their AWS adapters, one error type mapped
//! to HTTP once, configuration, AWS client set-up and telemetry.

pub mod auth;
pub mod aws;
pub mod bus;
pub mod command;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod https;
pub mod metrics;
pub mod store;
pub mod telemetry;
pub mod worker;

pub use error::Error;

#[cfg(test)]
mod fuzz_tests;
