//! The embedded log: Kafka's semantics on fjall, a crash-safe LSM-tree
//! key-value store (`store.rs` has the layout).
//!
//! All writes go through one writer thread that group-commits: it takes every
//! request waiting in its bounded queue, writes them as one fjall write
//! batch (one journal append) and makes it durable (one `fdatasync`). An
//! fsync costs a lot (here ~60 µs of CPU and ~0.15 ms of waiting), so many
//! appends share each one and durability does not cap throughput at the
//! sync rate. Readers see durable records only (the high
//! watermark moves after the sync), except on the topics the log was opened
//! with as `visible_before_sync`: there a record is readable once written,
//! and its sync waits (at most `sync_wait`) for the next write to any other
//! topic, so a reader's answer, written back to this log, shares it. Every
//! producer is answered only after the sync covering its records.
//!
//! In memory: per partition, its newest records (a tail of at most
//! [`TAIL_BYTES`], which serves consumers at the tail without reading the
//! database); consumer positions; the idempotent producer's last batches.
//! Older records are read from the database. DeleteRecords moves the log
//! start and deletes the records below it in the same batch; compaction
//! reclaims their space.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Mutex};

use crate::segments;
use crate::store::{self, storage, Db, PartMeta};
use crate::{partition_for, LogError, Offset, OpLog, Partition, Record, Result};

/// Newest records kept in memory per partition, bytes.
const TAIL_BYTES: usize = 256 << 10;
/// Requests the writer takes per group commit at most.
const MAX_GROUP: usize = 512;
/// Bounded writer queue.
const QUEUE: usize = 1024;
/// Records a fetch reads on the async worker itself; longer reads run on a
/// blocking thread.
const INLINE_READ: usize = 64;
/// Largest batch one append takes, bytes (one write batch holds it whole).
const MAX_BATCH_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct EmbeddedLogConfig {
    /// Folder holding the log (its database is `lsm/` inside).
    pub dir: PathBuf,
    /// Topics to create (or check) with their partition counts.
    pub topics: Vec<(String, u32)>,
    /// Topics whose records readers see as soon as they are written, before
    /// the sync that makes them durable (their producers are still answered
    /// only after it). Only for a topic whose every reader is in this
    /// process and writes all it derives from the records back into this
    /// log, as the transformer does with `quire.ops`: the journal is
    /// written in order (a new journal file only after the old one is
    /// synced), so the sync of the answer covers the record too, and a crash
    /// before it loses both. The writer then waits up to
    /// [`EmbeddedLogConfig::sync_wait`] before syncing such records, so the
    /// answer shares their sync: one sync per op instead of two.
    pub visible_before_sync: Vec<String>,
    /// How long records of a `visible_before_sync` topic may wait for their
    /// sync (default 2 ms, give or take the timer's millisecond). A write to
    /// any other topic, a position commit or a truncation syncs at once, and
    /// takes them along.
    pub sync_wait: Duration,
}

impl EmbeddedLogConfig {
    /// A log under `dir` with `topics`, every record durable before any
    /// reader sees it.
    pub fn new(dir: impl Into<PathBuf>, topics: Vec<(String, u32)>) -> EmbeddedLogConfig {
        EmbeddedLogConfig {
            dir: dir.into(),
            topics,
            visible_before_sync: Vec::new(),
            sync_wait: Duration::from_millis(2),
        }
    }
}

/// A partition's newest records in memory.
#[derive(Default)]
struct Tail {
    /// Contiguous offsets.
    records: std::collections::VecDeque<Record>,
    bytes: usize,
}

fn weight(r: &Record) -> usize {
    r.key.len() + r.value.capacity() + std::mem::size_of::<Record>()
}

impl Tail {
    fn push(&mut self, record: Record) {
        if self
            .records
            .back()
            .is_some_and(|r| r.offset + 1 != record.offset)
        {
            self.records.clear();
            self.bytes = 0;
        }
        self.bytes += weight(&record);
        self.records.push_back(record);
        while self.bytes > TAIL_BYTES {
            let Some(r) = self.records.pop_front() else {
                break;
            };
            self.bytes -= weight(&r);
        }
    }

