//! The store's conformance suite on ScyllaDB (or Cassandra). Runs when
//! `QUIRE_TEST_SCYLLA=host:port[,…]` names a node; each run works in a
//! keyspace of its own, dropped at the end. No CQL server can be installed
//! on the CI machine: there it prints SKIPPED, and the store's logic (bucket
//! walks, paging, chunking, pruning) is checked on a model of the tables by
//! `store::scylla`'s unit tests instead.

use std::io::Write;

use store::{conformance, ScyllaStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_store_conforms() {
    let Some(nodes) = std::env::var("QUIRE_TEST_SCYLLA")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        // Straight to stderr: the test harness does not capture this.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no ScyllaDB (set QUIRE_TEST_SCYLLA)"
        );
        println!("SKIPPED: no ScyllaDB (set QUIRE_TEST_SCYLLA)");
        return;
    };
    let keyspace = format!("quire_test_{}", std::process::id());
    let s = ScyllaStore::connect(&nodes, &keyspace, 1).await.unwrap();
    conformance::check(&s).await;
    // A large snapshot goes in chunks and comes back whole.
    let text = "ü😀".repeat(200_000);
    let big = protocol::Snapshot {
        doc: "big".into(),
        seq: 10,
        text: text.clone(),
        clients: vec![],
        hash: None,
    };
    s.put_snapshot(&big).await.unwrap();
    let back = s.snapshot_at_or_before("big", 10).await.unwrap().unwrap();
    assert_eq!(back.text, text);
    drop(s);
    // Leave nothing behind.
    let admin = store::scylla::CqlTables::connect(&nodes, &keyspace, 1)
        .await
        .unwrap();
    admin.drop_keyspace(&keyspace).await.unwrap();
}
