use std::fmt;

use ropey::Rope;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One step of an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// Keep `n` code points.
    Retain(usize),
    /// Insert this text (never empty in normal form).
    Insert(String),
    /// Remove `n` code points.
    Delete(usize),
}

/// A component as another op is transformed past it: only its kind and
/// length in code points matter (what an insert inserts does not), so a
/// server can keep this much of its history instead of whole ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Retain(usize),
    /// An insert of this many code points.
    Insert(usize),
    Delete(usize),
}

impl Move {
    pub fn of(c: &Component) -> Move {
        match c {
            Component::Retain(n) => Move::Retain(*n),
            Component::Insert(s) => Move::Insert(char_len(s)),
            Component::Delete(n) => Move::Delete(*n),
        }
    }
}

/// Which op's insert goes first when both insert at one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The op being transformed was sequenced earlier: its inserts stay left.
    Left,
    /// The other op was sequenced earlier: its inserts stay left.
    Right,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtError {
    #[error("op spans {needed} code points but the document has {len}")]
    DoesNotFit { needed: usize, len: usize },
    #[error("invert needs {needed} deleted strings, got {got}")]
    DeletedMismatch { needed: usize, got: usize },
    #[error("deleted string #{index} has {got} code points, the op deletes {expected}")]
    DeletedLength {
        index: usize,
        expected: usize,
        got: usize,
    },
}

/// An operation in normal form: no empty components, adjacent components of
/// one kind merged, inserts before adjacent deletes, no trailing retain.
///
/// Every constructor normalises, so an `Op` value is always in normal form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Op(Vec<Component>);

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Byte index of the `n`th code point of `s` (or `s.len()`).
fn byte_at(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

impl Op {
    /// The identity op.
    pub fn noop() -> Op {
        Op(Vec::new())
    }

    /// Builds an op from arbitrary components, normalising them.
    pub fn from_components(components: impl IntoIterator<Item = Component>) -> Op {
        let mut b = Builder::default();
        for c in components {
            b.push(c);
        }
        b.finish()
    }

    /// `[pos retain, insert, -del]`: the splice shape of editing traces.
    pub fn splice(pos: usize, del: usize, ins: &str) -> Op {
        Op::from_components([
            Component::Retain(pos),
            Component::Insert(ins.to_owned()),
            Component::Delete(del),
        ])
    }

    pub fn components(&self) -> &[Component] {
        &self.0
    }

    pub fn is_noop(&self) -> bool {
        self.0.is_empty()
    }

    /// Code points the op reads from its input: retains plus deletes.
    /// The op fits a document of length L when this is ≤ L.
    pub fn base_len(&self) -> usize {
        self.0
            .iter()
            .map(|c| match c {
                Component::Retain(n) | Component::Delete(n) => *n,
                Component::Insert(_) => 0,
            })
            .sum()
    }

    /// Total code points this op inserts.
    pub fn inserted_len(&self) -> usize {
        self.0
            .iter()
            .map(|c| match c {
                Component::Insert(s) => char_len(s),
                _ => 0,
            })
            .sum()
    }

    /// Total bytes (UTF-8) this op inserts.
    pub fn inserted_bytes(&self) -> usize {
        self.0
            .iter()
            .map(|c| match c {
                Component::Insert(s) => s.len(),
                _ => 0,
            })
            .sum()
    }

    /// Number of delete components (each yields one deleted string).
    pub fn delete_count(&self) -> usize {
        self.0
            .iter()
            .filter(|c| matches!(c, Component::Delete(_)))
            .count()
    }

    /// Length of the document after applying to one of length `len`.
    pub fn target_len(&self, len: usize) -> usize {
        let mut out = len;
        for c in &self.0 {
            match c {
                Component::Insert(s) => out += char_len(s),
                Component::Delete(n) => out -= n,
                Component::Retain(_) => {}
            }
        }
        out
    }
}

/// Appends components while keeping normal form.
#[derive(Default)]
struct Builder {
    out: Vec<Component>,
}

impl Builder {
    fn push(&mut self, c: Component) {
        match c {
            Component::Retain(0) | Component::Delete(0) => {}
            Component::Insert(ref s) if s.is_empty() => {}
            Component::Retain(n) => match self.out.last_mut() {
                Some(Component::Retain(m)) => *m += n,
                _ => self.out.push(Component::Retain(n)),
            },
            Component::Delete(n) => match self.out.last_mut() {
                Some(Component::Delete(m)) => *m += n,
                _ => self.out.push(Component::Delete(n)),
            },
            Component::Insert(s) => {
                let len = self.out.len();
                match self.out.as_mut_slice() {
                    [.., Component::Insert(prev)] => prev.push_str(&s),
                    [.., Component::Insert(prev), Component::Delete(_)] => prev.push_str(&s),
                    [.., Component::Delete(_)] => self.out.insert(len - 1, Component::Insert(s)),
                    _ => self.out.push(Component::Insert(s)),
                }
            }
        }
    }

    fn push_piece(&mut self, p: Piece<'_>) {
        match p {
            Piece::Retain(n) => self.push(Component::Retain(n)),
            Piece::Delete(n) => self.push(Component::Delete(n)),
            Piece::Insert(s) => self.push(Component::Insert(s.to_owned())),
        }
    }

    fn finish(mut self) -> Op {
        if let Some(Component::Retain(_)) = self.out.last() {
            self.out.pop();
        }
        Op(self.out)
    }
}

#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    Retain(usize),
    Insert(&'a str),
    Delete(usize),
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::Retain(n) | Piece::Delete(n) => *n,
            Piece::Insert(s) => char_len(s),
        }
    }
}

