use std::collections::{HashMap, VecDeque};

use protocol::chain::{self, ChainHash};
use protocol::{AppliedRecord, ClientEntry, ErrorCode, ProtoError, Snapshot};
use ropey::Rope;

use crate::window::{Names, WindowEntry, WindowOp};
use crate::{Offer, TextShare};

/// How far back a document keeps applied ops to transform stale bases
/// against (SPEC §9): at least `min_ops` ops and at least `min_age_ms` of
/// the document's time, whichever reaches further — but never more than
/// `max_ops` ops, so a busy document's window stays bounded.
///
/// The window is a pure function of the document's applied records: an op
/// leaves it when it is beyond the newest `max_ops`, or when it is beyond
/// the newest `min_ops` *and* at least `min_age_ms` older than the newest
/// record (whose `ts` never decreases, see [`DocState::stamp`]). Trimming
/// after every op and trimming once after a reload give the same window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPolicy {
    pub min_ops: usize,
    pub min_age_ms: i64,
    pub max_ops: usize,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy {
            min_ops: 10_000,
            min_age_ms: 10 * 60 * 1000,
            max_ops: 100_000,
        }
    }
}

impl WindowPolicy {
    /// No window at all (the compactor and time travel need none).
    pub const NONE: WindowPolicy = WindowPolicy {
        min_ops: 0,
        min_age_ms: 0,
        max_ops: 0,
    };

    pub fn validate(&self) -> Result<(), String> {
        if self.min_age_ms < 0 {
            return Err("--window-ms must not be negative".into());
        }
        if self.max_ops == 0 {
            return Err("--window-max-ops must be at least 1".into());
        }
        if self.max_ops < self.min_ops {
            return Err(format!(
                "--window-max-ops ({}) must be at least --window-ops ({})",
                self.max_ops, self.min_ops
            ));
        }
        Ok(())
    }

    /// Whether the oldest of `len` window ops, stamped `oldest_ts`, leaves
    /// the window of a document whose newest op is stamped `clock`.
    fn drops(&self, len: usize, oldest_ts: i64, clock: i64) -> bool {
        len > self.max_ops
            || (len > self.min_ops && clock.saturating_sub(oldest_ts) >= self.min_age_ms)
    }
}

