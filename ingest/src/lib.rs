//! Quire's gateway: the ingest role plus the WebSocket and HTTP front door.
//!
//! Ingest authenticates, checks shape and limits, stamps `user` and `ts`
//! and produces one raw record per op to `quire.ops` (SPEC §1). It never
//! transforms and never answers an op itself: acks come back through the
//! log, the transformer and fanout, exactly as with Kafka.
//!
//! Only this crate (and fanout's frames) knows WebSocket and JSON framing.
//! What it needs of fanout is the small [`Feed`] interface.

mod auth;
mod feed;
mod gateway;
mod health;
mod http;
mod ingest;
mod ratelimit;
mod socket;
mod ws;

pub use auth::{Auth, Claims, Principal, Role};
pub use feed::{Feed, Frame, Subscription, Waited};
pub use gateway::Gateway;
pub use health::Health;
pub use http::router;
pub use ingest::{Ingest, Metrics};
