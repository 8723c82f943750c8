//! A compact binary form of an applied record, for stores that key a row by
//! its document and `seq` (the embedded store's history).
//!
//! On the topic a record is JSON (SPEC §10, docs/records.md). A keystroke's
//! record is about 230 bytes there, most of it field names, the document id
//! and the hash as 64 hex digits. Packed without the document and `seq`
//! (the row's key holds them), with the hash as its 32 bytes, it is about
//! a third of that (`benches/benches/records.rs`: 262 → 78 bytes). [`unpack_applied`] gives the record back exactly.
//!
//! The first byte tells the form apart from JSON (which starts with `{`).
//! Layout after it, integers as LEB128 varints, strings as a length and
//! UTF-8 bytes: `v, prev, cseq, base, ts (zigzag), client, user,` the op's
//! component count and components (a tag, then a count or a string), the
//! deleted strings' count and strings, then the hash: a tag, and its 32
//! bytes when it is canonical lowercase hex, or its text otherwise.
//!
//! Unpacking checks everything, as the JSON reader does (known version,
//! components in range, the op in normal form): the bytes come from a disk.

use ot::{Component, Op};

use crate::chain;
use crate::{AppliedRecord, ErrorCode, ProtoError, APPLIED_VERSIONS_READ};

/// The first byte of a packed record (never `{`).
pub const PACKED_V1: u8 = 0x01;

/// A component's tag in [`put_op`]'s output.
pub const RETAIN: u8 = 0;
pub const INSERT: u8 = 1;
pub const DELETE: u8 = 2;

const NO_HASH: u8 = 0;
const HASH_BYTES: u8 = 1;
const HASH_TEXT: u8 = 2;

/// The largest retain or delete, and the most code points an op spans, as
/// the JSON reader allows (keeps arithmetic on lengths from overflowing).
const MAX_SPAN: usize = 1 << 40;

/// Appends `n` as an LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends `s` as its byte length (a varint) and its bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `op`: its component count, then each component as a tag
/// ([`RETAIN`], [`INSERT`], [`DELETE`]) and a count or a string.
pub fn put_op(out: &mut Vec<u8>, op: &Op) {
    put_varint(out, op.components().len() as u64);
    for c in op.components() {
        match c {
            Component::Retain(n) => {
                out.push(RETAIN);
                put_varint(out, *n as u64);
            }
            Component::Insert(s) => {
                out.push(INSERT);
                put_str(out, s);
            }
            Component::Delete(n) => {
                out.push(DELETE);
                put_varint(out, *n as u64);
            }
        }
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// The record without its `doc` and `seq`, packed.
pub fn pack_applied(r: &AppliedRecord) -> Vec<u8> {
    let strings = r.client.len()
        + r.user.len()
        + r.op.inserted_bytes()
        + r.del.iter().map(String::len).sum::<usize>();
    let mut out = Vec::with_capacity(80 + strings);
    out.push(PACKED_V1);
    put_varint(&mut out, u64::from(r.v));
    put_varint(&mut out, r.prev);
    put_varint(&mut out, r.cseq);
    put_varint(&mut out, r.base);
    put_varint(&mut out, zigzag(r.ts));
    put_str(&mut out, &r.client);
    put_str(&mut out, &r.user);
    put_op(&mut out, &r.op);
    put_varint(&mut out, r.del.len() as u64);
    for d in &r.del {
        put_str(&mut out, d);
    }
    match &r.hash {
        None => out.push(NO_HASH),
        Some(h) => match chain::from_hex(h).filter(|b| chain::to_hex(b) == *h) {
            Some(bytes) => {
                out.push(HASH_BYTES);
                out.extend_from_slice(&bytes);
            }
            None => {
                out.push(HASH_TEXT);
                put_str(&mut out, h);
            }
        },
    }
    out
}

/// Reads packed bytes from outside: every step can fail.
struct Reader<'a>(&'a [u8]);

type Read<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Read<u8> {
        let (&b, rest) = self.0.split_first().ok_or("it ends early")?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Read<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("a number overflows");
            }
            n |= bits << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err("a number overflows")
    }

    fn usize(&mut self) -> Read<usize> {
        usize::try_from(self.varint()?).map_err(|_| "a number overflows")
    }

    /// A count of items that each take at least one byte, so a corrupt
    /// count cannot make the reader allocate more than the row holds.
    fn count(&mut self) -> Read<usize> {
        let n = self.usize()?;
        if n > self.0.len() {
            return Err("a count is larger than the row");
        }
        Ok(n)
    }

    fn bytes(&mut self, len: usize) -> Read<&'a [u8]> {
        if len > self.0.len() {
            return Err("it ends early");
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(s)
    }

    fn string(&mut self) -> Read<String> {
        let len = self.usize()?;
        let b = self.bytes(len)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "a string is not UTF-8")
    }
}

