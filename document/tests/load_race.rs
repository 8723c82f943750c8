//! `load` against a compactor that archives and truncates in the middle of
//! it (issue item 2).
//!
//! `load` reads the compactor's committed position, then the store, then the
//! applied topic from that position. A compactor that archives more and
//! truncates after the store reads but before the topic is read leaves a
//! range that is in neither what the load read from the store nor the
//! topic. The load must notice (`log_start > compacted`) and start again;
//! before the fix it silently returned an older version of the document.
//!
//! The interleaving is forced, not hoped for: the test's `OpLog` does what
//! the compactor does (archive, commit, DeleteRecords) the first time the
//! load asks for the applied topic's log start, and only then answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use document::{load, DocState, Sources, Topics, WindowPolicy, COMPACTOR_GROUP};
use oplog::{EmbeddedLog, EmbeddedLogConfig, LogError, Offset, OpLog, Partition, Record};
use ot::Op;
use protocol::{decode_out_record, AppliedRecord, OutRecord};
use store::{EmbeddedStore, Store};
use testkit::SplitMix64;

const DOC: &str = "raced";
const OTHER: &str = "bystander";

/// The embedded log, with a compactor that strikes inside `log_start`.
struct RacingLog {
    inner: EmbeddedLog,
    store: EmbeddedStore,
    applied: String,
    /// Where the racing compactor archives and truncates up to.
    race_to: Offset,
    log_start_calls: AtomicUsize,
    raced: AtomicUsize,
    /// Behave like a Kafka consumer with `auto.offset.reset=earliest`: a
    /// fetch below the log start reads from the log start instead of
    /// failing with OffsetOutOfRange.
    reset_to_earliest: bool,
}

