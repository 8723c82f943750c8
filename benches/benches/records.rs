//! The embedded store's history rows: an applied record packed
//! (`protocol::packed`) against the topic's JSON, written and read back.
//!
//!   cargo bench -p benches --bench records

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use protocol::packed::{pack_applied, unpack_applied};
use protocol::{chain, decode_out_record, AppliedRecord};

fn record(insert: &str) -> AppliedRecord {
    let mut r = AppliedRecord {
        v: 2,
        doc: "bench-doc-0042".into(),
        seq: 1_234_567,
        prev: 1_234_560,
        client: "c-3f9a1b2c".into(),
        cseq: 8_123,
        base: 1_234_566,
        user: "anonymous".into(),
        ts: 1_764_470_000_000,
        op: ot::Op::splice(4_000, 0, insert),
        del: vec![],
        hash: None,
    };
    r.hash = Some(chain::to_hex(&chain::chain_hash(&chain::GENESIS, &r)));
    r
}

fn bench_rows(c: &mut Criterion) {
    let mut g = c.benchmark_group("history_row");
    for (name, r) in [
        ("keystroke", record("a")),
        ("1kB_insert", record(&"x".repeat(1000))),
    ] {
        let json = r.encode();
        let packed = pack_applied(&r);
        eprintln!(
            "{name}: JSON {} bytes, packed {} bytes",
            json.len(),
            packed.len()
        );
        g.bench_function(format!("{name}/encode_json"), |b| {
            b.iter(|| black_box(&r).encode())
        });
        g.bench_function(format!("{name}/pack"), |b| {
            b.iter(|| pack_applied(black_box(&r)))
        });
        g.bench_function(format!("{name}/decode_json"), |b| {
            b.iter(|| decode_out_record(black_box(&json)).unwrap())
        });
        g.bench_function(format!("{name}/unpack"), |b| {
            b.iter(|| unpack_applied(&r.doc, r.seq, black_box(&packed)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_rows);
criterion_main!(benches);
