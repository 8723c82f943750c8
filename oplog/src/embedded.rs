//! The embedded log: Kafka's semantics on append-only segment files
//! (`segments.rs` has the file format).
//!
//! All writes go through one writer thread that group-commits: it takes every
//! request waiting in its bounded queue, encodes them as frames into one
//! buffer, writes it with one `pwrite` at the end of the current segment and
//! makes it durable with one `fdatasync`. An fsync costs a lot (here ~60 µs
//! of CPU and ~0.15 ms of waiting), so many appends share each one and
//! durability does not cap throughput at the sync rate. Readers only ever
//! see durable records: the high watermark moves after the sync.
//!
//! In memory: per partition, the location of every retained record (an
//! index, 16 bytes a record) and its newest records (a tail of at most
//! [`TAIL_BYTES`], which serves consumers at the tail without reading the
//! files); consumer positions; the idempotent producer's last batches.
//! Everything else is read back with `pread` from the segments (the page
//! cache). Segments are deleted oldest first, once no record in them is
//! live; when the log moves to a new segment, up to 4 MiB of the oldest
//! one's live records are written again (same offsets), so a quiet
//! partition never pins old segments.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Mutex};

use crate::segments::{self, Body, FrameBuf, Scanner};
use crate::{partition_for, LogError, Offset, OpLog, Partition, Record, Result};

/// A segment's preallocated size; a new segment starts when the current one
/// is full (a group commit larger than this still goes into one segment).
const SEGMENT_BYTES: u64 = 16 << 20;
/// Newest records kept in memory per partition, bytes.
const TAIL_BYTES: usize = 256 << 10;
/// The oldest segment's live records are written again when the log moves
/// to a new segment if they are at most this many bytes.
const RELOCATE_BYTES: u64 = SEGMENT_BYTES / 4;
/// Requests the writer takes per group commit at most.
const MAX_GROUP: usize = 512;
/// Bounded writer queue.
const QUEUE: usize = 1024;
/// Records a fetch reads on the async worker itself; longer reads that
/// need the files run on a blocking thread.
const INLINE_READ: usize = 64;

#[derive(Debug, Clone)]
pub struct EmbeddedLogConfig {
    /// Folder holding the segment files.
    pub dir: PathBuf,
    /// Topics to create (or check) with their partition counts.
    pub topics: Vec<(String, u32)>,
}

/// Where a record's bytes are.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u32,
    pos: u64,
    len: u32,
}

/// A record not seen yet while replaying (never left once replay ends).
const MISSING: Loc = Loc {
    seg: u32::MAX,
    pos: 0,
    len: 0,
};

/// A partition's records in memory: where each retained one is, and the
/// newest ones themselves.
#[derive(Default)]
struct PartData {
    /// Offset of `index[0]`; with an empty index, the next offset.
    first: u64,
    index: VecDeque<Loc>,
    /// The newest records, contiguous offsets.
    tail: VecDeque<Record>,
    tail_bytes: usize,
}

impl PartData {
    fn push(&mut self, loc: Loc, record: Record) {
        self.index.push_back(loc);
        self.tail_bytes += record.key.len() + record.value.len();
        self.tail.push_back(record);
        while self.tail_bytes > TAIL_BYTES {
            let Some(r) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= r.key.len() + r.value.len();
        }
    }

    fn trim_below(&mut self, start: u64) {
        while self.first < start && self.index.pop_front().is_some() {
            self.first += 1;
        }
        while self.tail.front().is_some_and(|r| r.offset < start) {
            let r = self.tail.pop_front().expect("front exists");
            self.tail_bytes -= r.key.len() + r.value.len();
        }
    }

    /// Records `from..end` if the tail holds them all.
    fn tail_range(&self, from: u64, end: u64) -> Option<Vec<Record>> {
        let first = self.tail.front()?.offset;
        if from < first || end > first + self.tail.len() as u64 {
            return None;
        }
        let a = (from - first) as usize;
        let b = (end - first) as usize;
        Some(self.tail.range(a..b).cloned().collect())
    }
}

