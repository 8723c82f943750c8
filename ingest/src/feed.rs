//! What the gateway needs from fanout, as a small interface: in `quire
//! serve` fanout runs in the same process; a gateway process of a
//! distributed deployment provides the same calls.

use std::sync::Arc;

use protocol::{AppliedRecord, ErrorCode, OutRecord, ProtoError};
use tokio::sync::{mpsc, oneshot};

/// A frame ready to send, shared by every subscriber it goes to.
pub type Frame = Arc<str>;

/// A subscriber after its join.
pub struct Subscription {
    pub id: u64,
    /// Snapshot or catch-up, then `ready`; sent first.
    pub catchup: Vec<Frame>,
    /// Live frames after `ready`.
    pub rx: mpsc::Receiver<Frame>,
    /// Fires when the subscriber is cut off, with the code to send.
    pub kicked: oneshot::Receiver<ErrorCode>,
}

/// The outcome of registering for an op's outcome.
pub enum Waited {
    /// `(client, cseq)` was applied already: the original record.
    AlreadyApplied(Box<AppliedRecord>),
    /// Resolves with the op's applied or rejection record.
    Pending(oneshot::Receiver<OutRecord>),
}

/// Subscriptions, reads and the duplicate checks, as the gateway uses them.
/// Errors are what the client is told.
#[async_trait::async_trait]
pub trait Feed: Send + Sync + 'static {
    /// Join (SPEC §5): catch-up or snapshot, `ready`, then the live stream.
    async fn join(
        &self,
        doc: &str,
        client: &str,
        since: Option<u64>,
    ) -> Result<Subscription, ProtoError>;
    async fn leave(&self, doc: &str, id: u64);
    /// The binding and duplicate checks of an op (SPEC §4, §7):
    /// `Some(seq)` when it was applied at `seq`.
    async fn check_op(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        base: u64,
        user: &str,
    ) -> Result<Option<u64>, ProtoError>;
    /// The same checks, then registers for the op's outcome (before it is
    /// produced).
    async fn wait_for(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        base: u64,
        user: &str,
    ) -> Result<Waited, ProtoError>;
    /// Drops a waiter that gave up.
    async fn forget_waiter(&self, doc: &str, client: &str, cseq: u64);
    /// `(version, text)` now, or at the last version `<= at`.
    async fn read(&self, doc: &str, at: Option<u64>) -> Result<(u64, String), ProtoError>;
    /// Applied records after `after`, oldest first, at most `limit`.
    async fn history(
        &self,
        doc: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>, ProtoError>;
    /// Whether the backends answer.
    async fn ready(&self) -> bool;
}
