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

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::Client;
use oplog::{EmbeddedLog, EmbeddedLogConfig, OpLog};

fn usage() -> ! {
    eprintln!("usage: quire-load pipeline WS_BASE CLIENTS DOCS OPS | quire-load log DIR PRODUCERS RECORDS");
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
