//! Moves a log written by earlier versions of Quire (one redb file,
//! `log.redb`) into segment files, once, when the log is opened.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use redb::{ReadableTable, TableDefinition};

use crate::segments::{self, FrameBuf};
use crate::{LogError, Result};

/// `(topic, partition, offset) -> (key, value)`
const RECORDS: TableDefinition<(&str, u32, u64), (&str, &[u8])> = TableDefinition::new("records");
/// `(topic, partition) -> (next offset, log start)`
const PARTS: TableDefinition<(&str, u32), (u64, u64)> = TableDefinition::new("partitions");
/// `(group, topic, partition) -> committed next offset`
const GROUPS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("groups");

/// Records per append frame written by the migration.
const CHUNK: usize = 1000;

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(format!("migrating log.redb: {e}"))
}

/// Writes every partition (offsets, starts, records) and consumer position
/// of `dir/log.redb` as segment 1, then renames the redb file to
/// `log.redb.migrated` (kept: delete it once satisfied).
pub(crate) fn from_redb(dir: &Path) -> Result<()> {
    let old = dir.join("log.redb");
    let done = dir.join("log.redb.migrated");
    let existing = segments::list(dir).map_err(storage)?;
    if !existing.is_empty() {
        // A migration that stopped after writing its segment: finish it.
        // Anything else (a log.redb written again by an older version
        // beside segment files) is not guessed at.
        if existing != [1] || done.exists() {
            return Err(storage(format!(
                "{} holds both log.redb and segment files: move log.redb away (the segment files are the log)",
                dir.display()
            )));
        }
        std::fs::rename(&old, &done).map_err(storage)?;
        return Ok(());
    }
    let db = redb::Database::open(&old).map_err(storage)?;
    let r = db.begin_read().map_err(storage)?;
    let parts_t = r.open_table(PARTS).map_err(storage)?;
    let mut topics: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for item in parts_t.iter().map_err(storage)? {
        let (k, v) = item.map_err(storage)?;
        let (topic, p) = k.value();
        let parts = topics.entry(topic.to_owned()).or_default();
        if p as usize != parts.len() {
            return Err(storage(format!("{topic} lacks partition {}", parts.len())));
        }
        parts.push(v.value());
    }
    let mut groups = Vec::new();
    for item in r
        .open_table(GROUPS)
        .map_err(storage)?
        .iter()
        .map_err(storage)?
    {
        let (k, v) = item.map_err(storage)?;
        let (g, t, p) = k.value();
        groups.push((g.to_owned(), t.to_owned(), p, v.value()));
    }
    let tmp = dir.join("00000001.wal.tmp");
    let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(storage)?);
    let mut f = FrameBuf::default();
    let mut lsn = 0;
    // The checkpoint puts every partition at its start; the appends that
    // follow bring it to its next offset.
    f.begin(lsn, segments::CHECKPOINT);
    lsn += 1;
    f.u32(topics.len() as u32);
    for (topic, parts) in &topics {
        f.str(topic);
        f.u32(parts.len() as u32);
        for (_, start) in parts {
            f.u64(*start);
            f.u64(*start);
        }
    }
    f.u32(groups.len() as u32);
    for (g, t, p, next) in &groups {
        f.position(g, t, *p, *next);
    }
    f.finish();
    let records = r.open_table(RECORDS).map_err(storage)?;
    let mut migrated = 0u64;
    for (topic, parts) in &topics {
        for (p, (next, start)) in parts.iter().enumerate() {
            let p = p as u32;
            let mut at = *start;
            let mut rows = records
                .range((topic.as_str(), p, *start)..(topic.as_str(), p, *next))
                .map_err(storage)?;
            while at < *next {
                out.write_all(&f.buf).map_err(storage)?;
                f.clear();
                let n = (*next - at).min(CHUNK as u64);
                f.begin(lsn, segments::APPEND);
                lsn += 1;
                f.str(topic);
                f.u32(p);
                f.u64(at);
                f.u32(n as u32);
                for _ in 0..n {
                    let (k, v) = rows
                        .next()
                        .ok_or_else(|| storage(format!("{topic}/{p} lacks record {at}")))?
                        .map_err(storage)?;
                    if k.value().2 != at {
                        return Err(storage(format!("{topic}/{p} lacks record {at}")));
                    }
                    let (key, value) = v.value();
                    f.record(key, value);
                    at += 1;
                }
                f.finish();
                migrated += n;
            }
        }
    }
    out.write_all(&f.buf).map_err(storage)?;
    let file = out.into_inner().map_err(storage)?;
    file.sync_all().map_err(storage)?;
    std::fs::rename(&tmp, segments::segment_path(dir, 1)).map_err(storage)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(storage)?;
    drop(records);
    drop(parts_t);
    drop(r);
    drop(db);
    std::fs::rename(&old, &done).map_err(storage)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(storage)?;
    tracing::info!(
        records = migrated,
        "log.redb moved into segment files (kept as log.redb.migrated)"
    );
    Ok(())
}
