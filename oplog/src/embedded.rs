//! The embedded log: Kafka's semantics on one redb file.
//!
//! All writes go through one writer thread that group-commits: it takes every
//! request waiting in its bounded queue, applies them in one write
//! transaction and makes that transaction durable with a single fsync. An
//! fsync costs milliseconds, so many appends share each one and durability
//! does not cap throughput at the sync rate. Readers only ever see committed
//! (durable) records: the high watermark moves after the commit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use crate::{partition_for, LogError, Offset, OpLog, Partition, Record, Result};

/// Page cache of the redb file (redb's default is 1 GiB).
const CACHE_BYTES: usize = 64 << 20;

/// `(topic, partition, offset) -> (key, value)`
const RECORDS: TableDefinition<(&str, u32, u64), (&str, &[u8])> = TableDefinition::new("records");
/// `(topic, partition) -> (next offset, log start)`
const PARTS: TableDefinition<(&str, u32), (u64, u64)> = TableDefinition::new("partitions");
/// `(group, topic, partition) -> committed next offset`
const GROUPS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("groups");
/// `(topic, partition, producer) -> (first seq, count, first offset)` of its last batch
const PRODUCERS: TableDefinition<(&str, u32, &str), (u64, u64, u64)> =
    TableDefinition::new("producers");

/// Requests the writer takes per transaction at most.
const MAX_GROUP: usize = 512;
/// Bounded writer queue.
const QUEUE: usize = 1024;

#[derive(Debug, Clone)]
pub struct EmbeddedLogConfig {
    /// Folder holding `log.redb`.
    pub dir: PathBuf,
    /// Topics to create (or check) with their partition counts.
    pub topics: Vec<(String, u32)>,
}

struct PartState {
    /// Next offset; readers see offsets below it. Moves after commit.
    hw: watch::Sender<u64>,
    start: AtomicU64,
}

