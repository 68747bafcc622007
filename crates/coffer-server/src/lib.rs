//! coffer's control plane: the `coffer serve` server.
//!
//! - [`store`]: storage on SQLite (the default: a file, no setup) or
//!   PostgreSQL (`DATABASE_URL=postgres://…`, for several server processes),
//!   one schema with migrations per backend, behind one repository type.
//! - [`api`]: the HTTP API (axum): typed JSON errors, body limits.
//! - [`listen`]: plain HTTP only on loopback.
//! - [`serve`]: putting it together.
//!
//! The control-plane issues grow this crate: users and roles, devices and
//! tokens, policies, escrow, audit, accounting.

pub mod api;
pub mod audit;
pub mod backup;
pub mod blob_seal;
pub mod blobs;
pub mod client_addr;
pub mod console;
pub mod data;
pub mod demo;
pub mod files;
pub mod keys;
pub mod listen;
pub mod local;
pub mod metrics;
pub mod mqtt;
pub mod openapi;
pub mod policy;
mod private_file;
pub mod record_seal;
pub mod serve;
pub mod store;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tls;
pub use coffer_protocol::untrusted;

pub use api::LoginLimits;
pub use listen::{check_listen, ListenError, Transport};
pub use serve::{ServeConfig, Server, DEFAULT_SESSION_TTL};
pub use store::{Store, StoreError};
pub use tls::{TlsError, TlsSetting};