fn unpack(doc: &str, seq: u64, bytes: &[u8]) -> Read<AppliedRecord> {
    let mut r = Reader(bytes);
    if r.byte()? != PACKED_V1 {
        return Err("it is not a packed record");
    }
    let v = u32::try_from(r.varint()?).map_err(|_| "the version overflows")?;
    if !APPLIED_VERSIONS_READ.contains(&v) {
        return Err("its version is not one this reader knows");
    }
    let prev = r.varint()?;
    let cseq = r.varint()?;
    let base = r.varint()?;
    let ts = unzigzag(r.varint()?);
    let client = r.string()?;
    let user = r.string()?;
    let n = r.count()?;
    let mut parts = Vec::with_capacity(n);
    let mut span = 0usize;
    for _ in 0..n {
        let c = match r.byte()? {
            RETAIN => Component::Retain(r.usize()?),
            INSERT => Component::Insert(r.string()?),
            DELETE => Component::Delete(r.usize()?),
            _ => return Err("an op component has an unknown tag"),
        };
        match &c {
            Component::Retain(0) | Component::Delete(0) => return Err("an empty op component"),
            Component::Insert(s) if s.is_empty() => return Err("an empty op component"),
            Component::Retain(k) | Component::Delete(k) => {
                span = span
                    .checked_add(*k)
                    .filter(|s| *s <= MAX_SPAN)
                    .ok_or("the op spans too many code points")?;
            }
            Component::Insert(_) => {}
        }
        parts.push(c);
    }
    // Packed from an op in normal form: one that is not was damaged.
    let op = Op::from_components(parts.iter().cloned());
    if op.components() != parts.as_slice() {
        return Err("the op is not in normal form");
    }
    let n = r.count()?;
    let mut del = Vec::with_capacity(n);
    for _ in 0..n {
        del.push(r.string()?);
    }
    let hash = match r.byte()? {
        NO_HASH => None,
        HASH_BYTES => {
            let b: chain::ChainHash = r.bytes(32)?.try_into().expect("32 bytes");
            Some(chain::to_hex(&b))
        }
        HASH_TEXT => Some(r.string()?),
        _ => return Err("the hash has an unknown tag"),
    };
    if !r.0.is_empty() {
        return Err("bytes follow the record");
    }
    Ok(AppliedRecord {
        v,
        doc: doc.to_owned(),
        seq,
        prev,
        client,
        cseq,
        base,
        user,
        ts,
        op,
        del,
        hash,
    })
}

