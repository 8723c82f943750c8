//! Load generator.
//!
//! `quire-load pipeline ws://127.0.0.1:8080 CLIENTS DOCS OPS_PER_CLIENT`
//!   drives a running `quire serve` with the Rust client: each client keeps
//!   one op in flight (SPEC §4) and measures edit→ack latency. Prints
//!   throughput and p50/p99, and checks every client converged.
//! `quire-load log DIR PRODUCERS RECORDS`
//!   measures durable appends on the embedded log: one producer at a time
//!   (one fsync per append) against PRODUCERS concurrent producers sharing
//!   group commits, in the same run.
//! `quire-load store DIR [POSTGRES] DOCS RECORDS BATCH`
//!   measures the stores the compactor and loaders use: archiving RECORDS
//!   applied records over DOCS documents in batches of BATCH (as the
//!   compactor does), paging them back, op-id lookups and snapshots; on the
//!   embedded store under DIR and, when given (`key=value` settings of an
//!   empty database), on PostgreSQL, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::Client;
use oplog::{EmbeddedLog, EmbeddedLogConfig, OpLog};
use store::{EmbeddedStore, PostgresStore, Store};

fn usage() -> ! {
    eprintln!("usage: quire-load pipeline WS_BASE CLIENTS DOCS OPS | quire-load log DIR PRODUCERS RECORDS | quire-load store DIR [POSTGRES] DOCS RECORDS BATCH");
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("pipeline") => {
            pipeline(args[2].clone(), arg(&args, 3), arg(&args, 4), arg(&args, 5)).await
        }
        Some("log") => log(arg::<String>(&args, 2), arg(&args, 3), arg(&args, 4)).await,
        Some("store") => {
            let n = args.len();
            let pg = (n == 7).then(|| args[3].clone());
            let (docs, records, batch) = (arg(&args, n - 3), arg(&args, n - 2), arg(&args, n - 1));
            let dir = std::path::PathBuf::from(&args[2]);
            let embedded = EmbeddedStore::open(&dir).expect("embedded store");
            store_bench("embedded", &embedded, docs, records, batch).await;
            if let Some(url) = pg {
                let pg = PostgresStore::connect(&url).await.expect("PostgreSQL");
                store_bench("postgresql", &pg, docs, records, batch).await;
            }
        }
        _ => usage(),
    }
}