    fn trim_below(&mut self, start: u64) {
        while self.records.front().is_some_and(|r| r.offset < start) {
            let r = self.records.pop_front().expect("front exists");
            self.bytes -= weight(&r);
        }
    }

    /// Records `from..end` if the tail holds them all.
    fn range(&self, from: u64, end: u64) -> Option<Vec<Record>> {
        let first = self.records.front()?.offset;
        if from < first || end > first + self.records.len() as u64 {
            return None;
        }
        let a = (from - first) as usize;
        let b = (end - first) as usize;
        Some(self.records.range(a..b).cloned().collect())
    }
}

struct PartState {
    /// The topic's id in the database.
    topic_id: u32,
    /// Next offset; readers see offsets below it. Moves after the sync (at
    /// the write on a topic read before its sync).
    hw: watch::Sender<u64>,
    start: AtomicU64,
    tail: std::sync::Mutex<Tail>,
}

/// What the writer thread and the log's handles share. The writer holds
/// this, never the log itself, so the last handle's drop always happens
/// outside the writer and joins it.
struct Shared {
    topics: HashMap<String, Vec<PartState>>,
    groups: std::sync::Mutex<HashMap<(String, String, Partition), Offset>>,
    /// Set when a write failed: the log takes no more writes.
    broken: std::sync::atomic::AtomicBool,
    /// The reclaiming compaction's thread, if one ran; joined after the
    /// writer.
    reclaim: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set when the last handle goes: a reclaim not started yet does not.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Syncs the writer made.
    syncs: Arc<AtomicU64>,
}

