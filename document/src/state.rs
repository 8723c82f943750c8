use std::collections::{HashMap, VecDeque};

use protocol::{AppliedRecord, ClientEntry, Snapshot};
use ropey::Rope;

/// How far back a document keeps applied ops to transform stale bases
/// against (SPEC §9): at least `min_ops` ops and at least `min_age_ms` of
/// the document's time, whichever reaches further.
#[derive(Debug, Clone, Copy)]
pub struct WindowPolicy {
    pub min_ops: usize,
    pub min_age_ms: i64,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy {
            min_ops: 10_000,
            min_age_ms: 10 * 60 * 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("{doc}: record {seq} follows version {prev}, but the document is at {version}")]
    Gap {
        doc: String,
        seq: u64,
        prev: u64,
        version: u64,
    },
    #[error("{doc}: record {seq} does not apply: {source}")]
    DoesNotApply {
        doc: String,
        seq: u64,
        source: ot::OtError,
    },
}

#[derive(Debug, Clone)]
pub struct DocState {
    pub doc: String,
    /// seq of the last applied op (0: never edited).
    pub version: u64,
    pub text: Rope,
    /// Dedup table: the last op of each client, and the user it is bound to.
    pub clients: HashMap<String, ClientEntry>,
    /// Recent applied ops, oldest first.
    pub window: VecDeque<AppliedRecord>,
    /// Every applied op with `seq > floor` is in `window`.
    pub floor: u64,
    /// Net code-point change of each window op, for lengths at old versions.
    deltas: VecDeque<i64>,
}

impl DocState {
    pub fn empty(doc: &str) -> DocState {
        DocState {
            doc: doc.to_owned(),
            version: 0,
            text: Rope::new(),
            clients: HashMap::new(),
            window: VecDeque::new(),
            floor: 0,
            deltas: VecDeque::new(),
        }
    }

