//! Reads: the current text, time travel, and history pages.

use std::time::Duration;

use document::{load, LoadError};
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

    /// Up to `want` applied records of `doc` with `seq > from`, when the
    /// archive lags the window: as `load` reads a document, the compactor's
    /// position first, then the archive (everything below that position),
    /// then the applied topic from that position; again if truncation
    /// passed the position meanwhile. The scan covers only the compactor's
    /// lag, not the partition.
    async fn topic_history(
        &self,
        doc: &str,
        from: u64,
        want: usize,
    ) -> Result<Vec<AppliedRecord>, FanoutError> {
        let log = self.inner.log.as_ref();
        let topics = &self.inner.config.topics;
        let topic = topics.applied.as_str();
        let p = partition_for(doc, log.partitions(topic)?);
        for _ in 0..20 {
            let compacted = log
                .committed(&topics.compactor_group, topic, p)
                .await?
                .unwrap_or(0);
            let mut out = self.inner.store.history(doc, from, want).await?;
            let end = log.high_watermark(topic, p).await?;
            let mut pos = compacted.max(log.log_start(topic, p).await?);
            let mut overtaken = false;
            'scan: while pos < end && out.len() < want {
                let batch = match log.fetch(topic, p, pos, 1000, Duration::ZERO).await {
                    Ok(b) if b.is_empty() => break,
                    Ok(b) => b,
                    Err(LogError::OffsetOutOfRange { .. }) => {
                        overtaken = true;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                for rec in batch {
                    pos = rec.offset + 1;
                    if rec.key != doc {
                        continue;
                    }
                    let a = match decode_out_record(&rec.value) {
                        Ok(OutRecord::Applied(a)) => a,
                        Ok(OutRecord::Rejected(_)) => continue,
                        Err(e) => {
                            return Err(LoadError::BadRecord {
                                doc: doc.into(),
                                offset: rec.offset,
                                reason: e.to_string(),
                            }
                            .into())
                        }
                    };
                    if a.seq > out.last().map_or(from, |r| r.seq) {
                        out.push(a);
                        if out.len() == want {
                            break 'scan;
                        }
                    }
                }
            }
            // Records between the position read above and the log's start
            // now were archived after the store was read: start again.
            if overtaken || log.log_start(topic, p).await? > compacted {
                continue;
            }
            return Ok(out);
        }
        Err(FanoutError::Busy { doc: doc.into() })
    }
}
