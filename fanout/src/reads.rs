//! Reads: the current text, time travel, and history pages.

use std::time::Duration;

use document::load;
use oplog::{partition_for, LogError};
use protocol::{decode_out_record, AppliedRecord, OutRecord};

use crate::{Fanout, FanoutError};

impl Fanout {
    /// Current `(version, text)`, or the state at the last version `<= at`.
    pub async fn read(&self, doc: &str, at: Option<u64>) -> Result<(u64, String), FanoutError> {
        if let Some(at) = at {
            let state = load(self.sources(), doc, None, Some(at)).await?;
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
    /// the archive first, then the window of the document in memory.
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
            let recent: Option<Vec<AppliedRecord>> = {
                let mut part = self.locked(doc).await?;
                let state = &part.docs.get_mut(doc).expect("locked() loads it").state;
                state
                    .ops_after(from)
                    .map(|ops| ops.take(want).cloned().collect())
            };
            match recent {
                Some(r) => out.extend(r),
                // The archive lags the window's floor (the compactor
                // archives in batches): the rest is in the applied topic.
                None => out.extend(self.topic_history(doc, from, want).await?),
            }
        }
        Ok(out)
    }

    /// Up to `want` applied records of `doc` after version `from`, read
    /// from the applied topic, with the store filling in what the compactor
    /// archived and truncated meanwhile (the `prev` chain shows a gap).
    async fn topic_history(
        &self,
        doc: &str,
        from: u64,
        want: usize,
    ) -> Result<Vec<AppliedRecord>, FanoutError> {
        let log = self.inner.log.as_ref();
        let topic = self.inner.config.topics.applied.as_str();
        let p = partition_for(doc, log.partitions(topic)?);
        let mut out: Vec<AppliedRecord> = Vec::new();
        // Each round either ends or moves on through the archive.
        for _ in 0..20 {
            let last = out.last().map_or(from, |r| r.seq);
            let mut pos = log.log_start(topic, p).await?;
            let end = log.high_watermark(topic, p).await?;
            let mut gap = false;
            'scan: while pos < end && out.len() < want {
                let batch = match log.fetch(topic, p, pos, 1000, Duration::ZERO).await {
                    Ok(b) if b.is_empty() => break,
                    Ok(b) => b,
                    // Truncated under the scan: those records are archived.
                    Err(LogError::OffsetOutOfRange { .. }) => {
                        gap = true;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                for rec in batch {
                    pos = rec.offset + 1;
                    if rec.key != doc {
                        continue;
                    }
                    let Ok(OutRecord::Applied(a)) = decode_out_record(&rec.value) else {
                        continue;
                    };
                    let tip = out.last().map_or(last, |r| r.seq);
                    if a.seq <= tip {
                        continue;
                    }
                    if a.prev != tip {
                        gap = true;
                        break 'scan;
                    }
                    out.push(a);
                    if out.len() == want {
                        break 'scan;
                    }
                }
            }
            if !gap {
                return Ok(out);
            }
            let tip = out.last().map_or(from, |r| r.seq);
            let archived = self.inner.store.history(doc, tip, want - out.len()).await?;
            if archived.is_empty() {
                return Ok(out);
            }
            out.extend(archived);
            if out.len() >= want {
                return Ok(out);
            }
        }
        Ok(out)
    }
}
