//! What a document's window keeps of each applied op ([`WindowEntry`]).
//!
//! SPEC §9's window keeps the last 10,000 ops (or 10 minutes) of every
//! document in memory, in the transformer and in fanout, so its size per op
//! is most of a role's memory when people type one character per op. An
//! [`AppliedRecord`] there cost about 520 bytes per keystroke (its own
//! strings for the doc id, client, user and hex hash, and a vector of
//! components with a string per insert).
//!
//! Fanout keeps [`WindowOp`]s, since it serves catch-up and duplicate
//! answers from them: the same content in 136 bytes. The doc id is the
//! state's, client and user names are shared through the state's
//! [`Names`], the hash is 32 bytes, and the op and deleted text are packed
//! into one byte string, kept inline when it is short (a keystroke's is)
//! and allocated otherwise. [`WindowOp::record`] gives the record back
//! exactly. With its length delta in the state, 144 bytes per keystroke.
//!
//! The transformer keeps [`OpShape`]s: seq, ts, the duplicate check's
//! `(client, cseq)` and the op's moves (inserts as their lengths), packed
//! the same way: 64 bytes, 72 per op with its delta, whatever the op
//! inserted (unless it has more than a few components).

use std::collections::HashSet;
use std::sync::Arc;

use ot::{Component, Move, Op};
use protocol::chain::{self, ChainHash};
use protocol::packed::{put_op, put_str, put_varint, DELETE, INSERT, RETAIN};
use protocol::AppliedRecord;

/// The names a document's window refers to (clients and, for [`WindowOp`]s,
/// users), each held once.
#[derive(Debug, Clone, Default)]
pub struct Names(HashSet<Arc<str>>);

impl Names {
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(n.clone());
        n
    }

    /// Forgets names no window op refers to any more.
    pub fn prune(&mut self) {
        self.0.retain(|n| Arc::strong_count(n) > 1);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How the record's hash is kept: as bytes when its text is the canonical
/// lowercase hex (always, for records this code wrote), else as it was, at
/// the end of the packed body.
const NO_HASH: u8 = 0;
const HASH_BYTES: u8 = 1;
const HASH_TEXT: u8 = 2;
/// Set in `hash_kind` once the body holds only the op's shape
/// ([`WindowOp::drop_text`]).
const TEXT_DROPPED: u8 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowOp {
    pub seq: u64,
    pub prev: u64,
    pub cseq: u64,
    pub base: u64,
    pub ts: i64,
    pub v: u32,
    hash_kind: u8,
    pub client: Arc<str>,
    pub user: Arc<str>,
    /// The op's components, the deleted strings, a hash that is not
    /// canonical hex (see `pack`).
    body: Packed,
    hash: ChainHash,
}

/// An insert kept as its length in code points ([`OpShape`]); the other
/// tags are `protocol::packed`'s.
const INSERT_LEN: u8 = 3;

/// What a document's window keeps of each applied op (see [`DocState`]).
/// The transformer keeps [`OpShape`]s: transforming needs an op's moves, not
/// the text it inserted. Fanout keeps [`WindowOp`]s, to serve catch-up.
///
/// [`DocState`]: crate::DocState
pub trait WindowEntry: Clone + std::fmt::Debug + Send + Sync + 'static {
    fn new(r: &AppliedRecord, names: &mut Names) -> Self;
    fn seq(&self) -> u64;
    fn ts(&self) -> i64;
    /// Whether this is the op `cseq` of `client` (the duplicate check).
    fn is_op_of(&self, client: &str, cseq: u64) -> bool;
    /// The op's moves, for [`ot::transform_by`], read without allocating.
    fn moves(&self) -> Moves<'_>;
}

/// The moves of a packed op body.
pub struct Moves<'a> {
    left: usize,
    r: Reader<'a>,
}

impl<'a> Moves<'a> {
    fn of(body: &'a [u8]) -> Self {
        let mut r = Reader(body);
        let left = r.varint() as usize;
        Moves { left, r }
    }
}

