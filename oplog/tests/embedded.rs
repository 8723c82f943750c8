use std::time::Duration;

use oplog::{partition_for, EmbeddedLog, EmbeddedLogConfig, LogError, OpLog};

fn config(dir: &std::path::Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig::new(
        dir.to_owned(),
        vec![("t.ops".into(), 4), ("t.applied".into(), 4)],
    )
}

fn rec(key: &str, v: &str) -> (String, Vec<u8>) {
    (key.to_owned(), v.as_bytes().to_vec())
}

/// `config` with `topic` read before its sync, which waits `wait`.
fn read_before_sync(dir: &std::path::Path, topic: &str, wait: Duration) -> EmbeddedLogConfig {
    let mut c = config(dir);
    c.visible_before_sync = vec![topic.into()];
    c.sync_wait = wait;
    c
}

type Produced = tokio::task::JoinHandle<Result<Vec<(u32, u64)>, LogError>>;

/// Produces `value` (key "doc") to `t.ops` in a task of its own, and returns
/// that task once the record at `offset` is readable.
async fn written(log: &EmbeddedLog, value: &str, offset: u64) -> Produced {
    let raw = tokio::spawn({
        let (log, value) = (log.clone(), value.to_owned());
        async move { log.produce("t.ops", vec![rec("doc", &value)]).await }
    });
    let p = partition_for("doc", 4);
    let got = log
        .fetch("t.ops", p, offset, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the record is readable once written");
    raw
}

/// The log's contract (`oplog::conformance`, shared with other backends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    oplog::conformance::check(&log, "t.applied", true).await;
}

/// The same contract on a topic read before its sync (as `quire serve`
/// opens `quire.ops`): a produce alone there is answered by the writer's
/// timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_conforms_when_read_before_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let c = read_before_sync(dir.path(), "t.applied", Duration::from_millis(2));
    let log = EmbeddedLog::open(c).unwrap();
    oplog::conformance::check(&log, "t.applied", true).await;
}

/// A record of a topic read before its sync is fetched before its producer
/// is answered; the answer a reader writes to another topic then makes both
/// durable in one sync, and both producers are answered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_record_and_its_answer_share_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing syncs on a timer during the test.
    let c = read_before_sync(dir.path(), "t.ops", Duration::from_secs(600));
    let log = EmbeddedLog::open(c).unwrap();
    let p = partition_for("doc", 4);
    let syncs = log.syncs();
    let raw = written(&log, "op", 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!raw.is_finished(), "its producer waits for the sync");
    assert_eq!(log.syncs(), syncs, "nothing synced yet");
    // The answer goes to a topic readers see only once it is durable.
    let answered = log
        .produce("t.applied", vec![rec("doc", "applied")])
        .await
        .unwrap();
    assert_eq!(answered, vec![(p, 0)]);
    let raw = tokio::time::timeout(Duration::from_secs(30), raw)
        .await
        .expect("the raw producer is answered by the same sync")
        .unwrap()
        .unwrap();
    assert_eq!(raw, vec![(p, 0)]);
    assert_eq!(log.syncs(), syncs + 1, "one sync covered both");
    assert_eq!(log.high_watermark("t.applied", p).await.unwrap(), 1);
    // A position commit syncs at once too, and takes waiting records along.
    let raw = written(&log, "op2", 1).await;
    log.commit("g", "t.ops", p, 2).await.unwrap();
    let raw = tokio::time::timeout(Duration::from_secs(30), raw)
        .await
        .expect("answered by the commit's sync")
        .unwrap()
        .unwrap();
    assert_eq!(raw, vec![(p, 1)]);
    assert_eq!(log.syncs(), syncs + 2);
    // And so does a truncation.
    let raw = written(&log, "op3", 2).await;
    assert_eq!(log.delete_records("t.applied", p, 1).await.unwrap(), 1);
    let raw = tokio::time::timeout(Duration::from_secs(30), raw)
        .await
        .expect("answered by the truncation's sync")
        .unwrap()
        .unwrap();
    assert_eq!(raw, vec![(p, 2)]);
    assert_eq!(log.syncs(), syncs + 3);
}

