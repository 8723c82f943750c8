//! Loads the editing traces in `testdata/traces/` as Quire ops, for the
//! benchmarks.

use ot::Op;

/// A trace as a list of ops (one per patch) and the expected final text.
pub struct Loaded {
    pub name: String,
    pub ops: Vec<Op>,
    pub end: String,
}

pub fn load(name: &str) -> Loaded {
    let t = testkit::traces::load(name);
    let ops = t
        .patches()
        .map(|p| Op::splice(p.pos, p.del, &p.ins))
        .collect();
    Loaded {
        name: name.to_owned(),
        ops,
        end: t.end_content,
    }
}
