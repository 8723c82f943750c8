//! Moves a log written in segment files (the format of the release before
//! the log moved onto fjall; `segments.rs`) into the log database, once,
//! when the log is opened.
//!
//! The segments are replayed as that release did on open (a torn tail ends
//! its segment; a gap in the frame numbering or a missing record is
//! refused), every live record is written into a new database beside them
//! (`lsm.migrating`), which is then renamed into place; the segment files
//! are kept in `segments.migrated/` (delete them once satisfied).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::segments::{self, Body, Scanner};
use crate::store::{self, Db, PartMeta};
use crate::{LogError, Offset, Partition, Record, Result};

/// Records per write batch of the migration.
const CHUNK: usize = 1000;

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(format!("migrating the log's segment files: {e}"))
}

/// Where a record's bytes are.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u32,
    pos: u64,
    len: u32,
}

/// A record not seen yet while replaying (never left once replay ends).
const MISSING: Loc = Loc {
    seg: u32::MAX,
    pos: 0,
    len: 0,
};

/// What recovery rebuilt of one partition.
struct Recovered {
    next: u64,
    start: u64,
    first: u64,
    index: VecDeque<Loc>,
}

/// Everything recovery found in the segments.
#[derive(Default)]
struct Replay {
    parts: HashMap<(String, Partition), Recovered>,
    /// Topics in the order checkpoints list them, with partition counts.
    topics: Vec<(String, u32)>,
    groups: HashMap<(String, String, Partition), Offset>,
    next_lsn: u64,
}

fn corrupt(seg: u32, pos: u64, what: impl std::fmt::Display) -> LogError {
    LogError::Storage(format!("log segment {seg} at byte {pos}: {what}"))
}

impl Replay {
    fn part(&mut self, seg: u32, pos: u64, topic: &str, p: Partition) -> Result<&mut Recovered> {
        self.parts.get_mut(&(topic.to_owned(), p)).ok_or_else(|| {
            corrupt(
                seg,
                pos,
                format!("{topic}/{p} appears before any checkpoint lists it"),
            )
        })
    }

    fn apply(&mut self, seg: u32, f: &segments::Frame) -> Result<()> {
        let bad = |_| corrupt(seg, f.pos, "malformed frame");
        let mut b = Body {
            bytes: &f.body,
            at: 1,
        };
        match f.kind {
            segments::CHECKPOINT => {
                let n = b.u32().map_err(bad)?;
                for _ in 0..n {
                    let topic = b.str().map_err(bad)?.to_owned();
                    let count = b.u32().map_err(bad)?;
                    if !self.topics.iter().any(|(t, _)| *t == topic) {
                        self.topics.push((topic.clone(), count));
                    }
                    for p in 0..count {
                        let next = b.u64().map_err(bad)?;
                        let start = b.u64().map_err(bad)?;
                        match self.parts.get_mut(&(topic.clone(), p)) {
                            Some(r) if r.next != next => {
                                return Err(corrupt(seg, f.pos, format!(
                                    "checkpoint says {topic}/{p} ends at {next}, earlier segments end it at {}",
                                    r.next
                                )))
                            }
                            Some(r) => {
                                r.start = r.start.max(start);
                            }
                            None => {
                                self.parts.insert(
                                    (topic.clone(), p),
                                    Recovered { next, start, first: next, index: VecDeque::new() },
                                );
                            }
                        }
                    }
                }
                let n = b.u32().map_err(bad)?;
                self.groups.clear();
                for _ in 0..n {
                    let (key, next) = b.position().map_err(bad)?;
                    self.groups.insert(key, next);
                }
            }
            segments::APPEND => {
                let topic = b.str().map_err(bad)?.to_owned();
                let p = b.u32().map_err(bad)?;
                let first = b.u64().map_err(bad)?;
                let count = b.u32().map_err(bad)?;
                let r = self.part(seg, f.pos, &topic, p)?;
                if first != r.next {
                    return Err(corrupt(
                        seg,
                        f.pos,
                        format!("{topic}/{p}: append at {first}, expected {}", r.next),
                    ));
                }
                for _ in 0..count {
                    let (at, len) = b.skip_record().map_err(bad)?;
                    r.index.push_back(Loc {
                        seg,
                        pos: f.pos + segments::HEADER as u64 + at as u64,
                        len,
                    });
                }
                r.next += count as u64;
            }
            segments::RELOCATE => {
                let topic = b.str().map_err(bad)?.to_owned();
                let p = b.u32().map_err(bad)?;
                let count = b.u32().map_err(bad)?;
                let r = self.part(seg, f.pos, &topic, p)?;
                for _ in 0..count {
                    let offset = b.u64().map_err(bad)?;
                    let (at, len) = b.skip_record().map_err(bad)?;
                    let loc = Loc {
                        seg,
                        pos: f.pos + segments::HEADER as u64 + at as u64,
                        len,
                    };
                    if offset < r.start || offset >= r.next {
                        continue;
                    }
                    // Replay may start after the segment this record was
                    // first written in: it then lies below the index so far.
                    while offset < r.first {
                        r.index.push_front(MISSING);
                        r.first -= 1;
                    }
                    r.index[(offset - r.first) as usize] = loc;
                }
            }
            segments::COMMIT => {
                let (key, next) = b.position().map_err(bad)?;
                self.groups.insert(key, next);
            }
            segments::DELETE => {
                let topic = b.str().map_err(bad)?.to_owned();
                let p = b.u32().map_err(bad)?;
                let start = b.u64().map_err(bad)?;
                let r = self.part(seg, f.pos, &topic, p)?;
                r.start = r.start.max(start);
                while r.first < r.start && r.index.pop_front().is_some() {
                    r.first += 1;
                }
            }
            k => return Err(corrupt(seg, f.pos, format!("unknown frame kind {k}"))),
        }
        Ok(())
    }
}