/// A record read before its sync with nothing written after it is synced
/// when its wait is over, and its producer answered then.
#[tokio::test]
async fn a_raw_record_alone_is_synced_when_its_wait_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let c = read_before_sync(dir.path(), "t.ops", Duration::from_millis(200));
    let log = EmbeddedLog::open(c).unwrap();
    let syncs = log.syncs();
    let t0 = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(30),
        log.produce("t.ops", vec![rec("doc", "op")]),
    )
    .await
    .expect("answered when its wait is over")
    .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(log.syncs(), syncs + 1);
}

/// Closing the log syncs what waits for a sync: a raw record whose producer
/// went away is there after a reopen, and the drop does not wait out the
/// sync's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_log_keeps_a_record_waiting_for_its_sync() {
    let dir = tempfile::tempdir().unwrap();
    let c = read_before_sync(dir.path(), "t.ops", Duration::from_secs(600));
    let log = EmbeddedLog::open(c).unwrap();
    let p = partition_for("doc", 4);
    let raw = written(&log, "op", 0).await;
    raw.abort();
    let _ = raw.await;
    let syncs = log.sync_counter();
    let before = syncs.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    tokio::task::spawn_blocking(move || drop(log))
        .await
        .unwrap();
    assert_eq!(
        syncs.load(std::sync::atomic::Ordering::Relaxed),
        before + 1,
        "the close synced the record"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(300),
        "the drop waited for the sync's wait"
    );
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    assert_eq!(log.high_watermark("t.ops", p).await.unwrap(), 1);
    let got = log.fetch("t.ops", p, 0, 10, Duration::ZERO).await.unwrap();
    assert_eq!(got[0].value, b"op");
}

/// Naming a topic the log does not have as read before its sync is refused.
#[tokio::test]
async fn an_unknown_topic_read_before_its_sync_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = read_before_sync(dir.path(), "t.opz", Duration::from_millis(2));
    assert!(matches!(
        EmbeddedLog::open(c).err(),
        Some(LogError::UnknownTopic { topic }) if topic == "t.opz"
    ));
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
    // Dropping the log closed its database: no wait before reopening.
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

/// Truncated records are deleted from the database (not just hidden), and
/// a quiet partition's records and every partition's start survive a
/// reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_records_are_deleted_and_the_rest_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let busy = "busy";
    let quiet = (0..100)
        .map(|i| format!("quiet-{i}"))
        .find(|k| partition_for(k, 4) != partition_for(busy, 4))
        .unwrap();
    let quiet = quiet.as_str();
    let (pb, pq) = (partition_for(busy, 4), partition_for(quiet, 4));
    let big = "x".repeat(64 << 10);
    {
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        log.produce(
            "t.ops",
            vec![rec(quiet, "q0"), rec(quiet, "q1"), rec(quiet, "q2")],
        )
        .await
        .unwrap();
        // ~20 MiB through the busy partition, truncated as it goes.
        for i in 0..320u64 {
            log.produce("t.ops", vec![rec(busy, &big)]).await.unwrap();
            if i % 16 == 15 {
                log.delete_records("t.ops", pb, i).await.unwrap();
            }
        }
        // 3 quiet records, and the busy partition's last.
        assert_eq!(log.stored_records().unwrap(), 3 + 1);
    }
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    assert_eq!(log.stored_records().unwrap(), 3 + 1);
    let q = log.fetch("t.ops", pq, 0, 10, Duration::ZERO).await.unwrap();
    let values: Vec<&[u8]> = q.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values, [b"q0".as_slice(), b"q1", b"q2"]);
    assert_eq!(log.log_start("t.ops", pb).await.unwrap(), 319);
    assert_eq!(log.high_watermark("t.ops", pb).await.unwrap(), 320);
    let b = log
        .fetch("t.ops", pb, 319, 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].offset, 319);
    assert_eq!(b[0].value.len(), big.len());
    assert!(matches!(
        log.fetch("t.ops", pb, 318, 10, Duration::ZERO).await,
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

/// 1 kB records of random letters, from `seed`: not compressible, so the
/// tables' size is the records' size.
fn noise(seed: u64) -> impl FnMut() -> String {
    let mut state = seed;
    move || {
        (0..1000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'a' + (state >> 59) as u8 % 26)
            })
            .collect()
    }
}

