//! Metrics of the Kafka path.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct KafkaMetrics {
    pub(crate) produce_latency: Histogram,
    pub(crate) delivery_errors: IntCounter,
    pub(crate) rebalances: IntCounterVec,
    pub(crate) fetch_errors: IntCounter,
}

impl KafkaMetrics {
    pub fn new(registry: &Registry) -> KafkaMetrics {
        let produce_latency = Histogram::with_opts(
            HistogramOpts::new(
                "quire_kafka_produce_seconds",
                "Time from produce to the broker's acknowledgement of a batch",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )
        .unwrap();
        let delivery_errors = IntCounter::new(
            "quire_kafka_delivery_errors_total",
            "Records the producer could not deliver",
        )
        .unwrap();
        let rebalances = IntCounterVec::new(
            Opts::new(
                "quire_kafka_rebalances_total",
                "Partitions revoked from this process by a group rebalance, by group",
            ),
            &["group"],
        )
        .unwrap();
        let fetch_errors = IntCounter::new(
            "quire_kafka_fetch_errors_total",
            "Fetches that failed (broker unreachable, offset out of range, ...)",
        )
        .unwrap();
        let _ = registry.register(Box::new(produce_latency.clone()));
        let _ = registry.register(Box::new(delivery_errors.clone()));
        let _ = registry.register(Box::new(rebalances.clone()));
        let _ = registry.register(Box::new(fetch_errors.clone()));
        KafkaMetrics {
            produce_latency,
            delivery_errors,
            rebalances,
            fetch_errors,
        }
    }
}
