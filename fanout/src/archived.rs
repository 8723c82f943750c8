//! Window texts dropped once archived.
//!
//! Fanout's window keeps whole ops ([`WindowOp`]) to serve catch-up and
//! duplicate answers, so a document's large edits (a paste) would stay in
//! memory for the whole window (SPEC §9: 10,000 ops or 10 minutes). Once the
//! compactor has archived an op, the store can give its record back, so
//! fanout keeps only the op's shape ([`WindowOp::drop_text`]) and reads the
//! record from the archive when a catch-up, a history page or a resend
//! needs it. Only ops whose text takes at least [`DROP_TEXT_MIN`] bytes are
//! dropped: a keystroke's is kept inline and costs nothing extra.
//!
//! The archive's progress is the compactor's committed offset on the
//! applied topic (it archives a batch, then commits past it): an op
//! consumed from an offset below it is archived. Each partition keeps the
//! ops waiting for that ([`Pending`], bounded by [`MAX_PENDING`]; past it
//! their texts simply stay), and its consumer drops their texts every
//! [`DROP_EVERY`], reading the committed offset without the lock.

use std::time::Duration;

use document::{WindowEntry, WindowOp};
use oplog::{Offset, Partition};
use protocol::AppliedRecord;

use crate::hub::{Hub, Part};
use crate::{Fanout, FanoutError};

/// Texts smaller than this (bytes packed) are kept.
pub(crate) const DROP_TEXT_MIN: usize = 256;

/// Ops waiting for the archive, per partition, at most.
pub(crate) const MAX_PENDING: usize = 100_000;

/// How often a partition's consumer looks at the archive's progress.
pub(crate) const DROP_EVERY: Duration = Duration::from_secs(1);

/// Once the archive is past `offset`, the texts of `doc`'s ops up to `seq`
/// can go.
pub(crate) struct Pending {
    offset: Offset,
    doc: String,
    seq: u64,
}

impl Part {
    /// `doc`'s ops up to `seq`, consumed from `offset` or before, can lose
    /// their texts once the archive is past `offset`.
    pub(crate) fn archive_pending(&mut self, offset: Offset, doc: &str, seq: u64) {
        if self.pending.len() < MAX_PENDING {
            self.pending.push_back(Pending {
                offset,
                doc: doc.to_owned(),
                seq,
            });
        }
    }

    /// After a load that read the log below `offset`: its texts go once the
    /// archive is past that.
    pub(crate) fn loaded(&mut self, offset: Offset, doc: &str) {
        let upto = self.docs.peek_mut(doc).and_then(|h| {
            let large = h
                .state
                .window
                .iter()
                .any(|w| w.heap_bytes() >= DROP_TEXT_MIN);
            large.then_some(h.state.version)
        });
        if let Some(seq) = upto {
            self.archive_pending(offset, doc, seq);
        }
    }

    /// Drops the texts of the ops consumed below `archived`; returns how
    /// many.
    pub(crate) fn drop_archived(&mut self, archived: Offset) -> u64 {
        let mut dropped = 0;
        while self.pending.front().is_some_and(|p| p.offset < archived) {
            let p = self.pending.pop_front().expect("front exists");
            if let Some(hub) = self.docs.peek_mut(&p.doc) {
                dropped += hub.drop_texts_upto(p.seq);
            }
        }
        dropped
    }
}

impl Hub {
    /// Whether the op just applied at `seq` has a text worth dropping once
    /// archived.
    pub(crate) fn large_text_at(&self, seq: u64) -> bool {
        self.state
            .window
            .back()
            .is_some_and(|w| w.seq == seq && w.heap_bytes() >= DROP_TEXT_MIN)
    }

    /// Drops the large texts of the window's ops up to `seq` (they are
    /// archived); returns how many.
    fn drop_texts_upto(&mut self, seq: u64) -> u64 {
        let w = &mut self.state.window;
        let from = w.partition_point(|o| o.seq <= self.bare_upto);
        let to = w.partition_point(|o| o.seq <= seq);
        let mut dropped = 0;
        for o in w.range_mut(from..to.max(from)) {
            if o.has_text() && o.heap_bytes() >= DROP_TEXT_MIN {
                o.drop_text();
                dropped += 1;
            }
        }
        self.bare_upto = self.bare_upto.max(seq);
        dropped
    }
}

impl Fanout {
    /// Drops the texts partition `p`'s documents no longer need to hold:
    /// the archive's progress is read without the lock.
    pub(crate) async fn drop_archived_texts(&self, p: Partition) -> Result<(), FanoutError> {
        let lock = &self.inner.parts[p as usize];
        if lock.lock().await.pending.is_empty() {
            return Ok(());
        }
        let topics = &self.inner.config.topics;
        let Some(archived) = self
            .inner
            .log
            .committed(&topics.compactor_group, &topics.applied, p)
            .await?
        else {
            return Ok(());
        };
        let dropped = lock.lock().await.drop_archived(archived);
        self.inner.metrics.texts_dropped.inc_by(dropped);
        Ok(())
    }

    /// The records of `ops` (a stretch of `doc`'s window, oldest first),
    /// the archive's where the window dropped the text. One archive read
    /// covers every op without its text.
    pub(crate) async fn records_of(
        &self,
        doc: &str,
        ops: &[WindowOp],
    ) -> Result<Vec<AppliedRecord>, FanoutError> {
        let bare = |o: &WindowOp| !o.has_text();
        let (Some(first), Some(last)) = (ops.iter().position(bare), ops.iter().rposition(bare))
        else {
            return Ok(ops.iter().filter_map(|o| o.record(doc)).collect());
        };
        let wanted = ops.iter().filter(|o| bare(o)).count();
        let archived = self
            .inner
            .store
            .history(doc, ops[first].seq - 1, last - first + 1)
            .await?;
        self.inner.metrics.archive_reads.inc_by(wanted as u64);
        let mut from_archive = archived.into_iter().peekable();
        let mut out = Vec::with_capacity(ops.len());
        for o in ops {
            if let Some(r) = o.record(doc) {
                out.push(r);
                continue;
            }
            // Skip archived records the window has with their text.
            while from_archive.next_if(|r| r.seq < o.seq).is_some() {}
            match from_archive.next_if(|r| r.seq == o.seq && o.is_op_of(&r.client, r.cseq)) {
                Some(r) => out.push(r),
                None => {
                    return Err(FanoutError::NotArchived {
                        doc: doc.into(),
                        seq: o.seq,
                    })
                }
            }
        }
        Ok(out)
    }
}
