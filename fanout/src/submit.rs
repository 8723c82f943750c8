//! What ingest asks before producing an op: the binding and duplicate
//! checks (SPEC §4, §7), and waiting for an HTTP submission's outcome.

use document::{Dedup, DocState};
use protocol::{AppliedRecord, ErrorCode, OutRecord, ProtoError};
use tokio::sync::oneshot;

use crate::hub::Hub;
use crate::{Fanout, FanoutError};

/// Result of registering for an op's outcome.
pub enum Waited {
    /// `(client, cseq)` was applied already: the original record.
    AlreadyApplied(Box<AppliedRecord>),
    /// Resolves with the op's applied or rejection record.
    Pending(oneshot::Receiver<OutRecord>),
}

/// What the checks of an op found (SPEC §4, §7).
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Not applied: produce it.
    New,
    /// Applied: the original record.
    Applied(AppliedRecord),
    /// Applied at this seq, but its record is not archived (yet).
    AppliedAt(u64),
}

/// The first step of the checks, on the document in memory.
#[derive(Debug)]
pub enum Checked {
    Done(Found),
    /// Only the archive can tell: look `(client, cseq)` up and [`resolve`].
    AskArchive(Ask),
}

/// Why the archive is asked.
#[derive(Debug, Clone, Copy)]
pub enum Ask {
    /// The client's older op: applied (then the archive has it) or never.
    Forgotten { seq: Option<u64> },
    /// A client the dedup table no longer knows, with a base older than the
    /// window (which starts after `floor`): a resend of an op applied long
    /// ago, or a new stale op. Only an archive that holds every op up to
    /// `floor` can say "never applied".
    Unknown { floor: u64 },
    /// Applied at `seq` and archived: the window dropped the op's text
    /// (`archived.rs`), so its record is the archive's. Its seq alone (an
    /// `ack dup`) needs no archive read.
    Archived { seq: u64 },
}

impl Ask {
    /// The seq the archive must hold for a miss to mean "never applied".
    pub fn must_reach(&self) -> Option<u64> {
        match self {
            Ask::Unknown { floor } => Some(*floor),
            Ask::Forgotten { .. } | Ask::Archived { .. } => None,
        }
    }
}

/// The binding and duplicate checks on the document in memory. Pure: the
/// gateway and the simulation tests decide with exactly this.
pub fn check(
    state: &DocState,
    client: &str,
    cseq: u64,
    base: u64,
    user: &str,
) -> Result<Checked, ProtoError> {
    Ok(match state.dedup_check(client, cseq, user)? {
        Dedup::Applied(r) => match r.record(&state.doc) {
            Some(record) => Checked::Done(Found::Applied(record)),
            // Its text was dropped as archived: the archive has the record.
            None => Checked::AskArchive(Ask::Archived { seq: r.seq }),
        },
        Dedup::Forgotten { seq } => Checked::AskArchive(Ask::Forgotten { seq }),
        Dedup::New if base < state.floor && !state.clients.contains_key(client) => {
            Checked::AskArchive(Ask::Unknown { floor: state.floor })
        }
        Dedup::New => Checked::Done(Found::New),
    })
}

/// The second step: what the archive's answer for `(client, cseq)` means;
/// `reached` says whether the archive holds the op at [`Ask::must_reach`].
pub fn resolve(
    ask: Ask,
    archived: Option<AppliedRecord>,
    reached: bool,
    client: &str,
    cseq: u64,
    user: &str,
) -> Result<Found, ProtoError> {
    match (archived, ask) {
        (Some(r), _) if r.user != user => Err(ProtoError::new(
            ErrorCode::Forbidden,
            format!("client id {client} belongs to another user"),
        )),
        (Some(r), _) => Ok(Found::Applied(r)),
        (None, Ask::Unknown { .. }) if reached => Ok(Found::New),
        // The archive lags the window: the op may be applied and not
        // archived yet. Producing it again would get STALE_BASE, and a
        // client would then merge its edit in a second time.
        (None, Ask::Unknown { floor }) => Err(ProtoError::new(
            ErrorCode::Overloaded,
            format!("the archive has not reached version {floor} yet: resend later"),
        )),
        (None, Ask::Forgotten { seq: Some(seq) } | Ask::Archived { seq }) => {
            Ok(Found::AppliedAt(seq))
        }
        // Below the client's latest cseq but never applied (cseqs may
        // skip): it can never be applied now.
        (None, Ask::Forgotten { seq: None }) => Err(ProtoError::new(
            ErrorCode::Protocol,
            format!("cseq {cseq} of {client} is below its latest op and was never applied; use a new cseq"),
        )),
    }
}

