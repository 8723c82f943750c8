//! The log boundary (SPEC §1, §11).
//!
//! [`OpLog`] is the slice of Kafka that Quire's roles use: topics with
//! partitions, keyed partitioning with Kafka's murmur2, durable appends from
//! an idempotent producer, fetch by offset, consumer-group offsets, the log
//! start offset and DeleteRecords. [`EmbeddedLog`] implements it on fjall
//! (an embedded LSM-tree store) for `quire serve`; a Kafka backend
//! implements the same trait.

pub mod conformance;
mod embedded;
pub mod group;
mod intercept;
mod legacy;
mod migrate;
mod murmur2;
mod segments;
mod store;

use std::time::Duration;

pub use embedded::{EmbeddedLog, EmbeddedLogConfig};
pub use group::{run_owned, GroupEvent, Membership};
pub use intercept::{Call, Intercept, Intercepted};
pub use murmur2::{murmur2, partition_for};

pub type Offset = u64;
pub type Partition = u32;

/// One record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub key: String,
    pub value: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown topic {topic}")]
    UnknownTopic { topic: String },
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: Partition },
    #[error("offset {offset} of {topic}/{partition} is below the log start {log_start}")]
    OffsetOutOfRange {
        topic: String,
        partition: Partition,
        offset: Offset,
        log_start: Offset,
    },
    #[error("producer {producer} sent sequence {got} to {topic}/{partition}, expected {expected}")]
    OutOfOrderSequence {
        topic: String,
        partition: Partition,
        producer: String,
        expected: u64,
        got: u64,
    },
    #[error("topic {topic} exists with {existing} partitions, asked for {wanted}")]
    PartitionMismatch {
        topic: String,
        existing: u32,
        wanted: u32,
    },
    #[error("the log is shut down")]
    Closed,
    #[error("storage: {0}")]
    Storage(String),
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Kafka's log semantics, as Quire's roles use them.
#[async_trait::async_trait]
pub trait OpLog: Send + Sync + 'static {
    /// Number of partitions of `topic`.
    fn partitions(&self, topic: &str) -> Result<u32>;

    /// Appends records with Kafka's default keyed partitioner, durably
    /// (`acks=all`): when this returns, every record survives a crash.
    /// Returns `(partition, offset)` per record, in order. Records of one
    /// partition keep their order. Retries inside the producer never append
    /// a record twice (idempotent producer).
    async fn produce(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(Partition, Offset)>>;

    /// Records of `topic/partition` from `from`, at most `max`. When none is
    /// there yet, waits up to `wait` for one. Only durable records are seen,
    /// except on an `EmbeddedLog` topic opened `visible_before_sync` (read
    /// by a reader that writes all it derives back into the same log).
    async fn fetch(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>>;

    /// Offset the next record will get (Kafka's high watermark).
    async fn high_watermark(&self, topic: &str, partition: Partition) -> Result<Offset>;

    /// First offset still readable.
    async fn log_start(&self, topic: &str, partition: Partition) -> Result<Offset>;

    /// Commits a consumer group's position (the next offset to read).
    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
        next: Offset,
    ) -> Result<()>;

    /// A consumer group's committed position, if any.
    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>>;

    /// Deletes every record below `before` (Kafka's DeleteRecords); returns
    /// the new log start. Never moves the start backwards.
    async fn delete_records(
        &self,
        topic: &str,
        partition: Partition,
        before: Offset,
    ) -> Result<Offset>;

    /// Whether [`OpLog::delete_records`] deletes anything. A backend
    /// without DeleteRecords keeps every record (the compactor then skips
    /// truncation; the store still gets history and snapshots).
    fn can_truncate(&self) -> bool {
        true
    }

    /// Joins `group`'s work on `topic`: the events say which partitions
    /// this process owns. With one process per group (the embedded log) it
    /// owns them all.
    async fn join(&self, group: &str, topic: &str) -> Result<Membership> {
        let _ = group;
        Ok(Membership::sole(self.partitions(topic)?))
    }

    /// Whether the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;
}
