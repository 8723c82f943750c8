//! Which log the scenarios run on: the embedded log, or the broker that
//! `.ci/run` starts (`QUIRE_TEST_LOG=kafka`, `QUIRE_TEST_KAFKA=host:port`).
//! The scenarios are written once and `.ci/run` runs them on both.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{KafkaConfig, KafkaLog, KafkaMetrics};
use oplog::{EmbeddedLog, EmbeddedLogConfig, OpLog};

/// The broker to run on, when the run asks for one.
pub fn kafka() -> Option<String> {
    if std::env::var("QUIRE_TEST_LOG").as_deref() != Ok("kafka") {
        return None;
    }
    Some(
        std::env::var("QUIRE_TEST_KAFKA")
            .expect("QUIRE_TEST_LOG=kafka needs QUIRE_TEST_KAFKA=host:port"),
    )
}

/// A topic prefix no other test or run uses (`quire.` on the embedded log,
/// whose folder is the test's own).
pub fn topic_prefix() -> String {
    if kafka().is_none() {
        return "quire.".into();
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}-{}-{}.",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A log with `{prefix}ops`, `{prefix}applied` and `{prefix}presence` of
/// `partitions` partitions: embedded under `dir`, or on the broker.
pub async fn open_log(dir: &Path, prefix: &str, partitions: u32) -> Arc<dyn OpLog> {
    let topics: Vec<String> = ["ops", "applied", "presence"]
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();
    match kafka() {
        None => Arc::new(
            EmbeddedLog::open({
                // As `quire serve` opens it: the transformer reads raw
                // records before their sync.
                let mut c = EmbeddedLogConfig::new(
                    dir.join("log"),
                    topics.iter().map(|t| (t.clone(), partitions)).collect(),
                );
                c.visible_before_sync = vec![topics[0].clone()];
                c
            })
            .expect("an embedded log in a fresh folder"),
        ),
        Some(brokers) => {
            let mut c = KafkaConfig::new(&brokers);
            c.partitions = partitions;
            c.topics = topics.into_iter().map(|t| (t, true)).collect();
            Arc::new(
                KafkaLog::connect(c, KafkaMetrics::new(&prometheus::Registry::new()))
                    .await
                    .expect("the test broker answers"),
            )
        }
    }
}
