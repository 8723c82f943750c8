//! The transformer role (SPEC §1): for each partition of `quire.ops`, in
//! offset order, dedup by `(client, cseq)`, transform against the applied ops
//! after the op's base, validate, apply, and produce one applied or rejection
//! record to `quire.applied`. Input offsets are committed only after the
//! output is durable.
//!
//! [`process`] is the whole decision, sans I/O: the output is a pure function
//! of the document state and the raw record, so replays are byte-identical.

mod core;
mod run;

pub use crate::core::{process, CoreConfig, Outcome, TransformerDoc};
pub use run::{run, Metrics, TransformerConfig, TransformerError};
