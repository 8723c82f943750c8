//! SPEC §12.5: state is a pure function of the log. Rebuilding a document
//! from any snapshot plus the following records (through the same loader the
//! roles use, on the embedded log and store) gives identical text and
//! byte-identical applied records.

use std::collections::BTreeMap;
use std::sync::Arc;

use document::{load, Sources, Topics, WindowPolicy};
use ot::Op;
use protocol::{OutRecord, RawRecord};
use store::{EmbeddedStore, Store};
use testkit::SplitMix64;
use transformer::{process, CoreConfig, Outcome, TransformerDoc};

const DOC: &str = "replayed";
const INSERTS: &[&str] = &["x", "yz", "é", "😀"];

/// Raw records from several clients with random (sometimes stale, sometimes
/// invalid) bases.
fn raw_records(seed: u64, n: usize, cfg: &CoreConfig) -> Vec<RawRecord> {
    let mut r = SplitMix64::new(seed);
    let mut texts: BTreeMap<u64, String> = BTreeMap::from([(0, String::new())]);
    let mut state = TransformerDoc::empty(DOC);
    let mut cseqs = [0u64; 6];
    let mut last_seq = [0u64; 6];
    let mut out = Vec::new();
    for i in 0..n {
        // Client 5 edits rarely: its last op is often older than the
        // window, while the dedup table is smaller than the window.
        let c = if r.chance(1, 25) {
            5
        } else {
            r.below(5) as usize
        };
        // One op in flight per client: bases never go below its last op.
        let versions: Vec<u64> = texts
            .keys()
            .copied()
            .filter(|v| *v >= last_seq[c])
            .collect();
        let base = versions[versions.len() - 1 - r.below(versions.len().min(12) as u64) as usize];
        let text = &texts[&base];
        let len = text.chars().count();
        let pos = r.below(len as u64 + 1) as usize;
        let op = if r.chance(1, 20) {
            Op::splice(len + 3, 0, "bad") // does not fit: INVALID_OP
        } else if len > 0 && r.chance(1, 3) {
            Op::splice(pos, (1 + r.below(3) as usize).min(len - pos), "")
        } else {
            Op::splice(pos, 0, r.pick::<&str>(INSERTS))
        };
        cseqs[c] += 1;
        let raw = RawRecord {
            v: 1,
            doc: DOC.into(),
            client: format!("c{c}"),
            cseq: cseqs[c],
            base,
            op: op.into(),
            user: "u".into(),
            // Gateways' clocks disagree a little: sometimes backwards.
            ts: i as i64 * 2 - r.below(5) as i64,
        };
        // Track real versions to pick plausible bases.
        if let Outcome::Applied(a) = process(&mut state, &raw, i as u64 + 1, cfg) {
            texts.insert(a.seq, state.text.to_string());
            last_seq[c] = a.seq;
        }
        out.push(raw);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_from_any_snapshot_gives_identical_output() {
    let cfg = CoreConfig {
        // The window is 3 ops, or 12 ms of the document's time (about 6
        // ops), capped at 9: bases up to 12 versions back are stale or not
        // depending on time, so a reload must rebuild the same window.
        window: WindowPolicy {
            min_ops: 3,
            min_age_ms: 12,
            max_ops: 9,
        },
        ..CoreConfig::default()
    };
    let raws = raw_records(42, 300, &cfg);

    // The reference run from the empty document.
    let mut state = TransformerDoc::empty(DOC);
    let mut outputs: Vec<Option<OutRecord>> = Vec::new();
    let mut states = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let out = match process(&mut state, raw, i as u64 + 1, &cfg) {
            Outcome::Applied(a) => Some(OutRecord::Applied(a)),
            Outcome::Rejected(r) => Some(OutRecord::Rejected(r)),
            Outcome::Duplicate { .. } => None,
        };
        outputs.push(out);
        states.push(state.clone());
    }
    let final_text = state.text.to_string();
    let kinds = outputs.iter().flatten().fold((0, 0), |(a, r), o| match o {
        OutRecord::Applied(_) => (a + 1, r),
        OutRecord::Rejected(_) => (a, r + 1),
    });
    let mut codes = BTreeMap::new();
    for o in outputs.iter().flatten() {
        if let OutRecord::Rejected(r) = o {
            *codes.entry(r.code.as_str()).or_insert(0) += 1;
        }
    }
    assert!(
        kinds.0 > 100 && kinds.1 > 5 && codes.get("STALE_BASE").copied().unwrap_or(0) > 5,
        "applied/rejected: {kinds:?} {codes:?}"
    );

    for cut in [0usize, 1, 17, 100, 150, 299] {
        let dir = tempfile::tempdir().unwrap();
        // The embedded log, or the broker (`QUIRE_TEST_LOG=kafka`).
        let prefix = kafkalog::testing::topic_prefix();
        let topics = Topics::with_prefix(&prefix);
        let log = kafkalog::testing::open_log(dir.path(), &prefix, 1).await;
        let store = EmbeddedStore::open(&dir.path().join("store")).unwrap();
        // The records before the cut are archived, and a snapshot is taken there.
        let before: Vec<_> = outputs[..cut]
            .iter()
            .flatten()
            .filter_map(|o| match o {
                OutRecord::Applied(a) => Some(a.clone()),
                _ => None,
            })
            .collect();
        store.put_history(&before).await.unwrap();
        if cut > 0 {
            store
                .put_snapshot(&states[cut - 1].snapshot())
                .await
                .unwrap();
        }
        let recs: Vec<_> = outputs[..cut]
            .iter()
            .flatten()
            .map(|o| (DOC.to_owned(), o.encode()))
            .collect();
        if !recs.is_empty() {
            log.produce(&topics.applied, recs).await.unwrap();
        }
        let store: Arc<dyn Store> = Arc::new(store);
        let sources = Sources {
            log: log.as_ref(),
            store: store.as_ref(),
            topics: &topics,
            window: cfg.window,
        };
        let mut rebuilt = load(sources, DOC, None, None).await.unwrap();
        if cut > 0 {
            let warm = &states[cut - 1];
            assert_eq!(
                (
                    rebuilt.version,
                    rebuilt.floor,
                    rebuilt.window.len(),
                    rebuilt.clock
                ),
                (warm.version, warm.floor, warm.window.len(), warm.clock),
                "cut {cut}: the reloaded window differs from the warm one"
            );
            assert_eq!(rebuilt.clients, warm.clients, "cut {cut}: dedup table");
            assert_eq!(rebuilt.window, warm.window, "cut {cut}: window ops");
        }
        for (i, raw) in raws.iter().enumerate().skip(cut) {
            let out = match process(&mut rebuilt, raw, i as u64 + 1, &cfg) {
                Outcome::Applied(a) => Some(OutRecord::Applied(a)),
                Outcome::Rejected(r) => Some(OutRecord::Rejected(r)),
                Outcome::Duplicate { .. } => None,
            };
            assert_eq!(
                out.as_ref().map(OutRecord::encode),
                outputs[i].as_ref().map(OutRecord::encode),
                "cut {cut}: record {i} differs"
            );
        }
        assert_eq!(rebuilt.text.to_string(), final_text, "cut {cut}");
    }
}
