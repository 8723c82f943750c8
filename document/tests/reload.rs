//! A reloaded document has the state a warm copy has — text, window and
//! dedup table — whatever the snapshot it starts from holds (SPEC §12.5).

use document::{load, DocState, Sources, Topics, WindowOp, WindowPolicy};
use oplog::{EmbeddedLog, EmbeddedLogConfig, OpLog};
use ot::Op;
use protocol::{AppliedRecord, ClientEntry, Snapshot};
use store::{EmbeddedStore, Store};

fn rec(seq: u64, client: &str, ts: i64) -> AppliedRecord {
    AppliedRecord {
        v: 1,
        doc: "d".into(),
        seq,
        prev: seq - 1,
        client: client.into(),
        cseq: seq,
        base: seq - 1,
        user: "u".into(),
        ts,
        op: Op::splice(0, 0, "x"),
        del: vec![],
        hash: None,
    }
}

/// The compactor's snapshot keeps clients the window forgot; the window of
/// the ops after it can fill up without trimming anything. The reload must
/// still forget those clients, as the warm copy did.
#[tokio::test]
async fn a_reload_forgets_the_clients_a_warm_window_forgot() {
    let policy = WindowPolicy {
        min_ops: 3,
        min_age_ms: 0,
        max_ops: 3,
    };
    let records = [
        rec(1, "A", 1),
        rec(2, "B", 2),
        rec(3, "B", 3),
        rec(4, "B", 4),
        rec(5, "B", 5),
    ];
    let mut warm = DocState::<WindowOp>::empty("d");
    for r in &records {
        warm.apply_record(r).unwrap();
        warm.trim(policy);
    }
    assert!(!warm.clients.contains_key("A"));

    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::default();
    let log = EmbeddedLog::open(EmbeddedLogConfig::new(
        dir.path().join("log"),
        vec![(topics.ops.clone(), 1), (topics.applied.clone(), 1)],
    ))
    .unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store")).unwrap();
    store.put_history(&records).await.unwrap();
    let entry = |client: &str, seq| ClientEntry {
        client: client.into(),
        user: "u".into(),
        cseq: seq,
        seq,
    };
    store
        .put_snapshot(&Snapshot {
            doc: "d".into(),
            seq: 2,
            text: "xx".into(),
            clients: vec![entry("A", 1), entry("B", 2)],
            hash: None,
        })
        .await
        .unwrap();
    let sources = Sources {
        log: &log as &dyn OpLog,
        store: &store as &dyn Store,
        topics: &topics,
        window: policy,
    };
    let cold = load(sources, "d", None, None).await.unwrap();
    assert_eq!(
        (cold.version, cold.floor, cold.window.len(), cold.clock),
        (warm.version, warm.floor, warm.window.len(), warm.clock)
    );
    assert_eq!(cold.window, warm.window, "the window after a reload");
    assert_eq!(cold.clients, warm.clients, "the dedup table after a reload");
}
