//! The log's contract, written once, for every backend: the embedded log
//! always, a Kafka-protocol broker when one is reachable. It takes a topic
//! with at least two partitions that nothing else writes, and a flag for
//! the one capability a backend may lack (DeleteRecords).

use std::time::Duration;

use crate::{partition_for, LogError, OpLog, Partition};

fn rec(key: &str, v: &str) -> (String, Vec<u8>) {
    (key.to_owned(), v.as_bytes().to_vec())
}

/// Two different keys that land on the same partition of `n`.
fn keys_sharing_a_partition(n: u32) -> (String, String, Partition) {
    let a = "doc-a".to_owned();
    let p = partition_for(&a, n);
    let b = (0..1000)
        .map(|i| format!("doc-{i}"))
        .find(|k| k != &a && partition_for(k, n) == p)
        .expect("some key shares the partition");
    (a, b, p)
}

/// Panics with a message naming the broken promise.
pub async fn check(log: &dyn OpLog, topic: &str, truncation: bool) {
    assert_eq!(log.can_truncate(), truncation, "truncation capability");
    let n = log.partitions(topic).expect("the topic exists");
    assert!(n >= 2, "the suite needs at least two partitions");
    assert!(
        log.partitions("no.such.topic").is_err(),
        "an unknown topic is an error"
    );
    for p in 0..n {
        assert_eq!(
            log.high_watermark(topic, p).await.unwrap(),
            0,
            "a fresh topic"
        );
    }

    // Keyed produce: Kafka's partitioner; offsets shared by the keys of a
    // partition; results in input order.
    let (a, b, p) = keys_sharing_a_partition(n);
    let other = (0..1000)
        .map(|i| format!("x-{i}"))
        .find(|k| partition_for(k, n) != p)
        .unwrap();
    let q = partition_for(&other, n);
    let out = log
        .produce(
            topic,
            vec![rec(&a, "1"), rec(&other, "o"), rec(&b, "2"), rec(&a, "3")],
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![(p, 0), (q, 0), (p, 1), (p, 2)],
        "partitions and offsets"
    );
    assert_eq!(log.high_watermark(topic, p).await.unwrap(), 3);
    assert_eq!(log.high_watermark(topic, q).await.unwrap(), 1);
    let got: Vec<_> = log
        .fetch(topic, p, 0, 10, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.key, r.value))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, a.clone(), b"1".to_vec()),
            (1, b.clone(), b"2".to_vec()),
            (2, a.clone(), b"3".to_vec())
        ],
        "fetch returns what was produced, in order"
    );
    let page = log.fetch(topic, p, 1, 1, Duration::ZERO).await.unwrap();
    assert_eq!(
        page.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [1],
        "from and max"
    );

    // Long poll: a fetch at the end waits for the next record, and returns
    // empty when none comes.
    let empty = log
        .fetch(topic, q, 1, 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(empty.is_empty(), "nothing new: empty after the wait");
    let (late, _) = tokio::join!(log.fetch(topic, q, 1, 10, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.produce(topic, vec![rec(&other, "late")]).await.unwrap();
    });
    let late = late.unwrap();
    assert_eq!(
        late.iter()
            .map(|r| (r.offset, r.value.clone()))
            .collect::<Vec<_>>(),
        [(1, b"late".to_vec())],
        "a waiting fetch sees the record produced meanwhile"
    );

    // Many concurrent producers: every record once, each key in order.
    let mut tasks = Vec::new();
    for w in 0..8 {
        tasks.push(async move {
            let key = format!("writer-{w}");
            let mut offsets = Vec::new();
            for i in 0..25 {
                let out = log
                    .produce(topic, vec![rec(&key, &i.to_string())])
                    .await
                    .unwrap();
                offsets.push(out[0]);
            }
            (key, offsets)
        });
    }
    let written = futures_join_all(tasks).await;
    for (key, offsets) in &written {
        assert!(
            offsets
                .windows(2)
                .all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1),
            "{key}: one partition, increasing offsets"
        );
        for (i, (p, o)) in offsets.iter().enumerate() {
            let r = log.fetch(topic, *p, *o, 1, Duration::ZERO).await.unwrap();
            assert_eq!(
                (r[0].key.as_str(), r[0].value.clone()),
                (key.as_str(), i.to_string().into_bytes()),
                "{key}: record {i} at {p}/{o}"
            );
        }
    }

    // Consumer positions: per group, topic and partition; moved only by
    // their group.
    assert_eq!(log.committed("g1", topic, p).await.unwrap(), None);
    log.commit("g1", topic, p, 2).await.unwrap();
    log.commit("g2", topic, p, 1).await.unwrap();
    assert_eq!(log.committed("g1", topic, p).await.unwrap(), Some(2));
    assert_eq!(log.committed("g2", topic, p).await.unwrap(), Some(1));
    assert_eq!(log.committed("g1", topic, q).await.unwrap(), None);
    log.commit("g1", topic, p, 3).await.unwrap();
    assert_eq!(log.committed("g1", topic, p).await.unwrap(), Some(3));

    // Truncation, where the backend has it.
    if truncation {
        let hw = log.high_watermark(topic, p).await.unwrap();
        assert_eq!(log.log_start(topic, p).await.unwrap(), 0);
        assert_eq!(log.delete_records(topic, p, 2).await.unwrap(), 2);
        assert_eq!(log.log_start(topic, p).await.unwrap(), 2);
        assert_eq!(
            log.delete_records(topic, p, 1).await.unwrap(),
            2,
            "never backwards"
        );
        let below = log.fetch(topic, p, 1, 10, Duration::ZERO).await;
        assert!(
            matches!(below, Err(LogError::OffsetOutOfRange { log_start: 2, .. })),
            "a fetch below the log start: {below:?}"
        );
        let kept = log.fetch(topic, p, 2, 10, Duration::ZERO).await.unwrap();
        assert_eq!(kept.first().map(|r| r.offset), Some(2));
        assert_eq!(
            log.high_watermark(topic, p).await.unwrap(),
            hw,
            "truncation keeps the end"
        );
        let next = log.produce(topic, vec![rec(&a, "after")]).await.unwrap();
        assert_eq!(next, vec![(p, hw)], "offsets go on after truncation");
    } else {
        // Without the capability nothing is deleted, and nothing is sent.
        assert_eq!(log.delete_records(topic, p, 2).await.unwrap(), 0);
        assert_eq!(log.log_start(topic, p).await.unwrap(), 0);
        let all = log.fetch(topic, p, 0, 10, Duration::ZERO).await.unwrap();
        assert_eq!(all.first().map(|r| r.offset), Some(0), "every record kept");
    }
    // A group's only member owns every partition.
    let mut member = log.join("conformance-group", topic).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), member.next())
        .await
        .expect("a lone member is assigned partitions within a minute");
    match first {
        Some(crate::GroupEvent::Assigned(mut ps)) => {
            ps.sort_unstable();
            assert_eq!(ps, (0..n).collect::<Vec<_>>(), "a lone member owns all");
        }
        other => panic!("first group event: {other:?}"),
    }
    // Its commits are the group's positions.
    log.commit("conformance-group", topic, p, 2).await.unwrap();
    assert_eq!(
        log.committed("conformance-group", topic, p).await.unwrap(),
        Some(2)
    );
    drop(member);
    log.ping().await.unwrap();
}

/// Runs the futures concurrently on this task (no spawning: they borrow).
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}
