//! Two transformers working on the same partitions at once — what a
//! rebalance or a paused process that wakes up after its partitions moved
//! does for a while on Kafka — here for the whole run: the second one is a
//! copy of the first on the same log and store. The applied topic then
//! holds answers twice; no editor, no history page and no replay sees one
//! twice, or misses one.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::Client;
use common::{all_ops, check_editor, edit_until, replay_history, serve_config};
use protocol::{decode_out_record, OutRecord};
use tokio_util::sync::CancellationToken;
use transformer::{CoreConfig, TransformerConfig};

const T: Duration = Duration::from_secs(30);
const DOCS: [&str; 2] = ["o-a", "o-b"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_transformers_reach_no_editor_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = serve_config(tmp.path(), 10);
    // Keep the applied topic whole, to count the answers written twice.
    cfg.retain_records = 1_000_000;
    let backends = quire::open_backends(&cfg).await.unwrap();
    let (log, store, topics) = (
        backends.log.clone(),
        backends.store.clone(),
        backends.topics.clone(),
    );
    let shutdown = CancellationToken::new();
    // The second transformer, beside the one `quire::run` starts.
    let twin = tokio::spawn(transformer::run(
        TransformerConfig {
            topics: topics.clone(),
            core: CoreConfig {
                window: cfg.window,
                max_doc_bytes: cfg.limits.max_doc_bytes,
                max_insert_bytes: cfg.limits.max_insert_bytes,
                max_record_bytes: cfg.limits.max_record_bytes,
            },
            max_docs: cfg.doc_cache,
            ..TransformerConfig::default()
        },
        log.clone(),
        store.clone(),
        transformer::Metrics::new(&prometheus::Registry::new()),
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(cfg.addr).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(quire::run(cfg, backends, listener, shutdown.clone()));

    let addrs = Arc::new(Mutex::new(vec![addr.clone()]));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let doc = DOCS[i % 2];
        let c = Client::connect(&format!("ws://{addr}"), doc, &format!("o{i}"), None)
            .await
            .unwrap();
        tasks.push(tokio::spawn(edit_until(
            c,
            doc,
            0,
            addrs.clone(),
            i as u64,
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }

    // The applied topic holds answers twice: the overlap happened.
    let mut answers: HashMap<(String, u64), usize> = HashMap::new();
    for p in 0..log.partitions(&topics.applied).unwrap() {
        let mut from = 0;
        loop {
            let batch = log
                .fetch(&topics.applied, p, from, 1000, Duration::ZERO)
                .await
                .unwrap();
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            for r in &batch {
                let out = decode_out_record(&r.value).unwrap();
                let seq = match &out {
                    OutRecord::Applied(a) => a.seq,
                    OutRecord::Rejected(x) => x.seq,
                };
                *answers.entry((r.key.clone(), seq)).or_default() += 1;
            }
        }
    }
    let twice = answers.values().filter(|n| **n > 1).count();
    assert!(
        twice > 10,
        "the two transformers should have answered ops twice ({twice} found)"
    );

    let mut acked = 0;
    for (d, doc) in DOCS.iter().enumerate() {
        let history = all_ops(&addr, doc); // panics on an op applied twice
        let texts = replay_history(&addr, doc); // panics on a gap
        let (&version, text) = texts.last_key_value().unwrap();
        for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| i % 2 == d) {
            c.settle(T).await.unwrap();
            c.wait_version(version, T).await.unwrap();
            assert_eq!(&c.text(), text, "{doc}: editor {i} diverged");
            acked += check_editor(c, &format!("{doc}: editor {i}"), &history);
        }
    }
    println!("overlap: {twice} answers written twice; {acked} acks, each once and archived");
    shutdown.cancel();
    let _ = server.await;
    let _ = twin.await;
}
