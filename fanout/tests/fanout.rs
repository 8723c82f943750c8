//! The fanout role, run for real (`Fanout::run`) over an `EmbeddedLog` and an
//! `EmbeddedStore`, with this test producing the transformer's output to
//! `quire.applied` (issue item 10):
//!
//! - joins: snapshot + ready, catch-up from `since` + ready, the live stream
//!   after `ready` exactly once and in order, rejections to the submitter only;
//! - the duplicate checks through window, dedup table and archive index;
//! - a consumer that falls behind truncation cuts its subscribers off, and a
//!   re-join with `since` resumes with no gap and no duplicate;
//! - cold loads racing the consumer never leave a gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use document::{Topics, WindowPolicy, COMPACTOR_GROUP};
use fanout::{Fanout, FanoutConfig, FanoutError, Frame, Joined, Metrics, Waited};
use oplog::{EmbeddedLog, EmbeddedLogConfig, Offset, OpLog};
use ot::Op;
use protocol::{decode_out_record, AppliedRecord, ErrorCode, OutRecord, RejectedRecord, ServerMsg};
use store::{Call, EmbeddedStore, Intercept, Intercepted, Store};
use testkit::SplitMix64;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

/// Applied records of one document with real ops, and its text.
struct Writer {
    doc: String,
    text: String,
    version: u64,
    cseqs: HashMap<String, u64>,
    rng: SplitMix64,
}

impl Writer {
    fn new(doc: &str, seed: u64) -> Writer {
        Writer {
            doc: doc.into(),
            text: String::new(),
            version: 0,
            cseqs: HashMap::new(),
            rng: SplitMix64::new(seed),
        }
    }

    /// The next op of `client` (of `user`), applied at `seq`, with the
    /// client's next cseq (or `cseq` when given).
    fn op_as(&mut self, seq: u64, client: &str, user: &str, cseq: Option<u64>) -> AppliedRecord {
        let len = self.text.chars().count();
        let pos = self.rng.below(len as u64 + 1) as usize;
        let op = if len > 3 && self.rng.chance(1, 3) {
            Op::splice(pos.min(len - 2), 2, "")
        } else {
            Op::splice(
                pos,
                0,
                self.rng.pick::<&str>(&["a", "bc", "é", "😀", "xyz"]),
            )
        };
        self.apply_as(seq, (client, user), cseq, op)
    }

    /// `op` of `client` (of `user`) applied at `seq`, with the client's
    /// next cseq (or `cseq` when given).
    fn apply_as(
        &mut self,
        seq: u64,
        (client, user): (&str, &str),
        cseq: Option<u64>,
        op: Op,
    ) -> AppliedRecord {
        let (text, del) = ot::apply_with_deleted(&self.text, &op).unwrap();
        let last = self.cseqs.entry(client.to_owned()).or_default();
        *last = cseq.unwrap_or(*last + 1);
        let r = AppliedRecord {
            v: 1,
            doc: self.doc.clone(),
            seq,
            prev: self.version,
            client: client.into(),
            cseq: *last,
            base: self.version,
            user: user.into(),
            ts: protocol::now_ms(),
            op,
            del,
            hash: None,
        };
        self.text = text;
        self.version = seq;
        r
    }
}

/// A log, a store and the writers of a few documents; seqs are handed out
/// in increasing order as the transformer would.
struct Env {
    _dir: tempfile::TempDir,
    topics: Topics,
    log: Arc<EmbeddedLog>,
    store: Arc<EmbeddedStore>,
    seq: u64,
    writers: HashMap<String, Writer>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::default();
        let log = EmbeddedLog::open(EmbeddedLogConfig::new(
            dir.path().join("log"),
            vec![
                (topics.ops.clone(), 1),
                (topics.applied.clone(), 1),
                (topics.presence.clone(), 1),
            ],
        ))
        .unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store")).unwrap();
        Env {
            _dir: dir,
            topics,
            log: Arc::new(log),
            store: Arc::new(store),
            seq: 0,
            writers: HashMap::new(),
        }
    }

    async fn fanout(&self, window: WindowPolicy, queue: usize, max_idle_docs: usize) -> Fanout {
        self.fanout_on(self.store.clone(), window, queue, max_idle_docs)
            .await
    }

    async fn fanout_on(
        &self,
        store: Arc<dyn Store>,
        window: WindowPolicy,
        queue: usize,
        max_idle_docs: usize,
    ) -> Fanout {
        Fanout::new(
            FanoutConfig {
                topics: self.topics.clone(),
                window,
                subscriber_queue: queue,
                max_idle_docs,
                text_share: None,
            },
            self.log.clone(),
            store,
            Metrics::new(&prometheus::Registry::new()),
        )
        .await
        .unwrap()
    }

    fn writer(&mut self, doc: &str) -> &mut Writer {
        let seed = self.writers.len() as u64 + 7;
        self.writers
            .entry(doc.to_owned())
            .or_insert_with(|| Writer::new(doc, seed))
    }

    fn op(&mut self, doc: &str) -> AppliedRecord {
        self.op_as(doc, "w", "uw", None)
    }

    fn op_as(&mut self, doc: &str, client: &str, user: &str, cseq: Option<u64>) -> AppliedRecord {
        self.seq += 1 + self.seq % 3; // not contiguous, as in a shared partition
        let seq = self.seq;
        self.writer(doc).op_as(seq, client, user, cseq)
    }

    fn rejection(&mut self, doc: &str, client: &str, cseq: u64) -> RejectedRecord {
        self.seq += 1;
        RejectedRecord {
            v: 1,
            doc: doc.into(),
            seq: self.seq,
            client: client.into(),
            cseq,
            code: ErrorCode::StaleBase,
            message: "base too old".into(),
        }
    }

    async fn produce(&self, records: Vec<OutRecord>) {
        let recs = records
            .iter()
            .map(|r| (r.doc().to_owned(), r.encode()))
            .collect();
        self.log.produce(&self.topics.applied, recs).await.unwrap();
    }

    async fn produce_ops(&mut self, doc: &str, n: usize) -> Vec<AppliedRecord> {
        let ops: Vec<_> = (0..n).map(|_| self.op(doc)).collect();
        self.produce(ops.iter().cloned().map(OutRecord::Applied).collect())
            .await;
        ops
    }

    /// What the compactor does: archive the applied records below `to`,
    /// commit `to`, truncate below `truncate`.
    async fn compact(&self, to: Offset, truncate: Offset) {
        compact(&self.log, &self.store, &self.topics, to, truncate).await;
    }
}

