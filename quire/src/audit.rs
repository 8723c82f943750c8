//! `quire audit`: checks a deployment's applied records, from the log or
//! from the store, for one document or all.
//!
//! For every document it verifies that each record follows the previous one
//! (`prev` is the version before it), that its `hash` continues the chain
//! (docs/records.md: an edited, dropped, inserted or reordered record breaks it),
//! that its op applies and removes exactly the `del` it states, that `ts`
//! never goes back, that a record written twice (two transformers during a
//! rebalance) is the same both times, that the stored snapshots hold the
//! text and chain the replay reaches at their seq, and (from the log) that
//! the archived history is the same records. With `--raw` it also reads the
//! ops topic: every submitted op is decided once (applied, refused, or a
//! duplicate of an applied one), and each applied record names its op.
//! The first bad record of each document is reported; any makes the
//! command fail.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use document::Topics;
use oplog::OpLog;
use protocol::chain::{self, ChainHash};
use protocol::{decode_out_record, decode_raw_record, AppliedRecord, OutRecord, Snapshot};
use ropey::Rope;
use serde::Serialize;
use store::{Store, KEEP_SNAPSHOTS};

/// Where the records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditSource {
    /// The applied topic, from its log start; records the topic no longer
    /// holds are taken from the store to anchor the chain.
    Log,
    /// The store's archived history.
    Store,
}

#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// One document, or every document.
    pub doc: Option<String>,
    /// Verify records with `seq >= from`; earlier ones only build the state.
    pub from: u64,
    pub source: AuditSource,
    /// Also check the ops topic against the applied records.
    pub raw: bool,
    /// A progress line on stderr (when it is a terminal).
    pub progress: bool,
}

/// The first problem found in a document (or in the topic).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    pub reason: String,
}