struct PartState {
    /// Next offset; readers see offsets below it. Moves after the sync.
    hw: watch::Sender<u64>,
    start: AtomicU64,
    data: std::sync::Mutex<PartData>,
}

struct Inner {
    topics: HashMap<String, Vec<PartState>>,
    /// Open segment files, for readers (the writer also appends to the
    /// newest). Taken while holding a partition's lock, so a segment
    /// deleted after its records moved is never looked up through a stale
    /// location.
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    groups: std::sync::Mutex<HashMap<(String, String, Partition), Offset>>,
    /// Set when a write failed: the log takes no more writes.
    broken: std::sync::atomic::AtomicBool,
    tx: mpsc::Sender<WriteReq>,
    /// The idempotent producer. Locked only to number a batch and enqueue
    /// it, so sequences reach the writer in order while many batches wait
    /// for the same group commit.
    producer: Mutex<ProducerState>,
    /// The writer thread, joined when the last handle goes: the files are
    /// free again once `EmbeddedLog` is dropped (a reopen, a tool run after
    /// the server, a test).
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

/// What recovery rebuilt of one partition.
struct Recovered {
    next: u64,
    start: u64,
    first: u64,
    index: VecDeque<Loc>,
}

/// Everything recovery found in the segments.
#[derive(Default)]
struct Replay {
    parts: HashMap<(String, Partition), Recovered>,
    /// Topics in the order checkpoints list them, with partition counts.
    topics: Vec<(String, u32)>,
    groups: HashMap<(String, String, Partition), Offset>,
    /// Per segment, per partition: one past the highest offset written there.
    seg_ends: BTreeMap<u32, HashMap<(String, Partition), u64>>,
    next_lsn: u64,
}

fn corrupt(seg: u32, pos: u64, what: impl std::fmt::Display) -> LogError {
    LogError::Storage(format!("log segment {seg} at byte {pos}: {what}"))
}

impl Replay {
    fn part(&mut self, seg: u32, pos: u64, topic: &str, p: Partition) -> Result<&mut Recovered> {
        self.parts.get_mut(&(topic.to_owned(), p)).ok_or_else(|| {
            corrupt(
                seg,
                pos,
                format!("{topic}/{p} appears before any checkpoint lists it"),
            )
        })
    }