async fn compact(
    log: &EmbeddedLog,
    store: &EmbeddedStore,
    topics: &Topics,
    to: Offset,
    truncate: Offset,
) {
    let topic = &topics.applied;
    let mut pos = log
        .committed(COMPACTOR_GROUP, topic, 0)
        .await
        .unwrap()
        .unwrap_or(0);
    while pos < to {
        let batch = log
            .fetch(topic, 0, pos, (to - pos) as usize, Duration::ZERO)
            .await
            .unwrap();
        let applied: Vec<_> = batch
            .iter()
            .filter_map(|r| match decode_out_record(&r.value).unwrap() {
                OutRecord::Applied(a) => Some(a),
                OutRecord::Rejected(_) => None,
            })
            .collect();
        store.put_history(&applied).await.unwrap();
        pos = batch.last().unwrap().offset + 1;
    }
    log.commit(COMPACTOR_GROUP, topic, 0, to).await.unwrap();
    log.delete_records(topic, 0, truncate).await.unwrap();
}

/// The latency of a remote database on the reads a load makes, so that
/// records keep arriving while a document loads.
struct Slow(Duration);

#[async_trait::async_trait]
impl Intercept for Slow {
    async fn before(&self, call: Call<'_>) -> store::Result<()> {
        if matches!(call, Call::History { .. } | Call::SnapshotAtOrBefore { .. }) {
            tokio::time::sleep(self.0).await;
        }
        Ok(())
    }
}

/// The environment's store, slowed down.
fn slow_store(inner: &Arc<EmbeddedStore>, delay: Duration) -> Arc<dyn Store> {
    Arc::new(Intercepted {
        inner: inner.clone(),
        hook: Slow(delay),
    })
}

fn start(f: &Fanout) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let (f, t) = (f.clone(), token.clone());
    let task = tokio::spawn(async move { f.run(t).await.expect("fanout runs") });
    (token, task)
}

fn parse(f: &Frame) -> ServerMsg {
    serde_json::from_str(f).unwrap_or_else(|e| panic!("frame {f}: {e}"))
}

/// A client's copy of a document, following what fanout sends it; panics on
/// any gap, duplicate or reordering.
#[derive(Debug, Clone, Default)]
struct Follower {
    version: u64,
    text: String,
    ready: bool,
    applied: Vec<u64>,
    errors: Vec<(ErrorCode, String, u64)>,
}

impl Follower {
    fn take(&mut self, msg: ServerMsg, what: &str) {
        match msg {
            ServerMsg::Snapshot { seq, text } => {
                assert!(!self.ready, "{what}: snapshot after ready");
                assert!(
                    seq >= self.version,
                    "{what}: snapshot {seq} goes back from {}",
                    self.version
                );
                self.version = seq;
                self.text = text;
            }
            ServerMsg::Applied { seq, prev, op, .. } => {
                assert_eq!(
                    prev, self.version,
                    "{what}: applied {seq} follows {prev} but the client is at {} (gap or duplicate)",
                    self.version
                );
                self.text = ot::apply(&self.text, &op)
                    .unwrap_or_else(|e| panic!("{what}: applied {seq} does not fit: {e}"));
                self.version = seq;
                self.applied.push(seq);
            }
            ServerMsg::Ready { seq } => {
                assert!(!self.ready, "{what}: second ready");
                assert_eq!(
                    seq, self.version,
                    "{what}: ready at {seq}, client at {}",
                    self.version
                );
                self.ready = true;
            }
            ServerMsg::Error {
                code, client, cseq, ..
            } => {
                assert!(self.ready, "{what}: error before ready");
                self.errors
                    .push((code, client.unwrap_or_default(), cseq.unwrap_or(0)));
            }
            other => panic!("{what}: unexpected {other:?}"),
        }
    }

