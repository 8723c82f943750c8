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
//! `quire-load broker HOST:PORT PRODUCERS RECORDS`
//!   the broker's own rate, through the same client library Quire uses:
//!   PRODUCERS tasks each keep one record in flight (as editors keep one
//!   op in flight) on a fresh 8-partition topic while one reader per
//!   partition consumes them; prints records/s produced and consumed
//!   (both ends done) and the produce→consume latency. A pipeline op costs
//!   two such round trips (ops, then applied).
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
    eprintln!("usage: quire-load pipeline WS_BASE CLIENTS DOCS OPS | quire-load log DIR PRODUCERS RECORDS | quire-load broker HOST:PORT PRODUCERS RECORDS | quire-load store DIR [POSTGRES] DOCS RECORDS BATCH");
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
        Some("broker") => broker(arg::<String>(&args, 2), arg(&args, 3), arg(&args, 4)).await,
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
        EmbeddedLog::open(EmbeddedLogConfig::new(
            dir.clone(),
            vec![("bench".into(), 8)],
        ))
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

async fn broker(brokers: String, producers: usize, records: usize) {
    let topic = format!("bench.raw.{}", std::process::id());
    let mut c = kafkalog::KafkaConfig::new(&brokers);
    c.partitions = 8;
    c.topics = vec![(topic.clone(), true)];
    let log: Arc<dyn OpLog> = Arc::new(
        kafkalog::KafkaLog::connect(c, kafkalog::KafkaMetrics::new(&prometheus::Registry::new()))
            .await
            .expect("the broker answers"),
    );
    let per = records / producers;
    let total = per * producers;
    let sent_at = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let start = Instant::now();
    // Readers first: one per partition, long-polling from offset 0.
    let mut readers = Vec::new();
    for p in 0..8u32 {
        let (log, topic, sent_at) = (log.clone(), topic.clone(), sent_at.clone());
        readers.push(tokio::spawn(async move {
            let mut from = 0;
            let mut lat = Vec::new();
            let mut seen = 0usize;
            let mut last = Instant::now();
            loop {
                let batch = log
                    .fetch(&topic, p, from, 1000, Duration::from_millis(200))
                    .await
                    .unwrap();
                if batch.is_empty() && sent_at.lock().unwrap().get(&u64::MAX).is_some() {
                    return (seen, lat, last);
                }
                for r in batch {
                    from = r.offset + 1;
                    seen += 1;
                    last = Instant::now();
                    let key = String::from_utf8_lossy(&r.value).into_owned();
                    if let Some(t) = sent_at.lock().unwrap().get(&hash(&key)) {
                        lat.push(Instant::now().duration_since(*t));
                    }
                }
            }
        }));
    }
    let mut tasks = Vec::new();
    for w in 0..producers {
        let (log, topic, sent_at) = (log.clone(), topic.clone(), sent_at.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let id = format!("{w}:{i}");
                sent_at.lock().unwrap().insert(hash(&id), Instant::now());
                log.produce(&topic, vec![(format!("doc-{w}"), id.into_bytes())])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let produced = start.elapsed();
    // Tell the readers production is over; they stop at their next empty poll.
    sent_at.lock().unwrap().insert(u64::MAX, Instant::now());
    let mut seen = 0;
    let mut lat = Vec::new();
    let mut consumed = produced;
    for r in readers {
        let (n, l, last) = r.await.unwrap();
        seen += n;
        lat.extend(l);
        consumed = consumed.max(last.duration_since(start));
    }
    assert_eq!(seen, total, "every record consumed once");
    lat.sort();
    println!(
        "broker: {producers} producers with one record in flight, {total} records: produced {:.0}/s, produced and consumed {:.0}/s; produce→consume p50 {:.2} ms, p99 {:.2} ms",
        total as f64 / produced.as_secs_f64(),
        total as f64 / consumed.as_secs_f64(),
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
    );
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
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
            hash: None,
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
