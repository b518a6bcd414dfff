//! Domain types and rules. Nothing here knows about AWS: these are plain values and pure
//! functions, unit-tested without any I/O.

pub mod agents;
pub mod conversations;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod positions;
pub mod trades;