impl Iterator for Moves<'_> {
    type Item = Move;

    fn next(&mut self) -> Option<Move> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let tag = self.r.byte();
        Some(match tag {
            RETAIN => Move::Retain(self.r.varint() as usize),
            // Counting code points needs no UTF-8 check: what is not a
            // continuation byte starts one.
            INSERT => Move::Insert(
                self.r
                    .bytes()
                    .iter()
                    .filter(|&&b| (b as i8) >= -0x40)
                    .count(),
            ),
            INSERT_LEN => Move::Insert(self.r.varint() as usize),
            DELETE => Move::Delete(self.r.varint() as usize),
            _ => unreachable!("packed by this module"),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// The body starts with the move count.
impl ExactSizeIterator for Moves<'_> {}

/// Bytes kept inline in a [`Packed`]: a keystroke's body (about 10 bytes
/// for a [`WindowOp`], 7 for an [`OpShape`]) fits.
const INLINE: usize = 22;

/// A packed body: inline when short, so a keystroke costs no allocation of
/// its own (glibc's smallest chunk is 32 bytes); 24 bytes either way.
#[derive(Clone)]
enum Packed {
    Inline(u8, [u8; INLINE]),
    Heap(Box<[u8]>),
}

impl Packed {
    fn new(bytes: Vec<u8>) -> Packed {
        match bytes.len() {
            n if n <= INLINE => {
                let mut b = [0; INLINE];
                b[..n].copy_from_slice(&bytes);
                Packed::Inline(n as u8, b)
            }
            _ => Packed::Heap(bytes.into_boxed_slice()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Packed::Inline(n, b) => &b[..usize::from(*n)],
            Packed::Heap(b) => b,
        }
    }
}

const _: () = assert!(INLINE <= u8::MAX as usize);

/// Equal bodies are equal however they are kept.
impl PartialEq for Packed {
    fn eq(&self, other: &Packed) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Packed {}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.bytes())
    }
}

/// Reads what `pack` wrote; the bytes never came from outside.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> u64 {
        let mut n = 0u64;
        let mut shift = 0;
        loop {
            let b = self.0[0];
            self.0 = &self.0[1..];
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return n;
            }
            shift += 7;
        }
    }

    fn byte(&mut self) -> u8 {
        let b = self.0[0];
        self.0 = &self.0[1..];
        b
    }

    fn bytes(&mut self) -> &'a [u8] {
        let len = self.varint() as usize;
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        s
    }

    fn str(&mut self) -> &'a str {
        std::str::from_utf8(self.bytes()).expect("packed from a str")
    }
}

/// `[component count, components…, deleted count, deleted strings…,
/// hash text if not canonical]`.
fn pack(op: &Op, del: &[String], hash_text: Option<&str>) -> Packed {
    let mut out =
        Vec::with_capacity(4 + op.inserted_bytes() + del.iter().map(String::len).sum::<usize>());
    put_op(&mut out, op);
    put_varint(&mut out, del.len() as u64);
    for d in del {
        put_str(&mut out, d);
    }
    if let Some(h) = hash_text {
        put_str(&mut out, h);
    }
    Packed::new(out)
}

impl WindowOp {
    pub fn new(r: &AppliedRecord, names: &mut Names) -> WindowOp {
        let (hash_kind, hash, text) = match r.hash.as_deref() {
            None => (NO_HASH, chain::GENESIS, None),
            // Canonical: what `to_hex` writes, 64 lowercase hex digits.
            Some(h)
                if h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                let b = chain::from_hex(h).expect("64 hex digits");
                (HASH_BYTES, b, None)
            }
            Some(h) => (HASH_TEXT, chain::GENESIS, Some(h)),
        };
        WindowOp {
            seq: r.seq,
            prev: r.prev,
            cseq: r.cseq,
            base: r.base,
            ts: r.ts,
            v: r.v,
            hash_kind,
            client: names.get(&r.client),
            user: names.get(&r.user),
            body: pack(&r.op, &r.del, text),
            hash,
        }
    }

    /// The op (built anew on each call); `None` once its text is dropped.
    pub fn op(&self) -> Option<Op> {
        self.has_text().then(|| self.op_and_rest().0)
    }

    /// Whether it still holds its record ([`WindowOp::record`]).
    pub fn has_text(&self) -> bool {
        self.hash_kind & TEXT_DROPPED == 0
    }

    /// Bytes its body takes on the heap (0 when kept inline).
    pub fn heap_bytes(&self) -> usize {
        match &self.body {
            Packed::Inline(..) => 0,
            Packed::Heap(b) => b.len(),
        }
    }

    /// Keeps only the op's shape (its moves, as an [`OpShape`] does), not
    /// the text it inserted and deleted nor a non-canonical hash; the
    /// duplicate check and transforming still work, [`WindowOp::record`]
    /// gives `None`. Fanout does this once the archive holds the record
    /// (and reads the record back from there).
    pub fn drop_text(&mut self) {
        if self.has_text() {
            self.body = shape(self.moves());
            self.hash_kind |= TEXT_DROPPED;
        }
    }

    fn op_and_rest(&self) -> (Op, Reader<'_>) {
        let mut r = Reader(self.body.bytes());
        let n = r.varint() as usize;
        let parts = (0..n).map(|_| {
            let tag = r.byte();
            match tag {
                RETAIN => Component::Retain(r.varint() as usize),
                INSERT => Component::Insert(r.str().to_owned()),
                DELETE => Component::Delete(r.varint() as usize),
                _ => unreachable!("a WindowOp packs no other tag"),
            }
        });
        // Packed from an op in normal form, so normalising changes nothing
        // (and costs a match per component).
        let op = Op::from_components(parts);
        (op, r)
    }

    /// The record this was made from, with the document's id; `None` once
    /// its text is dropped ([`WindowOp::drop_text`]).
    pub fn record(&self, doc: &str) -> Option<AppliedRecord> {
        if !self.has_text() {
            return None;
        }
        let (op, mut rest) = self.op_and_rest();
        let n = rest.varint() as usize;
        let del = (0..n).map(|_| rest.str().to_owned()).collect();
        let hash = match self.hash_kind {
            NO_HASH => None,
            HASH_BYTES => Some(chain::to_hex(&self.hash)),
            _ => Some(rest.str().to_owned()),
        };
        Some(AppliedRecord {
            v: self.v,
            doc: doc.to_owned(),
            seq: self.seq,
            prev: self.prev,
            client: self.client.to_string(),
            cseq: self.cseq,
            base: self.base,
            user: self.user.to_string(),
            ts: self.ts,
            op,
            del,
            hash,
        })
    }
}