/// Reads every segment of `dir` in order.
fn replay(dir: &Path, ids: &[u32]) -> Result<Replay> {
    let mut r = Replay::default();
    let mut expected: Option<u64> = None;
    for &seg in ids {
        let mut scan = Scanner::open(&segments::segment_path(dir, seg)).map_err(storage)?;
        let mut first = true;
        while let Some(frame) = scan.next().map_err(storage)? {
            if first {
                if let Some(e) = expected {
                    if frame.lsn != e {
                        return Err(corrupt(seg, 0, format!(
                            "starts at frame {}, but the segment before ends at frame {e}: frames are missing",
                            frame.lsn
                        )));
                    }
                }
                if frame.kind != segments::CHECKPOINT {
                    return Err(corrupt(seg, 0, "does not start with a checkpoint"));
                }
                first = false;
            }
            r.apply(seg, &frame)?;
        }
        if let Some(n) = scan.next_lsn() {
            expected = Some(n);
        }
    }
    r.next_lsn = expected.unwrap_or(0);
    for rec in r.parts.values_mut() {
        if rec.first < rec.start {
            // Every record below the start is gone; nothing else may be.
            while rec.first < rec.start && rec.index.pop_front().is_some() {
                rec.first += 1;
            }
        }
        if rec.first > rec.start {
            return Err(LogError::Storage(format!(
                "log segments hold records from offset {} only, but the log start is {}: a segment is missing",
                rec.first, rec.start
            )));
        }
        if rec.first + rec.index.len() as u64 != rec.next
            || rec.index.iter().any(|l| l.seg == MISSING.seg)
        {
            return Err(LogError::Storage(
                "log segments do not hold every record from the log start on: a segment is missing"
                    .into(),
            ));
        }
    }
    Ok(r)
}

/// Reads records at `planned` locations (offsets `from..`): records that
/// lie close together in one segment are read with one `pread`.
fn read_records(planned: &[(Loc, Arc<File>)], from: Offset) -> Result<Vec<Record>> {
    /// Largest gap read over, and largest single read.
    const GAP: u64 = 4096;
    const SPAN: u64 = 1 << 20;
    let mut out = Vec::with_capacity(planned.len());
    let mut i = 0;
    while i < planned.len() {
        let (first, file) = &planned[i];
        let mut end = first.pos + first.len as u64;
        let mut j = i + 1;
        while let Some((l, _)) = planned.get(j) {
            let l_end = l.pos + l.len as u64;
            if l.seg != first.seg || l.pos < end || l.pos - end > GAP || l_end - first.pos > SPAN {
                break;
            }
            end = l_end;
            j += 1;
        }
        let mut buf = vec![0u8; (end - first.pos) as usize];
        file.read_exact_at(&mut buf, first.pos).map_err(storage)?;
        for (k, (l, _)) in planned.iter().enumerate().take(j).skip(i) {
            let a = (l.pos - first.pos) as usize;
            let (key, value) =
                segments::parse_record(&buf[a..a + l.len as usize]).map_err(|_| {
                    storage(format!(
                        "log segment {} at byte {}: unreadable record",
                        l.seg, l.pos
                    ))
                })?;
            out.push(Record {
                offset: from + k as u64,
                key,
                value,
            });
        }
        i = j;
    }
    Ok(out)
}

