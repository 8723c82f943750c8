//! A partition's documents in memory, and how a document gets there without
//! holding the partition's lock across I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use document::{load, DocCache, DocState, TextShare, WindowPolicy};
use oplog::Offset;
use protocol::{AppliedRecord, ErrorCode, OutRecord, ProtoError, RejectedRecord, ServerMsg};
use tokio::sync::{mpsc, oneshot, watch, MutexGuard};

use crate::archived::Pending;
use crate::{Fanout, FanoutError, Metrics};

/// A frame ready to send, shared by every subscriber it goes to.
pub type Frame = Arc<str>;

pub(crate) fn frame(msg: &ServerMsg) -> Frame {
    Arc::from(msg.to_json())
}

pub(crate) struct Sub {
    pub(crate) id: u64,
    pub(crate) client: String,
    pub(crate) tx: mpsc::Sender<Frame>,
    pub(crate) kick: Option<oneshot::Sender<ErrorCode>>,
}

pub(crate) type WaitKey = (String, u64);

/// One document in memory: its state, subscribers and HTTP waiters.
pub(crate) struct Hub {
    /// Its state no longer follows the applied stream: drop and reload.
    pub(crate) broken: bool,
    pub(crate) state: DocState,
    /// The highest raw seq answered (applied or rejected) in the stream.
    /// Two transformers that overlap on a partition write the same answers
    /// twice; only the first reaches the editors.
    decided: u64,
    pub(crate) subs: Vec<Sub>,
    pub(crate) waiters: HashMap<WaitKey, Vec<oneshot::Sender<OutRecord>>>,
    /// The window's ops up to this seq have had their large texts dropped
    /// (`archived.rs`).
    pub(crate) bare_upto: u64,
}

impl Hub {
    fn new(state: DocState) -> Hub {
        Hub {
            broken: false,
            decided: state.version,
            state,
            subs: Vec::new(),
            waiters: HashMap::new(),
            bare_upto: 0,
        }
    }

    /// Whether eviction must spare it (waiters that gave up do not count).
    fn in_use(&self) -> bool {
        !self.subs.is_empty() || self.waiters.values().flatten().any(|w| !w.is_closed())
    }

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

