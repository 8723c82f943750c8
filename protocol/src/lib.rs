//! Everything Quire puts on a wire or in a log, in one place (SPEC §5, §7, §10).
//!
//! Parsing is strict: every malformed input becomes a [`ProtoError`] carrying
//! an [`ErrorCode`], never a panic.

pub mod chain;
mod error;
mod ids;
mod limits;
mod msg;
pub mod packed;
mod record;

pub use error::{ErrorCode, ProtoError};
pub use ids::{validate_client_id, validate_doc_id};
pub use limits::{Limits, RECORD_OVERHEAD};
pub use msg::{ClientMsg, Cursor, ServerMsg};
pub use record::{
    decode_out_record, decode_presence_record, decode_raw_record, AppliedRecord, ClientEntry,
    OutRecord, PresenceRecord, RawRecord, RejectedRecord, Snapshot, APPLIED_VERSION,
    APPLIED_VERSIONS_READ, RECORD_VERSION,
};

/// Milliseconds since the Unix epoch; the `ts` stamped by ingest.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
