//! `quire export` and `quire import`: a document's history moves to another
//! deployment under a new id, with the same texts version by version, the
//! same authors, and a chain the audit accepts; a damaged file and a
//! non-empty target are refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use client::Client;
use common::{kafka_args, random_edit, replay_history, Server};
use testkit::SplitMix64;

fn quire(args: &[&str], data: &Path, backend: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quire"))
        .args(args)
        .arg("--data")
        .arg(data)
        .args(backend)
        .env("QUIRE_LOG", "warn")
        .output()
        .unwrap()
}

/// `(client, user)` of each op of `doc`, oldest first.
fn authors(s: &Server, doc: &str) -> Vec<(String, String)> {
    let (_, history) = s.get(&format!("/v1/docs/{doc}/ops?after=0&limit=2000"));
    history["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["client"].as_str().unwrap().into(),
                o["user"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_moves_between_deployments_with_its_history() {
    let mut a = Server::start(&["--snapshot-every", "7"]);
    let mut r = SplitMix64::new(11);
    let mut clients = Vec::new();
    for i in 0..2 {
        clients.push(
            Client::connect(&a.ws(), "src", &format!("x{i}"), None)
                .await
                .unwrap(),
        );
    }
    for round in 0..20 {
        for c in clients.iter_mut() {
            let op = if round == 0 {
                ot::Op::splice(0, 0, "héllo 😀 ")
            } else {
                random_edit(&mut r, &c.text())
            };
            c.edit(op).await.unwrap();
        }
        for c in clients.iter_mut() {
            c.settle(Duration::from_secs(30)).await.unwrap();
        }
    }
    let source = replay_history(&a.addr, "src");
    let (&mid, mid_text) = source.iter().nth(source.len() / 2).unwrap();
    let mid_text = mid_text.clone();
    let source_authors = authors(&a, "src");
    drop(clients);
    a.kill();
    let a_args = a.args().to_vec();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("src.ndjson");

    // Export: the latest, and an earlier version.
    let out = quire(
        &["export", "--doc", "src", "--out", file.to_str().unwrap()],
        &a.data,
        &a_args,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let (&last, last_text) = source.last_key_value().unwrap();
    assert_eq!(header["seq"].as_u64(), Some(last));
    assert_eq!(header["text"].as_str(), Some(last_text.as_str()));
    assert_eq!(header["records"].as_u64(), Some(source.len() as u64 - 1));
    let out = quire(
        &["export", "--doc", "src", "--at", &mid.to_string()],
        &a.data,
        &a_args,
    );
    assert!(out.status.success());
    let early: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        (early["seq"].as_u64(), early["text"].as_str()),
        (Some(mid), Some(mid_text.as_str()))
    );

    // A damaged file is refused before anything is submitted.
    let damaged = tmp.path().join("damaged.ndjson");
    std::fs::write(&damaged, text.replacen("\"op\":[", "\"op\":[1,", 1)).unwrap();
    let b_data = tmp.path().join("b");
    let b_args = kafka_args();
    let out = quire(
        &[
            "import",
            "--file",
            damaged.to_str().unwrap(),
            "--doc",
            "copy",
        ],
        &b_data,
        &b_args,
    );
    assert!(!out.status.success(), "a damaged export was imported");

    // Import into another deployment, under another id.
    let out = quire(
        &["import", "--file", file.to_str().unwrap(), "--doc", "copy"],
        &b_data,
        &b_args,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = Server::role("serve", &b_data, &b_args);
    let began = std::time::Instant::now();
    let copied = loop {
        let (_, state) = b.get("/v1/docs/copy");
        if state["text"].as_str() == Some(last_text.as_str()) {
            break replay_history(&b.addr, "copy");
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "not applied: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The same texts version by version (new seqs), the same authors.
    assert_eq!(
        copied.values().collect::<Vec<_>>(),
        source.values().collect::<Vec<_>>(),
        "the copy's history differs"
    );
    let copy_authors = authors(&b, "copy");
    assert_eq!(copy_authors, source_authors);
    let b_args_running = b.args().to_vec();
    let mut b = b;
    b.kill();

    // A second import into the same document is refused.
    let out = quire(
        &["import", "--file", file.to_str().unwrap(), "--doc", "copy"],
        &b_data,
        &b_args_running,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has a history"));
    // The copy's chain is its own, and whole.
    let out = quire(&["audit", "--doc", "copy"], &b_data, &b_args_running);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
