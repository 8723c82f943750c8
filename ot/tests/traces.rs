//! Replays every sequential editing trace in `testdata/traces/` (at the
//! repository root) through the OT core and checks the final text equals the
//! trace's `endContent`.

use ot::{apply_rope, compose, Op};
use ropey::Rope;
use testkit::traces::{load_file, trace_files};

#[test]
fn replay_every_sequential_trace() {
    let paths = trace_files();
    assert!(
        paths.len() >= 10,
        "expected the traces in testdata/, found {paths:?}"
    );
    for p in paths {
        let t = load_file(&p);
        let mut rope = Rope::new();
        let mut ops = 0;
        for txn in &t.txns {
            // A transaction's patches are composed into one op, as an editor
            // would send them, which also exercises compose on real data.
            let mut txn_op = Op::noop();
            for patch in &txn.patches {
                let op = Op::splice(patch.pos, patch.del, &patch.ins);
                txn_op = compose(&txn_op, &op);
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