struct Inner {
    shared: Arc<Shared>,
    db: Db,
    tx: mpsc::Sender<WriteReq>,
    /// The idempotent producer. Locked only to number a batch and enqueue
    /// it, so sequences reach the writer in order while many batches wait
    /// for the same group commit.
    producer: Mutex<ProducerState>,
    /// The writer thread, joined when the last handle goes: the database is
    /// free again once `EmbeddedLog` is dropped (a reopen, a tool run after
    /// the server, a test).
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}
impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer after its current commit.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        self.shared.closing.store(true, Ordering::Release);
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
        // A compaction under way finishes first: the database closes (and
        // its folder is free again) once this returns.
        if let Some(h) = self.shared.reclaim.lock().ok().and_then(|mut r| r.take()) {
            let _ = h.join();
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

/// The log's partitions as the database holds them, checked: each one's
/// records from its start to its next offset are there, and none past it.
fn check_partition(db: &Db, topic: &str, id: u32, p: Partition, m: PartMeta) -> Result<()> {
    let damaged = |what: String| {
        storage(format!(
            "the log database is damaged: {topic}/{p} (log start {}, next offset {}) {what}",
            m.start, m.next
        ))
    };
    let offset_of = |item: fjall::Guard| -> Result<Offset> {
        let k = item.key().map_err(storage)?;
        store::key_offset(&k).ok_or_else(|| storage("a malformed record key"))
    };
    let mut held = db
        .records
        .range(store::record_key(id, p, m.start)..store::record_key(id, p, m.next));
    if m.next > m.start {
        match held.next().map(offset_of).transpose()? {
            Some(o) if o == m.start => {}
            Some(o) => return Err(damaged(format!("is missing records {}..{o}", m.start))),
            None => return Err(damaged("is missing every record".into())),
        }
        match held.next_back().map(offset_of).transpose()? {
            Some(o) if o + 1 == m.next => {}
            Some(o) => return Err(damaged(format!("is missing records {}..{}", o + 1, m.next))),
            // The first record was the only one.
            None if m.next == m.start + 1 => {}
            None => {
                return Err(damaged(format!(
                    "is missing records {}..{}",
                    m.start + 1,
                    m.next
                )))
            }
        }
    }
    let past = db
        .records
        .range(store::record_key(id, p, m.next)..=store::record_key(id, p, u64::MAX))
        .next();
    if let Some(o) = past.map(offset_of).transpose()? {
        return Err(damaged(format!("holds record {o} past its end")));
    }
    Ok(())
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log under `config.dir` and starts its
    /// writer thread. Must be called inside a tokio runtime. A log written
    /// by an earlier version (`log.redb`, or segment files) is moved into
    /// the database first.
    pub fn open(config: EmbeddedLogConfig) -> Result<EmbeddedLog> {
        std::fs::create_dir_all(&config.dir).map_err(storage)?;
        let db_path = config.dir.join(store::DB_DIR);
        if config.dir.join("log.redb").exists() {
            if db_path.exists() {
                return Err(storage(format!(
                    "{} holds both log.redb and a log database: move log.redb away (the database is the log)",
                    config.dir.display()
                )));
            }
            crate::migrate::from_redb(&config.dir)?;
        }
        let ids = segments::list(&config.dir).map_err(storage)?;
        if !ids.is_empty() {
            crate::legacy::migrate(&config.dir, &ids)?;
        }
        if let Some(t) = config
            .visible_before_sync
            .iter()
            .find(|t| !config.topics.iter().any(|(name, _)| name == *t))
        {
            return Err(LogError::UnknownTopic { topic: t.clone() });
        }
        let db = Db::open(&db_path)?;
        let mut meta = db.load_meta()?;
        let mut batch = db.db.batch();
        let mut next_id = meta.topics.values().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        for (topic, count) in &config.topics {
            match meta.topics.get(topic) {
                Some((_, existing)) if existing != count => {
                    return Err(LogError::PartitionMismatch {
                        topic: topic.clone(),
                        existing: *existing,
                        wanted: *count,
                    })
                }
                Some(_) => {}
                None => {
                    let id = next_id;
                    next_id += 1;
                    batch.insert(
                        &db.meta,
                        store::topic_key(topic),
                        store::topic_value(id, *count),
                    );
                    for p in 0..*count {
                        let m = PartMeta { next: 0, start: 0 };
                        batch.insert(&db.meta, store::part_key(id, p), store::part_value(m));
                        meta.parts.insert((id, p), m);
                    }
                    meta.topics.insert(topic.clone(), (id, *count));
                }
            }
        }
        if !batch.is_empty() {
            batch
                .durability(Some(fjall::PersistMode::SyncAll))
                .commit()
                .map_err(storage)?;
        }
        let mut topics = HashMap::new();
        let mut names = HashMap::new();
        let mut offsets = HashMap::new();
        for (topic, &(id, count)) in &meta.topics {
            names.insert(id, topic.clone());
            let mut states = Vec::new();
            for p in 0..count {
                let m = *meta.parts.get(&(id, p)).ok_or_else(|| {
                    storage(format!("the log database lacks partition {topic}/{p}"))
                })?;
                check_partition(&db, topic, id, p, m)?;
                offsets.insert((topic.clone(), p), m);
                states.push(PartState {
                    topic_id: id,
                    hw: watch::channel(m.next).0,
                    start: AtomicU64::new(m.start),
                    tail: std::sync::Mutex::new(Tail::default()),
                });
            }
            topics.insert(topic.clone(), states);
        }
        let mut groups = HashMap::new();
        for ((id, p, group), next) in meta.groups {
            if let Some(topic) = names.get(&id) {
                groups.insert((group, topic.clone(), p), next);
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            topics,
            groups: std::sync::Mutex::new(groups),
            broken: std::sync::atomic::AtomicBool::new(false),
            reclaim: std::sync::Mutex::new(None),
            closing: Arc::default(),
            syncs: Arc::default(),
        });
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            db: db.clone(),
            tx,
            producer: Mutex::new(ProducerState {
                id: format!("embedded-{}-{}", std::process::id(), crate_nanos()),
                epoch: 0,
                next: HashMap::new(),
            }),
            writer: std::sync::Mutex::new(None),
        });
        let w = Writer {
            shared,
            db,
            ids: meta
                .topics
                .iter()
                .map(|(t, (id, _))| (t.clone(), *id))
                .collect(),
            offsets,
            producers: HashMap::new(),
            failed: None,
            deleted_since: meta.deleted_since,
            visible_before_sync: config.visible_before_sync.iter().cloned().collect(),
            sync_wait: config.sync_wait,
        };
        let handle = std::thread::Builder::new()
            .name("quire-log-writer".into())
            .spawn(move || w.run(rx))
            .map_err(storage)?;
        *inner.writer.lock().expect("not poisoned") = Some(handle);
        Ok(EmbeddedLog { inner })
    }

    /// Records the database holds (live ones: truncated records are
    /// deleted). A full scan, for tests.
    #[doc(hidden)]
    pub fn stored_records(&self) -> Result<usize> {
        self.inner.db.records.len().map_err(storage)
    }

    /// Syncs the writer has made, for tests.
    #[doc(hidden)]
    pub fn syncs(&self) -> u64 {
        self.inner.shared.syncs.load(Ordering::Relaxed)
    }

    /// The count behind [`EmbeddedLog::syncs`], readable after the log
    /// closed, for tests.
    #[doc(hidden)]
    pub fn sync_counter(&self) -> Arc<AtomicU64> {
        self.inner.shared.syncs.clone()
    }

    /// Bytes the records' tables take on disk (not the journal), for tests.
    #[doc(hidden)]
    pub fn records_disk_space(&self) -> u64 {
        self.inner.db.records.disk_space()
    }
    fn part(&self, topic: &str, partition: Partition) -> Result<&PartState> {
        let parts = self
            .inner
            .shared
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
        // One batch is one write batch, held whole in memory.
        let bytes: u64 = records
            .iter()
            .map(|(k, v)| 20 + k.len() as u64 + v.len() as u64)
            .sum();
        if bytes > MAX_BATCH_BYTES {
            return Err(LogError::Storage(format!(
                "a batch of {bytes} bytes is larger than a log append may be ({MAX_BATCH_BYTES} bytes)"
            )));
        }
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

/// Reads records `from..end` of one partition from the database.
fn read_db(db: &Db, id: u32, p: Partition, from: Offset, end: Offset) -> Result<Vec<Record>> {
    let mut out = Vec::with_capacity((end - from) as usize);
    for item in db
        .records
        .range(store::record_key(id, p, from)..store::record_key(id, p, end))
    {
        let (k, v) = item.into_inner().map_err(storage)?;
        let want = from + out.len() as u64;
        if store::key_offset(&k) != Some(want) {
            return Err(storage(format!(
                "log record {want} of partition {p} is missing from the database"
            )));
        }
        let (key, value) = store::parse_value(&v)
            .ok_or_else(|| storage(format!("log record {want} of partition {p} is unreadable")))?;
        out.push(Record {
            offset: want,
            key,
            value,
        });
    }
    if out.len() as u64 != end - from {
        return Err(storage(format!(
            "log record {} of partition {p} is missing from the database",
            from + out.len() as u64
        )));
    }
    Ok(out)
}

/// What a request does to in-memory state once its batch is durable.
enum Effect {
    Appended {
        topic: String,
        partition: Partition,
        first: Offset,
        records: Vec<(String, Vec<u8>)>,
    },
    Started(String, Partition, Offset),
    Committed((String, String, Partition), Offset),
}

/// Answers one request once its group's fate is known (the error text when
/// the write failed).
type Reply = Box<dyn FnOnce(Option<&str>)>;

/// Sends every waiting answer: `err` when the write or its sync failed.
fn answer(replies: &mut Vec<Reply>, err: Option<&str>) {
    for reply in replies.drain(..) {
        reply(err);
    }
}

/// What became of a group of requests.
enum Written {
    /// Written and synced, with everything written before it.
    Synced,
    /// Written, readable, not yet synced: only records of topics read
    /// before their sync.
    Unsynced,
    /// Nothing to write (refusals, a repeated batch).
    Nothing,
    /// The write or sync failed: the error text.
    Failed(String),
}

/// The answer to send after the write: `outcome` if it succeeded (a
/// request-level refusal stands either way), a storage error if not.
fn after_commit<T: Send + 'static>(reply: oneshot::Sender<Result<T>>, outcome: Result<T>) -> Reply {
    Box::new(move |err| {
        let _ = reply.send(match (outcome, err) {
            (Ok(_), Some(e)) => Err(LogError::Storage(e.into())),
            (outcome, _) => outcome,
        });
    })
}