    /// Applies an applied record and queues it to every subscriber; a
    /// subscriber whose queue is full is cut off (it re-joins with `since`).
    pub(crate) fn deliver(
        &mut self,
        a: AppliedRecord,
        window: WindowPolicy,
        share: Option<&TextShare>,
        metrics: &Metrics,
    ) {
        if a.seq <= self.state.version {
            return; // loaded from the log already, or written twice
        }
        self.decided = self.decided.max(a.seq);
        let applied = self.state.apply_record_shared(&a, share);
        if let Ok(true) = applied {
            metrics.texts_shared.inc();
        }
        if let Err(e) = applied {
            // Broken invariant: drop the document so it is reloaded, and
            // cut its subscribers off (they re-join and catch up).
            tracing::error!(error = %e, "applied stream does not follow the document; reloading it");
            self.broken = true;
            return;
        }
        self.state.trim(window);
        let f = frame(&ServerMsg::applied(&a));
        // Clocks of other hosts may be behind: never observe a negative.
        metrics
            .lag
            .observe((protocol::now_ms() - a.ts).max(0) as f64 / 1000.0);
        self.subs.retain_mut(|s| match s.tx.try_send(f.clone()) {
            Ok(()) => {
                metrics.delivered.inc();
                let queued = s.tx.max_capacity() - s.tx.capacity();
                metrics.queue_depth.observe(queued as f64);
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
        self.resolve(OutRecord::Applied(a));
    }

    /// A rejection goes to the submitting client only.
    pub(crate) fn reject(&mut self, r: RejectedRecord) {
        if r.seq <= self.decided {
            return; // written twice by overlapping transformers
        }
        self.decided = r.seq;
        let err = ProtoError::new(r.code, r.message.clone());
        let f = frame(&ServerMsg::op_error(&err, &r.client, r.cseq));
        for s in self.subs.iter().filter(|s| s.client == r.client) {
            let _ = s.tx.try_send(f.clone());
        }
        self.resolve(OutRecord::Rejected(r));
    }
}

/// Cuts subscribers off; they re-join with `since` and miss nothing.
pub(crate) fn kick_all(subs: Vec<Sub>, metrics: &Metrics) {
    for mut s in subs {
        if let Some(k) = s.kick.take() {
            let _ = k.send(ErrorCode::Overloaded);
        }
        metrics.subscribers.dec();
    }
}

/// A document being loaded outside the lock: the applied records the
/// consumer passes meanwhile, replayed on top of the load. One load runs
/// per document; other requests for it wait for `done` to close.
pub(crate) struct Loading {
    records: Vec<(Offset, AppliedRecord)>,
    overflowed: bool,
    done: watch::Receiver<()>,
}

/// Records buffered per loading document; past that the load starts again.
const LOAD_BUFFER: usize = 10_000;

/// Loads (or waits for another request's load) before a request gives up
/// (`Busy`).
const LOAD_ATTEMPTS: usize = 8;

/// One partition: the consumer's position and the documents that reflect
/// everything below it.
pub(crate) struct Part {
    /// Next applied offset to consume.
    pub(crate) pos: Offset,
    pub(crate) docs: DocCache<Hub>,
    pub(crate) loading: HashMap<String, Loading>,
    /// Bumped when the consumer resets (it fell behind truncation): loads
    /// begun before are void.
    pub(crate) epoch: u64,
    /// Ops whose texts go once the archive has them (`archived.rs`).
    pub(crate) pending: VecDeque<Pending>,
}

impl Part {
    /// No document in memory and none being loaded: this gateway needs
    /// nothing from the partition, and its consumers stop fetching.
    pub(crate) fn idle(&self) -> bool {
        self.docs.is_empty() && self.loading.is_empty()
    }
}

impl Part {
    pub(crate) fn new(pos: Offset, max_idle_docs: usize) -> Part {
        Part {
            pos,
            docs: DocCache::new(max_idle_docs),
            loading: HashMap::new(),
            epoch: 0,
            pending: VecDeque::new(),
        }
    }

    /// The consumer passes a record of a document nobody has in memory:
    /// keep it if the document is being loaded.
    pub(crate) fn buffer_for_load(
        &mut self,
        offset: Offset,
        doc: &str,
        out: impl FnOnce() -> Option<AppliedRecord>,
    ) {
        if let Some(slot) = self.loading.get_mut(doc) {
            if slot.records.len() >= LOAD_BUFFER {
                slot.overflowed = true;
            } else if let Some(a) = out() {
                slot.records.push((offset, a));
            }
        }
    }

    /// The consumer fell behind truncation: every document is forgotten and
    /// every load in progress starts again.
    pub(crate) fn reset(&mut self, pos: Offset, metrics: &Metrics) {
        for (_, hub) in self.docs.drain() {
            metrics.docs.dec();
            kick_all(hub.subs, metrics);
        }
        self.pos = pos;
        self.epoch += 1;
        self.pending.clear();
    }
}

impl Fanout {
    /// The partition of `doc`, locked, with `doc` in memory. A cold
    /// document is loaded with the lock released (the store and log reads
    /// of one document never hold up the partition's delivery); the
    /// consumer buffers the document's records meanwhile, and they are
    /// replayed on top of the load before it joins the partition.
    pub(crate) async fn locked(&self, doc: &str) -> Result<MutexGuard<'_, Part>, FanoutError> {
        let lock = &self.inner.parts[self.partition(doc) as usize];
        for _ in 0..LOAD_ATTEMPTS {
            let mut part = lock.lock().await;
            if part.docs.contains(doc) {
                return Ok(part);
            }
            if let Some(slot) = part.loading.get(doc) {
                // Someone is loading it: wait for that load to finish.
                let mut done = slot.done.clone();
                drop(part);
                let _ = done.changed().await;
                continue;
            }
            if part.idle() {
                // The partition's consumers are asleep and their position
                // is stale: start from the end, as at start-up.
                let topic = &self.inner.config.topics.applied;
                let p = self.partition(doc);
                part.pos = self.inner.log.high_watermark(topic, p).await?;
                part.epoch += 1;
            }
            let (from, epoch) = (part.pos, part.epoch);
            let (finished, done) = watch::channel(());
            part.loading.insert(
                doc.to_owned(),
                Loading {
                    records: Vec::new(),
                    overflowed: false,
                    done,
                },
            );
            drop(part);
            self.inner.wake[self.partition(doc) as usize].notify_waiters();
            // The load runs as its own task: a request that goes away (an
            // HTTP client hanging up) must not leave the slot behind.
            let me = self.clone();
            let name = doc.to_owned();
            tokio::spawn(async move { me.load_into(&name, from, epoch, finished).await })
                .await
                .map_err(|e| FanoutError::Panicked(e.to_string()))??;
        }
        Err(FanoutError::Busy { doc: doc.into() })
    }

    /// Loads `doc` up to offset `from`, then, under the lock, replays what
    /// the consumer buffered and puts the document in the partition (unless
    /// the consumer was reset or the buffer overflowed: then the caller
    /// tries again). Closing `finished` wakes the requests that waited.
    async fn load_into(
        &self,
        doc: &str,
        from: Offset,
        epoch: u64,
        finished: watch::Sender<()>,
    ) -> Result<(), FanoutError> {
        let loaded = load(self.sources(), doc, Some(from), None).await;
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        let slot = part.loading.remove(doc).expect("registered by locked()");
        drop(finished);
        let mut state = loaded?;
        if part.epoch != epoch || slot.overflowed || part.docs.contains(doc) {
            return Ok(());
        }
        // The newest offset the state holds a record of.
        let mut last = from.checked_sub(1);
        for (offset, a) in slot.records.iter().filter(|(offset, _)| *offset >= from) {
            if a.seq > state.version && state.apply_record(a).is_err() {
                return Ok(());
            }
            last = Some(*offset);
        }
        state.trim(self.inner.config.window);
        // Documents someone is subscribed to or waiting on stay.
        let evicted = part
            .docs
            .insert(doc.to_owned(), Hub::new(state), |_, h| h.in_use());
        self.inner.metrics.docs.add(1 - evicted as i64);
        // What came from the archive alone waits for any progress of it.
        part.loaded(last.unwrap_or(0), doc);
        Ok(())
    }
}
