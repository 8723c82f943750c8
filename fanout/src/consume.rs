//! The applied-topic consumer of one partition.

use std::time::Duration;

use document::{tidy, TIDY_EVERY};
use oplog::{LogError, Partition};
use protocol::{decode_out_record, OutRecord};
use tokio_util::sync::CancellationToken;

use crate::archived::DROP_EVERY;
use crate::hub::kick_all;
use crate::{Fanout, FanoutError};

/// Applied records fetched per round.
const BATCH: usize = 500;

impl Fanout {
    /// Fetches without the partition lock, then applies the batch under it:
    /// to the documents in memory (delivering to their subscribers and
    /// waiters) and to the buffers of documents being loaded.
    pub(crate) async fn consume(
        &self,
        p: Partition,
        shutdown: &CancellationToken,
    ) -> Result<(), FanoutError> {
        let topic = self.inner.config.topics.applied.clone();
        let window = self.inner.config.window;
        let metrics = &self.inner.metrics;
        let share = self.inner.config.text_share.as_deref();
        let lock = &self.inner.parts[p as usize];
        let mut last_tidy = tokio::time::Instant::now();
        let mut last_drop = tokio::time::Instant::now();
        loop {
            // Only partitions with documents in memory are followed.
            if !self.while_idle(p, shutdown).await {
                return Ok(());
            }
            if last_drop.elapsed() >= DROP_EVERY {
                // Texts stay a while longer if the archive cannot be asked.
                if let Err(e) = self.drop_archived_texts(p).await {
                    tracing::warn!(partition = p, error = %e, "fanout: the archive's progress unknown");
                }
                last_drop = tokio::time::Instant::now();
            }
            if last_tidy.elapsed() >= TIDY_EVERY {
                let mut part = lock.lock().await;
                if let Some(share) = share {
                    for h in part.docs.values_mut() {
                        if h.state.adopt_shared(share) {
                            metrics.texts_shared.inc();
                        }
                    }
                }
                tidy(part.docs.values_mut().map(|h| &mut h.state), |_| {});
                last_tidy = tokio::time::Instant::now();
            }
            let pos = lock.lock().await.pos;
            let fetched = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = self.inner.log.fetch(&topic, p, pos, BATCH, Duration::from_millis(500)) => b,
            };
            let batch = match fetched {
                Ok(b) => b,
                Err(LogError::OffsetOutOfRange { log_start, .. }) => {
                    // We fell behind truncation: forget the documents and cut
                    // their subscribers off; they re-join and catch up.
                    tracing::warn!(
                        partition = p,
                        pos,
                        log_start,
                        "fanout fell behind truncation"
                    );
                    let mut part = lock.lock().await;
                    if part.pos == pos {
                        part.reset(log_start, metrics);
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if batch.is_empty() {
                continue;
            }
            let mut part = lock.lock().await;
            if part.pos != pos {
                continue; // reset under us; fetch again
            }
            for rec in batch {
                part.pos = rec.offset + 1;
                let decode = || match decode_out_record(&rec.value) {
                    Ok(out) => Some(out),
                    Err(e) => {
                        tracing::error!(partition = p, offset = rec.offset, error = %e, "unreadable applied record skipped");
                        None
                    }
                };
                match part.docs.peek_mut(&rec.key) {
                    Some(hub) => match decode() {
                        Some(OutRecord::Applied(a)) => {
                            let seq = a.seq;
                            hub.deliver(a, window, share, metrics);
                            // A large text goes once the archive has it.
                            if hub.large_text_at(seq) {
                                part.archive_pending(rec.offset, &rec.key, seq);
                            }
                        }
                        Some(OutRecord::Rejected(r)) => hub.reject(r),
                        None => {}
                    },
                    None => {
                        if let Some(s) = share {
                            s.forget(&rec.key);
                        }
                        part.buffer_for_load(rec.offset, &rec.key, || match decode() {
                            Some(OutRecord::Applied(a)) => Some(a),
                            _ => None,
                        })
                    }
                }
            }
            let broken: Vec<String> = part
                .docs
                .iter()
                .filter(|(_, h)| h.broken)
                .map(|(k, _)| k.clone())
                .collect();
            for d in broken {
                if let Some(hub) = part.docs.remove(&d) {
                    metrics.docs.dec();
                    kick_all(hub.subs, metrics);
                }
            }
        }
    }
}