/// Walks an op, handing out pieces of its components; past the end it yields
/// the implicit retain forever.
struct Walker<'a> {
    comps: &'a [Component],
    index: usize,
    /// Code points (or chars of an insert) already taken from `comps[index]`.
    offset: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Whole {
    Inserts,
    Deletes,
}

impl<'a> Walker<'a> {
    fn new(op: &'a Op) -> Self {
        Walker {
            comps: &op.0,
            index: 0,
            offset: 0,
        }
    }

    fn peek_is_insert(&self) -> bool {
        matches!(self.comps.get(self.index), Some(Component::Insert(_)))
    }

    fn is_done(&self) -> bool {
        self.index >= self.comps.len()
    }

    /// Takes at most `max` code points; components of kind `whole` are taken
    /// entire whatever `max` is (they do not count against it).
    fn take(&mut self, max: usize, whole: Option<Whole>) -> Piece<'a> {
        let Some(c) = self.comps.get(self.index) else {
            return Piece::Retain(max);
        };
        match c {
            Component::Retain(n) => {
                let n = (*n - self.offset).min(max);
                self.advance(n, self.comps_len());
                Piece::Retain(n)
            }
            Component::Delete(n) => {
                let rest = *n - self.offset;
                let n = if whole == Some(Whole::Deletes) {
                    rest
                } else {
                    rest.min(max)
                };
                self.advance(n, self.comps_len());
                Piece::Delete(n)
            }
            Component::Insert(s) => {
                let start = byte_at(s, self.offset);
                let rest = &s[start..];
                if whole == Some(Whole::Inserts) {
                    self.index += 1;
                    self.offset = 0;
                    return Piece::Insert(rest);
                }
                let end = byte_at(rest, max);
                let piece = &rest[..end];
                if end == rest.len() {
                    self.index += 1;
                    self.offset = 0;
                } else {
                    self.offset += char_len(piece);
                }
                Piece::Insert(piece)
            }
        }
    }

    fn comps_len(&self) -> usize {
        match &self.comps[self.index] {
            Component::Retain(n) | Component::Delete(n) => *n,
            Component::Insert(s) => char_len(s),
        }
    }

    fn advance(&mut self, n: usize, total: usize) {
        self.offset += n;
        if self.offset >= total {
            self.index += 1;
            self.offset = 0;
        }
    }
}

/// Applies `op` to `text`. Fails, changing nothing, when the op does not fit.
pub fn apply(text: &str, op: &Op) -> Result<String, OtError> {
    apply_with_deleted(text, op).map(|(t, _)| t)
}

