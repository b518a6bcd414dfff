//! A "sam local without Docker": runs `template.yaml` on this machine.
//!
//! [`template`] reads the SAM template, [`emulator`] finds or starts the AWS emulator,
//! [`provision`] creates the template's resources in it, [`runtime`] runs the functions'
//! binaries behind the Lambda Runtime API, [`gateway`] serves the HTTP API routes and
//! [`poller`] feeds SQS event sources to their functions, [`scheduler`] fires their `Schedule` and
//! `ScheduleV2` events, [`auth`] signs and checks the JWTs of
//! the template's authorizers, [`diagram`] draws the template's wiring as a Graphviz graph.
//! [`dashboard`] shows the running stack live at `/_local/`, from the [`runtime`]'s journal.
//! [`tls`] puts an HTTPS front with a local CA before the emulator (`local dev --tls`).
//! [`cli`] wires them together for the `local` binary.

pub mod auth;
pub mod chaos;
pub mod cli;
pub mod dashboard;
pub mod diagram;
pub mod emulator;
pub mod gateway;
pub mod poller;
pub mod provision;
pub mod runtime;
pub mod scheduler;
pub mod template;
pub mod tls;