/// Waits (30 s at most) for the log's tables to take under `bytes`.
async fn until_space_below(log: &EmbeddedLog, bytes: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let space = log.records_disk_space();
        if space < bytes {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "records still take {space} bytes on disk"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The space of deleted records comes back: once most of the log is
/// truncated, what is left is rewritten without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_of_truncated_records_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    let p = partition_for("k", 4);
    let mut noise = noise(1);
    for _ in 0..60 {
        let batch: Vec<_> = (0..500).map(|_| rec("k", &noise())).collect();
        log.produce("t.ops", batch).await.unwrap();
    }
    // 30,000 records of 1 kB: 30 MB.
    log.delete_records("t.ops", p, 29_900).await.unwrap();
    until_space_below(&log, 4 << 20).await;
    let left = log
        .fetch("t.ops", p, 29_900, 1000, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(left.len(), 100);
}

/// Truncations before a restart count toward reclaiming space: two
/// truncations of 9,900 records each, one before and one after a reopen,
/// are each under the 10,000 a reclaim waits for, together over it (and
/// over twice the 1,200 records left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncations_before_a_restart_count_toward_reclaiming() {
    let dir = tempfile::tempdir().unwrap();
    let p = partition_for("k", 4);
    let mut noise = noise(7);
    {
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        for _ in 0..42 {
            let batch: Vec<_> = (0..500).map(|_| rec("k", &noise())).collect();
            log.produce("t.ops", batch).await.unwrap();
        }
        // 21,000 records of 1 kB.
        log.delete_records("t.ops", p, 9_900).await.unwrap();
    }
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    // The records reach the tables (fjall flushes on its own threads), or
    // the shrinking below would prove nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.records_disk_space() <= 8 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the records never reached the tables"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log.delete_records("t.ops", p, 19_800).await.unwrap();
    until_space_below(&log, 4 << 20).await;
    let left = log
        .fetch("t.ops", p, 19_800, 2000, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(left.len(), 1_200);
}

/// A log written by earlier versions (one redb file) is moved into the log
/// database on open (through the segment files of the release between):
/// records, offsets, starts and consumer positions.
#[tokio::test]
async fn a_redb_log_from_earlier_versions_is_migrated() {
    use redb::TableDefinition;
    const RECORDS: TableDefinition<(&str, u32, u64), (&str, &[u8])> =
        TableDefinition::new("records");
    const PARTS: TableDefinition<(&str, u32), (u64, u64)> = TableDefinition::new("partitions");
    const GROUPS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("groups");
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join("log.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut parts = w.open_table(PARTS).unwrap();
            let mut records = w.open_table(RECORDS).unwrap();
            for topic in ["t.ops", "t.applied"] {
                for p in 0..4u32 {
                    // Partition 2 of t.ops: offsets 3..7 left after truncation.
                    let (next, start) = if topic == "t.ops" && p == 2 {
                        (7, 3)
                    } else {
                        (0, 0)
                    };
                    parts.insert((topic, p), (next, start)).unwrap();
                    for o in start..next {
                        let v = format!("r{o}");
                        records
                            .insert((topic, p, o), ("doc", v.as_bytes()))
                            .unwrap();
                    }
                }
            }
            w.open_table(GROUPS)
                .unwrap()
                .insert(("g", "t.ops", 2), 5)
                .unwrap();
        }
        w.commit().unwrap();
    }
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    assert!(dir.path().join("log.redb.migrated").exists());
    assert!(!dir.path().join("log.redb").exists());
    assert!(dir.path().join("segments.migrated/00000001.wal").exists());
    assert!(!dir.path().join("00000001.wal").exists());
    assert_eq!(log.log_start("t.ops", 2).await.unwrap(), 3);
    assert_eq!(log.high_watermark("t.ops", 2).await.unwrap(), 7);
    assert_eq!(log.committed("g", "t.ops", 2).await.unwrap(), Some(5));
    let got = log.fetch("t.ops", 2, 3, 10, Duration::ZERO).await.unwrap();
    let values: Vec<String> = got
        .iter()
        .map(|r| format!("{}:{}", r.offset, String::from_utf8_lossy(&r.value)))
        .collect();
    assert_eq!(values, ["3:r3", "4:r4", "5:r5", "6:r6"]);
    assert_eq!(log.high_watermark("t.applied", 1).await.unwrap(), 0);
    // It appends on from there.
    assert_eq!(
        log.append_with_sequence("t.ops", 2, "p", 0, vec![rec("doc", "r7")])
            .await
            .unwrap(),
        7
    );
    drop(log);
    // A log.redb appearing beside the database again (an older version
    // run on the folder) is refused, not migrated over the log.
    drop(redb::Database::create(dir.path().join("log.redb")).unwrap());
    let err = EmbeddedLog::open(config(dir.path())).err();
    assert!(
        matches!(&err, Some(LogError::Storage(m)) if m.contains("move log.redb away")),
        "{:?}",
        err.map(|e| e.to_string())
    );
}

/// A seeded run of appends, truncations and reopens (big records, so
/// memtables flush and tables compact): after every step the log holds
/// exactly the model's records from each partition's start on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopens_and_truncations_keep_every_live_record() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..6).map(|i| format!("doc-{i}")).collect();
    // Per partition: (start, values by offset).
    let mut model: Vec<(u64, Vec<String>)> = vec![(0, Vec::new()); 4];
    let mut state = 7u64;
    let mut rand = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut log = EmbeddedLog::open(config(dir.path())).unwrap();
    for step in 0..400 {
        match rand(20) {
            0 => {
                drop(log);
                log = EmbeddedLog::open(config(dir.path())).unwrap();
            }
            1..=3 => {
                let p = rand(4) as u32;
                let (start, values) = &mut model[p as usize];
                let hw = values.len() as u64;
                let before = hw.saturating_sub(rand(4));
                let got = log.delete_records("t.ops", p, before).await.unwrap();
                *start = (*start).max(before.min(hw));
                assert_eq!(got, *start, "step {step}");
            }
            _ => {
                let key = &keys[rand(keys.len() as u64) as usize];
                let p = partition_for(key, 4);
                let size = if rand(3) == 0 { 300_000 } else { 20 };
                let v = format!("{step}-{}", "x".repeat(size));
                let placed = log.produce("t.ops", vec![rec(key, &v)]).await.unwrap();
                let values = &mut model[p as usize].1;
                assert_eq!(placed, vec![(p, values.len() as u64)]);
                values.push(v);
            }
        }
        for (p, (start, values)) in model.iter().enumerate() {
            let p = p as u32;
            assert_eq!(
                log.log_start("t.ops", p).await.unwrap(),
                *start,
                "step {step}"
            );
            assert_eq!(
                log.high_watermark("t.ops", p).await.unwrap(),
                values.len() as u64
            );
            let got = log
                .fetch("t.ops", p, *start, 1000, Duration::ZERO)
                .await
                .unwrap();
            let got: Vec<&[u8]> = got.iter().map(|r| r.value.as_slice()).collect();
            let want: Vec<&[u8]> = values[*start as usize..]
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            assert!(
                got == want,
                "step {step}: partition {p} differs from the model"
            );
        }
    }
}
