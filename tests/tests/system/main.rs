//! Every system test, in one test binary: each module of `system/` tests one service (or the
//! contract, or the whole system end to end) against one moto server per run, with the real
//! `aws-sdk-*` clients. One binary links the AWS SDK once instead of once per file.

mod agents;
mod analytics;
mod contract;
mod conversations;
mod e2e;
mod ops;
mod trades;
