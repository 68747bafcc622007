//! Device data delivery: batches of readings, in JSON or CBOR
//! (docs/formats/data-batch.md). The batch and reading types, their
//! validation and digest are wire types shared with devices
//! (`coffer_protocol::data`).

pub use coffer_protocol::data::*;
