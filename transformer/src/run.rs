use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use document::{load, DocCache, LoadError, Sources, TextShare, Topics, TIDY_EVERY};
use oplog::{LogError, Offset, OpLog, Partition};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use protocol::{decode_out_record, decode_raw_record, OutRecord};
use store::Store;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{process, CoreConfig, Outcome, TransformerDoc};

#[derive(Debug, Clone)]
pub struct TransformerConfig {
    pub topics: Topics,
    pub core: CoreConfig,
    /// Raw records taken per batch (one produce and one commit per batch).
    pub batch: usize,
    /// Documents kept in memory per partition (least recently used go first).
    pub max_docs: usize,
    /// Set once the consumer group first assigned this process partitions.
    pub joined: Option<Arc<AtomicBool>>,
    /// Where this process's fanout takes the texts of the versions produced
    /// ([`TextShare`]); `None` when no fanout runs beside it.
    pub text_share: Option<Arc<TextShare>>,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            topics: Topics::default(),
            core: CoreConfig::default(),
            batch: 500,
            max_docs: 1024,
            joined: None,
            text_share: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransformerError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("loading a document: {0}")]
    Load(#[from] LoadError),
    #[error("{ops} has {a} partitions but {applied} has {b}: they must match")]
    PartitionCounts {
        ops: String,
        applied: String,
        a: u32,
        b: u32,
    },
}

#[derive(Clone)]
pub struct Metrics {
    applied: IntCounter,
    rejected: IntCounterVec,
    duplicates: IntCounter,
    undecodable: IntCounter,
    /// Ingest's stamp to the applied record being durable.
    latency: Histogram,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Metrics {
        let applied =
            IntCounter::new("quire_transformer_ops_applied_total", "Ops applied").unwrap();
        let rejected = IntCounterVec::new(
            Opts::new(
                "quire_transformer_ops_rejected_total",
                "Ops rejected, by error code",
            ),
            &["code"],
        )
        .unwrap();
        let duplicates = IntCounter::new(
            "quire_transformer_ops_duplicate_total",
            "Resent ops dropped as duplicates",
        )
        .unwrap();
        let undecodable = IntCounter::new(
            "quire_transformer_records_undecodable_total",
            "Raw records that could not be read and were skipped",
        )
        .unwrap();
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "quire_transformer_latency_seconds",
                "From ingest stamping an op to its applied record being durable",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
            ]),
        )
        .unwrap();
        for c in [&applied, &duplicates, &undecodable] {
            let _ = registry.register(Box::new(c.clone()));
        }
        let _ = registry.register(Box::new(rejected.clone()));
        let _ = registry.register(Box::new(latency.clone()));
        Metrics {
            applied,
            rejected,
            duplicates,
            undecodable,
            latency,
        }
    }
}

/// Longest time the transformer's committed position lags its work.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// Runs one task per partition until `shutdown`.
pub async fn run(
    config: TransformerConfig,
    log: Arc<dyn OpLog>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), TransformerError> {
    let a = log.partitions(&config.topics.ops)?;
    let b = log.partitions(&config.topics.applied)?;
    if a != b {
        return Err(TransformerError::PartitionCounts {
            ops: config.topics.ops.clone(),
            applied: config.topics.applied.clone(),
            a,
            b,
        });
    }
    let config = Arc::new(config);
    // One task per partition this process owns (all of them, unless other
    // transformer processes share the group); the first to fail stops the
    // others and the role returns its error (its supervisor restarts it
    // from the log).
    let membership = log
        .join(&config.topics.transformer_group, &config.topics.ops)
        .await?;
    oplog::run_owned(
        membership,
        config.joined.as_deref(),
        &shutdown,
        |p, stop| {
            let (config, log, store, metrics) =
                (config.clone(), log.clone(), store.clone(), metrics.clone());
            let span = tracing::info_span!("transformer", partition = p);
            async move {
                let docs = DocCache::new(config.max_docs);
                let mut part = PartitionWorker {
                    p,
                    config,
                    log,
                    store,
                    metrics,
                    docs,
                };
                part.run(&stop).await
            }
            .instrument(span)
        },
        || TransformerError::Log(LogError::Closed),
    )
    .await
}

struct PartitionWorker {
    p: Partition,
    config: Arc<TransformerConfig>,
    log: Arc<dyn OpLog>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    docs: DocCache<TransformerDoc>,
}