/// Migrates the segment files in `dir` (there are some) into `dir/lsm`.
pub(crate) fn migrate(dir: &Path, ids: &[u32]) -> Result<()> {
    let db_path = dir.join(store::DB_DIR);
    let moved = dir.join("segments.migrated");
    if db_path.exists() {
        // A migration that stopped after renaming its database into place
        // finishes moving the segments it moved in away; any other segment
        // file (written by an older version run on the folder since) is
        // not guessed at.
        let db = Db::open(&db_path)?;
        let migrated = db.load_meta()?.migrated_segments.unwrap_or_default();
        if !ids.iter().all(|id| migrated.contains(id)) {
            return Err(storage(format!(
                "{} holds both segment files and a log database: move the segment files away (the database is the log)",
                dir.display()
            )));
        }
        drop(db);
        return move_segments(dir, ids, &moved);
    }
    let tmp = dir.join("lsm.migrating");
    if tmp.exists() {
        // Left by a migration that stopped: start it again.
        std::fs::remove_dir_all(&tmp).map_err(storage)?;
    }
    let replay = replay(dir, ids)?;
    let mut files = BTreeMap::new();
    for &id in ids {
        let f = File::open(segments::segment_path(dir, id)).map_err(storage)?;
        files.insert(id, Arc::new(f));
    }
    let db = Db::open(&tmp)?;
    let mut migrated = 0u64;
    let mut batch = db.db.batch();
    let mut ids_by_topic = HashMap::new();
    for (i, (topic, count)) in replay.topics.iter().enumerate() {
        let id = i as u32 + 1;
        ids_by_topic.insert(topic.clone(), id);
        batch.insert(
            &db.meta,
            store::topic_key(topic),
            store::topic_value(id, *count),
        );
        for p in 0..*count {
            let r = &replay.parts[&(topic.clone(), p)];
            batch.insert(
                &db.meta,
                store::part_key(id, p),
                store::part_value(PartMeta {
                    next: r.next,
                    start: r.start,
                }),
            );
            let mut at = r.start;
            while at < r.next {
                let n = (r.next - at).min(CHUNK as u64);
                let planned: Vec<(Loc, Arc<File>)> = (at..at + n)
                    .map(|o| {
                        let loc = r.index[(o - r.first) as usize];
                        files
                            .get(&loc.seg)
                            .cloned()
                            .map(|f| (loc, f))
                            .ok_or_else(|| storage(format!("segment {} is gone", loc.seg)))
                    })
                    .collect::<Result<_>>()?;
                for rec in read_records(&planned, at)? {
                    batch.insert(
                        &db.records,
                        store::record_key(id, p, rec.offset),
                        store::record_value(&rec.key, &rec.value),
                    );
                }
                batch.commit().map_err(storage)?;
                batch = db.db.batch();
                at += n;
                migrated += n;
            }
        }
    }
    for ((group, topic, p), next) in &replay.groups {
        let Some(id) = ids_by_topic.get(topic) else {
            continue;
        };
        batch.insert(
            &db.meta,
            store::group_key(*id, *p, group),
            next.to_le_bytes(),
        );
    }
    let marker: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    batch.insert(&db.meta, store::MIGRATED_SEGMENTS, marker);
    batch.commit().map_err(storage)?;
    db.db
        .persist(fjall::PersistMode::SyncAll)
        .map_err(storage)?;
    drop(db);
    std::fs::rename(&tmp, &db_path).map_err(storage)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(storage)?;
    move_segments(dir, ids, &moved)?;
    tracing::info!(
        records = migrated,
        "log segment files moved into the log database (kept in segments.migrated/)"
    );
    Ok(())
}