impl RacingLog {
    /// What the compactor does: archive the applied records between its
    /// committed position and `to`, commit `to`, then DeleteRecords below it.
    async fn compact(&self, p: Partition, to: Offset) -> oplog::Result<()> {
        let from = self
            .inner
            .committed(COMPACTOR_GROUP, &self.applied, p)
            .await?
            .unwrap_or(0);
        let mut applied = Vec::new();
        let mut pos = from;
        while pos < to {
            let batch = self
                .inner
                .fetch(&self.applied, p, pos, (to - pos) as usize, Duration::ZERO)
                .await?;
            assert!(!batch.is_empty(), "records {pos}..{to} are in the log");
            for rec in batch {
                pos = rec.offset + 1;
                if let OutRecord::Applied(a) = decode_out_record(&rec.value).unwrap() {
                    applied.push(a);
                }
            }
        }
        self.store.put_history(&applied).await.unwrap();
        self.inner
            .commit(COMPACTOR_GROUP, &self.applied, p, to)
            .await?;
        self.inner.delete_records(&self.applied, p, to).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl OpLog for RacingLog {
    fn partitions(&self, topic: &str) -> oplog::Result<u32> {
        self.inner.partitions(topic)
    }

    async fn produce(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> oplog::Result<Vec<(Partition, Offset)>> {
        self.inner.produce(topic, records).await
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> oplog::Result<Vec<Record>> {
        match self.inner.fetch(topic, partition, from, max, wait).await {
            Err(LogError::OffsetOutOfRange { log_start, .. }) if self.reset_to_earliest => {
                self.inner
                    .fetch(topic, partition, log_start, max, wait)
                    .await
            }
            other => other,
        }
    }

    async fn high_watermark(&self, topic: &str, partition: Partition) -> oplog::Result<Offset> {
        self.inner.high_watermark(topic, partition).await
    }

    async fn log_start(&self, topic: &str, partition: Partition) -> oplog::Result<Offset> {
        if topic == self.applied && self.log_start_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            // The load has read the committed position and the store: the
            // compactor moves on right now.
            self.compact(partition, self.race_to).await?;
            self.raced.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.log_start(topic, partition).await
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
        next: Offset,
    ) -> oplog::Result<()> {
        self.inner.commit(group, topic, partition, next).await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> oplog::Result<Option<Offset>> {
        self.inner.committed(group, topic, partition).await
    }

    async fn delete_records(
        &self,
        topic: &str,
        partition: Partition,
        before: Offset,
    ) -> oplog::Result<Offset> {
        self.inner.delete_records(topic, partition, before).await
    }

    async fn ping(&self) -> Result<(), LogError> {
        self.inner.ping().await
    }
}

/// Applied records of one document with real ops (inserts and deletes at
/// random places), and the text after each.
struct Writer {
    doc: &'static str,
    text: String,
    version: u64,
    cseq: u64,
    rng: SplitMix64,
}

impl Writer {
    fn new(doc: &'static str, seed: u64) -> Writer {
        Writer {
            doc,
            text: String::new(),
            version: 0,
            cseq: 0,
            rng: SplitMix64::new(seed),
        }
    }

    fn next(&mut self, seq: u64) -> AppliedRecord {
        let len = self.text.chars().count();
        let pos = self.rng.below(len as u64 + 1) as usize;
        let op = if len > 2 && self.rng.chance(1, 3) {
            Op::splice(pos.min(len - 1), 1, "")
        } else {
            let words = ["a", "bc", "é", "😀", "xyz"];
            Op::splice(pos, 0, self.rng.pick::<&str>(&words))
        };
        let (text, del) = ot::apply_with_deleted(&self.text, &op).unwrap();
        self.cseq += 1;
        let r = AppliedRecord {
            v: 1,
            doc: self.doc.into(),
            seq,
            prev: self.version,
            client: format!("{}-client", self.doc),
            cseq: self.cseq,
            base: self.version,
            user: "u".into(),
            ts: seq as i64,
            op,
            del,
            hash: None,
        };
        self.text = text;
        self.version = seq;
        r
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    log: RacingLog,
    store: EmbeddedStore,
    topics: Topics,
    /// DOC's records, in order.
    records: Vec<AppliedRecord>,
    /// DOC's version that was archived (and snapshotted) before the load.
    archived_before: u64,
}

/// The applied topic (one partition) holds:
/// - offsets `0..a`: DOC's first 3 ops and OTHER's; archived, committed,
///   truncated, with a snapshot of DOC after its 2nd op;
/// - offsets `a..b`: DOC's other 9 ops and OTHER's: only in the topic when
///   the load starts; the racing compactor archives and truncates these;
/// - offsets `b..`: OTHER's only (the tail that stays).
async fn setup(reset_to_earliest: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::default();
    let log = EmbeddedLog::open(EmbeddedLogConfig::new(
        dir.path().join("log"),
        vec![(topics.ops.clone(), 1), (topics.applied.clone(), 1)],
    ))
    .unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store")).unwrap();
    let (mut doc, mut other) = (Writer::new(DOC, 1), Writer::new(OTHER, 2));
    let mut seq = 0;
    let mut records = Vec::new();
    let mut produce_range = |n_doc: usize, n_other: usize, seq: &mut u64| {
        let mut out = Vec::new();
        for i in 0..n_doc.max(n_other) {
            if i < n_doc {
                *seq += 3;
                let r = doc.next(*seq);
                records.push(r.clone());
                out.push(r);
            }
            if i < n_other {
                *seq += 2;
                out.push(other.next(*seq));
            }
        }
        out
    };
    let first = produce_range(3, 2, &mut seq);
    let middle = produce_range(9, 5, &mut seq);
    let tail = produce_range(0, 4, &mut seq);
    for batch in [&first, &middle, &tail] {
        let recs = batch.iter().map(|r| (r.doc.clone(), r.encode())).collect();
        log.produce(&topics.applied, recs).await.unwrap();
    }
    let a = first.len() as Offset;
    let b = a + middle.len() as Offset;

    // The compactor's earlier work: the first range archived, a snapshot of
    // DOC at its 2nd op, committed, truncated.
    store.put_history(&first).await.unwrap();
    let mut at2: DocState = DocState::empty(DOC);
    for r in &records[..2] {
        at2.apply_record(r).unwrap();
    }
    store.put_snapshot(&at2.snapshot()).await.unwrap();
    log.commit(COMPACTOR_GROUP, &topics.applied, 0, a)
        .await
        .unwrap();
    log.delete_records(&topics.applied, 0, a).await.unwrap();

    let archived_before = records[2].seq;
    Setup {
        log: RacingLog {
            inner: log,
            store: store.clone(),
            applied: topics.applied.clone(),
            race_to: b,
            log_start_calls: AtomicUsize::new(0),
            raced: AtomicUsize::new(0),
            reset_to_earliest,
        },
        _dir: dir,
        store,
        topics,
        records,
        archived_before,
    }
}

fn replay(records: &[AppliedRecord]) -> DocState {
    let mut s = DocState::empty(DOC);
    for r in records {
        s.apply_record(r).unwrap();
    }
    s
}

#[tokio::test]
async fn load_overtaken_by_truncation_starts_again_and_misses_nothing() {
    overtaken_load(false).await;
}

/// On a log whose fetch below the log start silently reads from the log
/// start (a Kafka consumer resetting to earliest), no OffsetOutOfRange saves
/// the load: only its own `log_start > compacted` check does.
#[tokio::test]
async fn load_overtaken_on_a_log_that_resets_to_earliest_misses_nothing() {
    overtaken_load(true).await;
}

async fn overtaken_load(reset_to_earliest: bool) {
    let s = setup(reset_to_earliest).await;
    let expected = replay(&s.records);
    let sources = Sources {
        log: &s.log,
        store: &s.store,
        topics: &s.topics,
        window: WindowPolicy::default(),
    };
    let state: DocState = load(sources, DOC, None, None).await.unwrap();
    assert_eq!(s.log.raced.load(Ordering::SeqCst), 1, "the race was forced");
    assert!(
        s.log.log_start_calls.load(Ordering::SeqCst) >= 2,
        "the load read the log start again after the race"
    );
    assert!(
        expected.version > s.archived_before,
        "DOC has ops after what was archived before the load"
    );
    assert_eq!(
        (state.version, state.text.to_string()),
        (expected.version, expected.text.to_string()),
        "load returned a stale document (archived before the load: {}; reset to earliest: {reset_to_earliest})",
        s.archived_before
    );
    assert_eq!(state.clients, expected.clients, "dedup table");
    // Its window holds every op since the load's snapshot, as a warm copy's.
    let window: Vec<u64> = state.window.iter().map(|r| r.seq).collect();
    let all: Vec<u64> = s.records.iter().map(|r| r.seq).collect();
    assert_eq!(window, all, "window");
}

/// Time travel to a version inside the raced range goes through the same
/// race and must not stop short either.
#[tokio::test]
async fn time_travel_overtaken_by_truncation_misses_nothing() {
    for reset_to_earliest in [false, true] {
        overtaken_time_travel(reset_to_earliest).await;
    }
}

async fn overtaken_time_travel(reset_to_earliest: bool) {
    let s = setup(reset_to_earliest).await;
    let target = &s.records[7];
    let expected = replay(&s.records[..8]);
    let sources = Sources {
        log: &s.log,
        store: &s.store,
        topics: &s.topics,
        window: WindowPolicy::default(),
    };
    // Ask for a version between two of DOC's seqs: the last one at or before.
    let state: DocState = load(sources, DOC, None, Some(target.seq + 1))
        .await
        .unwrap();
    assert_eq!(s.log.raced.load(Ordering::SeqCst), 1, "the race was forced");
    assert_eq!(
        (state.version, state.text.to_string()),
        (expected.version, expected.text.to_string()),
        "time travel returned an older version (reset to earliest: {reset_to_earliest})"
    );
}