/// Applies `op` to `text` and returns the text each delete removed, in order.
pub fn apply_with_deleted(text: &str, op: &Op) -> Result<(String, Vec<String>), OtError> {
    let len = char_len(text);
    let needed = op.base_len();
    if needed > len {
        return Err(OtError::DoesNotFit { needed, len });
    }
    let mut out = String::with_capacity(text.len() + op.inserted_bytes());
    let mut deleted = Vec::with_capacity(op.delete_count());
    let mut rest = text;
    for c in &op.0 {
        match c {
            Component::Retain(n) => {
                let b = byte_at(rest, *n);
                out.push_str(&rest[..b]);
                rest = &rest[b..];
            }
            Component::Insert(s) => out.push_str(s),
            Component::Delete(n) => {
                let b = byte_at(rest, *n);
                deleted.push(rest[..b].to_owned());
                rest = &rest[b..];
            }
        }
    }
    out.push_str(rest);
    Ok((out, deleted))
}

/// Applies `op` to a rope in place, returning the deleted strings. On error
/// the rope is unchanged.
pub fn apply_rope(rope: &mut Rope, op: &Op) -> Result<Vec<String>, OtError> {
    let len = rope.len_chars();
    let needed = op.base_len();
    if needed > len {
        return Err(OtError::DoesNotFit { needed, len });
    }
    let mut pos = 0;
    let mut deleted = Vec::with_capacity(op.delete_count());
    for c in &op.0 {
        match c {
            Component::Retain(n) => pos += n,
            Component::Insert(s) => {
                rope.insert(pos, s);
                pos += char_len(s);
            }
            Component::Delete(n) => {
                deleted.push(rope.slice(pos..pos + n).to_string());
                rope.remove(pos..pos + n);
            }
        }
    }
    Ok(deleted)
}

/// One op equal to applying `a` then `b`.
pub fn compose(a: &Op, b: &Op) -> Op {
    let mut out = Builder::default();
    let mut wa = Walker::new(a);
    for c in &b.0 {
        match c {
            Component::Retain(n) => {
                let mut left = *n;
                while left > 0 {
                    let p = wa.take(left, Some(Whole::Deletes));
                    if !matches!(p, Piece::Delete(_)) {
                        left -= p.len();
                    }
                    out.push_piece(p);
                }
            }
            Component::Insert(s) => out.push(Component::Insert(s.clone())),
            Component::Delete(n) => {
                let mut left = *n;
                while left > 0 {
                    match wa.take(left, Some(Whole::Deletes)) {
                        Piece::Retain(k) => {
                            out.push(Component::Delete(k));
                            left -= k;
                        }
                        Piece::Insert(s) => left -= char_len(s),
                        Piece::Delete(k) => out.push(Component::Delete(k)),
                    }
                }
            }
        }
    }
    while !wa.is_done() {
        out.push_piece(wa.take(usize::MAX, None));
    }
    out.finish()
}

/// Rebases `op` so that it applies after `other` (both made on one version).
/// `side` says whose insert goes first at a shared position.
pub fn transform(op: &Op, other: &Op, side: Side) -> Op {
    transform_by(op, other.0.iter().map(Move::of), side)
}

/// [`transform`] against an op given as its [`Move`]s (the same result).
pub fn transform_by(op: &Op, other: impl IntoIterator<Item = Move>, side: Side) -> Op {
    let mut out = Builder::default();
    let mut wa = Walker::new(op);
    for c in other {
        match c {
            Move::Retain(n) => {
                let mut left = n;
                while left > 0 {
                    let p = wa.take(left, Some(Whole::Inserts));
                    if !matches!(p, Piece::Insert(_)) {
                        left -= p.len();
                    }
                    out.push_piece(p);
                }
            }
            Move::Insert(n) => {
                if side == Side::Left {
                    while wa.peek_is_insert() {
                        out.push_piece(wa.take(usize::MAX, Some(Whole::Inserts)));
                    }
                }
                out.push(Component::Retain(n));
            }
            Move::Delete(n) => {
                let mut left = n;
                while left > 0 {
                    match wa.take(left, Some(Whole::Inserts)) {
                        Piece::Retain(k) => left -= k,
                        p @ Piece::Insert(_) => out.push_piece(p),
                        Piece::Delete(k) => left -= k,
                    }
                }
            }
        }
    }
    while !wa.is_done() {
        out.push_piece(wa.take(usize::MAX, None));
    }
    out.finish()
}

