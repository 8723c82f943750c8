//! The producer under broker trouble, on librdkafka's mock cluster (three
//! brokers in-process, with error injection): retried produce requests,
//! leader changes and a broker lost mid-stream never lose, duplicate or
//! reorder a record.

use std::collections::HashMap;
use std::time::Duration;

use kafkalog::{KafkaConfig, KafkaLog, KafkaMetrics};
use oplog::OpLog;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPIC: &str = "quire.ops";
const PARTITIONS: u32 = 4;

async fn log_on(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) -> KafkaLog {
    log_with(cluster, vec![]).await
}

async fn log_with(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    extra: Vec<(String, String)>,
) -> KafkaLog {
    let mut c = KafkaConfig::new(&cluster.bootstrap_servers());
    c.extra = extra;
    // The mock cluster's topics are made with `create_topic`.
    c.create_topics = false;
    c.topics = vec![(TOPIC.into(), true)];
    KafkaLog::connect(c, KafkaMetrics::new(&prometheus::Registry::new()))
        .await
        .unwrap()
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS as i32, 3).unwrap();
    cluster
}

/// Produces `n` records per key, one batch of all keys at a time, while
/// `trouble(i)` runs before batch `i`.
async fn produce_through(log: &KafkaLog, n: usize, mut trouble: impl FnMut(usize)) {
    for i in 0..n {
        trouble(i);
        let batch: Vec<(String, Vec<u8>)> = (0..8)
            .map(|k| (format!("doc-{k}"), format!("{k}:{i}").into_bytes()))
            .collect();
        let out = tokio::time::timeout(Duration::from_secs(60), log.produce(TOPIC, batch))
            .await
            .expect("produce finishes")
            .expect("produce succeeds despite the trouble");
        assert_eq!(out.len(), 8);
    }
}

/// Every record of the topic, by key, in order: `key -> [i]` from the
/// `"{k}:{i}"` values.
async fn read_all(log: &KafkaLog) -> HashMap<String, Vec<usize>> {
    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for p in 0..PARTITIONS {
        let mut from = 0;
        loop {
            let batch = log
                .fetch(TOPIC, p, from, 1000, Duration::ZERO)
                .await
                .unwrap();
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            for r in batch {
                let v = String::from_utf8(r.value).unwrap();
                let (_, i) = v.split_once(':').unwrap();
                per_key.entry(r.key).or_default().push(i.parse().unwrap());
            }
        }
    }
    per_key
}

/// Every key's records are exactly `expected`: each once, in order.
async fn assert_each_key_saw(log: &KafkaLog, expected: &[usize]) {
    let per_key = read_all(log).await;
    assert_eq!(per_key.len(), 8, "every key");
    for (k, seen) in per_key {
        assert_eq!(seen, expected, "{k}: every record once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_produce_requests_append_each_record_once() {
    let cluster = cluster();
    let log = log_on(&cluster).await;
    produce_through(&log, 30, |i| {
        if i % 5 == 2 {
            // The next produce requests fail with retriable errors; the
            // idempotent producer retries them (the broker may have
            // written the first attempt already).
            cluster.request_errors(
                RDKafkaApiKey::Produce,
                &[
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                ],
            );
        }
    })
    .await;
    assert_each_key_saw(&log, &(0..30).collect::<Vec<_>>()).await;
}

/// The broker's answers come after the producer's request timeout: the
/// producer sends again, and every record still lands once, in order.
/// (The mock cluster did not duplicate records here even with idempotence
/// off, so this guards loss and order under retries, not the dedup itself;
/// the broker's sequence check is Kafka's promise, see the closing note.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_whose_answer_is_late_is_appended_once() {
    let cluster = cluster();
    for p in 0..PARTITIONS as i32 {
        cluster.partition_leader(TOPIC, p, Some(1)).unwrap();
    }
    let log = log_with(&cluster, vec![("request.timeout.ms".into(), "600".into())]).await;
    produce_through(&log, 5, |_| {}).await;
    cluster
        .broker_round_trip_time(1, Duration::from_millis(1000))
        .unwrap();
    let slow = tokio::spawn(async move {
        produce_through(&log, 5, |_| {}).await;
        log
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    let log = slow.await.unwrap();
    let expected: Vec<usize> = (0..5).chain(0..5).collect();
    assert_each_key_saw(&log, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_changes_mid_stream_lose_and_duplicate_nothing() {
    let cluster = cluster();
    let log = log_on(&cluster).await;
    produce_through(&log, 30, |i| {
        if i % 4 == 1 {
            for p in 0..PARTITIONS as i32 {
                cluster
                    .partition_leader(TOPIC, p, Some(1 + (i as i32 + p) % 3))
                    .unwrap();
            }
        }
    })
    .await;
    assert_each_key_saw(&log, &(0..30).collect::<Vec<_>>()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_lost_and_back_loses_nothing() {
    let cluster = cluster();
    let log = log_on(&cluster).await;
    for p in 0..PARTITIONS as i32 {
        cluster.partition_leader(TOPIC, p, Some(1)).unwrap();
    }
    produce_through(&log, 10, |_| {}).await;
    // The leader goes away; the partitions move to another broker while it
    // is down, and it comes back later.
    cluster.broker_down(1).unwrap();
    for p in 0..PARTITIONS as i32 {
        cluster.partition_leader(TOPIC, p, Some(2)).unwrap();
    }
    let more = tokio::spawn(async move {
        produce_through(&log, 30, |_| {}).await;
        log
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.broker_up(1).unwrap();
    let log = more.await.unwrap();
    // 10 before and 30 after: keys restart at 0 in the second run.
    let expected: Vec<usize> = (0..10).chain(0..30).collect();
    assert_each_key_saw(&log, &expected).await;
}
