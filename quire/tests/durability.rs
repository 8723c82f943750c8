//! `kill -9` mid-stream, restart on the same data: nothing acknowledged is
//! lost and clients resume with `since` (SPEC §12.1, §12.6).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use client::{Client, CoreEvent};
use common::{random_edit, Server};
use ot::SplitMix64;

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
    let history = all_ops(&server, "durable");
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
    let history_again = all_ops(&server, "durable");
    assert_eq!(history_again.len(), count_ops(&server, "durable"));
    println!(
        "acknowledged before the kill: {}, history after: {}",
        acked.len(),
        history_again.len()
    );
}

fn page(server: &Server, doc: &str, after: u64) -> serde_json::Value {
    let (status, page) = server.get(&format!("/v1/docs/{doc}/ops?after={after}&limit=2000"));
    assert_eq!(status, 200, "{page}");
    page
}

fn all_ops(server: &Server, doc: &str) -> HashMap<(String, u64), u64> {
    let mut out = HashMap::new();
    let mut after = 0;
    loop {
        let p = page(server, doc, after);
        for o in p["ops"].as_array().unwrap() {
            let key = (
                o["client"].as_str().unwrap().to_owned(),
                o["cseq"].as_u64().unwrap(),
            );
            assert!(
                out.insert(key.clone(), o["seq"].as_u64().unwrap())
                    .is_none(),
                "{key:?} applied twice"
            );
        }
        match p["next"].as_u64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

fn count_ops(server: &Server, doc: &str) -> usize {
    let mut n = 0;
    let mut after = 0;
    loop {
        let p = page(server, doc, after);
        n += p["ops"].as_array().unwrap().len();
        match p["next"].as_u64() {
            Some(x) => after = x,
            None => return n,
        }
    }
}