    /// Takes a join's catch-up frames; a re-join keeps the text it had.
    fn join(&mut self, j: &Joined, what: &str) {
        self.ready = false;
        for f in &j.catchup {
            self.take(parse(f), what);
        }
        assert!(self.ready, "{what}: the catch-up ends with ready");
    }

    /// Takes live frames until the copy is at `version`.
    async fn follow_to(&mut self, j: &mut Joined, version: u64, what: &str) {
        while self.version < version {
            let f = tokio::time::timeout(T, j.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{what}: stuck at {} waiting for {version}", self.version)
                })
                .unwrap_or_else(|| {
                    panic!("{what}: cut off at {} waiting for {version}", self.version)
                });
            self.take(parse(&f), what);
        }
        assert_eq!(self.version, version, "{what}: went past {version}");
    }
}

/// Nothing more arrives for a while.
async fn quiet(j: &mut Joined, what: &str) {
    tokio::time::sleep(Duration::from_millis(150)).await;
    match j.rx.try_recv() {
        Err(TryRecvError::Empty) => {}
        other => panic!("{what}: unexpected frame {other:?}"),
    }
}

fn catchup_msgs(j: &Joined) -> Vec<ServerMsg> {
    j.catchup.iter().map(parse).collect()
}

/// Join without `since`: snapshot + ready. Join with `since` in the window:
/// exactly the applied ops after it + ready. After ready every op arrives
/// once, in order; a rejection reaches only its submitter's subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_live_stream_and_rejections() {
    let mut env = Env::new();
    let early = env.produce_ops("j", 6).await;
    env.produce_ops("j-other", 3).await;
    let fanout = env.fanout(WindowPolicy::default(), 1024, 16).await;
    let (token, task) = start(&fanout);
    let v6 = early[5].seq;
    let text6 = env.writers["j"].text.clone();

    let mut fresh = fanout.join("j", "c1", None).await.unwrap();
    assert_eq!(
        catchup_msgs(&fresh),
        [
            ServerMsg::Snapshot {
                seq: v6,
                text: text6.clone()
            },
            ServerMsg::Ready { seq: v6 }
        ]
    );
    assert_eq!(fresh.version, v6);
    let since = early[1].seq;
    let mut back = fanout.join("j", "c2", Some(since)).await.unwrap();
    let want: Vec<ServerMsg> = early[2..]
        .iter()
        .map(ServerMsg::applied)
        .chain([ServerMsg::Ready { seq: v6 }])
        .collect();
    assert_eq!(catchup_msgs(&back), want, "catch-up from {since}");
    // A client that is up to date gets ready only.
    let mut current = fanout.join("j", "c3", Some(v6)).await.unwrap();
    assert_eq!(catchup_msgs(&current), [ServerMsg::Ready { seq: v6 }]);

    let mut f_fresh = Follower::default();
    f_fresh.join(&fresh, "fresh");
    let mut f_back = Follower {
        version: since,
        text: ot::apply("", &early[0].op)
            .and_then(|t| ot::apply(&t, &early[1].op))
            .unwrap(),
        ..Follower::default()
    };
    f_back.join(&back, "back");
    assert_eq!(f_back.text, text6);
    let mut f_current = Follower {
        version: v6,
        text: text6.clone(),
        ..Follower::default()
    };
    f_current.join(&current, "current");

    // Live: ops interleaved with another document's, and rejections for c2
    // and for a client nobody subscribed with.
    let mut live = Vec::new();
    for i in 0..20 {
        live.push(OutRecord::Applied(env.op("j")));
        if i % 3 == 0 {
            live.push(OutRecord::Applied(env.op("j-other")));
        }
        if i == 7 {
            live.push(OutRecord::Rejected(env.rejection("j", "c2", 9)));
            live.push(OutRecord::Rejected(env.rejection("j", "nobody", 1)));
        }
    }
    // In a few batches, so the consumer sees several.
    for chunk in live.chunks(7) {
        env.produce(chunk.to_vec()).await;
    }
    let end = env.writers["j"].version;
    let seqs: Vec<u64> = live
        .iter()
        .filter_map(|r| match r {
            OutRecord::Applied(a) if a.doc == "j" => Some(a.seq),
            _ => None,
        })
        .collect();
    for (f, j, what) in [
        (&mut f_fresh, &mut fresh, "fresh"),
        (&mut f_back, &mut back, "back"),
        (&mut f_current, &mut current, "current"),
    ] {
        f.follow_to(j, end, what).await;
        quiet(j, what).await;
        assert_eq!(f.text, env.writers["j"].text, "{what}: text");
        let live_seen: Vec<u64> = f.applied.iter().copied().filter(|s| *s > v6).collect();
        assert_eq!(live_seen, seqs, "{what}: every live op once, in order");
    }
    assert_eq!(
        f_back.errors,
        [(ErrorCode::StaleBase, "c2".to_owned(), 9)],
        "the rejection reaches its submitter"
    );
    assert!(f_fresh.errors.is_empty(), "c1 got {:?}", f_fresh.errors);
    assert!(f_current.errors.is_empty(), "c3 got {:?}", f_current.errors);
    token.cancel();
    task.await.unwrap();
}

