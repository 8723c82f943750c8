//! The store's contract, written once and run against every backend (the
//! embedded store always; others when their server is reachable).

use protocol::{AppliedRecord, ClientEntry, Snapshot};

use crate::{Store, KEEP_SNAPSHOTS, SNAPSHOT_CHUNK};

/// An applied record of `doc` at `seq` by `client` with `cseq`.
pub fn record(doc: &str, seq: u64, client: &str, cseq: u64) -> AppliedRecord {
    AppliedRecord {
        v: 1,
        doc: doc.into(),
        seq,
        prev: seq.saturating_sub(1),
        client: client.into(),
        cseq,
        base: 0,
        user: "u".into(),
        ts: seq as i64,
        op: ot::Op::splice(0, 0, "x"),
        del: vec![],
        hash: None,
    }
}

fn seqs(v: Vec<AppliedRecord>) -> Vec<u64> {
    v.iter().map(|r| r.seq).collect()
}

/// Panics with a message naming the broken promise.
pub async fn check(s: &dyn Store) {
    // History: by seq, paged both ways, idempotent, per document.
    let rows: Vec<_> = [2, 5, 9, 12]
        .iter()
        .map(|&q| record("d", q, "c", q))
        .collect();
    s.put_history(&rows).await.unwrap();
    s.put_history(&[record("d2", 3, "c", 1)]).await.unwrap();
    s.put_history(&rows[..1]).await.unwrap(); // idempotent
    assert_eq!(seqs(s.history("d", 0, 10).await.unwrap()), [2, 5, 9, 12]);
    assert_eq!(seqs(s.history("d", 5, 2).await.unwrap()), [9, 12]);
    assert_eq!(
        seqs(s.history("d", 12, 2).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(s.history("d", u64::MAX, 2).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(seqs(s.history_before("d", 12, 2).await.unwrap()), [5, 9]);
    assert_eq!(seqs(s.history_before("d", 3, 10).await.unwrap()), [2]);
    assert_eq!(seqs(s.history("d2", 0, 10).await.unwrap()), [3]);
    // The documents with history, in order, paged.
    assert_eq!(s.documents("", 10).await.unwrap(), ["d", "d2"]);
    assert_eq!(s.documents("", 1).await.unwrap(), ["d"]);
    assert_eq!(s.documents("d", 10).await.unwrap(), ["d2"]);
    assert!(s.documents("d2", 10).await.unwrap().is_empty());
    assert_eq!(
        s.history("d", 0, 10).await.unwrap()[1],
        rows[1],
        "rows round-trip"
    );

    // Ops by id, through the index.
    assert_eq!(
        s.find_op("d", "c", 9).await.unwrap().map(|r| r.seq),
        Some(9)
    );
    assert_eq!(
        s.find_op("d2", "c", 1).await.unwrap().map(|r| r.seq),
        Some(3)
    );
    assert!(s.find_op("d", "c", 7).await.unwrap().is_none());
    assert!(s.find_op("d", "other", 9).await.unwrap().is_none());
    assert!(s.find_op("d3", "c", 9).await.unwrap().is_none());

    // Any u64 cseq: lookups never confuse two of them.
    let huge = [
        record("d4", 1, "h", u64::MAX),
        record("d4", 2, "h", u64::MAX - 1),
        record("d4", 3, "h", 1 << 63),
    ];
    s.put_history(&huge).await.unwrap();
    for r in &huge {
        assert_eq!(
            s.find_op("d4", "h", r.cseq).await.unwrap().map(|f| f.seq),
            Some(r.seq),
            "cseq {}",
            r.cseq
        );
    }
    assert!(s.find_op("d4", "h", (1 << 63) + 1).await.unwrap().is_none());
    assert_eq!(s.history("d4", 0, usize::MAX).await.unwrap().len(), 3);

    // Snapshots: newest at or before a version.
    assert!(s
        .snapshot_at_or_before("d", u64::MAX)
        .await
        .unwrap()
        .is_none());
    for seq in [5, 12] {
        s.put_snapshot(&Snapshot {
            doc: "d".into(),
            seq,
            text: format!("t{seq}"),
            clients: vec![ClientEntry {
                client: "c".into(),
                user: "u".into(),
                cseq: seq,
                seq,
            }],
            hash: None,
        })
        .await
        .unwrap();
    }
    let latest = s
        .snapshot_at_or_before("d", u64::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((latest.seq, latest.text.as_str()), (12, "t12"));
    assert_eq!(latest.clients[0].cseq, 12);
    assert_eq!(
        s.snapshot_at_or_before("d", 11).await.unwrap().unwrap().seq,
        5
    );
    assert!(s.snapshot_at_or_before("d", 4).await.unwrap().is_none());
    assert!(s
        .snapshot_at_or_before("d2", u64::MAX)
        .await
        .unwrap()
        .is_none());
    // Only the newest KEEP_SNAPSHOTS of a document stay.
    for seq in [20, 30] {
        s.put_snapshot(&Snapshot {
            doc: "d".into(),
            seq,
            text: format!("t{seq}"),
            clients: vec![],
            hash: None,
        })
        .await
        .unwrap();
    }
    assert_eq!(KEEP_SNAPSHOTS, 3);
    assert!(
        s.snapshot_at_or_before("d", 11).await.unwrap().is_none(),
        "the oldest snapshot is dropped"
    );
    for (at, want) in [(12, 12), (25, 20), (u64::MAX, 30)] {
        assert_eq!(
            s.snapshot_at_or_before("d", at).await.unwrap().unwrap().seq,
            want
        );
    }

    // A snapshot larger than a row: chunked and put back together, and a
    // smaller rewrite of it leaves no stale chunk behind.
    let big: String = (0..SNAPSHOT_CHUNK * 5 / 2)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect::<String>()
        + "😀é";
    let snap = Snapshot {
        doc: "big".into(),
        seq: 40,
        text: big.clone(),
        clients: vec![],
        hash: None,
    };
    s.put_snapshot(&snap).await.unwrap();
    assert_eq!(
        s.snapshot_at_or_before("big", 40).await.unwrap(),
        Some(snap)
    );
    let small = Snapshot {
        doc: "big".into(),
        seq: 40,
        text: "small".into(),
        clients: vec![],
        hash: None,
    };
    s.put_snapshot(&small).await.unwrap();
    assert_eq!(
        s.snapshot_at_or_before("big", 99).await.unwrap(),
        Some(small)
    );
    s.ping().await.unwrap();
}
