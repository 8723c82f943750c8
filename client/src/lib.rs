//! The Rust client for Quire.
//!
//! [`ClientCore`] is the SPEC §4 discipline with no I/O: one op in flight,
//! local edits composed into one buffered op, rebase on remote ops, resend
//! on reconnect, STALE_BASE recovery by three-way merge. [`Client`] drives it
//! over a WebSocket; the simulation tests drive it over an in-memory pipeline.

mod core;
mod ws;

pub use crate::core::{three_way, ClientCore, CoreEvent};
pub use ws::{Client, ClientError};
