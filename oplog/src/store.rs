//! The embedded log's layout in fjall, an LSM-tree key-value store whose
//! commits are one append to its journal (checksummed, recovered on open).
//!
//! Two keyspaces under `<log dir>/lsm`:
//! - `records`: `topic id (u32 BE) | partition (u32 BE) | offset (u64 BE)`
//!   → `key length (u32 LE) | key | value`. Big-endian, so one partition's
//!   records are one contiguous key range in offset order.
//! - `meta`:
//!   - `t | topic name` → `id (u32 LE) | partitions (u32 LE)`;
//!   - `p | id (u32 BE) | partition (u32 BE)` → `next offset | log start`
//!     (u64 LE each), written in the same batch as the records it covers;
//!   - `g | id (u32 BE) | partition (u32 BE) | group` → committed next
//!     offset (u64 LE);
//!   - `migrated-segments` → the ids of the segment files moved in
//!     (u32 LE each), once a segment-file log was.

use std::collections::HashMap;
use std::path::Path;

use crate::{LogError, Offset, Partition, Result};

pub(crate) fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

/// The folder the database lives in, under the log's folder.
pub(crate) const DB_DIR: &str = "lsm";
/// Marks a database written by the segment-file migration.
pub(crate) const MIGRATED_SEGMENTS: &[u8] = b"migrated-segments";
/// Records deleted since the last reclaiming compaction (u64 LE).
pub(crate) const DELETED_SINCE: &[u8] = b"deleted-since";

/// The open database and its two keyspaces (handles are cheap to clone).
#[derive(Clone)]
pub(crate) struct Db {
    pub db: fjall::Database,
    pub records: fjall::Keyspace,
    pub meta: fjall::Keyspace,
}

/// A partition as `meta` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartMeta {
    pub next: Offset,
    pub start: Offset,
}

/// Everything `meta` holds.
#[derive(Default)]
pub(crate) struct Meta {
    /// `name -> (id, partitions)`
    pub topics: HashMap<String, (u32, u32)>,
    pub parts: HashMap<(u32, Partition), PartMeta>,
    /// `(topic id, partition, group) -> next`
    pub groups: HashMap<(u32, Partition, String), Offset>,
    /// The segment files a migration moved in.
    pub migrated_segments: Option<Vec<u32>>,
    /// Records deleted since the last reclaiming compaction, as of the
    /// last truncation (0 if none was recorded).
    pub deleted_since: u64,
}

impl Db {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Db> {
        let db = fjall::Database::builder(path)
            // Readers at the tail are served from memory, and older
            // records from the OS page cache too: a small block cache.
            .cache_size(8 << 20)
            // Two, so a long compaction never holds up flushes (fjall's
            // first worker leaves compactions to the other).
            .worker_threads(2)
            .max_journaling_size(64 << 20)
            .open()
            .map_err(|e| storage(format!("opening the log database {}: {e}", path.display())))?;
        let records = db
            .keyspace("records", || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(8 << 20)
            })
            .map_err(storage)?;
        let meta = db
            .keyspace("meta", || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(1 << 20)
            })
            .map_err(storage)?;
        Ok(Db { db, records, meta })
    }

    /// Reads `meta` whole (it is small: a few entries per partition and
    /// consumer group).
    pub fn load_meta(&self) -> Result<Meta> {
        let bad = |what: &str| storage(format!("the log database's meta holds {what}"));
        let mut meta = Meta::default();
        for item in self.meta.iter() {
            let (k, v) = item.into_inner().map_err(storage)?;
            match k.first() {
                Some(b't') => {
                    let name = std::str::from_utf8(&k[1..])
                        .map_err(|_| bad("a topic name that is not UTF-8"))?;
                    if v.len() != 8 {
                        return Err(bad("a malformed topic"));
                    }
                    meta.topics
                        .insert(name.to_owned(), (le32(&v[0..4]), le32(&v[4..8])));
                }
                Some(b'p') if k.len() == 9 && v.len() == 16 => {
                    meta.parts.insert(
                        (be32(&k[1..5]), be32(&k[5..9])),
                        PartMeta {
                            next: le64(&v[0..8]),
                            start: le64(&v[8..16]),
                        },
                    );
                }
                Some(b'g') if k.len() >= 9 && v.len() == 8 => {
                    let group = std::str::from_utf8(&k[9..])
                        .map_err(|_| bad("a group name that is not UTF-8"))?;
                    meta.groups
                        .insert((be32(&k[1..5]), be32(&k[5..9]), group.to_owned()), le64(&v));
                }
                _ if &k[..] == MIGRATED_SEGMENTS && v.len() % 4 == 0 => {
                    meta.migrated_segments = Some(v.chunks(4).map(le32).collect());
                }
                _ if &k[..] == DELETED_SINCE && v.len() == 8 => {
                    meta.deleted_since = le64(&v);
                }
                _ => return Err(bad("an unknown entry")),
            }
        }
        Ok(meta)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}
fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

pub(crate) fn record_key(topic: u32, p: Partition, offset: Offset) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[0..4].copy_from_slice(&topic.to_be_bytes());
    k[4..8].copy_from_slice(&p.to_be_bytes());
    k[8..16].copy_from_slice(&offset.to_be_bytes());
    k
}

/// The offset in a record key.
pub(crate) fn key_offset(k: &[u8]) -> Option<Offset> {
    Some(u64::from_be_bytes(k.get(8..16)?.try_into().ok()?))
}

pub(crate) fn record_value(key: &str, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + key.len() + value.len());
    v.extend_from_slice(&(key.len() as u32).to_le_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(value);
    v
}

pub(crate) fn parse_value(v: &[u8]) -> Option<(String, Vec<u8>)> {
    let n = u32::from_le_bytes(v.get(0..4)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(v.get(4..4 + n)?).ok()?.to_owned();
    Some((key, v[4 + n..].to_vec()))
}

pub(crate) fn topic_key(name: &str) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn topic_value(id: u32, partitions: u32) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[0..4].copy_from_slice(&id.to_le_bytes());
    v[4..8].copy_from_slice(&partitions.to_le_bytes());
    v
}

pub(crate) fn part_key(topic: u32, p: Partition) -> [u8; 9] {
    let mut k = [b'p'; 9];
    k[1..5].copy_from_slice(&topic.to_be_bytes());
    k[5..9].copy_from_slice(&p.to_be_bytes());
    k
}

pub(crate) fn part_value(m: PartMeta) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[0..8].copy_from_slice(&m.next.to_le_bytes());
    v[8..16].copy_from_slice(&m.start.to_le_bytes());
    v
}

pub(crate) fn group_key(topic: u32, p: Partition, group: &str) -> Vec<u8> {
    let mut k = vec![b'g'];
    k.extend_from_slice(&topic.to_be_bytes());
    k.extend_from_slice(&p.to_be_bytes());
    k.extend_from_slice(group.as_bytes());
    k
}