    fn apply(&mut self, seg: u32, f: &segments::Frame) -> Result<()> {
        let bad = |_| corrupt(seg, f.pos, "malformed frame");
        let mut b = Body {
            bytes: &f.body,
            at: 1,
        };
        match f.kind {
            segments::CHECKPOINT => {
                let n = b.u32().map_err(bad)?;
                for _ in 0..n {
                    let topic = b.str().map_err(bad)?.to_owned();
                    let count = b.u32().map_err(bad)?;
                    if !self.topics.iter().any(|(t, _)| *t == topic) {
                        self.topics.push((topic.clone(), count));
                    }
                    for p in 0..count {
                        let next = b.u64().map_err(bad)?;
                        let start = b.u64().map_err(bad)?;
                        match self.parts.get_mut(&(topic.clone(), p)) {
                            Some(r) if r.next != next => {
                                return Err(corrupt(seg, f.pos, format!(
                                    "checkpoint says {topic}/{p} ends at {next}, earlier segments end it at {}",
                                    r.next
                                )))
                            }
                            Some(r) => {
                                r.start = r.start.max(start);
                            }
                            None => {
                                self.parts.insert(
                                    (topic.clone(), p),
                                    Recovered { next, start, first: next, index: VecDeque::new() },
                                );
                            }
                        }
                    }
                }
                let n = b.u32().map_err(bad)?;
                self.groups.clear();
                for _ in 0..n {
                    let (key, next) = b.position().map_err(bad)?;
                    self.groups.insert(key, next);
                }
            }
            segments::APPEND => {
                let topic = b.str().map_err(bad)?.to_owned();
                let p = b.u32().map_err(bad)?;
                let first = b.u64().map_err(bad)?;
                let count = b.u32().map_err(bad)?;
                let r = self.part(seg, f.pos, &topic, p)?;
                if first != r.next {
                    return Err(corrupt(
                        seg,
                        f.pos,
                        format!("{topic}/{p}: append at {first}, expected {}", r.next),
                    ));
                }
                for _ in 0..count {
                    let (at, len) = b.skip_record().map_err(bad)?;
                    r.index.push_back(Loc {
                        seg,
                        pos: f.pos + segments::HEADER as u64 + at as u64,
                        len,
                    });
                }
                r.next += count as u64;
                let end = r.next;
                self.seg_ends
                    .entry(seg)
                    .or_default()
                    .insert((topic, p), end);
            }
            segments::RELOCATE => {
                let topic = b.str().map_err(bad)?.to_owned();
                let p = b.u32().map_err(bad)?;
                let count = b.u32().map_err(bad)?;
                let r = self.part(seg, f.pos, &topic, p)?;
                let mut end = 0;
                for _ in 0..count {
                    let offset = b.u64().map_err(bad)?;
                    let (at, len) = b.skip_record().map_err(bad)?;
                    let loc = Loc {
                        seg,
                        pos: f.pos + segments::HEADER as u64 + at as u64,
                        len,
                    };
                    if offset < r.start || offset >= r.next {
                        continue;
                    }
                    // Replay may start after the segment this record was
                    // first written in: it then lies below the index so far.
                    while offset < r.first {
                        r.index.push_front(MISSING);
                        r.first -= 1;
                    }
                    r.index[(offset - r.first) as usize] = loc;
                    end = end.max(offset + 1);
                }
                let e = self
                    .seg_ends
                    .entry(seg)
                    .or_default()
                    .entry((topic, p))
                    .or_default();
                *e = (*e).max(end);
            }
            segments::COMMIT => {
                let (key, next) = b.position().map_err(bad)?;
                self.groups.insert(key, next);
            }
            segments::DELETE => {
                let topic = b.str().map_err(bad)?.to_owned();
                let p = b.u32().map_err(bad)?;
                let start = b.u64().map_err(bad)?;
                let r = self.part(seg, f.pos, &topic, p)?;
                r.start = r.start.max(start);
                while r.first < r.start && r.index.pop_front().is_some() {
                    r.first += 1;
                }
            }
            k => return Err(corrupt(seg, f.pos, format!("unknown frame kind {k}"))),
        }
        Ok(())
    }
}

/// Reads every segment of `dir` in order.
fn replay(dir: &Path, ids: &[u32]) -> Result<Replay> {
    let mut r = Replay::default();
    let mut expected: Option<u64> = None;
    for &seg in ids {
        r.seg_ends.entry(seg).or_default();
        let mut scan = Scanner::open(&segments::segment_path(dir, seg)).map_err(storage)?;
        let mut first = true;
        while let Some(frame) = scan.next().map_err(storage)? {
            if first {
                if let Some(e) = expected {
                    if frame.lsn != e {
                        return Err(corrupt(seg, 0, format!(
                            "starts at frame {}, but the segment before ends at frame {e}: frames are missing",
                            frame.lsn
                        )));
                    }
                }
                if frame.kind != segments::CHECKPOINT {
                    return Err(corrupt(seg, 0, "does not start with a checkpoint"));
                }
                first = false;
            }
            r.apply(seg, &frame)?;
        }
        if let Some(n) = scan.next_lsn() {
            expected = Some(n);
        }
    }
    r.next_lsn = expected.unwrap_or(0);
    for rec in r.parts.values_mut() {
        if rec.first < rec.start {
            // Every record below the start is gone; nothing else may be.
            while rec.first < rec.start && rec.index.pop_front().is_some() {
                rec.first += 1;
            }
        }
        if rec.first > rec.start {
            return Err(LogError::Storage(format!(
                "log segments hold records from offset {} only, but the log start is {}: a segment is missing",
                rec.first, rec.start
            )));
        }
        if rec.first + rec.index.len() as u64 != rec.next
            || rec.index.iter().any(|l| l.seg == MISSING.seg)
        {
            return Err(LogError::Storage(
                "log segments do not hold every record from the log start on: a segment is missing"
                    .into(),
            ));
        }
    }
    Ok(r)
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log under `config.dir` and starts its
    /// writer thread. Must be called inside a tokio runtime.
    pub fn open(config: EmbeddedLogConfig) -> Result<EmbeddedLog> {
        std::fs::create_dir_all(&config.dir).map_err(storage)?;
        if config.dir.join("log.redb").exists() {
            crate::migrate::from_redb(&config.dir)?;
        }
        let ids = segments::list(&config.dir).map_err(storage)?;
        let mut replay = replay(&config.dir, &ids)?;
        for (topic, count) in &config.topics {
            match replay.topics.iter().find(|(t, _)| t == topic) {
                Some((_, existing)) if existing != count => {
                    return Err(LogError::PartitionMismatch {
                        topic: topic.clone(),
                        existing: *existing,
                        wanted: *count,
                    })
                }
                Some(_) => {}
                None => {
                    replay.topics.push((topic.clone(), *count));
                    for p in 0..*count {
                        replay.parts.insert(
                            (topic.clone(), p),
                            Recovered {
                                next: 0,
                                start: 0,
                                first: 0,
                                index: VecDeque::new(),
                            },
                        );
                    }
                }
            }
        }
        let mut files = BTreeMap::new();
        for &id in &ids {
            let f = File::open(segments::segment_path(&config.dir, id)).map_err(storage)?;
            // A process killed between a write and its sync leaves frames
            // that replay accepts (and readers will see): make them durable
            // before anything builds on them.
            f.sync_all().map_err(storage)?;
            files.insert(id, Arc::new(f));
        }
        let mut topics = HashMap::new();
        let mut offsets = HashMap::new();
        for (topic, count) in &replay.topics {
            let mut states = Vec::new();
            for p in 0..*count {
                let r = replay
                    .parts
                    .remove(&(topic.clone(), p))
                    .expect("every partition recovered");
                offsets.insert((topic.clone(), p), (r.next, r.start));
                states.push(PartState {
                    hw: watch::channel(r.next).0,
                    start: AtomicU64::new(r.start),
                    data: std::sync::Mutex::new(PartData {
                        first: r.first,
                        index: r.index,
                        ..PartData::default()
                    }),
                });
            }
            topics.insert(topic.clone(), states);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            topics,
            files: RwLock::new(files),
            groups: std::sync::Mutex::new(replay.groups.clone()),
            broken: std::sync::atomic::AtomicBool::new(false),
            tx,
            producer: Mutex::new(ProducerState {
                id: format!("embedded-{}-{}", std::process::id(), crate_nanos()),
                epoch: 0,
                next: HashMap::new(),
            }),
            writer: std::sync::Mutex::new(None),
        });
        // The writer never appends to a segment an earlier process wrote
        // (its tail may hold a torn frame): it starts a new one.
        let mut w = Writer {
            dir: config.dir.clone(),
            inner: Arc::downgrade(&inner),
            topic_order: replay.topics.iter().map(|(t, n)| (t.clone(), *n)).collect(),
            seg: ids.last().copied().unwrap_or(0),
            file: None,
            pos: 0,
            checkpoint_end: 0,
            lsn: replay.next_lsn,
            offsets,
            groups: replay.groups,
            producers: HashMap::new(),
            seg_ends: replay.seg_ends,
            failed: None,
            frames: FrameBuf::default(),
        };
        w.roll(&inner)?;
        let handle = std::thread::Builder::new()
            .name("quire-log-writer".into())
            .spawn(move || w.run(rx))
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
        // One batch is one frame; replay would take a larger one for the
        // end of the segment.
        let bytes: u64 = records
            .iter()
            .map(|(k, v)| 8 + k.len() as u64 + v.len() as u64)
            .sum();
        if bytes + (64 << 10) > segments::MAX_BODY as u64 {
            return Err(LogError::Storage(format!(
                "a batch of {bytes} bytes is larger than a log frame may be ({} bytes)",
                segments::MAX_BODY
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

/// Reads records at `planned` locations (offsets `from..`): records that
/// lie close together in one segment are read with one `pread`.
fn read_records(planned: &[(Loc, Arc<File>)], from: Offset) -> Result<Vec<Record>> {
    /// Largest gap read over, and largest single read.
    const GAP: u64 = 4096;
    const SPAN: u64 = 1 << 20;
    let mut out = Vec::with_capacity(planned.len());
    let mut i = 0;
    while i < planned.len() {
        let (first, file) = &planned[i];
        let mut end = first.pos + first.len as u64;
        let mut j = i + 1;
        while let Some((l, _)) = planned.get(j) {
            let l_end = l.pos + l.len as u64;
            if l.seg != first.seg || l.pos < end || l.pos - end > GAP || l_end - first.pos > SPAN {
                break;
            }
            end = l_end;
            j += 1;
        }
        let mut buf = vec![0u8; (end - first.pos) as usize];
        file.read_exact_at(&mut buf, first.pos).map_err(storage)?;
        for (k, (l, _)) in planned.iter().enumerate().take(j).skip(i) {
            let a = (l.pos - first.pos) as usize;
            let (key, value) =
                segments::parse_record(&buf[a..a + l.len as usize]).map_err(|_| {
                    storage(format!(
                        "log segment {} at byte {}: unreadable record",
                        l.seg, l.pos
                    ))
                })?;
            out.push(Record {
                offset: from + k as u64,
                key,
                value,
            });
        }
        i = j;
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

/// What a request does to in-memory state once its frames are durable.
enum Effect {
    /// Records appended at `first`; `at` are their positions in the
    /// group's buffer.
    Appended {
        topic: String,
        partition: Partition,
        first: Offset,
        at: Vec<(usize, u32)>,
        records: Vec<(String, Vec<u8>)>,
    },
    Started(String, Partition, Offset),
    Committed((String, String, Partition), Offset),
}

/// Answers one request once its group's fate is known (the error text when
/// the write failed).
type Reply = Box<dyn FnOnce(Option<&str>)>;

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

/// The writer thread's state: the current segment, the authoritative
/// offsets, consumer positions and producer state.
struct Writer {
    dir: PathBuf,
    inner: std::sync::Weak<Inner>,
    topic_order: Vec<(String, u32)>,
    seg: u32,
    file: Option<Arc<File>>,
    /// Where the next frame goes in the current segment.
    pos: u64,
    /// End of the current segment's checkpoint.
    checkpoint_end: u64,
    lsn: u64,
    /// `(topic, partition) -> (next offset, log start)`
    offsets: HashMap<(String, Partition), (u64, u64)>,
    groups: HashMap<(String, String, Partition), Offset>,
    /// `(topic, partition, producer) -> (first seq, count, first offset)` of
    /// its last batch. This process's producers only: a restart starts a
    /// new producer, as before.
    producers: HashMap<(String, Partition, String), (u64, u64, u64)>,
    /// Per segment, per partition: one past the highest offset it holds.
    seg_ends: BTreeMap<u32, HashMap<(String, Partition), u64>>,
    /// Set for good by a failed write or sync: what reached the disk is
    /// unknown, so nothing more is written (restart the process).
    failed: Option<String>,
    frames: FrameBuf,
}

/// Bytes a request's frames take, roughly (to decide on a new segment).
fn estimate(req: &WriteReq) -> u64 {
    match req {
        WriteReq::Append { topic, records, .. } => {
            64 + topic.len() as u64
                + records
                    .iter()
                    .map(|(k, v)| 8 + k.len() as u64 + v.len() as u64)
                    .sum::<u64>()
        }
        WriteReq::Commit { group, topic, .. } => 64 + (group.len() + topic.len()) as u64,
        WriteReq::Delete { topic, .. } => 64 + topic.len() as u64,
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriteReq>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            self.group(&inner, batch);
        }
    }

    fn fail(&mut self, inner: &Inner, e: impl std::fmt::Display) -> String {
        let msg =
            format!("log write failed ({e}); the log takes no more writes: restart the process");
        tracing::error!(error = %e, "log write failed; refusing further writes");
        inner.broken.store(true, Ordering::Release);
        self.failed = Some(msg.clone());
        msg
    }

    /// One group commit.
    fn group(&mut self, inner: &Inner, batch: Vec<WriteReq>) {
        if self.failed.is_none() {
            let size: u64 = batch.iter().map(estimate).sum();
            if self.pos + size > SEGMENT_BYTES && self.pos > self.checkpoint_end {
                if let Err(e) = self.roll(inner) {
                    self.fail(inner, e);
                }
            }
        }
        if let Some(e) = self.failed.clone() {
            for req in batch {
                let err = LogError::Storage(e.clone());
                match req {
                    WriteReq::Append { reply, .. } => drop(reply.send(Err(err))),
                    WriteReq::Commit { reply, .. } => drop(reply.send(Err(err))),
                    WriteReq::Delete { reply, .. } => drop(reply.send(Err(err))),
                }
            }
            return;
        }
        self.frames.clear();
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
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
                    let (next, start) = self.offsets[&key];
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
                            self.frames.begin(self.lsn, segments::APPEND);
                            self.lsn += 1;
                            self.frames.str(&topic);
                            self.frames.u32(partition);
                            self.frames.u64(next);
                            self.frames.u32(n as u32);
                            let at = records
                                .iter()
                                .map(|(k, v)| self.frames.record(k, v))
                                .collect();
                            self.frames.finish();
                            self.producers.insert(pkey, (first_seq, n, next));
                            self.offsets.insert(key, (next + n, start));
                            effects.push(Effect::Appended {
                                topic,
                                partition,
                                first: next,
                                at,
                                records,
                            });
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
                    self.frames.begin(self.lsn, segments::COMMIT);
                    self.lsn += 1;
                    self.frames.position(&group, &topic, partition, next);
                    self.frames.finish();
                    self.groups
                        .insert((group.clone(), topic.clone(), partition), next);
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
                    let (next, start) = self.offsets[&key];
                    let new_start = before.min(next).max(start);
                    if new_start > start {
                        self.frames.begin(self.lsn, segments::DELETE);
                        self.lsn += 1;
                        self.frames.str(&topic);
                        self.frames.u32(partition);
                        self.frames.u64(new_start);
                        self.frames.finish();
                        self.offsets.insert(key, (next, new_start));
                        effects.push(Effect::Started(topic, partition, new_start));
                    }
                    replies.push(after_commit(reply, Ok(new_start)));
                }
            }
        }
        let base = self.pos;
        if !self.frames.buf.is_empty() {
            let file = self.file.as_ref().expect("a segment is open");
            if let Err(e) = file
                .write_all_at(&self.frames.buf, base)
                .and_then(|()| file.sync_data())
            {
                let msg = self.fail(inner, e);
                for reply in replies {
                    reply(Some(&msg));
                }
                return;
            }
            self.pos += self.frames.buf.len() as u64;
        }
        let mut started = false;
        for eff in effects {
            match eff {
                Effect::Started(t, p, s) => {
                    let part = &inner.topics[&t][p as usize];
                    part.start.store(s, Ordering::Release);
                    part.data.lock().expect("not poisoned").trim_below(s);
                    started = true;
                }
                Effect::Appended {
                    topic,
                    partition,
                    first,
                    at,
                    records,
                } => {
                    let part = &inner.topics[&topic][partition as usize];
                    let end = first + records.len() as u64;
                    {
                        let mut d = part.data.lock().expect("not poisoned");
                        for (i, ((pos, len), (key, value))) in
                            at.into_iter().zip(records).enumerate()
                        {
                            let loc = Loc {
                                seg: self.seg,
                                pos: base + pos as u64,
                                len,
                            };
                            d.push(
                                loc,
                                Record {
                                    offset: first + i as u64,
                                    key,
                                    value,
                                },
                            );
                        }
                    }
                    part.hw.send_replace(end);
                    self.seg_ends
                        .entry(self.seg)
                        .or_default()
                        .insert((topic, partition), end);
                }
                Effect::Committed(k, next) => {
                    inner.groups.lock().expect("not poisoned").insert(k, next);
                }
            }
        }
        for reply in replies {
            reply(None);
        }
        if started {
            self.collect(inner);
        }
    }

    /// Encodes a checkpoint of the current state into `frames`.
    fn checkpoint(&mut self) {
        self.frames.begin(self.lsn, segments::CHECKPOINT);
        self.lsn += 1;
        self.frames.u32(self.topic_order.len() as u32);
        for (topic, count) in &self.topic_order {
            self.frames.str(topic);
            self.frames.u32(*count);
            for p in 0..*count {
                let (next, start) = self.offsets[&(topic.clone(), p)];
                self.frames.u64(next);
                self.frames.u64(start);
            }
        }
        self.frames.u32(self.groups.len() as u32);
        for ((group, topic, p), next) in &self.groups {
            self.frames.position(group, topic, *p, *next);
        }
        self.frames.finish();
    }

    /// Starts the next segment (preallocated, a checkpoint first), moves
    /// the oldest segment's live records into it if they are few, and
    /// deletes segments nothing needs.
    fn roll(&mut self, inner: &Inner) -> Result<()> {
        let id = self.seg + 1;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(segments::segment_path(&self.dir, id))
            .map_err(storage)?;
        // Preallocated, so a sync writes data, not the file's new size;
        // where the filesystem cannot, the file just grows.
        let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, SEGMENT_BYTES);
        self.frames.clear();
        self.checkpoint();
        file.write_all_at(&self.frames.buf, 0).map_err(storage)?;
        file.sync_data().map_err(storage)?;
        // The new file's name must survive a crash too.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(storage)?;
        let file = Arc::new(file);
        inner
            .files
            .write()
            .expect("not poisoned")
            .insert(id, file.clone());
        self.seg = id;
        self.file = Some(file);
        self.pos = self.frames.buf.len() as u64;
        self.checkpoint_end = self.pos;
        self.seg_ends.entry(id).or_default();
        self.relocate(inner)?;
        self.collect(inner);
        Ok(())
    }

    /// The records still live in segment `seg`: `(topic, partition,
    /// offset, location)`.
    fn live(&self, inner: &Inner, seg: u32) -> Vec<(String, Partition, Offset, Loc)> {
        let mut live = Vec::new();
        for ((topic, p), end) in self.seg_ends.get(&seg).into_iter().flatten() {
            let d = inner.topics[topic][*p as usize]
                .data
                .lock()
                .expect("not poisoned");
            let stop = (*end).min(d.first + d.index.len() as u64);
            for o in d.first..stop {
                let loc = d.index[(o - d.first) as usize];
                if loc.seg == seg {
                    live.push((topic.clone(), *p, o, loc));
                }
            }
        }
        live
    }

    /// Whether any record in segment `seg` is live.
    fn has_live(&self, inner: &Inner, seg: u32) -> bool {
        self.seg_ends
            .get(&seg)
            .into_iter()
            .flatten()
            .any(|((topic, p), end)| {
                let d = inner.topics[topic][*p as usize]
                    .data
                    .lock()
                    .expect("not poisoned");
                let stop = (*end).min(d.first + d.index.len() as u64);
                (d.first..stop).any(|o| d.index[(o - d.first) as usize].seg == seg)
            })
    }

    /// Writes the oldest segment's live records again, into the current
    /// segment, when they are few (a quiet partition's records would
    /// otherwise keep the whole segment on disk).
    fn relocate(&mut self, inner: &Inner) -> Result<()> {
        let Some(&oldest) = self.seg_ends.keys().next() else {
            return Ok(());
        };
        if oldest == self.seg {
            return Ok(());
        }
        // At most RELOCATE_BYTES per move: a segment with more live
        // records drains over several moves.
        let mut live = self.live(inner, oldest);
        let mut bytes = 0;
        let keep = live
            .iter()
            .take_while(|(_, _, _, l)| {
                bytes += l.len as u64;
                bytes <= RELOCATE_BYTES
            })
            .count();
        live.truncate(keep);
        let bytes: u64 = live.iter().map(|(_, _, _, l)| l.len as u64).sum();
        if live.is_empty() {
            return Ok(());
        }
        let Some(old) = inner
            .files
            .read()
            .expect("not poisoned")
            .get(&oldest)
            .cloned()
        else {
            return Ok(());
        };
        let mut by_part: BTreeMap<(String, Partition), Vec<(Offset, Loc)>> = BTreeMap::new();
        for (t, p, o, l) in live {
            by_part.entry((t, p)).or_default().push((o, l));
        }
        self.frames.clear();
        let mut moved = Vec::new();
        for ((topic, p), recs) in &by_part {
            self.frames.begin(self.lsn, segments::RELOCATE);
            self.lsn += 1;
            self.frames.str(topic);
            self.frames.u32(*p);
            self.frames.u32(recs.len() as u32);
            for (o, l) in recs {
                let mut buf = vec![0u8; l.len as usize];
                old.read_exact_at(&mut buf, l.pos).map_err(storage)?;
                let (key, value) = segments::parse_record(&buf).map_err(|_| {
                    storage(format!(
                        "log segment {oldest} at byte {}: unreadable record",
                        l.pos
                    ))
                })?;
                self.frames.u64(*o);
                let (at, len) = self.frames.record(&key, &value);
                moved.push((topic.clone(), *p, *o, at, len));
            }
            self.frames.finish();
        }
        let file = self.file.as_ref().expect("a segment is open");
        let base = self.pos;
        file.write_all_at(&self.frames.buf, base)
            .and_then(|()| file.sync_data())
            .map_err(storage)?;
        self.pos += self.frames.buf.len() as u64;
        for (topic, p, o, at, len) in moved {
            let mut d = inner.topics[&topic][p as usize]
                .data
                .lock()
                .expect("not poisoned");
            if o >= d.first && o < d.first + d.index.len() as u64 {
                let i = (o - d.first) as usize;
                d.index[i] = Loc {
                    seg: self.seg,
                    pos: base + at as u64,
                    len,
                };
            }
            drop(d);
            let e = self
                .seg_ends
                .entry(self.seg)
                .or_default()
                .entry((topic, p))
                .or_default();
            *e = (*e).max(o + 1);
        }
        tracing::debug!(
            segment = oldest,
            bytes,
            "log: live records of the oldest segment written again"
        );
        Ok(())
    }

    /// Deletes the oldest segments while no record in them is live.
    fn collect(&mut self, inner: &Inner) {
        while let Some(&oldest) = self.seg_ends.keys().next() {
            if oldest == self.seg || self.has_live(inner, oldest) {
                return;
            }
            self.seg_ends.remove(&oldest);
            inner.files.write().expect("not poisoned").remove(&oldest);
            if let Err(e) = std::fs::remove_file(segments::segment_path(&self.dir, oldest)) {
                tracing::warn!(segment = oldest, error = %e, "could not delete a log segment");
            }
        }
    }
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
        // A consumer at the tail reads records just written from memory.
        // Others read the segments (the page cache, or the disk): inline for
        // a few records, on a blocking thread for more, so a catching-up
        // reader never holds up an async worker.
        let planned = {
            let d = part.data.lock().expect("not poisoned");
            if let Some(records) = d.tail_range(from, end) {
                return Ok(records);
            }
            if from < d.first {
                drop(d);
                check_start(part, topic, partition, from)?;
                return Err(storage("records below the index"));
            }
            let files = self.inner.files.read().expect("not poisoned");
            let mut planned = Vec::with_capacity((end - from) as usize);
            for o in from..end {
                let loc = d.index[(o - d.first) as usize];
                let file = files
                    .get(&loc.seg)
                    .cloned()
                    .ok_or_else(|| storage(format!("log segment {} is gone", loc.seg)))?;
                planned.push((loc, file));
            }
            planned
        };
        let out = if planned.len() <= INLINE_READ {
            read_records(&planned, from)?
        } else {
            tokio::task::spawn_blocking(move || read_records(&planned, from))
                .await
                .map_err(storage)??
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
        let groups = self.inner.groups.lock().expect("not poisoned");
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
        if self.inner.broken.load(Ordering::Acquire) {
            return Err(storage("a log write failed: restart the process"));
        }
        Ok(())
    }
}
