//! The log's contract and the group protocol on a real Kafka-protocol
//! broker: `QUIRE_TEST_KAFKA=host:port` (`.ci/run` starts one). Set
//! `QUIRE_TEST_KAFKA_DELETE_RECORDS=1` for a broker with DeleteRecords.

use std::time::Duration;

use kafkalog::{KafkaConfig, KafkaLog, KafkaMetrics};
use oplog::{GroupEvent, OpLog};

fn broker() -> Option<String> {
    match std::env::var("QUIRE_TEST_KAFKA") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            println!("SKIPPED: no Kafka broker (set QUIRE_TEST_KAFKA=host:port)");
            None
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test.{name}.{}.{nanos}", std::process::id())
}

async fn connect(brokers: &str, topics: &[&str], partitions: u32) -> KafkaLog {
    let mut c = KafkaConfig::new(brokers);
    c.partitions = partitions;
    c.topics = topics.iter().map(|t| (t.to_string(), true)).collect();
    c.delete_records = std::env::var("QUIRE_TEST_KAFKA_DELETE_RECORDS").is_ok_and(|v| v == "1");
    KafkaLog::connect(c, KafkaMetrics::new(&prometheus::Registry::new()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_log_conforms() {
    let Some(b) = broker() else { return };
    let topic = unique("conformance");
    let log = connect(&b, &[&topic], 4).await;
    let truncation = log.can_truncate();
    oplog::conformance::check(&log, &topic, truncation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_once_and_their_partitions_read_from_metadata() {
    let Some(b) = broker() else { return };
    let topic = unique("created");
    let first = connect(&b, &[&topic], 3).await;
    assert_eq!(first.partitions(&topic).unwrap(), 3);
    // A second process asking for another count uses what exists.
    let second = connect(&b, &[&topic], 5).await;
    assert_eq!(second.partitions(&topic).unwrap(), 3);
    assert!(second.partitions("test.never.created").is_err());
}

async fn next_assignment(m: &mut oplog::Membership) -> Vec<u32> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), m.next())
            .await
            .expect("a group event within a minute")
            .expect("the member is alive")
        {
            GroupEvent::Assigned(mut ps) => {
                ps.sort_unstable();
                return ps;
            }
            GroupEvent::Revoked { done, .. } => {
                let _ = done.send(());
            }
        }
    }
}

/// Two processes in one group share the partitions; when one leaves, the
/// other owns them all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_shares_partitions_and_hands_them_on() {
    let Some(b) = broker() else { return };
    let topic = unique("group");
    let group = unique("g");
    let a = connect(&b, &[&topic], 4).await;
    let c = connect(&b, &[&topic], 4).await;
    let mut ma = a.join(&group, &topic).await.unwrap();
    assert_eq!(next_assignment(&mut ma).await, vec![0, 1, 2, 3]);
    let mut mc = c.join(&group, &topic).await.unwrap();
    // `a` is told to give up its partitions, then gets its share; `c` the rest.
    let (sa, sc) = tokio::join!(next_assignment(&mut ma), next_assignment(&mut mc));
    assert_eq!(sa.len() + sc.len(), 4, "{sa:?} + {sc:?}");
    assert!(
        sa.iter().all(|p| !sc.contains(p)),
        "{sa:?} and {sc:?} overlap"
    );
    assert!(!sa.is_empty() && !sc.is_empty(), "{sa:?} / {sc:?}");
    drop(mc);
    assert_eq!(next_assignment(&mut ma).await, vec![0, 1, 2, 3]);
}