struct Inner {
    db: Arc<Database>,
    topics: HashMap<String, Vec<PartState>>,
    tx: mpsc::Sender<WriteReq>,
    /// The idempotent producer. Locked only to number a batch and enqueue
    /// it, so sequences reach the writer in order while many batches wait
    /// for the same group commit.
    producer: Mutex<ProducerState>,
    /// The writer thread, joined when the last handle goes: the database
    /// file is free again once `EmbeddedLog` is dropped (a reopen, a tool
    /// run after the server, a test).
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer after its current commit.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            // The writer itself may hold the last handle for a moment.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

struct ProducerState {
    /// Producer id and epoch, like Kafka's; a failed batch starts a new
    /// epoch, since its sequence may or may not have been written.
    id: String,
    epoch: u64,
    next: HashMap<(String, Partition), u64>,
}

/// The embedded log. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

enum WriteReq {
    Append {
        topic: String,
        partition: Partition,
        producer: String,
        first_seq: u64,
        records: Vec<(String, Vec<u8>)>,
        reply: oneshot::Sender<Result<Offset>>,
    },
    Commit {
        group: String,
        topic: String,
        partition: Partition,
        next: Offset,
        reply: oneshot::Sender<Result<()>>,
    },
    Delete {
        topic: String,
        partition: Partition,
        before: Offset,
        reply: oneshot::Sender<Result<Offset>>,
    },
}

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log under `config.dir` and starts its
    /// writer thread. Must be called inside a tokio runtime.
    pub fn open(config: EmbeddedLogConfig) -> Result<EmbeddedLog> {
        std::fs::create_dir_all(&config.dir).map_err(storage)?;
        // redb's default page cache is 1 GiB; the log's readers want recent
        // pages only (benches/README.md: resident memory).
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(config.dir.join("log.redb"))
            .map_err(storage)?;
        let mut topics = HashMap::new();
        let mut next_offsets = HashMap::new();
        {
            let w = db.begin_write().map_err(storage)?;
            {
                w.open_table(RECORDS).map_err(storage)?;
                w.open_table(GROUPS).map_err(storage)?;
                // Producer state serves retries within one producer's
                // session; this process starts a new producer, so the rows
                // of earlier ones are dropped instead of piling up.
                w.delete_table(PRODUCERS).map_err(storage)?;
                w.open_table(PRODUCERS).map_err(storage)?;
                let mut parts = w.open_table(PARTS).map_err(storage)?;
                for (topic, count) in &config.topics {
                    let existing = parts
                        .range((topic.as_str(), 0)..=(topic.as_str(), u32::MAX))
                        .map_err(storage)?
                        .count() as u32;
                    if existing != 0 && existing != *count {
                        return Err(LogError::PartitionMismatch {
                            topic: topic.clone(),
                            existing,
                            wanted: *count,
                        });
                    }
                    let mut states = Vec::new();
                    for p in 0..*count {
                        let (next, start) = match parts.get((topic.as_str(), p)).map_err(storage)? {
                            Some(v) => v.value(),
                            None => (0, 0),
                        };
                        parts
                            .insert((topic.as_str(), p), (next, start))
                            .map_err(storage)?;
                        next_offsets.insert((topic.clone(), p), (next, start));
                        states.push(PartState {
                            hw: watch::channel(next).0,
                            start: AtomicU64::new(start),
                        });
                    }
                    topics.insert(topic.clone(), states);
                }
            }
            w.commit().map_err(storage)?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            db: db.clone(),
            topics,
            tx,
            producer: Mutex::new(ProducerState {
                id: format!("embedded-{}-{}", std::process::id(), crate_nanos()),
                epoch: 0,
                next: HashMap::new(),
            }),
            writer: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let handle = std::thread::Builder::new()
            .name("quire-log-writer".into())
            .spawn(move || writer(db, rx, next_offsets, weak))
            .map_err(storage)?;
        *inner.writer.lock().expect("not poisoned") = Some(handle);
        Ok(EmbeddedLog { inner })
    }

    fn part(&self, topic: &str, partition: Partition) -> Result<&PartState> {
        let parts = self
            .inner
            .topics
            .get(topic)
            .ok_or_else(|| LogError::UnknownTopic {
                topic: topic.into(),
            })?;
        parts
            .get(partition as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic.into(),
                partition,
            })
    }

    /// The broker side of an idempotent produce: appends `records` to one
    /// partition as producer `producer` with sequences `first_seq..`. A batch
    /// that repeats the producer's last batch is not appended again: its
    /// original first offset is returned. Exposed for tests of that rule.
    pub async fn append_with_sequence(
        &self,
        topic: &str,
        partition: Partition,
        producer: &str,
        first_seq: u64,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Offset> {
        let rx = self
            .enqueue(topic, partition, producer, first_seq, records)
            .await?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Queues a request for the writer (waiting while the queue is full);
    /// the receiver yields its outcome after the commit.
    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteReq,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(reply))
            .await
            .map_err(|_| LogError::Closed)?;
        Ok(rx)
    }

