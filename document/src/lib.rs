//! A document as the roles see it, and how they rebuild it.
//!
//! [`DocState`] is text + version + dedup table + a window of recent applied
//! ops. Every role that needs a document (transformer, fanout, compactor, the
//! HTTP reads) rebuilds it the same way with [`load`]: the latest snapshot,
//! then the archived history after it, then the applied topic after the
//! compactor's position. State is a pure function of those records.

mod cache;
mod load;
mod share;
mod state;
mod window;

pub use cache::DocCache;
pub use load::{
    load, records_after, LoadError, Sources, Topics, COMPACTOR_GROUP, TRANSFORMER_GROUP,
};
pub use share::{Offer, TextShare};
pub use state::{tidy, Dedup, DocError, DocState, WindowPolicy, TIDY_EVERY};
pub use window::{Moves, Names, OpShape, WindowEntry, WindowOp};