async fn pipeline(base: String, clients: usize, docs: usize, ops: usize) {
    let run_id = std::process::id();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let base = base.clone();
        let doc = format!("load-{run_id}-{}", i % docs);
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&base, &doc, &format!("load{i}"), None)
                .await
                .expect("connect");
            let mut lat = Vec::with_capacity(ops);
            for k in 0..ops {
                let len = c.text().chars().count();
                let pos = (k * 7919 + i * 104729) % (len + 1);
                let t = Instant::now();
                c.edit(ot::Op::splice(pos, 0, "x")).await.expect("edit");
                c.settle(Duration::from_secs(60)).await.expect("ack");
                lat.push(t.elapsed());
            }
            (doc, c, lat)
        }));
    }
    let mut lat = Vec::new();
    let mut finished = Vec::new();
    for t in tasks {
        let (doc, c, l) = t.await.unwrap();
        lat.extend(l);
        finished.push((doc, c));
    }
    let elapsed = start.elapsed();
    // Convergence check: every client of a doc reaches the same text.
    let mut max_version = std::collections::HashMap::new();
    for (doc, c) in &finished {
        let v = max_version.entry(doc.clone()).or_insert(0);
        *v = (*v).max(c.version());
    }
    for (doc, c) in finished.iter_mut() {
        c.wait_version(max_version[doc.as_str()], Duration::from_secs(60))
            .await
            .expect("catch up");
    }
    for (doc, c) in &finished {
        let first = finished.iter().find(|(d, _)| d == doc).unwrap();
        assert_eq!(c.text(), first.1.text(), "{doc} diverged");
    }
    lat.sort();
    let n = lat.len();
    println!(
        "pipeline: {clients} clients, {docs} docs, {n} ops in {:.2}s = {:.0} ops/s; ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; all converged",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

async fn log(dir: String, producers: usize, records: usize) {
    let _ = std::fs::remove_dir_all(&dir);
    let log = Arc::new(
        EmbeddedLog::open(EmbeddedLogConfig {
            dir: dir.clone().into(),
            topics: vec![("bench".into(), 8)],
        })
        .unwrap(),
    );
    let value = vec![b'x'; 200];
    // Baseline: one producer, one record per durable append.
    let serial_n = records / 4;
    let t = Instant::now();
    for i in 0..serial_n {
        log.produce("bench", vec![(format!("k{}", i % 64), value.clone())])
            .await
            .unwrap();
    }
    let serial = serial_n as f64 / t.elapsed().as_secs_f64();
    // Concurrent producers, each still one record per durable append.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (log, value) = (log.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..records / producers {
                log.produce(
                    "bench",
                    vec![(format!("k{}", (p * 31 + i) % 64), value.clone())],
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let concurrent = (records / producers * producers) as f64 / t.elapsed().as_secs_f64();
    println!(
        "log: serial {serial:.0} appends/s (one fsync each); {producers} concurrent producers {concurrent:.0} appends/s; ratio {:.1}x",
        concurrent / serial
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Archive, read back, look up and snapshot on one store; prints a line.
async fn store_bench(name: &str, s: &dyn Store, docs: usize, records: usize, batch: usize) {
    let per_doc = records / docs;
    let all: Vec<_> = (0..per_doc)
        .flat_map(|i| {
            (0..docs).map(move |d| {
                let mut r = store::conformance::record(
                    &format!("doc-{d}"),
                    (i * docs + d + 1) as u64,
                    "c",
                    i as u64 + 1,
                );
                r.op = ot::Op::splice(i, 0, "typing speed");
                r
            })
        })
        .collect();
    let t = Instant::now();
    for chunk in all.chunks(batch) {
        s.put_history(chunk).await.expect("put_history");
    }
    let write = all.len() as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut read = 0;
    for d in 0..docs {
        let mut after = 0;
        loop {
            let page = s
                .history(&format!("doc-{d}"), after, 1000)
                .await
                .expect("history");
            read += page.len();
            match page.last() {
                Some(r) if page.len() == 1000 => after = r.seq,
                _ => break,
            }
        }
    }
    assert_eq!(read, all.len());
    let read = read as f64 / t.elapsed().as_secs_f64();

    let lookups = 2000;
    let mut rng = testkit::SplitMix64::new(7);
    let t = Instant::now();
    for _ in 0..lookups {
        let d = rng.below(docs as u64);
        let cseq = 1 + rng.below(per_doc as u64);
        let hit = s
            .find_op(&format!("doc-{d}"), "c", cseq)
            .await
            .expect("find_op");
        assert!(hit.is_some());
    }
    let lookup = lookups as f64 / t.elapsed().as_secs_f64();

    let text = "lorem ipsum ".repeat(100_000 / 12);
    let snaps = 20;
    let t = Instant::now();
    for i in 0..snaps {
        let snap = protocol::Snapshot {
            doc: "snapshotted".into(),
            seq: i + 1,
            text: text.clone(),
            clients: vec![],
        };
        s.put_snapshot(&snap).await.expect("put_snapshot");
        let back = s
            .snapshot_at_or_before("snapshotted", u64::MAX)
            .await
            .expect("snapshot");
        assert_eq!(back.map(|b| b.seq), Some(i + 1));
    }
    let snap = snaps as f64 / t.elapsed().as_secs_f64();
    println!(
        "store {name}: archive {write:.0} records/s (batches of {batch}), page back {read:.0} records/s, op-id lookups {lookup:.0}/s, 100 KB snapshot write+read {snap:.0}/s"
    );
}
