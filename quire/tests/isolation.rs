//! One client never slows the others (SPEC §7): while one client hammers a
//! document with old cseqs (each an archive lookup) and other documents of
//! the same partition are cold-loaded over and over, a third document's
//! editor still gets its acks promptly. Everything shares one partition, so
//! everything shares fanout's partition lock and consumer.

mod common;

use std::time::{Duration, Instant};

use client::Client;
use common::{http, Server};
use futures_util::{SinkExt, StreamExt};
use ot::Op;
use protocol::ClientMsg;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(60);
const COLD_DOCS: usize = 6;
const HISTORY: usize = 400;
/// Writers of the hammered document's history, each writing `HISTORY` ops:
/// an archive that a scan (instead of an index) would take long to read.
const NOISY_WRITERS: usize = 10;

/// Ack latencies of `n` sequential one-character edits, sorted.
async fn ack_latencies(c: &mut Client, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        c.edit(Op::splice(0, 0, "k")).await.unwrap();
        c.settle(T).await.unwrap();
        out.push(t0.elapsed());
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn write_history(base: &str, doc: &str, client: &str, n: usize) -> Client {
    let mut c = Client::connect(base, doc, client, None).await.unwrap();
    for i in 0..n {
        c.edit(Op::splice(0, 0, if i % 2 == 0 { "ab" } else { "é" }))
            .await
            .unwrap();
        c.settle(T).await.unwrap();
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hammering_client_and_cold_loads_do_not_stall_other_documents() {
    let server = Server::start(&[
        "--partitions",
        "1",
        "--idle-doc-cache",
        "1",
        "--ops-per-sec",
        "1000000",
        "--ops-burst",
        "1000000",
    ]);
    // History for the cold documents and the hammered one, written in
    // parallel; then the writers leave so the documents can go cold.
    let mut writers = Vec::new();
    for i in 0..COLD_DOCS {
        let ws = server.ws();
        writers.push(tokio::spawn(async move {
            drop(write_history(&ws, &format!("cold-{i}"), "w", HISTORY).await);
        }));
    }
    for i in 1..NOISY_WRITERS {
        let ws = server.ws();
        writers.push(tokio::spawn(async move {
            drop(write_history(&ws, "noisy", &format!("w{i}"), HISTORY).await);
        }));
    }
    let noisy = write_history(&server.ws(), "noisy", "h", HISTORY).await;
    for w in writers {
        w.await.unwrap();
    }
    drop(noisy);
    let (_, doc) = server.get("/v1/docs/noisy");
    let version = doc["seq"].as_u64().unwrap();

    let mut calm = Client::connect(&server.ws(), "calm", "a", None)
        .await
        .unwrap();
    let baseline = ack_latencies(&mut calm, 150).await;

    // The hammer: cseqs below its latest that were never applied, as fast
    // as the socket takes them; each needs the archive to answer.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/v1/docs/noisy/ws", server.ws()))
        .await
        .unwrap();
    let hello = ClientMsg::Hello {
        client: "h".into(),
        since: Some(version),
    };
    ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into()))
        .await
        .unwrap();
    let skip = ClientMsg::Op {
        client: "h".into(),
        cseq: 1_000_000,
        base: version,
        op: Op::splice(0, 0, "!").into(),
    };
    ws.send(Message::Text(serde_json::to_string(&skip).unwrap().into()))
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    let stop = tokio_util::sync::CancellationToken::new();
    let hammer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut cseq = HISTORY as u64 + 1;
            while !stop.is_cancelled() {
                let old = format!(
                    r#"{{"type":"op","client":"h","cseq":{cseq},"base":{version},"op":["x"]}}"#
                );
                if tx.send(Message::Text(old.into())).await.is_err() {
                    break;
                }
                sent += 1;
                cseq = HISTORY as u64 + 1 + sent % 500_000;
                if sent.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            sent
        })
    };
    let replies = tokio::spawn(async move {
        let mut protocol_errors = 0u64;
        while let Some(Ok(m)) = rx.next().await {
            if m.to_text().is_ok_and(|t| t.contains("PROTOCOL")) {
                protocol_errors += 1;
            }
        }
        protocol_errors
    });
    // Cold loads: every read of a cold document loads it from store and
    // log (the idle cache holds one document).
    let cold = {
        let (addr, stop) = (server.addr.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut loads = 0u64;
            while !stop.is_cancelled() {
                let doc = format!("cold-{}", loads as usize % COLD_DOCS);
                let (status, _) = http(&addr, "GET", &format!("/v1/docs/{doc}"), None, None);
                assert_eq!(status, 200);
                loads += 1;
            }
            loads
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let noisy_run = ack_latencies(&mut calm, 150).await;
    stop.cancel();
    let sent = hammer.await.unwrap();
    let loads = cold.await.unwrap();
    drop(server);
    let protocol_errors = replies.await.unwrap();

    println!(
        "ack latency of a third document, quiet: p50 {:?} p99 {:?} max {:?}",
        pct(&baseline, 0.5),
        pct(&baseline, 0.99),
        baseline.last().unwrap()
    );
    println!(
        "while {sent} old-cseq ops ({protocol_errors} answered PROTOCOL) and {loads} cold loads ran: p50 {:?} p99 {:?} max {:?}",
        pct(&noisy_run, 0.5),
        pct(&noisy_run, 0.99),
        noisy_run.last().unwrap()
    );
    assert!(
        protocol_errors > 100 && loads > 10,
        "the noise must actually run"
    );
    // Both noise sources share the two cores with the server, so latency
    // grows with CPU contention; what must not happen is a stall behind
    // another client's work. Measured on this 2-core machine: quiet p50
    // 1.5 ms; under this noise p50 3.3 ms, p99 10 ms; the code that loaded
    // and scanned the archive under the partition lock had p50 65 ms, p99
    // 73 ms here.
    // Bounds are above the quiet run's own figures: on a broker every ack
    // waits for two produce round trips and two fetches (quiet p50 ~27 ms
    // on the local tansu), which is latency, not a stall.
    assert!(
        pct(&noisy_run, 0.5) < pct(&baseline, 0.5) + Duration::from_millis(25),
        "a third document stalled: p50 {:?}",
        pct(&noisy_run, 0.5)
    );
    assert!(
        pct(&noisy_run, 0.99) < pct(&baseline, 0.99) + Duration::from_millis(250),
        "a third document stalled: p99 {:?}",
        pct(&noisy_run, 0.99)
    );
}