/// The op that undoes `op`, given the text each of its deletes removed.
pub fn invert(op: &Op, deleted: &[String]) -> Result<Op, OtError> {
    let needed = op.delete_count();
    if deleted.len() != needed {
        return Err(OtError::DeletedMismatch {
            needed,
            got: deleted.len(),
        });
    }
    let mut out = Builder::default();
    let mut next = deleted.iter().enumerate();
    for c in &op.0 {
        match c {
            Component::Retain(n) => out.push(Component::Retain(*n)),
            Component::Insert(s) => out.push(Component::Delete(char_len(s))),
            Component::Delete(n) => {
                let (index, s) = next.next().expect("counted above");
                let got = char_len(s);
                if got != *n {
                    return Err(OtError::DeletedLength {
                        index,
                        expected: *n,
                        got,
                    });
                }
                out.push(Component::Insert(s.clone()));
            }
        }
    }
    Ok(out.finish())
}

/// Moves a cursor position through `op`. With `Side::Left` a cursor at an
/// insert's position stays before the inserted text; with `Side::Right` it
/// moves after it (the submitter's own cursor).
pub fn transform_cursor(cursor: usize, op: &Op, side: Side) -> usize {
    let mut pos = 0; // position in the input
    let mut out = cursor;
    for c in &op.0 {
        if pos > cursor {
            break;
        }
        match c {
            Component::Retain(n) => pos += n,
            Component::Insert(s) => {
                if pos < cursor || side == Side::Right {
                    out += char_len(s);
                }
            }
            Component::Delete(n) => {
                out -= (*n).min(cursor - pos);
                pos += n;
            }
        }
    }
    out
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for c in &self.0 {
            serialize_component(&mut seq, c)?;
        }
        seq.end()
    }
}

fn serialize_component<S: SerializeSeq>(seq: &mut S, c: &Component) -> Result<(), S::Error> {
    match c {
        Component::Retain(n) => seq.serialize_element(&(*n as u64)),
        Component::Insert(t) => seq.serialize_element(t),
        Component::Delete(n) => seq.serialize_element(&-(*n as i64)),
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
        SentOp::deserialize(d).map(SentOp::into_op)
    }
}

/// An op as its author sent it (SPEC §3): the normalised op, plus its
/// *span* — retains plus deletes as sent, including a trailing retain that
/// normal form drops. An op fits a document of length L when its span ≤ L,
/// so `[100]` does not fit an empty document even though it normalises to
/// the identity. On the wire it is the normal form followed by the trailing
/// retain, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SentOp {
    op: Op,
    span: usize,
}

impl SentOp {
    /// `op` with a trailing retain that makes its span `span` (never less
    /// than the op's own span).
    pub fn new(op: Op, span: usize) -> SentOp {
        let span = span.max(op.base_len());
        SentOp { op, span }
    }

    pub fn op(&self) -> &Op {
        &self.op
    }

    pub fn into_op(self) -> Op {
        self.op
    }

    /// Retains plus deletes as sent.
    pub fn span(&self) -> usize {
        self.span
    }

    /// Whether the op fits a document of `len` code points.
    pub fn fits(&self, len: usize) -> bool {
        self.span <= len
    }
}

impl From<Op> for SentOp {
    fn from(op: Op) -> SentOp {
        let span = op.base_len();
        SentOp { op, span }
    }
}

impl Serialize for SentOp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tail = self.span - self.op.base_len();
        let n = self.op.0.len() + usize::from(tail > 0);
        let mut seq = s.serialize_seq(Some(n))?;
        for c in &self.op.0 {
            serialize_component(&mut seq, c)?;
        }
        if tail > 0 {
            seq.serialize_element(&(tail as u64))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for SentOp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SentOp, D::Error> {
        d.deserialize_seq(OpVisitor)
    }
}

struct OpVisitor;

