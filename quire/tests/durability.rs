//! `kill -9` mid-stream, restart on the same data: nothing acknowledged is
//! lost and clients resume with `since` (SPEC §12.1, §12.6).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, CoreEvent};
use common::{all_ops, history_page, random_edit, replay_history, Server};
use testkit::SplitMix64;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_acknowledged() {
    let mut server = Server::start(&[
        "--snapshot-every",
        "20",
        "--truncate-every-ms",
        "200",
        "--retain-records",
        "10",
    ]);
    let mut tasks = Vec::new();
    for i in 0..3 {
        let ws = server.ws();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&ws, "durable", &format!("w{i}"), None)
                .await
                .unwrap();
            let mut r = SplitMix64::new(i);
            // Edit until the server dies under us.
            loop {
                let op = random_edit(&mut r, &c.text());
                if c.edit(op).await.is_err() {
                    break;
                }
                if c.settle(T).await.is_err() {
                    break;
                }
            }
            c
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill_and_restart();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // Every op a client saw acknowledged is in the history, at the seq it was told.
    let acked: Vec<(String, u64, u64)> = clients
        .iter()
        .flat_map(|c| {
            c.events.iter().filter_map(move |e| match e {
                CoreEvent::Acked { cseq, seq } => Some((c.core.client_id.clone(), *cseq, *seq)),
                _ => None,
            })
        })
        .collect();
    assert!(
        acked.len() > 10,
        "the clients were acknowledged only {} ops before the kill",
        acked.len()
    );
    let history = all_ops(&server.addr, "durable");
    for (client, cseq, seq) in &acked {
        assert_eq!(
            history.get(&(client.clone(), *cseq)),
            Some(seq),
            "acknowledged op {client}/{cseq} lost"
        );
    }
    // Clients resume with `since`, resend what was in flight, and converge.
    for c in clients.iter_mut() {
        c.retarget(&server.ws(), "durable");
        c.join().await.unwrap();
        c.settle(T).await.unwrap();
    }
    let (_, doc) = server.get("/v1/docs/durable");
    let version = doc["seq"].as_u64().unwrap();
    for c in clients.iter_mut() {
        c.wait_version(version, T).await.unwrap();
        assert_eq!(
            c.text(),
            doc["text"].as_str().unwrap(),
            "{} diverged",
            c.core.client_id
        );
    }
    // Nothing applied twice: each (client, cseq) once in the history.
    let history_again = all_ops(&server.addr, "durable");
    assert_eq!(history_again.len(), count_ops(&server, "durable"));
    println!(
        "acknowledged before the kill: {}, history after: {}",
        acked.len(),
        history_again.len()
    );
}

fn count_ops(server: &Server, doc: &str) -> usize {
    let mut n = 0;
    let mut after = 0;
    loop {
        let p = history_page(&server.addr, doc, after);
        n += p["ops"].as_array().unwrap().len();
        match p["next"].as_u64() {
            Some(x) => after = x,
            None => return n,
        }
    }
}

