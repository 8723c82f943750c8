use document::{DocState, WindowPolicy};
use ot::Side;
use protocol::{AppliedRecord, ErrorCode, RawRecord, RejectedRecord, RECORD_VERSION};

#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    pub window: WindowPolicy,
    pub max_doc_bytes: usize,
    pub max_insert_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        let limits = protocol::Limits::default();
        CoreConfig {
            window: WindowPolicy::default(),
            max_doc_bytes: limits.max_doc_bytes,
            max_insert_bytes: limits.max_insert_bytes,
        }
    }
}

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
pub fn process(state: &mut DocState, raw: &RawRecord, seq: u64, cfg: &CoreConfig) -> Outcome {
    let reject = |code: ErrorCode, message: String| {
        Outcome::Rejected(RejectedRecord {
            v: RECORD_VERSION,
            doc: raw.doc.clone(),
            seq,
            client: raw.client.clone(),
            cseq: raw.cseq,
            code,
            message,
        })
    };
    if let Some(entry) = state.clients.get(&raw.client) {
        if entry.user != raw.user {
            return reject(
                ErrorCode::Forbidden,
                format!("client id {} belongs to another user", raw.client),
            );
        }
        if raw.cseq <= entry.cseq {
            // Only the client's latest op is remembered; an older cseq is a
            // resend of something applied long ago.
            let seq = if raw.cseq == entry.cseq { entry.seq } else { 0 };
            return Outcome::Duplicate { seq };
        }
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
    if raw.op.inserted_bytes() > cfg.max_insert_bytes {
        return reject(
            ErrorCode::TooLarge,
            format!(
                "op inserts {} bytes, the limit is {}",
                raw.op.inserted_bytes(),
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
    if raw.op.base_len() > len_at_base {
        return reject(
            ErrorCode::InvalidOp,
            format!(
                "op spans {} code points but the document had {} at version {}",
                raw.op.base_len(),
                len_at_base,
                raw.base
            ),
        );
    }
    let mut op = raw.op.clone();
    for applied in later {
        op = ot::transform(&op, &applied.op, Side::Right);
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
    let rec = AppliedRecord {
        v: RECORD_VERSION,
        doc: raw.doc.clone(),
        seq,
        prev: state.version,
        client: raw.client.clone(),
        cseq: raw.cseq,
        base: raw.base,
        user: raw.user.clone(),
        ts: raw.ts,
        op,
        del,
    };
    state.push_applied(rec.clone());
    state.trim(cfg.window, raw.ts);
    Outcome::Applied(rec)
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
            op: serde_json_op(op),
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
        let mut s = DocState::empty("d");
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
        let mut s = DocState::empty("d");
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
            },
            ..CoreConfig::default()
        };
        let mut s = DocState::empty("d");
        for i in 1..=5 {
            applied(process(&mut s, &raw("a", i, i - 1, "x"), i, &cfg));
        }
        assert_eq!(
            code(process(&mut s, &raw("b", 1, 1, "y"), 6, &cfg)),
            ErrorCode::StaleBase
        );
        applied(process(&mut s, &raw("b", 1, 3, "y"), 7, &cfg));
    }
}
