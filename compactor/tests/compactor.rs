//! The compactor role, run for real (`compactor::run`) over an
//! `EmbeddedLog` and an `EmbeddedStore` (issue items 5 and 10):
//!
//! - history is archived before the position covering it is committed, and
//!   everything below the committed position is in the store;
//! - truncation never passes the transformer's committed offset on
//!   `quire.ops` nor the compactor's own position on `quire.applied`, keeps
//!   `retain_records` (at least one) on both, and a short tail of presence;
//! - a document gets a snapshot after every `snapshot_every` of its ops even
//!   when it is evicted between its ops, and across restarts.
//!
//! The log and the store are wrapped to check the ordering rules at the
//! moment the compactor acts (not only by looking afterwards): the store
//! checks on every `put_history` that the compactor's committed position
//! does not cover the records yet, the log checks every DeleteRecords
//! against the bounds of that moment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compactor::{CompactorConfig, CompactorError, Metrics};
use document::{Topics, WindowPolicy, COMPACTOR_GROUP, TRANSFORMER_GROUP};
use oplog::{partition_for, EmbeddedLog, EmbeddedLogConfig, Offset, OpLog, Partition};
use protocol::{AppliedRecord, ErrorCode, OutRecord, RejectedRecord};
use store::{Call, EmbeddedStore, Intercept, Intercepted, Store};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the compactor keeps of each presence partition (ARCHITECTURE.md).
const PRESENCE_TAIL: u64 = 1000;

type Violations = Arc<Mutex<Vec<String>>>;
/// `(doc, seq)` -> where the test produced that applied record.
type Offsets = Arc<Mutex<HashMap<(String, u64), (Partition, Offset)>>>;

/// Every DeleteRecords on the log is checked against the bounds of the
/// moment it is made (committed positions and high watermarks only grow,
/// so bounds read here are never tighter than the ones the compactor read).
struct DeleteChecks {
    log: EmbeddedLog,
    topics: Topics,
    /// `retain_records` of the compactor currently running.
    keep: AtomicU64,
    violations: Violations,
    /// Every DeleteRecords: (topic, partition, before).
    deletes: Mutex<Vec<(String, Partition, Offset)>>,
}

#[async_trait::async_trait]
impl oplog::Intercept for DeleteChecks {
    async fn before(&self, call: oplog::Call<'_>) -> oplog::Result<()> {
        let oplog::Call::DeleteRecords {
            topic,
            partition,
            before,
        } = call
        else {
            return Ok(());
        };
        let t = &self.topics;
        let hw = self.log.high_watermark(topic, partition).await?;
        let keep = self.keep.load(Ordering::SeqCst).max(1);
        let committed = |group: &'static str| {
            let inner = &self.log;
            async move {
                inner
                    .committed(group, topic, partition)
                    .await
                    .unwrap()
                    .unwrap_or(0)
            }
        };
        let problem = if topic == t.ops {
            let transformed = committed(TRANSFORMER_GROUP).await;
            (before > transformed || before > hw.saturating_sub(keep)).then(|| {
                format!("transformer committed {transformed}, high watermark {hw}, keep {keep}")
            })
        } else if topic == t.applied {
            let compacted = committed(COMPACTOR_GROUP).await;
            (before > compacted || before > hw.saturating_sub(keep)).then(|| {
                format!("compactor committed {compacted}, high watermark {hw}, keep {keep}")
            })
        } else if topic == t.presence {
            (before > hw.saturating_sub(PRESENCE_TAIL))
                .then(|| format!("high watermark {hw}, tail {PRESENCE_TAIL}"))
        } else {
            Some("unknown topic".into())
        };
        if let Some(p) = problem {
            self.violations.lock().unwrap().push(format!(
                "DeleteRecords {topic}/{partition} before {before}: {p}"
            ));
        }
        self.deletes
            .lock()
            .unwrap()
            .push((topic.to_owned(), partition, before));
        Ok(())
    }
}

/// Checks on the embedded store: every `put_history` checks that the
/// compactor has not yet committed a position covering the records
/// (history first), and can be held at a gate to stop the compactor
/// mid-batch.
struct Checks {
    log: EmbeddedLog,
    applied: String,
    offsets: Offsets,
    violations: Violations,
    /// When armed, the next `put_history` signals `entered` and waits for
    /// `open`.
    armed: AtomicBool,
    entered: Notify,
    open: Notify,
    /// `put_history` calls so far.
    writes: AtomicU64,
}

