//! A log seen through a hook: every call is shown to an [`Intercept`]
//! before it reaches the log, which may delay it, fail it or act first. For
//! fault injection and for tests that check what a role asks of its log.

use std::sync::Arc;
use std::time::Duration;

use crate::{Membership, Offset, OpLog, Partition, Record, Result};

/// One call on the log, as the hook sees it.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    Produce {
        topic: &'a str,
        records: usize,
    },
    Fetch {
        topic: &'a str,
        partition: Partition,
        from: Offset,
    },
    HighWatermark {
        topic: &'a str,
        partition: Partition,
    },
    LogStart {
        topic: &'a str,
        partition: Partition,
    },
    Commit {
        group: &'a str,
        topic: &'a str,
        partition: Partition,
        next: Offset,
    },
    Committed {
        group: &'a str,
        topic: &'a str,
        partition: Partition,
    },
    DeleteRecords {
        topic: &'a str,
        partition: Partition,
        before: Offset,
    },
    Join {
        group: &'a str,
        topic: &'a str,
    },
    Ping,
}

/// Runs before each call; an error is the call's answer.
#[async_trait::async_trait]
pub trait Intercept: Send + Sync + 'static {
    async fn before(&self, call: Call<'_>) -> Result<()>;
}

/// `inner`, with every call shown to `hook` first.
pub struct Intercepted<I> {
    pub inner: Arc<dyn OpLog>,
    pub hook: I,
}

#[async_trait::async_trait]
impl<I: Intercept> OpLog for Intercepted<I> {
    fn partitions(&self, topic: &str) -> Result<u32> {
        self.inner.partitions(topic)
    }

    async fn produce(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(Partition, Offset)>> {
        let n = records.len();
        self.hook
            .before(Call::Produce { topic, records: n })
            .await?;
        self.inner.produce(topic, records).await
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>> {
        self.hook
            .before(Call::Fetch {
                topic,
                partition,
                from,
            })
            .await?;
        self.inner.fetch(topic, partition, from, max, wait).await
    }

    async fn high_watermark(&self, topic: &str, partition: Partition) -> Result<Offset> {
        self.hook
            .before(Call::HighWatermark { topic, partition })
            .await?;
        self.inner.high_watermark(topic, partition).await
    }

    async fn log_start(&self, topic: &str, partition: Partition) -> Result<Offset> {
        self.hook
            .before(Call::LogStart { topic, partition })
            .await?;
        self.inner.log_start(topic, partition).await
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
        next: Offset,
    ) -> Result<()> {
        self.hook
            .before(Call::Commit {
                group,
                topic,
                partition,
                next,
            })
            .await?;
        self.inner.commit(group, topic, partition, next).await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>> {
        self.hook
            .before(Call::Committed {
                group,
                topic,
                partition,
            })
            .await?;
        self.inner.committed(group, topic, partition).await
    }

    async fn delete_records(
        &self,
        topic: &str,
        partition: Partition,
        before: Offset,
    ) -> Result<Offset> {
        self.hook
            .before(Call::DeleteRecords {
                topic,
                partition,
                before,
            })
            .await?;
        self.inner.delete_records(topic, partition, before).await
    }

    fn can_truncate(&self) -> bool {
        self.inner.can_truncate()
    }

    async fn join(&self, group: &str, topic: &str) -> Result<Membership> {
        self.hook.before(Call::Join { group, topic }).await?;
        self.inner.join(group, topic).await
    }

    async fn ping(&self) -> Result<()> {
        self.hook.before(Call::Ping).await?;
        self.inner.ping().await
    }
}
