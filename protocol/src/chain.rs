//! The tamper-evident chain of a document's applied records (docs/records.md).
//!
//! Each applied record of version 2 carries `hash`: SHA-256 over a domain
//! tag, the previous applied record's hash of the same document (32 zero
//! bytes before the first), and the record's canonical content. Editing,
//! dropping, inserting or reordering a record changes every hash after it.
//! The transformer computes it from the log alone, so a replay reproduces it.

use sha2::{Digest, Sha256};

use crate::AppliedRecord;

/// A chain value: the hash of a document's last applied record.
pub type ChainHash = [u8; 32];

/// The value before a document's first record.
pub const GENESIS: ChainHash = [0; 32];

const DOMAIN: &[u8] = b"quire-applied-chain-v1\n";

/// The record's canonical content: the compact JSON array
/// `[doc, seq, prev, client, cseq, base, user, ts, op, del]` (UTF-8, only
/// the escapes JSON requires). `v` and `hash` are not part of it.
pub fn canonical(r: &AppliedRecord) -> Vec<u8> {
    serde_json::to_vec(&(
        &r.doc, r.seq, r.prev, &r.client, r.cseq, r.base, &r.user, r.ts, &r.op, &r.del,
    ))
    .expect("records always serialise")
}

/// The hash of `r` following a record whose hash is `prev`.
pub fn chain_hash(prev: &ChainHash, r: &AppliedRecord) -> ChainHash {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(canonical(r));
    h.finalize().into()
}

pub fn to_hex(h: &ChainHash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses 64 lowercase or uppercase hex digits.
pub fn from_hex(s: &str) -> Option<ChainHash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ot::Op;

    fn rec() -> AppliedRecord {
        AppliedRecord {
            v: 2,
            doc: "notes".into(),
            seq: 45,
            prev: 41,
            client: "alice-1".into(),
            cseq: 7,
            base: 41,
            user: "alice".into(),
            ts: 1795326923723,
            op: serde_json::from_str::<Op>(r#"[13,"hi 😀\n",-3]"#).unwrap(),
            del: vec!["a\"c".into()],
            hash: None,
        }
    }

    #[test]
    fn canonical_content_is_a_positional_json_array() {
        assert_eq!(
            String::from_utf8(canonical(&rec())).unwrap(),
            r#"["notes",45,41,"alice-1",7,41,"alice",1795326923723,[13,"hi 😀\n",-3],["a\"c"]]"#
        );
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_hash() {
        let base = chain_hash(&GENESIS, &rec());
        // A fixed value, reproduced independently by Python (docs/records.md:
        // hashlib over json.dumps(..., separators=(",", ":"), ensure_ascii=False)).
        assert_eq!(
            to_hex(&base),
            "c8c03b2e703da64f7ca1ada96d780f8a63c63ae1e0f15fb0bd8c14e9f9234852"
        );
        let mut other = rec();
        other.ts += 1;
        assert_ne!(chain_hash(&GENESIS, &other), base);
        let mut other = rec();
        other.del = vec!["abc".into()];
        assert_ne!(chain_hash(&GENESIS, &other), base);
        assert_ne!(chain_hash(&base, &rec()), base);
        // `v` and `hash` are not content.
        let mut other = rec();
        other.v = 1;
        other.hash = Some(to_hex(&base));
        assert_eq!(chain_hash(&GENESIS, &other), base);
    }

    #[test]
    fn hex_round_trip() {
        let h = chain_hash(&GENESIS, &rec());
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }
}