/// How often the roles that keep documents call [`tidy`].
pub const TIDY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// [`DocState::tidy`] on each document, packing at most 4 MiB of text per
/// call (texts that do not fit what is left wait for a later call; larger
/// ones are never packed), so a role's loop is held up for a few ms at most.
/// `packed` sees each document whose text was packed.
pub fn tidy<'a, W: WindowEntry>(
    docs: impl Iterator<Item = &'a mut DocState<W>>,
    mut packed: impl FnMut(&DocState<W>),
) {
    let mut budget = 4usize << 20;
    for d in docs {
        let n = d.tidy(budget);
        if n > 0 {
            budget -= n;
            packed(d);
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

/// `W` is what the window keeps of each op: a [`WindowOp`] (all of it, for
/// catch-up) or an [`OpShape`](crate::OpShape) (what transforming needs).
#[derive(Debug, Clone)]
pub struct DocState<W = WindowOp> {
    pub doc: String,
    /// seq of the last applied op (0: never edited).
    pub version: u64,
    pub text: Rope,
    /// Dedup table: the last op of each client, and the user it is bound
    /// to. It keeps every client whose last op is in the window (seq above
    /// `floor`); older entries are pruned with the window, so its size is
    /// bounded by the window's.
    pub clients: HashMap<String, ClientEntry>,
    /// Recent applied ops, oldest first.
    pub window: VecDeque<W>,
    /// The names `window` refers to (see [`Names`]).
    names: Names,
    /// Every applied op with `seq > floor` is in `window`.
    pub floor: u64,
    /// `ts` of the newest applied op (the document's clock).
    pub clock: i64,
    /// Applied ops since the snapshot this state was rebuilt from (all of
    /// them when there was none): the compactor snapshots by this count, so
    /// the decision survives eviction and restarts.
    pub since_snapshot: u64,
    /// Net code-point change of each window op, for lengths at old versions.
    deltas: VecDeque<i64>,
    /// The hash chain at `version` (docs/records.md): the last record's `hash`.
    pub chain: ChainHash,
    /// Edited since the text was last packed, and since the last `tidy`:
    /// memory bookkeeping, not part of the document's state.
    grown: bool,
    recent: bool,
}

/// The outcome of the duplicate check on `(client, cseq)` (SPEC §4, §7).
#[derive(Debug)]
pub enum Dedup<'a, W> {
    /// Newer than the client's last op: a new op.
    New,
    /// Applied, and still in the window: what the window keeps of it.
    Applied(&'a W),
    /// At or below the client's last op but no longer in the window: it was
    /// applied at `seq` when that is known (it was the client's last op),
    /// otherwise only the archive can tell whether it ever was.
    Forgotten { seq: Option<u64> },
}

impl<W: WindowEntry> DocState<W> {
    pub fn empty(doc: &str) -> Self {
        DocState {
            doc: doc.to_owned(),
            version: 0,
            text: Rope::new(),
            clients: HashMap::new(),
            window: VecDeque::new(),
            names: Names::default(),
            floor: 0,
            clock: i64::MIN,
            since_snapshot: 0,
            deltas: VecDeque::new(),
            chain: chain::GENESIS,
            grown: false,
            recent: false,
        }
    }

    pub fn from_snapshot(s: &Snapshot) -> Self {
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
            names: Names::default(),
            floor: s.seq,
            clock: i64::MIN,
            since_snapshot: 0,
            deltas: VecDeque::new(),
            // A snapshot from before the chain existed restarts it.
            chain: s
                .hash
                .as_deref()
                .and_then(chain::from_hex)
                .unwrap_or(chain::GENESIS),
            grown: false,
            recent: false,
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
            hash: Some(chain::to_hex(&self.chain)),
        }
    }

    /// The hash a record following the current version gets.
    pub fn next_hash(&self, r: &AppliedRecord) -> ChainHash {
        chain::chain_hash(&self.chain, r)
    }

    /// The `ts` an op stamped `ts` by ingest gets when applied: never
    /// earlier than the document's newest op, so a document's clock only
    /// moves forward even when gateways' clocks disagree, and the window is
    /// a function of the records alone.
    pub fn stamp(&self, ts: i64) -> i64 {
        ts.max(self.clock)
    }

    /// Whether the window would keep an op older than its oldest one.
    pub fn wants_older(&self, policy: WindowPolicy) -> bool {
        if self.floor == 0 {
            return false;
        }
        match self.window.front() {
            // At least the newest op, whose `ts` is the document's clock.
            None => true,
            Some(oldest) => !policy.drops(self.window.len() + 1, oldest.ts(), self.clock),
        }
    }

    /// Puts older ops (already reflected in the text) in front of the window,
    /// so stale bases from before a snapshot can still be transformed. Each
    /// must be the op that produced the current floor; the rest are ignored.
    pub fn prepend_history(&mut self, older: Vec<AppliedRecord>) {
        for r in older.into_iter().rev() {
            if r.seq != self.floor || self.floor == 0 {
                break;
            }
            self.floor = r.prev;
            self.clock = self.clock.max(r.ts);
            let newer = self.clients.get(&r.client).is_some_and(|e| e.seq >= r.seq);
            if !newer {
                self.clients.insert(r.client.clone(), entry(&r));
            }
            self.deltas.push_front(delta(&r));
            self.window.push_front(W::new(&r, &mut self.names));
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
        self.push_applied(r);
        Ok(())
    }

    /// [`apply_record`](Self::apply_record), taking the text at the
    /// record's version from `share` when the transformer in this process
    /// offered it for this very record (same seq, same chain hash, and the
    /// length the record gives; see [`TextShare`]). Returns whether it did.
    pub fn apply_record_shared(
        &mut self,
        r: &AppliedRecord,
        share: Option<&TextShare>,
    ) -> Result<bool, DocError> {
        let offer = match share {
            Some(s) if r.prev == self.version => s.take(&self.doc, r.seq),
            _ => None,
        };
        let fits = |o: &Offer| {
            let hash = r.hash.as_deref().and_then(chain::from_hex);
            hash == Some(o.chain)
                && o.text.len_chars() as i64 == self.text.len_chars() as i64 + delta(r)
        };
        match offer {
            Some(o) if fits(&o) => {
                if cfg!(debug_assertions) {
                    let mut own = self.text.clone();
                    ot::apply_rope(&mut own, &r.op).expect("the offered text's record applies");
                    assert!(
                        own == o.text,
                        "{}: offered text at {} differs",
                        self.doc,
                        r.seq
                    );
                }
                self.text = o.text;
                // Still packed here when idle if the transformer's packed
                // text does not come first (it may evict the document).
                self.push_applied(r);
                Ok(true)
            }
            _ => self.apply_record(r).map(|()| false),
        }
    }

    /// Takes the text the transformer offered at the current version after
    /// repacking it ([`TextShare`]), if its chain hash is this state's; it
    /// is not repacked here again.
    pub fn adopt_shared(&mut self, share: &TextShare) -> bool {
        match share.take(&self.doc, self.version) {
            Some(o) if o.chain == self.chain && o.text.len_chars() == self.text.len_chars() => {
                debug_assert!(o.text == self.text, "{}: offered text differs", self.doc);
                self.text = o.text;
                self.grown = false;
                true
            }
            _ => false,
        }
    }

    /// What [`TextShare`] offers of this state.
    pub fn offer(&self) -> Offer {
        Offer {
            version: self.version,
            chain: self.chain,
            text: self.text.clone(),
        }
    }

    /// Records an op whose effect is already in `text` (the transformer
    /// applies it itself to learn the deleted text). The chain takes the
    /// record's `hash` (checking it is `quire audit`'s job); a version-1
    /// record, which has none, resets it to [`chain::GENESIS`] (so does a
    /// snapshot from before the chain), whichever way the state was built.
    pub fn push_applied(&mut self, r: &AppliedRecord) {
        self.chain = r
            .hash
            .as_deref()
            .and_then(chain::from_hex)
            .unwrap_or(chain::GENESIS);
        self.version = r.seq;
        self.clock = self.clock.max(r.ts);
        self.since_snapshot += 1;
        self.grown = true;
        self.recent = true;
        self.clients.insert(r.client.clone(), entry(r));
        self.deltas.push_back(delta(r));
        self.window.push_back(W::new(r, &mut self.names));
    }

    /// Called every few seconds by the roles that keep documents: a text
    /// edited before the previous call but not since is packed again, if
    /// it is at most `budget` bytes and its chunks hold under 1/1.4 of
    /// their room. Ropes fill their fixed-size chunks about half when typed
    /// into (2.2x the text for one character per op, 1.2x packed);
    /// repacking a text still being edited would only be undone. Returns
    /// the bytes packed (0 when nothing was done), never over `budget`.
    pub fn tidy(&mut self, budget: usize) -> usize {
        let idle = self.grown && !self.recent;
        self.recent = false;
        let len = self.text.len_bytes();
        if !idle || len > budget {
            return 0;
        }
        self.grown = false;
        if self.text.capacity() * 10 <= len * 14 {
            return 0;
        }
        self.text.shrink_to_fit();
        len
    }

    /// Drops window ops beyond the policy, judged by the document's clock,
    /// and the dedup entries of clients whose last op left the window.
    pub fn trim(&mut self, policy: WindowPolicy) {
        let before = self.floor;
        while let Some(oldest) = self.window.front() {
            if !policy.drops(self.window.len(), oldest.ts(), self.clock) {
                break;
            }
            self.floor = oldest.seq();
            self.window.pop_front();
            self.deltas.pop_front();
        }
        if self.floor != before || self.clients.len() > self.window.len() {
            self.prune_clients();
        }
    }

    /// Drops the dedup entries of clients whose last op is not in the
    /// window (a table from a snapshot may hold older ones).
    pub fn prune_clients(&mut self) {
        let floor = self.floor;
        self.clients.retain(|_, e| e.seq > floor);
        self.names.prune();
    }

    /// The compactor keeps no window (it only snapshots), but keeps the
    /// dedup table for its snapshots, bounded to the `keep` most recent
    /// clients.
    pub fn drop_window(&mut self, keep: usize) {
        self.floor = self.version;
        self.window.clear();
        self.names.prune();
        self.deltas.clear();
        if self.clients.len() > keep {
            let mut seqs: Vec<u64> = self.clients.values().map(|e| e.seq).collect();
            seqs.sort_unstable_by(|a, b| b.cmp(a));
            let cut = seqs[keep.saturating_sub(1).min(seqs.len() - 1)];
            self.clients.retain(|_, e| e.seq >= cut);
        }
    }

    /// The clientId binding check, then the duplicate check (SPEC §4, §7).
    /// The gateway and the transformer both decide with this.
    pub fn dedup_check(
        &self,
        client: &str,
        cseq: u64,
        user: &str,
    ) -> Result<Dedup<'_, W>, ProtoError> {
        match self.clients.get(client) {
            Some(e) if e.user != user => Err(ProtoError::new(
                ErrorCode::Forbidden,
                format!("client id {client} belongs to another user"),
            )),
            Some(e) if cseq <= e.cseq => Ok(
                match self.window.iter().rev().find(|r| r.is_op_of(client, cseq)) {
                    Some(r) => Dedup::Applied(r),
                    None => Dedup::Forgotten {
                        seq: (cseq == e.cseq).then_some(e.seq),
                    },
                },
            ),
            _ => Ok(Dedup::New),
        }
    }

    /// The applied ops after version `base`, or None when the window does not
    /// reach back that far.
    pub fn ops_after(&self, base: u64) -> Option<impl Iterator<Item = &W>> {
        if base < self.floor {
            return None;
        }
        let start = self.window.partition_point(|r| r.seq() <= base);
        Some(self.window.range(start..))
    }

    /// Length in code points at version `base` (which the window reaches).
    pub fn len_at(&self, base: u64) -> Option<usize> {
        if base < self.floor {
            return None;
        }
        let start = self.window.partition_point(|r| r.seq() <= base);
        let later: i64 = self.deltas.range(start..).sum();
        Some((self.text.len_chars() as i64 - later) as usize)
    }

    pub fn text_len_bytes(&self) -> usize {
        self.text.len_bytes()
    }
}

fn entry(r: &AppliedRecord) -> ClientEntry {
    ClientEntry {
        client: r.client.clone(),
        user: r.user.clone(),
        cseq: r.cseq,
        seq: r.seq,
    }
}

fn delta(r: &AppliedRecord) -> i64 {
    let deleted: usize = r.del.iter().map(|d| d.chars().count()).sum();
    r.op.inserted_len() as i64 - deleted as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::test_offer as offer;
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
            hash: None,
        }
    }

    /// A record with a hash (the one `test_offer` gives at its seq).
    fn hashed(seq: u64, prev: u64, op: Op, del: &[&str]) -> AppliedRecord {
        AppliedRecord {
            hash: Some(chain::to_hex(&[seq as u8; 32])),
            ..rec(seq, prev, op, del, 0)
        }
    }

    /// Fanout takes an offered text only for the record it applies (its
    /// seq and chain hash) and at the length the record gives; otherwise it
    /// edits its own.
    #[test]
    fn a_shared_text_is_taken_only_when_it_fits() {
        let share = TextShare::new(8, 1 << 20);
        let mut s = DocState::<WindowOp>::empty("d");
        share.offer("d", offer(1, "hello"));
        let r1 = hashed(1, 0, Op::splice(0, 0, "hello"), &[]);
        assert!(s.apply_record_shared(&r1, Some(&share)).unwrap());
        // The wrong length: not taken, the record applied instead.
        share.offer("d", offer(2, "hello!!"));
        let r2 = hashed(2, 1, Op::splice(5, 0, "!"), &[]);
        assert!(!s.apply_record_shared(&r2, Some(&share)).unwrap());
        assert_eq!(s.text.to_string(), "hello!");
        // Another record with this seq (another chain hash): not taken.
        share.offer(
            "d",
            Offer {
                chain: [9; 32],
                ..offer(3, "Jello!")
            },
        );
        let r3 = hashed(3, 2, Op::splice(0, 1, "J"), &["h"]);
        assert!(!s.apply_record_shared(&r3, Some(&share)).unwrap());
        // An offer for another version stays for it.
        share.offer("d", offer(5, "x"));
        let r4 = hashed(4, 3, Op::splice(6, 0, "?"), &[]);
        assert!(!s.apply_record_shared(&r4, Some(&share)).unwrap());
        assert_eq!((s.text.to_string(), share.len()), ("Jello!?".into(), 1));
        // A repacked text at the current version is adopted, once.
        share.offer("d", offer(4, "Jello!?"));
        assert!(s.adopt_shared(&share));
        assert!(!s.adopt_shared(&share), "taken once");
        share.offer(
            "d",
            Offer {
                chain: [1; 32],
                ..offer(4, "Jello!?")
            },
        );
        assert!(!s.adopt_shared(&share), "another chain");
        assert_eq!(s.window.len(), 4);
    }

    /// Debug builds (every test run) check that an offered text is the one
    /// the record gives, not only its length.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "offered text at 1 differs")]
    fn a_wrong_shared_text_of_the_right_length_is_caught_in_debug_builds() {
        let share = TextShare::new(8, 1 << 20);
        let mut s = DocState::<WindowOp>::empty("d");
        share.offer("d", offer(1, "jello"));
        let r = hashed(1, 0, Op::splice(0, 0, "hello"), &[]);
        let _ = s.apply_record_shared(&r, Some(&share));
    }

    #[test]
    fn window_lengths_and_trim() {
        let mut s = DocState::<WindowOp>::empty("d");
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
        // Trim keeps at least min_ops and at least min_age_ms of history,
        // judged by the newest op's ts (20).
        let policy = |min_ops, min_age_ms| WindowPolicy {
            min_ops,
            min_age_ms,
            max_ops: 100,
        };
        s.trim(policy(1, 15));
        assert_eq!(s.floor, 3, "the op 20ms old goes, the one 10ms old stays");
        assert!(s.ops_after(2).is_none());
        assert_eq!(s.len_at(7), Some(5));
        s.trim(policy(1, 0));
        assert_eq!(s.window.len(), 1, "min_ops keeps one");
        s.trim(policy(0, 0));
        assert_eq!((s.floor, s.window.len()), (9, 0));
        assert_eq!(s.len_at(9), Some(7));
    }

    #[test]
    fn max_ops_caps_a_busy_window_and_prunes_the_dedup_table() {
        let policy = WindowPolicy {
            min_ops: 2,
            min_age_ms: 1_000_000,
            max_ops: 3,
        };
        let mut s = DocState::<WindowOp>::empty("d");
        for i in 1..=6u64 {
            let mut r = rec(i, i - 1, Op::splice(0, 0, "x"), &[], i as i64);
            r.client = format!("c{i}");
            s.apply_record(&r).unwrap();
            s.trim(policy);
        }
        // All six are within min_age, but the cap keeps three.
        assert_eq!((s.floor, s.window.len()), (3, 3));
        let mut left: Vec<_> = s.clients.keys().cloned().collect();
        left.sort();
        assert_eq!(
            left,
            ["c4", "c5", "c6"],
            "clients whose last op left the window are pruned"
        );
    }

    /// The window is a function of the records: trimming after every op
    /// (warm) and trimming once after replaying them all (a reload) agree,
    /// whatever the clocks of the gateways that stamped them.
    #[test]
    fn warm_and_reloaded_windows_agree() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..200 {
            let policy = WindowPolicy {
                min_ops: next(5) as usize,
                min_age_ms: next(50) as i64,
                max_ops: 5 + next(10) as usize,
            };
            let mut warm = DocState::<WindowOp>::empty("d");
            let mut records = Vec::new();
            for i in 1..=60u64 {
                // Gateways' clocks jitter, sometimes backwards.
                let ts = warm.stamp(i as i64 * 3 - next(20) as i64);
                let mut r = rec(i, i - 1, Op::splice(0, 0, "x"), &[], ts);
                r.client = format!("c{}", next(7));
                warm.apply_record(&r).unwrap();
                warm.trim(policy);
                records.push(r);
            }
            let mut cold = DocState::<WindowOp>::empty("d");
            for r in &records {
                cold.apply_record(r).unwrap();
            }
            cold.trim(policy);
            assert_eq!(
                (cold.floor, cold.window.len()),
                (warm.floor, warm.window.len()),
                "{policy:?}"
            );
            assert_eq!(cold.clients, warm.clients, "{policy:?}");
        }
    }

    /// A text typed one character per op is packed once it has been idle
    /// for a whole `tidy` period, never while it is being edited.
    #[test]
    fn tidy_packs_a_text_once_it_goes_idle() {
        let mut s = DocState::<WindowOp>::empty("d");
        for i in 0..10_000u64 {
            let r = rec(i + 1, i, Op::splice(i as usize, 0, "a"), &[], 0);
            s.apply_record(&r).unwrap();
        }
        let typed = s.text.capacity();
        assert!(typed > 3 * s.text.len_bytes() / 2, "typed: {typed}");
        assert_eq!(s.tidy(1 << 20), 0, "edited since the last call: left alone");
        assert_eq!(s.text.capacity(), typed);
        assert_eq!(s.tidy(9_999), 0, "over the budget: left for later");
        assert_eq!(s.tidy(10_000), 10_000, "idle for a whole period: packed");
        let packed = s.text.capacity();
        assert!(packed < 13 * s.text.len_bytes() / 10, "packed: {packed}");
        assert_eq!(s.text.to_string(), "a".repeat(10_000));
        assert_eq!(s.tidy(1 << 20), 0, "nothing new to pack");
        // A few edits to a packed text do not make it worth packing again.
        let r = rec(10_001, 10_000, Op::splice(5_000, 0, "b"), &[], 0);
        s.apply_record(&r).unwrap();
        s.tidy(1 << 20);
        assert_eq!(s.tidy(1 << 20), 0, "still packed enough");
    }

    #[test]
    fn snapshot_round_trip_and_prepended_history() {
        let mut s = DocState::<WindowOp>::empty("d");
        let r1 = rec(2, 0, Op::splice(0, 0, "ab"), &[], 0);
        let r2 = rec(5, 2, Op::splice(1, 0, "X"), &[], 0);
        s.apply_record(&r1).unwrap();
        s.apply_record(&r2).unwrap();
        let snap = s.snapshot();
        let mut back = DocState::<WindowOp>::from_snapshot(&snap);
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