impl Fanout {
    /// Checks under the partition lock; archive lookups after releasing it,
    /// through the store's `(client, cseq)` index. Without `need_record`
    /// (an `ack dup` needs the seq only) an archived op's record is not read.
    async fn find(
        &self,
        doc: &str,
        (client, cseq): (&str, u64),
        base: u64,
        user: &str,
        need_record: bool,
    ) -> Result<Found, FanoutError> {
        let checked = {
            let mut part = self.locked(doc).await?;
            let state = &part.docs.get_mut(doc).expect("locked() loads it").state;
            check(state, client, cseq, base, user)?
        };
        match checked {
            Checked::Done(found) => Ok(found),
            Checked::AskArchive(Ask::Archived { seq }) if !need_record => Ok(Found::AppliedAt(seq)),
            Checked::AskArchive(ask) => {
                if let Ask::Archived { .. } = ask {
                    self.inner.metrics.archive_reads.inc();
                }
                let archived = self.inner.store.find_op(doc, client, cseq).await?;
                let reached = match ask.must_reach() {
                    Some(seq) if archived.is_none() => self
                        .inner
                        .store
                        .history(doc, seq - 1, 1)
                        .await?
                        .first()
                        .is_some_and(|r| r.seq == seq),
                    _ => true,
                };
                Ok(resolve(ask, archived, reached, client, cseq, user)?)
            }
        }
    }

    /// For WebSocket ops: `Ok(Some(seq))` when `(client, cseq)` was applied.
    pub async fn check_op(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        base: u64,
        user: &str,
    ) -> Result<Option<u64>, FanoutError> {
        Ok(
            match self.find(doc, (client, cseq), base, user, false).await? {
                Found::New => None,
                Found::Applied(r) => Some(r.seq),
                Found::AppliedAt(seq) => Some(seq),
            },
        )
    }

    /// Registers for the outcome of `(client, cseq)`, after the binding and
    /// duplicate checks. Register before producing the op.
    pub async fn wait_for(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        base: u64,
        user: &str,
    ) -> Result<Waited, FanoutError> {
        // At most twice: an op found applied under the lock with its text
        // dropped is looked up again, where the archive gives its record.
        loop {
            match self.find(doc, (client, cseq), base, user, true).await? {
                Found::Applied(r) => return Ok(Waited::AlreadyApplied(Box::new(r))),
                Found::AppliedAt(seq) => {
                    return Err(ProtoError::new(
                        ErrorCode::Overloaded,
                        format!(
                            "op {client}/{cseq} was applied at {seq} but is not archived yet; retry"
                        ),
                    )
                    .into())
                }
                Found::New => {}
            }
            let mut part = self.locked(doc).await?;
            let hub = part.docs.get_mut(doc).expect("locked() loads it");
            // It may have been applied while the lock was released.
            match hub.state.dedup_check(client, cseq, user)? {
                Dedup::Applied(r) => match r.record(doc) {
                    Some(record) => return Ok(Waited::AlreadyApplied(Box::new(record))),
                    None => continue,
                },
                _ => return Ok(Waited::Pending(Self::register(hub, client, cseq))),
            }
        }
    }

    /// A waiter for the outcome of `(client, cseq)` (under the lock).
    fn register(hub: &mut Hub, client: &str, cseq: u64) -> oneshot::Receiver<OutRecord> {
        let (tx, rx) = oneshot::channel();
        // Waiters that gave up (their request went away) go now.
        hub.waiters.retain(|_, ws| {
            ws.retain(|w| !w.is_closed());
            !ws.is_empty()
        });
        hub.waiters
            .entry((client.to_owned(), cseq))
            .or_default()
            .push(tx);
        rx
    }

    /// Drops a waiter that gave up (HTTP timeout or disconnect).
    pub async fn forget_waiter(&self, doc: &str, client: &str, cseq: u64) {
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        if let Some(hub) = part.docs.peek_mut(doc) {
            let key = (client.to_owned(), cseq);
            if let Some(ws) = hub.waiters.get_mut(&key) {
                ws.retain(|w| !w.is_closed());
                if ws.is_empty() {
                    hub.waiters.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client the window forgot, resending: a miss in the archive means
    /// "never applied" only once the archive reaches the window's floor.
    #[test]
    fn an_archive_miss_counts_only_once_the_archive_reaches_the_window() {
        let ask = Ask::Unknown { floor: 40 };
        assert_eq!(ask.must_reach(), Some(40));
        assert_eq!(resolve(ask, None, true, "c", 3, "u"), Ok(Found::New));
        let lagging = resolve(ask, None, false, "c", 3, "u").unwrap_err();
        assert_eq!(lagging.code, ErrorCode::Overloaded);
        let old = Ask::Forgotten { seq: Some(7) };
        assert_eq!(
            resolve(old, None, true, "c", 3, "u"),
            Ok(Found::AppliedAt(7))
        );
        let never = Ask::Forgotten { seq: None };
        assert_eq!(
            resolve(never, None, true, "c", 3, "u").unwrap_err().code,
            ErrorCode::Protocol
        );
    }
}
