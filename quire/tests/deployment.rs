//! The multi-process deployment, for real: a Kafka-protocol broker,
//! PostgreSQL, two gateways, two transformers and one compactor, each its
//! own `quire` process. Editors on different gateways edit the same
//! documents; mid-stream one transformer and one gateway are killed with
//! `kill -9` and restarted. Every editor converges, sees every op exactly
//! once and in order, no acknowledged op is lost, and history and time
//! travel agree from either gateway. Runs when `QUIRE_TEST_KAFKA` and
//! `QUIRE_TEST_POSTGRES` name servers (`.ci/run` starts both).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::Client;
use common::{
    all_ops, check_editor, edit_until, fresh_database, http, replay_history, unique_prefix, Server,
};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);
const DOCS: [&str; 3] = ["m-a", "m-b", "m-c"];

fn services() -> Option<(String, String)> {
    let get = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
    match (get("QUIRE_TEST_KAFKA"), get("QUIRE_TEST_POSTGRES")) {
        (Some(k), Some(p)) => Some((k, p)),
        (k, p) => {
            let mut missing = Vec::new();
            if k.is_none() {
                missing.push("a Kafka broker (set QUIRE_TEST_KAFKA=host:port)");
            }
            if p.is_none() {
                missing.push("PostgreSQL (set QUIRE_TEST_POSTGRES)");
            }
            println!(
                "SKIPPED: the multi-process deployment test needs {}",
                missing.join(" and ")
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_transformers_and_a_compactor_survive_kill_9() {
    let Some((broker, pg)) = services() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "quire_deploy").await;
    let prefix = unique_prefix();
    let args: Vec<String> = [
        "--kafka",
        &broker,
        "--postgres",
        &url,
        "--topic-prefix",
        &prefix,
        "--partitions",
        "4",
        "--snapshot-every",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);

    let _compactor = Server::role("compactor", &dir("compactor"), &args);
    let mut transformer_a = Server::role("transformer", &dir("transformer-a"), &args);
    let mut gateway_1 = Server::role("gateway", &dir("gateway-1"), &args);
    let gateway_2 = Server::role("gateway", &dir("gateway-2"), &args);
    let gateways = Arc::new(Mutex::new(vec![
        gateway_1.addr.clone(),
        gateway_2.addr.clone(),
    ]));

    // Six editors, two per document, on alternating gateways.
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let doc = DOCS[i % DOCS.len()];
        let g = i % 2;
        let base = format!("ws://{}", gateways.lock().unwrap()[g]);
        let c = Client::connect(&base, doc, &format!("e{i}"), None)
            .await
            .unwrap();
        tasks.push(tokio::spawn(edit_until(
            c,
            doc,
            g,
            gateways.clone(),
            i as u64,
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Mid-stream, a second transformer joins: the group moves partitions
    // from the first to it, and the new owner rebuilds their documents.
    let _transformer_b = Server::role("transformer", &dir("transformer-b"), &args);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, metrics) = http(&transformer_a.addr, "GET", "/metrics", None, None);
    let revoked = metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("quire_kafka_rebalances_total") && !l.ends_with(" 0"));
    assert!(
        revoked,
        "the first transformer gave partitions up: {metrics}"
    );
    // Then one transformer and one gateway die.
    transformer_a.kill();
    gateway_1.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    transformer_a.restart();
    gateway_1.restart();
    gateways.lock().unwrap()[0] = gateway_1.addr.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    for c in clients.iter_mut() {
        c.settle(T).await.unwrap();
    }

    let addrs = [gateway_1.addr.clone(), gateway_2.addr.clone()];
    let mut acked = 0usize;
    for (d, doc) in DOCS.iter().enumerate() {
        // Both gateways tell the same story.
        let (status, state) = http(&addrs[1], "GET", &format!("/v1/docs/{doc}"), None, None);
        assert_eq!(status, 200, "{state}");
        let (_, state_1) = http(&addrs[0], "GET", &format!("/v1/docs/{doc}"), None, None);
        assert_eq!(state, state_1, "{doc}: the gateways disagree");
        let version = state["seq"].as_u64().unwrap();
        let text = state["text"].as_str().unwrap();
        let history = all_ops(&addrs[1], doc);
        assert_eq!(history, all_ops(&addrs[0], doc), "{doc}: histories differ");
        let texts = replay_history(&addrs[1], doc);
        assert_eq!(
            texts,
            replay_history(&addrs[0], doc),
            "{doc}: replays differ"
        );
        assert_eq!(
            texts.last_key_value(),
            Some((&version, &text.to_owned())),
            "{doc}: the history replays to the current state"
        );
        for (i, c) in clients
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| i % DOCS.len() == d)
        {
            c.wait_version(version, T).await.unwrap();
            assert_eq!(c.text(), text, "{doc}: editor {i} diverged");
            acked += check_editor(c, &format!("{doc}: editor {i}"), &history);
        }
        // Time travel from either gateway.
        for v in texts.keys().filter(|v| *v % 7 == 0 || **v == version) {
            for addr in &addrs {
                let (_, at) = http(addr, "GET", &format!("/v1/docs/{doc}?at={v}"), None, None);
                assert_eq!(
                    (at["seq"].as_u64(), at["text"].as_str()),
                    (Some(*v), Some(texts[v].as_str())),
                    "{doc}?at={v} on {addr}"
                );
            }
        }
    }
    // check_editor panicked on any lost, repeated or reordered op.
    println!("deployment: {acked} ops acknowledged, lost: 0, duplicates: 0");

    // An audit job with another Kafka client reads the same story from
    // the applied topic.
    match std::env::var("QUIRE_TEST_KAFKA_PYTHON") {
        Err(_) => println!(
            "SKIPPED: reading {prefix}applied with kafka-python (set QUIRE_TEST_KAFKA_PYTHON to a python with kafka-python)"
        ),
        Ok(python) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/read_applied.py");
            let out = std::process::Command::new(python)
                .args([script, &broker, &format!("{prefix}applied")])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), DOCS.len(), "{lines:?}");
            for line in lines {
                let doc = line["doc"].as_str().unwrap();
                let (_, state) = http(&addrs[1], "GET", &format!("/v1/docs/{doc}"), None, None);
                assert_eq!(
                    (&line["seq"], &line["text"]),
                    (&state["seq"], &state["text"]),
                    "{doc}: kafka-python's reading of the applied topic"
                );
                // And it verified every record's hash with its own code.
                assert_eq!(line["verified"], line["ops"], "{doc}: {line}");
                assert!(line["ops"].as_u64().unwrap() > 0, "{line}");
            }
        }
    }
    assert!(acked > 30, "the editors got only {acked} acks");
    drop((
        gateway_1,
        gateway_2,
        transformer_a,
        _transformer_b,
        _compactor,
    ));
    common::drop_database(&pg, &db).await;
}