fn code(e: FanoutError) -> ErrorCode {
    e.to_proto().code
}

/// The binding and duplicate checks (`check_op`, `wait_for`): an op in the
/// window, an older op only the archive has (found through the store's op
/// index), an older cseq that was never applied, another user's client id,
/// and a new op, which waits for its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_checks_through_window_and_archive() {
    let mut env = Env::new();
    let doc = "dup";
    let mut recs = vec![env.op_as(doc, "z", "uz", None)];
    for _ in 0..3 {
        recs.push(env.op_as(doc, "a", "ua", None)); // a: cseq 1, 2, 3
    }
    for _ in 0..3 {
        recs.push(env.op_as(doc, "b", "ub", None)); // b: cseq 1, 2, 3
    }
    recs.push(env.op_as(doc, "a", "ua", Some(5))); // a skips cseq 4
    recs.push(env.op_as(doc, "b", "ub", None)); // b: cseq 4
    let (z1, a2, a5) = (recs[0].clone(), recs[2].clone(), recs[7].clone());
    env.produce(recs.iter().cloned().map(OutRecord::Applied).collect())
        .await;
    // The compactor archived them all (the topic keeps them too).
    env.store.put_history(&recs).await.unwrap();
    // A window of two ops: a5 and b4. The dedup table keeps a and b; z's
    // only op left the window, so z is forgotten there.
    let window = WindowPolicy {
        min_ops: 2,
        min_age_ms: 0,
        max_ops: 2,
    };
    let fanout = env.fanout(window, 1024, 16).await;
    let (token, task) = start(&fanout);
    let version = env.writers[doc].version;
    let floor = recs[6].seq;

    // In the window: its seq, its record.
    assert_eq!(
        fanout.check_op(doc, "a", 5, version, "ua").await.unwrap(),
        Some(a5.seq)
    );
    match fanout.wait_for(doc, "a", 5, version, "ua").await.unwrap() {
        Waited::AlreadyApplied(r) => assert_eq!(*r, a5),
        Waited::Pending(_) => panic!("a/5 is applied"),
    }
    // Older than the window, known to the archive only.
    assert_eq!(
        fanout.check_op(doc, "a", 2, a2.base, "ua").await.unwrap(),
        Some(a2.seq),
        "a/2 through the archive"
    );
    match fanout.wait_for(doc, "a", 2, a2.base, "ua").await.unwrap() {
        Waited::AlreadyApplied(r) => assert_eq!(*r, a2, "the archived record"),
        Waited::Pending(_) => panic!("a/2 is applied"),
    }
    // A client the dedup table forgot, resending with a base below the
    // window: the archive knows its op.
    assert!(z1.seq < floor);
    assert_eq!(
        fanout.check_op(doc, "z", 1, 0, "uz").await.unwrap(),
        Some(z1.seq),
        "z/1 through the archive"
    );
    // Below the client's latest cseq and never applied: PROTOCOL.
    let e = fanout
        .check_op(doc, "a", 4, a2.seq, "ua")
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::Protocol);
    let e = fanout
        .wait_for(doc, "a", 4, a2.seq, "ua")
        .await
        .err()
        .unwrap();
    assert_eq!(code(e), ErrorCode::Protocol);
    // Another user's client id: FORBIDDEN, whether the dedup table or only
    // the archive knows the binding.
    let e = fanout
        .check_op(doc, "a", 6, version, "mallory")
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::Forbidden);
    let e = fanout
        .wait_for(doc, "b", 5, version, "mallory")
        .await
        .err()
        .unwrap();
    assert_eq!(code(e), ErrorCode::Forbidden);
    let e = fanout
        .check_op(doc, "z", 1, 0, "mallory")
        .await
        .unwrap_err();
    assert_eq!(
        code(e),
        ErrorCode::Forbidden,
        "z's binding from the archive"
    );
    // New ops: nothing found; a waiter gets the outcome when it comes.
    assert_eq!(
        fanout.check_op(doc, "a", 6, version, "ua").await.unwrap(),
        None
    );
    assert_eq!(
        fanout.check_op(doc, "n", 1, version, "un").await.unwrap(),
        None
    );
    let Waited::Pending(applied_rx) = fanout.wait_for(doc, "a", 6, version, "ua").await.unwrap()
    else {
        panic!("a/6 is new")
    };
    let Waited::Pending(rejected_rx) = fanout.wait_for(doc, "b", 5, version, "ub").await.unwrap()
    else {
        panic!("b/5 is new")
    };
    let a6 = env.op_as(doc, "a", "ua", None);
    let b5 = env.rejection(doc, "b", 5);
    env.produce(vec![
        OutRecord::Rejected(b5.clone()),
        OutRecord::Applied(a6.clone()),
    ])
    .await;
    let got = tokio::time::timeout(T, applied_rx).await.unwrap().unwrap();
    assert_eq!(got, OutRecord::Applied(a6.clone()));
    let got = tokio::time::timeout(T, rejected_rx).await.unwrap().unwrap();
    assert_eq!(got, OutRecord::Rejected(b5));
    // And now a/6 is a duplicate.
    assert_eq!(
        fanout.check_op(doc, "a", 6, version, "ua").await.unwrap(),
        Some(a6.seq)
    );
    token.cancel();
    task.await.unwrap();
}

