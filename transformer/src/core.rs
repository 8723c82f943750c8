use document::{Dedup, OpShape, WindowEntry, WindowPolicy};
use ot::Side;
use protocol::{
    AppliedRecord, ErrorCode, RawRecord, RejectedRecord, APPLIED_VERSION, RECORD_VERSION,
};

#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    pub window: WindowPolicy,
    pub max_doc_bytes: usize,
    pub max_insert_bytes: usize,
    /// Largest applied record (JSON bytes) the transformer produces.
    pub max_record_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        let limits = protocol::Limits::default();
        CoreConfig {
            window: WindowPolicy::default(),
            max_doc_bytes: limits.max_doc_bytes,
            max_insert_bytes: limits.max_insert_bytes,
            max_record_bytes: limits.max_record_bytes,
        }
    }
}

/// A document as the transformer keeps it: its window holds each op's
/// shape, which is all that transforming and the duplicate check read.
pub type TransformerDoc = document::DocState<OpShape>;

/// What the transformer decides for one raw record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied(AppliedRecord),
    Rejected(RejectedRecord),
    /// `(client, cseq)` was already applied at `seq`: nothing is produced.
    Duplicate {
        seq: u64,
    },
}

/// Decides one raw record at `seq` against `state`, updating `state` when
/// the op is applied. Pure: no I/O, no clock.
pub fn process(state: &mut TransformerDoc, raw: &RawRecord, seq: u64, cfg: &CoreConfig) -> Outcome {
    let reject = |code: ErrorCode, message: String| {
        Outcome::Rejected(RejectedRecord {
            // Rejections did not change: they keep version 1.
            v: RECORD_VERSION,
            doc: raw.doc.clone(),
            seq,
            client: raw.client.clone(),
            cseq: raw.cseq,
            code,
            message,
        })
    };
    // The same binding and duplicate check the gateway makes (SPEC §7).
    match state.dedup_check(&raw.client, raw.cseq, &raw.user) {
        Err(e) => return reject(e.code, e.message),
        Ok(Dedup::Applied(r)) => return Outcome::Duplicate { seq: r.seq },
        Ok(Dedup::Forgotten { seq: Some(seq) }) => return Outcome::Duplicate { seq },
        // The gateway answers a resend of an archived op from the archive;
        // below the client's latest, anything else was never applied.
        Ok(Dedup::Forgotten { seq: None }) => {
            return reject(
                ErrorCode::Protocol,
                format!(
                    "cseq {} of {} is below its latest op and is not in the window; use a new cseq",
                    raw.cseq, raw.client
                ),
            )
        }
        Ok(Dedup::New) => {}
    }
    if let Some(entry) = state.clients.get(&raw.client) {
        if raw.base < entry.seq {
            return reject(
                ErrorCode::Protocol,
                format!(
                    "base {} is below {}, the seq of this client's previous op: one op in flight at a time",
                    raw.base, entry.seq
                ),
            );
        }
    }
    if raw.base > state.version {
        return reject(
            ErrorCode::InvalidOp,
            format!(
                "base {} is newer than the document version {}",
                raw.base, state.version
            ),
        );
    }
    let sent = raw.op.op();
    if sent.inserted_bytes() > cfg.max_insert_bytes {
        return reject(
            ErrorCode::TooLarge,
            format!(
                "op inserts {} bytes, the limit is {}",
                sent.inserted_bytes(),
                cfg.max_insert_bytes
            ),
        );
    }
    let (Some(len_at_base), Some(later)) = (state.len_at(raw.base), state.ops_after(raw.base))
    else {
        return reject(
            ErrorCode::StaleBase,
            format!(
                "base {} is older than {}, the oldest version this document can transform from; re-join and rebase",
                raw.base, state.floor
            ),
        );
    };
    // Fit is judged on the op as sent, trailing retain included (SPEC §3).
    if !raw.op.fits(len_at_base) {
        return reject(
            ErrorCode::InvalidOp,
            format!(
                "op spans {} code points but the document had {} at version {}",
                raw.op.span(),
                len_at_base,
                raw.base
            ),
        );
    }
    let mut op = sent.clone();
    for applied in later {
        op = ot::transform_by(&op, applied.moves(), Side::Right);
    }
    let after_bytes = state.text_len_bytes() + op.inserted_bytes();
    if after_bytes > cfg.max_doc_bytes {
        return reject(
            ErrorCode::TooLarge,
            format!("document would exceed {} bytes", cfg.max_doc_bytes),
        );
    }
    let del = match ot::apply_rope(&mut state.text, &op) {
        Ok(del) => del,
        // Unreachable for a fitting op transformed through the window, but a
        // refusal is the safe answer, never a panic.
        Err(e) => return reject(ErrorCode::InvalidOp, e.to_string()),
    };
    let mut rec = AppliedRecord {
        v: APPLIED_VERSION,
        doc: raw.doc.clone(),
        seq,
        prev: state.version,
        client: raw.client.clone(),
        cseq: raw.cseq,
        base: raw.base,
        user: raw.user.clone(),
        ts: state.stamp(raw.ts),
        op,
        del,
        hash: None,
    };
    rec.hash = Some(protocol::chain::to_hex(&state.next_hash(&rec)));
    if let Some(size) = oversized(&rec, cfg.max_record_bytes) {
        // Undo: nothing changes for a refused op.
        let undo = ot::invert(&rec.op, &rec.del).expect("the deleted text came from this op");
        ot::apply_rope(&mut state.text, &undo).expect("an inverse fits the text it came from");
        return reject(
            ErrorCode::TooLarge,
            format!(
                "the applied record would be {size} bytes, over the {} byte limit: split the op (for example a large delete into several)",
                cfg.max_record_bytes
            ),
        );
    }
    state.push_applied(&rec);
    state.trim(cfg.window);
    Outcome::Applied(rec)
}