/// The writer thread's state: the authoritative offsets and producer state.
struct Writer {
    shared: Arc<Shared>,
    db: Db,
    /// Topic ids in the database.
    ids: HashMap<String, u32>,
    offsets: HashMap<(String, Partition), PartMeta>,
    /// `(topic, partition, producer) -> (first seq, count, first offset)` of
    /// its last batch. This process's producers only: a restart starts a
    /// new producer, as before.
    producers: HashMap<(String, Partition, String), (u64, u64, u64)>,
    /// Set for good by a failed write or sync: what reached the disk is
    /// unknown, so nothing more is written (restart the process).
    failed: Option<String>,
    /// Records deleted since the last reclaiming compaction, kept in `meta`
    /// with every truncation so a restart does not forget them, and set to
    /// 0 there when a reclaim starts (not synced: a crash before the next
    /// commit costs at most one early reclaim).
    deleted_since: u64,
    /// Topics readers see before their sync (`EmbeddedLogConfig`).
    visible_before_sync: std::collections::HashSet<String>,
    sync_wait: Duration,
}

/// Deleted records that make a reclaiming compaction worth its cost: twice
/// the live ones (so each written byte is rewritten a bounded number of
/// times), and at least this many.
const RECLAIM_MIN: u64 = 10_000;

impl Writer {
    /// Gives back the space of deleted records after a commit.
    ///
    /// Deleted records leave tombstones; their space comes back when
    /// compaction meets them. The log deletes most of what it writes, so
    /// once deleted records outnumber the live ones twice, the memtable
    /// holding the tombstones is flushed and a major compaction rewrites
    /// what is left, on a thread of its own (one at a time; joined when the
    /// log closes). fjall's second worker keeps flushing meanwhile.
    ///
    /// (Journals need nothing here: at every journal rotation fjall asks
    /// every keyspace still holding an old journal, `meta` included, to
    /// flush.)
    fn housekeeping(&mut self) {
        if self.deleted_since < RECLAIM_MIN {
            return;
        }
        let live: u64 = self.offsets.values().map(|m| m.next - m.start).sum();
        if self.deleted_since <= 2 * live {
            return;
        }
        let mut reclaim = self.shared.reclaim.lock().expect("not poisoned");
        if reclaim.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(done) = reclaim.take() {
            let _ = done.join();
        }
        self.deleted_since = 0;
        if let Err(e) = self
            .db
            .meta
            .insert(store::DELETED_SINCE, 0u64.to_le_bytes())
        {
            tracing::warn!(error = %e, "log: could not reset the deleted-records count");
        }
        let records = self.db.records.clone();
        let closing = self.shared.closing.clone();
        let spawned = std::thread::Builder::new()
            .name("quire-log-reclaim".into())
            .spawn(move || {
                // The tombstones must reach the tables first: flush the
                // memtable holding them (waiting at most a while, and not
                // once the log is closing).
                let flushed = records.rotate_memtable().map(|_| {
                    let until = std::time::Instant::now() + Duration::from_secs(30);
                    while records.sealed_memtable_count() > 0
                        && std::time::Instant::now() < until
                        && !closing.load(Ordering::Acquire)
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                });
                if closing.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = flushed.and_then(|()| records.major_compact()) {
                    tracing::warn!(error = %e, "log: reclaiming compaction failed");
                }
            });
        match spawned {
            Ok(h) => *reclaim = Some(h),
            Err(e) => tracing::warn!(error = %e, "log: could not start a reclaiming compaction"),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<WriteReq>) {
        // Waiting for a request with a deadline (records of a topic read
        // before its sync wait for company) needs a timer.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .inspect_err(|e| tracing::warn!(error = %e, "log: no timer; every write syncs at once"))
            .ok();
        // Answers waiting for the sync of records written already, and when
        // the first of those was written.
        let mut waiting: Vec<Reply> = Vec::new();
        let mut since: Option<std::time::Instant> = None;
        loop {
            let next = match (since, &timer) {
                (Some(t0), Some(timer)) => {
                    let left = self.sync_wait.saturating_sub(t0.elapsed());
                    match timer.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                        Ok(next) => next,
                        Err(_) => {
                            // Nothing came to share the sync: sync now.
                            let err = self.sync(since.take().is_some());
                            answer(&mut waiting, err.as_deref());
                            continue;
                        }
                    }
                }
                _ => rx.blocking_recv(),
            };
            let Some(first) = next else {
                // Closed: what was written is made durable before the log
                // closes.
                let err = self.sync(since.take().is_some());
                answer(&mut waiting, err.as_deref());
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let outcome = self.group(batch, &mut waiting);
            let err = match outcome {
                Written::Synced => {
                    since = None;
                    None
                }
                Written::Failed(e) => {
                    since = None;
                    Some(e)
                }
                Written::Unsynced => {
                    let t0 = *since.get_or_insert_with(std::time::Instant::now);
                    if timer.is_none()
                        || waiting.len() >= MAX_GROUP
                        || t0.elapsed() >= self.sync_wait
                    {
                        self.sync(since.take().is_some())
                    } else {
                        self.housekeeping();
                        continue;
                    }
                }
                Written::Nothing if since.is_some() => continue,
                Written::Nothing => None,
            };
            self.housekeeping();
            answer(&mut waiting, err.as_deref());
        }
    }

    /// Makes everything written durable, if anything written is waiting for
    /// it (`pending`); the error text if the sync failed.
    fn sync(&mut self, pending: bool) -> Option<String> {
        if !pending {
            return None;
        }
        if let Some(e) = self.failed.clone() {
            return Some(e);
        }
        // The second call checks nothing but whether fjall marked itself
        // failed meanwhile: its flush worker may have synced the journal
        // during the wait and got the I/O error (the kernel reports a
        // writeback error once), marking the database failed just after
        // letting go of the journal, so the sync above saw no error.
        let synced = self
            .db
            .db
            .persist(fjall::PersistMode::SyncData)
            .and_then(|()| self.db.db.persist(fjall::PersistMode::Buffer));
        match synced {
            Ok(()) => {
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => Some(self.fail(e)),
        }
    }

    fn fail(&mut self, e: impl std::fmt::Display) -> String {
        let msg =
            format!("log write failed ({e}); the log takes no more writes: restart the process");
        tracing::error!(error = %e, "log write failed; refusing further writes");
        self.shared.broken.store(true, Ordering::Release);
        self.failed = Some(msg.clone());
        msg
    }

    /// Writes one group of requests as one write batch, adding their
    /// answers to `replies` (sent once the batch is durable). Synced at once
    /// unless it holds nothing but records of topics read before their sync.
    fn group(&mut self, batch: Vec<WriteReq>, replies: &mut Vec<Reply>) -> Written {
        if let Some(e) = self.failed.clone() {
            replies.extend(batch.into_iter().map(|req| match req {
                WriteReq::Append { reply, .. } => after_commit(reply, Ok(0)),
                WriteReq::Commit { reply, .. } => after_commit(reply, Ok(())),
                WriteReq::Delete { reply, .. } => after_commit(reply, Ok(0)),
            }));
            return Written::Failed(e);
        }
        let mut write = self.db.db.batch();
        let mut effects = Vec::new();
        for req in batch {
            match req {
                WriteReq::Append {
                    topic,
                    partition,
                    producer,
                    first_seq,
                    records,
                    reply,
                } => {
                    let key = (topic.clone(), partition);
                    let m = self.offsets[&key];
                    let n = records.len() as u64;
                    let pkey = (topic.clone(), partition, producer);
                    let outcome = match self.producers.get(&pkey).copied() {
                        Some((s, c, off)) if s == first_seq && c == n => Ok(Some(off)),
                        Some((s, c, _)) if first_seq != s + c => {
                            Err(LogError::OutOfOrderSequence {
                                topic: topic.clone(),
                                partition,
                                producer: pkey.2.clone(),
                                expected: s + c,
                                got: first_seq,
                            })
                        }
                        None if first_seq != 0 => Err(LogError::OutOfOrderSequence {
                            topic: topic.clone(),
                            partition,
                            producer: pkey.2.clone(),
                            expected: 0,
                            got: first_seq,
                        }),
                        _ => Ok(None),
                    };
                    match outcome {
                        Ok(Some(dup_offset)) => replies.push(after_commit(reply, Ok(dup_offset))),
                        Ok(None) => {
                            let id = self.ids[&topic];
                            for (i, (k, v)) in records.iter().enumerate() {
                                write.insert(
                                    &self.db.records,
                                    store::record_key(id, partition, m.next + i as u64),
                                    store::record_value(k, v),
                                );
                            }
                            let after = PartMeta {
                                next: m.next + n,
                                start: m.start,
                            };
                            write.insert(
                                &self.db.meta,
                                store::part_key(id, partition),
                                store::part_value(after),
                            );
                            self.producers.insert(pkey, (first_seq, n, m.next));
                            self.offsets.insert(key, after);
                            effects.push(Effect::Appended {
                                topic,
                                partition,
                                first: m.next,
                                records,
                            });
                            replies.push(after_commit(reply, Ok(m.next)));
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
                    let id = self.ids[&topic];
                    write.insert(
                        &self.db.meta,
                        store::group_key(id, partition, &group),
                        next.to_le_bytes(),
                    );
                    effects.push(Effect::Committed((group, topic, partition), next));
                    replies.push(after_commit(reply, Ok(())));
                }
                WriteReq::Delete {
                    topic,
                    partition,
                    before,
                    reply,
                } => {
                    let key = (topic.clone(), partition);
                    let m = self.offsets[&key];
                    let new_start = before.min(m.next).max(m.start);
                    if new_start > m.start {
                        let id = self.ids[&topic];
                        // Each record key is written once, so a weak
                        // tombstone (dropped with the record it meets in
                        // compaction) is enough.
                        self.deleted_since += new_start - m.start;
                        write.insert(
                            &self.db.meta,
                            store::DELETED_SINCE,
                            self.deleted_since.to_le_bytes(),
                        );
                        for o in m.start..new_start {
                            write
                                .remove_weak(&self.db.records, store::record_key(id, partition, o));
                        }
                        let after = PartMeta {
                            next: m.next,
                            start: new_start,
                        };
                        write.insert(
                            &self.db.meta,
                            store::part_key(id, partition),
                            store::part_value(after),
                        );
                        self.offsets.insert(key, after);
                        effects.push(Effect::Started(topic, partition, new_start));
                    }
                    replies.push(after_commit(reply, Ok(new_start)));
                }
            }
        }
        // Readers below a new start get OffsetOutOfRange from now on, not
        // a read of records the commit below is deleting.
        for eff in &effects {
            if let Effect::Started(t, p, start) = eff {
                self.shared.topics[t][*p as usize]
                    .start
                    .store(*start, Ordering::Release);
            }
        }
        if write.is_empty() {
            return Written::Nothing;
        }
        // Synced now unless every record written goes to a topic read
        // before its sync (then it waits for the answers to share the sync).
        let sync_now = effects.iter().any(|e| match e {
            Effect::Appended { topic, .. } => !self.visible_before_sync.contains(topic),
            Effect::Started(..) | Effect::Committed(..) => true,
        });
        if let Err(e) = write.durability(None).commit() {
            return Written::Failed(self.fail(e));
        }
        // Those records are readable now.
        let (early, effects): (Vec<Effect>, Vec<Effect>) = effects.into_iter().partition(
            |e| matches!(e, Effect::Appended { topic, .. } if self.visible_before_sync.contains(topic)),
        );
        for eff in early {
            self.apply(eff);
        }
        if !sync_now {
            return Written::Unsynced;
        }
        if let Some(e) = self.sync(true) {
            return Written::Failed(e);
        }
        for eff in effects {
            self.apply(eff);
        }
        Written::Synced
    }

    /// What a written request changes in memory: a new log start, records
    /// readers may see, a consumer position.
    fn apply(&self, eff: Effect) {
        match eff {
            Effect::Started(t, p, s) => {
                let part = &self.shared.topics[&t][p as usize];
                part.tail.lock().expect("not poisoned").trim_below(s);
            }
            Effect::Appended {
                topic,
                partition,
                first,
                records,
            } => {
                let part = &self.shared.topics[&topic][partition as usize];
                let end = first + records.len() as u64;
                {
                    let mut tail = part.tail.lock().expect("not poisoned");
                    for (i, (key, value)) in records.into_iter().enumerate() {
                        tail.push(Record {
                            offset: first + i as u64,
                            key,
                            value,
                        });
                    }
                }
                part.hw.send_replace(end);
            }
            Effect::Committed(k, next) => {
                self.shared
                    .groups
                    .lock()
                    .expect("not poisoned")
                    .insert(k, next);
            }
        }
    }
}

#[async_trait::async_trait]
impl OpLog for EmbeddedLog {
    fn partitions(&self, topic: &str) -> Result<u32> {
        self.inner
            .shared
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
        // A consumer at the tail reads records just written from memory;
        // others read the database: inline for a few records, on a blocking
        // thread for more, so a catching-up reader never holds up an async
        // worker.
        if let Some(records) = part.tail.lock().expect("not poisoned").range(from, end) {
            return Ok(records);
        }
        let id = part.topic_id;
        let out = if end - from <= INLINE_READ as u64 {
            read_db(&self.inner.db, id, partition, from, end)
        } else {
            let db = self.inner.db.clone();
            tokio::task::spawn_blocking(move || read_db(&db, id, partition, from, end))
                .await
                .map_err(storage)?
        };
        // DeleteRecords may have raced this read; Kafka would refuse it too.
        check_start(part, topic, partition, from)?;
        out
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
        let groups = self.inner.shared.groups.lock().expect("not poisoned");
        Ok(groups
            .get(&(group.to_owned(), topic.to_owned(), partition))
            .copied())
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
        if self.inner.shared.broken.load(Ordering::Acquire) {
            return Err(storage("a log write failed: restart the process"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database that lost records it says it holds (a damaged disk, a
    /// copied folder missing files) is refused on open, not served short.
    #[tokio::test]
    async fn a_database_missing_records_is_refused() {
        let config =
            |dir: &std::path::Path| EmbeddedLogConfig::new(dir.to_owned(), vec![("t".into(), 1)]);
        for lost in [0u64, 2, 4] {
            let dir = tempfile::tempdir().unwrap();
            let log = EmbeddedLog::open(config(dir.path())).unwrap();
            for i in 0..5 {
                log.produce("t", vec![("k".into(), vec![i])]).await.unwrap();
            }
            drop(log);
            let db = Db::open(&dir.path().join(store::DB_DIR)).unwrap();
            let id = db.load_meta().unwrap().topics["t"].0;
            db.records.remove(store::record_key(id, 0, lost)).unwrap();
            db.db.persist(fjall::PersistMode::SyncAll).unwrap();
            drop(db);
            let err = EmbeddedLog::open(config(dir.path())).err();
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            if lost == 2 {
                // Opening checks a partition's two ends; a record lost from
                // the middle is found by the read.
                let log = EmbeddedLog::open(config(dir.path())).unwrap();
                let err = log.fetch("t", 0, 0, 10, Duration::ZERO).await.err();
                assert!(
                    matches!(&err, Some(LogError::Storage(m)) if m.contains("record 2 of partition 0 is missing")),
                    "{err:?}"
                );
            } else {
                assert!(msg.contains("is missing records"), "lost {lost}: {msg}");
            }
        }
    }
}
