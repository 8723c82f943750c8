use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use document::{load, Dedup, DocCache, DocState, LoadError, Sources, Topics, WindowPolicy};
use oplog::{partition_for, LogError, Offset, OpLog, Partition};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use protocol::{
    decode_out_record, decode_presence_record, AppliedRecord, ErrorCode, OutRecord, ProtoError,
    RejectedRecord, ServerMsg,
};
use store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub topics: Topics,
    pub window: WindowPolicy,
    /// Outbound frames queued per subscriber; overflow cuts it off with
    /// `OVERLOADED` (it re-joins with `since` and misses nothing).
    pub subscriber_queue: usize,
    /// Documents kept in memory per partition; those with subscribers or
    /// waiters are never evicted, so this bounds the idle ones.
    pub max_idle_docs: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            topics: Topics::default(),
            window: WindowPolicy::default(),
            subscriber_queue: protocol::Limits::default().subscriber_queue,
            max_idle_docs: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("loading a document: {0}")]
    Load(#[from] LoadError),
    #[error(transparent)]
    Refused(#[from] ProtoError),
    #[error("a partition task panicked: {0}")]
    Panicked(String),
}

#[derive(Clone)]
pub struct Metrics {
    subscribers: IntGauge,
    delivered: IntCounter,
    overloaded: IntCounter,
    docs: IntGauge,
    /// Ingest's stamp to fanout's delivery: the pipeline's latency.
    lag: Histogram,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Metrics {
        let subscribers = IntGauge::new("quire_fanout_subscribers", "Live subscribers").unwrap();
        let delivered = IntCounter::new(
            "quire_fanout_ops_delivered_total",
            "Applied ops queued to subscribers",
        )
        .unwrap();
        let overloaded = IntCounter::new(
            "quire_fanout_subscribers_overloaded_total",
            "Subscribers cut off because their queue overflowed",
        )
        .unwrap();
        let docs = IntGauge::new("quire_fanout_docs_loaded", "Documents held in memory").unwrap();
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "quire_fanout_pipeline_latency_seconds",
                "From ingest stamping an op to fanout queueing it to subscribers",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
            ]),
        )
        .unwrap();
        let _ = registry.register(Box::new(lag.clone()));
        let _ = registry.register(Box::new(subscribers.clone()));
        let _ = registry.register(Box::new(delivered.clone()));
        let _ = registry.register(Box::new(overloaded.clone()));
        let _ = registry.register(Box::new(docs.clone()));
        Metrics {
            subscribers,
            delivered,
            overloaded,
            docs,
            lag,
        }
    }
}

/// A frame ready to send, shared by every subscriber it goes to.
pub type Frame = Arc<str>;

struct Sub {
    id: u64,
    client: String,
    tx: mpsc::Sender<Frame>,
    kick: Option<oneshot::Sender<ErrorCode>>,
}

type WaitKey = (String, u64);

struct Hub {
    /// Its state no longer follows the applied stream: drop and reload.
    broken: bool,
    state: DocState,
    subs: Vec<Sub>,
    waiters: HashMap<WaitKey, Vec<oneshot::Sender<OutRecord>>>,
}

impl Hub {
    /// Answers the HTTP submissions waiting for this op's outcome.
    fn resolve(&mut self, out: OutRecord) {
        let key = match &out {
            OutRecord::Applied(a) => (a.client.clone(), a.cseq),
            OutRecord::Rejected(r) => (r.client.clone(), r.cseq),
        };
        for w in self.waiters.remove(&key).unwrap_or_default() {
            let _ = w.send(out.clone());
        }
    }
}

struct Part {
    /// Next applied offset to consume; documents reflect everything below.
    pos: Offset,
    docs: DocCache<Hub>,
}

struct Inner {
    config: FanoutConfig,
    log: Arc<dyn OpLog>,
    store: Arc<dyn Store>,
    parts: Vec<Mutex<Part>>,
    metrics: Metrics,
    next_id: AtomicU64,
}

/// The fanout role. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

/// A subscriber's view after `join`.
pub struct Joined {
    pub id: u64,
    /// Snapshot or catch-up, then `ready`; send these first.
    pub catchup: Vec<Frame>,
    /// Live frames after `ready`.
    pub rx: mpsc::Receiver<Frame>,
    /// Fires when the subscriber is cut off (with the code to send).
    pub kicked: oneshot::Receiver<ErrorCode>,
    pub version: u64,
}

/// Result of registering for an op's outcome.
pub enum Waited {
    /// `(client, cseq)` was applied already: the original record.
    AlreadyApplied(Box<AppliedRecord>),
    /// Resolves with the op's applied or rejection record.
    Pending(oneshot::Receiver<OutRecord>),
}

fn frame(msg: &ServerMsg) -> Frame {
    Arc::from(msg.to_json())
}