/// Several documents, aggressive compaction and truncation, and three
/// `kill -9`s while editors stream: every acknowledged op survives, nothing
/// is applied twice, all editors converge on every document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_during_compaction_lose_nothing() {
    let mut server = Server::start(&[
        "--partitions",
        "3",
        "--snapshot-every",
        "7",
        "--truncate-every-ms",
        "50",
        "--retain-records",
        "3",
        "--window-ops",
        "5",
        "--window-ms",
        "0",
        // Tiny caches: each partition holds two of the documents and caches
        // one, so documents are evicted and rebuilt all the time.
        "--doc-cache",
        "1",
        "--idle-doc-cache",
        "1",
    ]);
    let docs = ["k-a", "k-b", "k-c", "k-d", "k-e", "k-f"];
    let mut clients: Vec<Client> = Vec::new();
    for (i, doc) in docs.iter().cycle().take(12).enumerate() {
        clients.push(
            Client::connect(&server.ws(), doc, &format!("k{i}"), None)
                .await
                .unwrap(),
        );
    }
    // What the clients saw of each document: (version, confirmed text).
    let mut seen: HashMap<&str, Vec<(u64, String)>> = HashMap::new();
    let mut r = SplitMix64::new(99);
    for round in 0..3 {
        let mut tasks = Vec::new();
        // Ops each document's editors got acknowledged in this round.
        let acked: Arc<Vec<AtomicUsize>> =
            Arc::new(docs.iter().map(|_| AtomicUsize::new(0)).collect());
        for (i, mut c) in clients.drain(..).enumerate() {
            let seed = r.next_u64();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let mut r = SplitMix64::new(seed);
                let mut seen = Vec::new();
                loop {
                    let op = random_edit(&mut r, &c.text());
                    if c.edit(op).await.is_err() || c.settle(T).await.is_err() {
                        break;
                    }
                    acked[i % acked.len()].fetch_add(1, Ordering::Relaxed);
                    seen.push((c.version(), c.core.server_text()));
                }
                (i, c, seen)
            }));
        }
        // The kill comes mid-stream: after 700 ms, and once every document
        // has had a few ops through in this round (a restarted process on
        // a broker may take seconds to get its partitions back).
        tokio::time::sleep(Duration::from_millis(700)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.iter().any(|n| n.load(Ordering::Relaxed) < 3) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.kill_and_restart();
        let mut back: Vec<(usize, Client)> = Vec::new();
        for t in tasks {
            let (i, c, s) = t.await.unwrap();
            seen.entry(docs[i % docs.len()]).or_default().extend(s);
            back.push((i, c));
        }
        back.sort_by_key(|(i, _)| *i);
        clients = back.into_iter().map(|(_, c)| c).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.retarget(&server.ws(), docs[i % docs.len()]);
            c.join()
                .await
                .unwrap_or_else(|e| panic!("round {round}: rejoin {i}: {e}"));
        }
    }
    for c in clients.iter_mut() {
        c.settle(T).await.unwrap();
    }
    let mut total = 0;
    let mut checked_versions = 0;
    for (d, doc) in docs.iter().enumerate() {
        let history = all_ops(&server.addr, doc);
        total += history.len();
        let (_, state) = server.get(&format!("/v1/docs/{doc}"));
        let version = state["seq"].as_u64().unwrap();
        for (i, c) in clients
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| i % docs.len() == d)
        {
            c.wait_version(version, T).await.unwrap();
            assert_eq!(
                c.text(),
                state["text"].as_str().unwrap(),
                "{doc}: client {i} diverged"
            );
            for e in &c.events {
                if let CoreEvent::Acked { cseq, seq } = e {
                    assert_eq!(
                        history.get(&(c.core.client_id.clone(), *cseq)),
                        Some(seq),
                        "{doc}: acked op lost"
                    );
                }
            }
        }
        // Time travel across truncated history (snapshots every 7 ops, the
        // topics truncated to 3 records) still rebuilds every version.
        let texts = replay_history(&server.addr, doc);
        assert_eq!(
            texts.last_key_value(),
            Some((&version, &state["text"].as_str().unwrap().to_owned())),
            "{doc}: the history replays to the current state"
        );
        // The history agrees with what the clients saw as they went.
        let observed = &seen[doc];
        assert!(observed.len() > 5, "{doc}: clients saw {}", observed.len());
        for (v, text) in observed {
            assert_eq!(
                texts.get(v),
                Some(text),
                "{doc}: a client saw version {v} differently"
            );
        }
        // Every version at the start (long archived and truncated), every
        // version at the end (around the last snapshots and truncation
        // points), and a run of consecutive versions every few dozen in
        // between (8 in a row: each run crosses a snapshot, taken every 7).
        let versions: Vec<u64> = texts.keys().copied().collect();
        let n = versions.len();
        let picked: BTreeSet<usize> = (0..n)
            .filter(|k| *k < 15 || *k + 15 >= n || k % 70 < 8)
            .collect();
        for &k in &picked {
            let v = &versions[k];
            // At the version, and just before the next one (a seq of
            // another document, or none): the state at this version.
            let next = versions.get(k + 1).copied().unwrap_or(v + 1_000);
            for at in [*v, next - 1] {
                let (status, got) = server.get(&format!("/v1/docs/{doc}?at={at}"));
                assert_eq!(status, 200, "{doc}?at={at}: {got}");
                assert_eq!(
                    (got["seq"].as_u64(), got["text"].as_str()),
                    (Some(*v), Some(texts[v].as_str())),
                    "{doc}?at={at}: time travel to version {v}"
                );
            }
        }
        checked_versions += picked.len();
    }
    assert!(total > 50, "only {total} ops applied");
    println!("ops applied across three kills: {total}; time travel checked at {checked_versions} versions");
}
