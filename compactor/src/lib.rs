//! The compactor role (SPEC §1, §9): consumes `quire.applied`, archives
//! every applied op in the store's history, writes a snapshot of a document
//! every `snapshot_every` of its ops, commits its position only after both
//! are stored, and truncates `quire.ops` and `quire.applied` with
//! DeleteRecords — never past the transformer's committed offset, its own
//! position, or the retention margin.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use document::{load, DocCache, LoadError, OpShape, Sources, Topics, WindowPolicy};
use oplog::{LogError, Offset, OpLog, Partition};
use prometheus::{IntCounter, Registry};
use protocol::{decode_out_record, OutRecord};
use store::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Records each presence partition keeps after truncation.
const PRESENCE_RETAIN: u64 = 1000;
/// Applied records archived per store write at most.
const ARCHIVE_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct CompactorConfig {
    pub topics: Topics,
    pub window: WindowPolicy,
    /// A document gets a snapshot after this many of its ops.
    pub snapshot_every: u64,
    /// Records kept in each partition of both topics whatever else allows.
    pub retain_records: u64,
    /// How often to truncate.
    pub truncate_every: Duration,
    /// Shortest time between two archive writes of a partition while it
    /// is not behind: records arriving meanwhile share the next write (one
    /// store commit and one position commit for all of them). The
    /// compactor is off the ack path, so this costs no editor latency.
    pub archive_every: Duration,
    pub max_docs: usize,
    /// Set once the consumer group first assigned this process partitions.
    pub joined: Option<Arc<AtomicBool>>,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        CompactorConfig {
            topics: Topics::default(),
            window: WindowPolicy::default(),
            snapshot_every: 1000,
            retain_records: 10_000,
            truncate_every: Duration::from_secs(5),
            archive_every: Duration::from_millis(200),
            max_docs: 1024,
            joined: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompactorError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("loading a document: {0}")]
    Load(#[from] LoadError),
    #[error("applied record at {offset} is unreadable: {reason}")]
    BadRecord { offset: Offset, reason: String },
}

#[derive(Clone)]
pub struct Metrics {
    archived: IntCounter,
    snapshots: IntCounter,
    truncated: IntCounter,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Metrics {
        let archived = IntCounter::new(
            "quire_compactor_ops_archived_total",
            "Applied ops written to history",
        )
        .unwrap();
        let snapshots = IntCounter::new(
            "quire_compactor_snapshots_written_total",
            "Snapshots written",
        )
        .unwrap();
        let truncated = IntCounter::new(
            "quire_compactor_records_truncated_total",
            "Records removed by DeleteRecords",
        )
        .unwrap();
        for c in [&archived, &snapshots, &truncated] {
            let _ = registry.register(Box::new(c.clone()));
        }
        Metrics {
            archived,
            snapshots,
            truncated,
        }
    }
}

pub async fn run(
    config: CompactorConfig,
    log: Arc<dyn OpLog>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), CompactorError> {
    let config = Arc::new(config);
    if !log.can_truncate() {
        tracing::info!(
            "the log cannot delete records: archiving and snapshotting without truncating"
        );
    }
    // One task per partition this process owns; the first to fail stops
    // the others and the role returns its error (its supervisor restarts
    // it).
    let membership = log
        .join(&config.topics.compactor_group, &config.topics.applied)
        .await?;
    oplog::run_owned(
        membership,
        config.joined.as_deref(),
        &shutdown,
        |p, stop| {
            let mut w = Worker {
                p,
                config: config.clone(),
                log: log.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                docs: DocCache::new(config.max_docs),
            };
            let span = tracing::info_span!("compactor", partition = p);
            async move { w.run(&stop).await }.instrument(span)
        },
        || CompactorError::Log(LogError::Closed),
    )
    .await
}

struct Worker {
    p: Partition,
    config: Arc<CompactorConfig>,
    log: Arc<dyn OpLog>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// Documents' versions and how many ops each has had since its
    /// latest snapshot (rebuilt from the store on reload, so eviction and
    /// restarts never postpone a snapshot). No text: a document is rebuilt
    /// when its snapshot is due, so the compactor's memory does not grow
    /// with the documents' size.
    docs: DocCache<Progress>,
}

struct Progress {
    version: u64,
    since_snapshot: u64,
}

impl Worker {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), CompactorError> {
        let topics = self.config.topics.clone();
        let start = self.log.log_start(&topics.applied, self.p).await?;
        let mut pos = self
            .log
            .committed(&topics.compactor_group, &topics.applied, self.p)
            .await?
            .unwrap_or(0)
            .max(start);
        let mut last_truncate = Instant::now();
        // When the last batch reached the partition's end, wait out
        // `archive_every` before reading again.
        let mut rest_until: Option<tokio::time::Instant> = None;
        loop {
            if let Some(until) = rest_until.take() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = self.log.fetch(&topics.applied, self.p, pos, ARCHIVE_BATCH, Duration::from_millis(500)) => b?,
            };
            if !batch.is_empty() {
                let next = batch.last().map_or(pos, |r| r.offset + 1);
                // At the tail (a broker's fetch may also come back short
                // while far behind: that one does not rest).
                if batch.len() < ARCHIVE_BATCH
                    && next >= self.log.high_watermark(&topics.applied, self.p).await?
                {
                    rest_until = Some(tokio::time::Instant::now() + self.config.archive_every);
                }
                self.compact(batch).await?;
                self.log
                    .commit(&topics.compactor_group, &topics.applied, self.p, next)
                    .await?;
                pos = next;
            }
            if self.log.can_truncate() && last_truncate.elapsed() >= self.config.truncate_every {
                self.truncate(pos).await?;
                last_truncate = Instant::now();
            }
        }
    }

    async fn compact(&mut self, batch: Vec<oplog::Record>) -> Result<(), CompactorError> {
        // The applied records, and each one's offset.
        let mut applied = Vec::with_capacity(batch.len());
        let mut offsets = Vec::with_capacity(batch.len());
        let mut first_offset = HashMap::new();
        for rec in &batch {
            match decode_out_record(&rec.value) {
                Ok(OutRecord::Applied(a)) => {
                    first_offset.entry(a.doc.clone()).or_insert(rec.offset);
                    applied.push(a);
                    offsets.push(rec.offset);
                }
                Ok(OutRecord::Rejected(_)) => {}
                Err(e) => {
                    return Err(CompactorError::BadRecord {
                        offset: rec.offset,
                        reason: e.to_string(),
                    })
                }
            }
        }
        // History first: a snapshot never refers to ops the archive lacks.
        self.store.put_history(&applied).await?;
        self.metrics.archived.inc_by(applied.len() as u64);
        for (offset, a) in offsets.into_iter().zip(applied) {
            if !self.docs.contains(&a.doc) {
                // The state just before this record (`at: prev`): the
                // history written above already holds this batch, and the
                // snapshot decision must see each record in turn. Only its
                // version and count of ops since the latest snapshot are
                // kept; the text is rebuilt when a snapshot is due.
                // The compactor keeps no window: each load's is shapes,
                // the cheapest kind.
                let state = load::<OpShape>(
                    self.sources(),
                    &a.doc,
                    Some(first_offset[&a.doc]),
                    Some(a.prev),
                )
                .await?;
                let progress = Progress {
                    version: state.version,
                    since_snapshot: state.since_snapshot,
                };
                self.docs.insert(a.doc.clone(), progress, |_, _| false);
            }
            let p = self.docs.get_mut(&a.doc).expect("loaded above");
            if a.seq <= p.version {
                continue;
            }
            if a.prev != p.version {
                tracing::error!(doc = %a.doc, seq = a.seq, prev = a.prev, version = p.version, "applied record does not follow the compactor's version; reloading the document");
                self.docs.remove(&a.doc);
                continue;
            }
            p.version = a.seq;
            p.since_snapshot += 1;
            if p.since_snapshot >= self.config.snapshot_every {
                // The document at this record: the latest snapshot, the
                // history after it (archived above) and the topic up to it.
                let mut state =
                    load::<OpShape>(self.sources(), &a.doc, Some(offset + 1), Some(a.seq)).await?;
                if state.version != a.seq {
                    tracing::error!(doc = %a.doc, seq = a.seq, version = state.version, "could not rebuild the document at a record; reloading it");
                    self.docs.remove(&a.doc);
                    continue;
                }
                state.drop_window(self.config.window.max_ops);
                self.store.put_snapshot(&state.snapshot()).await?;
                self.metrics.snapshots.inc();
                if let Some(p) = self.docs.get_mut(&a.doc) {
                    p.since_snapshot = 0;
                }
            }
        }
        Ok(())
    }

    fn sources(&self) -> Sources<'_> {
        Sources {
            log: self.log.as_ref(),
            store: self.store.as_ref(),
            topics: &self.config.topics,
            // The compactor transforms nothing: no window.
            window: WindowPolicy::NONE,
        }
    }

    /// DeleteRecords on both topics, below what every reader still needs.
    async fn truncate(&self, compacted: Offset) -> Result<(), CompactorError> {
        let t = &self.config.topics;
        let keep = self.config.retain_records.max(1);
        let transformed = self
            .log
            .committed(&t.transformer_group, &t.ops, self.p)
            .await?
            .unwrap_or(0);
        let ops_hw = self.log.high_watermark(&t.ops, self.p).await?;
        let applied_hw = self.log.high_watermark(&t.applied, self.p).await?;
        // Presence is ephemeral: keep only a short tail.
        let presence_hw = self.log.high_watermark(&t.presence, self.p).await?;
        for (topic, before) in [
            (&t.ops, transformed.min(ops_hw.saturating_sub(keep))),
            (&t.applied, compacted.min(applied_hw.saturating_sub(keep))),
            (&t.presence, presence_hw.saturating_sub(PRESENCE_RETAIN)),
        ] {
            let old = self.log.log_start(topic, self.p).await?;
            if before > old {
                let new = self.log.delete_records(topic, self.p, before).await?;
                self.metrics.truncated.inc_by(new - old);
                tracing::debug!(topic, partition = self.p, from = old, to = new, "truncated");
            }
        }
        Ok(())
    }
}
