//! Property tests (proptest) against a deliberately naive reference.
//!
//! The reference models a document as a list of code points with, for every
//! gap, the text each op inserts there and, for every code point, whether each
//! op deletes it. Merging two concurrent ops is then obvious; the real
//! `transform` must produce the same text from both sides (TP1) and agree with
//! the tie rule.
//!
//! Ops are generated as arbitrary component lists (zero-sized, adjacent,
//! delete-before-insert: the constructor normalises them), clipped to fit the
//! document, so a failing case shrinks to a short document and a short op.
//! proptest prints the minimal case and saves its seed under
//! `ot/proptest-regressions/`, where later runs replay it first.
//! `PROPTEST_CASES=<n>` overrides the number of cases per property.

use ot::{
    apply, apply_with_deleted, compose, invert, transform, Component, Op, OtError, SentOp, Side,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        // proptest's default (`SourceParallel`) looks for a lib.rs above the
        // test file, which an integration test has not, and falls back to a
        // file beside it: name the usual place instead.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/properties.txt"
        )))),
        ..ProptestConfig::with_cases(cases)
    }
}

const ALPHABET: &[char] = &['a', 'b', 'x', ' ', '\n', 'é', '中', '😀'];

/// Up to `max` code points; shrinks towards shorter text of `a`s.
fn text(max: usize) -> impl Strategy<Value = String> {
    vec(select(ALPHABET), 0..=max).prop_map(String::from_iter)
}

fn doc() -> impl Strategy<Value = String> {
    text(12)
}

/// Arbitrary components, not necessarily in normal form or fitting anything.
fn raw_components(max_retain: usize, max_delete: usize) -> impl Strategy<Value = Vec<Component>> {
    vec(
        prop_oneof![
            (0..=max_retain).prop_map(Component::Retain),
            (0..=max_delete).prop_map(Component::Delete),
            text(4).prop_map(Component::Insert),
        ],
        0..8,
    )
}

/// Clips retains and deletes so that the components fit `len` code points.
fn clip(raw: &[Component], len: usize) -> Vec<Component> {
    let mut left = len;
    let mut out = Vec::new();
    for c in raw {
        out.push(match c {
            Component::Retain(n) => {
                let n = (*n).min(left);
                left -= n;
                Component::Retain(n)
            }
            Component::Delete(n) => {
                let n = (*n).min(left);
                left -= n;
                Component::Delete(n)
            }
            Component::Insert(s) => Component::Insert(s.clone()),
        });
    }
    out
}

/// An op (normalised by its constructor) that fits a document of `len`.
fn fitting_op(raw: &[Component], len: usize) -> Op {
    Op::from_components(clip(raw, len))
}

fn ops() -> impl Strategy<Value = Vec<Component>> {
    raw_components(12, 4)
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// A document and an op that fits it.
fn doc_and_op() -> impl Strategy<Value = (String, Op)> {
    (doc(), ops()).prop_map(|(d, raw)| {
        let op = fitting_op(&raw, char_len(&d));
        (d, op)
    })
}

/// A document and two concurrent ops made on it.
fn doc_and_concurrent_ops() -> impl Strategy<Value = (String, Op, Op)> {
    (doc(), ops(), ops()).prop_map(|(d, ra, rb)| {
        let len = char_len(&d);
        let (a, b) = (fitting_op(&ra, len), fitting_op(&rb, len));
        (d, a, b)
    })
}

/// A document, an op on it and an op on the result (sized by the reference).
fn doc_and_sequential_ops() -> impl Strategy<Value = (String, Op, Op)> {
    (doc(), ops(), ops()).prop_map(|(d, ra, rb)| {
        let a = fitting_op(&ra, char_len(&d));
        let mid = naive_apply(&d, a.components()).expect("a fits by construction");
        let b = fitting_op(&rb, char_len(&mid));
        (d, a, b)
    })
}

/// The naive model of one op over a document of `len` code points.
struct Naive {
    /// `inserts[g]`: text inserted in gap g (before code point g).
    inserts: Vec<String>,
    /// `deleted[i]`: the op deletes code point i.
    deleted: Vec<bool>,
}

/// `None` when a retain or delete runs past the end of the document.
fn naive(comps: &[Component], len: usize) -> Option<Naive> {
    let mut n = Naive {
        inserts: vec![String::new(); len + 1],
        deleted: vec![false; len],
    };
    let mut pos = 0;
    for c in comps {
        match c {
            Component::Retain(k) => {
                pos += k;
                if pos > len {
                    return None;
                }
            }
            Component::Insert(s) => n.inserts[pos].push_str(s),
            Component::Delete(k) => {
                for d in n.deleted.get_mut(pos..pos + k)? {
                    *d = true;
                }
                pos += k;
            }
        }
    }
    Some(n)
}

fn naive_apply(doc: &str, comps: &[Component]) -> Option<String> {
    let chars: Vec<char> = doc.chars().collect();
    let m = naive(comps, chars.len())?;
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        out.push_str(&m.inserts[i]);
        if !m.deleted[i] {
            out.push(*c);
        }
    }
    out.push_str(&m.inserts[chars.len()]);
    Some(out)
}

