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

#[tokio::test]
async fn offsets_are_shared_by_the_keys_of_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    // Find two keys on one partition.
    let a = "doc-a".to_owned();
    let p = partition_for(&a, 4);
    let b = (0..100)
        .map(|i| format!("doc-{i}"))
        .find(|k| k != &a && partition_for(k, 4) == p)
        .unwrap();
    let out = log
        .produce("t.ops", vec![rec(&a, "1"), rec(&b, "2"), rec(&a, "3")])
        .await
        .unwrap();
    assert_eq!(out, vec![(p, 0), (p, 1), (p, 2)]);
    let got = log.fetch("t.ops", p, 0, 10, Duration::ZERO).await.unwrap();
    let vals: Vec<_> = got
        .iter()
        .map(|r| (r.offset, r.key.clone(), r.value.clone()))
        .collect();
    assert_eq!(
        vals,
        vec![
            (0, a.clone(), b"1".to_vec()),
            (1, b, b"2".to_vec()),
            (2, a, b"3".to_vec())
        ]
    );
    assert_eq!(log.high_watermark("t.ops", p).await.unwrap(), 3);
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
async fn fetch_waits_for_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    let p = partition_for("k", 4);
    let reader = {
        let log = log.clone();
        tokio::spawn(async move { log.fetch("t.ops", p, 0, 10, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.produce("t.ops", vec![rec("k", "late")]).await.unwrap();
    let got = reader.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert!(log
        .fetch("t.ops", p, 1, 10, Duration::from_millis(20))
        .await
        .unwrap()
        .is_empty());
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
async fn concurrent_producers_share_commits_and_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("writer-{w}");
            let mut offsets = Vec::new();
            for i in 0..50 {
                let out = log
                    .produce("t.ops", vec![rec(&key, &i.to_string())])
                    .await
                    .unwrap();
                offsets.push(out[0].1);
            }
            (key, offsets)
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (key, offsets) = t.await.unwrap();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{key}: offsets out of order"
        );
        total += offsets.len();
    }
    let mut seen = 0;
    for p in 0..4 {
        seen += log.high_watermark("t.ops", p).await.unwrap() as usize;
    }
    assert_eq!(seen, total);
}

#[tokio::test]
async fn reopening_with_other_partition_counts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedLog::open(config(dir.path())).unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = config(dir.path());
    c.topics[0].1 = 3;
    assert!(matches!(
        EmbeddedLog::open(c),
        Err(LogError::PartitionMismatch { .. })
    ));
}