impl PartitionWorker {
    fn sources(&self) -> Sources<'_> {
        Sources {
            log: self.log.as_ref(),
            store: self.store.as_ref(),
            topics: &self.config.topics,
            window: self.config.core.window,
        }
    }

    /// Where to resume: after the committed offset, and after every raw
    /// record that already has an output (a crash between produce and
    /// commit must not produce twice).
    async fn resume_point(&self) -> Result<Offset, TransformerError> {
        let t = &self.config.topics;
        let committed = self
            .log
            .committed(&t.transformer_group, &t.ops, self.p)
            .await?
            .unwrap_or(0);
        let start = self.log.log_start(&t.ops, self.p).await?;
        let hw = self.log.high_watermark(&t.applied, self.p).await?;
        let applied_start = self.log.log_start(&t.applied, self.p).await?;
        let mut done = 0;
        if hw > applied_start {
            // Raw seqs grow with applied offsets: the last record has the max.
            let last = self
                .log
                .fetch(&t.applied, self.p, hw - 1, 1, Duration::ZERO)
                .await?;
            if let Some(r) = last.first() {
                if let Ok(out) = decode_out_record(&r.value) {
                    done = out.raw_seq(); // raw offset + 1: the next to read
                }
            }
        }
        Ok(committed.max(start).max(done))
    }

    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), TransformerError> {
        let topics = self.config.topics.clone();
        let mut pos = self.resume_point().await?;
        tracing::info!(
            partition = self.p,
            offset = pos,
            "transformer partition starting"
        );
        // The committed position only bounds where a restart starts reading
        // (`resume_point` goes on from the last output in the applied
        // topic), so it is committed lazily: at most every COMMIT_EVERY, and
        // when the partition goes idle. One durable write fewer per batch.
        let mut committed = pos;
        let mut last_commit = tokio::time::Instant::now();
        let mut last_tidy = last_commit;
        loop {
            if last_tidy.elapsed() >= TIDY_EVERY {
                // A repacked text is offered to the fanout beside us, which
                // then drops its own copy instead of repacking it too.
                let share = self.config.text_share.clone();
                document::tidy(self.docs.values_mut(), |d| {
                    if let Some(s) = &share {
                        s.offer(&d.doc, d.offer());
                    }
                });
                last_tidy = tokio::time::Instant::now();
            }
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = self.log.fetch(&topics.ops, self.p, pos, self.config.batch, Duration::from_millis(500)) => b?,
            };
            if batch.is_empty() {
                if committed < pos {
                    self.log
                        .commit(&topics.transformer_group, &topics.ops, self.p, pos)
                        .await?;
                    committed = pos;
                    last_commit = tokio::time::Instant::now();
                }
                continue;
            }
            // Documents this batch touched have outputs not yet in the log:
            // they must stay cached until the batch is produced. The flag:
            // an op of it was applied (its text is offered to the fanout
            // beside us).
            let mut touched: HashMap<String, bool> = HashMap::new();
            let mut out = Vec::with_capacity(batch.len());
            let mut stamps = Vec::with_capacity(batch.len());
            let next = batch.last().map_or(pos, |r| r.offset + 1);
            for rec in batch {
                let raw = match decode_raw_record(&rec.value) {
                    Ok(raw) if raw.doc == rec.key => raw,
                    Ok(raw) => {
                        tracing::warn!(partition = self.p, offset = rec.offset, key = %rec.key, doc = %raw.doc, "raw record key does not match its doc; skipped");
                        self.metrics.undecodable.inc();
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(partition = self.p, offset = rec.offset, error = %e, "unreadable raw record skipped");
                        self.metrics.undecodable.inc();
                        continue;
                    }
                };
                if !self.docs.contains(&raw.doc) {
                    let state = load(self.sources(), &raw.doc, None, None).await?;
                    self.docs
                        .insert(raw.doc.clone(), state, |doc, _| touched.contains_key(doc));
                }
                touched.entry(raw.doc.clone()).or_insert(false);
                let state = self.docs.get_mut(&raw.doc).expect("loaded above");
                if rec.offset < state.version {
                    // (its seq, offset + 1, is not above the version)
                    // Decided already: this process resumed behind the
                    // applied topic (another owner got further, or a
                    // crash between produce and commit). Its answer is
                    // in the log; a second one would come from a later
                    // state than the first did.
                    continue;
                }
                match process(state, &raw, rec.offset + 1, &self.config.core) {
                    Outcome::Applied(a) => {
                        self.metrics.applied.inc();
                        stamps.push(raw.ts);
                        if let Some(applied) = touched.get_mut(&a.doc) {
                            *applied = true;
                        }
                        out.push((a.doc.clone(), OutRecord::Applied(a).encode()));
                    }
                    Outcome::Rejected(r) => {
                        self.metrics
                            .rejected
                            .with_label_values(&[r.code.as_str()])
                            .inc();
                        out.push((r.doc.clone(), OutRecord::Rejected(r).encode()));
                    }
                    Outcome::Duplicate { .. } => self.metrics.duplicates.inc(),
                }
            }
            // Offered before the produce, so each text is there when fanout
            // reads its record (offered after it, fanout was often first).
            // Only the version each document reaches in the batch: an
            // offer replaces the one before. Fanout takes an offer only
            // with the record whose chain hash it carries, so an offer
            // whose record never lands (a failed produce) is taken only if
            // the restarted role writes that very record again.
            if let Some(share) = &self.config.text_share {
                for (doc, _) in touched.iter().filter(|(_, applied)| **applied) {
                    if let Some(state) = self.docs.peek_mut(doc) {
                        share.offer(doc, state.offer());
                    }
                }
            }
            if !out.is_empty() {
                if let Err(e) = self.log.produce(&topics.applied, out).await {
                    // Whether or not it landed, the restarted role decides
                    // from the applied topic itself (with fresh documents).
                    return Err(e.into());
                }
                let now = protocol::now_ms();
                for ts in stamps {
                    // Other hosts' clocks may be ahead: never a negative.
                    self.metrics
                        .latency
                        .observe((now - ts).max(0) as f64 / 1000.0);
                }
            }
            pos = next;
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.log
                    .commit(&topics.transformer_group, &topics.ops, self.p, pos)
                    .await?;
                committed = pos;
                last_commit = tokio::time::Instant::now();
            }
        }
    }
}
