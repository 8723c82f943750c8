//! apply / transform / compose over real editing traces.
//!
//! `cargo bench -p benches` (results: benches/README.md).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use document::{Names, OpShape, WindowEntry, WindowOp};
use ot::{apply_rope, compose, transform, transform_by, Op, Side};
use protocol::AppliedRecord;
use ropey::Rope;

const TRACES: [&str; 3] = ["automerge-paper", "seph-blog1", "rustcode"];

fn bench_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.sample_size(10);
    for name in TRACES {
        let t = benches::load(name);
        g.throughput(Throughput::Elements(t.ops.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut rope = Rope::new();
                for op in &t.ops {
                    apply_rope(&mut rope, op).unwrap();
                }
                assert_eq!(rope.len_chars(), t.end.chars().count());
                rope
            })
        });
    }
    g.finish();
}

/// Each op transformed against its predecessor as if both were concurrent:
/// the server's per-op cost when editors race.
fn bench_transform(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform");
    g.sample_size(10);
    for name in TRACES {
        let t = benches::load(name);
        g.throughput(Throughput::Elements(t.ops.len() as u64 - 1));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for w in t.ops.windows(2) {
                    n += transform(black_box(&w[1]), black_box(&w[0]), Side::Right)
                        .components()
                        .len();
                }
                n
            })
        });
    }
    g.finish();
}

/// The transformer's step: each op transformed against its predecessor as
/// a document's window keeps it. `whole` decodes a [`WindowOp`] into an op
/// first (what the transformer did before it kept shapes); `shape` reads
/// the moves of an [`OpShape`] in place.
fn bench_transform_window(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform_window");
    g.sample_size(10);
    for name in TRACES {
        let t = benches::load(name);
        let mut names = Names::default();
        let records: Vec<AppliedRecord> = t
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| AppliedRecord {
                v: 2,
                doc: "d".into(),
                seq: i as u64 + 1,
                prev: i as u64,
                client: "c".into(),
                cseq: i as u64 + 1,
                base: i as u64,
                user: "u".into(),
                ts: 0,
                op: op.clone(),
                del: vec!["x".into(); op.delete_count()],
                hash: None,
            })
            .collect();
        let whole: Vec<WindowOp> = records
            .iter()
            .map(|r| WindowOp::new(r, &mut names))
            .collect();
        let shapes: Vec<OpShape> = records
            .iter()
            .map(|r| WindowEntry::new(r, &mut names))
            .collect();
        g.throughput(Throughput::Elements(t.ops.len() as u64 - 1));
        g.bench_function(format!("whole/{name}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for (op, w) in t.ops[1..].iter().zip(&whole) {
                    n += transform(black_box(op), &w.op().expect("with its text"), Side::Right)
                        .components()
                        .len();
                }
                n
            })
        });
        g.bench_function(format!("shape/{name}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for (op, w) in t.ops[1..].iter().zip(&shapes) {
                    n += transform_by(black_box(op), w.moves(), Side::Right)
                        .components()
                        .len();
                }
                n
            })
        });
    }
    g.finish();
}

/// Composes runs of 64 consecutive ops: what a client's buffer does while
/// an op is in flight.
fn bench_compose(c: &mut Criterion) {
    let mut g = c.benchmark_group("compose");
    g.sample_size(10);
    for name in TRACES {
        let t = benches::load(name);
        g.throughput(Throughput::Elements(t.ops.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || t.ops.clone(),
                |ops| {
                    let mut out = Vec::new();
                    for chunk in ops.chunks(64) {
                        out.push(chunk.iter().fold(Op::noop(), |acc, op| compose(&acc, op)));
                    }
                    out
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_apply,
    bench_transform,
    bench_transform_window,
    bench_compose
);
criterion_main!(benches);
