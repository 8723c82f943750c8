//! Replays every sequential editing trace in `testdata/traces/` (at the
//! repository root) through the OT core and checks the final text equals the
//! trace's `endContent`.

use std::io::Read;

use ot::{apply_rope, compose, Op};
use ropey::Rope;
use serde::Deserialize;

#[derive(Deserialize)]
struct Trace {
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    patches: Vec<(usize, usize, String)>,
}

fn traces() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let root = traces_dir();
    for dir in [root.clone(), root.join("ascii_only")] {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "gz") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `testdata/traces/sequential_traces` at the repository root.
fn traces_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/traces/sequential_traces")
}

fn load(p: &std::path::Path) -> Trace {
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

#[test]
fn replay_every_sequential_trace() {
    let paths = traces();
    assert!(
        paths.len() >= 10,
        "expected the traces in testdata/, found {paths:?}"
    );
    for p in paths {
        let t = load(&p);
        let mut rope = Rope::new();
        let mut ops = 0;
        for txn in &t.txns {
            // A transaction's patches are composed into one op, as an editor
            // would send them, which also exercises compose on real data.
            let mut txn_op = Op::noop();
            for (pos, del, ins) in &txn.patches {
                txn_op = compose(&txn_op, &Op::splice(*pos, *del, ins));
            }
            apply_rope(&mut rope, &txn_op)
                .unwrap_or_else(|e| panic!("{}: txn {ops}: {e}", p.display()));
            ops += 1;
        }
        assert!(rope == t.end_content.as_str(), "{} diverged", p.display());
        println!(
            "{}: {ops} txns replayed, {} chars",
            p.display(),
            rope.len_chars()
        );
    }
}
