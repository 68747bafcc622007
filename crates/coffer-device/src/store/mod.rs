//! Per-app encrypted stores: an app's SQL database, and the key-value and
//! record stores kept inside it. docs/formats/stores.md describes the files
//! and tables.

pub(crate) mod catalog;
pub mod database;
pub mod files;
pub mod kv;
pub mod records;
pub mod sync;