fn move_segments(dir: &Path, ids: &[u32], to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(storage)?;
    for &id in ids {
        let from = segments::segment_path(dir, id);
        let name = from.file_name().expect("a file name").to_owned();
        std::fs::rename(&from, to.join(name)).map_err(storage)?;
    }
    for d in [to, dir] {
        File::open(d).and_then(|d| d.sync_all()).map_err(storage)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::segments::{self, FrameBuf};
    use crate::{EmbeddedLog, EmbeddedLogConfig, LogError, OpLog};

    fn config(dir: &std::path::Path) -> EmbeddedLogConfig {
        EmbeddedLogConfig::new(dir.to_owned(), vec![("t.ops".into(), 2)])
    }

    /// A segment as that release wrote it: a checkpoint (t.ops, 2
    /// partitions, partition 1 truncated to 1), then one append frame per
    /// record of partition 1, frame numbers from `lsn`.
    fn segment(lsn: u64, first: u64, values: &[&str]) -> Vec<u8> {
        let mut f = FrameBuf::default();
        f.begin(lsn, segments::CHECKPOINT);
        f.u32(1);
        f.str("t.ops");
        f.u32(2);
        for (next, start) in [(0, 0), (first, 1)] {
            f.u64(next);
            f.u64(start);
        }
        f.u32(1);
        f.position("g", "t.ops", 1, 2);
        f.finish();
        for (i, v) in values.iter().enumerate() {
            f.begin(lsn + 1 + i as u64, segments::APPEND);
            f.str("t.ops");
            f.u32(1);
            f.u64(first + i as u64);
            f.u32(1);
            f.record("doc", v.as_bytes());
            f.finish();
        }
        f.buf
    }

    /// A segment log with a torn frame at its end (a crash between a write
    /// and its sync: never acknowledged) moves into the database with
    /// everything before the torn frame; the segments are kept aside.
    #[tokio::test]
    async fn segment_files_move_into_the_database_without_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = segment(0, 1, &["a", "b", "c"]);
        let whole = bytes.len();
        bytes.extend_from_slice(&segment(4, 4, &["torn"])[..]);
        // Cut the second checkpoint's successor: keep the header and part
        // of the body of the frame after `whole`.
        bytes.truncate(whole + 20);
        std::fs::write(segments::segment_path(dir.path(), 1), &bytes).unwrap();
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        assert_eq!(log.log_start("t.ops", 1).await.unwrap(), 1);
        assert_eq!(log.high_watermark("t.ops", 1).await.unwrap(), 4);
        assert_eq!(log.committed("g", "t.ops", 1).await.unwrap(), Some(2));
        let got = log.fetch("t.ops", 1, 1, 10, Duration::ZERO).await.unwrap();
        let values: Vec<(u64, &[u8])> = got.iter().map(|r| (r.offset, &r.value[..])).collect();
        assert_eq!(values, [(1, &b"a"[..]), (2, b"b"), (3, b"c")]);
        assert_eq!(
            log.append_with_sequence("t.ops", 1, "p", 0, vec![("doc".into(), b"d".to_vec())])
                .await
                .unwrap(),
            4
        );
        drop(log);
        assert!(segments::list(dir.path()).unwrap().is_empty());
        assert!(dir.path().join("segments.migrated/00000001.wal").exists());
        // Reopening finds the database alone.
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        assert_eq!(log.high_watermark("t.ops", 1).await.unwrap(), 5);
        drop(log);
        // A migration stopped before moving the segments away finishes.
        std::fs::rename(
            dir.path().join("segments.migrated/00000001.wal"),
            segments::segment_path(dir.path(), 1),
        )
        .unwrap();
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        assert_eq!(log.high_watermark("t.ops", 1).await.unwrap(), 5);
        drop(log);
        assert!(segments::list(dir.path()).unwrap().is_empty());
        // A segment file it did not move in (an older version run on the
        // folder since) is refused, not moved aside unread.
        std::fs::write(
            segments::segment_path(dir.path(), 2),
            segment(0, 1, &["new"]),
        )
        .unwrap();
        let err = EmbeddedLog::open(config(dir.path())).err();
        assert!(
            matches!(&err, Some(LogError::Storage(m)) if m.contains("move the segment files away")),
            "{:?}",
            err.map(|e| e.to_string())
        );
    }

    /// Frames missing between two segments are refused, not skipped over;
    /// nothing is moved.
    #[tokio::test]
    async fn a_gap_between_segments_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segments::segment_path(dir.path(), 1), segment(0, 1, &["a"])).unwrap();
        // Segment 2 is gone: segment 3 starts at frame 9, not 2.
        std::fs::write(segments::segment_path(dir.path(), 3), segment(9, 2, &["x"])).unwrap();
        let err = EmbeddedLog::open(config(dir.path())).err();
        assert!(
            matches!(&err, Some(LogError::Storage(m)) if m.contains("frames are missing")),
            "{:?}",
            err.map(|e| e.to_string())
        );
        assert_eq!(segments::list(dir.path()).unwrap(), [1, 3]);
        assert!(!dir.path().join("lsm").exists());
    }
}