    /// Queues a request and waits for its outcome after the commit.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteReq,
    ) -> Result<T> {
        self.send(make).await?.await.map_err(|_| LogError::Closed)?
    }

    async fn enqueue(
        &self,
        topic: &str,
        partition: Partition,
        producer: &str,
        first_seq: u64,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<oneshot::Receiver<Result<Offset>>> {
        self.part(topic, partition)?;
        self.send(|reply| WriteReq::Append {
            topic: topic.into(),
            partition,
            producer: producer.into(),
            first_seq,
            records,
            reply,
        })
        .await
    }

    async fn produce_partition(
        &self,
        topic: &str,
        partition: Partition,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Offset> {
        let n = records.len() as u64;
        let (rx, id, epoch) = {
            let mut p = self.inner.producer.lock().await;
            let next = *p.next.get(&(topic.to_owned(), partition)).unwrap_or(&0);
            let id = format!("{}.{}", p.id, p.epoch);
            // Enqueue under the lock (waiting only if the queue is full):
            // the writer sees this producer's sequences in order.
            let rx = self.enqueue(topic, partition, &id, next, records).await?;
            p.next.insert((topic.to_owned(), partition), next + n);
            (rx, id, p.epoch)
        };
        let result = rx.await.map_err(|_| LogError::Closed)?;
        if let Err(e) = &result {
            // The batch's fate is unknown to later batches: start a new
            // epoch so their sequences begin again at zero.
            let mut p = self.inner.producer.lock().await;
            if p.epoch == epoch {
                p.epoch += 1;
                p.next.clear();
                tracing::warn!(topic, partition, producer = %id, error = %e, "append failed; producer starts a new epoch");
            }
        }
        result
    }
}

/// Records a fetch reads on the async worker itself (a tail read).
const INLINE_READ: u64 = 64;

/// The records `from..end` of a partition.
fn read_range(
    db: &Database,
    topic: &str,
    partition: Partition,
    from: Offset,
    end: Offset,
) -> Result<Vec<Record>> {
    let r = db.begin_read().map_err(storage)?;
    let t = r.open_table(RECORDS).map_err(storage)?;
    let mut out = Vec::with_capacity((end - from) as usize);
    for item in t
        .range((topic, partition, from)..(topic, partition, end))
        .map_err(storage)?
    {
        let (k, v) = item.map_err(storage)?;
        let (key, value) = v.value();
        out.push(Record {
            offset: k.value().2,
            key: key.to_owned(),
            value: value.to_vec(),
        });
    }
    Ok(out)
}

/// Kafka's OffsetOutOfRange for reads below the log start.
fn check_start(part: &PartState, topic: &str, partition: Partition, from: Offset) -> Result<()> {
    let log_start = part.start.load(Ordering::Acquire);
    if from < log_start {
        return Err(LogError::OffsetOutOfRange {
            topic: topic.into(),
            partition,
            offset: from,
            log_start,
        });
    }
    Ok(())
}

fn crate_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl OpLog for EmbeddedLog {
    fn partitions(&self, topic: &str) -> Result<u32> {
        self.inner
            .topics
            .get(topic)
            .map(|p| p.len() as u32)
            .ok_or_else(|| LogError::UnknownTopic {
                topic: topic.into(),
            })
    }

    async fn produce(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(Partition, Offset)>> {
        let n = self.partitions(topic)?;
        let mut by_part: HashMap<Partition, Vec<(usize, (String, Vec<u8>))>> = HashMap::new();
        for (i, r) in records.into_iter().enumerate() {
            by_part
                .entry(partition_for(&r.0, n))
                .or_default()
                .push((i, r));
        }
        let total: usize = by_part.values().map(Vec::len).sum();
        let mut out = vec![(0, 0); total];
        let mut pending = Vec::new();
        for (p, rs) in by_part {
            let idx: Vec<usize> = rs.iter().map(|(i, _)| *i).collect();
            let recs: Vec<(String, Vec<u8>)> = rs.into_iter().map(|(_, r)| r).collect();
            pending.push((p, idx, self.produce_partition(topic, p, recs)));
        }
        for (p, idx, fut) in pending {
            let first = fut.await?;
            for (k, i) in idx.into_iter().enumerate() {
                out[i] = (p, first + k as u64);
            }
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>> {
        let part = self.part(topic, partition)?;
        check_start(part, topic, partition, from)?;
        let mut hw_rx = part.hw.subscribe();
        let mut hw = *hw_rx.borrow_and_update();
        if from >= hw {
            let waited = tokio::time::timeout(wait, async {
                loop {
                    if hw_rx.changed().await.is_err() {
                        return;
                    }
                    if *hw_rx.borrow_and_update() > from {
                        return;
                    }
                }
            })
            .await;
            if waited.is_err() {
                return Ok(Vec::new());
            }
            hw = *part.hw.borrow();
        }
        let end = hw.min(from.saturating_add(max as u64));
        if end <= from {
            return Ok(Vec::new());
        }
        // A consumer at the tail reads a few records just committed, from
        // redb's cache: inline. Longer reads (catching up, cold loads) may
        // wait for the disk, and run on a blocking thread so they never
        // hold up an async worker.
        let (db, name) = (self.inner.db.clone(), topic.to_owned());
        let read = move || read_range(&db, &name, partition, from, end);
        let out = if end - from <= INLINE_READ {
            read()?
        } else {
            tokio::task::spawn_blocking(read).await.map_err(storage)??
        };
        // DeleteRecords may have raced this read; Kafka would refuse it too.
        check_start(part, topic, partition, from)?;
        Ok(out)
    }

    async fn high_watermark(&self, topic: &str, partition: Partition) -> Result<Offset> {
        Ok(*self.part(topic, partition)?.hw.borrow())
    }

    async fn log_start(&self, topic: &str, partition: Partition) -> Result<Offset> {
        Ok(self.part(topic, partition)?.start.load(Ordering::Acquire))
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
        next: Offset,
    ) -> Result<()> {
        self.part(topic, partition)?;
        self.request(|reply| WriteReq::Commit {
            group: group.into(),
            topic: topic.into(),
            partition,
            next,
            reply,
        })
        .await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>> {
        self.part(topic, partition)?;
        let r = self.inner.db.begin_read().map_err(storage)?;
        let t = r.open_table(GROUPS).map_err(storage)?;
        Ok(t.get((group, topic, partition))
            .map_err(storage)?
            .map(|v| v.value()))
    }

    async fn delete_records(
        &self,
        topic: &str,
        partition: Partition,
        before: Offset,
    ) -> Result<Offset> {
        self.part(topic, partition)?;
        self.request(|reply| WriteReq::Delete {
            topic: topic.into(),
            partition,
            before,
            reply,
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        if self.inner.tx.is_closed() {
            return Err(LogError::Closed);
        }
        self.inner.db.begin_read().map_err(storage)?;
        Ok(())
    }
}

/// What a request will do to in-memory state once its transaction commits.
enum Effect {
    Appended(String, Partition, u64),
    Started(String, Partition, u64),
}

/// Answers one request once its transaction's fate is known (the error
/// text when the commit failed).
type Reply = Box<dyn FnOnce(Option<&str>)>;

/// The answer to send after the commit: `outcome` if it succeeded (a
/// request-level refusal stands either way), a storage error if not.
fn after_commit<T: Send + 'static>(reply: oneshot::Sender<Result<T>>, outcome: Result<T>) -> Reply {
    Box::new(move |err| {
        let _ = reply.send(match (outcome, err) {
            (Ok(_), Some(e)) => Err(LogError::Storage(e.into())),
            (outcome, _) => outcome,
        });
    })
}

/// The writer thread: group commit of everything queued.
// redb::Error is large, but it is built at most once per transaction.
#[allow(clippy::result_large_err)]
fn writer(
    db: Arc<Database>,
    mut rx: mpsc::Receiver<WriteReq>,
    mut offsets: HashMap<(String, Partition), (u64, u64)>,
    inner: std::sync::Weak<Inner>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let saved = offsets.clone();
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        let mut effects = Vec::new();
        let result = (|| -> std::result::Result<(), redb::Error> {
            let w = db.begin_write()?;
            {
                let mut records = w.open_table(RECORDS)?;
                let mut parts = w.open_table(PARTS)?;
                let mut groups = w.open_table(GROUPS)?;
                let mut producers = w.open_table(PRODUCERS)?;
                for req in batch.drain(..) {
                    match req {
                        WriteReq::Append {
                            topic,
                            partition,
                            producer,
                            first_seq,
                            records: recs,
                            reply,
                        } => {
                            let key = (topic.clone(), partition);
                            let (next, start) = offsets[&key];
                            let n = recs.len() as u64;
                            let last = producers
                                .get((topic.as_str(), partition, producer.as_str()))?
                                .map(|v| v.value());
                            let outcome = match last {
                                Some((s, c, off)) if s == first_seq && c == n => Ok(Some(off)),
                                Some((s, c, _)) if first_seq != s + c => {
                                    Err(LogError::OutOfOrderSequence {
                                        topic: topic.clone(),
                                        partition,
                                        producer: producer.clone(),
                                        expected: s + c,
                                        got: first_seq,
                                    })
                                }
                                None if first_seq != 0 => Err(LogError::OutOfOrderSequence {
                                    topic: topic.clone(),
                                    partition,
                                    producer: producer.clone(),
                                    expected: 0,
                                    got: first_seq,
                                }),
                                _ => Ok(None),
                            };
                            match outcome {
                                Ok(Some(dup_offset)) => {
                                    replies.push(after_commit(reply, Ok(dup_offset)))
                                }
                                Ok(None) => {
                                    for (i, (k, v)) in recs.iter().enumerate() {
                                        records.insert(
                                            (topic.as_str(), partition, next + i as u64),
                                            (k.as_str(), v.as_slice()),
                                        )?;
                                    }
                                    parts.insert((topic.as_str(), partition), (next + n, start))?;
                                    producers.insert(
                                        (topic.as_str(), partition, producer.as_str()),
                                        (first_seq, n, next),
                                    )?;
                                    offsets.insert(key, (next + n, start));
                                    effects.push(Effect::Appended(topic, partition, next + n));
                                    replies.push(after_commit(reply, Ok(next)));
                                }
                                Err(e) => replies.push(after_commit(reply, Err(e))),
                            }
                        }
                        WriteReq::Commit {
                            group,
                            topic,
                            partition,
                            next,
                            reply,
                        } => {
                            groups.insert((group.as_str(), topic.as_str(), partition), next)?;
                            replies.push(after_commit(reply, Ok(())));
                        }
                        WriteReq::Delete {
                            topic,
                            partition,
                            before,
                            reply,
                        } => {
                            let key = (topic.clone(), partition);
                            let (next, start) = offsets[&key];
                            let new_start = before.min(next).max(start);
                            if new_start > start {
                                records.retain_in(
                                    (topic.as_str(), partition, start)
                                        ..(topic.as_str(), partition, new_start),
                                    |_, _| false,
                                )?;
                                parts.insert((topic.as_str(), partition), (next, new_start))?;
                                offsets.insert(key, (next, new_start));
                                effects.push(Effect::Started(topic, partition, new_start));
                            }
                            replies.push(after_commit(reply, Ok(new_start)));
                        }
                    }
                }
            }
            w.commit()?;
            Ok(())
        })();
        let err = result.err().map(|e| e.to_string());
        if let Some(e) = &err {
            tracing::error!(error = %e, "log write transaction failed");
            offsets = saved;
        } else if let Some(inner) = inner.upgrade() {
            for eff in effects {
                match eff {
                    // Start first: a reader that sees the new watermark must
                    // not read below a start that has already moved.
                    Effect::Started(t, p, s) => inner.topics[&t][p as usize]
                        .start
                        .store(s, Ordering::Release),
                    Effect::Appended(t, p, hw) => {
                        inner.topics[&t][p as usize].hw.send_replace(hw);
                    }
                }
            }
        }
        for reply in replies {
            reply(err.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    #[tokio::test]
    async fn producer_rows_do_not_pile_up_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let config = || EmbeddedLogConfig {
            dir: dir.path().to_owned(),
            topics: vec![("t".into(), 2)],
        };
        for round in 0..4 {
            let log = EmbeddedLog::open(config()).unwrap();
            log.produce(
                "t",
                vec![("a".into(), b"x".to_vec()), ("b".into(), b"y".to_vec())],
            )
            .await
            .unwrap();
            let r = log.inner.db.begin_read().unwrap();
            let rows = r.open_table(PRODUCERS).unwrap().len().unwrap();
            assert!(rows <= 2, "round {round}: {rows} producer rows");
            drop(r);
            drop(log);
            // The writer thread lets go of the file when the log is dropped.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
