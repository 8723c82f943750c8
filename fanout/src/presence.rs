//! The presence relay: `quire.presence` to each document's other clients.

use std::time::Duration;

use oplog::{LogError, Partition};
use protocol::decode_presence_record;
use tokio_util::sync::CancellationToken;

use crate::hub::frame;
use crate::{Fanout, FanoutError};

impl Fanout {
    /// Relays `quire.presence` to each document's other subscribers, from
    /// the end of the topic (presence is ephemeral: nothing old is replayed).
    /// A full queue drops presence rather than cutting anyone off.
    pub(crate) async fn relay_presence(
        &self,
        p: Partition,
        shutdown: &CancellationToken,
    ) -> Result<(), FanoutError> {
        let topic = self.inner.config.topics.presence.clone();
        let mut pos = self.inner.log.high_watermark(&topic, p).await?;
        loop {
            // Only partitions with documents in memory are followed; after
            // a sleep, from the end (nothing old is replayed).
            if self.inner.parts[p as usize].lock().await.idle() {
                if !self.while_idle(p, shutdown).await {
                    return Ok(());
                }
                pos = self.inner.log.high_watermark(&topic, p).await?;
            }
            let fetched = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = self.inner.log.fetch(&topic, p, pos, 500, Duration::from_millis(500)) => b,
            };
            let batch = match fetched {
                Ok(b) => b,
                Err(LogError::OffsetOutOfRange { log_start, .. }) => {
                    pos = log_start;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(last) = batch.last() else { continue };
            pos = last.offset + 1;
            let mut part = self.inner.parts[p as usize].lock().await;
            for rec in batch {
                let Some(hub) = part.docs.peek_mut(&rec.key) else {
                    continue;
                };
                match decode_presence_record(&rec.value) {
                    Ok(pr) => {
                        let f = frame(&pr.to_msg());
                        for s in hub.subs.iter().filter(|s| s.client != pr.client()) {
                            let _ = s.tx.try_send(f.clone());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(partition = p, offset = rec.offset, error = %e, "unreadable presence record skipped")
                    }
                }
            }
        }
    }
}