/// The encoded size of `rec` when it is over `max`. JSON escaping at most
/// sextuples a string's bytes, so small records are never encoded here.
fn oversized(rec: &AppliedRecord, max: usize) -> Option<usize> {
    let text: usize = rec.op.inserted_bytes() + rec.del.iter().map(String::len).sum::<usize>();
    let bound =
        6 * text + 8 * (rec.op.components().len() + rec.del.len()) + protocol::RECORD_OVERHEAD;
    if bound <= max {
        return None;
    }
    let size = protocol::OutRecord::Applied(rec.clone()).encode().len();
    (size > max).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(client: &str, cseq: u64, base: u64, op: &str) -> RawRecord {
        RawRecord {
            v: 1,
            doc: "d".into(),
            client: client.into(),
            cseq,
            base,
            op: serde_json_op(op).into(),
            user: "u".into(),
            ts: 1000,
        }
    }

    fn serde_json_op(s: &str) -> ot::Op {
        let comps: Vec<ot::Component> = s
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                if let Ok(n) = p.parse::<i64>() {
                    if n > 0 {
                        ot::Component::Retain(n as usize)
                    } else {
                        ot::Component::Delete((-n) as usize)
                    }
                } else {
                    ot::Component::Insert(p.to_owned())
                }
            })
            .collect();
        ot::Op::from_components(comps)
    }

    fn applied(o: Outcome) -> AppliedRecord {
        match o {
            Outcome::Applied(a) => a,
            other => panic!("expected applied, got {other:?}"),
        }
    }

    fn code(o: Outcome) -> ErrorCode {
        match o {
            Outcome::Rejected(r) => r.code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_ops_are_transformed_and_earlier_insert_wins_left() {
        let cfg = CoreConfig::default();
        let mut s = TransformerDoc::empty("d");
        let a = applied(process(&mut s, &raw("a", 1, 0, "hello"), 1, &cfg));
        assert_eq!((a.seq, a.prev), (1, 0));
        // b and c both based on version 1, both insert at 5.
        applied(process(&mut s, &raw("b", 1, 1, "5, world"), 2, &cfg));
        let c = applied(process(&mut s, &raw("c", 1, 1, "5,!"), 3, &cfg));
        assert_eq!(c.prev, 2);
        assert_eq!(s.text.to_string(), "hello world!");
        // A delete of text someone else already deleted shrinks away.
        applied(process(&mut s, &raw("a", 2, 3, "5,-6"), 4, &cfg));
        let d = applied(process(&mut s, &raw("b", 2, 3, "6,-5"), 5, &cfg));
        assert_eq!(s.text.to_string(), "hello!");
        assert_eq!(d.del, Vec::<String>::new());
    }

    #[test]
    fn duplicates_and_refusals_change_nothing() {
        let cfg = CoreConfig::default();
        let mut s = TransformerDoc::empty("d");
        applied(process(&mut s, &raw("a", 1, 0, "abc"), 1, &cfg));
        let before = (s.version, s.text.to_string());
        assert_eq!(
            process(&mut s, &raw("a", 1, 0, "abc"), 2, &cfg),
            Outcome::Duplicate { seq: 1 }
        );
        assert_eq!(
            code(process(&mut s, &raw("b", 1, 9, "x"), 3, &cfg)),
            ErrorCode::InvalidOp
        );
        assert_eq!(
            code(process(&mut s, &raw("b", 1, 1, "4,-1"), 4, &cfg)),
            ErrorCode::InvalidOp
        );
        assert_eq!(
            code(process(&mut s, &raw("a", 2, 0, "x"), 5, &cfg)),
            ErrorCode::Protocol
        );
        let mut other_user = raw("a", 2, 1, "x");
        other_user.user = "mallory".into();
        assert_eq!(
            code(process(&mut s, &other_user, 6, &cfg)),
            ErrorCode::Forbidden
        );
        assert_eq!((s.version, s.text.to_string()), before);
    }

    #[test]
    fn stale_bases_are_refused_beyond_the_window() {
        let cfg = CoreConfig {
            window: WindowPolicy {
                min_ops: 2,
                min_age_ms: 0,
                max_ops: 2,
            },
            ..CoreConfig::default()
        };
        let mut s = TransformerDoc::empty("d");
        for i in 1..=5 {
            applied(process(&mut s, &raw("a", i, i - 1, "x"), i, &cfg));
        }
        assert_eq!(
            code(process(&mut s, &raw("b", 1, 1, "y"), 6, &cfg)),
            ErrorCode::StaleBase
        );
        applied(process(&mut s, &raw("b", 1, 3, "y"), 7, &cfg));
    }

    fn sent(json: &str) -> ot::SentOp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_op_that_does_not_fit_as_sent_is_refused() {
        let cfg = CoreConfig::default();
        let mut s = TransformerDoc::empty("d");
        // [100] on an empty document normalises to nothing, but it claims
        // 100 code points: INVALID_OP, and the version does not move.
        let mut r = raw("a", 1, 0, "");
        r.op = sent("[100]");
        assert_eq!(code(process(&mut s, &r, 1, &cfg)), ErrorCode::InvalidOp);
        assert_eq!(s.version, 0);
        applied(process(&mut s, &raw("a", 1, 0, "abc"), 2, &cfg));
        // At its base, [1,"x",3] spans 4 > 3; [1,"x",2] fits, even after
        // a concurrent op grew the document.
        applied(process(&mut s, &raw("b", 1, 2, "0,zz"), 3, &cfg));
        let mut r = raw("c", 1, 2, "");
        r.op = sent(r#"[1,"x",3]"#);
        assert_eq!(code(process(&mut s, &r, 4, &cfg)), ErrorCode::InvalidOp);
        r.op = sent(r#"[1,"x",2]"#);
        let a = applied(process(&mut s, &r, 5, &cfg));
        assert_eq!(s.text.to_string(), "zzaxbc");
        assert_eq!(serde_json::to_string(&a.op).unwrap(), r#"[3,"x"]"#);
    }

    #[test]
    fn an_oversized_applied_record_is_refused_and_changes_nothing() {
        let cfg = CoreConfig {
            max_record_bytes: 64 << 10,
            ..CoreConfig::default()
        };
        let mut s = TransformerDoc::empty("d");
        let big = "y".repeat(40 << 10);
        applied(process(&mut s, &raw("a", 1, 0, &big), 1, &cfg));
        applied(process(&mut s, &raw("a", 2, 1, &big), 2, &cfg));
        let before = (s.version, s.text.to_string(), s.window.len());
        // Deleting 80 KiB would put 80 KiB of deleted text in the record.
        let all = format!("-{}", 80 << 10);
        let refused = process(&mut s, &raw("b", 1, 2, &all), 3, &cfg);
        assert_eq!(code(refused), ErrorCode::TooLarge);
        assert_eq!((s.version, s.text.to_string(), s.window.len()), before);
        // Half of it fits.
        let half = format!("-{}", 40 << 10);
        let a = applied(process(&mut s, &raw("b", 2, 2, &half), 4, &cfg));
        assert!(protocol::OutRecord::Applied(a).encode().len() <= 64 << 10);
    }
}
