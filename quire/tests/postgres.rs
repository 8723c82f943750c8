//! `quire serve --postgres`: history and snapshots in PostgreSQL. Editors
//! converge, compaction archives to PostgreSQL and truncates the log, a
//! `kill -9` loses nothing acknowledged, and time travel and history (read
//! back from PostgreSQL once the log is truncated) are right. Runs when
//! `QUIRE_TEST_POSTGRES` names a server (`.ci/run` starts one).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use client::Client;
use common::{random_edit, Server};
use testkit::SplitMix64;
use tokio_postgres::NoTls;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_survives_kill_9_and_travels_in_time() {
    let Some(server_url) = std::env::var("QUIRE_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no PostgreSQL server (set QUIRE_TEST_POSTGRES, e.g. 'host=127.0.0.1 port=5432 user=quire')"
        );
        return;
    };
    assert!(
        !server_url.trim_start().starts_with("postgres"),
        "QUIRE_TEST_POSTGRES must be key=value settings (host=… user=…), not a URL: the test adds dbname=…"
    );
    let (url, db) = common::fresh_database(&server_url, "quire_serve").await;
    let mut server = Server::start(&[
        "--postgres",
        &url,
        "--partitions",
        "2",
        "--snapshot-every",
        "7",
        "--retain-records",
        "1",
        "--truncate-every-ms",
        "100",
    ]);

    // Two editors on each of two documents; each remembers the text at
    // every version it confirmed.
    let mut seen: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut clients = Vec::new();
    for (i, doc) in ["pa", "pa", "pb", "pb"].into_iter().enumerate() {
        clients.push((
            doc.to_owned(),
            Client::connect(&server.ws(), doc, &format!("w{i}"), None)
                .await
                .unwrap(),
            SplitMix64::new(i as u64),
        ));
    }
    for round in 0..60 {
        for (doc, c, r) in clients.iter_mut() {
            c.edit(random_edit(r, &c.text())).await.unwrap();
            c.settle(T).await.unwrap();
            seen.insert((doc.clone(), c.version()), c.text());
        }
        if round == 30 {
            // Mid-run: the process dies; clients come back with `since`.
            server.kill_and_restart();
            for (doc, c, _) in clients.iter_mut() {
                c.retarget(&server.ws(), doc);
                c.reconnect().await.unwrap();
                c.settle(T).await.unwrap();
            }
        }
    }
    // Let the compactor archive and truncate.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    for doc in ["pa", "pb"] {
        let (_, now) = server.get(&format!("/v1/docs/{doc}"));
        let version = now["seq"].as_u64().unwrap();
        for (d, cl, _) in clients.iter_mut() {
            if d == doc {
                cl.wait_version(version, T).await.unwrap();
                assert_eq!(cl.text(), now["text"].as_str().unwrap(), "{doc}: converged");
            }
        }
        // Everything acknowledged is archived in PostgreSQL (the compactor
        // archives in batches, off the ack path: within moments), and
        // snapshots were written there.
        let (_, all) = server.get(&format!("/v1/docs/{doc}/ops?after=0&limit=2000"));
        let applied = all["ops"].as_array().unwrap().len() as i64;
        let deadline = std::time::Instant::now() + T;
        let archived = loop {
            let archived: i64 = c
                .query_one("SELECT count(*) FROM quire_history WHERE doc = $1", &[&doc])
                .await
                .unwrap()
                .get(0);
            if archived >= applied || std::time::Instant::now() >= deadline {
                break archived;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let snapshots: i64 = c
            .query_one(
                "SELECT count(DISTINCT seq) FROM quire_snapshot_chunks WHERE doc = $1",
                &[&doc],
            )
            .await
            .unwrap()
            .get(0);
        assert!(archived >= 100, "{doc}: {archived} ops archived");
        assert!(snapshots >= 1, "{doc}: snapshots in PostgreSQL");
        // History pages and time travel, read back through PostgreSQL.
        let (_, page) = server.get(&format!("/v1/docs/{doc}/ops?after=0&limit=2000"));
        let ops = page["ops"].as_array().unwrap();
        assert_eq!(
            ops.len() as i64,
            archived,
            "{doc}: history from the archive"
        );
        assert_eq!(ops.last().unwrap()["seq"].as_u64(), Some(version));
        let mut checked = 0;
        for ((d, v), text) in seen.range((doc.to_owned(), 0)..(doc.to_owned(), u64::MAX)) {
            assert_eq!(d, doc);
            if v % 5 != 0 && *v != version {
                continue;
            }
            let (_, at) = server.get(&format!("/v1/docs/{doc}?at={v}"));
            assert_eq!(
                (at["seq"].as_u64(), at["text"].as_str()),
                (Some(*v), Some(text.as_str())),
                "{doc} at {v}"
            );
            checked += 1;
        }
        assert!(checked >= 5, "{doc}: {checked} versions travelled to");
    }
    drop(server);
    drop(c);
    common::drop_database(&server_url, &db).await;
}