impl Fanout {
    /// Builds the fanout, starting each partition at the current end of the
    /// applied topic (older state is loaded from store and log on demand).
    pub async fn new(
        config: FanoutConfig,
        log: Arc<dyn OpLog>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> Result<Fanout, FanoutError> {
        let n = log.partitions(&config.topics.applied)?;
        let mut parts = Vec::with_capacity(n as usize);
        for p in 0..n {
            let pos = log.high_watermark(&config.topics.applied, p).await?;
            parts.push(Mutex::new(Part {
                pos,
                docs: DocCache::new(config.max_idle_docs),
            }));
        }
        Ok(Fanout {
            inner: Arc::new(Inner {
                config,
                log,
                store,
                parts,
                metrics,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    fn partition(&self, doc: &str) -> Partition {
        partition_for(doc, self.inner.parts.len() as u32)
    }

    fn sources(&self) -> Sources<'_> {
        Sources {
            log: self.inner.log.as_ref(),
            store: self.inner.store.as_ref(),
            topics: &self.inner.config.topics,
            window: self.inner.config.window,
        }
    }

    async fn hub<'a>(&self, part: &'a mut Part, doc: &str) -> Result<&'a mut Hub, FanoutError> {
        if !part.docs.contains(doc) {
            let state = load(self.sources(), doc, Some(part.pos), None).await?;
            let hub = Hub {
                state,
                subs: Vec::new(),
                waiters: HashMap::new(),
                broken: false,
            };
            // Documents someone is subscribed to or waiting on stay.
            let evicted = part.docs.insert(doc.to_owned(), hub, |_, h| {
                !h.subs.is_empty() || !h.waiters.is_empty()
            });
            self.inner.metrics.docs.add(1 - evicted as i64);
        }
        Ok(part.docs.get_mut(doc).expect("inserted above"))
    }

    /// Subscribes a client (SPEC §5 join): with a usable `since`, the applied
    /// ops after it; otherwise a snapshot; then `ready`.
    pub async fn join(
        &self,
        doc: &str,
        client: &str,
        since: Option<u64>,
    ) -> Result<Joined, FanoutError> {
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        let queue = self.inner.config.subscriber_queue;
        let hub = self.hub(&mut part, doc).await?;
        let catchup = join_messages(&hub.state, since).iter().map(frame).collect();
        let (tx, rx) = mpsc::channel(queue);
        let (kick, kicked) = oneshot::channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        hub.subs.push(Sub {
            id,
            client: client.to_owned(),
            tx,
            kick: Some(kick),
        });
        self.inner.metrics.subscribers.inc();
        Ok(Joined {
            id,
            catchup,
            rx,
            kicked,
            version: hub.state.version,
        })
    }

    /// Unsubscribes. (The gateway produces the `leave` to the presence topic.)
    pub async fn leave(&self, doc: &str, id: u64) {
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        let Some(hub) = part.docs.peek_mut(doc) else {
            return;
        };
        if let Some(i) = hub.subs.iter().position(|s| s.id == id) {
            hub.subs.swap_remove(i);
            self.inner.metrics.subscribers.dec();
        }
    }

    /// The binding and duplicate checks done before anything else about an
    /// op (SPEC §7): `Ok(Some(record))` when `(client, cseq)` was applied.
    async fn find_dup(
        &self,
        state: &DocState,
        client: &str,
        cseq: u64,
        user: &str,
    ) -> Result<Option<AppliedRecord>, FanoutError> {
        match dedup_check(state, client, cseq, user)? {
            Dedup::New => Ok(None),
            Dedup::Applied(r) => Ok(Some(r.clone())),
            Dedup::Forgotten { seq } => match self.find_in_store(&state.doc, client, cseq, seq).await? {
                Some(r) => Ok(Some(r)),
                // Below the client's latest cseq but never applied (cseqs
                // may skip): it can never be applied now.
                None => Err(ProtoError::new(
                    ErrorCode::Protocol,
                    format!("cseq {cseq} of {client} is below its latest op and was never applied; use a new cseq"),
                )
                .into()),
            },
        }
    }

    /// [`Self::find_dup`] for WebSocket ops: `Ok(Some(seq))` when applied.
    pub async fn check_op(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        user: &str,
    ) -> Result<Option<u64>, FanoutError> {
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        let hub = self.hub(&mut part, doc).await?;
        Ok(self
            .find_dup(&hub.state, client, cseq, user)
            .await?
            .map(|r| r.seq))
    }

    /// Registers for the outcome of `(client, cseq)`, after the binding and
    /// duplicate checks. Register before producing the op.
    pub async fn wait_for(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        user: &str,
    ) -> Result<Waited, FanoutError> {
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        let hub = self.hub(&mut part, doc).await?;
        if let Some(r) = self.find_dup(&hub.state, client, cseq, user).await? {
            return Ok(Waited::AlreadyApplied(Box::new(r)));
        }
        let (tx, rx) = oneshot::channel();
        hub.waiters
            .entry((client.to_owned(), cseq))
            .or_default()
            .push(tx);
        Ok(Waited::Pending(rx))
    }

    async fn find_in_store(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        seq: Option<u64>,
    ) -> Result<Option<AppliedRecord>, FanoutError> {
        if let Some(seq) = seq {
            let hit = self.inner.store.history(doc, seq - 1, 1).await?;
            if let Some(r) = hit.into_iter().find(|r| r.seq == seq) {
                return Ok(Some(r));
            }
        }
        let mut after = 0;
        loop {
            let page = self.inner.store.history(doc, after, 1000).await?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            after = last.seq;
            if let Some(r) = page
                .into_iter()
                .find(|r| r.client == client && r.cseq == cseq)
            {
                return Ok(Some(r));
            }
        }
    }

    /// Current `(version, text)`, or the state at the last version `<= at`.
    pub async fn read(&self, doc: &str, at: Option<u64>) -> Result<(u64, String), FanoutError> {
        if let Some(at) = at {
            let state = load(self.sources(), doc, None, Some(at)).await?;
            return Ok((state.version, state.text.to_string()));
        }
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        let hub = self.hub(&mut part, doc).await?;
        Ok((hub.state.version, hub.state.text.to_string()))
    }

    /// Applied records with `seq > after`, oldest first, at most `limit`.
    pub async fn history(
        &self,
        doc: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>, FanoutError> {
        let mut out = self.inner.store.history(doc, after, limit).await?;
        if out.len() < limit {
            let from = out.last().map_or(after, |r| r.seq);
            let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
            let hub = self.hub(&mut part, doc).await?;
            let want = limit - out.len();
            let recent: Option<Vec<AppliedRecord>> = hub
                .state
                .ops_after(from)
                .map(|ops| ops.take(want).cloned().collect());
            drop(part);
            match recent {
                Some(r) => out.extend(r),
                None => {
                    // The archive lags the window's floor: read the log directly.
                    let state = load(self.sources(), doc, None, None).await?;
                    let r: Vec<AppliedRecord> = state
                        .ops_after(from)
                        .map(|ops| ops.take(want).cloned().collect())
                        .unwrap_or_default();
                    out.extend(r);
                }
            }
        }
        Ok(out)
    }

    /// Consumes the applied and presence topics until `shutdown`, one task
    /// per partition each.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), FanoutError> {
        // One task per partition and topic; the first to fail stops the
        // others and the role returns its error (its supervisor restarts it
        // from each partition's position).
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        for p in 0..self.inner.parts.len() as Partition {
            for presence in [false, true] {
                let (me, stop) = (self.clone(), stop.clone());
                let topic = if presence { "presence" } else { "applied" };
                let span = tracing::info_span!("fanout", partition = p, topic);
                let task = async move {
                    if presence {
                        me.relay_presence(p, &stop).await
                    } else {
                        me.consume(p, &stop).await
                    }
                };
                tasks.spawn(task.instrument(span));
            }
        }
        while let Some(done) = tasks.join_next().await {
            let failed = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(e) => FanoutError::Panicked(e.to_string()),
            };
            stop.cancel();
            tasks.shutdown().await;
            return Err(failed);
        }
        Ok(())
    }

    async fn consume(&self, p: Partition, shutdown: &CancellationToken) -> Result<(), FanoutError> {
        let topic = self.inner.config.topics.applied.clone();
        loop {
            let pos = self.inner.parts[p as usize].lock().await.pos;
            let fetched = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = self.inner.log.fetch(&topic, p, pos, 500, Duration::from_millis(500)) => b,
            };
            let batch = match fetched {
                Ok(b) => b,
                Err(LogError::OffsetOutOfRange { log_start, .. }) => {
                    // We fell behind truncation: forget the documents and cut
                    // their subscribers off; they re-join and catch up.
                    let mut part = self.inner.parts[p as usize].lock().await;
                    tracing::warn!(
                        partition = p,
                        pos,
                        log_start,
                        "fanout fell behind truncation"
                    );
                    for (_, hub) in part.docs.drain() {
                        self.inner.metrics.docs.dec();
                        self.kick_all(hub.subs);
                    }
                    part.pos = log_start;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if batch.is_empty() {
                continue;
            }
            let mut part = self.inner.parts[p as usize].lock().await;
            if part.pos != pos {
                continue; // reset under us; fetch again
            }
            for rec in batch {
                part.pos = rec.offset + 1;
                let Some(hub) = part.docs.peek_mut(&rec.key) else {
                    continue;
                };
                match decode_out_record(&rec.value) {
                    Ok(OutRecord::Applied(a)) => self.deliver(hub, a),
                    Ok(OutRecord::Rejected(r)) => self.reject(hub, r),
                    Err(e) => {
                        tracing::error!(partition = p, offset = rec.offset, error = %e, "unreadable applied record skipped")
                    }
                }
            }
            let docs = &mut part.docs;
            let broken: Vec<String> = docs
                .iter()
                .filter(|(_, h)| h.broken)
                .map(|(k, _)| k.clone())
                .collect();
            for d in broken {
                if let Some(hub) = docs.remove(&d) {
                    self.inner.metrics.docs.dec();
                    self.kick_all(hub.subs);
                }
            }
        }
    }

    /// Relays `quire.presence` to each document's other subscribers, from
    /// the end of the topic (presence is ephemeral: nothing old is replayed).
    /// A full queue drops presence rather than cutting anyone off.
    async fn relay_presence(
        &self,
        p: Partition,
        shutdown: &CancellationToken,
    ) -> Result<(), FanoutError> {
        let topic = self.inner.config.topics.presence.clone();
        let mut pos = self.inner.log.high_watermark(&topic, p).await?;
        loop {
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

    fn kick_all(&self, subs: Vec<Sub>) {
        for mut s in subs {
            if let Some(k) = s.kick.take() {
                let _ = k.send(ErrorCode::Overloaded);
            }
            self.inner.metrics.subscribers.dec();
        }
    }

    fn deliver(&self, hub: &mut Hub, a: AppliedRecord) {
        if a.seq <= hub.state.version {
            return; // loaded from the log already
        }
        let window = self.inner.config.window;
        if let Err(e) = hub.state.apply_record(&a) {
            // Broken invariant: drop the document so it is reloaded, and
            // cut its subscribers off (they re-join and catch up).
            tracing::error!(error = %e, "applied stream does not follow the document; reloading it");
            hub.broken = true;
            return;
        }
        hub.state.trim(window);
        let f = frame(&ServerMsg::applied(&a));
        let metrics = &self.inner.metrics;
        // Clocks of other hosts may be behind: never observe a negative.
        metrics
            .lag
            .observe((protocol::now_ms() - a.ts).max(0) as f64 / 1000.0);
        hub.subs.retain_mut(|s| match s.tx.try_send(f.clone()) {
            Ok(()) => {
                metrics.delivered.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.overloaded.inc();
                metrics.subscribers.dec();
                if let Some(k) = s.kick.take() {
                    let _ = k.send(ErrorCode::Overloaded);
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics.subscribers.dec();
                false
            }
        });
        hub.resolve(OutRecord::Applied(a));
    }

    fn reject(&self, hub: &mut Hub, r: RejectedRecord) {
        let err = ProtoError::new(r.code, r.message.clone());
        let f = frame(&ServerMsg::op_error(&err, &r.client, r.cseq));
        for s in hub.subs.iter().filter(|s| s.client == r.client) {
            let _ = s.tx.try_send(f.clone());
        }
        hub.resolve(OutRecord::Rejected(r));
    }

    /// Drops a waiter that gave up (HTTP timeout or disconnect).
    pub async fn forget_waiter(&self, doc: &str, client: &str, cseq: u64) {
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        if let Some(hub) = part.docs.peek_mut(doc) {
            if let Some(ws) = hub.waiters.get_mut(&(client.to_owned(), cseq)) {
                ws.retain(|w| !w.is_closed());
                if ws.is_empty() {
                    hub.waiters.remove(&(client.to_owned(), cseq));
                }
            }
        }
    }

    /// Whether log and store answer.
    pub async fn ready(&self) -> bool {
        self.inner.log.ping().await.is_ok() && self.inner.store.ping().await.is_ok()
    }
}

/// What a join sends (SPEC §5): with a `since` the window still covers, the
/// applied ops after it; otherwise a snapshot of the current state; then
/// `ready`. Pure, so the simulation tests use exactly this.
pub fn join_messages(state: &DocState, since: Option<u64>) -> Vec<ServerMsg> {
    let mut out = Vec::new();
    let caught_up = match since {
        Some(s) if s <= state.version => match state.ops_after(s) {
            Some(ops) => {
                out.extend(ops.map(ServerMsg::applied));
                true
            }
            None => false,
        },
        _ => false,
    };
    if !caught_up {
        out.push(ServerMsg::Snapshot {
            seq: state.version,
            text: state.text.to_string(),
        });
    }
    out.push(ServerMsg::Ready { seq: state.version });
    out
}

/// The clientId binding check, then the duplicate check (SPEC §4, §7): the
/// one the transformer makes too.
pub fn dedup_check<'a>(
    state: &'a DocState,
    client: &str,
    cseq: u64,
    user: &str,
) -> Result<Dedup<'a>, ProtoError> {
    state.dedup_check(client, cseq, user)
}
