//! Everything the functions share: domain types and rules (no AWS imports in `domain`), the
//! verified caller, the event envelope, the store and event-bus traits with their AWS adapters, one error type mapped
//! to HTTP once, configuration, AWS client set-up and telemetry.
//!
//! Every function's `main` runs a current-thread Tokio runtime (`flavor = "current_thread"`).
//! A Lambda instance handles one invocation at a time, and below 1,769 MB of memory it has at
//! most one vCPU: worker threads would buy nothing but their start-up. Spawning them is
//! ≈ 0.3 ms of every cold start here (docs/ARCHITECTURE.md §Budgets: init at most 1.5× hello-world).
//! The messages of a batch still run concurrently: their work is I/O, interleaved on one
//! thread ([`worker`]).

pub mod auth;
pub mod aws;
pub mod bus;
pub mod command;
pub mod config;
pub mod dlq;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod http;
pub mod http_client;
pub mod lambda;
pub mod metrics;
pub mod queue;
pub mod retry;
pub mod store;
pub mod telemetry;
pub mod worker;

pub use error::Error;

#[cfg(test)]
mod fuzz_tests;