impl WindowEntry for WindowOp {
    fn new(r: &AppliedRecord, names: &mut Names) -> Self {
        WindowOp::new(r, names)
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn ts(&self) -> i64 {
        self.ts
    }

    fn is_op_of(&self, client: &str, cseq: u64) -> bool {
        self.cseq == cseq && &*self.client == client
    }

    fn moves(&self) -> Moves<'_> {
        Moves::of(self.body.bytes())
    }
}

/// What the transformer keeps of an applied op: what the duplicate check
/// and transforming need, in 64 bytes with the op's moves packed inline (a
/// few bytes for a keystroke, whatever it inserted). A [`WindowOp`] also
/// keeps the inserted and deleted text, the user, the hash and the
/// versions, which only fanout's catch-up reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpShape {
    pub seq: u64,
    pub ts: i64,
    pub cseq: u64,
    pub client: Arc<str>,
    /// `[component count, moves…]`, inserts as [`INSERT_LEN`].
    body: Packed,
}

/// `[move count, moves…]`, inserts as [`INSERT_LEN`]: an op's shape.
fn shape(moves: impl ExactSizeIterator<Item = Move>) -> Packed {
    let mut body = Vec::with_capacity(1 + 4 * moves.len());
    put_varint(&mut body, moves.len() as u64);
    for m in moves {
        let (tag, n) = match m {
            Move::Retain(n) => (RETAIN, n),
            Move::Insert(n) => (INSERT_LEN, n),
            Move::Delete(n) => (DELETE, n),
        };
        body.push(tag);
        put_varint(&mut body, n as u64);
    }
    Packed::new(body)
}

