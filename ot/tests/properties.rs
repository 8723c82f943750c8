//! Seeded property tests and a fuzzer against a deliberately naive reference.
//!
//! The reference models a document as a list of code points with, for every
//! gap, the text each op inserts there and, for every code point, whether each
//! op deletes it. Merging two concurrent ops is then obvious; the real
//! `transform` must produce the same text from both sides (TP1) and agree with
//! the tie rule. Failures print the seed: rerun with `QUIRE_SEED=<seed>`.

use ot::{apply, apply_with_deleted, compose, invert, transform, Component, Op, Side, SplitMix64};

const ALPHABET: &[char] = &['a', 'b', 'x', ' ', '\n', 'é', '中', '😀'];

fn rand_text(r: &mut SplitMix64, max: u64) -> String {
    (0..r.below(max + 1)).map(|_| *r.pick(ALPHABET)).collect()
}

/// A random op that fits a document of `len` code points, possibly not in
/// normal form (the constructor normalises).
fn rand_op(r: &mut SplitMix64, len: usize) -> Op {
    let mut comps = Vec::new();
    let mut left = len;
    while r.chance(4, 5) {
        match r.below(3) {
            0 if left > 0 => {
                let n = 1 + r.below(left as u64) as usize;
                comps.push(Component::Retain(n));
                left -= n;
            }
            1 if left > 0 => {
                let n = 1 + r.below(left.min(4) as u64) as usize;
                comps.push(Component::Delete(n));
                left -= n;
            }
            _ => comps.push(Component::Insert(rand_text(r, 4))),
        }
    }
    Op::from_components(comps)
}

/// The naive model of one op over a document of `len` code points.
struct Naive {
    /// `inserts[g]`: text inserted in gap g (before code point g).
    inserts: Vec<String>,
    /// `deleted[i]`: the op deletes code point i.
    deleted: Vec<bool>,
}

fn naive(op: &Op, len: usize) -> Naive {
    let mut n = Naive {
        inserts: vec![String::new(); len + 1],
        deleted: vec![false; len],
    };
    let mut pos = 0;
    for c in op.components() {
        match c {
            Component::Retain(k) => pos += k,
            Component::Insert(s) => n.inserts[pos].push_str(s),
            Component::Delete(k) => {
                for d in &mut n.deleted[pos..pos + k] {
                    *d = true;
                }
                pos += k;
            }
        }
    }
    n
}

fn naive_apply(doc: &str, op: &Op) -> String {
    let chars: Vec<char> = doc.chars().collect();
    let m = naive(op, chars.len());
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        out.push_str(&m.inserts[i]);
        if !m.deleted[i] {
            out.push(*c);
        }
    }
    out.push_str(&m.inserts[chars.len()]);
    out
}

/// The merged document when `first` was sequenced before `second`.
fn naive_merge(doc: &str, first: &Op, second: &Op) -> String {
    let chars: Vec<char> = doc.chars().collect();
    let (f, s) = (naive(first, chars.len()), naive(second, chars.len()));
    let mut out = String::new();
    for g in 0..=chars.len() {
        out.push_str(&f.inserts[g]);
        out.push_str(&s.inserts[g]);
        if g < chars.len() && !f.deleted[g] && !s.deleted[g] {
            out.push(chars[g]);
        }
    }
    out
}

fn is_normal(op: &Op) -> bool {
    let again = Op::from_components(op.components().iter().cloned());
    &again == op
}

fn seeds() -> (u64, u64) {
    match std::env::var("QUIRE_SEED") {
        Ok(s) => (s.parse().expect("QUIRE_SEED must be a number"), 1),
        Err(_) => (0x5eed_0000, 20_000),
    }
}

fn for_each_seed(name: &str, mut f: impl FnMut(&mut SplitMix64)) {
    let (start, count) = seeds();
    for seed in start..start + count {
        let mut r = SplitMix64::new(seed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut r)));
        if let Err(e) = result {
            eprintln!("{name} failed with seed {seed}: rerun with QUIRE_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn apply_matches_naive_reference() {
    for_each_seed("apply", |r| {
        let doc = rand_text(r, 12);
        let op = rand_op(r, doc.chars().count());
        assert!(is_normal(&op));
        let out = apply(&doc, &op).unwrap();
        assert_eq!(out, naive_apply(&doc, &op), "{doc:?} {op:?}");
        assert_eq!(op.target_len(doc.chars().count()), out.chars().count());
    });
}

#[test]
fn transform_tp1_and_tie_rule_match_naive_merge() {
    for_each_seed("transform", |r| {
        let doc = rand_text(r, 12);
        let len = doc.chars().count();
        let (a, b) = (rand_op(r, len), rand_op(r, len));
        // a sequenced earlier: a's inserts go left.
        let a2 = transform(&a, &b, Side::Left);
        let b2 = transform(&b, &a, Side::Right);
        assert!(is_normal(&a2) && is_normal(&b2));
        let via_b = apply(&apply(&doc, &b).unwrap(), &a2).unwrap();
        let via_a = apply(&apply(&doc, &a).unwrap(), &b2).unwrap();
        assert_eq!(via_a, via_b, "TP1: doc={doc:?} a={a:?} b={b:?}");
        assert_eq!(
            via_a,
            naive_merge(&doc, &a, &b),
            "tie rule: doc={doc:?} a={a:?} b={b:?}"
        );
    });
}

#[test]
fn compose_matches_sequential_apply() {
    for_each_seed("compose", |r| {
        let doc = rand_text(r, 12);
        let a = rand_op(r, doc.chars().count());
        let mid = apply(&doc, &a).unwrap();
        let b = rand_op(r, mid.chars().count());
        let ab = compose(&a, &b);
        assert!(is_normal(&ab));
        assert_eq!(
            apply(&doc, &ab).unwrap(),
            apply(&mid, &b).unwrap(),
            "{doc:?} {a:?} {b:?}"
        );
    });
}

#[test]
fn invert_undoes_apply() {
    for_each_seed("invert", |r| {
        let doc = rand_text(r, 12);
        let a = rand_op(r, doc.chars().count());
        let (after, deleted) = apply_with_deleted(&doc, &a).unwrap();
        let inv = invert(&a, &deleted).unwrap();
        assert!(is_normal(&inv));
        assert_eq!(apply(&after, &inv).unwrap(), doc, "{a:?} {deleted:?}");
    });
}