/// Fanout's consumer falls behind truncation: its subscribers are cut off
/// with OVERLOADED, and a re-join with `since` resumes with no gap and no
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_truncation_cuts_off_and_rejoin_resumes() {
    let mut env = Env::new();
    env.produce_ops("t", 10).await;
    env.produce_ops("t-other", 4).await;
    // Created now: its consumer position is the current end, but it does
    // not run yet.
    let fanout = env.fanout(WindowPolicy::default(), 1024, 16).await;
    let mut first = fanout.join("t", "c1", None).await.unwrap();
    let mut f = Follower::default();
    f.join(&first, "first join");
    assert_eq!(f.version, env.writers["t"].version);

    // The log moves on and is archived and truncated past the fanout's
    // position before its consumer reads anything.
    for _ in 0..5 {
        env.produce_ops("t", 20).await;
        env.produce_ops("t-other", 3).await;
    }
    let hw = env
        .log
        .high_watermark(&env.topics.applied, 0)
        .await
        .unwrap();
    env.compact(hw, hw - 5).await;
    let (token, task) = start(&fanout);

    let kicked = tokio::time::timeout(T, &mut first.kicked)
        .await
        .expect("the subscriber is cut off")
        .expect("told why");
    assert_eq!(kicked, ErrorCode::Overloaded);
    // What it got before the cut (if anything) still follows on.
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(2), first.rx.recv()).await
    {
        f.take(parse(&frame), "before the cut");
    }
    let cut_at = f.version;

    // Re-join with `since`: exactly the missed ops, then live.
    let mut again = fanout.join("t", "c1", Some(cut_at)).await.unwrap();
    let before = f.applied.len();
    f.join(&again, "re-join");
    assert_eq!(f.version, env.writers["t"].version, "caught up to the end");
    assert!(
        f.applied.len() > before,
        "the catch-up carried the missed ops"
    );
    env.produce_ops("t", 15).await;
    env.produce_ops("t-other", 2).await;
    let end = env.writers["t"].version;
    f.follow_to(&mut again, end, "after re-join").await;
    quiet(&mut again, "after re-join").await;
    assert_eq!(f.text, env.writers["t"].text);
    // Every op of the document after the first join, once each.
    let mut all = f.applied.clone();
    all.dedup();
    assert_eq!(all.len(), f.applied.len(), "no duplicate");
    assert_eq!(f.applied.len(), 5 * 20 + 15);
    token.cancel();
    task.await.unwrap();
}

