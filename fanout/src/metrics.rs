use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// The fanout's metrics (registered once per registry).
#[derive(Clone)]
pub struct Metrics {
    pub(crate) subscribers: IntGauge,
    pub(crate) delivered: IntCounter,
    pub(crate) overloaded: IntCounter,
    pub(crate) docs: IntGauge,
    /// Ingest's stamp to fanout's delivery: the pipeline's latency.
    pub(crate) lag: Histogram,
    /// Frames waiting in a subscriber's queue, seen at each delivery.
    pub(crate) queue_depth: Histogram,
    /// Texts taken from the transformer in this process instead of edited
    /// or repacked here (`document::TextShare`).
    pub(crate) texts_shared: IntCounter,
    /// Window ops whose text was dropped once archived (`archived.rs`).
    pub(crate) texts_dropped: IntCounter,
    /// Records read back from the archive for a catch-up or a duplicate's
    /// answer, because the window dropped their text.
    pub(crate) archive_reads: IntCounter,
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
        let queue_depth = Histogram::with_opts(
            HistogramOpts::new(
                "quire_fanout_queue_depth",
                "Frames queued to a subscriber, after each delivery to it (the queue is --subscriber-queue long)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
        )
        .unwrap();
        let texts_shared = IntCounter::new(
            "quire_fanout_texts_shared_total",
            "Document texts taken from the transformer in this process instead of edited or repacked here",
        )
        .unwrap();
        let texts_dropped = IntCounter::new(
            "quire_fanout_window_texts_dropped_total",
            "Window ops whose inserted and deleted text fanout dropped once the archive held their record",
        )
        .unwrap();
        let archive_reads = IntCounter::new(
            "quire_fanout_archive_reads_total",
            "Records read back from the archive for a catch-up or a duplicate's answer, their text dropped from the window",
        )
        .unwrap();
        let _ = registry.register(Box::new(texts_dropped.clone()));
        let _ = registry.register(Box::new(archive_reads.clone()));
        let _ = registry.register(Box::new(texts_shared.clone()));
        let _ = registry.register(Box::new(queue_depth.clone()));
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
            queue_depth,
            texts_shared,
            texts_dropped,
            archive_reads,
        }
    }
}
