//! Every reference case in `tests/data/vectors/ot.ndjson` must be reproduced exactly.

use ot::{apply, compose, invert, transform, Op, Side};
use serde_json::Value;

/// The reference vectors, kept in the repository (their source and
/// checksums are in `tests/data/vectors/SOURCE.md`).
fn vectors_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors/ot.ndjson")
}

fn op(v: &Value) -> Op {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bad op {v}: {e}"))
}

fn op_json(o: &Op) -> Value {
    serde_json::to_value(o).unwrap()
}

#[test]
fn reference_vectors() {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: Value = serde_json::from_str(line).unwrap();
        let kind = case["kind"].as_str().unwrap().to_owned();
        let ctx = format!("line {}: {line}", i + 1);
        match kind.as_str() {
            "apply" => {
                let got = apply(case["doc"].as_str().unwrap(), &op(&case["op"])).unwrap();
                assert_eq!(got, case["result"].as_str().unwrap(), "{ctx}");
            }
            "transform" => {
                let side = match case["side"].as_str().unwrap() {
                    "left" => Side::Left,
                    "right" => Side::Right,
                    s => panic!("unknown side {s}"),
                };
                let doc = case["doc"].as_str().unwrap();
                let (a, b) = (op(&case["op"]), op(&case["other"]));
                let got = transform(&a, &b, side);
                assert_eq!(op_json(&got), case["result"], "{ctx}");
                let check = apply(&apply(doc, &b).unwrap(), &got).unwrap();
                assert_eq!(check, case["check"].as_str().unwrap(), "{ctx}");
            }
            "compose" => {
                let got = compose(&op(&case["a"]), &op(&case["b"]));
                assert_eq!(op_json(&got), case["result"], "{ctx}");
            }
            "invert" => {
                let deleted: Vec<String> = serde_json::from_value(case["deleted"].clone()).unwrap();
                let got = invert(&op(&case["op"]), &deleted).unwrap();
                assert_eq!(op_json(&got), case["result"], "{ctx}");
            }
            "normalize" => {
                assert_eq!(op_json(&op(&case["op"])), case["result"], "{ctx}");
            }
            other => panic!("unknown vector kind {other} at {ctx}"),
        }
        *counts.entry(kind).or_default() += 1;
    }
    println!("reproduced vectors: {counts:?}");
    assert!(
        counts.values().sum::<usize>() > 1000,
        "too few vectors read"
    );
}

/// Quire's own cursor-transform cases (`tests/data/cursor.ndjson`), read by
/// this suite and by the TypeScript client's (`web/test/ot.test.ts`), so the
/// two implementations cannot drift.
#[test]
fn cursor_vectors() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cursor.ndjson");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: Value = serde_json::from_str(line).unwrap();
        let ctx = format!("line {}: {line}", i + 1);
        assert_eq!(case["kind"], "cursor", "{ctx}");
        let doc = case["doc"].as_str().unwrap();
        let o = op(&case["op"]);
        // Every case's op fits its document, and the cursor is inside it.
        let after = apply(doc, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let cursor = case["cursor"].as_u64().unwrap() as usize;
        assert!(cursor <= doc.chars().count(), "{ctx}");
        let side = match case["side"].as_str().unwrap() {
            "left" => Side::Left,
            "right" => Side::Right,
            s => panic!("unknown side {s}"),
        };
        let got = ot::transform_cursor(cursor, &o, side);
        assert_eq!(got as u64, case["result"].as_u64().unwrap(), "{ctx}");
        assert!(got <= after.chars().count(), "{ctx}");
        n += 1;
    }
    assert!(n >= 20, "too few cursor vectors read: {n}");
}
