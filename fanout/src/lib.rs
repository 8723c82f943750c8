//! The fanout role (SPEC §1, §5): consumes `quire.applied`, keeps the
//! subscribers of each document, delivers every applied op to each of them
//! exactly once and in `seq` order, routes rejections to the submitter only,
//! serves joins (snapshot or catch-up, then `ready`) and relays presence.
//!
//! Per partition, one lock guards the consumer position and the documents:
//! a join reads the document and registers its subscriber under that lock,
//! so the live stream continues exactly where the catch-up ended.

mod hub;

pub use document::Dedup;
pub use hub::{
    dedup_check, join_messages, Fanout, FanoutConfig, FanoutError, Frame, Joined, Metrics, Waited,
};