#[async_trait::async_trait]
impl Intercept for Checks {
    async fn before(&self, call: Call<'_>) -> store::Result<()> {
        let Call::PutHistory(records) = call else {
            return Ok(());
        };
        self.writes.fetch_add(1, Ordering::SeqCst);
        for r in records {
            let at = self
                .offsets
                .lock()
                .unwrap()
                .get(&(r.doc.clone(), r.seq))
                .copied();
            let Some((p, offset)) = at else {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("archived {}@{}, never produced", r.doc, r.seq));
                continue;
            };
            let committed = self
                .log
                .committed(COMPACTOR_GROUP, &self.applied, p)
                .await
                .unwrap()
                .unwrap_or(0);
            if offset < committed {
                self.violations.lock().unwrap().push(format!(
                    "{}@{} (offset {offset}) archived after position {committed} was committed",
                    r.doc, r.seq
                ));
            }
        }
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.open.notified().await;
        }
        Ok(())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    topics: Topics,
    parts: u32,
    raw: EmbeddedLog,
    log: Arc<oplog::Intercepted<DeleteChecks>>,
    store: Arc<Intercepted<Checks>>,
    violations: Violations,
    /// Per document: (version, last cseq).
    docs: HashMap<String, (u64, u64)>,
    seq: u64,
    /// Every applied record produced, in order.
    applied: Vec<AppliedRecord>,
}

struct Running {
    token: CancellationToken,
    task: JoinHandle<Result<(), CompactorError>>,
}

impl Running {
    fn check_alive(&self) {
        assert!(!self.task.is_finished(), "the compactor stopped early");
    }

    async fn stop(self) {
        self.token.cancel();
        self.task
            .await
            .expect("compactor task")
            .expect("compactor ran without error");
    }
}