    pub fn from_snapshot(s: &Snapshot) -> DocState {
        DocState {
            doc: s.doc.clone(),
            version: s.seq,
            text: Rope::from_str(&s.text),
            clients: s
                .clients
                .iter()
                .map(|c| (c.client.clone(), c.clone()))
                .collect(),
            window: VecDeque::new(),
            floor: s.seq,
            deltas: VecDeque::new(),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut clients: Vec<ClientEntry> = self.clients.values().cloned().collect();
        clients.sort_by(|a, b| a.client.cmp(&b.client));
        Snapshot {
            doc: self.doc.clone(),
            seq: self.version,
            text: self.text.to_string(),
            clients,
        }
    }

    /// Puts older ops (already reflected in the text) in front of the window,
    /// so stale bases from before a snapshot can still be transformed.
    pub fn prepend_history(&mut self, older: Vec<AppliedRecord>) {
        for r in older.into_iter().rev() {
            // Each older op must be the one that produced the current floor.
            if r.seq != self.floor || self.floor == 0 {
                break;
            }
            self.floor = r.prev;
            self.deltas.push_front(delta(&r));
            self.window.push_front(r);
        }
    }

    /// Replays one applied record. The record must follow the current version.
    pub fn apply_record(&mut self, r: &AppliedRecord) -> Result<(), DocError> {
        if r.prev != self.version {
            return Err(DocError::Gap {
                doc: self.doc.clone(),
                seq: r.seq,
                prev: r.prev,
                version: self.version,
            });
        }
        ot::apply_rope(&mut self.text, &r.op).map_err(|source| DocError::DoesNotApply {
            doc: self.doc.clone(),
            seq: r.seq,
            source,
        })?;
        self.push_applied(r.clone());
        Ok(())
    }

    /// Records an op whose effect is already in `text` (the transformer
    /// applies it itself to learn the deleted text).
    pub fn push_applied(&mut self, r: AppliedRecord) {
        self.version = r.seq;
        self.clients.insert(
            r.client.clone(),
            ClientEntry {
                client: r.client.clone(),
                user: r.user.clone(),
                cseq: r.cseq,
                seq: r.seq,
            },
        );
        self.deltas.push_back(delta(&r));
        self.window.push_back(r);
    }

    /// Drops window ops beyond the policy, judged at time `now_ms` (the
    /// document's own clock: the ts of the newest record, so replays agree).
    pub fn trim(&mut self, policy: WindowPolicy, now_ms: i64) {
        while self.window.len() > policy.min_ops {
            let oldest = &self.window[0];
            if now_ms - oldest.ts < policy.min_age_ms {
                break;
            }
            self.floor = oldest.seq;
            self.window.pop_front();
            self.deltas.pop_front();
        }
    }

    /// The applied ops after version `base`, or None when the window does not
    /// reach back that far.
    pub fn ops_after(&self, base: u64) -> Option<impl Iterator<Item = &AppliedRecord>> {
        if base < self.floor {
            return None;
        }
        let start = self.window.partition_point(|r| r.seq <= base);
        Some(self.window.range(start..))
    }

    /// Length in code points at version `base` (which the window reaches).
    pub fn len_at(&self, base: u64) -> Option<usize> {
        if base < self.floor {
            return None;
        }
        let start = self.window.partition_point(|r| r.seq <= base);
        let later: i64 = self.deltas.range(start..).sum();
        Some((self.text.len_chars() as i64 - later) as usize)
    }

    pub fn text_len_bytes(&self) -> usize {
        self.text.len_bytes()
    }
}

fn delta(r: &AppliedRecord) -> i64 {
    let deleted: usize = r.del.iter().map(|d| d.chars().count()).sum();
    r.op.inserted_len() as i64 - deleted as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ot::Op;

    fn rec(seq: u64, prev: u64, op: Op, del: &[&str], ts: i64) -> AppliedRecord {
        AppliedRecord {
            v: 1,
            doc: "d".into(),
            seq,
            prev,
            client: "c".into(),
            cseq: seq,
            base: prev,
            user: "u".into(),
            ts,
            op,
            del: del.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn window_lengths_and_trim() {
        let mut s = DocState::empty("d");
        s.apply_record(&rec(3, 0, Op::splice(0, 0, "hello"), &[], 0))
            .unwrap();
        s.apply_record(&rec(7, 3, Op::splice(0, 1, "J"), &["h"], 10))
            .unwrap();
        s.apply_record(&rec(9, 7, Op::splice(5, 0, "!!"), &[], 20))
            .unwrap();
        assert_eq!(s.text.to_string(), "Jello!!");
        assert_eq!(
            (
                s.len_at(0),
                s.len_at(3),
                s.len_at(7),
                s.len_at(8),
                s.len_at(9)
            ),
            (Some(0), Some(5), Some(5), Some(5), Some(7))
        );
        assert_eq!(
            s.ops_after(3).unwrap().map(|r| r.seq).collect::<Vec<_>>(),
            [7, 9]
        );
        assert_eq!(
            s.ops_after(8).unwrap().map(|r| r.seq).collect::<Vec<_>>(),
            [9]
        );
        // A gap is refused and changes nothing.
        assert!(matches!(
            s.apply_record(&rec(12, 10, Op::splice(0, 0, "x"), &[], 30)),
            Err(DocError::Gap { .. })
        ));
        // Trim keeps at least min_ops and at least min_age_ms of history.
        s.trim(
            WindowPolicy {
                min_ops: 1,
                min_age_ms: 15,
            },
            30,
        );
        assert_eq!(
            s.floor, 7,
            "ops 20ms and 30ms old go, the one 10ms old stays"
        );
        assert!(s.ops_after(6).is_none());
        assert_eq!(s.len_at(7), Some(5));
        s.trim(
            WindowPolicy {
                min_ops: 1,
                min_age_ms: 0,
            },
            1000,
        );
        assert_eq!(s.window.len(), 1, "min_ops keeps one");
        s.trim(
            WindowPolicy {
                min_ops: 0,
                min_age_ms: 0,
            },
            30,
        );
        assert_eq!((s.floor, s.window.len()), (9, 0));
        assert_eq!(s.len_at(9), Some(7));
    }

    #[test]
    fn snapshot_round_trip_and_prepended_history() {
        let mut s = DocState::empty("d");
        let r1 = rec(2, 0, Op::splice(0, 0, "ab"), &[], 0);
        let r2 = rec(5, 2, Op::splice(1, 0, "X"), &[], 0);
        s.apply_record(&r1).unwrap();
        s.apply_record(&r2).unwrap();
        let snap = s.snapshot();
        let mut back = DocState::from_snapshot(&snap);
        assert_eq!(
            (back.version, back.text.to_string(), back.floor),
            (5, "aXb".to_string(), 5)
        );
        assert!(back.ops_after(2).is_none());
        back.prepend_history(vec![r1, r2]);
        assert_eq!(back.floor, 0);
        assert_eq!(back.len_at(2), Some(2));
        assert_eq!(back.ops_after(0).unwrap().count(), 2);
        assert_eq!(back.clients["c"].seq, 5);
    }
}
