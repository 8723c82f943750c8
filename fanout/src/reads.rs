//! Reads: the current text, time travel, and history pages.

use document::{load, records_after, OpShape, WindowOp};
use protocol::AppliedRecord;

use crate::{Fanout, FanoutError};

impl Fanout {
    /// Current `(version, text)`, or the state at the last version `<= at`.
    pub async fn read(&self, doc: &str, at: Option<u64>) -> Result<(u64, String), FanoutError> {
        if let Some(at) = at {
            // Time travel keeps no window: the shapes its load collects
            // on the way cost less than whole ops.
            let state = load::<OpShape>(self.sources(), doc, None, Some(at)).await?;
            return Ok((state.version, state.text.to_string()));
        }
        let (version, text) = {
            let mut part = self.locked(doc).await?;
            let state = &part.docs.get_mut(doc).expect("locked() loads it").state;
            (state.version, state.text.clone())
        };
        Ok((version, text.to_string()))
    }

    /// Applied records with `seq > after`, oldest first, at most `limit`:
    /// the archive first, then the window of the document in memory (or,
    /// when the archive lags the window, the applied topic).
    pub async fn history(
        &self,
        doc: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>, FanoutError> {
        let mut out = self.inner.store.history(doc, after, limit).await?;
        if out.len() < limit {
            let from = out.last().map_or(after, |r| r.seq);
            let want = limit - out.len();
            // Window ops are cheap to clone; records are made after the lock.
            let recent: Option<Vec<WindowOp>> = {
                let mut part = self.locked(doc).await?;
                let state = &part.docs.get_mut(doc).expect("locked() loads it").state;
                state
                    .ops_after(from)
                    .map(|ops| ops.take(want).cloned().collect())
            };
            match recent {
                Some(r) => out.extend(self.records_of(doc, &r).await?),
                // The archive lags the window's floor (the compactor
                // archives in batches): the rest is in the applied topic.
                None => out.extend(records_after(self.sources(), doc, from, want).await?),
            }
        }
        Ok(out)
    }
}