/// Joins of cold documents while their records keep coming (the load runs
/// outside the partition lock while the consumer buffers): every
/// subscription sees a gapless sequence, is never cut off (fanout cuts a
/// document's subscribers off when its copy misses a record), and ends on
/// the document's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_loads_racing_the_consumer_leave_no_gap() {
    let env = Arc::new(Mutex::new(Env::new()));
    let docs = ["cold-a", "cold-b", "cold-c", "cold-d"];
    let (fanout, log, store, topics) = {
        let mut e = env.lock().await;
        for d in docs {
            e.produce_ops(d, 5).await;
        }
        // One idle document in memory: a document nobody follows is
        // evicted as soon as another is loaded. Loads take a few ms of
        // store latency, during which the consumer passes the document's
        // records on (to the load's buffer).
        let slow = slow_store(&e.store, Duration::from_millis(3));
        let f = e.fanout_on(slow, WindowPolicy::default(), 100_000, 1).await;
        (f, e.log.clone(), e.store.clone(), e.topics.clone())
    };
    let (token, task) = start(&fanout);
    let producing = Arc::new(AtomicBool::new(true));
    let joins_while_producing = Arc::new(AtomicUsize::new(0));

    let producer = {
        let (env, producing) = (env.clone(), producing.clone());
        tokio::spawn(async move {
            let mut r = SplitMix64::new(5);
            for round in 0..250 {
                let mut e = env.lock().await;
                let n = 1 + r.below(3) as usize;
                let batch: Vec<_> = (0..n)
                    .map(|_| OutRecord::Applied(e.op(docs[r.below(docs.len() as u64) as usize])))
                    .collect();
                e.produce(batch).await;
                drop(e);
                // Now and then the compactor archives (loads then read the
                // store, then the topic after its position). No truncation:
                // nothing here may cut a subscriber off.
                if round % 40 == 39 {
                    let hw = log.high_watermark(&topics.applied, 0).await.unwrap();
                    compact(&log, &store, &topics, hw, 0).await;
                }
                tokio::time::sleep(Duration::from_millis(r.below(3))).await;
            }
            producing.store(false, Ordering::SeqCst);
        })
    };

    let mut joiners = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let (fanout, producing, joins) = (
            fanout.clone(),
            producing.clone(),
            joins_while_producing.clone(),
        );
        joiners.push(tokio::spawn(async move {
            let mut r = SplitMix64::new(i as u64);
            let mut f = Follower::default();
            let client = format!("j{i}");
            let mut n = 0;
            while producing.load(Ordering::SeqCst) {
                // Half the time from scratch (snapshot), else from `since`.
                let since = if f.version > 0 && r.chance(1, 2) {
                    Some(f.version)
                } else {
                    f = Follower::default();
                    None
                };
                let what = format!("{doc} join {n} since {since:?}");
                let mut j = fanout.join(doc, &client, since).await.unwrap();
                joins.fetch_add(1, Ordering::SeqCst);
                f.join(&j, &what);
                // Follow a little, then leave so the document goes cold.
                let stay = Duration::from_millis(r.below(15));
                let until = tokio::time::Instant::now() + stay;
                loop {
                    match tokio::time::timeout_at(until, j.rx.recv()).await {
                        Ok(Some(frame)) => f.take(parse(&frame), &what),
                        // Fanout cuts a document's subscribers off when its
                        // state stops following the applied stream (a
                        // record missed while loading).
                        Ok(None) => panic!("{what}: cut off with {:?}", j.kicked.try_recv()),
                        Err(_) => break,
                    }
                }
                fanout.leave(doc, j.id).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(r.below(4))).await;
            }
            (f, client)
        }));
    }
    producer.await.unwrap();
    let joined = joins_while_producing.load(Ordering::SeqCst);
    assert!(joined >= 40, "only {joined} joins raced the producer");
    for (i, j) in joiners.into_iter().enumerate() {
        let (mut f, client) = j.await.unwrap();
        let doc = docs[i];
        let (end, text) = {
            let e = env.lock().await;
            (e.writers[doc].version, e.writers[doc].text.clone())
        };
        // The last join, from where the copy is, follows to the end.
        let mut j = fanout.join(doc, &client, Some(f.version)).await.unwrap();
        f.join(&j, "final join");
        f.follow_to(&mut j, end, "final join").await;
        assert_eq!(f.text, text, "{doc}: text");
    }
    println!("joins while producing: {joined}");
    token.cancel();
    task.await.unwrap();
}

/// A request that gives up while its document loads (an HTTP client that
/// hangs up) must not leave the load half-registered: the document stays
/// loadable however many records pass meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_cold_load_leaves_the_document_loadable() {
    let mut env = Env::new();
    env.produce_ops("slow", 3).await;
    let slow = slow_store(&env.store, Duration::from_millis(300));
    let fanout = env
        .fanout_on(slow, WindowPolicy::default(), 100_000, 1)
        .await;
    let (token, task) = start(&fanout);
    let gave_up =
        tokio::time::timeout(Duration::from_millis(20), fanout.join("slow", "x", None)).await;
    assert!(gave_up.is_err(), "the join was abandoned mid-load");
    // More records than a load may buffer pass by.
    for _ in 0..11 {
        env.produce_ops("slow", 1000).await;
    }
    let want = env.writer("slow").version;
    let j = tokio::time::timeout(T, fanout.join("slow", "y", None))
        .await
        .expect("joins in time")
        .expect("the document loads");
    let mut seen = j.version;
    let mut rx = j.rx;
    while seen < want {
        match tokio::time::timeout(T, rx.recv()).await.expect("live ops") {
            Some(f) => {
                if let ServerMsg::Applied { seq, .. } = parse(&f) {
                    seen = seq;
                }
            }
            None => panic!("cut off"),
        }
    }
    assert_eq!(seen, want);
    token.cancel();
    task.await.unwrap();
}

