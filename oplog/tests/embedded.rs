use std::time::Duration;

use oplog::{partition_for, EmbeddedLog, EmbeddedLogConfig, LogError, OpLog};

fn config(dir: &std::path::Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        dir: dir.to_owned(),
        topics: vec![("t.ops".into(), 4), ("t.applied".into(), 4)],
    }
}

fn rec(key: &str, v: &str) -> (String, Vec<u8>) {
    (key.to_owned(), v.as_bytes().to_vec())
}

/// The log's contract (`oplog::conformance`, shared with other backends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    oplog::conformance::check(&log, "t.applied", true).await;
}

#[tokio::test]
async fn a_retried_batch_is_not_appended_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    let first = log
        .append_with_sequence("t.ops", 0, "p1", 0, vec![rec("k", "a"), rec("k", "b")])
        .await
        .unwrap();
    let again = log
        .append_with_sequence("t.ops", 0, "p1", 0, vec![rec("k", "a"), rec("k", "b")])
        .await
        .unwrap();
    assert_eq!(first, again, "a retry answers the original offset");
    assert_eq!(
        log.high_watermark("t.ops", 0).await.unwrap(),
        2,
        "and appends nothing"
    );
    // Another producer interleaves; p1 continues its own sequence.
    log.append_with_sequence("t.ops", 0, "p2", 0, vec![rec("k", "x")])
        .await
        .unwrap();
    assert_eq!(
        log.append_with_sequence("t.ops", 0, "p1", 2, vec![rec("k", "c")])
            .await
            .unwrap(),
        3
    );
    let gap = log
        .append_with_sequence("t.ops", 0, "p1", 9, vec![rec("k", "d")])
        .await;
    assert!(
        matches!(
            gap,
            Err(LogError::OutOfOrderSequence {
                expected: 3,
                got: 9,
                ..
            })
        ),
        "{gap:?}"
    );
    assert_eq!(log.high_watermark("t.ops", 0).await.unwrap(), 4);
}

#[tokio::test]
async fn delete_records_and_consumer_positions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = partition_for("k", 4);
    {
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        let recs = (0..10).map(|i| rec("k", &i.to_string())).collect();
        log.produce("t.ops", recs).await.unwrap();
        log.commit("g", "t.ops", p, 7).await.unwrap();
        assert_eq!(log.delete_records("t.ops", p, 5).await.unwrap(), 5);
        assert_eq!(
            log.delete_records("t.ops", p, 2).await.unwrap(),
            5,
            "never backwards"
        );
        let err = log.fetch("t.ops", p, 3, 10, Duration::ZERO).await;
        assert!(
            matches!(err, Err(LogError::OffsetOutOfRange { log_start: 5, .. })),
            "{err:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // let the old writer thread exit
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    assert_eq!(log.log_start("t.ops", p).await.unwrap(), 5);
    assert_eq!(log.high_watermark("t.ops", p).await.unwrap(), 10);
    assert_eq!(log.committed("g", "t.ops", p).await.unwrap(), Some(7));
    assert_eq!(log.committed("other", "t.ops", p).await.unwrap(), None);
    let got = log.fetch("t.ops", p, 5, 100, Duration::ZERO).await.unwrap();
    assert_eq!(got.first().unwrap().value, b"5".to_vec());
    assert_eq!(got.len(), 5);
    // Offsets keep counting after a reopen.
    assert_eq!(
        log.produce("t.ops", vec![rec("k", "x")]).await.unwrap(),
        vec![(p, 10)]
    );
}

#[tokio::test]
async fn reopening_with_other_partition_counts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Dropping the log lets go of its file at once (no sleep needed).
    drop(EmbeddedLog::open(config(dir.path())).unwrap());
    let mut c = config(dir.path());
    c.topics[0].1 = 3;
    assert!(matches!(
        EmbeddedLog::open(c),
        Err(LogError::PartitionMismatch { .. })
    ));
}
