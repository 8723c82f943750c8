//! The store's conformance suite on PostgreSQL. Runs when
//! `QUIRE_TEST_POSTGRES` names a server (`key=value` settings, e.g.
//! `host=127.0.0.1 port=5432 user=quire`); `.ci/run` starts a throwaway one.
//! Each run works in a database of its own, dropped at the end.

use std::io::Write;

use store::{conformance, PostgresStore, Store};
use tokio_postgres::NoTls;

fn server() -> Option<String> {
    let url = std::env::var("QUIRE_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.trim().is_empty());
    if let Some(u) = &url {
        assert!(
            !u.trim_start().starts_with("postgres"),
            "QUIRE_TEST_POSTGRES must be key=value settings (host=… user=…), not a URL: the tests add dbname=…"
        );
    }
    if url.is_none() {
        // Straight to stderr: the test harness does not capture this.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no PostgreSQL server (set QUIRE_TEST_POSTGRES, e.g. 'host=127.0.0.1 port=5432 user=quire')"
        );
    }
    url
}

/// A fresh database on the server; dropped by [`Scratch::drop_it`].
struct Scratch {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl Scratch {
    async fn new(server: &str, tag: &str) -> Scratch {
        let (admin, conn) = tokio_postgres::connect(server, NoTls)
            .await
            .expect("QUIRE_TEST_POSTGRES answers");
        tokio::spawn(conn);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("quire_test_{tag}_{}_{nanos}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Scratch {
            url: format!("{server} dbname={name}"),
            admin,
            name,
        }
    }

    async fn drop_it(self) {
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let Some(server) = server() else { return };
    let db = Scratch::new(&server, "conform").await;
    let store = PostgresStore::connect(&db.url).await.unwrap();
    conformance::check(&store).await;
    // Small snapshot rows, for a record limit below the default chunk.
    let small = PostgresStore::connect(&db.url)
        .await
        .unwrap()
        .with_snapshot_chunk(1024);
    let snap = protocol::Snapshot {
        doc: "chunked".into(),
        seq: 9,
        text: "é".repeat(5000),
        clients: vec![],
        hash: None,
    };
    small.put_snapshot(&snap).await.unwrap();
    assert_eq!(
        store.snapshot_at_or_before("chunked", 9).await.unwrap(),
        Some(snap)
    );
    drop((store, small));
    db.drop_it().await;
}

/// Role processes starting together apply each migration once; a process
/// started later finds the schema in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_apply_migrations_once() {
    let Some(server) = server() else { return };
    let db = Scratch::new(&server, "migrate").await;
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await.map(|_| ()) })
        })
        .collect();
    for s in starts {
        s.await.unwrap().expect("every process starts");
    }
    let again = PostgresStore::connect(&db.url).await.unwrap();
    again.ping().await.unwrap();
    drop(again);
    let (c, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let n: i64 = c
        .query_one("SELECT count(*) FROM quire_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(c);
    db.drop_it().await;
}

#[tokio::test]
async fn a_bad_address_is_a_clear_error() {
    let err = PostgresStore::connect("port=notaport")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
}