impl WindowEntry for OpShape {
    fn new(r: &AppliedRecord, names: &mut Names) -> Self {
        OpShape {
            seq: r.seq,
            ts: r.ts,
            cseq: r.cseq,
            client: names.get(&r.client),
            body: shape(r.op.components().iter().map(Move::of)),
        }
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn ts(&self) -> i64 {
        self.ts
    }

    fn is_op_of(&self, client: &str, cseq: u64) -> bool {
        self.cseq == cseq && &*self.client == client
    }

    fn moves(&self) -> Moves<'_> {
        Moves::of(self.body.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: Op, del: &[&str], hash: Option<&str>) -> AppliedRecord {
        AppliedRecord {
            v: 2,
            doc: "d".into(),
            seq: 300,
            prev: 299,
            client: "client-é".into(),
            cseq: 1 << 40,
            base: 7,
            user: "u".into(),
            ts: -5,
            op,
            del: del.iter().map(|s| s.to_string()).collect(),
            hash: hash.map(str::to_owned),
        }
    }

    #[test]
    fn records_come_back_exactly() {
        let good = chain::to_hex(&[0xab; 32]);
        let upper = good.to_uppercase();
        let cases = [
            rec(Op::noop(), &[], None),
            rec(Op::splice(0, 0, "a"), &[], Some(&good)),
            rec(Op::splice(200, 3, "日本語 ✓"), &["xyz"], Some(&upper)),
            rec(
                Op::from_components([
                    Component::Retain(1 << 20),
                    Component::Delete(2),
                    Component::Retain(5),
                    Component::Insert("".into()),
                    Component::Insert("b".repeat(300)),
                    Component::Delete(1),
                ]),
                &["é", "", "c"],
                Some("not hex"),
            ),
        ];
        let mut names = Names::default();
        for r in cases {
            let w = WindowOp::new(&r, &mut names);
            assert_eq!(w.record("d"), Some(r.clone()));
            assert_eq!(w.op(), Some(r.op));
        }
        // One copy of each name, dropped once no op refers to it.
        assert_eq!(names.len(), 2);
        names.prune();
        assert!(names.is_empty());
    }

    /// Both kinds of window op give the moves of the op they keep
    /// (`ot::transform` is `transform_by` through those moves, so
    /// transforming through either is transforming through the op).
    #[test]
    fn window_ops_give_their_ops_moves() {
        let ops = [
            Op::noop(),
            Op::splice(0, 0, "a"),
            Op::splice(3, 2, "日本語 ✓😀"),
            Op::from_components([
                Component::Retain(1 << 20),
                Component::Insert("é".repeat(200)),
                Component::Delete(7),
                Component::Retain(2),
                Component::Delete(1),
            ]),
        ];
        let mut names = Names::default();
        for op in ops {
            let del: Vec<String> = (0..op.delete_count()).map(|_| "?".into()).collect();
            let r = rec(op.clone(), &[], None);
            let r = AppliedRecord { del, ..r };
            let full = WindowOp::new(&r, &mut names);
            let shape = OpShape::new(&r, &mut names);
            let want: Vec<Move> = op.components().iter().map(Move::of).collect();
            assert_eq!(full.moves().collect::<Vec<_>>(), want);
            assert_eq!(shape.moves().collect::<Vec<_>>(), want);
            // Without its text a window op keeps its moves and its shape's
            // body, and gives no record.
            let mut bare = full.clone();
            bare.drop_text();
            assert_eq!(bare.moves().collect::<Vec<_>>(), want);
            assert_eq!(bare.body, shape.body);
            assert!(!bare.has_text() && bare.record("d").is_none() && bare.op().is_none());
            assert!(bare.is_op_of(&r.client, r.cseq));
            assert_eq!((bare.seq, bare.ts), (r.seq, r.ts));
            assert_eq!((shape.seq, shape.ts), (r.seq, r.ts));
            assert!(shape.is_op_of(&r.client, r.cseq) && !shape.is_op_of(&r.client, r.cseq + 1));
            assert!(!shape.is_op_of("other", r.cseq));
        }
        // A shape holds its client's name, not its user's: once the whole
        // ops are gone, only the client's name stays, until the shapes go.
        let shapes: Vec<OpShape> = (0..3)
            .map(|i| OpShape::new(&rec(Op::splice(i, 0, "s"), &[], None), &mut names))
            .collect();
        names.prune();
        assert_eq!(names.len(), 1);
        drop(shapes);
        names.prune();
        assert!(names.is_empty());
    }

    /// What a window costs per op (module doc): 136 bytes for a
    /// [`WindowOp`], 64 for an [`OpShape`], and a keystroke's packed body
    /// inline in them, whatever it types or deletes.
    #[test]
    fn a_keystroke_is_small() {
        let sizes = (
            std::mem::size_of::<WindowOp>(),
            std::mem::size_of::<OpShape>(),
        );
        assert!(sizes.0 <= 136 && sizes.1 <= 64, "{sizes:?}");
        let mut names = Names::default();
        for (op, del) in [
            (Op::splice(123_456, 0, "😀"), vec![]),
            (Op::splice(123_456, 1, ""), vec!["😀".to_string()]),
        ] {
            let r = AppliedRecord {
                del,
                ..rec(op, &[], Some(&chain::to_hex(&[7; 32])))
            };
            let w = WindowOp::new(&r, &mut names);
            assert!(matches!(w.body, Packed::Inline(..)), "{:?}", w.body);
            assert_eq!(w.record("d"), Some(r.clone()));
            let s = OpShape::new(&r, &mut names);
            assert!(matches!(s.body, Packed::Inline(..)), "{:?}", s.body);
        }
        // Bodies up to INLINE bytes stay inline, longer ones are allocated;
        // both come back whole.
        for n in [INLINE - 1, INLINE, INLINE + 1] {
            let bytes: Vec<u8> = (0..n as u8).collect();
            let p = Packed::new(bytes.clone());
            assert_eq!(p.bytes(), &bytes[..]);
            assert_eq!(matches!(p, Packed::Inline(..)), n <= INLINE, "{n}");
        }
        assert_eq!(std::mem::size_of::<Packed>(), 24);
        // A 1 kB insert's moves are as small as a keystroke's.
        let s = OpShape::new(
            &rec(Op::splice(1234, 0, &"b".repeat(1000)), &[], None),
            &mut names,
        );
        assert!(matches!(s.body, Packed::Inline(..)), "{:?}", s.body);
    }
}
