//! The embedded log's storage, side by side with two embedded databases,
//! per durable append (issue 9: "measure what a storage engine built for
//! appends costs per op, side by side with today's").
//!
//! `log-engines DIR RECORDS [BATCH]`
//!
//! Each engine makes RECORDS appends of one 300-byte record (or BATCH
//! records per commit), each commit durable before the next starts, on a
//! fresh folder under DIR, and reports wall time and process CPU (user +
//! system, from /proc/self/stat) per commit:
//! - `embedded-log`: Quire's `EmbeddedLog` (on fjall; `produce`, through
//!   its writer thread: the cost the roles pay, thread hand-off included);
//! - `redb`: a redb 2 write transaction per commit (`Durability::Immediate`),
//!   keys `(topic, partition, offset)` as the log used before;
//! - `fjall`: bare fjall 3 (an LSM): one write batch, then
//!   `persist(SyncData)`.
//!
//! The two databases are called directly, without a thread hand-off, so
//! the comparison favours them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use oplog::{EmbeddedLog, EmbeddedLogConfig, OpLog};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // CLK_TCK is 100 on Linux.
    ticks / 100.0
}

struct Run {
    wall: f64,
    cpu: f64,
}

fn measure(f: impl FnOnce()) -> Run {
    let (t0, c0) = (Instant::now(), cpu_seconds());
    f();
    Run {
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
    }
}

fn record(i: usize) -> Vec<u8> {
    let mut v = format!(
        "{{\"v\":1,\"doc\":\"doc-{}\",\"seq\":{i},\"op\":[\"",
        i % 50
    )
    .into_bytes();
    v.resize(296, b'x');
    v.extend_from_slice(b"\"]}\n");
    v
}

fn embedded_log(dir: &Path, commits: usize, batch: usize, rt: &tokio::runtime::Runtime) -> Run {
    let log = rt.block_on(async {
        EmbeddedLog::open(EmbeddedLogConfig::new(
            dir.to_owned(),
            vec![("bench".into(), 1)],
        ))
        .expect("log")
    });
    let run = measure(|| {
        rt.block_on(async {
            for c in 0..commits {
                let recs = (0..batch)
                    .map(|k| ("doc".to_owned(), record(c * batch + k)))
                    .collect();
                log.produce("bench", recs).await.expect("append");
            }
        })
    });
    drop(log);
    run
}

fn redb(dir: &Path, commits: usize, batch: usize) -> Run {
    const RECORDS: redb::TableDefinition<(&str, u32, u64), (&str, &[u8])> =
        redb::TableDefinition::new("records");
    std::fs::create_dir_all(dir).unwrap();
    let db = redb::Builder::new()
        .set_cache_size(64 << 20)
        .create(dir.join("log.redb"))
        .expect("redb");
    measure(|| {
        for c in 0..commits {
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(RECORDS).unwrap();
                for k in 0..batch {
                    let i = c * batch + k;
                    t.insert(("bench", 0, i as u64), ("doc", record(i).as_slice()))
                        .unwrap();
                }
            }
            w.commit().unwrap();
        }
    })
}

fn fjall(dir: &Path, commits: usize, batch: usize) -> Run {
    let db = fjall::Database::builder(dir).open().expect("fjall");
    let records = db
        .keyspace("records", fjall::KeyspaceCreateOptions::default)
        .expect("keyspace");
    measure(|| {
        for c in 0..commits {
            let mut b = db.batch();
            for k in 0..batch {
                let i = c * batch + k;
                let mut key = b"bench\0".to_vec();
                key.extend_from_slice(&0u32.to_be_bytes());
                key.extend_from_slice(&(i as u64).to_be_bytes());
                b.insert(&records, key, record(i));
            }
            b.commit().unwrap();
            db.persist(fjall::PersistMode::SyncData).unwrap();
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: log-engines DIR RECORDS [BATCH]");
        std::process::exit(2)
    };
    let dir = PathBuf::from(args.get(1).unwrap_or_else(|| usage()));
    let records: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let batch: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let commits = records / batch;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("{commits} durable commits of {batch} record(s) of 300 bytes, one after another:\n");
    println!("| engine | commits/s | wall per commit | CPU per commit |");
    println!("|---|---|---|---|");
    for (name, round) in [
        ("embedded-log", 0),
        ("redb", 0),
        ("fjall", 0),
        ("embedded-log", 1),
        ("redb", 1),
        ("fjall", 1),
    ] {
        let d = dir.join(format!("{name}-{round}"));
        let _ = std::fs::remove_dir_all(&d);
        let run = match name {
            "embedded-log" => embedded_log(&d, commits, batch, &rt),
            "redb" => redb(&d, commits, batch),
            _ => fjall(&d, commits, batch),
        };
        let _ = std::fs::remove_dir_all(&d);
        println!(
            "| {name} (round {}) | {:.0} | {:.0} µs | {:.0} µs |",
            round + 1,
            commits as f64 / run.wall,
            1e6 * run.wall / commits as f64,
            1e6 * run.cpu / commits as f64
        );
    }
}
