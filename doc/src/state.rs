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