/// A client moving from a gateway that is further along joins with a
/// `since` this gateway has not consumed yet: the join waits for it and
/// catches the client up from there, instead of a snapshot of an older
/// version (after which the client would see ops it had again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_from_ahead_waits_for_this_gateway_to_get_there() {
    let mut env = Env::new();
    let early = env.produce_ops("ahead", 3).await;
    let fanout = env.fanout(WindowPolicy::default(), 1024, 16).await;
    let (token, task) = start(&fanout);
    // This gateway has seen the first three ops.
    let j = fanout.join("ahead", "c0", None).await.unwrap();
    assert_eq!(j.version, early[2].seq);
    // The client saw two more elsewhere; they reach this gateway later.
    let later: Vec<AppliedRecord> = (0..2).map(|_| env.op("ahead")).collect();
    let since = later[1].seq;
    let produce = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        env.produce(later.iter().cloned().map(OutRecord::Applied).collect())
            .await;
    };
    let (joined, ()) = tokio::join!(fanout.join("ahead", "c1", Some(since)), produce);
    let joined = joined.unwrap();
    assert_eq!(joined.version, since, "joined where the client was");
    assert_eq!(
        catchup_msgs(&joined),
        [ServerMsg::Ready { seq: since }],
        "nothing again, no snapshot"
    );
    token.cancel();
    task.await.unwrap();
}

/// Counts the log's fetches.
struct CountFetches(AtomicUsize);

#[async_trait::async_trait]
impl oplog::Intercept for CountFetches {
    async fn before(&self, call: oplog::Call<'_>) -> oplog::Result<()> {
        if matches!(call, oplog::Call::Fetch { .. }) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A gateway reads only the partitions of documents it has: with none, its
/// consumers do not fetch; the first join wakes them, and the document's
/// ops flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_follows_only_partitions_it_needs() {
    let mut env = Env::new();
    let early = env.produce_ops("idle", 2).await;
    let log = Arc::new(oplog::Intercepted {
        inner: env.log.clone(),
        hook: CountFetches(AtomicUsize::new(0)),
    });
    let fanout = Fanout::new(
        FanoutConfig {
            topics: env.topics.clone(),
            window: WindowPolicy::default(),
            subscriber_queue: 1024,
            max_idle_docs: 16,
            text_share: None,
        },
        log.clone(),
        env.store.clone(),
        Metrics::new(&prometheus::Registry::new()),
    )
    .await
    .unwrap();
    let (token, task) = start(&fanout);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log.hook.0.load(Ordering::SeqCst),
        0,
        "no document: no fetch"
    );
    let mut j = fanout.join("idle", "c", None).await.unwrap();
    assert_eq!(j.version, early[1].seq);
    let mut f = Follower::default();
    f.join(&j, "join");
    let more = env.produce_ops("idle", 3).await;
    f.follow_to(&mut j, more[2].seq, "live after waking").await;
    assert!(log.hook.0.load(Ordering::SeqCst) > 0);
    token.cancel();
    task.await.unwrap();
}

impl Env {
    /// An op of `client` inserting `insert` at the start and deleting the
    /// `delete` code points after it.
    fn splice_as(&mut self, doc: &str, client: &str, delete: usize, insert: &str) -> AppliedRecord {
        self.seq += 1;
        let seq = self.seq;
        let user = format!("u{client}");
        self.writer(doc)
            .apply_as(seq, (client, &user), None, Op::splice(0, delete, insert))
    }

    /// A fanout with the default window, its metrics in `registry`.
    async fn fanout_metered(&self, registry: &prometheus::Registry) -> Fanout {
        Fanout::new(
            FanoutConfig {
                topics: self.topics.clone(),
                window: WindowPolicy::default(),
                subscriber_queue: 1024,
                max_idle_docs: 16,
                text_share: None,
            },
            self.log.clone(),
            self.store.clone(),
            Metrics::new(registry),
        )
        .await
        .unwrap()
    }
}

/// Waits (`T` at most) for counter `name` to reach `n`; `what` says what
/// did not happen.
async fn until_counter(registry: &prometheus::Registry, name: &str, n: f64, what: &str) {
    let deadline = tokio::time::Instant::now() + T;
    while counter(registry, name) < n {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|m| m.name() == name)
        .map_or(0.0, |m| m.get_metric()[0].get_counter().get_value())
}