/// Polls until `what` holds; panics after 20 s.
struct Deadline(Instant, &'static str);

impl Deadline {
    fn new(what: &'static str) -> Deadline {
        Deadline(Instant::now() + Duration::from_secs(20), what)
    }

    async fn tick(&self) {
        assert!(Instant::now() < self.0, "timed out waiting: {}", self.1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Harness {
    fn new(parts: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::default();
        let raw = EmbeddedLog::open(EmbeddedLogConfig::new(
            dir.path().join("log"),
            vec![
                (topics.ops.clone(), parts),
                (topics.applied.clone(), parts),
                (topics.presence.clone(), parts),
            ],
        ))
        .unwrap();
        let violations: Violations = Arc::default();
        let log = Arc::new(oplog::Intercepted {
            inner: Arc::new(raw.clone()),
            hook: DeleteChecks {
                log: raw.clone(),
                topics: topics.clone(),
                keep: AtomicU64::new(0),
                violations: violations.clone(),
                deletes: Mutex::default(),
            },
        });
        let store = Arc::new(Intercepted {
            inner: Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap()),
            hook: Checks {
                log: raw.clone(),
                applied: topics.applied.clone(),
                offsets: Arc::default(),
                violations: violations.clone(),
                armed: AtomicBool::new(false),
                entered: Notify::new(),
                open: Notify::new(),
                writes: AtomicU64::new(0),
            },
        });
        Harness {
            _dir: dir,
            topics,
            parts,
            raw,
            log,
            store,
            violations,
            docs: HashMap::new(),
            seq: 0,
            applied: Vec::new(),
        }
    }

    fn config(&self) -> CompactorConfig {
        CompactorConfig {
            topics: self.topics.clone(),
            window: WindowPolicy::default(),
            snapshot_every: 1000,
            retain_records: 10,
            truncate_every: Duration::from_millis(20),
            archive_every: Duration::from_millis(20),
            max_docs: 1024,
            joined: None,
        }
    }

    fn start(&self, config: CompactorConfig) -> Running {
        self.log
            .hook
            .keep
            .store(config.retain_records, Ordering::SeqCst);
        let token = CancellationToken::new();
        let task = tokio::spawn(compactor::run(
            config,
            self.log.clone(),
            self.store.clone(),
            Metrics::new(&prometheus::Registry::new()),
            token.clone(),
        ));
        Running { token, task }
    }

    fn partition(&self, doc: &str) -> Partition {
        partition_for(doc, self.parts)
    }

    /// The next applied record of `doc` (an insert of "x" at 0, so its text
    /// after k ops is k x's).
    fn applied_op(&mut self, doc: &str) -> OutRecord {
        self.seq += 1;
        let (version, cseq) = self.docs.entry(doc.to_owned()).or_default();
        let mut r = store::conformance::record(doc, self.seq, &format!("{doc}-c"), *cseq + 1);
        r.prev = *version;
        r.base = *version;
        *version = r.seq;
        *cseq += 1;
        self.applied.push(r.clone());
        OutRecord::Applied(r)
    }

    fn rejection(&mut self, doc: &str) -> OutRecord {
        self.seq += 1;
        OutRecord::Rejected(RejectedRecord {
            v: 1,
            doc: doc.into(),
            seq: self.seq,
            client: format!("{doc}-c"),
            cseq: 999,
            code: ErrorCode::StaleBase,
            message: "stale".into(),
        })
    }

    /// Produces to `quire.applied`, telling the store where each record
    /// lands before the compactor can see it (only this test produces).
    async fn produce(&self, records: Vec<OutRecord>) {
        let mut next: HashMap<Partition, Offset> = HashMap::new();
        for p in 0..self.parts {
            let hw = self.raw.high_watermark(&self.topics.applied, p).await;
            next.insert(p, hw.unwrap());
        }
        let mut expected = Vec::new();
        for r in &records {
            let p = self.partition(r.doc());
            let o = next.get_mut(&p).unwrap();
            expected.push((p, *o));
            if let OutRecord::Applied(a) = r {
                self.store
                    .hook
                    .offsets
                    .lock()
                    .unwrap()
                    .insert((a.doc.clone(), a.seq), (p, *o));
            }
            *o += 1;
        }
        let got = self
            .raw
            .produce(
                &self.topics.applied,
                records
                    .iter()
                    .map(|r| (r.doc().to_owned(), r.encode()))
                    .collect(),
            )
            .await
            .unwrap();
        assert_eq!(got, expected, "offsets as predicted");
    }

    async fn committed(&self, p: Partition) -> Offset {
        self.raw
            .committed(COMPACTOR_GROUP, &self.topics.applied, p)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    /// Waits until the compactor has committed every applied record.
    async fn caught_up(&self, running: &Running) {
        let d = Deadline::new("the compactor commits everything");
        for p in 0..self.parts {
            let hw = self
                .raw
                .high_watermark(&self.topics.applied, p)
                .await
                .unwrap();
            while self.committed(p).await < hw {
                running.check_alive();
                self.assert_no_violations();
                d.tick().await;
            }
        }
    }

    async fn log_start(&self, topic: &str) -> Offset {
        self.raw.log_start(topic, 0).await.unwrap()
    }

    /// Waits until `topic`'s partition 0 starts at `want`.
    async fn starts_at(&self, topic: &str, want: Offset, running: &Running, what: &'static str) {
        let d = Deadline::new(what);
        while self.log_start(topic).await != want {
            running.check_alive();
            self.assert_no_violations();
            d.tick().await;
        }
    }

    fn assert_no_violations(&self) {
        let v = self.violations.lock().unwrap();
        assert!(v.is_empty(), "{} violations:\n{}", v.len(), v.join("\n"));
    }

    /// Every applied record below each partition's committed position is
    /// in the store, exactly as produced.
    async fn committed_is_archived(&self) {
        let offsets = self.store.hook.offsets.lock().unwrap().clone();
        let mut committed = HashMap::new();
        for p in 0..self.parts {
            committed.insert(p, self.committed(p).await);
        }
        for a in &self.applied {
            let (p, o) = offsets[&(a.doc.clone(), a.seq)];
            if o < committed[&p] {
                let got = self.store.history(&a.doc, a.prev, 1).await.unwrap();
                assert_eq!(
                    got.first(),
                    Some(a),
                    "{}@{} is below the committed position {} of partition {p} but not archived",
                    a.doc,
                    a.seq,
                    committed[&p]
                );
            }
        }
    }
}

/// History is written before the position covering it is committed; at any
/// moment everything below the committed position is in the store; at the
/// end the archive is exactly the applied records (rejections skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_archived_before_its_position_is_committed() {
    let mut h = Harness::new(2);
    let docs = ["h-a", "h-b", "h-c", "h-d", "h-e"];
    let parts: Vec<_> = docs.iter().map(|d| h.partition(d)).collect();
    assert!(
        parts.contains(&0) && parts.contains(&1),
        "documents on both partitions"
    );
    let running = h.start(h.config());
    for round in 0..30u64 {
        let mut batch = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            for _ in 0..(round + i as u64) % 4 {
                batch.push(h.applied_op(d));
            }
            if (round + i as u64).is_multiple_of(5) {
                batch.push(h.rejection(d));
            }
        }
        h.produce(batch).await;
        // While the compactor works: whatever it has committed is archived.
        h.committed_is_archived().await;
        if round.is_multiple_of(3) {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    h.caught_up(&running).await;
    h.committed_is_archived().await;
    for d in docs {
        let mine: Vec<_> = h.applied.iter().filter(|a| a.doc == d).cloned().collect();
        assert!(mine.len() > 10);
        assert_eq!(
            h.store.history(d, 0, 10_000).await.unwrap(),
            mine,
            "{d}: the archive holds exactly its applied records"
        );
    }
    running.stop().await;
    h.assert_no_violations();
}

/// Records trickling in at the tail share archive writes: one store write
/// (and one position commit) per `archive_every`, not one per record. The
/// compactor is off the ack path; every store write is a durable commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_at_the_tail_share_archive_writes() {
    let mut h = Harness::new(1);
    let mut config = h.config();
    config.archive_every = Duration::from_millis(400);
    let running = h.start(config);
    let started = Instant::now();
    for _ in 0..40 {
        let op = h.applied_op("trickle");
        h.produce(vec![op]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let produced_in = started.elapsed();
    h.caught_up(&running).await;
    running.stop().await;
    h.assert_no_violations();
    let writes = h.store.hook.writes.load(Ordering::SeqCst);
    // One write per started 400 ms of producing, plus the first record's.
    let bound = 2 + produced_in.as_millis() as u64 / 400;
    assert!(
        writes <= bound,
        "{writes} archive writes for 40 records produced over {produced_in:?} (at most {bound})"
    );
    assert_eq!(
        h.store.history("trickle", 0, 100).await.unwrap(),
        h.applied,
        "every record archived once the compactor caught up"
    );
}

/// DeleteRecords bounds: `quire.ops` never past the transformer's committed
/// offset, `quire.applied` never past the compactor's own position, each
/// keeping `retain_records` (and at least one), presence a short tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_never_passes_what_readers_need() {
    let mut h = Harness::new(1);
    let (ops, applied, presence) = (
        h.topics.ops.clone(),
        h.topics.applied.clone(),
        h.topics.presence.clone(),
    );
    // quire.ops: 100 raw records, the transformer has committed 40 of them.
    let raw: Vec<_> = (0..100)
        .map(|i| ("t-a".to_owned(), format!("{{\"raw\":{i}}}").into_bytes()))
        .collect();
    h.raw.produce(&ops, raw).await.unwrap();
    h.raw.commit(TRANSFORMER_GROUP, &ops, 0, 40).await.unwrap();
    // quire.presence: 1500 records.
    let pres: Vec<_> = (0..1500)
        .map(|i| ("t-a".to_owned(), format!("{{\"p\":{i}}}").into_bytes()))
        .collect();
    h.raw.produce(&presence, pres).await.unwrap();
    // quire.applied: 60 records the compactor will take in one batch and be
    // held on while 200 more arrive.
    let first: Vec<_> = (0..60)
        .map(|i| {
            if i % 7 == 3 {
                h.rejection("t-a")
            } else {
                h.applied_op("t-a")
            }
        })
        .collect();
    h.produce(first).await;
    h.store.hook.armed.store(true, Ordering::SeqCst);
    let mut config = h.config();
    config.retain_records = 10;
    let running = h.start(config.clone());
    tokio::time::timeout(Duration::from_secs(20), h.store.hook.entered.notified())
        .await
        .expect("the compactor archives its first batch");
    let more: Vec<_> = (0..200).map(|_| h.applied_op("t-b")).collect();
    h.produce(more).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.store.hook.open.notify_one();

    h.caught_up(&running).await;
    h.starts_at(&applied, 250, &running, "applied truncated to keep 10")
        .await;
    h.starts_at(
        &ops,
        40,
        &running,
        "ops truncated to the transformer's offset",
    )
    .await;
    h.starts_at(&presence, 500, &running, "presence keeps its tail")
        .await;
    {
        // The first truncation of quire.applied came right after the held
        // batch: its bound was the compactor's position (60), not the
        // retention (250).
        let deletes = h.log.hook.deletes.lock().unwrap();
        let first_applied = deletes.iter().find(|(t, _, _)| *t == applied);
        assert_eq!(
            first_applied.map(|d| d.2),
            Some(60),
            "the first DeleteRecords on applied stops at the compactor's position: {deletes:?}"
        );
    }
    // It stays there: no more records, nothing more to delete.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.log_start(&ops).await, 40);
    assert_eq!(h.log_start(&applied).await, 250);

    // The transformer moves on: ops now keeps its retention instead.
    h.raw.commit(TRANSFORMER_GROUP, &ops, 0, 95).await.unwrap();
    h.starts_at(&ops, 90, &running, "ops truncated to keep 10")
        .await;
    h.raw.commit(TRANSFORMER_GROUP, &ops, 0, 100).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.log_start(&ops).await, 90, "ops keeps 10 records");
    running.stop().await;

    // Restarted with no retention at all: each topic still keeps a record.
    config.retain_records = 0;
    let running = h.start(config);
    h.starts_at(&ops, 99, &running, "ops keeps one record")
        .await;
    h.starts_at(&applied, 259, &running, "applied keeps one record")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.log_start(&ops).await, 99);
    assert_eq!(h.log_start(&applied).await, 259);
    assert_eq!(h.log_start(&presence).await, 500);
    running.stop().await;
    h.committed_is_archived().await;
    h.assert_no_violations();
}

/// The seq of each of `doc`'s applied records, in order.
fn seqs_of(h: &Harness, doc: &str) -> Vec<u64> {
    h.applied
        .iter()
        .filter(|a| a.doc == doc)
        .map(|a| a.seq)
        .collect()
}

/// After a document's j-th op (1-based), its latest snapshot is exactly at
/// its (every·⌊j/every⌋)-th op: one after every `every` of its ops, never
/// late, never in between.
async fn assert_snapshot_schedule(h: &Harness, doc: &str, every: u64) {
    let seqs = seqs_of(h, doc);
    for (i, seq) in seqs.iter().enumerate() {
        let j = i as u64 + 1;
        let k = j / every * every;
        let want = (k > 0).then(|| (seqs[k as usize - 1], "x".repeat(k as usize)));
        let got = h
            .store
            .snapshot_at_or_before(doc, *seq)
            .await
            .unwrap()
            .map(|s| (s.seq, s.text));
        assert_eq!(
            got, want,
            "{doc}: latest snapshot at or before its op {j} (seq {seq}), snapshot every {every}"
        );
    }
}

/// With room for one document and several interleaved, every document is
/// evicted between any two of its ops; each still gets its snapshot after
/// every `snapshot_every` of its ops (issue item 5: the count used to live
/// in the cache and restart at zero on every reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_every_n_ops_despite_eviction() {
    let mut h = Harness::new(1);
    let every = 3;
    let mut config = h.config();
    config.max_docs = 1;
    config.snapshot_every = every;
    let running = h.start(config);
    let docs = ["s-a", "s-b", "s-c"];
    // One op at a time, each compacted before the next: every op of a
    // document finds it evicted by the others.
    for _ in 0..10 {
        for d in docs {
            let op = h.applied_op(d);
            h.produce(vec![op]).await;
            h.caught_up(&running).await;
        }
    }
    for d in docs {
        assert_snapshot_schedule(&h, d, every).await;
    }
    running.stop().await;
    h.assert_no_violations();
}

/// The same in one go: many documents' ops interleaved in one batch. However
/// the compactor reads them, once it has caught up no document has
/// `snapshot_every` or more ops after its latest snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_document_left_unsnapshotted_for_n_ops_in_a_batch() {
    let mut h = Harness::new(1);
    let every = 4;
    let mut config = h.config();
    config.max_docs = 1;
    config.snapshot_every = every;
    let docs = ["b-a", "b-b", "b-c", "b-d"];
    let mut batch = Vec::new();
    for i in 0..11 {
        for (k, d) in docs.iter().enumerate() {
            if (i + k) % 5 != 0 {
                batch.push(h.applied_op(d));
            }
        }
    }
    h.produce(batch).await;
    let running = h.start(config);
    h.caught_up(&running).await;
    for d in docs {
        let seqs = seqs_of(&h, d);
        let latest = h
            .store
            .snapshot_at_or_before(d, u64::MAX)
            .await
            .unwrap()
            .map_or(0, |s| s.seq);
        let after = seqs.iter().filter(|s| **s > latest).count() as u64;
        assert!(
            after < every,
            "{d}: {after} of its {} ops after its latest snapshot ({latest}), snapshot every {every}",
            seqs.len()
        );
    }
    running.stop().await;
    h.assert_no_violations();
}

/// Restarts of the compactor (a new process: empty cache) between a
/// document's ops never postpone its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_every_n_ops_across_restarts() {
    let mut h = Harness::new(1);
    let every = 3;
    let mut config = h.config();
    config.snapshot_every = every;
    let docs = ["r-a", "r-b"];
    let mut running = h.start(config.clone());
    for i in 0..10u64 {
        for d in docs {
            let op = h.applied_op(d);
            h.produce(vec![op]).await;
            h.caught_up(&running).await;
        }
        // Restart at every residue of the count.
        if i.is_multiple_of(2) {
            running.stop().await;
            running = h.start(config.clone());
        }
    }
    for d in docs {
        assert_snapshot_schedule(&h, d, every).await;
    }
    running.stop().await;
    h.assert_no_violations();
}