/// One element of the wire array: an integer or a string, nothing else.
enum Wire {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for Wire {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Wire, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Wire;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer (retain or -delete) or a string (insert)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Wire, E> {
                Ok(Wire::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Wire, E> {
                i64::try_from(v)
                    .map(Wire::Int)
                    .map_err(|_| E::custom("op component out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Wire, E> {
                Ok(Wire::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Wire, E> {
                Ok(Wire::Str(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Components above this size cannot describe any document Quire accepts;
/// rejecting them early keeps arithmetic on lengths far from overflow.
const MAX_COMPONENT: i64 = 1 << 40;

impl<'de> Visitor<'de> for OpVisitor {
    type Value = SentOp;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of op components")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SentOp, A::Error> {
        let mut b = Builder::default();
        let mut span: usize = 0;
        while let Some(w) = seq.next_element::<Wire>()? {
            match w {
                Wire::Int(n) if n.abs() > MAX_COMPONENT => {
                    return Err(de::Error::custom("op component out of range"))
                }
                Wire::Int(n) => {
                    let n_abs = n.unsigned_abs() as usize;
                    span = span
                        .checked_add(n_abs)
                        .filter(|s| *s as i64 <= MAX_COMPONENT)
                        .ok_or_else(|| de::Error::custom("op spans too many code points"))?;
                    b.push(if n >= 0 {
                        Component::Retain(n_abs)
                    } else {
                        Component::Delete(n_abs)
                    });
                }
                Wire::Str(s) => b.push(Component::Insert(s)),
            }
        }
        Ok(SentOp::new(b.finish(), span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(json: &str) -> Op {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn spec_example() {
        assert_eq!(apply("hello", &op(r#"[1, "EE", -2]"#)).unwrap(), "hEElo");
    }

    #[test]
    fn normal_form_moves_inserts_before_deletes() {
        assert_eq!(op(r#"[-1, "a", -1, "b", 0, ""]"#), op(r#"["ab", -2]"#));
        assert_eq!(
            serde_json::to_string(&op(r#"[2, 3, -1, "x", 4]"#)).unwrap(),
            r#"[5,"x",-1]"#
        );
    }

    #[test]
    fn rejects_non_integers_and_objects() {
        assert!(serde_json::from_str::<Op>("[1.5]").is_err());
        assert!(serde_json::from_str::<Op>("[{}]").is_err());
        assert!(serde_json::from_str::<Op>("[true]").is_err());
        assert!(serde_json::from_str::<Op>("[null]").is_err());
        assert!(serde_json::from_str::<Op>("\"x\"").is_err());
        assert!(serde_json::from_str::<Op>("[99999999999999999999]").is_err());
    }

    #[test]
    fn does_not_fit() {
        assert_eq!(
            apply("ab", &op("[3]")),
            Ok("ab".to_owned()),
            "trailing retain is dropped"
        );
        assert_eq!(
            apply("ab", &op(r#"[2, -1]"#)),
            Err(OtError::DoesNotFit { needed: 3, len: 2 })
        );
    }

    #[test]
    fn sent_op_keeps_its_span() {
        let sent: SentOp = serde_json::from_str("[100]").unwrap();
        assert!(sent.op().is_noop());
        assert_eq!(sent.span(), 100);
        assert!(!sent.fits(0) && !sent.fits(99) && sent.fits(100));
        assert_eq!(serde_json::to_string(&sent).unwrap(), "[100]");
        let sent: SentOp = serde_json::from_str(r#"[2, 3, -1, "x", 4]"#).unwrap();
        assert_eq!((sent.span(), sent.op().base_len()), (10, 6));
        assert_eq!(serde_json::to_string(&sent).unwrap(), r#"[5,"x",-1,4]"#);
        let back: SentOp = serde_json::from_str(r#"[5,"x",-1,4]"#).unwrap();
        assert_eq!(back, sent);
        assert_eq!(SentOp::from(op(r#"[1, -1]"#)).span(), 2);
        assert!(serde_json::from_str::<SentOp>("[1099511627776, 1099511627776]").is_err());
    }

    #[test]
    fn cursor() {
        let o = op(r#"[2, "xy", -1]"#);
        assert_eq!(transform_cursor(1, &o, Side::Left), 1);
        assert_eq!(transform_cursor(2, &o, Side::Left), 2);
        assert_eq!(transform_cursor(2, &o, Side::Right), 4);
        assert_eq!(transform_cursor(3, &o, Side::Left), 4);
        assert_eq!(transform_cursor(5, &o, Side::Left), 6);
    }

    #[test]
    fn rope_matches_string() {
        let o = op(r#"[1, "é中", -2, 1, -1]"#);
        let mut r = Rope::from_str("😀abcde");
        let d = apply_rope(&mut r, &o).unwrap();
        let (s, d2) = apply_with_deleted("😀abcde", &o).unwrap();
        assert_eq!(r.to_string(), s);
        assert_eq!(d, d2);
        assert_eq!(d, vec!["ab".to_owned(), "d".to_owned()]);
    }
}