/// The record [`pack_applied`] packed, given the `doc` and `seq` it was
/// stored under; malformed bytes are a [`ProtoError`], never a panic.
pub fn unpack_applied(doc: &str, seq: u64, bytes: &[u8]) -> Result<AppliedRecord, ProtoError> {
    unpack(doc, seq, bytes).map_err(|e| {
        ProtoError::new(
            ErrorCode::BadMessage,
            format!("bad packed applied record: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: Op, del: &[&str], hash: Option<&str>, ts: i64) -> AppliedRecord {
        AppliedRecord {
            v: 2,
            doc: "doc-1".into(),
            seq: 1 << 40,
            prev: (1 << 40) - 3,
            client: "client-é".into(),
            cseq: 300,
            base: 17,
            user: "ünïcode user".into(),
            ts,
            op,
            del: del.iter().map(|s| s.to_string()).collect(),
            hash: hash.map(str::to_owned),
        }
    }

    fn records() -> Vec<AppliedRecord> {
        let canonical = chain::to_hex(&[0xab; 32]);
        let upper = canonical.to_uppercase();
        vec![
            rec(
                Op::splice(0, 0, "a"),
                &[],
                Some(&canonical),
                1_764_470_000_000,
            ),
            rec(Op::splice(3, 2, "😀 x"), &["ab"], None, -5),
            rec(Op::splice(1, 1, ""), &["\u{0}"], Some(&upper), i64::MIN),
            rec(Op::splice(0, 0, "ok"), &[], Some("not a hash"), i64::MAX),
            rec(Op::noop(), &[], Some(""), 0),
        ]
    }

    #[test]
    fn records_come_back_exactly() {
        for r in records() {
            let packed = pack_applied(&r);
            assert_eq!(packed[0], PACKED_V1);
            assert_eq!(unpack_applied(&r.doc, r.seq, &packed).unwrap(), r);
        }
    }

    #[test]
    fn a_keystroke_is_a_third_of_its_json() {
        let r = &records()[0];
        let (packed, json) = (pack_applied(r).len(), r.encode().len());
        assert!(packed * 3 < json, "packed {packed} bytes, JSON {json}");
    }

    /// Every prefix and every single-byte change of a packed record is an
    /// error or some record, never a panic; prefixes are always errors.
    #[test]
    fn damaged_rows_are_errors_not_panics() {
        for r in records() {
            let packed = pack_applied(&r);
            for len in 0..packed.len() {
                assert!(
                    unpack_applied("d", 1, &packed[..len]).is_err(),
                    "prefix {len}"
                );
            }
            for i in 0..packed.len() {
                for b in [0x00, 0x7f, 0x80, 0xff] {
                    let mut bad = packed.clone();
                    bad[i] = b;
                    let _ = unpack_applied("d", 1, &bad);
                }
            }
            let mut longer = packed.clone();
            longer.push(0);
            assert!(unpack_applied("d", 1, &longer).is_err());
        }
        // A count far beyond the row is refused before anything is allocated.
        let mut huge = vec![PACKED_V1, 2, 0, 0, 0, 0, 0, 0];
        put_varint(&mut huge, u64::MAX >> 1);
        assert!(unpack_applied("d", 1, &huge).is_err());
        let mut over = vec![PACKED_V1];
        over.extend([0xff; 10]);
        assert!(unpack_applied("d", 1, &over).is_err());
    }

    /// What the packer never writes is refused, as the JSON reader refuses
    /// it: an unknown version, empty or oversized components, an op out of
    /// normal form (two retains that would add up past any length).
    #[test]
    fn rows_the_packer_never_writes_are_refused() {
        let row = |v: u64, components: &[(u8, u64)]| {
            let mut b = vec![PACKED_V1];
            for n in [v, 0, 0, 0, 0] {
                put_varint(&mut b, n);
            }
            put_str(&mut b, "c");
            put_str(&mut b, "u");
            put_varint(&mut b, components.len() as u64);
            for (tag, n) in components {
                b.push(*tag);
                if *tag == INSERT {
                    put_str(&mut b, &"x".repeat(*n as usize));
                } else {
                    put_varint(&mut b, *n);
                }
            }
            b.extend([0, NO_HASH]);
            b
        };
        let ok = row(2, &[(RETAIN, 3), (INSERT, 1)]);
        assert_eq!(
            unpack_applied("d", 1, &ok).unwrap().op,
            Op::splice(3, 0, "x")
        );
        for (what, bad) in [
            ("version 9", row(9, &[(INSERT, 1)])),
            ("version 0", row(0, &[(INSERT, 1)])),
            ("an empty retain", row(2, &[(RETAIN, 0), (INSERT, 1)])),
            ("an empty insert", row(2, &[(INSERT, 0)])),
            ("an empty delete", row(2, &[(DELETE, 0)])),
            ("a huge retain", row(2, &[(RETAIN, 1 << 41), (INSERT, 1)])),
            (
                "retains adding up past any length",
                row(
                    2,
                    &[
                        (RETAIN, u64::MAX >> 1),
                        (RETAIN, u64::MAX >> 1),
                        (INSERT, 1),
                    ],
                ),
            ),
            (
                "two retains",
                row(2, &[(RETAIN, 1), (RETAIN, 1), (INSERT, 1)]),
            ),
            ("a trailing retain", row(2, &[(INSERT, 1), (RETAIN, 1)])),
            (
                "a delete before an insert",
                row(2, &[(DELETE, 1), (INSERT, 1)]),
            ),
        ] {
            assert!(unpack_applied("d", 1, &bad).is_err(), "{what} was read");
        }
    }
}