impl Violation {
    fn at(seq: u64, reason: impl Into<String>) -> Violation {
        Violation {
            seq: Some(seq),
            partition: None,
            offset: None,
            reason: reason.into(),
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct DocReport {
    pub doc: String,
    /// Records verified (seq >= from).
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub authors: BTreeSet<String>,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    /// Where the chain was picked up: `genesis`, or a snapshot.
    pub anchor: String,
    /// The chain at `last_seq`.
    pub hash: Option<String>,
    /// Records written twice, identical both times.
    pub duplicates: u64,
    pub snapshots_checked: u64,
    pub archived_checked: u64,
    pub raw_checked: u64,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
}

#[derive(Debug, Default)]
pub struct AuditReport {
    pub docs: Vec<DocReport>,
    /// Problems not tied to one document (an unreadable record).
    pub global: Vec<Violation>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.global.is_empty() && self.docs.iter().all(|d| d.violation.is_none())
    }

    /// The first violation, with its document.
    pub fn first_violation(&self) -> Option<(Option<&str>, &Violation)> {
        if let Some(v) = self.global.first() {
            return Some((None, v));
        }
        self.docs
            .iter()
            .find_map(|d| d.violation.as_ref().map(|v| (Some(d.doc.as_str()), v)))
    }

    pub fn records(&self) -> u64 {
        self.docs.iter().map(|d| d.records).sum()
    }
}

const PAGE: usize = 1000;

/// The state of one document's check.
struct DocCheck {
    report: DocReport,
    started: bool,
    version: u64,
    text: Rope,
    chain: ChainHash,
    last_ts: i64,
    /// A hashed record (or snapshot) was seen: from then on every record
    /// must carry its hash.
    hashed: bool,
    /// At every version checked (and the anchor): the chain, and a digest
    /// of the record's content (zeros at the anchor), for records written
    /// twice and the comparison with the archive.
    seen: BTreeMap<u64, (ChainHash, ChainHash)>,
    /// Records before this seq only build the state.
    from: u64,
    /// Stored snapshots not yet reached, oldest first.
    snapshots: VecDeque<Snapshot>,
}

impl DocCheck {
    fn new(doc: &str, from: u64) -> DocCheck {
        DocCheck {
            report: DocReport {
                doc: doc.to_owned(),
                records: 0,
                first_seq: None,
                last_seq: None,
                authors: BTreeSet::new(),
                first_ts: None,
                last_ts: None,
                anchor: String::new(),
                hash: None,
                duplicates: 0,
                snapshots_checked: 0,
                archived_checked: 0,
                raw_checked: 0,
                verdict: "ok",
                violation: None,
            },
            started: false,
            version: 0,
            text: Rope::new(),
            chain: chain::GENESIS,
            last_ts: i64::MIN,
            hashed: false,
            seen: BTreeMap::new(),
            from,
            snapshots: VecDeque::new(),
        }
    }

    fn failed(&self) -> bool {
        self.report.violation.is_some()
    }

    fn fail(&mut self, v: Violation) {
        if self.report.violation.is_none() {
            self.report.verdict = "violation";
            self.report.violation = Some(v);
        }
    }

    /// Loads the stored snapshots and, unless the first record starts the
    /// document, the state at its `prev` from the store.
    async fn anchor(&mut self, store: &dyn Store, first: &AppliedRecord) -> anyhow::Result<()> {
        let doc = first.doc.clone();
        let mut snaps = Vec::new();
        let mut at = u64::MAX;
        while snaps.len() < KEEP_SNAPSHOTS {
            match store.snapshot_at_or_before(&doc, at).await? {
                Some(s) => {
                    at = s.seq.saturating_sub(1);
                    let stop = s.seq == 0;
                    snaps.push(s);
                    if stop {
                        break;
                    }
                }
                None => break,
            }
        }
        snaps.reverse();
        self.started = true;
        if first.prev == 0 {
            self.report.anchor = "genesis".into();
            self.seen.insert(0, (chain::GENESIS, chain::GENESIS));
            self.snapshots = snaps.into_iter().collect();
            return Ok(());
        }
        // The state at `prev`: the newest snapshot at or before it, then the
        // archived records up to it (verified like the rest).
        let base = store.snapshot_at_or_before(&doc, first.prev).await?;
        let mut anchor = match &base {
            Some(s) => {
                self.version = s.seq;
                self.text = Rope::from_str(&s.text);
                let stated = s.hash.as_deref().and_then(chain::from_hex);
                self.hashed = stated.is_some();
                self.chain = stated.unwrap_or(chain::GENESIS);
                format!("snapshot {}", s.seq)
            }
            None => "genesis".to_owned(),
        };
        self.seen.insert(self.version, (self.chain, chain::GENESIS));
        let mut n = 0;
        while self.version < first.prev && !self.failed() {
            let page = store.history(&doc, self.version, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for r in page.iter().take_while(|r| r.seq <= first.prev) {
                // The archived records before the log's are checked too.
                self.check(r, r.seq < self.from);
                n += 1;
            }
            if page.iter().any(|r| r.seq > first.prev) {
                break;
            }
        }
        if n > 0 {
            anchor = format!("{anchor} + {n} archived records");
        }
        self.report.anchor = anchor;
        if !self.failed() && self.version != first.prev {
            self.fail(Violation::at(
                first.seq,
                format!(
                    "record {} follows version {}, but neither the log nor the store has the document past version {}",
                    first.seq, first.prev, self.version
                ),
            ));
        }
        // Snapshots at or before the anchor were checked on the way or
        // are before it.
        self.snapshots = snaps
            .into_iter()
            .filter(|s| s.seq > self.version || base.as_ref().is_some_and(|b| b.seq < s.seq))
            .collect();
        Ok(())
    }

    /// Checks one record. `trusted`: before `from`, it only builds the state
    /// (its stated hash is taken as the chain).
    fn check(&mut self, r: &AppliedRecord, trusted: bool) {
        if self.failed() {
            return;
        }
        // A second answer (overlapping transformers): the same content, or
        // wrong. Its own hash over the chain before it must be the chain at
        // its seq.
        if r.seq <= self.version && self.started {
            let Some((at, digest)) = self.seen.get(&r.seq).copied() else {
                return self.fail(Violation::at(
                    r.seq,
                    format!(
                        "record {} comes after version {}: out of order",
                        r.seq, self.version
                    ),
                ));
            };
            let stated_ok = match r.hash.as_deref() {
                Some(h) => chain::from_hex(h) == Some(at),
                None => r.v == 1 && at == chain::GENESIS,
            };
            let content_ok =
                digest == chain::GENESIS || chain::chain_hash(&chain::GENESIS, r) == digest;
            let same = stated_ok && content_ok;
            if same {
                self.report.duplicates += 1;
            } else {
                self.fail(Violation::at(
                    r.seq,
                    "the record is written twice with different content",
                ));
            }
            return;
        }
        if r.prev != self.version {
            return self.fail(Violation::at(
                r.seq,
                format!(
                    "record {} follows version {}, but the document is at version {}: a record is missing or out of order",
                    r.seq, r.prev, self.version
                ),
            ));
        }
        let stated = r.hash.as_deref().map(chain::from_hex);
        // A version-1 record has no hash and restarts the chain.
        let expected = match r.hash {
            Some(_) => chain::chain_hash(&self.chain, r),
            None => chain::GENESIS,
        };
        if !trusted {
            match (r.v, stated) {
                (1, None) if self.hashed => {
                    return self.fail(Violation::at(
                        r.seq,
                        "a record without a hash after hashed ones: it was rewritten as version 1",
                    ))
                }
                (1, None) => {}
                (_, None) => {
                    return self.fail(Violation::at(
                        r.seq,
                        format!("a version-{} record without its hash", r.v),
                    ))
                }
                (_, Some(h)) if h != Some(expected) => {
                    return self.fail(Violation::at(
                        r.seq,
                        "the hash does not continue the chain: this record was altered, or one before it was altered, dropped or reordered",
                    ))
                }
                _ => {}
            }
            if r.ts < self.last_ts {
                return self.fail(Violation::at(
                    r.seq,
                    format!(
                        "ts {} is before the previous record's {}",
                        r.ts, self.last_ts
                    ),
                ));
            }
        }
        match ot::apply_rope(&mut self.text, &r.op) {
            Err(e) => {
                return self.fail(Violation::at(r.seq, format!("the op does not apply: {e}")));
            }
            Ok(deleted) if !trusted && deleted != r.del => {
                return self.fail(Violation::at(r.seq, "`del` is not the text the op removes"));
            }
            Ok(_) => {}
        }
        // A trusted record's stated hash is the chain from then on.
        self.chain = match (trusted, stated.flatten()) {
            (true, Some(h)) => h,
            _ => expected,
        };
        self.hashed |= r.hash.is_some();
        self.version = r.seq;
        self.last_ts = self.last_ts.max(r.ts);
        self.seen
            .insert(r.seq, (self.chain, chain::chain_hash(&chain::GENESIS, r)));
        if !trusted {
            let rep = &mut self.report;
            rep.records += 1;
            rep.first_seq.get_or_insert(r.seq);
            rep.last_seq = Some(r.seq);
            rep.first_ts.get_or_insert(r.ts);
            rep.last_ts = Some(r.ts);
            if !rep.authors.contains(&r.user) {
                rep.authors.insert(r.user.clone());
            }
        }
        self.report.hash = Some(chain::to_hex(&self.chain));
        self.check_snapshots();
    }

    /// Compares the snapshots the replay has reached.
    fn check_snapshots(&mut self) {
        while let Some(s) = self.snapshots.front() {
            if s.seq > self.version {
                break;
            }
            let s = self.snapshots.pop_front().expect("front exists");
            if s.seq < self.version {
                // A snapshot at a seq that is no version of the document.
                return self.fail(Violation::at(
                    s.seq,
                    format!(
                        "a snapshot at seq {}, which is no version of the document",
                        s.seq
                    ),
                ));
            }
            if self.text != s.text.as_str() {
                return self.fail(Violation::at(
                    s.seq,
                    "the stored snapshot's text differs from the replay of the records",
                ));
            }
            if let Some(h) = s.hash.as_deref() {
                if chain::from_hex(h) != Some(self.chain) {
                    return self.fail(Violation::at(
                        s.seq,
                        "the stored snapshot's hash differs from the chain of the records",
                    ));
                }
            }
            self.report.snapshots_checked += 1;
        }
    }

    /// Log mode: the archived records in the range the log covered must be
    /// the same records.
    async fn compare_archive(&mut self, store: &dyn Store, from: u64) -> anyhow::Result<()> {
        let (Some(&first), Some(&last)) = (self.seen.keys().next(), self.seen.keys().last()) else {
            return Ok(());
        };
        let mut after = first.saturating_sub(1);
        'pages: while !self.failed() {
            let page = store.history(&self.report.doc, after, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                if r.seq > last {
                    break 'pages;
                }
                after = r.seq;
                if r.seq < from {
                    continue;
                }
                // The archived record's content must be the log's.
                match self.seen.get(&r.seq) {
                    Some((_, digest))
                        if *digest == chain::GENESIS
                            || chain::chain_hash(&chain::GENESIS, r) == *digest =>
                    {
                        self.report.archived_checked += 1
                    }
                    Some(_) => self.fail(Violation::at(
                        r.seq,
                        "the archived record differs from the log's",
                    )),
                    None => self.fail(Violation::at(
                        r.seq,
                        "the store archived a record the log does not have",
                    )),
                }
            }
        }
        Ok(())
    }
}

/// A line on stderr while a long audit runs.
struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    fn new(on: bool) -> Progress {
        Progress {
            on: on && std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, what: impl FnOnce() -> String) {
        if self.on && self.last.elapsed() > Duration::from_millis(200) {
            self.last = Instant::now();
            let mut e = std::io::stderr();
            let _ = write!(e, "\r\x1b[2Kaudit: {}", what());
            let _ = e.flush();
        }
    }

    fn done(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// Walks `doc`'s archived history in the store (store mode, and in log
/// mode for documents the log no longer holds).
async fn walk_store(
    check: &mut DocCheck,
    store: &dyn Store,
    total: &mut u64,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let doc = check.report.doc.clone();
    let mut after = 0;
    loop {
        let page = store.history(&doc, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for a in &page {
            *total += 1;
            if !check.started {
                check.anchor(store, a).await?;
            }
            let trusted = a.seq < check.from;
            check.check(a, trusted);
        }
        progress.tick(|| format!("{total} records, document {doc}"));
    }
    Ok(())
}

/// Every document id the store knows.
async fn all_documents(store: &dyn Store) -> anyhow::Result<Vec<String>> {
    let mut all: Vec<String> = Vec::new();
    loop {
        let after = all.last().cloned().unwrap_or_default();
        let page = store.documents(&after, PAGE).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// Runs the audit.
pub async fn audit(
    log: &dyn OpLog,
    store: &dyn Store,
    topics: &Topics,
    opts: &AuditOptions,
) -> anyhow::Result<AuditReport> {
    if opts.raw && opts.source == AuditSource::Store {
        anyhow::bail!(
            "--raw checks the ops topic against the applied topic's decisions (refusals are not archived): use it with --source log"
        );
    }
    let mut progress = Progress::new(opts.progress);
    let mut report = AuditReport::default();
    let mut docs: BTreeMap<String, DocCheck> = BTreeMap::new();
    // Every decision the applied topic holds, by (doc, raw seq), for --raw.
    let mut decided: HashMap<(String, u64), Decision> = HashMap::new();
    // Per partition, the lowest raw seq the applied topic still decides:
    // below it, decisions may have been truncated.
    let mut first_decided: HashMap<u32, u64> = HashMap::new();
    let mut total = 0u64;
    if opts.source == AuditSource::Log {
        let parts = log.partitions(&topics.applied)?;
        for p in 0..parts {
            let hw = log.high_watermark(&topics.applied, p).await?;
            let mut pos = log.log_start(&topics.applied, p).await?;
            while pos < hw {
                let batch = log
                    .fetch(&topics.applied, p, pos, PAGE, Duration::ZERO)
                    .await?;
                let Some(last) = batch.last() else { break };
                pos = last.offset + 1;
                for rec in batch {
                    total += 1;
                    let out = match decode_out_record(&rec.value) {
                        Ok(o) => o,
                        Err(e) => {
                            report.global.push(Violation {
                                seq: None,
                                partition: Some(p),
                                offset: Some(rec.offset),
                                reason: format!("unreadable record: {}", e.message),
                            });
                            continue;
                        }
                    };
                    first_decided
                        .entry(p)
                        .and_modify(|f| *f = (*f).min(out.raw_seq()))
                        .or_insert(out.raw_seq());
                    if opts.doc.as_deref().is_some_and(|d| d != out.doc()) {
                        continue;
                    }
                    if opts.raw {
                        let d = Decision::of(&out);
                        let key = (out.doc().to_owned(), out.raw_seq());
                        match decided.get(&key) {
                            Some(prior) if !prior.same(&d) => report.global.push(Violation {
                                seq: Some(out.raw_seq()),
                                partition: Some(p),
                                offset: Some(rec.offset),
                                reason: format!(
                                    "{}: two different decisions for the raw op at this seq",
                                    out.doc()
                                ),
                            }),
                            _ => {
                                decided.insert(key, d);
                            }
                        }
                    }
                    let OutRecord::Applied(a) = out else { continue };
                    let check = docs
                        .entry(a.doc.clone())
                        .or_insert_with(|| DocCheck::new(&a.doc, opts.from));
                    if !check.started {
                        check.anchor(store, &a).await?;
                    }
                    check.check(&a, a.seq < opts.from);
                }
                progress.tick(|| {
                    format!(
                        "{total} records, {} documents, partition {}/{parts}",
                        docs.len(),
                        p + 1
                    )
                });
            }
        }
        for check in docs.values_mut() {
            check.compare_archive(store, opts.from).await?;
        }
    }
    // The store's documents: all of them in store mode; in log mode those
    // whose records the log no longer holds.
    let names = match &opts.doc {
        Some(d) => vec![d.clone()],
        None => all_documents(store).await?,
    };
    for doc in names {
        if docs.contains_key(&doc) {
            continue;
        }
        let mut check = DocCheck::new(&doc, opts.from);
        walk_store(&mut check, store, &mut total, &mut progress).await?;
        if !check.started {
            check.fail(Violation {
                seq: None,
                partition: None,
                offset: None,
                reason: "no record of this document in the log or the store".into(),
            });
        }
        docs.insert(doc, check);
    }
    if opts.raw {
        check_raw(
            log,
            store,
            topics,
            opts,
            &decided,
            &first_decided,
            &mut docs,
            &mut report,
            &mut progress,
        )
        .await?;
    }
    progress.done();
    report.docs = docs.into_values().map(|c| c.report).collect();
    Ok(report)
}

/// What the applied topic says about one raw op.
#[derive(Debug, Clone)]
struct Decision {
    applied: bool,
    client: String,
    cseq: u64,
    base: u64,
    user: String,
}

impl Decision {
    fn of(out: &OutRecord) -> Decision {
        match out {
            OutRecord::Applied(a) => Decision {
                applied: true,
                client: a.client.clone(),
                cseq: a.cseq,
                base: a.base,
                user: a.user.clone(),
            },
            OutRecord::Rejected(r) => Decision {
                applied: false,
                client: r.client.clone(),
                cseq: r.cseq,
                base: 0,
                user: String::new(),
            },
        }
    }

    fn same(&self, other: &Decision) -> bool {
        self.applied == other.applied
            && self.client == other.client
            && self.cseq == other.cseq
            && self.base == other.base
            && self.user == other.user
    }
}

/// Every raw op is decided exactly once (applied, refused, or dropped as a
/// resubmission of an applied op), and every decision names its raw op.
/// Raw ops above the last decision of their partition may not have been
/// processed yet; those below the first decision the applied topic still
/// holds may have had theirs truncated: neither is judged.
#[allow(clippy::too_many_arguments)]
async fn check_raw(
    log: &dyn OpLog,
    store: &dyn Store,
    topics: &Topics,
    opts: &AuditOptions,
    decided: &HashMap<(String, u64), Decision>,
    first_decided: &HashMap<u32, u64>,
    docs: &mut BTreeMap<String, DocCheck>,
    report: &mut AuditReport,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let parts = log.partitions(&topics.ops)?;
    // (doc, client, cseq) -> seq of its applied record.
    let applied_ids: HashMap<(&str, &str, u64), u64> = decided
        .iter()
        .filter(|(_, d)| d.applied)
        .map(|((doc, seq), d)| ((doc.as_str(), d.client.as_str(), d.cseq), *seq))
        .collect();
    let mut raw_seqs: HashMap<String, BTreeSet<u64>> = HashMap::new();
    let mut lowest_raw: Vec<u64> = Vec::new();
    for p in 0..parts {
        let hw = log.high_watermark(&topics.ops, p).await?;
        let start = log.log_start(&topics.ops, p).await?;
        lowest_raw.push(start + 1);
        let mut records = Vec::new();
        let mut pos = start;
        while pos < hw {
            let batch = log.fetch(&topics.ops, p, pos, PAGE, Duration::ZERO).await?;
            let Some(last) = batch.last() else { break };
            pos = last.offset + 1;
            records.extend(batch);
            progress.tick(|| format!("raw ops: partition {}/{parts}, offset {pos}", p + 1));
        }
        let decoded: Vec<_> = records
            .iter()
            .map(|r| (r.offset, decode_raw_record(&r.value)))
            .collect();
        // Decisions reach as far as the last raw op decided here.
        let horizon = decoded
            .iter()
            .filter_map(|(o, r)| {
                let raw = r.as_ref().ok()?;
                decided
                    .contains_key(&(raw.doc.clone(), o + 1))
                    .then_some(o + 1)
            })
            .max()
            .unwrap_or(0);
        let floor = first_decided.get(&p).copied().unwrap_or(u64::MAX);
        for (offset, raw) in decoded {
            let seq = offset + 1;
            let raw = match raw {
                Ok(r) => r,
                Err(e) => {
                    report.global.push(Violation {
                        seq: Some(seq),
                        partition: Some(p),
                        offset: Some(offset),
                        reason: format!("unreadable raw op: {}", e.message),
                    });
                    continue;
                }
            };
            if opts.doc.as_deref().is_some_and(|d| d != raw.doc) || seq < opts.from {
                continue;
            }
            raw_seqs.entry(raw.doc.clone()).or_default().insert(seq);
            let verdict: Result<bool, Violation> = match decided.get(&(raw.doc.clone(), seq)) {
                Some(d) if d.client != raw.client || d.cseq != raw.cseq => Err(Violation::at(
                    seq,
                    "the decision at this seq names another op than the raw op",
                )),
                Some(d) if d.applied && (d.base != raw.base || d.user != raw.user) => {
                    Err(Violation::at(
                        seq,
                        "the applied record's base or user differs from its raw op",
                    ))
                }
                Some(_) => Ok(true),
                None => {
                    let first =
                        match applied_ids.get(&(raw.doc.as_str(), raw.client.as_str(), raw.cseq)) {
                            Some(s) => Some(*s),
                            // Its first application may be archived only.
                            None => store
                                .find_op(&raw.doc, &raw.client, raw.cseq)
                                .await?
                                .map(|r| r.seq),
                        };
                    match first {
                        // A resubmission of an applied op: nothing is written.
                        Some(first) if first < seq => Ok(true),
                        _ if seq > horizon || seq < floor => Ok(false),
                        _ => Err(Violation::at(
                            seq,
                            "the raw op was never decided (no applied or refused record)",
                        )),
                    }
                }
            };
            match (verdict, docs.get_mut(&raw.doc)) {
                (Ok(true), Some(check)) => check.report.raw_checked += 1,
                (Ok(_), _) => {}
                (Err(v), Some(check)) => check.fail(v),
                (Err(mut v), None) => {
                    v.partition = Some(p);
                    v.offset = Some(offset);
                    v.reason = format!("{}: {}", raw.doc, v.reason);
                    report.global.push(v);
                }
            }
        }
    }
    // Applied records whose raw op the ops topic still holds must have one.
    for ((doc, seq), d) in decided {
        if !d.applied || *seq < opts.from {
            continue;
        }
        let p = oplog::partition_for(doc, parts);
        if *seq < lowest_raw[p as usize] {
            continue;
        }
        if !raw_seqs.get(doc).is_some_and(|s| s.contains(seq)) {
            if let Some(check) = docs.get_mut(doc) {
                check.fail(Violation::at(
                    *seq,
                    "an applied record without a raw op at its seq",
                ));
            }
        }
    }
    Ok(())
}

/// Prints the report: JSON lines, or a summary for people.
pub fn print_report(report: &AuditReport, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        for d in &report.docs {
            serde_json::to_writer(&mut *out, d)?;
            writeln!(out)?;
        }
        for v in &report.global {
            serde_json::to_writer(
                &mut *out,
                &serde_json::json!({ "doc": null, "verdict": "violation", "violation": v }),
            )?;
            writeln!(out)?;
        }
        return Ok(());
    }
    for d in &report.docs {
        let range = match (d.first_seq, d.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..{b}"),
            _ => "no records".into(),
        };
        let time = match (d.first_ts, d.last_ts) {
            (Some(a), Some(b)) => format!("{} .. {}", utc(a), utc(b)),
            _ => String::new(),
        };
        writeln!(
            out,
            "{}: {} records, {range}, {} author(s), {time}; anchored at {}; {} snapshot(s), {} archived, {} raw checked",
            d.doc,
            d.records,
            d.authors.len(),
            d.anchor,
            d.snapshots_checked,
            d.archived_checked,
            d.raw_checked
        )?;
        match &d.violation {
            None => writeln!(out, "  ok")?,
            Some(v) => writeln!(out, "  VIOLATION{}: {}", at(v), v.reason)?,
        }
    }
    for v in &report.global {
        writeln!(out, "VIOLATION{}: {}", at(v), v.reason)?;
    }
    writeln!(
        out,
        "audit: {} document(s), {} record(s): {}",
        report.docs.len(),
        report.records(),
        if report.ok() { "ok" } else { "FAILED" }
    )?;
    Ok(())
}

fn at(v: &Violation) -> String {
    let mut s = String::new();
    if let Some(seq) = v.seq {
        s.push_str(&format!(" at seq {seq}"));
    }
    if let (Some(p), Some(o)) = (v.partition, v.offset) {
        s.push_str(&format!(" (partition {p}, offset {o})"));
    }
    s
}

/// `ts` (ms since the epoch) as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Opens the deployment's backends for a tool run (`audit`, `export`,
/// `import`).
pub async fn open_for_tool(config: &crate::ServeConfig) -> anyhow::Result<crate::Backends> {
    crate::open_backends_for_tool(config).await.with_context(|| {
        if config.kafka.is_none() {
            format!(
                "opening {} (the embedded log and store are one process's: stop `quire serve` first)",
                config.data.display()
            )
        } else {
            "opening the log and store".to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_326_923_723), "2026-11-22T05:55:23Z");
    }
}