/// Fanout's window drops the text of a large op once the archive holds its
/// record (`archived.rs`), and reads it back from there: a catch-up over
/// such ops and a resend of one get exactly the original records, and the
/// live stream is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_texts_leave_the_window_and_come_back_from_the_archive() {
    let mut env = Env::new();
    let doc = "big";
    let registry = prometheus::Registry::new();
    let fanout = env.fanout_metered(&registry).await;
    let (token, task) = start(&fanout);
    let mut live = Follower::default();
    let mut a = fanout.join(doc, "a", None).await.unwrap();
    live.join(&a, "live");

    let recs = [
        env.splice_as(doc, "s", 0, "small"),
        env.splice_as(doc, "p", 0, &"paste é😀 ".repeat(40)),
        env.splice_as(doc, "s", 0, "x"),
        // A large delete: its deleted text is what must come back.
        env.splice_as(doc, "d", 300, "y"),
        env.splice_as(doc, "s", 0, "z"),
    ];
    env.produce(recs.iter().cloned().map(OutRecord::Applied).collect())
        .await;
    let version = env.writers[doc].version;
    live.follow_to(&mut a, version, "live").await;
    let name = "quire_fanout_window_texts_dropped_total";
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(counter(&registry, name), 0.0, "nothing archived yet");

    // The compactor archives them and commits past them.
    let end = env
        .log
        .high_watermark(&env.topics.applied, 0)
        .await
        .unwrap();
    env.compact(end, 0).await;
    until_counter(&registry, name, 2.0, "no text was dropped").await;
    assert_eq!(counter(&registry, name), 2.0, "only the two large ops");

    // A catch-up over them: the original records, in order.
    let b = fanout.join(doc, "b", Some(recs[0].seq)).await.unwrap();
    let want: Vec<ServerMsg> = recs[1..]
        .iter()
        .map(ServerMsg::applied)
        .chain([ServerMsg::Ready { seq: version }])
        .collect();
    assert_eq!(catchup_msgs(&b), want);
    assert_eq!(counter(&registry, "quire_fanout_archive_reads_total"), 2.0);
    let mut late = Follower::default();
    late.join(&fanout.join(doc, "c", None).await.unwrap(), "snapshot");
    assert_eq!(late.text, env.writers[doc].text);

    // A WebSocket resend needs the seq only: no archive read.
    let reads = "quire_fanout_archive_reads_total";
    assert_eq!(
        fanout
            .check_op(doc, "p", recs[1].cseq, recs[1].base, "up")
            .await
            .unwrap(),
        Some(recs[1].seq)
    );
    assert_eq!(counter(&registry, reads), 2.0);
    // An HTTP resend of the paste: its record, from the archive.
    let paste = &recs[1];
    match fanout
        .wait_for(doc, "p", paste.cseq, paste.base, "up")
        .await
        .unwrap()
    {
        Waited::AlreadyApplied(r) => assert_eq!(*r, *paste),
        Waited::Pending(_) => panic!("the paste is applied"),
    }
    assert_eq!(counter(&registry, reads), 3.0);
    // The delete's record, with the text it deleted.
    match fanout
        .wait_for(doc, "d", recs[3].cseq, recs[3].base, "ud")
        .await
        .unwrap()
    {
        Waited::AlreadyApplied(r) => assert_eq!(*r, recs[3]),
        Waited::Pending(_) => panic!("the delete is applied"),
    }
    assert_eq!(
        fanout
            .check_op(doc, "d", recs[3].cseq, recs[3].base, "ud")
            .await
            .unwrap(),
        Some(recs[3].seq)
    );

    // Another gateway loads the document cold (archive, then log): its
    // window drops the same texts, and its catch-up is the same.
    let registry2 = prometheus::Registry::new();
    let cold = env.fanout_metered(&registry2).await;
    let (token2, task2) = start(&cold);
    cold.join(doc, "e", None).await.unwrap();
    until_counter(&registry2, name, 2.0, "the cold copy kept its texts").await;
    let b2 = cold.join(doc, "f", Some(recs[0].seq)).await.unwrap();
    assert_eq!(catchup_msgs(&b2), want);
    token2.cancel();
    task2.await.unwrap();

    // The live stream goes on.
    let more = env.splice_as(doc, "p", 0, &"again ".repeat(60));
    env.produce(vec![OutRecord::Applied(more.clone())]).await;
    live.follow_to(&mut a, more.seq, "live").await;
    assert_eq!(live.text, env.writers[doc].text);
    token.cancel();
    task.await.unwrap();
}

/// A document loaded cold while the archive lags: its texts go only once
/// the archive holds every record the load read (the log's tail included),
/// and a catch-up in between is served from the window as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_load_keeps_its_texts_until_the_archive_has_them_all() {
    let mut env = Env::new();
    let doc = "cold";
    let recs = [
        env.splice_as(doc, "p", 0, &"first paste ".repeat(30)),
        env.splice_as(doc, "p", 0, &"second paste ".repeat(30)),
    ];
    env.produce(recs.iter().cloned().map(OutRecord::Applied).collect())
        .await;
    let registry = prometheus::Registry::new();
    let fanout = env.fanout_metered(&registry).await;
    let (token, task) = start(&fanout);
    // Loaded from the log: both records (offsets 0 and 1).
    fanout.join(doc, "a", None).await.unwrap();
    let name = "quire_fanout_window_texts_dropped_total";
    let want: Vec<ServerMsg> = recs
        .iter()
        .map(ServerMsg::applied)
        .chain([ServerMsg::Ready { seq: recs[1].seq }])
        .collect();
    // The archive holds the first only: the load's texts stay.
    env.compact(1, 0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(counter(&registry, name), 0.0, "dropped before archived");
    let b = fanout.join(doc, "b", Some(0)).await.unwrap();
    assert_eq!(catchup_msgs(&b), want);
    // Now it holds both.
    env.compact(2, 0).await;
    until_counter(&registry, name, 2.0, "the texts stayed").await;
    let c = fanout.join(doc, "c", Some(0)).await.unwrap();
    assert_eq!(catchup_msgs(&c), want);
    token.cancel();
    task.await.unwrap();
}