/// The merged document when `first` was sequenced before `second`.
fn naive_merge(doc: &str, first: &Op, second: &Op) -> String {
    let chars: Vec<char> = doc.chars().collect();
    let f = naive(first.components(), chars.len()).expect("first fits");
    let s = naive(second.components(), chars.len()).expect("second fits");
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

/// Retains plus deletes: the code points a component list reads (SPEC §3).
fn span(comps: &[Component]) -> usize {
    comps
        .iter()
        .map(|c| match c {
            Component::Retain(n) | Component::Delete(n) => *n,
            Component::Insert(_) => 0,
        })
        .sum()
}

/// The retains after the last non-empty insert or delete: what normal form
/// drops.
fn trailing_retain(comps: &[Component]) -> usize {
    comps
        .iter()
        .rev()
        .take_while(|c| match c {
            Component::Retain(_) | Component::Delete(0) => true,
            Component::Insert(s) => s.is_empty(),
            Component::Delete(_) => false,
        })
        .map(|c| match c {
            Component::Retain(n) => *n,
            _ => 0,
        })
        .sum()
}

/// Components as an editor might send them, not clipped to any document,
/// ending with an explicit trailing retain (possibly 0).
fn sent_components() -> impl Strategy<Value = Vec<Component>> {
    (raw_components(6, 4), 0..=8usize).prop_map(|(mut comps, tail)| {
        comps.push(Component::Retain(tail));
        comps
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn apply_matches_naive_reference((doc, op) in doc_and_op()) {
        prop_assert!(is_normal(&op), "{op:?}");
        let out = apply(&doc, &op).unwrap();
        prop_assert_eq!(Some(out), naive_apply(&doc, op.components()));
    }

    #[test]
    fn target_len_is_the_length_after_apply((doc, op) in doc_and_op()) {
        let out = apply(&doc, &op).unwrap();
        prop_assert_eq!(op.target_len(char_len(&doc)), char_len(&out));
    }

    #[test]
    fn transform_tp1_and_tie_rule_match_naive_merge((doc, a, b) in doc_and_concurrent_ops()) {
        // a sequenced earlier: a's inserts go left.
        let a2 = transform(&a, &b, Side::Left);
        let b2 = transform(&b, &a, Side::Right);
        prop_assert!(is_normal(&a2) && is_normal(&b2), "{a2:?} {b2:?}");
        let via_b = apply(&apply(&doc, &b).unwrap(), &a2).unwrap();
        let via_a = apply(&apply(&doc, &a).unwrap(), &b2).unwrap();
        prop_assert_eq!(&via_a, &via_b, "TP1");
        prop_assert_eq!(via_a, naive_merge(&doc, &a, &b), "tie rule");
    }

    #[test]
    fn compose_matches_sequential_apply((doc, a, b) in doc_and_sequential_ops()) {
        let mid = apply(&doc, &a).unwrap();
        let ab = compose(&a, &b);
        prop_assert!(is_normal(&ab), "{ab:?}");
        prop_assert_eq!(apply(&doc, &ab).unwrap(), apply(&mid, &b).unwrap());
    }

    #[test]
    fn invert_undoes_apply((doc, a) in doc_and_op()) {
        let (after, deleted) = apply_with_deleted(&doc, &a).unwrap();
        let inv = invert(&a, &deleted).unwrap();
        prop_assert!(is_normal(&inv), "{inv:?}");
        prop_assert_eq!(apply(&after, &inv).unwrap(), doc, "deleted: {:?}", deleted);
    }

    /// SPEC §3: an op fits a document of length L when its retains plus
    /// deletes ≤ L, counted on the op as sent, trailing retain included.
    #[test]
    fn fit_is_decided_by_the_sent_span(doc in doc(), sent in sent_components()) {
        let len = char_len(&doc);
        let fits_as_sent = span(&sent) <= len;
        // The naive walk agrees with the sum: the span decides fit.
        prop_assert_eq!(naive(&sent, len).is_some(), fits_as_sent);

        // Normalising drops exactly the trailing retain from the span.
        let op = Op::from_components(sent.clone());
        prop_assert_eq!(op.base_len(), span(&sent) - trailing_retain(&sent));
        prop_assert_eq!(span(op.components()), op.base_len());

        // The normalised op applies iff its own span fits, with the same
        // text as the naive walk of the sent components when those fit.
        let got = apply(&doc, &op);
        prop_assert!(!fits_as_sent || op.base_len() <= len);
        if op.base_len() <= len {
            let out = got.unwrap();
            if fits_as_sent {
                prop_assert_eq!(Some(out), naive_apply(&doc, &sent));
            }
        } else {
            prop_assert_eq!(got, Err(OtError::DoesNotFit { needed: op.base_len(), len }));
        }

        // The op as sent, through the wire format: `SentOp` keeps the span,
        // so `[100]` does not fit "" although its normal form is the no-op.
        let wire: Vec<serde_json::Value> = sent
            .iter()
            .map(|c| match c {
                Component::Retain(n) => serde_json::json!(*n),
                Component::Delete(n) => serde_json::json!(-(*n as i64)),
                Component::Insert(t) => serde_json::json!(t),
            })
            .collect();
        let as_sent: SentOp = serde_json::from_value(serde_json::Value::Array(wire)).unwrap();
        prop_assert_eq!(as_sent.span(), span(&sent));
        prop_assert_eq!(as_sent.fits(len), fits_as_sent);
        prop_assert_eq!(as_sent.op(), &op);
        let back: SentOp = serde_json::from_str(&serde_json::to_string(&as_sent).unwrap()).unwrap();
        prop_assert_eq!(back, as_sent);
    }
}
